"""The status endpoint over real HTTP on 127.0.0.1: /healthz, /metrics and /status."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.clock import VirtualClock
from watcher.errors import ConfigError, JournalError
from watcher.phases import Phase
from watcher.scheduler import WatchStats
from watcher.service import (
    SERVICE_LISTENING,
    Heartbeat,
    LatencyHistogram,
    StatusServer,
)
from watcher.store.base import OutboxSummary
from watcher.tracker import ServerState

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 29, 10, 5, 30, 250000, tzinfo=UTC)


class FakeSource:
    """A ``StatusSource`` whose answers the test sets; ``outbox_error`` makes it raise."""

    def __init__(self) -> None:
        self.server_states: dict[str, ServerState] = {
            "sklm-1": ServerState(
                phase=Phase.RESTORE_DATABASES,
                phase_since_at=T0,
                restore_id="restore-1",
                restore_active=True,
                last_ok_at=T1,
            ),
            "sklm-2": ServerState(
                phase=Phase.IDLE, phase_since_at=T0, consecutive_failures=3
            ),
        }
        self.server_stats: dict[str, WatchStats] = {
            "sklm-1": WatchStats(T1, 0.02, 7, 0, 0),
            "sklm-2": WatchStats(T1, 1.5, 2, 3, 0),
        }
        self.backlog = [
            OutboxSummary("slack", pending=2, dead=1, oldest_pending_age=9.0)
        ]
        self.outbox_error: JournalError | None = None
        self.outbox_gate: anyio.Event | None = None
        self.problem: str | None = None
        self.events = {"sklm.restore.started": 1, "sklm.restore.phase": 5}
        self.latency = {"ok": LatencyHistogram((0.05, 1.0))}
        self.latency["ok"].observe(0.02)
        self.latency["ok"].observe(0.5)

    def states(self) -> Mapping[str, ServerState]:
        """The servers' states."""
        return dict(self.server_states)

    def stats(self) -> Mapping[str, WatchStats]:
        """The servers' counters."""
        return dict(self.server_stats)

    async def outbox(self) -> Sequence[OutboxSummary]:
        """The backlog, after the gate opens (if any); raises ``outbox_error``."""
        if self.outbox_gate is not None:
            await self.outbox_gate.wait()
        if self.outbox_error is not None:
            raise self.outbox_error
        return list(self.backlog)

    def health(self) -> str | None:
        """The configured problem."""
        return self.problem

    def events_by_type(self) -> Mapping[str, int]:
        """The configured event counts."""
        return dict(self.events)

    def poll_latency(self) -> Mapping[str, LatencyHistogram]:
        """The configured histograms."""
        return self.latency


Get = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def source() -> FakeSource:
    """A healthy two-server source."""
    return FakeSource()


@pytest.fixture
async def serve(
    source: FakeSource,
) -> AsyncIterator[Callable[..., Awaitable[Get]]]:
    """Start StatusServers on 127.0.0.1:0: ``get = await serve(**kwargs)``.

    ``await get(path, method=..., headers=...)`` returns (status, content type, body).
    """
    servers: list[StatusServer] = []
    async with aiohttp.ClientSession() as session:

        async def start(**kwargs: Any) -> Get:
            server = StatusServer(source, version="9.9.9", **kwargs)
            servers.append(server)
            host, port = await server.start("127.0.0.1", 0)
            assert host == "127.0.0.1"
            assert port > 0

            async def get(
                path: str, *, method: str = "GET", headers: dict[str, str] | None = None
            ) -> tuple[int, str, str]:
                url = f"http://{host}:{port}{path}"
                async with session.request(method, url, headers=headers) as response:
                    body = await response.text()
                    return response.status, response.headers["Content-Type"], body

            return get

        try:
            yield start
        finally:
            for server in servers:
                await server.close()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of Prometheus text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_healthz_ok(serve, logs):
    """A healthy daemon answers 200 ``ok``; starting logs the bound address."""
    get = await serve()
    assert await get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    listening = [e for e in logs if e["event"] == SERVICE_LISTENING]
    assert len(listening) == 1
    assert listening[0]["host"] == "127.0.0.1"
    assert listening[0]["log_level"] == "info"


