"""The dashboard's server side over real HTTP on 127.0.0.1, against a real SQLite store.

The journal holds real tracker output (the scripted fleet of ``tests/unit/test_views``
plus a server whose error message is hostile markup); a real :class:`StatusServer`
serves it with a real :class:`EventStream`. Every JSON answer is compared with what
the CLI prints for the same store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.unit.test_views import AUTHS, DR, GONE, LAB, PROD, Feed, at, rid
from watcher import schema, views
from watcher.cli import _status_from_daemon
from watcher.config import Listen, Secret, SinkConfig
from watcher.dashboard import ASSETS_DIR
from watcher.events import Event, EventType
from watcher.scheduler import WatchStats
from watcher.service import LatencyHistogram, StatusServer
from watcher.store.base import OutboxSummary
from watcher.store.sqlite import SqliteStore
from watcher.stream import EventStream
from watcher.tracker import Failure, Observation, ServerState, step

pytestmark = pytest.mark.integration

NOW = at(200)
HOSTILE = "<script>alert(1)</script>"
TOKEN = "tok-3f9a-very-secret"
PASSWORD = "pw-81c2-very-secret"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
#: A generous guard against a hang; never what a test asserts on.
HANG_GUARD = 20.0


class HostileFeed(Feed):
    """A server whose every failed poll says ``HOSTILE``."""

    def fail(self, seconds: float) -> None:
        """One failed poll at T0 + ``seconds`` with the hostile detail."""
        obs = Observation(
            at=at(seconds),
            monotonic=float(seconds),
            failure=Failure.PROTOCOL,
            detail=HOSTILE,
        )
        result = step(self.config, self.state, obs)
        self.state = result.state
        if result.save:
            self.journal.record(self.config.name, self.state.to_dict(), result.events)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteStore]:
    """A store holding the scripted fleet's real events and states."""
    with SqliteStore.open(
        tmp_path / "state", tmp_path / "events.jsonl", [SinkConfig("ops", "webhook")]
    ) as opened:
        for name, script in [
            ("prod-1", PROD),
            ("lab-1", LAB),
            ("dr-1", DR),
            ("gone-1", GONE),
            ("auth-1", AUTHS),
        ]:
            Feed(opened, name).run(script)
        HostileFeed(opened, "evil-1").fail(0)
        yield opened


@dataclass
class StoreSource:
    """A ``StatusSource`` whose states are the store's (what the daemon would hold)."""

    journal: SqliteStore
    server_states: dict[str, ServerState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server_states = {
            name: ServerState.from_dict(state, at=NOW, monotonic=200.0)
            for name, state in self.journal.load_states().items()
        }

    def states(self) -> Mapping[str, ServerState]:
        """The servers' states."""
        return dict(self.server_states)

    def stats(self) -> Mapping[str, WatchStats]:
        """No poll counters."""
        return {}

    async def outbox(self) -> Sequence[OutboxSummary]:
        """The store's backlog."""
        return self.journal.outbox_summary(NOW)

    def health(self) -> str | None:
        """Healthy."""
        return None

    def events_by_type(self) -> Mapping[str, int]:
        """No counts."""
        return {}

    def poll_latency(self) -> Mapping[str, LatencyHistogram]:
        """No histograms."""
        return {}


@dataclass
class Running:
    """A started server and a client session for it."""

    server: StatusServer
    stream: EventStream
    base: str
    session: aiohttp.ClientSession
    listen: Listen
    pump: asyncio.Task[None]

    async def stop(self) -> None:
        """Close the client, the server and the stream's pump."""
        await self.session.close()
        await self.server.close()
        self.pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.pump

    async def get(
        self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], str]:
        """(status, headers, body) of one request."""
        async with self.session.request(
            method, self.base + path, headers=headers
        ) as response:
            return response.status, response.headers, await response.text()

    async def get_json(self, path: str) -> Any:
        """The JSON of a 200 answer."""
        return await self.get_json_with(path, None)

    async def get_json_with(self, path: str, authorization: str | None) -> Any:
        """The JSON of a 200 answer to a request with this ``Authorization``."""
        sent = None if authorization is None else {"Authorization": authorization}
        status, headers, body = await self.get(path, headers=sent)
        assert status == 200, body
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        return json.loads(body)


