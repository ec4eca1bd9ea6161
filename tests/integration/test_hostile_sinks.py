"""Hostile receivers: the webhook and Slack sinks against misbehaving HTTP endpoints.

Each case is a receiver behaviour on a real socket (``hostile_server``) and what the
sink must make of it, as documented in ``watcher.sinks.base``: delivered (any 2xx,
whatever the body), a permanent failure (dead-lettered at once: 3xx, most 4xx,
Slack's documented permanent errors) or a transient one (retried with backoff:
408/409/425/429, 5xx, timeouts, closed or reset connections, broken framing). No
case may leak the receiver's URL, hang past the sink's timeout, or read a huge
answer whole. The dispatcher test at the end runs one event through a series of
these behaviours to show nothing is lost on the way to the one that accepts it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import aiohttp
import anyio
import pytest

from tests.clock import VirtualClock
from tests.integration.hostile_server import (
    HOOK_PATH,
    Exchange,
    HostileServer,
    Responder,
    answer,
    close_at_once,
    gzip_bomb,
    headers_forever,
    raw,
    redirect,
    reset_at_once,
    stopped_reading,
    streamed,
    trickled,
    witness_untouched,
)
from watcher.client import create_session
from watcher.config import Secret, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.errors import DeliveryError
from watcher.events import Event, EventType
from watcher.sinks import build_sink
from watcher.store.sqlite import SqliteStore as Journal

pytestmark = pytest.mark.integration

#: The sink timeout: cases that only end by it (hangs, trickles) end quickly.
TIMEOUT = 0.5
#: A hang guard per delivery, far above TIMEOUT; not a speed assertion.
HANG_GUARD = 10.0
START = datetime(2026, 11, 29, 10, tzinfo=UTC)

MALFORMED = r"^ClientResponseError \(malformed HTTP response\)$"

Outcome = Literal["delivered", "permanent", "transient"]
Check = Callable[[HostileServer], Awaitable[None]]


def head(status: str, *lines: str, length: int | None = None) -> bytes:
    """A response head; ``Content-Length`` when ``length`` is given."""
    all_lines = [f"HTTP/1.1 {status}", *lines]
    if length is not None:
        all_lines.append(f"Content-Length: {length}")
    return ("\r\n".join(all_lines) + "\r\n\r\n").encode()


async def reset_mid_body(ex: Exchange) -> None:
    """Promise 1,000 bytes, send 10, then reset the connection."""
    await ex.send(head("200 OK", "Content-Type: text/plain", length=1000) + b"x" * 10)
    ex.reset()


async def hang_silently(ex: Exchange) -> None:
    """Read the request and never answer."""
    await ex.hang()


@dataclass(frozen=True, slots=True)
class SinkCase:
    """One receiver behaviour and what the sink must make of it.

    ``detail`` is a regular expression the error's detail must match.
    """

    id: str
    outcome: Outcome
    hook: Responder | tuple[Responder, ...]
    detail: str = ""
    kind: Literal["webhook", "slack"] = "webhook"
    retry_after: float | None = None
    witness: bool = False
    check: Check | None = None


D: Outcome = "delivered"
P: Outcome = "permanent"
T: Outcome = "transient"
TEXT = "text/plain"

CASES: tuple[SinkCase, ...] = (
    # -- 2xx: accepted, whatever the body says
    SinkCase("200-json", D, answer("200 OK", '{"ok": true}')),
    SinkCase(
        "200-garbage-body", D, answer("200 OK", b"\x00\xff garbage", content_type=TEXT)
    ),
    SinkCase(
        "200-html-body",
        D,
        answer("200 OK", "<html>thanks</html>", content_type="text/html"),
    ),
    SinkCase("200-empty-no-content-type", D, answer("200 OK", b"", content_type=None)),
    SinkCase("202-accepted", D, answer("202 Accepted", "queued", content_type=TEXT)),
    SinkCase("204-no-content", D, raw(head("204 No Content"))),
    SinkCase(
        "200-close-delimited-body",
        D,
        raw(head("200 OK", "Connection: close") + b"fine", then="close"),
    ),
    SinkCase(
        "200-gzip-bomb",
        D,
        answer("200 OK", gzip_bomb(), headers=[("Content-Encoding", "gzip")]),
    ),
    SinkCase(
        "200-gigantic-body-not-read-whole",
        D,
        streamed(
            head("200 OK", "Content-Type: text/plain", length=200 << 20), 200 << 20
        ),
        check=stopped_reading,
    ),
    # A 2xx status line is the receiver's acceptance; what goes wrong in the body
    # after it does not take that back (the sink reads at most a few KiB of it).
    SinkCase(
        "200-body-trickles",
        D,
        trickled(head("200 OK", length=100), b"x" * 100, 0.2),
    ),
    SinkCase("200-reset-mid-body", D, reset_mid_body),
    SinkCase(
        "200-content-length-lies-short",
        D,
        raw(head("200 OK", length=50) + b"short", then="close"),
    ),
    # -- 3xx: never followed (the target could be anyone), a configuration problem
    *(
        SinkCase(
            f"{code}-redirect",
            P,
            redirect(f"{code} Moved"),
            r"HTTP \d+: redirect not followed",
            witness=True,
            check=witness_untouched,
        )
        for code in (301, 302, 303, 307, 308)
    ),
    # -- 4xx: the request is wrong or the URL revoked; retrying cannot help
    *(
        SinkCase(
            f"{code}-permanent",
            P,
            answer(f"{code} X", "no", content_type=TEXT),
            rf"HTTP {code}",
        )
        for code in (400, 401, 403, 404, 405, 410, 413, 422)
    ),
    # -- transient statuses
    *(
        SinkCase(
            f"{code}-transient",
            T,
            answer(f"{code} X", "later", content_type=TEXT),
            rf"HTTP {code}",
        )
        for code in (408, 409, 425, 500, 502, 504)
    ),
    SinkCase(
        "429-retry-after-seconds",
        T,
        answer(
            "429 Too Many Requests",
            "slow down",
            content_type=TEXT,
            headers=[("Retry-After", "120")],
        ),
        r"HTTP 429",
        retry_after=120.0,
    ),
    SinkCase(
        "503-retry-after-http-date",
        T,
        answer(
            "503 Service Unavailable",
            "maintenance",
            content_type=TEXT,
            headers=[("Retry-After", "Sun, 29 Nov 2026 10:05:00 GMT")],
        ),
        r"HTTP 503",
        retry_after=300.0,
    ),
    SinkCase(
        "503-retry-after-garbage-ignored",
        T,
        answer("503 X", "", content_type=TEXT, headers=[("Retry-After", "soon")]),
        r"HTTP 503",
    ),
    SinkCase(
        "500-gigantic-body-not-read-whole",
        T,
        streamed(head("500 Internal Server Error", length=200 << 20), 200 << 20),
        r"HTTP 500",
        check=stopped_reading,
    ),
    # -- transport and framing failures: transient
    SinkCase("hangs-forever", T, hang_silently, rf"no answer within {TIMEOUT:g} s"),
    SinkCase(
        "headers-never-end",
        T,
        headers_forever,
        r"^ClientResponseError \(malformed HTTP response\)$|^no answer within",
    ),
    SinkCase("closes-without-answer", T, close_at_once, r"^ServerDisconnectedError$"),
    SinkCase(
        "resets-without-answer",
        T,
        reset_at_once,
        r"^(ClientOSError \(Connection reset by peer\)|ServerDisconnectedError)$",
    ),
    SinkCase(
        "garbage-status-line",
        T,
        raw(b"HTTP/1.1 2OO OK\r\n\r\n", then="close"),
        MALFORMED,
    ),
    SinkCase(
        "not-http-at-all", T, raw(b"SSH-2.0-OpenSSH_9.6\r\n", then="close"), MALFORMED
    ),
    SinkCase(
        "broken-chunked-framing",
        T,
        raw(
            head("200 OK", "Transfer-Encoding: chunked") + b"zz\r\nnope\r\n",
            then="close",
        ),
        MALFORMED,
    ),
    # -- Slack: its documented answers
    SinkCase(
        "slack-200-ok", D, answer("200 OK", "ok", content_type=TEXT), kind="slack"
    ),
    SinkCase(
        "slack-200-garbage",
        D,
        answer("200 OK", b"\xfe\xff", content_type=TEXT),
        kind="slack",
    ),
    *(
        SinkCase(
            f"slack-{status.split()[0]}-{code}",
            P,
            answer(status, code, content_type=TEXT),
            rf"HTTP \d+ {code}$",
            kind="slack",
        )
        for status, code in (
            ("400 Bad Request", "invalid_payload"),
            ("403 Forbidden", "invalid_token"),
            ("403 Forbidden", "action_prohibited"),
            ("404 Not Found", "channel_not_found"),
            ("404 Not Found", "no_service"),
            ("410 Gone", "channel_is_archived"),
        )
    ),
    SinkCase(
        "slack-429-rate-limited",
        T,
        answer(
            "429 Too Many Requests",
            "rate_limited",
            content_type=TEXT,
            headers=[("Retry-After", "30")],
        ),
        r"HTTP 429 rate_limited",
        kind="slack",
        retry_after=30.0,
    ),
    SinkCase(
        "slack-500-html-not-quoted",
        T,
        answer(
            "500 Internal Server Error", "<html>oops</html>", content_type="text/html"
        ),
        r"HTTP 500$",
        kind="slack",
    ),
)


def event() -> Event:
    """The event every case delivers."""
    return Event.create(
        EventType.RESTORE_STARTED,
        "sklm-prod-1",
        START,
        {"restore_id": "r1", "phase": "INITIALIZE", "seen_at_startup": False},
        key=("r1",),
    )


def sink_config(kind: str, url: str, name: str = "hostile") -> SinkConfig:
    """A sink of ``kind`` posting to ``url``, with the short timeout."""
    return SinkConfig(
        name=name,
        type=kind,
        url=Secret(url),
        timeout=TIMEOUT,
        allow_insecure_http=True,
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The process session as the daemon builds it."""
    async with create_session([]) as s:
        yield s


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_hostile_receiver(case: SinkCase, session: aiohttp.ClientSession) -> None:
    """One receiver behaviour gives the documented outcome, leaks no URL, never hangs."""
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(HostileServer(hook=case.hook))
        if case.witness:
            server.witness = await stack.enter_async_context(HostileServer())
        url = server.url + HOOK_PATH
        clock = VirtualClock.auto(START)
        sink = build_sink(sink_config(case.kind, url), session, clock)
        error: DeliveryError | None = None
        with anyio.fail_after(HANG_GUARD):
            try:
                await sink.deliver(event())
            except DeliveryError as exc:
                error = exc
        assert server.hook_requests == 1
        if case.outcome == "delivered":
            assert error is None
        else:
            assert error is not None, "expected a delivery error"
            assert error.permanent is (case.outcome == "permanent"), str(error)
            assert re.search(case.detail, error.detail), error.detail
            assert error.retry_after == case.retry_after
            assert url not in str(error)
            assert str(server.url.rsplit(":", 1)[1]) not in error.detail
        if case.check is not None:
            await case.check(server)


