"""The optional HTTP endpoint: ``/healthz``, ``/metrics`` (Prometheus), ``/status``.

It also mounts the dashboard (:mod:`watcher.dashboard`: pages, assets, the JSON API
and the event stream) and guards every path alike: GET only, the security headers
on every response, and, when ``[watcher]`` sets credentials, a bearer token or HTTP
Basic on everything but ``/healthz`` (:class:`HttpAuth`).

``[watcher] listen = "127.0.0.1:9464"`` starts a :class:`StatusServer` inside the
daemon, on the daemon's event loop. It reads everything from a :class:`StatusSource`
(the daemon) at request time: no per-poll work beyond the counters the scheduler
already keeps and one :meth:`LatencyHistogram.observe` per poll.

Rendering ``/metrics`` and ``/status`` is O(servers), so it runs in a worker thread
on an immutable :class:`Snapshot`: a scrape of a large fleet does not stall polling.

Liveness: :class:`Heartbeat` is a task that stamps a monotonic reading every second;
``/healthz`` answers 503 when that stamp is too old. If the loop is wedged for good,
the HTTP server on that same loop cannot answer either (the probe times out, which
is its own answer); the heartbeat catches partial starvation and a dead heartbeat
task. The real guard against a wedged loop is systemd's ``WatchdogSec=``, which the
daemon pings from the same loop (``watcher.notify``).
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any, Final, Protocol

import anyio
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from watcher import schema
from watcher.config import Secret, is_loopback
from watcher.dashboard import Dashboard
from watcher.errors import ConfigError, ConfigProblem, JournalError
from watcher.events import EventType
from watcher.store.base import Store
from watcher.stream import EventStream
from watcher.tracker import ServerState, health_of

log = structlog.get_logger(__name__)

SERVICE_LISTENING: Final = "service.listening"
SERVICE_EXPOSED: Final = "service.exposed"
SERVICE_FAILED: Final = "service.failed"

#: Upper bounds (seconds) of the poll latency histogram: a LAN answer in
#: milliseconds up to a client timeout of several seconds.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds between two heartbeats.
HEARTBEAT_INTERVAL: Final = 1.0
#: Seconds without a heartbeat after which ``/healthz`` says the loop is stalled.
STALL_AFTER: Final = 5.0
#: Seconds a request waits for the journal's outbox summary before going without it.
OUTBOX_TIMEOUT: Final = 2.0

_METRIC_PREFIX: Final = "sklm_watcher_"
_TEXT: Final = "text/plain; charset=utf-8"
_NO_STORE: Final = {"Cache-Control": "no-store"}

#: Headers on every response: the dashboard runs only its own scripts and styles,
#: loads nothing from elsewhere, and cannot be framed.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
    "style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: The only path answered without credentials when authentication is configured.
_OPEN_PATHS: Final = frozenset({"/healthz"})
_REALM: Final = 'Basic realm="sklm-watcher"'


@dataclass(frozen=True, slots=True)
class HttpAuth:
    """Who may read the status server: a bearer token and/or HTTP Basic.

    Args:
        token: ``Authorization: Bearer <token>`` is accepted.
        username: With ``password``: HTTP Basic (what a browser asks for).
        password: The Basic password.
    """

    token: Secret | None = None
    username: str | None = None
    password: Secret | None = None

    @property
    def basic(self) -> bool:
        """Whether HTTP Basic is configured."""
        return bool(self.username) and bool(self.password)

    @property
    def configured(self) -> bool:
        """Whether any credential is configured."""
        return bool(self.token) or self.basic

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries a configured credential."""
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.token:
            return _same(value, self.token.reveal())
        if scheme.lower() == "basic" and self.basic:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except ValueError:
                return False
            user, sep, password = decoded.partition(":")
            expected = self.password.reveal() if self.password else ""
            # Both compared, always: no early exit tells which one was wrong.
            same_user = _same(user, self.username or "")
            same_password = _same(password, expected)
            return bool(sep) and same_user and same_password
        return False


def _same(given: str, expected: str) -> bool:
    # Constant time: the comparison does not tell how much of a guess was right.
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# --- what the daemon provides ---------------------------------------------------------