@pytest.fixture
async def running(journal: SqliteStore) -> AsyncIterator[Running]:
    """A StatusServer with the dashboard on 127.0.0.1:0 over ``journal``."""
    running = await start(journal)
    try:
        yield running
    finally:
        await running.stop()


async def start(
    journal: SqliteStore,
    *,
    queue_size: int = 1000,
    **kwargs: Any,
) -> Running:
    """Start a server and its stream's pump (``Running.stop`` ends both)."""
    position = journal.audit_position()
    stream = EventStream(
        journal, start_after=position.index if position else 0, queue_size=queue_size
    )
    pump = asyncio.create_task(stream.run())
    server = StatusServer(
        StoreSource(journal),
        version="9.9.9",
        now=lambda: NOW,
        store=journal,
        stream=stream,
        **kwargs,
    )
    host, port = await server.start("127.0.0.1", 0)
    return Running(
        server,
        stream,
        f"http://{host}:{port}",
        aiohttp.ClientSession(),
        Listen(host, port),
        pump,
    )


def audit_lines(journal: SqliteStore) -> list[str]:
    """The audit log's lines, without newlines."""
    return journal.audit_log.read_text(encoding="utf-8").splitlines()


# --- pages, assets, headers, methods -------------------------------------------------


PAGES = {
    "/": "index.html",
    "/restores": "restores.html",
    "/restores/some-id": "restore.html",
}


@pytest.mark.parametrize(("path", "name"), PAGES.items())
async def test_pages_are_the_packaged_html_shells(
    running: Running, path: str, name: str
) -> None:
    """Each page is its HTML file from the package, revalidated on every load."""
    status, headers, body = await running.get(path)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert body == (ASSETS_DIR / name).read_text(encoding="utf-8")


async def test_assets_have_their_content_types(running: Running) -> None:
    """Every packaged asset is served with its type; nothing outside the directory."""
    names = sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_file())
    assert any(n.endswith(".js") for n in names)
    assert any(n.endswith(".css") for n in names)
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in names:
        status, headers, body = await running.get(f"/assets/{name}")
        assert status == 200, name
        suffix = Path(name).suffix
        if suffix in types:
            assert headers["Content-Type"].startswith(types[suffix])
        assert headers["Cache-Control"] == "no-cache"
        assert body == (ASSETS_DIR / name).read_text(encoding="utf-8")
    for bad in ("/assets/..%2Fdashboard.py", "/assets/dashboard.py", "/assets/.x.js"):
        status, _, _ = await running.get(bad)
        assert status == 404, bad


ROUTES = [
    "/",
    "/restores",
    "/restores/x",
    "/assets/app.css",
    "/api/status",
    "/api/restores",
    "/api/restores/nope",
    "/api/outbox",
    "/healthz",
    "/metrics",
    "/status",
    "/no-such-page",
]


async def test_every_response_carries_the_security_headers(running: Running) -> None:
    """CSP, nosniff and no-referrer on pages, API, errors, probes and the stream."""
    for path in ROUTES:
        _, headers, _ = await running.get(path)
        assert headers["Content-Security-Policy"] == CSP, path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "no-referrer", path
    async with running.session.get(running.base + "/api/events/stream") as response:
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert response.headers["Content-Security-Policy"] == CSP


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_only_get_is_answered(running: Running, method: str) -> None:
    """Read-only: any other method is 405 on every path, known or not."""
    for path in [*ROUTES, "/api/events/stream"]:
        status, headers, _ = await running.get(path, method=method)
        assert status == 405, (method, path)
        assert headers["Allow"] == "GET, HEAD"


# --- the JSON API is the CLI's JSON ------------------------------------------------


