"""Pure pieces of the status endpoint: parsing, health labels, histogram, documents."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.clock import VirtualClock
from watcher.config import is_loopback, parse_listen
from watcher.phases import Phase
from watcher.scheduler import WatchStats
from watcher.service import (
    LATENCY_BUCKETS,
    Heartbeat,
    LatencyHistogram,
    Snapshot,
    metric_families,
    render_metrics,
    render_status,
    status_document,
)
from watcher.store.base import OutboxSummary
from watcher.tracker import PhaseVisit, ServerState

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """The wall-clock instant ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


# --- parse_listen, is_loopback ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),  # noqa: S104 - parsing only
        (" 127.0.0.1:9464\n", ("127.0.0.1", 9464)),
    ],
)
def test_parse_listen_accepts_host_and_port(text: str, expected: tuple[str, int]):
    """IPv4, bracketed IPv6, names and port 0 split into host and port."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    ["9464", ":9464", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:65536", "[]:1", ""],
)
def test_parse_listen_rejects_anything_else(text: str):
    """A missing host, a missing, named or out-of-range port is a ValueError."""
    with pytest.raises(ValueError, match="expected host:port"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104 - classifying only
        ("::", False),
        ("10.1.2.3", False),
        ("sklm-watcher.example.com", False),
    ],
)
def test_is_loopback(host: str, expected: bool):
    """Only loopback addresses and ``localhost`` count as private to this machine."""
    assert is_loopback(host) is expected


# --- LatencyHistogram -----------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_le_inclusive():
    """A value equal to a bound counts in that bucket; above the last goes to +Inf."""
    histogram = LatencyHistogram((0.1, 1.0, 5.0))
    for seconds in (0.0, 0.1, 0.1000001, 1.0, 4.0, 5.0, 7.5, 60.0):
        histogram.observe(seconds)
    reading = histogram.reading()
    assert reading.bounds == (0.1, 1.0, 5.0)
    assert reading.cumulative == (2, 4, 6, 8)
    assert reading.count == 8
    assert reading.sum == pytest.approx(77.7000001)


def test_histogram_reading_is_a_copy():
    """A reading does not change when more observations arrive."""
    histogram = LatencyHistogram()
    histogram.observe(0.02)
    before = histogram.reading()
    histogram.observe(0.02)
    assert before.count == 1
    assert histogram.reading().count == 2
    assert before.bounds == LATENCY_BUCKETS


def test_empty_histogram_reads_zero():
    """Before any observation every bucket and the sum are zero."""
    reading = LatencyHistogram((1.0,)).reading()
    assert (reading.cumulative, reading.sum, reading.count) == ((0, 0), 0.0, 0)


@pytest.mark.parametrize(
    "bounds", [(), (0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (1.0, math.inf), (-1.0,)]
)
def test_histogram_rejects_bad_bounds(bounds: tuple[float, ...]):
    """Bounds must be finite, positive and strictly ascending."""
    with pytest.raises(ValueError, match="histogram bounds"):
        LatencyHistogram(bounds)


@pytest.mark.parametrize("seconds", [-0.001, math.nan])
def test_histogram_rejects_negative_and_nan(seconds: float):
    """A negative or NaN latency is refused rather than poisoning the sum."""
    histogram = LatencyHistogram()
    with pytest.raises(ValueError, match=">= 0 seconds"):
        histogram.observe(seconds)
    assert histogram.reading().count == 0


# --- Heartbeat ------------------------------------------------------------------------


def test_heartbeat_measures_age_lag_and_stall():
    """Age grows between beats, lag is lateness against the interval, stall has a reason."""
    clock = VirtualClock(origin=100.0)
    heartbeat = Heartbeat(interval=1.0, clock=clock.monotonic)
    assert (heartbeat.age(), heartbeat.lag, heartbeat.stalled()) == (0.0, 0.0, None)
    heartbeat.beat()
    clock.advance(1.25)
    heartbeat.beat()
    assert heartbeat.lag == pytest.approx(0.25)
    clock.advance(4.9)
    assert heartbeat.stalled(5.0) is None
    clock.advance(7.1)
    assert heartbeat.age() == pytest.approx(12.0)
    assert heartbeat.stalled(5.0) == "event loop stalled: last heartbeat 12 s ago"
    heartbeat.beat()
    assert heartbeat.lag == pytest.approx(11.0)
    assert heartbeat.stalled(5.0) is None


def test_heartbeat_rejects_a_non_positive_interval():
    """An interval of zero would spin the loop."""
    with pytest.raises(ValueError, match="positive"):
        Heartbeat(interval=0)


async def test_heartbeat_run_beats_until_cancelled():
    """``run`` beats at once and keeps going until its scope is cancelled."""
    clock = VirtualClock(origin=100.0)
    heartbeat = Heartbeat(interval=3600.0, clock=clock.monotonic)
    clock.advance(30.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat.run)
        await anyio.wait_all_tasks_blocked()
        assert heartbeat.last == 130.0
        tg.cancel_scope.cancel()


# --- metrics and status from a fake snapshot ------------------------------------------


def fleet_snapshot(**overrides: Any) -> Snapshot:
    """A four-server fleet: idle, restoring, restarting, auth failed."""
    ok = LatencyHistogram((0.1, 1.0))
    for seconds in (0.05, 0.2, 0.3):
        ok.observe(seconds)
    failed = LatencyHistogram((0.1, 1.0))
    failed.observe(2.5)
    states = {
        "sklm-a": ServerState(
            phase=Phase.IDLE, phase_since_at=at(0), last_ok_at=at(100)
        ),
        "sklm-b": ServerState(
            phase=Phase.RESTORE_KEYSTORES,
            phase_since_at=at(90),
            restore_id="restore-b",
            restore_active=True,
            timeline=(
                PhaseVisit(Phase.INITIALIZE, False, at(80), 80.0),
                PhaseVisit(Phase.RESTORE_KEYSTORES, False, at(90), 90.0),
            ),
            last_ok_at=at(99.5),
        ),
        "sklm-c": ServerState(
            phase=Phase.COMPLETED,
            phase_since_at=at(50),
            restore_id="restore-c",
            awaiting_restart=True,
            consecutive_failures=2,
            outage_id="outage-c",
            outage_since_at=at(60),
            last_ok_at=at(55),
        ),
        "sklm-d": ServerState(auth_failed=True, auth_run_id="auth-d"),
    }
    stats = {
        "sklm-a": WatchStats(at(100), 0.012, 40, 0, 0),
        "sklm-b": WatchStats(at(99.5), 0.25, 12, 1, 0),
        "sklm-c": WatchStats(at(98), 2.5, 9, 2, 1),
        "sklm-d": WatchStats(at(97), 0.04, 0, 5, 0),
    }
    values: dict[str, Any] = {
        "version": "0.1.0",
        "states": states,
        "stats": stats,
        "outbox": (
            OutboxSummary("slack", pending=3, dead=1, oldest_pending_age=42.5),
            OutboxSummary("audit-hook", pending=0, dead=0, oldest_pending_age=None),
        ),
        "events": {"sklm.restore.started": 2, "sklm.restore.phase": 7},
        "latency": {"ok": ok.reading(), "failed": failed.reading()},
        "problem": None,
        "loop_lag": 0.003,
    }
    values.update(overrides)
    return Snapshot(**values)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> tuple[dict[str, str], Samples]:
    """Parse exposition text into {family: type} and {(sample, labels): value}."""
    types: dict[str, str] = {}
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return types, found


def s(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A sample key: the sample name and its sorted labels."""
    return ("sklm_watcher_" + name, tuple(sorted(labels.items())))