class PollStats(Protocol):
    """One server's loop counters (``scheduler.WatchStats`` satisfies it)."""

    @property
    def last_poll_at(self) -> datetime | None:
        """When the last poll answered or failed."""
        ...

    @property
    def last_latency(self) -> float | None:
        """Seconds the last poll took."""
        ...

    @property
    def polls_ok(self) -> int:
        """Polls that returned a phase."""
        ...

    @property
    def polls_failed(self) -> int:
        """Polls that failed."""
        ...

    @property
    def crashes(self) -> int:
        """Loop iterations that failed with an unexpected exception (bugs)."""
        ...


class SinkBacklog(Protocol):
    """One sink's outbox (``store.base.OutboxSummary`` satisfies it)."""

    @property
    def sink(self) -> str:
        """The sink's configured name."""
        ...

    @property
    def pending(self) -> int:
        """Events waiting for delivery."""
        ...

    @property
    def dead(self) -> int:
        """Events given up on (dead letters)."""
        ...

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending event happened; None if none pending."""
        ...


class ClusterReading(Protocol):
    """A cluster node's lease counters (``leasing.ClusterStats`` satisfies it)."""

    @property
    def node(self) -> str:
        """This node's name."""
        ...

    @property
    def leases_held(self) -> int:
        """Server leases held now."""
        ...

    @property
    def takeovers(self) -> int:
        """Leases taken over from a node whose lease had expired."""
        ...

    @property
    def handoffs(self) -> int:
        """Leases taken that their previous holder had given up."""
        ...

    @property
    def released(self) -> int:
        """Leases given up to rebalance."""
        ...

    @property
    def leases_lost(self) -> int:
        """Leases lost without giving them up (taken over after a pause or cut)."""
        ...

    @property
    def fenced_writes(self) -> int:
        """Writes the store refused because the lease was gone."""
        ...

    @property
    def store_failures(self) -> int:
        """Times the shared store became unreachable."""
        ...

    @property
    def store_up(self) -> bool:
        """Whether the store answers now."""
        ...


class FleetReading(Protocol):
    """A cluster node's view of the whole fleet (``peers.FleetView`` satisfies it)."""

    @property
    def states(self) -> Mapping[str, ServerState]:
        """Every configured server's state, in configuration order."""
        ...

    @property
    def owners(self) -> Mapping[str, str]:
        """The node polling each server (missing: none now)."""
        ...


class StatusSource(Protocol):
    """What the status endpoint reads; the daemon implements it.

    Every method but :meth:`outbox` is called on the event loop and must be cheap
    (no I/O); the values returned must not change afterwards (they are rendered in a
    worker thread): return copies or frozen values.
    """

    def states(self) -> Mapping[str, ServerState]:
        """Every server's tracker state, in configuration order."""
        ...

    def stats(self) -> Mapping[str, PollStats]:
        """Every server's loop counters."""
        ...

    async def outbox(self) -> Sequence[SinkBacklog]:
        """Every sink's backlog (reads the journal in a thread).

        Raises:
            JournalError: The journal could not be read.
        """
        ...

    def health(self) -> str | None:
        """None when the daemon is healthy, else a one-line reason.

        E.g. ``journal not writable: <JournalError detail>``.
        """
        ...

    def events_by_type(self) -> Mapping[str, int]:
        """Events journaled since the process started, by event type."""
        ...

    def poll_latency(self) -> Mapping[str, LatencyHistogram]:
        """Poll latency histograms by outcome (``ok`` / ``failed``)."""
        ...


# --- latency histogram and heartbeat ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistogramReading:
    """A copy of a :class:`LatencyHistogram` at one moment.

    Args:
        bounds: Finite upper bounds, ascending.
        cumulative: Observations <= each bound, then the total (``+Inf``).
        sum: Sum of all observations.
    """

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        """The number of observations."""
        return self.cumulative[-1]


