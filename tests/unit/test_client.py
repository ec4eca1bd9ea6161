"""SklmClient edge cases against aioresponses (no sockets)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import structlog
import trustme
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from watcher.client import (
    LOG_LOGIN,
    LOG_PATH_DISCOVERED,
    LOG_RELOGIN,
    MAX_BODY_BYTES,
    SklmClient,
    create_session,
)
from watcher.config import Secret, ServerConfig
from watcher.errors import (
    SklmAuthError,
    SklmError,
    SklmProtocolError,
    SklmTlsError,
    SklmUnreachable,
)
from watcher.phases import Phase, PollResult

PASSWORD = "pw-Hunter2-secret"
SESSION_ID = "sid-7f3a9c-SECRET"
SESSION_ID_2 = "sid-second-SECRET"
NAME = "sklm-unit-1"
ORIGIN = "https://sklm.test:9443"
BASE = f"{ORIGIN}/SKLM/rest/v1"
LOGIN = f"{BASE}/ckms/login"
LOGOUT = f"{BASE}/ckms/logout"
RESTORE = f"{BASE}/ckms/restore/progress"
BACKUP_RESTORE = f"{BASE}/ckms/backupRestore/progress"
RESULT = f"{BASE}/ckms/restore/result"
VERSION = f"{BASE}/ckms/versionInfo"

EXPIRED = {
    "code": "CTGKM6004E",
    "message": "CTGKM6004E User is not authenticated or has already logged out",
}
BAD_REQUEST = {
    "message": "CTGKM6002E Bad Request: Invalid user authentication ID or invalid "
    "request format."
}
WRONG_CREDENTIALS = {
    "code": "CTGKM6003E",
    "message": "CTGKM6003E Authentication Failure: Incorrect userid or password",
}
GENERIC = {"code": "CTGKM0999E", "message": "CTGKM0999E Something failed"}


def make_server(**overrides: Any) -> ServerConfig:
    """A server config for the mocked host with known secrets."""
    values: dict[str, Any] = {
        "name": NAME,
        "url": ORIGIN,
        "password": Secret(PASSWORD),
        "timeout": 3.0,
    }
    values.update(overrides)
    return ServerConfig(**values)


class _Response(aiohttp.ClientResponse):
    """A ClientResponse aioresponses 0.7.9 can build under aiohttp 3.14.

    aiohttp 3.14 added the required ``stream_writer`` argument, which aioresponses
    does not pass.
    """

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class _Mock(aioresponses):
    """aioresponses building :class:`_Response` objects."""

    def add(  # type: ignore[override]
        self, url: Any, method: str = "GET", **kwargs: Any
    ) -> None:
        kwargs.setdefault("response_class", _Response)
        super().add(url, method, **kwargs)


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


def login_ok(m: aioresponses, session_id: str = SESSION_ID) -> None:
    """Queue one successful login answer."""
    m.post(LOGIN, payload={"UserAuthId": session_id})


def progress(m: aioresponses, status: str, code: Any, url: str = RESTORE) -> None:
    """Queue one progress answer."""
    m.get(url, payload={"code": code, "status": status})


def calls(m: aioresponses, method: str, url: str) -> list[Any]:
    """The recorded calls to one method and URL."""
    return list(m.requests.get((method, URL(url)), []))


# -- login and sessions ------------------------------------------------------


async def test_poll_logs_in_and_reads_phase(mocked, client) -> None:
    """The first poll logs in with the credentials and reads the phase with the id."""
    login_ok(mocked)
    progress(mocked, "RESTORE_KEYSTORES", "4")
    result = await client.poll_phase()
    assert result == PollResult(
        phase=Phase.RESTORE_KEYSTORES,
        relogin=False,
        path="/SKLM/rest/v1/ckms/restore/progress",
    )
    (login_call,) = calls(mocked, "POST", LOGIN)
    assert json.loads(login_call.kwargs["data"]) == {
        "userid": "SKLMAdmin",
        "password": PASSWORD,
    }
    assert "Authorization" not in login_call.kwargs["headers"]
    (poll_call,) = calls(mocked, "GET", RESTORE)
    headers = poll_call.kwargs["headers"]
    assert headers["Authorization"] == f"SKLMAuth userAuthId={SESSION_ID}"
    assert headers["Accept"] == "application/json"
    assert headers["Content-Type"] == "application/json"
    assert poll_call.kwargs["allow_redirects"] is False
    assert poll_call.kwargs["timeout"] == aiohttp.ClientTimeout(total=3.0)


async def test_session_is_reused_between_polls(mocked, client) -> None:
    """A working session id is kept: the second poll does not log in again."""
    login_ok(mocked)
    progress(mocked, "IDLE", 0)
    progress(mocked, "INITIALIZE", 1)
    assert (await client.poll_phase()).phase is Phase.IDLE
    assert (await client.poll_phase()).phase is Phase.INITIALIZE
    assert len(calls(mocked, "POST", LOGIN)) == 1


@pytest.mark.parametrize("field", ["UserAuthId", "userAuthId", "USERAUTHID"])
async def test_login_reads_session_id_in_any_case(mocked, client, field) -> None:
    """The session id field is read case-insensitively."""
    mocked.post(LOGIN, payload={field: SESSION_ID, "other": 1})
    progress(mocked, "IDLE", "0")
    await client.poll_phase()
    (poll_call,) = calls(mocked, "GET", RESTORE)
    assert poll_call.kwargs["headers"]["Authorization"].endswith(SESSION_ID)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"status": "ok"}, "login answered without a session id"),
        ({"UserAuthId": ""}, "login answered without a session id"),
        ({"UserAuthId": 42}, "login answered without a session id"),
        ([SESSION_ID], "login answered without a JSON object"),
        ({"UserAuthId": "x" * 5000}, "longer than 4096 characters"),
        ({"UserAuthId": "a b\r\nX-Evil: 1"}, "unusable characters"),
    ],
)
async def test_login_without_usable_id_is_protocol_error(
    mocked, client, body, detail
) -> None:
    """A login answer without a usable session id is a protocol error, not auth."""
    mocked.post(LOGIN, body=json.dumps(body))
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert detail in str(info.value)
    assert str(info.value).startswith(f"{NAME}: ")
    assert calls(mocked, "GET", RESTORE) == []


@pytest.mark.parametrize(
    "body",
    [
        WRONG_CREDENTIALS,
        {"message": "CTGKM6003E Authentication Failure: Incorrect userid or password"},
    ],
)
async def test_rejected_credentials_are_auth_error(mocked, client, body) -> None:
    """401 CTGKM6003E at login (in code or message) is SklmAuthError, not retried."""
    mocked.post(LOGIN, status=401, payload=body)
    with pytest.raises(SklmAuthError) as info:
        await client.poll_phase()
    assert "CTGKM6003E" in str(info.value)
    assert not info.value.transient
    assert len(calls(mocked, "POST", LOGIN)) == 1


async def test_login_server_error_is_protocol_error(mocked, client) -> None:
    """A 500 at login (server starting) is a protocol error naming the status."""
    mocked.post(LOGIN, status=500, body="SRVE0255E: not yet", content_type="text/plain")
    with pytest.raises(SklmProtocolError, match="login answered HTTP 500"):
        await client.poll_phase()


@pytest.mark.parametrize(
    ("status", "body"),
    [(401, EXPIRED), (400, BAD_REQUEST)],
    ids=["401-CTGKM6004E", "400-CTGKM6002E"],
)
async def test_rejected_session_relogs_in_once(
    mocked, client, logs, status, body
) -> None:
    """A working session rejected later triggers one re-login; relogin is True."""
    login_ok(mocked)
    progress(mocked, "COMPLETED", "7")
    mocked.get(RESTORE, status=status, payload=body)
    login_ok(mocked, SESSION_ID_2)
    progress(mocked, "IDLE", "0")
    assert (await client.poll_phase()).relogin is False
    result = await client.poll_phase()
    assert result == PollResult(Phase.IDLE, True, "/SKLM/rest/v1/ckms/restore/progress")
    last = calls(mocked, "GET", RESTORE)[-1]
    assert last.kwargs["headers"]["Authorization"].endswith(SESSION_ID_2)
    assert [e["event"] for e in logs] == [
        LOG_LOGIN,
        LOG_PATH_DISCOVERED,
        LOG_RELOGIN,
        LOG_LOGIN,
    ]
    # The next poll reports no re-login any more.
    progress(mocked, "IDLE", "0")
    assert (await client.poll_phase()).relogin is False


async def test_session_rejected_twice_is_auth_error(mocked, client) -> None:
    """A session rejected again right after the re-login is SklmAuthError."""
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    mocked.get(RESTORE, status=401, payload=EXPIRED)
    login_ok(mocked, SESSION_ID_2)
    mocked.get(RESTORE, status=401, payload=EXPIRED)
    await client.poll_phase()
    with pytest.raises(SklmAuthError, match="session rejected right after login"):
        await client.poll_phase()
    assert len(calls(mocked, "POST", LOGIN)) == 2
    # Forgotten: the next poll logs in afresh.
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    assert (await client.poll_phase()).relogin is False
    assert len(calls(mocked, "POST", LOGIN)) == 3


async def test_fresh_session_rejected_is_auth_error(mocked, client) -> None:
    """A session rejected on its first use is SklmAuthError without a second login."""
    login_ok(mocked)
    mocked.get(RESTORE, status=401, payload=EXPIRED)
    with pytest.raises(SklmAuthError, match="session rejected right after login"):
        await client.poll_phase()
    assert len(calls(mocked, "POST", LOGIN)) == 1


async def test_relogin_false_when_old_session_never_worked(mocked, client) -> None:
    """A session that never answered, rejected later, re-logs in with relogin False."""
    login_ok(mocked)
    mocked.get(RESTORE, exception=aiohttp.ServerDisconnectedError())
    mocked.get(RESTORE, status=401, payload=EXPIRED)
    login_ok(mocked, SESSION_ID_2)
    progress(mocked, "IDLE", "0")
    with pytest.raises(SklmUnreachable):
        await client.poll_phase()
    assert (await client.poll_phase()).relogin is False


async def test_relogin_failure_propagates(mocked, client) -> None:
    """If the re-login itself is refused, that error (auth) is what the poll raises."""
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    mocked.get(RESTORE, status=401, payload=EXPIRED)
    mocked.post(LOGIN, status=401, payload=WRONG_CREDENTIALS)
    await client.poll_phase()
    with pytest.raises(SklmAuthError, match="CTGKM6003E"):
        await client.poll_phase()


async def test_other_401_on_progress_is_protocol_error(mocked, client) -> None:
    """A 401 without a session-rejection id is not a session expiry."""
    login_ok(mocked)
    mocked.get(
        RESTORE, status=401, body="<html>denied</html>", content_type="text/html"
    )
    with pytest.raises(SklmProtocolError, match="HTTP 401"):
        await client.poll_phase()
    assert len(calls(mocked, "POST", LOGIN)) == 1


# -- progress bodies -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "phase"),
    [
        ("7", "COMPLETED", Phase.COMPLETED),
        (7, "COMPLETED", Phase.COMPLETED),
        (0, "IDLE", Phase.IDLE),
        (" 3 ", "RESTORE_CONFIG_FILES", Phase.RESTORE_CONFIG_FILES),
        ("5", "restore_databases", Phase.RESTORE_DATABASES),
    ],
)
async def test_progress_code_as_int_or_string(
    mocked, client, code, status, phase
) -> None:
    """The code may be an int or a numeric string; the status decides the phase."""
    login_ok(mocked)
    progress(mocked, status, code)
    assert (await client.poll_phase()).phase is phase


async def test_progress_field_names_any_case(mocked, client) -> None:
    """``Code`` / ``Status`` spellings are read too."""
    login_ok(mocked)
    mocked.get(RESTORE, payload={"Code": "6", "Status": "CLEANUP"})
    assert (await client.poll_phase()).phase is Phase.CLEANUP


@pytest.mark.parametrize(
    ("body", "content_type", "detail"),
    [
        (b"not json", "text/plain", "body is not JSON (text/plain): 'not json'"),
        (b'{"code": "7", "sta', "application/json", "body is not JSON"),
        (b"[1, 2]", "application/json", "body is a JSON array, not an object"),
        (b'"IDLE"', "application/json", "body is a JSON string, not an object"),
        (b"null", "application/json", "body is a JSON null, not an object"),
        (
            b"<html><body>Error 404: SRVE0190E</body></html>",
            "text/html",
            "body is an HTML page, not JSON: 'Error 404: SRVE0190E'",
        ),
        (b"", "application/json", "body is not JSON (application/json): ''"),
        (b'{"code": "\xff\xfe"}', "application/json", "not valid UTF-8"),
        (b'{"code": "7"}', "application/json", "body has no status"),
        (b'{"status": "IDLE"}', "application/json", "body has no code"),
        (
            b'{"code": "8", "status": "FAILED"}',
            "application/json",
            "unknown status 'FAILED'",
        ),
        (b'{"code": 1, "status": 1}', "application/json", "unknown status 1"),
        (
            b'{"code": "x", "status": "IDLE"}',
            "application/json",
            "code is not a number: 'x'",
        ),
        (
            b'{"code": true, "status": "INITIALIZE"}',
            "application/json",
            "code is not a number: True",
        ),
        (
            b'{"code": 1.0, "status": "INITIALIZE"}',
            "application/json",
            "code is not a number: 1.0",
        ),
        (
            b'{"code": "-1", "status": "IDLE"}',
            "application/json",
            "code is not a number",
        ),
        (
            b'{"code": "4", "status": "COMPLETED"}',
            "application/json",
            "code '4' disagrees with status COMPLETED (code 7)",
        ),
        (b"[" * 60_000, "application/json", "body is not JSON"),
    ],
)
async def test_malformed_progress_is_protocol_error(
    mocked, client, body, content_type, detail
) -> None:
    """Every malformed progress body is a protocol error naming server and value."""
    login_ok(mocked)
    mocked.get(RESTORE, body=body, content_type=content_type)
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    message = str(info.value)
    assert message.startswith(f"{NAME}: {info.value.detail}; ")
    assert detail in info.value.detail
    assert "(polled /SKLM/rest/v1/ckms/restore/progress)" in info.value.hint
    assert len(info.value.detail) < 200


async def test_unknown_status_excerpt_is_truncated(mocked, client) -> None:
    """A long offending value is quoted truncated to about 80 characters."""
    login_ok(mocked)
    mocked.get(RESTORE, payload={"code": "1", "status": "Z" * 500})
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert "'ZZZ" in info.value.detail
    assert "Z" * 81 not in info.value.detail
    assert "..." in info.value.detail


@pytest.mark.parametrize("declared", [True, False])
async def test_oversized_body_is_protocol_error(mocked, client, declared) -> None:
    """A body above MAX_BODY_BYTES is refused, declared or streamed."""
    login_ok(mocked)
    body = b'{"status": "IDLE", "code": "0", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    headers = {"Content-Length": str(len(body))} if declared else None
    mocked.get(RESTORE, body=body, headers=headers)
    with pytest.raises(SklmProtocolError, match="65536-byte limit"):
        await client.poll_phase()


async def test_body_at_limit_is_read(mocked, client) -> None:
    """A body of exactly MAX_BODY_BYTES is still accepted."""
    login_ok(mocked)
    head = b'{"status": "IDLE", "code": "0", "pad": "'
    body = head + b"x" * (MAX_BODY_BYTES - len(head) - 2) + b'"}'
    assert len(body) == MAX_BODY_BYTES
    mocked.get(RESTORE, body=body)
    assert (await client.poll_phase()).phase is Phase.IDLE


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_protocol_error(mocked, client, status) -> None:
    """A 3xx is never followed and names the status, not the Location."""
    login_ok(mocked)
    mocked.get(
        RESTORE, status=status, headers={"Location": "https://evil.test/steal?x=1"}
    )
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert f"HTTP {status} (a redirect, not followed)" in str(info.value)
    assert "evil" not in str(info.value)


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (500, GENERIC, "HTTP 500 CTGKM0999E Something failed"),
        (
            500,
            "java.lang.NullPointerException",
            "HTTP 500 java.lang.NullPointerException",
        ),
        (405, "", "HTTP 405 empty body"),
        (
            400,
            {"code": "CTGKM0630E", "message": "validation"},
            "HTTP 400 CTGKM0630E validation",
        ),
    ],
)
async def test_error_status_is_protocol_error(
    mocked, client, status, body, detail
) -> None:
    """Unexpected statuses are protocol errors naming the status and CTGKM id."""
    login_ok(mocked)
    if isinstance(body, dict):
        mocked.get(RESTORE, status=status, payload=body)
    else:
        mocked.get(RESTORE, status=status, body=body, content_type="text/plain")
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail == detail
    assert str(info.value).startswith(f"{NAME}: {detail}; ")


# -- progress path discovery -----------------------------------------------------


async def test_plain_404_tries_other_path_and_remembers(mocked, client, logs) -> None:
    """A plain 404 means no such path: the other one is tried, then kept."""
    login_ok(mocked)
    mocked.get(
        RESTORE, status=404, body="Error 404: Not Found", content_type="text/plain"
    )
    progress(mocked, "INITIALIZE", "1", BACKUP_RESTORE)
    progress(mocked, "CREATE_TEMP_DIR", "2", BACKUP_RESTORE)
    first = await client.poll_phase()
    assert first == PollResult(
        Phase.INITIALIZE, False, "/SKLM/rest/v1/ckms/backupRestore/progress"
    )
    second = await client.poll_phase()
    assert second.phase is Phase.CREATE_TEMP_DIR
    assert len(calls(mocked, "GET", RESTORE)) == 1
    assert len(calls(mocked, "GET", BACKUP_RESTORE)) == 2
    discovered = [e for e in logs if e["event"] == LOG_PATH_DISCOVERED]
    assert discovered == [
        {
            "event": LOG_PATH_DISCOVERED,
            "log_level": "debug",
            "server": NAME,
            "path": "/SKLM/rest/v1/ckms/backupRestore/progress",
        }
    ]


async def test_non_ctgkm_json_404_is_no_such_path(mocked, client) -> None:
    """A JSON 404 without a CTGKM id also means no such path."""
    login_ok(mocked)
    mocked.get(RESTORE, status=404, payload={"error": "Not Found"})
    progress(mocked, "IDLE", "0", BACKUP_RESTORE)
    assert (await client.poll_phase()).path.endswith("/backupRestore/progress")


async def test_ctgkm_404_before_discovery_tries_other_path(mocked, client) -> None:
    """Until a path answered, a 404 with a CTGKM id also means "try the other".

    Issue 11: a server answering only backupRestore/progress answers the other
    with ``404 CTGKM6005E``; it was reported unreachable for ever.
    """
    login_ok(mocked)
    mocked.get(RESTORE, status=404, payload=GENERIC)
    progress(mocked, "IDLE", "0", BACKUP_RESTORE)
    result = await client.poll_phase()
    assert result == PollResult(
        Phase.IDLE, False, "/SKLM/rest/v1/ckms/backupRestore/progress"
    )


async def test_both_paths_404_names_both(mocked, client) -> None:
    """When neither path exists, the error names both."""
    login_ok(mocked)
    mocked.get(RESTORE, status=404, body="no", content_type="text/plain")
    mocked.get(BACKUP_RESTORE, status=404, body="no", content_type="text/plain")
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert "/SKLM/rest/v1/ckms/restore/progress" in str(info.value)
    assert "/SKLM/rest/v1/ckms/backupRestore/progress" in str(info.value)


async def test_remembered_path_404_is_protocol_error(mocked, client) -> None:
    """Once a path answered, a 404 there (server starting) does not flip paths."""
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    mocked.get(RESTORE, status=404, body="starting", content_type="text/plain")
    progress(mocked, "IDLE", "0")
    await client.poll_phase()
    with pytest.raises(SklmProtocolError, match="HTTP 404"):
        await client.poll_phase()
    assert calls(mocked, "GET", BACKUP_RESTORE) == []
    assert (await client.poll_phase()).path == "/SKLM/rest/v1/ckms/restore/progress"


async def test_undiscovered_path_is_not_remembered_on_error(mocked, client) -> None:
    """A path that answered 500 is not remembered: discovery runs again."""
    login_ok(mocked)
    mocked.get(RESTORE, status=404, body="no", content_type="text/plain")
    mocked.get(BACKUP_RESTORE, status=500, payload=GENERIC)
    mocked.get(RESTORE, status=404, body="no", content_type="text/plain")
    progress(mocked, "IDLE", "0", BACKUP_RESTORE)
    with pytest.raises(SklmProtocolError):
        await client.poll_phase()
    assert (await client.poll_phase()).phase is Phase.IDLE
    assert len(calls(mocked, "GET", RESTORE)) == 2


async def test_explicit_progress_path_skips_discovery(mocked, session) -> None:
    """``progress_path`` is used as is; a plain 404 there is a protocol error."""
    path = "/GKLM/rest/v1/ckms/restore/progress"
    client = SklmClient(make_server(progress_path=path), session)
    login_ok(mocked)
    progress(mocked, "CLEANUP", "6", ORIGIN + path)
    mocked.get(ORIGIN + path, status=404, body="no", content_type="text/plain")
    assert await client.poll_phase() == PollResult(Phase.CLEANUP, False, path)
    with pytest.raises(SklmProtocolError, match="HTTP 404"):
        await client.poll_phase()
    assert calls(mocked, "GET", RESTORE) == []
    assert calls(mocked, "GET", BACKUP_RESTORE) == []


async def test_api_base_is_used(mocked, session) -> None:
    """A configured ``api_base`` prefixes login and discovered paths."""
    client = SklmClient(make_server(api_base="/GKLM/rest/v1/"), session)
    mocked.post(f"{ORIGIN}/GKLM/rest/v1/ckms/login", payload={"userAuthId": SESSION_ID})
    progress(mocked, "IDLE", 0, f"{ORIGIN}/GKLM/rest/v1/ckms/restore/progress")
    assert (await client.poll_phase()).path == "/GKLM/rest/v1/ckms/restore/progress"


# -- transport failures -------------------------------------------------------------


def _connection_key() -> ConnectionKey:
    return ConnectionKey("sklm.test", 9443, True, True, None, None, None)


def _failures() -> list[tuple[BaseException, type[SklmError], str]]:
    refused = ConnectionRefusedError(111, "Connection refused")
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate in certificate chain"
    return [
        (
            aiohttp.ClientConnectorError(_connection_key(), refused),
            SklmUnreachable,
            "connection refused",
        ),
        (
            aiohttp.ClientConnectorError(
                _connection_key(), OSError(113, "No route to host")
            ),
            SklmUnreachable,
            "cannot connect: no route to host",
        ),
        (
            aiohttp.ClientConnectorDNSError(
                _connection_key(), OSError(-2, "Name or service not known")
            ),
            SklmUnreachable,
            "host name not resolved: name or service not known",
        ),
        (TimeoutError(), SklmUnreachable, "no answer within 3 s"),
        (
            aiohttp.ConnectionTimeoutError("Connection timeout to host"),
            SklmUnreachable,
            "no answer within 3 s",
        ),
        (
            aiohttp.ServerDisconnectedError(),
            SklmUnreachable,
            "connection closed before an answer",
        ),
        (
            aiohttp.ClientOSError(104, "Connection reset by peer"),
            SklmUnreachable,
            "connection reset by peer",
        ),
        (
            aiohttp.ClientPayloadError("Response payload is not completed"),
            SklmUnreachable,
            "answer cut short (the connection ended mid-body)",
        ),
        (
            aiohttp.ClientConnectionError("Connection refused: GET x"),
            SklmUnreachable,
            "connection failed: Connection refused: GET x",
        ),
        (
            aiohttp.ClientConnectorCertificateError(_connection_key(), cert),
            SklmTlsError,
            "certificate verify failed: self-signed certificate in certificate chain",
        ),
        (
            aiohttp.ClientConnectorSSLError(
                _connection_key(), ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]")
            ),
            SklmTlsError,
            "TLS handshake failed: wrong version number",
        ),
        (
            ssl.SSLError(1, "[SSL] record layer failure"),
            SklmTlsError,
            "TLS handshake failed: record layer failure",
        ),
        (
            aiohttp.ServerFingerprintMismatch(b"\x01" * 32, b"\xab" * 32, "h", 1),
            SklmTlsError,
            "certificate does not match tls_fingerprint (the server presented "
            f"sha256:{'ab' * 32})",
        ),
        (
            aiohttp.ClientResponseError(
                aiohttp.RequestInfo(
                    URL(RESTORE), "GET", CIMultiDictProxy(CIMultiDict())
                ),
                (),
                status=400,
                message="Invalid HTTP status line",
            ),
            SklmProtocolError,
            "malformed HTTP answer: Invalid HTTP status line",
        ),
    ]


@pytest.mark.parametrize(
    ("exc", "kind", "detail"),
    _failures(),
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
async def test_transport_failures_are_translated(
    mocked, client, exc, kind, detail
) -> None:
    """aiohttp, ssl and timeout exceptions become exactly one SklmError kind."""
    login_ok(mocked)
    mocked.get(RESTORE, exception=exc)
    with pytest.raises(SklmError) as info:
        await client.poll_phase()
    assert type(info.value) is kind
    assert info.value.detail == detail
    assert info.value.__cause__ is exc
    assert "sklm.test" not in info.value.detail


async def test_login_connection_failure_is_unreachable(mocked, client) -> None:
    """A transient failure at login is SklmUnreachable, not retried by the client."""
    mocked.post(LOGIN, exception=aiohttp.ServerDisconnectedError())
    with pytest.raises(SklmUnreachable):
        await client.poll_phase()
    assert len(calls(mocked, "POST", LOGIN)) == 1


async def test_cancellation_propagates(mocked, client) -> None:
    """CancelledError is never translated or swallowed."""
    login_ok(mocked)
    mocked.get(RESTORE, exception=asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await client.poll_phase()


# -- restore result, version, logout ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"code": "0"}, 0),
        ({"code": 1}, 1),
        ({"result": "-1"}, -1),
        ({"Result": 1, "code": "CTGKM0000I"}, 1),
        ({"code": "CTGKM0000I"}, None),
        ({"code": True}, None),
        ({"status": "done"}, None),
        ([0], None),
    ],
)
async def test_restore_result_variants(mocked, client, body, expected) -> None:
    """The result is read from ``result`` or ``code``, int or numeric string."""
    login_ok(mocked)
    mocked.get(RESULT, body=json.dumps(body))
    assert await client.restore_result() == expected


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 500, "payload": GENERIC},
        {"status": 404, "body": "no"},
        {"body": "not json"},
        {"body": b"{" + b" " * MAX_BODY_BYTES + b"}"},
        {"exception": aiohttp.ClientConnectionError("refused")},
        {"exception": TimeoutError()},
        {"status": 302, "headers": {"Location": "https://elsewhere.test/"}},
    ],
)
async def test_restore_result_none_on_failure(mocked, client, answer) -> None:
    """Any failure reading the result gives None, never an exception."""
    login_ok(mocked)
    mocked.get(RESULT, **answer)
    assert await client.restore_result() is None


async def test_restore_result_none_when_login_fails(mocked, client) -> None:
    """Rejected credentials while fetching the result give None."""
    mocked.post(LOGIN, status=401, payload=WRONG_CREDENTIALS)
    assert await client.restore_result() is None


async def test_restore_result_leaves_rejection_to_next_poll(mocked, client) -> None:
    """A session rejected on the result is kept, so the next poll reports relogin."""
    login_ok(mocked)
    progress(mocked, "COMPLETED", "7")
    mocked.get(RESULT, status=401, payload=EXPIRED)
    mocked.get(RESTORE, status=401, payload=EXPIRED)
    login_ok(mocked, SESSION_ID_2)
    progress(mocked, "IDLE", "0")
    await client.poll_phase()
    assert await client.restore_result() is None
    assert len(calls(mocked, "POST", LOGIN)) == 1
    assert (await client.poll_phase()).relogin is True


async def test_version(mocked, client) -> None:
    """``version`` returns tklm_version, and None when absent or failing."""
    login_ok(mocked)
    mocked.get(VERSION, payload={"tklm_version": "4.2.1.0", "other": "x"})
    mocked.get(VERSION, payload={"version": "4.2"})
    mocked.get(VERSION, payload={"tklm_version": 4})
    mocked.get(VERSION, status=500, payload=GENERIC)
    assert await client.version() == "4.2.1.0"
    assert await client.version() is None
    assert await client.version() is None
    assert await client.version() is None


async def test_logout_sends_id_and_forgets_session(mocked, client) -> None:
    """Logout DELETEs with the session id, then the next poll logs in again."""
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    mocked.delete(LOGOUT, status=200, payload={})
    await client.poll_phase()
    await client.logout()
    (call,) = calls(mocked, "DELETE", LOGOUT)
    assert json.loads(call.kwargs["data"]) == {"userAuthId": SESSION_ID}
    assert (
        call.kwargs["headers"]["Authorization"] == f"SKLMAuth userAuthId={SESSION_ID}"
    )
    await client.logout()  # no session: nothing sent
    assert len(calls(mocked, "DELETE", LOGOUT)) == 1
    login_ok(mocked, SESSION_ID_2)
    progress(mocked, "IDLE", "0")
    assert (await client.poll_phase()).relogin is False
    assert len(calls(mocked, "POST", LOGIN)) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"exception": aiohttp.ClientConnectionError("refused")},
        {"status": 401, "payload": EXPIRED},
        {"status": 500, "body": "oops"},
        {"exception": TimeoutError()},
    ],
)
async def test_logout_swallows_failures(mocked, client, answer) -> None:
    """A failed logout is ignored (best effort)."""
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    mocked.delete(LOGOUT, **answer)
    await client.poll_phase()
    await client.logout()


async def test_logout_does_not_swallow_cancellation(mocked, client) -> None:
    """A cancelled logout propagates CancelledError and still forgets the session."""
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    mocked.delete(LOGOUT, exception=asyncio.CancelledError())
    await client.poll_phase()
    with pytest.raises(asyncio.CancelledError):
        await client.logout()
    await client.logout()
    assert len(calls(mocked, "DELETE", LOGOUT)) == 1


# -- secrets -------------------------------------------------------------------------


def _strings_of(exc: BaseException) -> list[str]:
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return out


async def test_secrets_never_in_errors_or_logs(mocked, session) -> None:
    """The password and session ids appear in no exception text and no log entry."""
    client = SklmClient(make_server(), session)
    texts: list[str] = []
    scenarios: list[tuple[str, dict[str, Any]]] = [
        (
            "GET",
            {
                "status": 500,
                "body": f"echo {SESSION_ID} {PASSWORD}",
                "content_type": "text/plain",
            },
        ),
        ("GET", {"body": json.dumps({"status": f"X{SESSION_ID}", "code": 1})}),
        ("GET", {"body": f"<html>{PASSWORD}</html>", "content_type": "text/html"}),
        ("GET", {"exception": aiohttp.ServerDisconnectedError()}),
        ("GET", {"exception": TimeoutError()}),
        (
            "GET",
            {"status": 302, "headers": {"Location": f"https://x.test/?p={PASSWORD}"}},
        ),
    ]
    with structlog.testing.capture_logs() as captured:
        for _method, answer in scenarios:
            login_ok(mocked)
            mocked.get(RESTORE, **answer)
            with pytest.raises(SklmError) as info:
                await client.poll_phase()
            texts += _strings_of(info.value)
            await client.logout()
            mocked.delete(LOGOUT, status=200)  # unused after a logout without session
        # Login answers echoing secrets in odd shapes.
        for body in (
            [SESSION_ID],
            {"UserAuthId": f"{SESSION_ID} with space"},
            {"UserAuthId": SESSION_ID * 300},
        ):
            mocked.post(LOGIN, body=json.dumps(body))
            with pytest.raises(SklmProtocolError) as info:
                await client.poll_phase()
            texts += _strings_of(info.value)
        mocked.post(
            LOGIN, status=401, body=json.dumps({**WRONG_CREDENTIALS, "p": PASSWORD})
        )
        with pytest.raises(SklmAuthError) as info:
            await client.poll_phase()
        texts += _strings_of(info.value)
        # Re-login after expiry, then rejection twice.
        login_ok(mocked)
        progress(mocked, "IDLE", "0")
        mocked.get(RESTORE, status=401, payload=EXPIRED)
        login_ok(mocked, SESSION_ID_2)
        mocked.get(RESTORE, status=401, payload=EXPIRED)
        await client.poll_phase()
        with pytest.raises(SklmAuthError) as info:
            await client.poll_phase()
        texts += _strings_of(info.value)
    texts += [repr(entry) for entry in captured]
    texts.append(repr(client))
    assert captured, "expected debug log entries"
    for text in texts:
        for secret in (PASSWORD, SESSION_ID, SESSION_ID_2):
            assert secret not in text, text


# -- session and TLS set-up ----------------------------------------------------------


async def test_create_session_is_sized_for_the_fleet() -> None:
    """The session ignores the environment, keeps no cookies and fits the fleet."""
    servers = [make_server(name=f"s{i}", idle_interval=60.0) for i in range(300)]
    async with create_session(servers) as session:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector.limit == 600
        assert 0 < connector.limit_per_host <= 8
        keepalive = connector._keepalive_timeout
        assert keepalive is not None
        assert keepalive > 60.0
        assert session.trust_env is False
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        assert "Authorization" not in session.headers
    async with create_session([]) as session:
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit == 100


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority (no sockets here)."""
    return trustme.CA()