async def test_api_status_is_status_json(
    running: Running, journal: SqliteStore
) -> None:
    """``/api/status`` is what ``status --json`` prints while this daemon runs."""
    api = await running.get_json("/api/status")
    cli_rows = await anyio.to_thread.run_sync(_status_from_daemon, running.listen, NOW)
    assert cli_rows is not None
    assert api == [row.to_json() for row in cli_rows]
    # And the same facts the stored view (no daemon) shows, but live.
    stored = {r.server: r.to_json() for r in views.fleet_status(journal, NOW)}
    for row in api:
        expected = stored[row["server"]] | {
            "daemon_running": True,
            "as_of": schema.format_time(NOW),
        }
        assert row == expected
    by_name = {row["server"]: row for row in api}
    _, headers, _ = await running.get("/api/status")
    assert re.fullmatch(r"app;dur=\d+\.\d", headers["Server-Timing"])
    assert by_name["dr-1"]["stalled"] is True
    assert by_name["prod-1"]["stalled"] is False
    assert by_name["auth-1"]["health"] == "auth_failed"


async def test_api_restores_is_restores_json(
    running: Running, journal: SqliteStore
) -> None:
    """``/api/restores`` is ``restores --json``, filtered by glob, outcome and limit."""
    everything = [r.to_json() for r in views.restores(journal)]
    assert len(everything) >= 4
    assert await running.get_json("/api/restores") == everything
    assert await running.get_json("/api/restores?server=prod-*") == [
        r for r in everything if r["server"] == "prod-1"
    ]
    assert await running.get_json("/api/restores?outcome=failed") == [
        r for r in everything if r["outcome"] == "failed"
    ]
    assert await running.get_json("/api/restores?limit=2") == everything[-2:]
    for bad in ("limit=0", "limit=x", "limit=100000"):
        status, _, body = await running.get(f"/api/restores?{bad}")
        assert status == 400
        assert "limit" in json.loads(body)["error"]


async def test_api_restore_detail(running: Running, journal: SqliteStore) -> None:
    """One restore: its row, every phase with duration and brackets, its events."""
    restore_id = rid("prod-1", 10)
    detail = await running.get_json(f"/api/restores/{restore_id}")
    (row,) = [r for r in views.restores(journal) if r.restore_id == restore_id]
    assert detail["restore"] == row.to_json()
    phases = detail["phases"]
    assert [p["phase"] for p in phases] == [
        "INITIALIZE",
        "CREATE_TEMP_DIR",
        "RESTORE_CONFIG_FILES",
        "RESTORE_KEYSTORES",
        "RESTORE_DATABASES",
        "CLEANUP",
        "COMPLETED",
    ]
    by_phase = {p["phase"]: p for p in phases}
    # CREATE_TEMP_DIR passed between the polls at 10 s and 12 s.
    assert by_phase["CREATE_TEMP_DIR"]["inferred"] is True
    assert by_phase["CREATE_TEMP_DIR"]["bracket"] == {
        "before": schema.format_time(at(10)),
        "after": schema.format_time(at(12)),
    }
    # Observed phases have no brackets; durations run to the next phase.
    assert by_phase["INITIALIZE"]["inferred"] is False
    assert by_phase["INITIALIZE"]["bracket"] == {"before": None, "after": None}
    assert by_phase["INITIALIZE"]["entered_at"] == schema.format_time(at(10))
    assert by_phase["INITIALIZE"]["duration"] == 2.0
    assert by_phase["INITIALIZE"]["left_at"] == schema.format_time(at(12))
    assert by_phase["RESTORE_DATABASES"]["duration"] == 10.0
    assert by_phase["COMPLETED"]["left_at"] is None
    mine = [
        e.to_dict() for e in journal.events() if e.data.get("restore_id") == restore_id
    ]
    assert detail["events"] == mine
    assert {e["type"] for e in mine} >= {
        "sklm.restore.started",
        "sklm.restore.completed",
        "sklm.server.restarted",
    }


async def test_unknown_restore_is_a_json_404(running: Running) -> None:
    """An id no event has: 404 with a JSON error."""
    status, headers, body = await running.get("/api/restores/no-such-restore")
    assert status == 404
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {"error": "no restore with this id"}