async def test_healthz_503_when_the_journal_is_not_writable(serve, source):
    """The source's reason comes back as a one-line 503 body."""
    source.problem = "journal not writable: database or disk is full"
    get = await serve()
    status, _, body = await get("/healthz")
    assert (status, body) == (503, "journal not writable: database or disk is full\n")
    source.problem = None
    assert (await get("/healthz"))[0] == 200


async def test_healthz_503_when_the_heartbeat_stops(serve, source):
    """A heartbeat older than ``stall_after`` fails the probe, with its age."""
    clock = VirtualClock(origin=1000.0)
    heartbeat = Heartbeat(clock=clock.monotonic)
    get = await serve(heartbeat=heartbeat, stall_after=5.0)
    assert (await get("/healthz"))[0] == 200
    clock.advance(12.4)
    source.problem = "journal not writable: read-only file system\nsecond line"
    status, _, body = await get("/healthz")
    assert (status, body) == (
        503,
        "event loop stalled: last heartbeat 12 s ago; "
        "journal not writable: read-only file system second line\n",
    )
    heartbeat.beat()
    source.problem = None
    assert (await get("/healthz"))[0] == 200


async def test_metrics(serve):
    """/metrics is Prometheus text with the source's counters, gauges and histogram."""
    get = await serve(heartbeat=Heartbeat(clock=VirtualClock(origin=1000.0).monotonic))
    status, content_type, body = await get("/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    found = metric_samples(body)
    server_samples = {
        key: value
        for key, value in found.items()
        if any(label == "server" for label, _ in key[1])
    }
    assert server_samples == {
        ("sklm_watcher_polls_total", (("outcome", "ok"), ("server", "sklm-1"))): 7,
        ("sklm_watcher_polls_total", (("outcome", "failed"), ("server", "sklm-1"))): 0,
        ("sklm_watcher_polls_total", (("outcome", "ok"), ("server", "sklm-2"))): 2,
        ("sklm_watcher_polls_total", (("outcome", "failed"), ("server", "sklm-2"))): 3,
        ("sklm_watcher_poll_crashes_total", (("server", "sklm-1"),)): 0,
        ("sklm_watcher_poll_crashes_total", (("server", "sklm-2"),)): 0,
        ("sklm_watcher_poll_last_latency_seconds", (("server", "sklm-1"),)): 0.02,
        ("sklm_watcher_poll_last_latency_seconds", (("server", "sklm-2"),)): 1.5,
        (
            "sklm_watcher_last_successful_poll_timestamp_seconds",
            (("server", "sklm-1"),),
        ): T1.timestamp(),
        ("sklm_watcher_phase", (("server", "sklm-1"),)): 5,
        ("sklm_watcher_phase", (("server", "sklm-2"),)): 0,
        ("sklm_watcher_server_health", (("health", "ok"), ("server", "sklm-1"))): 1,
        (
            "sklm_watcher_server_health",
            (("health", "unreachable"), ("server", "sklm-2")),
        ): 1,
        ("sklm_watcher_restore_stalled", (("server", "sklm-1"),)): 0,
        ("sklm_watcher_restore_stalled", (("server", "sklm-2"),)): 0,
    }
    rest = {key: value for key, value in found.items() if key not in server_samples}
    assert rest == {
        ("sklm_watcher_build_info", (("version", "9.9.9"),)): 1,
        ("sklm_watcher_healthy", ()): 1,
        ("sklm_watcher_restores_in_progress", ()): 1,
        (
            "sklm_watcher_poll_latency_seconds_bucket",
            (("le", "0.05"), ("outcome", "ok")),
        ): 1,
        (
            "sklm_watcher_poll_latency_seconds_bucket",
            (("le", "1.0"), ("outcome", "ok")),
        ): 2,
        (
            "sklm_watcher_poll_latency_seconds_bucket",
            (("le", "+Inf"), ("outcome", "ok")),
        ): 2,
        ("sklm_watcher_poll_latency_seconds_count", (("outcome", "ok"),)): 2,
        ("sklm_watcher_poll_latency_seconds_sum", (("outcome", "ok"),)): 0.52,
        ("sklm_watcher_events_total", (("type", "sklm.restore.started"),)): 1,
        ("sklm_watcher_events_total", (("type", "sklm.restore.phase"),)): 5,
        ("sklm_watcher_events_total", (("type", "sklm.restore.completed"),)): 0,
        ("sklm_watcher_events_total", (("type", "sklm.restore.failed"),)): 0,
        ("sklm_watcher_events_total", (("type", "sklm.restore.stalled"),)): 0,
        ("sklm_watcher_events_total", (("type", "sklm.server.unreachable"),)): 0,
        ("sklm_watcher_events_total", (("type", "sklm.server.recovered"),)): 0,
        ("sklm_watcher_events_total", (("type", "sklm.server.restarted"),)): 0,
        ("sklm_watcher_events_total", (("type", "sklm.auth.failed"),)): 0,
        ("sklm_watcher_events_total", (("type", "sklm.auth.recovered"),)): 0,
        ("sklm_watcher_outbox_pending", (("sink", "slack"),)): 2,
        ("sklm_watcher_outbox_dead", (("sink", "slack"),)): 1,
        ("sklm_watcher_outbox_oldest_pending_age_seconds", (("sink", "slack"),)): 9,
        ("sklm_watcher_journal_readable", ()): 1,
        ("sklm_watcher_event_loop_lag_seconds", ()): 0,
    }


async def test_metrics_read_the_source_at_scrape_time(serve, source):
    """A second scrape shows what changed in the source since the first."""
    get = await serve()
    first = metric_samples((await get("/metrics"))[2])
    source.server_stats["sklm-1"] = WatchStats(T1, 0.03, 8, 0, 0)
    source.latency["ok"].observe(3.0)
    source.backlog = []
    second = metric_samples((await get("/metrics"))[2])
    key = ("sklm_watcher_polls_total", (("outcome", "ok"), ("server", "sklm-1")))
    assert (first[key], second[key]) == (7, 8)
    count = ("sklm_watcher_poll_latency_seconds_count", (("outcome", "ok"),))
    assert (first[count], second[count]) == (2, 3)
    assert not any(name.startswith("sklm_watcher_outbox") for name, _ in second)


async def test_metrics_negotiate_openmetrics(serve):
    """A Prometheus server asking for OpenMetrics gets it."""
    get = await serve()
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    status, content_type, body = await get("/metrics", headers=accept)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")


async def test_status(serve, source):
    """/status is the exact JSON snapshot of servers, outbox, health and version."""
    source.problem = "journal not writable: disk full"
    answered = datetime(2026, 11, 29, 10, 5, 31, tzinfo=UTC)
    get = await serve(now=lambda: answered)
    status, content_type, body = await get("/status")
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert json.loads(body) == {
        "version": "9.9.9",
        "as_of": "2026-11-29T10:05:31.000Z",
        "healthy": False,
        "problem": "journal not writable: disk full",
        "servers": [
            {
                "name": "sklm-1",
                "health": "ok",
                "phase": "RESTORE_DATABASES",
                "code": 5,
                "since": "2026-11-29T10:00:00.000Z",
                "restore_active": True,
                "restore_id": "restore-1",
                "restore_started_at": None,
                "awaiting_restart": False,
                "consecutive_failures": 0,
                "last_ok_at": "2026-11-29T10:05:30.250Z",
                "last_error": None,
                "last_failure": None,
                "last_poll_at": "2026-11-29T10:05:30.250Z",
                "last_latency": 0.02,
                "polls_ok": 7,
                "polls_failed": 0,
                "stalled": False,
            },
            {
                "name": "sklm-2",
                "health": "unreachable",
                "phase": "IDLE",
                "code": 0,
                "since": "2026-11-29T10:00:00.000Z",
                "restore_active": False,
                "restore_id": None,
                "restore_started_at": None,
                "awaiting_restart": False,
                "consecutive_failures": 3,
                "last_ok_at": None,
                "last_error": None,
                "last_failure": None,
                "last_poll_at": "2026-11-29T10:05:30.250Z",
                "last_latency": 1.5,
                "polls_ok": 2,
                "polls_failed": 3,
                "stalled": False,
            },
        ],
        "outbox": [
            {"sink": "slack", "pending": 2, "dead": 1, "oldest_pending_age": 9.0}
        ],
        "outbox_error": None,
    }


async def test_unreadable_journal_leaves_the_outbox_out(serve, source):
    """A JournalError from the outbox gives ``outbox: null`` and its reason; no 500."""
    source.outbox_error = JournalError("disk I/O error")
    get = await serve()
    status, _, body = await get("/status")
    document = json.loads(body)
    assert status == 200
    assert (document["outbox"], document["outbox_error"]) == (
        None,
        "journal not readable: disk I/O error",
    )
    status, _, text = await get("/metrics")
    assert status == 200
    assert "sklm_watcher_outbox" not in text
    assert "sklm_watcher_polls_total" in text


async def test_a_busy_journal_does_not_hold_the_request(serve, source):
    """When the outbox summary does not come within ``outbox_timeout``, answer without it."""
    source.outbox_gate = anyio.Event()
    get = await serve(outbox_timeout=0.05)
    status, _, body = await get("/status")
    document = json.loads(body)
    assert status == 200
    assert document["outbox"] is None
    assert document["outbox_error"] == "journal busy: no outbox summary within 0.05 s"
    assert [s["name"] for s in document["servers"]] == ["sklm-1", "sklm-2"]


async def test_a_broken_source_gives_500_and_a_log(serve, source, logs):
    """An exception in the source is logged and answered with a 500, not a crash."""

    def broken() -> Mapping[str, ServerState]:
        raise RuntimeError("bug")

    source.states = broken
    get = await serve()
    status, _, body = await get("/status")
    assert (status, body) == (500, "internal error; see the daemon's log\n")
    assert (await get("/metrics"))[0] == 500
    assert (await get("/healthz"))[0] == 200
    failed = [e for e in logs if e["event"] == "service.failed"]
    assert [e["path"] for e in failed] == ["/status", "/metrics"]


async def test_only_get_and_known_paths(serve):
    """Unknown paths are 404 and other methods 405 (``/`` is the dashboard now)."""
    get = await serve()
    assert (await get("/no-such-page"))[0] == 404
    assert (await get("/healthz", method="POST"))[0] == 405
    assert (await get("/healthz", method="HEAD"))[0] == 200


async def test_a_taken_port_is_a_listen_problem():
    """Binding an address in use raises ConfigError naming ``watcher.listen``."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = StatusServer(FakeSource(), version="1")
        with pytest.raises(ConfigError) as caught:
            await server.start("127.0.0.1", port)
    [problem] = caught.value.problems
    assert problem.key == "watcher.listen"
    assert problem.reason.startswith(f"cannot listen on 127.0.0.1:{port} (")
    await server.close()


async def test_start_twice_and_close_twice():
    """A second start is refused; close is idempotent and frees the port."""
    server = StatusServer(FakeSource(), version="1")
    host, port = await server.start("127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="already started"):
        await server.start(host, 0)
    await server.close()
    await server.close()
    again = StatusServer(FakeSource(), version="1")
    assert await again.start(host, port) == (host, port)
    await again.close()