async def test_tls_settings_become_ssl_argument(mocked, session, ca, tmp_path) -> None:
    """``ssl=`` follows config: CA context, pin, off; built once per client."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pin = "ab" * 32
    cases: list[tuple[ServerConfig, Any]] = [
        (make_server(ca_file=ca_file), ssl.SSLContext),
        (make_server(tls_fingerprint=pin), aiohttp.Fingerprint),
        (make_server(verify_tls=False), bool),
        (make_server(), ssl.SSLContext),
        (make_server(ca_file=ca_file, tls_fingerprint=pin), aiohttp.Fingerprint),
    ]
    for server, kind in cases:
        client = SklmClient(server, session)
        login_ok(mocked)
        progress(mocked, "IDLE", "0")
        progress(mocked, "IDLE", "0")
        await client.poll_phase()
        await client.poll_phase()
        used: list[Any] = [c.kwargs["ssl"] for c in calls(mocked, "GET", RESTORE)[-2:]]
        chosen = used[0]
        assert isinstance(chosen, kind)
        if isinstance(chosen, ssl.SSLContext):  # aioresponses deep-copies the rest
            assert chosen is used[1]
            assert chosen.verify_mode is ssl.CERT_REQUIRED
            assert chosen.check_hostname
        elif isinstance(chosen, aiohttp.Fingerprint):
            assert chosen.fingerprint == bytes.fromhex(pin)
        else:
            assert chosen is False
        mocked.requests.clear()


@pytest.mark.parametrize("problem", ["missing", "garbage", "bad_pin"])
async def test_unusable_tls_settings_fail_each_poll(
    mocked, session, tmp_path: Path, problem
) -> None:
    """An unreadable ca_file or bad pin is a TLS error per poll, not a crash."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    choices: dict[str, dict[str, Any]] = {
        "missing": {"ca_file": tmp_path / "absent.pem"},
        "garbage": {"ca_file": garbage},
        "bad_pin": {"tls_fingerprint": "abcd"},
    }
    overrides = choices[problem]
    client = SklmClient(make_server(**overrides), session)
    for _ in range(2):
        with pytest.raises(SklmTlsError, match="cannot use its TLS settings"):
            await client.poll_phase()
    assert mocked.requests == {}


async def test_plain_http_ignores_tls_settings(mocked, session, tmp_path) -> None:
    """An http:// server never loads TLS settings (a missing ca_file is harmless)."""
    server = make_server(
        url="http://sklm.test:9080",
        allow_insecure_http=True,
        ca_file=tmp_path / "absent.pem",
    )
    client = SklmClient(server, session)
    mocked.post(
        "http://sklm.test:9080/SKLM/rest/v1/ckms/login",
        payload={"UserAuthId": SESSION_ID},
    )
    progress(
        mocked, "IDLE", 0, "http://sklm.test:9080/SKLM/rest/v1/ckms/restore/progress"
    )
    assert (await client.poll_phase()).phase is Phase.IDLE


async def test_best_effort_calls_survive_a_closed_session(mocked) -> None:
    """On a closed session, logout and restore_result still neither raise nor hang."""
    session = create_session([make_server()])
    client = SklmClient(make_server(), session)
    login_ok(mocked)
    progress(mocked, "IDLE", "0")
    await client.poll_phase()
    await session.close()
    assert await client.restore_result() is None
    assert await client.version() is None
    await client.logout()
    with pytest.raises(RuntimeError):  # a programming error, not an SklmError
        await client.poll_phase()
