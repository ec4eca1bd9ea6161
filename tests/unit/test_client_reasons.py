"""Progress-path discovery and failure reasons in words (issue 11), aioresponses.

Discovery: until a path has answered 200, any 404 means "try the other path",
whatever its body; a 404 on both names both answers; a kept path's 404 is a
failure. Reasons: ``SklmError.detail`` is short, one line, free of control
characters and secrets, and quotes an error answer's own words.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from tests.unit.test_client import (
    BACKUP_RESTORE,
    LOGIN,
    NAME,
    PASSWORD,
    RESTORE,
    SESSION_ID,
    _Mock,
    calls,
    login_ok,
    make_server,
    progress,
)
from watcher.client import (
    LOG_PATH_DISCOVERED,
    SklmClient,
    create_session,
)
from watcher.errors import (
    MAX_DETAIL_CHARS,
    SklmError,
    SklmProtocolError,
    SklmUnreachable,
)
from watcher.phases import Phase, PollResult

#: The 404 bodies a server may answer on a path it does not serve, and the
#: words the detail gives each.
NOT_FOUND_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "ctgkm": (
        {
            "payload": {
                "code": "CTGKM6005E",
                "message": "CTGKM6005E The resource was not found.",
            }
        },
        "CTGKM6005E The resource was not found.",
    ),
    "json": (
        {"payload": {"error": "Not Found"}},
        'JSON {"error": "Not Found"}',
    ),
    "html": (
        {
            "body": "<html><head><title>Error 404</title></head><body>"
            "<h1>Error 404: SRVE0190E: File not found</h1></body></html>",
            "content_type": "text/html",
        },
        "HTML page: Error 404: SRVE0190E: File not found",
    ),
    "empty": ({"body": b"", "content_type": "text/plain"}, "empty body"),
}
KINDS = sorted(NOT_FOUND_BODIES)
RESTORE_PATH = "/SKLM/rest/v1/ckms/restore/progress"
BACKUP_RESTORE_PATH = "/SKLM/rest/v1/ckms/backupRestore/progress"


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    """aioresponses replacing every request of every session."""
    with _Mock() as m:
        yield m


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The process session as the daemon builds it."""
    async with create_session([make_server()]) as s:
        yield s


@pytest.fixture
def client(session: aiohttp.ClientSession) -> SklmClient:
    """A client for the default mocked server."""
    return SklmClient(make_server(), session)


def not_found(m: aioresponses, url: str, kind: str) -> None:
    """Queue one 404 answer of ``kind`` for ``url``."""
    answer, _words = NOT_FOUND_BODIES[kind]
    m.get(url, status=404, **answer)


def assert_one_clean_line(detail: str) -> None:
    """The detail is short and holds no control or format character."""
    assert len(detail) <= MAX_DETAIL_CHARS
    assert not [c for c in detail if unicodedata.category(c)[0] == "C"], detail


# -- discovery ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_any_404_before_discovery_tries_other_path(
    mocked, client, logs, kind
) -> None:
    """Whatever the 404 body, the other path is tried, found and then kept."""
    login_ok(mocked)
    not_found(mocked, RESTORE, kind)
    progress(mocked, "RESTORE_KEYSTORES", "4", BACKUP_RESTORE)
    progress(mocked, "CLEANUP", "6", BACKUP_RESTORE)
    first = await client.poll_phase()
    assert first == PollResult(Phase.RESTORE_KEYSTORES, False, BACKUP_RESTORE_PATH)
    second = await client.poll_phase()
    assert second == PollResult(Phase.CLEANUP, False, BACKUP_RESTORE_PATH)
    assert len(calls(mocked, "GET", RESTORE)) == 1
    assert [e["path"] for e in logs if e["event"] == LOG_PATH_DISCOVERED] == [
        BACKUP_RESTORE_PATH
    ]


@pytest.mark.parametrize("kind", KINDS)
async def test_first_path_answering_never_asks_the_other(mocked, client, kind) -> None:
    """A server serving the first candidate is never asked for the second."""
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    not_found(mocked, RESTORE, kind)
    assert (await client.poll_phase()).path == RESTORE_PATH
    with pytest.raises(SklmProtocolError):
        await client.poll_phase()
    assert calls(mocked, "GET", BACKUP_RESTORE) == []


@pytest.mark.parametrize(
    ("first", "second"),
    [(kind, kind) for kind in KINDS] + [("ctgkm", "html"), ("empty", "json")],
)
async def test_404_on_both_names_both_paths_and_answers(
    mocked, client, first, second
) -> None:
    """A 404 on both is a protocol error naming each path with its answer."""
    login_ok(mocked)
    not_found(mocked, RESTORE, first)
    not_found(mocked, BACKUP_RESTORE, second)
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    error = info.value
    assert error.detail == (
        "HTTP 404 from both progress paths ("
        f"/ckms/restore/progress: {NOT_FOUND_BODIES[first][1]}; "
        f"/ckms/backupRestore/progress: {NOT_FOUND_BODIES[second][1]})"
    )
    assert error.hint.startswith(
        f"tried {RESTORE_PATH} and {BACKUP_RESTORE_PATH}; check"
    )
    assert str(error) == f"{NAME}: {error.detail}; {error.hint}"
    assert_one_clean_line(error.detail)