def test_corpus_is_large_and_named() -> None:
    """Every class of answer issue #8 names is here, each case with a unique id."""
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 40
    assert {case.outcome for case in CASES} == {"delivered", "permanent", "transient"}


async def test_one_event_survives_a_series_of_hostile_answers(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Reset, close, garbage, hang, 503: the row waits and is delivered once accepted."""
    hostile = (
        reset_at_once,
        close_at_once,
        raw(b"HTTP/1.1 2OO OK\r\n\r\n", then="close"),
        hang_silently,
        answer("503 X", "busy", content_type=TEXT, headers=[("Retry-After", "1")]),
        answer("200 OK", b"\x00 garbage but 2xx", content_type=TEXT),
    )
    async with HostileServer(hook=hostile) as server:
        config = sink_config("webhook", server.url + HOOK_PATH, name="ops")
        journal = Journal.open(tmp_path / "state", tmp_path / "events.jsonl", (config,))
        the_event = event()
        journal.record(the_event.server, {}, [the_event])
        clock = VirtualClock.auto(START)
        dispatcher = Dispatcher(
            journal,
            {"ops": build_sink(config, session, clock)},
            {"ops": config},
            clock,
            jitter=0,
        )
        with anyio.fail_after(HANG_GUARD * 2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(dispatcher.run)
                # The row's progress lives in the journal: poll it (no event to await).
                while (await journal.call(journal.outbox_summary, START))[0].pending:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        journal.close()
    assert outbox_row(tmp_path, the_event.id) == ("delivered", len(hostile))
    assert server.hook_requests == len(hostile)
    # Every attempt carried the same event, byte for byte (its id included).
    bodies = {r.body for r in server.requests if r.path == HOOK_PATH}
    assert bodies == {the_event.to_json().encode()}


def outbox_row(tmp_path: Path, event_id: str) -> tuple[str, int]:
    """The (status, attempts) of the event's outbox row, read from the database."""
    conn = sqlite3.connect(tmp_path / "state" / "state.sqlite3")
    try:
        ((status, attempts),) = conn.execute(
            "SELECT status, attempts FROM outbox WHERE event_id = ?", (event_id,)
        ).fetchall()
    finally:
        conn.close()
    return str(status), int(attempts)