class LatencyHistogram:
    """A fixed-bucket histogram of seconds; O(log buckets) per observation.

    The scheduler keeps only the last latency per server; the daemon feeds one of
    these per poll so ``/metrics`` can show the distribution. It is fleet-wide (one
    per outcome, not one per server): a per-server histogram would cost servers x 13
    series per scrape, and the per-server ``..._last_latency_seconds`` gauge already
    points at a slow server.

    Args:
        bounds: Finite upper bounds in seconds, strictly ascending.

    Raises:
        ValueError: ``bounds`` empty, not ascending, or not finite and positive.
    """

    __slots__ = ("_counts", "_sum", "bounds")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        values = tuple(float(b) for b in bounds)
        if not values or any(not 0 < b < float("inf") for b in values):
            raise ValueError("histogram bounds must be finite and positive")
        if any(a >= b for a, b in pairwise(values)):
            raise ValueError("histogram bounds must be strictly ascending")
        self.bounds = values
        # Per bucket, not cumulative (observe touches one slot); the last is +Inf.
        self._counts = [0] * (len(values) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation of ``seconds`` (>= 0).

        Raises:
            ValueError: ``seconds`` is negative or NaN (it would poison the sum).
        """
        if not seconds >= 0.0:
            raise ValueError(f"a latency is >= 0 seconds, not {seconds!r}")
        # bisect_left: a value equal to a bound belongs to it (Prometheus ``le``).
        self._counts[bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds

    def reading(self) -> HistogramReading:
        """Return a copy of the counts so far."""
        return HistogramReading(
            bounds=self.bounds,
            cumulative=tuple(accumulate(self._counts)),
            sum=self._sum,
        )


class Heartbeat:
    """A task that stamps a monotonic reading every ``interval`` seconds.

    ``/healthz`` compares the stamp with the time of the request; ``lag`` is how late
    the last beat came (event loop lag). Run :meth:`run` in the daemon's task group.

    Args:
        interval: Seconds between beats.
        clock: Monotonic time source (tests inject one).
    """

    def __init__(
        self,
        *,
        interval: float = HEARTBEAT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("the heartbeat interval must be positive")
        self.interval = interval
        self._clock = clock
        #: The monotonic reading of the last beat (creation counts as one).
        self.last = clock()
        #: Seconds the last beat came later than due.
        self.lag = 0.0
        self._due: float | None = None

    def beat(self) -> None:
        """Stamp now and measure how late this beat is."""
        now = self._clock()
        if self._due is not None:
            self.lag = max(0.0, now - self._due)
        self.last = now
        self._due = now + self.interval

    async def run(self) -> None:
        """Beat every ``interval`` seconds until cancelled."""
        while True:
            self.beat()
            await anyio.sleep(self.interval)

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self.last

    def stalled(self, after: float = STALL_AFTER) -> str | None:
        """A one-line reason when no beat came for ``after`` seconds, else None."""
        age = self.age()
        if age < after:
            return None
        return f"event loop stalled: last heartbeat {age:.0f} s ago"


# --- snapshot, metrics, status document ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one request shows, read from the source at request time.

    Args:
        version: The daemon's version.
        states: Tracker state by server, in configuration order.
        stats: Loop counters by server.
        outbox: Backlog per sink; None when the journal could not be read.
        outbox_error: Why ``outbox`` is None.
        events: Events journaled since start, by type.
        latency: Poll latency histograms by outcome.
        problem: None when healthy, else the one-line reason(s).
        loop_lag: Seconds the last heartbeat came late; None without a heartbeat.
        at: When it was read (``/status`` ``as_of``); None when not known.
        cluster: A cluster node's lease counters; None on a single node.
        fleet: On a cluster node, every configured server's state (its own live
            ones, the peers' as last stored); None on a single node. ``/status``
            and the dashboard show it; the per-server metrics stay this node's own
            (``states``), so each server has one exporter.
        owners: With ``fleet``: the node polling each server (missing: none).
    """

    version: str
    states: Mapping[str, ServerState]
    stats: Mapping[str, PollStats]
    outbox: Sequence[SinkBacklog] | None = ()
    outbox_error: str | None = None
    events: Mapping[str, int] | None = None
    latency: Mapping[str, HistogramReading] | None = None
    problem: str | None = None
    loop_lag: float | None = None
    at: datetime | None = None
    cluster: ClusterReading | None = None
    fleet: Mapping[str, ServerState] | None = None
    owners: Mapping[str, str] | None = None


def _name(suffix: str) -> str:
    return _METRIC_PREFIX + suffix


def _timestamp(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


#: Event types counted from zero, so ``rate()`` sees the first one (TEST is never
#: produced by watching).
_COUNTED_TYPES: Final = tuple(str(t) for t in EventType if t is not EventType.TEST)


def metric_families(snapshot: Snapshot) -> list[Metric]:
    """Build the Prometheus metric families for ``snapshot`` (pure)."""
    info = GaugeMetricFamily(
        _name("build_info"), "sklm-watcher version (always 1).", labels=["version"]
    )
    info.add_metric([snapshot.version], 1)
    healthy = GaugeMetricFamily(_name("healthy"), "1 when /healthz answers ok, else 0.")
    healthy.add_metric([], 0 if snapshot.problem else 1)
    families: list[Metric] = [info, healthy]
    families += _server_families(snapshot)
    families += _latency_families(snapshot)
    families += _event_families(snapshot)
    families += _outbox_families(snapshot)
    families += _alert_families(snapshot)
    families += _cluster_families(snapshot.cluster)
    if snapshot.loop_lag is not None:
        lag = GaugeMetricFamily(
            _name("event_loop_lag_seconds"),
            "How late the last heartbeat of the event loop came.",
        )
        lag.add_metric([], snapshot.loop_lag)
        families.append(lag)
    return families


def _server_families(snapshot: Snapshot) -> list[Metric]:
    polls = CounterMetricFamily(
        _name("polls"), "Polls by server and outcome.", labels=["server", "outcome"]
    )
    crashes = CounterMetricFamily(
        _name("poll_crashes"),
        "Poll loop iterations that failed unexpectedly (a bug; see the logs).",
        labels=["server"],
    )
    last_latency = GaugeMetricFamily(
        _name("poll_last_latency_seconds"),
        "Seconds the last poll of each server took.",
        labels=["server"],
    )
    last_ok = GaugeMetricFamily(
        _name("last_successful_poll_timestamp_seconds"),
        "Unix time of each server's last successful poll.",
        labels=["server"],
    )
    phase = GaugeMetricFamily(
        _name("phase"),
        "Restore phase code per server (0 IDLE .. 7 COMPLETED); absent before "
        "the first answer.",
        labels=["server"],
    )
    health = GaugeMetricFamily(
        _name("server_health"),
        "1 for each server's current health (ok, unreachable, restarting, "
        "auth_failed, tls_error, protocol_error, unknown).",
        labels=["server", "health"],
    )
    running = GaugeMetricFamily(
        _name("restores_in_progress"), "Restores running now, fleet-wide."
    )
    active = 0
    for server, state in snapshot.states.items():
        stats = snapshot.stats.get(server)
        if stats is not None:
            polls.add_metric([server, "ok"], stats.polls_ok)
            polls.add_metric([server, "failed"], stats.polls_failed)
            crashes.add_metric([server], stats.crashes)
            if stats.last_latency is not None:
                last_latency.add_metric([server], stats.last_latency)
        ok_at = _timestamp(state.last_ok_at)
        if ok_at is not None:
            last_ok.add_metric([server], ok_at)
        if state.phase is not None:
            phase.add_metric([server], int(state.phase))
        health.add_metric([server, str(health_of(state))], 1)
        active += state.restore_active
    running.add_metric([], active)
    return [polls, crashes, last_latency, last_ok, phase, health, running]


def _latency_families(snapshot: Snapshot) -> list[Metric]:
    family = HistogramMetricFamily(
        _name("poll_latency_seconds"),
        "Poll latency, fleet-wide, by outcome.",
        labels=["outcome"],
    )
    for outcome, reading in (snapshot.latency or {}).items():
        buckets = [
            (repr(bound), float(count))
            for bound, count in zip(
                reading.bounds, reading.cumulative[:-1], strict=True
            )
        ]
        buckets.append(("+Inf", float(reading.count)))
        family.add_metric([outcome], buckets, reading.sum)
    return [family]


def _event_families(snapshot: Snapshot) -> list[Metric]:
    family = CounterMetricFamily(
        _name("events"), "Events journaled since the start, by type.", labels=["type"]
    )
    counts = dict.fromkeys(_COUNTED_TYPES, 0)
    counts.update(snapshot.events or {})
    for type_, count in counts.items():
        family.add_metric([type_], count)
    return [family]


def _outbox_families(snapshot: Snapshot) -> list[Metric]:
    if snapshot.outbox is None:
        return []
    pending = GaugeMetricFamily(
        _name("outbox_pending"),
        "Events waiting for delivery, per sink.",
        labels=["sink"],
    )
    dead = GaugeMetricFamily(
        _name("outbox_dead"), "Dead-lettered events per sink.", labels=["sink"]
    )
    age = GaugeMetricFamily(
        _name("outbox_oldest_pending_age_seconds"),
        "Age of the oldest pending event per sink (0 when none is pending).",
        labels=["sink"],
    )
    for row in snapshot.outbox:
        pending.add_metric([row.sink], row.pending)
        dead.add_metric([row.sink], row.dead)
        age.add_metric([row.sink], row.oldest_pending_age or 0.0)
    return [pending, dead, age]


def _alert_families(snapshot: Snapshot) -> list[Metric]:
    """Gauges the alert rules in ``config/prometheus`` need and nothing else shows.

    Both are 0/1 and always present, so a rule on ``== 1`` (or ``== 0``) resolves
    when the condition ends instead of the series just vanishing.
    """
    stalled = GaugeMetricFamily(
        _name("restore_stalled"),
        "1 while a server's running restore has outlasted stall_after in its "
        "current phase (sklm.restore.stalled was sent), else 0.",
        labels=["server"],
    )
    for server, state in snapshot.states.items():
        stuck = state.restore_active and state.stall_reported
        stalled.add_metric([server], 1 if stuck and not state.awaiting_restart else 0)
    readable = GaugeMetricFamily(
        _name("journal_readable"),
        "1 when this scrape could read the journal's outbox summary, else 0 "
        "(not readable or busy; /status outbox_error says why).",
    )
    readable.add_metric([], 0 if snapshot.outbox is None else 1)
    return [stalled, readable]


def _cluster_families(cluster: ClusterReading | None) -> list[Metric]:
    """A cluster node's lease gauges and counters (none on a single node)."""
    if cluster is None:
        return []
    node = GaugeMetricFamily(
        _name("cluster_node_info"),
        "This cluster node's name (always 1).",
        labels=["node"],
    )
    node.add_metric([cluster.node], 1)
    held = GaugeMetricFamily(
        _name("cluster_leases_held"), "Server leases this node holds now."
    )
    held.add_metric([], cluster.leases_held)
    up = GaugeMetricFamily(
        _name("cluster_store_up"),
        "1 while the shared store answers this node, else 0.",
    )
    up.add_metric([], 1 if cluster.store_up else 0)
    families: list[Metric] = [node, held, up]
    for suffix, text, value in (
        (
            "cluster_takeovers",
            "Leases taken over from a node whose lease had expired.",
            cluster.takeovers,
        ),
        (
            "cluster_handoffs",
            "Leases taken that their previous holder had given up.",
            cluster.handoffs,
        ),
        (
            "cluster_leases_released",
            "Leases this node gave up to rebalance.",
            cluster.released,
        ),
        (
            "cluster_leases_lost",
            "Leases this node lost without giving them up.",
            cluster.leases_lost,
        ),
        (
            "cluster_fenced_writes",
            "Writes the store refused: the server's lease was gone.",
            cluster.fenced_writes,
        ),
        (
            "cluster_store_failures",
            "Times the shared store became unreachable.",
            cluster.store_failures,
        ),
    ):
        counter = CounterMetricFamily(_name(suffix), text)
        counter.add_metric([], value)
        families.append(counter)
    return families


class _SnapshotCollector:
    """A prometheus_client collector that reads one snapshot at scrape time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return metric_families(self._snapshot)


def render_metrics(
    snapshot: Snapshot,
    encoder: Callable[[Collector], bytes] = generate_latest,
) -> bytes:
    """Render ``snapshot`` in a Prometheus exposition format (default: text 0.0.4).

    A private registry per scrape: two scrapes rendering in two threads share
    nothing, and the process-wide default registry stays untouched.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return encoder(registry)


def status_document(snapshot: Snapshot) -> dict[str, Any]:
    """The ``/status`` JSON object for ``snapshot`` (pure; shapes in ``schema``)."""
    outbox = None
    if snapshot.outbox is not None:
        outbox = [schema.sink_backlog_json(row) for row in snapshot.outbox]
    return {
        "version": snapshot.version,
        "as_of": schema.optional_time(snapshot.at),
        "healthy": snapshot.problem is None,
        "problem": snapshot.problem,
        "servers": [
            _with_node(
                name,
                schema.daemon_server_json(name, state, snapshot.stats.get(name)),
                snapshot,
            )
            for name, state in (
                snapshot.fleet if snapshot.fleet is not None else snapshot.states
            ).items()
        ],
        "outbox": outbox,
        "outbox_error": snapshot.outbox_error,
    }


def _with_node(name: str, server: dict[str, Any], snapshot: Snapshot) -> dict[str, Any]:
    """A cluster node's ``/status`` names each server's poller (null: none now)."""
    if snapshot.owners is not None:
        server["node"] = snapshot.owners.get(name)
    elif snapshot.cluster is not None:
        server["node"] = snapshot.cluster.node
    return server


def render_status(snapshot: Snapshot) -> bytes:
    """``/status`` as indented UTF-8 JSON."""
    text = json.dumps(status_document(snapshot), indent=2, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


# --- the server -------------------------------------------------------------------------


class StatusServer:
    """The aiohttp server for ``/healthz``, ``/metrics`` and ``/status``.

    Args:
        source: Where the status comes from (the daemon).
        version: The daemon's version, shown in ``/status`` and ``build_info``.
        heartbeat: The daemon's heartbeat; None to not check the loop.
        stall_after: Seconds without a heartbeat that make ``/healthz`` fail.
        outbox_timeout: Seconds to wait for the journal's outbox summary.
        now: The wall clock ``/status`` stamps its ``as_of`` with (tests inject one).
        store: The journal the dashboard's history and outbox views read.
        stream: The live event stream (``/api/events/stream``).
        auth: Credentials every path but ``/healthz`` then requires.
        assets: The dashboard's pages and assets (default: the package's).
        cluster: Returns a cluster node's lease counters (None on a single node).
    """

    def __init__(
        self,
        source: StatusSource,
        *,
        version: str,
        heartbeat: Heartbeat | None = None,
        stall_after: float = STALL_AFTER,
        outbox_timeout: float = OUTBOX_TIMEOUT,
        now: Callable[[], datetime] | None = None,
        store: Store | None = None,
        stream: EventStream | None = None,
        auth: HttpAuth | None = None,
        assets: Path | None = None,
        cluster: Callable[[], ClusterReading | None] | None = None,
        fleet: Callable[[], FleetReading] | None = None,
    ) -> None:
        self._source = source
        self._cluster = cluster
        self._fleet = fleet
        self._auth = auth if auth is not None and auth.configured else None
        self._stream = stream
        self._now = now or _wall_clock
        self._version = version
        self._heartbeat = heartbeat
        self._stall_after = stall_after
        self._outbox_timeout = outbox_timeout
        self._runner: web.AppRunner | None = None
        extra = {} if assets is None else {"assets": assets}
        self._dashboard = Dashboard(
            states=self._states, store=store, stream=stream, now=self._now, **extra
        )

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host``:``port`` (0: any free port); return the bound address.

        Raises:
            ConfigError: The address cannot be bound (in use, not local, no
                permission): a problem of ``watcher.listen``.
            RuntimeError: Already started.
        """
        if self._runner is not None:
            raise RuntimeError("the status server is already started")
        app = web.Application(middlewares=[self._guard])
        # A signal, not the middleware: it also reaches responses a handler sends
        # itself (the event stream) and aiohttp's own (404).
        app.on_response_prepare.append(_secure)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        self._dashboard.add_routes(app)
        # No access log: a scrape every few seconds is not news (and aiohttp's
        # logger is stdlib logging, outside our structlog setup).
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = exc.strerror or str(exc)
            raise ConfigError(
                [
                    ConfigProblem(
                        "watcher.listen",
                        f"cannot listen on {_join(host, port)} ({reason}); "
                        "choose another address or stop what holds it",
                    )
                ]
            ) from exc
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        log.info(SERVICE_LISTENING, host=bound_host, port=bound_port)
        if not is_loopback(host) and self._auth is None:
            # The configuration loader refuses this for ``run``; only a caller that
            # builds the server in code gets here without credentials.
            log.warning(
                SERVICE_EXPOSED,
                host=host,
                detail="the dashboard, /status and /metrics show server names and "
                "restore state to anyone who can connect; configure listen "
                "authentication or use a loopback address",
            )
        return str(bound_host), int(bound_port)

    def set_auth(self, auth: HttpAuth | None) -> None:
        """Require these credentials from the next request on (a reload)."""
        self._auth = auth if auth is not None and auth.configured else None

    async def close(self) -> None:
        """Stop listening; idempotent."""
        if self._stream is not None:
            # Open event streams would otherwise hold the shutdown.
            self._stream.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def problem(self) -> str | None:
        """None when healthy, else the reasons on one line (what ``/healthz`` says)."""
        reasons: list[str] = []
        if self._heartbeat is not None:
            stalled = self._heartbeat.stalled(self._stall_after)
            if stalled:
                reasons.append(stalled)
        reason = self._source.health()
        if reason:
            reasons.append(reason)
        if not reasons:
            return None
        return " ".join("; ".join(reasons).split())

    async def snapshot(self) -> Snapshot:
        """Read everything from the source (the outbox first: it is the one await)."""
        outbox, outbox_error = await self._read_outbox()
        source = self._source
        heartbeat = self._heartbeat
        fleet = self._fleet() if self._fleet is not None else None
        return Snapshot(
            version=self._version,
            states=dict(source.states()),
            stats=dict(source.stats()),
            outbox=outbox,
            outbox_error=outbox_error,
            events=dict(source.events_by_type()),
            latency={k: h.reading() for k, h in source.poll_latency().items()},
            problem=self.problem(),
            loop_lag=heartbeat.lag if heartbeat is not None else None,
            at=self._now(),
            cluster=self._cluster() if self._cluster is not None else None,
            fleet=fleet.states if fleet is not None else None,
            owners=fleet.owners if fleet is not None else None,
        )

    def _states(self) -> Mapping[str, ServerState]:
        # A copy taken on the loop: the dashboard renders it in a worker thread.
        # A cluster node shows the whole fleet, not only the servers it polls.
        if self._fleet is not None:
            return dict(self._fleet().states)
        return dict(self._source.states())

    @web.middleware
    async def _guard(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Read-only, authenticated, and the security headers on every answer."""
        response: web.StreamResponse
        if request.method not in ("GET", "HEAD"):
            response = _text(405, "read-only: only GET\n")
            response.headers["Allow"] = "GET, HEAD"
        elif (
            self._auth is not None
            and request.path not in _OPEN_PATHS
            and not self._auth.allows(request.headers.get("Authorization"))
        ):
            response = _text(401, "authentication required\n")
            response.headers["WWW-Authenticate"] = (
                _REALM if self._auth.basic else 'Bearer realm="sklm-watcher"'
            )
        else:
            response = await handler(request)
        return response

    async def _read_outbox(self) -> tuple[tuple[SinkBacklog, ...] | None, str | None]:
        with anyio.move_on_after(self._outbox_timeout):
            try:
                rows = await self._source.outbox()
            except JournalError as exc:
                return None, f"journal not readable: {exc.detail}"
            return tuple(rows), None
        return None, (
            f"journal busy: no outbox summary within {self._outbox_timeout:g} s"
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        try:
            problem = self.problem()
        except Exception as exc:  # a probe answers, whatever broke
            log.exception(SERVICE_FAILED, path=request.path)
            problem = f"health check failed: {type(exc).__name__}"
        if problem is None:
            return _text(200, "ok\n")
        return _text(503, problem + "\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        try:
            snapshot = await self.snapshot()
            body = await anyio.to_thread.run_sync(render_metrics, snapshot, encoder)
        except Exception:  # the supervision boundary of a request
            log.exception(SERVICE_FAILED, path=request.path)
            return _text(500, "internal error; see the daemon's log\n")
        headers = {"Content-Type": content_type, **_NO_STORE}
        return web.Response(body=body, headers=headers)

    async def _status(self, request: web.Request) -> web.Response:
        try:
            snapshot = await self.snapshot()
            body = await anyio.to_thread.run_sync(render_status, snapshot)
        except Exception:  # the supervision boundary of a request
            log.exception(SERVICE_FAILED, path=request.path)
            return _text(500, "internal error; see the daemon's log\n")
        headers = {"Content-Type": "application/json; charset=utf-8", **_NO_STORE}
        return web.Response(body=body, headers=headers)


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def _text(status: int, text: str) -> web.Response:
    return web.Response(
        status=status,
        body=text.encode("utf-8"),
        headers={"Content-Type": _TEXT, **_NO_STORE},
    )


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