async def test_api_outbox_is_outbox_json(
    running: Running, journal: SqliteStore
) -> None:
    """``/api/outbox`` is ``outbox --json``; ``?dead=1`` is ``outbox --dead --json``."""
    first = journal.events()[0]
    journal.dead_letter("ops", first.id, error="HTTP 410 Gone", at=at(300))
    summary = journal.outbox_summary(NOW)
    assert await running.get_json("/api/outbox") == schema.outbox_json(summary, [])
    dead = journal.dead_rows()
    assert await running.get_json("/api/outbox?dead=1") == schema.outbox_json(
        summary, dead
    )


# --- hostile strings and secrets -----------------------------------------------------


async def test_a_hostile_error_message_is_json_text_and_never_html(
    running: Running,
) -> None:
    """The markup an SKLM server answered travels JSON-escaped, only as JSON."""
    status, headers, body = await running.get("/api/status")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    # HTML-safe JSON: no "<", ">" or "&" even inside strings; the same values.
    assert "<" not in body
    assert ">" not in body
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in body
    (row,) = [r for r in json.loads(body) if r["server"] == "evil-1"]
    assert row["last_error"].endswith(HOSTILE)
    for path in PAGES:
        _, page_headers, page = await running.get(path)
        assert "alert(1)" not in page
        assert page_headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = await running.get("/api/restores")
    assert headers["Content-Type"].startswith("application/json")


# --- authentication ---------------------------------------------------------------


@pytest.fixture
async def guarded(journal: SqliteStore) -> AsyncIterator[Running]:
    """A server that requires the bearer token or HTTP Basic."""
    from watcher.service import HttpAuth

    auth = HttpAuth(token=Secret(TOKEN), username="operator", password=Secret(PASSWORD))
    running = await start(journal, auth=auth)
    try:
        yield running
    finally:
        await running.stop()


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic ``Authorization`` header."""
    pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {pair}"}


async def test_auth_is_required_everywhere_but_healthz(guarded: Running) -> None:
    """401 with a Basic challenge without credentials; /healthz stays open."""
    for path in [*ROUTES, "/api/events/stream"]:
        if path == "/healthz":
            continue
        status, headers, body = await guarded.get(path)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Basic realm="sklm-watcher"'
        assert headers["Content-Security-Policy"] == CSP
        assert TOKEN not in body
        assert PASSWORD not in body
    status, _, body = await guarded.get("/healthz")
    assert (status, body) == (200, "ok\n")


async def test_bearer_and_basic_credentials_are_accepted(guarded: Running) -> None:
    """The right token or user and password opens every path; wrong ones do not."""
    good = [
        {"Authorization": f"Bearer {TOKEN}"},
        basic("operator", PASSWORD),
    ]
    bad = [
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        basic("operator", PASSWORD + "x"),
        basic("someone", PASSWORD),
        basic("operator", TOKEN),
        {"Authorization": "Basic !!!not-base64"},
    ]
    for headers in good:
        for path in ("/", "/api/status", "/metrics", "/status", "/assets/app.css"):
            status, _, body = await guarded.get(path, headers=headers)
            assert status == 200, (path, headers)
            assert TOKEN not in body
            assert PASSWORD not in body
    for headers in bad:
        status, _, _ = await guarded.get("/api/status", headers=headers)
        assert status == 401, headers


async def test_a_token_only_server_challenges_with_bearer(
    journal: SqliteStore,
) -> None:
    """Without Basic configured the challenge names Bearer (no browser prompt)."""
    from watcher.service import HttpAuth

    running = await start(journal, auth=HttpAuth(token=Secret(TOKEN)))
    try:
        status, headers, _ = await running.get("/api/status")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="sklm-watcher"'
        status, _, _ = await running.get("/", headers=basic("operator", TOKEN))
        assert status == 401
    finally:
        await running.stop()


# --- the event stream ------------------------------------------------------------


class SseReader:
    """Reads Server-Sent Events messages from an open response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def message(self) -> dict[str, str]:
        """The next message or comment block as {field: value} (``:`` for comments)."""
        fields: dict[str, str] = {}
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode("utf-8").rstrip("\n")
            if not line:
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields[name or ":"] = value.removeprefix(" ")

    async def ids_until_the_end(self) -> list[str]:
        """The ids of every message until the server ends the stream."""
        ids: list[str] = []
        try:
            while True:
                ids.append((await self.event())["id"])
        except EOFError:
            return ids

    async def event(self) -> dict[str, str]:
        """The next message with an ``id`` (skipping retry and keepalives)."""
        while True:
            fields = await self.message()
            if "id" in fields:
                return fields