EVENT_TYPES = [
    "sklm.restore.started",
    "sklm.restore.phase",
    "sklm.restore.completed",
    "sklm.restore.failed",
    "sklm.restore.stalled",
    "sklm.server.unreachable",
    "sklm.server.recovered",
    "sklm.server.restarted",
    "sklm.auth.failed",
    "sklm.auth.recovered",
]


def expected_fleet_samples() -> Samples:
    """Every sample ``fleet_snapshot()`` renders to."""
    expected: Samples = {
        s("build_info", version="0.1.0"): 1.0,
        s("healthy"): 1.0,
        s("polls_total", server="sklm-a", outcome="ok"): 40.0,
        s("polls_total", server="sklm-a", outcome="failed"): 0.0,
        s("polls_total", server="sklm-b", outcome="ok"): 12.0,
        s("polls_total", server="sklm-b", outcome="failed"): 1.0,
        s("polls_total", server="sklm-c", outcome="ok"): 9.0,
        s("polls_total", server="sklm-c", outcome="failed"): 2.0,
        s("polls_total", server="sklm-d", outcome="ok"): 0.0,
        s("polls_total", server="sklm-d", outcome="failed"): 5.0,
        s("poll_crashes_total", server="sklm-a"): 0.0,
        s("poll_crashes_total", server="sklm-b"): 0.0,
        s("poll_crashes_total", server="sklm-c"): 1.0,
        s("poll_crashes_total", server="sklm-d"): 0.0,
        s("poll_last_latency_seconds", server="sklm-a"): 0.012,
        s("poll_last_latency_seconds", server="sklm-b"): 0.25,
        s("poll_last_latency_seconds", server="sklm-c"): 2.5,
        s("poll_last_latency_seconds", server="sklm-d"): 0.04,
        s("last_successful_poll_timestamp_seconds", server="sklm-a"): (
            at(100).timestamp()
        ),
        s("last_successful_poll_timestamp_seconds", server="sklm-b"): (
            at(99.5).timestamp()
        ),
        s("last_successful_poll_timestamp_seconds", server="sklm-c"): (
            at(55).timestamp()
        ),
        s("phase", server="sklm-a"): 0.0,
        s("phase", server="sklm-b"): 4.0,
        s("phase", server="sklm-c"): 7.0,
        s("server_health", server="sklm-a", health="ok"): 1.0,
        s("server_health", server="sklm-b", health="ok"): 1.0,
        s("server_health", server="sklm-c", health="restarting"): 1.0,
        s("server_health", server="sklm-d", health="auth_failed"): 1.0,
        s("restores_in_progress"): 1.0,
        s("poll_latency_seconds_bucket", outcome="ok", le="0.1"): 1.0,
        s("poll_latency_seconds_bucket", outcome="ok", le="1.0"): 3.0,
        s("poll_latency_seconds_bucket", outcome="ok", le="+Inf"): 3.0,
        s("poll_latency_seconds_count", outcome="ok"): 3.0,
        s("poll_latency_seconds_sum", outcome="ok"): 0.55,
        s("poll_latency_seconds_bucket", outcome="failed", le="0.1"): 0.0,
        s("poll_latency_seconds_bucket", outcome="failed", le="1.0"): 0.0,
        s("poll_latency_seconds_bucket", outcome="failed", le="+Inf"): 1.0,
        s("poll_latency_seconds_count", outcome="failed"): 1.0,
        s("poll_latency_seconds_sum", outcome="failed"): 2.5,
        s("outbox_pending", sink="slack"): 3.0,
        s("outbox_pending", sink="audit-hook"): 0.0,
        s("outbox_dead", sink="slack"): 1.0,
        s("outbox_dead", sink="audit-hook"): 0.0,
        s("outbox_oldest_pending_age_seconds", sink="slack"): 42.5,
        s("outbox_oldest_pending_age_seconds", sink="audit-hook"): 0.0,
        s("restore_stalled", server="sklm-a"): 0.0,
        s("restore_stalled", server="sklm-b"): 0.0,
        s("restore_stalled", server="sklm-c"): 0.0,
        s("restore_stalled", server="sklm-d"): 0.0,
        s("journal_readable"): 1.0,
        s("event_loop_lag_seconds"): 0.003,
    }
    counts = {"sklm.restore.started": 2.0, "sklm.restore.phase": 7.0}
    for type_ in EVENT_TYPES:
        expected[s("events_total", type=type_)] = counts.get(type_, 0.0)
    return expected