async def test_both_404_with_long_answers_still_fits(mocked, client) -> None:
    """Two long 404 answers are each cut, so both paths stay named in the detail."""
    login_ok(mocked)
    long_message = "CTGKM6005E " + "word " * 200
    for url in (RESTORE, BACKUP_RESTORE):
        mocked.get(
            url, status=404, payload={"code": "CTGKM6005E", "message": long_message}
        )
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    detail = info.value.detail
    assert_one_clean_line(detail)
    assert "/ckms/restore/progress: CTGKM6005E word" in detail
    assert "; /ckms/backupRestore/progress: CTGKM6005E word" in detail
    assert detail.endswith("...)")


@pytest.mark.parametrize("kind", KINDS)
async def test_kept_path_404_is_a_failure(mocked, client, kind) -> None:
    """After a 200, a 404 of any body on that path is a failure; no path flip."""
    login_ok(mocked)
    not_found(mocked, RESTORE, "html")
    progress(mocked, "COMPLETED", "7", BACKUP_RESTORE)
    not_found(mocked, BACKUP_RESTORE, kind)
    progress(mocked, "IDLE", "0", BACKUP_RESTORE)
    await client.poll_phase()
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail == f"HTTP 404 {NOT_FOUND_BODIES[kind][1]}"
    assert f"(polled {BACKUP_RESTORE_PATH})" in info.value.hint
    assert len(calls(mocked, "GET", RESTORE)) == 1
    assert (await client.poll_phase()).path == BACKUP_RESTORE_PATH


async def test_explicit_path_404_with_ctgkm_is_a_failure(mocked, session) -> None:
    """A configured ``progress_path`` is never swapped for another, whatever the 404."""
    client = SklmClient(make_server(progress_path=BACKUP_RESTORE_PATH), session)
    login_ok(mocked)
    not_found(mocked, BACKUP_RESTORE, "ctgkm")
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail == "HTTP 404 CTGKM6005E The resource was not found."
    assert calls(mocked, "GET", RESTORE) == []


# -- reasons in words ---------------------------------------------------------------


async def test_ctgkm_error_body_is_quoted_in_ibms_words(mocked, client) -> None:
    """``HTTP 500 CTGKM0001E ...``: the words IBM's documentation tells to look up."""
    login_ok(mocked)
    mocked.get(
        RESTORE,
        status=500,
        payload={
            "code": "CTGKM0001E",
            "message": "CTGKM0001E Internal server error. See the server log.",
        },
    )
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail == (
        "HTTP 500 CTGKM0001E Internal server error. See the server log."
    )


async def test_ctgkm_id_in_message_only_is_quoted_once(mocked, client) -> None:
    """An id only at the start of ``message`` is not repeated."""
    login_ok(mocked)
    mocked.get(
        RESTORE,
        status=500,
        payload={"message": "CTGKM0001E: Internal server error."},
    )
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail == "HTTP 500 CTGKM0001E Internal server error."


async def test_error_words_are_cut_cleaned_and_scrubbed(mocked, client) -> None:
    """Control characters go, secrets go before the cut, the detail stays short."""
    login_ok(mocked)
    message = (
        "CTGKM0001E Internal\r\nFAKE LOG LINE\x1b[31m red\x00\u202e "
        + "x" * 90
        + SESSION_ID
        + PASSWORD
        + "y" * 300
    )
    mocked.get(RESTORE, status=500, payload={"code": "CTGKM0001E", "message": message})
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    detail = info.value.detail
    assert detail.startswith("HTTP 500 CTGKM0001E Internal FAKE LOG LINE [31m red ")
    assert_one_clean_line(detail)
    assert "***" in detail
    # No piece of either secret survives, not even one cut in half.
    for secret in (SESSION_ID, PASSWORD):
        assert secret[:5] not in str(info.value)
    assert detail.endswith("...")


async def test_excerpt_cut_through_a_secret_leaves_none_of_it(mocked, client) -> None:
    """A 200 body echoing the session id where the excerpt is cut shows no part."""
    login_ok(mocked)
    # The excerpt keeps about 80 characters: the session id starts at 70.
    mocked.get(RESTORE, payload={"code": "1", "status": "A" * 69 + SESSION_ID})
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail.startswith("unknown status 'AAAA")
    assert SESSION_ID[:4] not in str(info.value)


async def test_wrong_password_quotes_the_server(mocked, client) -> None:
    """Rejected credentials: the user named, IBM's words quoted, no password."""
    mocked.post(
        LOGIN,
        status=401,
        payload={
            "code": "CTGKM6003E",
            "message": f"CTGKM6003E Authentication Failure: Incorrect userid or "
            f"password {PASSWORD}",
        },
    )
    with pytest.raises(SklmError) as info:
        await client.poll_phase()
    assert info.value.detail == (
        "login rejected the credentials of user 'SKLMAdmin': HTTP 401 CTGKM6003E "
        "Authentication Failure: Incorrect userid or password ***"
    )


async def test_html_page_at_login_is_quoted_in_words(mocked, client) -> None:
    """A servlet container's page at login gives its words, not its markup."""
    mocked.post(
        LOGIN,
        status=503,
        body="<html><head><title>x</title><style>p{}</style></head><body><p>"
        "SRVE0211I: Application &amp; server starting</p></body></html>",
        content_type="text/html",
    )
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail == (
        "login answered HTTP 503 HTML page: SRVE0211I: Application & server starting"
    )


def test_detail_is_one_short_line_whatever_the_caller_passes() -> None:
    """SklmError itself keeps every detail to one clean line of bounded length."""
    error = SklmUnreachable(NAME, "line one\nline two\x07\t" + "z" * 500)
    assert error.detail.startswith("line one line two z")
    assert_one_clean_line(error.detail)
    assert error.detail.endswith("...")
    assert str(error).startswith(f"{NAME}: line one line two ")
    assert "\n" not in str(error)