def record_phase(journal: SqliteStore, n: int) -> Event:
    """Record one new event (a later poll's) and return it."""
    e = Event.create(
        EventType.RESTORE_PHASE,
        "live-1",
        at(1000 + n),
        {"restore_id": "live", "phase": "INITIALIZE", "inferred": False},
        key=(str(n),),
    )
    journal.record("live-1", {}, [e])
    return e


async def test_stream_replays_from_last_event_id_then_pushes_live(
    running: Running, journal: SqliteStore
) -> None:
    """After ``Last-Event-ID: N``: every line after N from the store, then live ones."""
    lines = audit_lines(journal)
    total = len(lines)
    assert total > 5
    fanned = anyio.Event()
    running.stream.on_fanout = lambda cursor: fanned.set()
    with anyio.fail_after(HANG_GUARD):
        async with running.session.get(
            running.base + "/api/events/stream",
            headers={"Last-Event-ID": str(total - 3)},
        ) as response:
            assert response.status == 200
            reader = SseReader(response)
            assert await reader.message() == {"retry": "2000"}
            replayed = [await reader.event() for _ in range(3)]
            assert replayed == [
                {"id": str(i + 1), "data": lines[i]} for i in range(total - 3, total)
            ]
            # Journaled now: pushed to the open stream (no reconnect, no poll).
            await anyio.to_thread.run_sync(record_phase, journal, 1)
            running.stream.notify()
            live = await reader.event()
            await fanned.wait()
    assert live == {"id": str(total + 1), "data": audit_lines(journal)[-1]}
    assert json.loads(live["data"])["auditseq"] == total + 1


async def test_stream_query_parameter_and_no_gap_no_duplicate(
    running: Running, journal: SqliteStore
) -> None:
    """Events journaled while a client replays arrive once each, in order."""
    total = len(audit_lines(journal))
    with anyio.fail_after(HANG_GUARD):
        async with running.session.get(
            running.base + "/api/events/stream?last_event_id=0"
        ) as response:
            reader = SseReader(response)
            await reader.message()  # retry
            first = await reader.event()
            assert first["id"] == "1"
            # While the rest of the replay is still to be read: three new events.
            for n in range(3):
                await anyio.to_thread.run_sync(record_phase, journal, n)
                running.stream.notify()
            ids = [int(first["id"])]
            while ids[-1] < total + 3:
                ids.append(int((await reader.event())["id"]))
    assert ids == list(range(1, total + 4))


async def test_a_stream_without_last_event_id_gets_only_new_events(
    running: Running, journal: SqliteStore
) -> None:
    """A fresh client starts at the present: the next event is the first it sees."""
    total = len(audit_lines(journal))
    with anyio.fail_after(HANG_GUARD):
        async with running.session.get(running.base + "/api/events/stream") as response:
            reader = SseReader(response)
            # The retry line comes after the subscription: nothing can slip by.
            await reader.message()
            await anyio.to_thread.run_sync(record_phase, journal, 7)
            running.stream.notify()
            assert (await reader.event())["id"] == str(total + 1)