FLEET_TYPES = {
    "sklm_watcher_build_info": "gauge",
    "sklm_watcher_healthy": "gauge",
    "sklm_watcher_polls": "counter",
    "sklm_watcher_poll_crashes": "counter",
    "sklm_watcher_poll_last_latency_seconds": "gauge",
    "sklm_watcher_last_successful_poll_timestamp_seconds": "gauge",
    "sklm_watcher_phase": "gauge",
    "sklm_watcher_server_health": "gauge",
    "sklm_watcher_restores_in_progress": "gauge",
    "sklm_watcher_poll_latency_seconds": "histogram",
    "sklm_watcher_events": "counter",
    "sklm_watcher_outbox_pending": "gauge",
    "sklm_watcher_outbox_dead": "gauge",
    "sklm_watcher_outbox_oldest_pending_age_seconds": "gauge",
    "sklm_watcher_restore_stalled": "gauge",
    "sklm_watcher_journal_readable": "gauge",
    "sklm_watcher_event_loop_lag_seconds": "gauge",
}


def test_metric_families_of_a_fleet():
    """Every family, type and sample value comes from the snapshot."""
    snapshot = fleet_snapshot()
    families = metric_families(snapshot)
    assert {f.name: f.type for f in families} == FLEET_TYPES
    types, found = samples(render_metrics(snapshot).decode())
    assert types == FLEET_TYPES
    expected = expected_fleet_samples()
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key] == pytest.approx(value), key


def test_metrics_without_outbox_heartbeat_or_latency():
    """An unreadable journal drops the outbox families; no heartbeat, no lag gauge."""
    snapshot = fleet_snapshot(
        outbox=None,
        outbox_error="journal not readable: disk I/O error",
        loop_lag=None,
        latency=None,
        events=None,
        problem="journal not writable: disk full",
    )
    types, found = samples(render_metrics(snapshot).decode())
    assert set(types) == set(FLEET_TYPES) - {
        "sklm_watcher_outbox_pending",
        "sklm_watcher_outbox_dead",
        "sklm_watcher_outbox_oldest_pending_age_seconds",
        "sklm_watcher_event_loop_lag_seconds",
    }
    assert found[s("healthy")] == 0.0
    assert found[s("journal_readable")] == 0.0
    assert not any(name.startswith("sklm_watcher_poll_latency") for name, _ in found)
    assert {k: v for k, v in found.items() if k[0] == "sklm_watcher_events_total"} == {
        s("events_total", type=t): 0.0 for t in EVENT_TYPES
    }


def test_metrics_render_as_openmetrics():
    """The OpenMetrics encoder (chosen by Accept) renders the same families."""
    body = render_metrics(fleet_snapshot(), generate_openmetrics).decode()
    assert body.endswith("# EOF\n")
    assert 'sklm_watcher_polls_total{outcome="ok",server="sklm-a"} 40.0\n' in body