async def test_a_slow_client_is_dropped_and_catches_up_on_reconnect(
    journal: SqliteStore,
) -> None:
    """A full queue drops the client (memory bounded); reconnecting misses nothing."""
    running = await start(journal, queue_size=1)
    try:
        total = len(audit_lines(journal))
        with anyio.fail_after(HANG_GUARD):
            async with running.session.get(
                running.base + "/api/events/stream"
            ) as response:
                reader = SseReader(response)
                await reader.message()
                # Five lines fanned out in one go: the queue holds one (and a
                # receiver already waiting may take one more directly).
                for n in range(5):
                    await anyio.to_thread.run_sync(record_phase, journal, n)
                running.stream.notify()
                got = await reader.ids_until_the_end()
            assert 1 <= len(got) <= 2
            assert running.stream.dropped == 1
            assert running.stream.clients == 0
            async with running.session.get(
                running.base + "/api/events/stream",
                headers={"Last-Event-ID": got[-1]},
            ) as response:
                reader = SseReader(response)
                await reader.message()
                rest = [(await reader.event())["id"] for _ in range(5 - len(got))]
        assert got + rest == [str(total + i) for i in range(1, 6)]
    finally:
        await running.stop()


async def test_an_idle_stream_sends_keepalives(journal: SqliteStore) -> None:
    """A comment line every ``keepalive`` seconds keeps proxies from closing it."""
    position = journal.audit_position()
    stream = EventStream(
        journal, start_after=position.index if position else 0, keepalive=0.01
    )
    server = StatusServer(
        StoreSource(journal), version="9.9.9", store=journal, stream=stream
    )
    host, port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            with anyio.fail_after(HANG_GUARD):
                async with session.get(
                    f"http://{host}:{port}/api/events/stream"
                ) as response:
                    reader = SseReader(response)
                    assert await reader.message() == {"retry": "2000"}
                    assert await reader.message() == {":": "keepalive"}
    finally:
        await server.close()


async def test_bad_last_event_id_is_a_400(running: Running) -> None:
    """A Last-Event-ID that is not an auditseq is refused, in JSON."""
    status, _, body = await running.get(
        "/api/events/stream", headers={"Last-Event-ID": "abc"}
    )
    assert status == 400
    assert "Last-Event-ID" in json.loads(body)["error"]


def test_now_is_fixed() -> None:
    """The fixture clock is a fixed instant (expected values are literals)."""
    assert datetime(2026, 11, 29, 10, 3, 20, tzinfo=UTC) == NOW


async def test_new_credentials_apply_at_once(guarded: Running) -> None:
    """After ``set_auth`` (a reload) the old password no longer opens anything."""
    from watcher.service import HttpAuth

    guarded.server.set_auth(HttpAuth(token=Secret("rotated-token")))
    status, _, _ = await guarded.get("/api/status", headers=basic("operator", PASSWORD))
    assert status == 401
    ok = {"Authorization": "Bearer rotated-token"}
    assert (await guarded.get("/api/status", headers=ok))[0] == 200


async def test_status_reads_a_guarded_daemon_with_its_credentials(
    guarded: Running,
) -> None:
    """``status`` sends the configured credentials; without them it gets nothing."""
    from watcher.cli import _listen_authorization
    from watcher.config import WatcherSettings

    def read(authorization: str | None) -> list[dict[str, Any]] | None:
        rows = _status_from_daemon(guarded.listen, NOW, authorization)
        return None if rows is None else [row.to_json() for row in rows]

    assert await anyio.to_thread.run_sync(read, None) is None
    for settings in (
        WatcherSettings(listen_token=Secret(TOKEN)),
        WatcherSettings(listen_username="operator", listen_password=Secret(PASSWORD)),
    ):
        header = _listen_authorization(settings)
        assert header is not None
        rows = await anyio.to_thread.run_sync(read, header)
        assert rows == await guarded.get_json_with("/api/status", header)


async def test_head_on_the_stream_answers_without_streaming(running: Running) -> None:
    """HEAD gets the stream's headers and an empty body, not an endless response."""
    with anyio.fail_after(HANG_GUARD):
        status, headers, body = await running.get("/api/events/stream", method="HEAD")
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert body == ""
    assert running.stream.clients == 0