def test_status_document_of_a_fleet():
    """The /status document holds every server, the outbox and the health."""
    assert status_document(fleet_snapshot()) == {
        "version": "0.1.0",
        "as_of": None,
        "healthy": True,
        "problem": None,
        "servers": [
            {
                "name": "sklm-a",
                "health": "ok",
                "phase": "IDLE",
                "code": 0,
                "since": "2026-11-29T10:00:00.000Z",
                "restore_active": False,
                "restore_id": None,
                "restore_started_at": None,
                "awaiting_restart": False,
                "consecutive_failures": 0,
                "last_ok_at": "2026-11-29T10:01:40.000Z",
                "last_error": None,
                "last_failure": None,
                "last_poll_at": "2026-11-29T10:01:40.000Z",
                "last_latency": 0.012,
                "polls_ok": 40,
                "polls_failed": 0,
                "stalled": False,
            },
            {
                "name": "sklm-b",
                "health": "ok",
                "phase": "RESTORE_KEYSTORES",
                "code": 4,
                "since": "2026-11-29T10:01:30.000Z",
                "restore_active": True,
                "restore_id": "restore-b",
                "restore_started_at": "2026-11-29T10:01:20.000Z",
                "awaiting_restart": False,
                "consecutive_failures": 0,
                "last_ok_at": "2026-11-29T10:01:39.500Z",
                "last_error": None,
                "last_failure": None,
                "last_poll_at": "2026-11-29T10:01:39.500Z",
                "last_latency": 0.25,
                "polls_ok": 12,
                "polls_failed": 1,
                "stalled": False,
            },
            {
                "name": "sklm-c",
                "health": "restarting",
                "phase": "COMPLETED",
                "code": 7,
                "since": "2026-11-29T10:00:50.000Z",
                "restore_active": False,
                "restore_id": "restore-c",
                "restore_started_at": None,
                "awaiting_restart": True,
                "consecutive_failures": 2,
                "last_ok_at": "2026-11-29T10:00:55.000Z",
                "last_error": None,
                "last_failure": None,
                "last_poll_at": "2026-11-29T10:01:38.000Z",
                "last_latency": 2.5,
                "polls_ok": 9,
                "polls_failed": 2,
                "stalled": False,
            },
            {
                "name": "sklm-d",
                "health": "auth_failed",
                "phase": None,
                "code": None,
                "since": None,
                "restore_active": False,
                "restore_id": None,
                "restore_started_at": None,
                "awaiting_restart": False,
                "consecutive_failures": 0,
                "last_ok_at": None,
                "last_error": None,
                "last_failure": None,
                "last_poll_at": "2026-11-29T10:01:37.000Z",
                "last_latency": 0.04,
                "polls_ok": 0,
                "polls_failed": 5,
                "stalled": False,
            },
        ],
        "outbox": [
            {"sink": "slack", "pending": 3, "dead": 1, "oldest_pending_age": 42.5},
            {
                "sink": "audit-hook",
                "pending": 0,
                "dead": 0,
                "oldest_pending_age": None,
            },
        ],
        "outbox_error": None,
    }


def test_status_of_a_server_without_stats():
    """A server the scheduler has no counters for shows zero polls and no last poll."""
    snapshot = fleet_snapshot(
        states={"new": ServerState()},
        stats={},
        outbox=None,
        outbox_error="journal busy",
        problem="journal not writable: disk full",
    )
    document = status_document(snapshot)
    assert document["servers"] == [
        {
            "name": "new",
            "health": "unknown",
            "phase": None,
            "code": None,
            "since": None,
            "restore_active": False,
            "restore_id": None,
            "restore_started_at": None,
            "awaiting_restart": False,
            "consecutive_failures": 0,
            "last_ok_at": None,
            "last_error": None,
            "last_failure": None,
            "last_poll_at": None,
            "last_latency": None,
            "polls_ok": 0,
            "polls_failed": 0,
            "stalled": False,
        }
    ]
    assert (document["healthy"], document["problem"]) == (
        False,
        "journal not writable: disk full",
    )
    assert (document["outbox"], document["outbox_error"]) == (None, "journal busy")
    _, found = samples(render_metrics(snapshot).decode())
    assert found[s("server_health", server="new", health="unknown")] == 1.0
    assert not any(k[0] == "sklm_watcher_polls_total" for k in found)


def test_render_status_is_utf8_json_with_a_newline():
    """Non-ASCII server names stay readable; the body ends with a newline."""
    snapshot = fleet_snapshot(states={"sklm-zürich": ServerState()}, stats={})
    body = render_status(snapshot)
    assert body.endswith(b"}\n")
    assert "sklm-zürich".encode() in body
