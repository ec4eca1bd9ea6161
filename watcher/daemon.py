"""The daemon: wiring only. One ClientSession, the journal, the fleet and the dispatcher.

SIGTERM / SIGINT stop polling, give deliveries in flight ``drain_timeout`` seconds, log
out of every SKLM server and return. SIGHUP reloads the configuration: on any problem
the running configuration stays; on success servers and sinks are added, removed and
changed without losing tracker state or outbox rows.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
from asyncio import sslproto
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

import aiohttp
import anyio
import structlog
from anyio.abc import TaskStatus

from watcher import __version__
from watcher.client import SklmClient, create_session
from watcher.clock import Clock, SystemClock
from watcher.config import Config, ServerConfig, SinkConfig
from watcher.dispatcher import POLL_INTERVAL as DISPATCH_POLL
from watcher.dispatcher import Dispatcher
from watcher.errors import ConfigError, JournalError, LeaseLost, NodeNameInUse
from watcher.events import Event
from watcher.leasing import ClusterStats, LeaseKeeper
from watcher.notify import SystemdNotifier
from watcher.peers import FleetView, PeerStates
from watcher.scheduler import Fleet, WatchStats
from watcher.service import Heartbeat, HttpAuth, LatencyHistogram, StatusServer
from watcher.sinks import build_sink
from watcher.sinks.base import Sink, close_sinks
from watcher.store import open_store
from watcher.store.base import (
    PRUNE_LIMIT,
    ClusterStore,
    NodeInfo,
    OutboxSummary,
    Store,
)
from watcher.stream import EventStream
from watcher.tracker import ServerState

log = structlog.get_logger(__name__)

DAEMON_STARTED = "daemon.started"
DAEMON_STOPPING = "daemon.stopping"
DAEMON_STOPPED = "daemon.stopped"
RELOAD_PROBLEM = "reload.problem"
RELOAD_REJECTED = "reload.rejected"
RELOAD_APPLIED = "reload.applied"
CONFIG_WARNING = "config.warning"
JOURNAL_FAILING = "journal.failing"
JOURNAL_RECOVERED = "journal.recovered"
#: A write refused because another cluster node holds the server's lease now.
LEASE_FENCED = "lease.fenced"
#: Allocations between young-generation collections for a long-running daemon.
GC_YOUNG_THRESHOLD = 50_000
#: asyncio's TLS read buffer per connection, down from 256 KiB (one TLS record).
TLS_READ_BUFFER = 16 * 1024

#: Events kept in memory while the journal cannot be written.
MAX_PENDING_EVENTS = 10_000
#: Seconds between two attempts to write queued records while the journal fails.
JOURNAL_RETRY_INTERVAL = 2.0
#: Seconds between two prunings of old delivered outbox rows.
OUTBOX_PRUNE_INTERVAL = 3600.0
OUTBOX_PRUNED = "outbox.pruned"

#: Seconds between two refreshes of systemd's STATUS line.
STATUS_INTERVAL = 10.0
#: Seconds a clean shutdown waits for the SKLM logouts.
LOGOUT_GRACE = 3.0
#: Seconds a cluster node's clean stop waits to write what it queued, then to leave.
LEAVE_GRACE = 5.0
#: Seconds between two looks at the outbox on a cluster node: rows recorded by
#: other nodes cannot wake this node's dispatcher.
CLUSTER_DISPATCH_POLL = 1.0
#: Seconds within which a cluster node first polls a server it just took over.
TAKEOVER_FIRST_POLL = 0.3


class JournalRecorder:
    """The scheduler's ``Recorder``: journal first, then wake the dispatcher.

    An event reaches a sink only through the outbox, so nothing is sent before it is
    journaled. When the journal cannot be written (disk full, read-only state
    directory), records wait in a bounded in-memory queue, in order, and are written
    as soon as the journal works again (:meth:`flush`, called on every record and by
    the daemon every few seconds). Only when that queue is full does :meth:`record`
    raise, and the scheduler then keeps its old state and derives the same events on
    a later poll.

    On a cluster node the store refuses the write of a server this node no longer
    holds (:class:`~watcher.errors.LeaseLost`, a fenced write): that server's queued
    records are dropped (the new owner re-derives them from the shared state, with
    the same event ids), ``on_lease_lost`` is told so the server's watch stops, and
    the rest of the queue goes on.

    Args:
        journal: The journal (anything with ``call`` and ``record``).
        wake: Called after new events were journaled.
        max_pending_events: Bound of the in-memory queue, in events.
        on_lease_lost: Called with a server whose write was fenced (cluster).
    """

    def __init__(
        self,
        journal: Store,
        wake: Callable[[], None],
        *,
        max_pending_events: int = MAX_PENDING_EVENTS,
        on_lease_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.journal = journal
        self.wake = wake
        self.max_pending_events = max_pending_events
        self.on_lease_lost = on_lease_lost
        #: Writes the store refused as fenced (LeaseLost), since the start.
        self.fenced_writes = 0
        self.recorded = 0
        #: Events journaled by this process, by type (for /metrics).
        self.by_type: Counter[str] = Counter()
        #: The error that keeps the queue from draining; None while all is written.
        self.failure: JournalError | None = None
        self._pending: deque[_Pending] = deque()
        self._pending_events = 0
        self._lock = anyio.Lock()

    @property
    def pending_events(self) -> int:
        """Events waiting in memory for the journal."""
        return self._pending_events

    async def record(
        self, server: str, state: ServerState, events: Sequence[Event]
    ) -> None:
        """Journal the state and events (or queue them while the journal fails).

        Raises:
            LeaseLost: This node no longer holds ``server`` (cluster): nothing of
                it was written, and nothing of it stays queued.
            JournalError: The journal fails and the in-memory queue is full.
        """
        batch = tuple(events)
        if self._pending_events + len(batch) > self.max_pending_events:
            await self.flush()
            if self._pending_events + len(batch) > self.max_pending_events:
                raise JournalError(
                    f"{self._pending_events} events wait in memory for the journal; "
                    "not accepting more",
                    hint=self.failure.hint if self.failure else "",
                )
        entry = _Pending(server, state.to_dict(), batch)
        self._pending.append(entry)
        self._pending_events += len(batch)
        await self.flush()
        if entry.lost is not None:
            raise entry.lost

    async def flush(self) -> None:
        """Write queued records, oldest first, until the queue is empty or one fails."""
        lost: list[str] = []
        async with self._lock:
            wrote_events = False
            while self._pending:
                entry = self._pending[0]
                server, state, events = entry.server, entry.state, entry.events
                try:
                    new = await self.journal.call(
                        self.journal.record, server, state, events
                    )
                except LeaseLost as exc:
                    # Before JournalError (its base): a fenced write is never retried.
                    self.fenced_writes += 1
                    self._drop(server, exc)
                    lost.append(server)
                    log.warning(LEASE_FENCED, server=server, detail=str(exc))
                    continue
                except JournalError as exc:
                    if self.failure is None:
                        log.error(
                            JOURNAL_FAILING,
                            detail=str(exc),
                            pending_events=self._pending_events,
                        )
                    self.failure = exc
                    break
                self._pending.popleft()
                self._pending_events -= len(events)
                self.recorded += len(new)
                for event in new:
                    self.by_type[str(event.type)] += 1
                wrote_events = wrote_events or bool(new)
            else:
                if self.failure is not None:
                    log.info(JOURNAL_RECOVERED)
                    self.failure = None
            if wrote_events:
                self.wake()
        # Outside the lock and the loop: stopping a watch may cancel the very task
        # that is flushing (the fenced server's own loop).
        if self.on_lease_lost is not None:
            for server in dict.fromkeys(lost):
                self.on_lease_lost(server)

    def _drop(self, server: str, exc: LeaseLost) -> None:
        """Forget every queued record of ``server`` (its lease is gone)."""
        kept: deque[_Pending] = deque()
        for entry in self._pending:
            if entry.server == server:
                entry.lost = exc
                self._pending_events -= len(entry.events)
            else:
                kept.append(entry)
        self._pending = kept


class _Pending:
    """One queued record, and the LeaseLost that dropped it (if one did)."""

    __slots__ = ("events", "lost", "server", "state")

    def __init__(
        self, server: str, state: dict[str, Any], events: tuple[Event, ...]
    ) -> None:
        self.server = server
        self.state = state
        self.events = events
        self.lost: LeaseLost | None = None


def tune_runtime_for_service() -> None:
    """Tune CPython for a long-running poller of many kept-alive TLS connections.

    Garbage collector: each poll in flight keeps a few hundred objects alive for
    its 20-200 ms, long enough for the default thresholds to promote them to the
    oldest generation; full collections over a fleet's worth of objects then pause
    the event loop for 75-125 ms every few seconds and make polls late. A larger
    young generation lets those objects die young, and freezing what start-up
    created (modules, configuration) keeps it out of every later collection.

    TLS: asyncio allocates a 256 KiB read buffer per TLS connection up front
    (``SSLProtocol.max_size``); SKLM's answers are a few hundred bytes, so one TLS
    record's worth is plenty and a fleet's resident memory drops about threefold.
    Larger bodies are still read whole, in more chunks.

    Process-wide, so only ``sklm-watcher run`` calls it; figures in
    tests/benchmark/README.md.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, max(middle, 10), max(old, 10))
    # Not a public API: skipped quietly where a Python version lacks it.
    if getattr(sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    gc.collect()
    gc.freeze()


class Daemon:
    """sklm-watcher, running: polls the fleet, journals events, delivers them.

    Args:
        config: The validated configuration.
        reload: Re-reads the configuration for SIGHUP; None disables reload.
        clock: Time source (tests inject a fake).
        notifier: systemd notification (a no-op outside systemd).
        extra_sinks: Sinks not built from the configuration (the demo's console);
            they receive every event.
        handle_signals: Whether to install SIGTERM / SIGINT / SIGHUP handlers.
    """

    def __init__(
        self,
        config: Config,
        *,
        reload: Callable[[], Config] | None = None,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
        extra_sinks: Mapping[str, Sink] | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.config = config
        self._reload = reload
        self._clock = clock or SystemClock()
        self._notifier = notifier or SystemdNotifier()
        self._extra_sinks = dict(extra_sinks or {})
        self._handle_signals = handle_signals
        self.fleet: Fleet | None = None
        self.journal: Store | None = None
        self.recorder: JournalRecorder | None = None
        #: The lease keeper on a cluster node (``store_url``); None on SQLite.
        self.keeper: LeaseKeeper | None = None
        self._dispatcher: Dispatcher | None = None
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, SklmClient] = {}
        self._stop: anyio.Event | None = None
        self._stop_requested = False
        self._started: anyio.Event | None = None
        self._latency = {"ok": LatencyHistogram(), "failed": LatencyHistogram()}
        #: Where the status endpoint listens, once it does: (host, port).
        self.listening: tuple[str, int] | None = None
        #: The dashboard's live event stream, while the status server runs.
        self.stream: EventStream | None = None
        self._status_server: StatusServer | None = None

    async def run(self) -> None:
        """Run until :meth:`stop`, SIGTERM or SIGINT, then shut down cleanly."""
        self._stop = anyio.Event()
        self._started = anyio.Event()
        if self._stop_requested:
            self._stop.set()
        # The start-up configuration's warnings are the loader's caller's to log
        # (the CLI logs them as it loads): logging them here too said each twice
        # (issue 11). A reload loads, so it logs them (_apply).
        settings = self.config.watcher
        if settings.is_cluster and not settings.node_name:
            # The config loader fills it in; a Config built in code may not.
            settings = replace(settings, node_name=socket.gethostname())
            self.config = replace(self.config, watcher=settings)
        journal = open_store(
            settings,
            self._sink_configs(self.config),
            mode="daemon",
            clock=self._clock,
        )
        self.journal = journal
        try:
            await self._run(journal, self._stop, self._started)
        finally:
            pending = self._pending_notifications(journal)
            journal.close()
            unjournaled = self.recorder.pending_events if self.recorder else 0
            # Pending rows are delivered after the next start; events never
            # journaled are lost, which is worth more than an info line.
            log.log(
                logging.ERROR if unjournaled else logging.INFO,
                DAEMON_STOPPED,
                pending_notifications=pending,
                unjournaled_events=unjournaled,
            )

    def _pending_notifications(self, journal: Store) -> int | None:
        """Outbox rows not yet delivered (None when the journal cannot say)."""
        try:
            # Synchronously: everything else has stopped, and this may run while
            # the task is being cancelled, where no await would complete.
            summary = journal.outbox_summary(self._clock.now())
        except JournalError:
            return None
        return sum(s.pending for s in summary)

    async def wait_started(self) -> None:
        """Return once polling has started (call after :meth:`run` was started)."""
        started = self._started
        if started is None:
            raise RuntimeError("the daemon is not running")
        await started.wait()

    def stop(self) -> None:
        """Ask the daemon to shut down cleanly (what SIGTERM does)."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    # --- running ------------------------------------------------------------------

    async def _run(
        self, journal: Store, stop: anyio.Event, started: anyio.Event
    ) -> None:
        config = self.config
        clock = self._clock
        cluster = config.watcher.is_cluster
        now, mono = clock.now(), clock.monotonic()
        states: dict[str, ServerState] = {}
        # A cluster node starts with no servers: it loads each one's state when it
        # takes the lease (the LeaseKeeper), never all of them up front.
        for name, stored in {} if cluster else journal.load_states().items():
            try:
                states[name] = ServerState.from_dict(stored, at=now, monotonic=mono)
            except ValueError:
                # A state this version cannot read must not stop the whole fleet.
                log.exception("state.unreadable", server=name)
        async with create_session(config.servers) as session:
            self._session = session
            self._clients = {s.name: SklmClient(s, session) for s in config.servers}
            recorder = JournalRecorder(
                journal,
                self._wake,
                on_lease_lost=self._lease_lost if cluster else None,
            )
            self.recorder = recorder
            fleet = Fleet(
                [] if cluster else config.servers,
                self._clients,
                recorder,
                clock,
                states=states,
                jitter=config.watcher.jitter,
                on_poll=self._observe_poll,
                first_poll_within=TAKEOVER_FIRST_POLL if cluster else None,
            )
            self.fleet = fleet
            keeper: LeaseKeeper | None = None
            if cluster:
                keeper = LeaseKeeper(
                    cast(ClusterStore, journal),
                    lambda: [s.name for s in self.config.servers],
                    _FleetFollower(self, fleet),
                    clock,
                    info=NodeInfo(
                        name=config.watcher.node_name,
                        version=__version__,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        started_at=now,
                    ),
                )
                self.keeper = keeper
            status_server: StatusServer | None = None
            try:
                async with anyio.create_task_group() as tg:
                    if config.watcher.listen:
                        heartbeat = Heartbeat()
                        tg.start_soon(heartbeat.run)
                        position = journal.audit_position()
                        stream = EventStream(
                            journal, start_after=position.index if position else 0
                        )
                        self.stream = stream
                        tg.start_soon(stream.run)
                        peers: PeerStates | None = None
                        if cluster:
                            peers = PeerStates(
                                cast(ClusterStore, journal),
                                config.watcher.node_name,
                                clock,
                                on_refresh=stream.notify,
                            )
                            tg.start_soon(peers.run)
                        status_server = StatusServer(
                            self,
                            version=__version__,
                            heartbeat=heartbeat,
                            store=journal,
                            stream=stream,
                            auth=_http_auth(config),
                            cluster=self.cluster_stats if cluster else None,
                            fleet=(
                                None
                                if peers is None
                                else functools.partial(self._fleet_view, peers)
                            ),
                        )
                        self._status_server = status_server
                        host, port = config.watcher.listen
                        self.listening = await status_server.start(host, port)
                    fleet_scope = anyio.CancelScope()
                    tg.start_soon(self._run_fleet, fleet, fleet_scope)
                    keeper_scope = anyio.CancelScope()
                    if keeper is not None:
                        tg.start_soon(self._run_keeper, keeper, keeper_scope)
                    tg.start_soon(self._run_dispatchers, journal, session)
                    if self._handle_signals:
                        # Started before daemon.started is logged and READY=1 sent: a
                        # SIGTERM right after them must stop us cleanly, not kill us.
                        await tg.start(self._watch_signals)
                    tg.start_soon(self._keep_systemd_informed)
                    tg.start_soon(self._retry_journal, recorder)
                    tg.start_soon(self._prune_outbox, journal)
                    log.info(
                        DAEMON_STARTED,
                        servers=len(config.servers),
                        sinks=len(config.sinks),
                    )
                    self._notifier.ready(self._status_line())
                    started.set()
                    await stop.wait()
                    self._notifier.stopping()
                    fleet_scope.cancel()
                    keeper_scope.cancel()
                    if keeper is not None:
                        # Server leases first (what is queued written, then
                        # released); the sink leases and "left" only after the
                        # deliveries in flight, or a peer would send them again.
                        await self._hand_over(keeper, recorder)
                    dispatcher = self._dispatcher
                    if dispatcher is not None:
                        await dispatcher.drain(config.watcher.drain_timeout)
                    if keeper is not None:
                        with anyio.move_on_after(LEAVE_GRACE):
                            await keeper.leave()
                    tg.cancel_scope.cancel()
            finally:
                if status_server is not None:
                    with anyio.CancelScope(shield=True):
                        await status_server.close()
                with anyio.move_on_after(LOGOUT_GRACE, shield=True):
                    async with anyio.create_task_group() as tg:
                        for client in self._clients.values():
                            tg.start_soon(client.logout)

    @staticmethod
    async def _run_fleet(fleet: Fleet, scope: anyio.CancelScope) -> None:
        with scope:
            await fleet.run()

    @staticmethod
    async def _run_keeper(keeper: LeaseKeeper, scope: anyio.CancelScope) -> None:
        with scope:
            await keeper.run()

    @staticmethod
    async def _hand_over(keeper: LeaseKeeper, recorder: JournalRecorder) -> None:
        """A cluster node's clean stop: write what is queued, then give servers up.

        Peers take the servers over at their next round instead of after the
        leases expire. Bounded: a store that does not answer leaves the leases to
        expire.
        """
        with anyio.move_on_after(LEAVE_GRACE):
            if recorder.pending_events:
                await recorder.flush()
            await keeper.release_all()

    def _lease_lost(self, server: str) -> None:
        """The store fenced a write of ``server``: stop polling it at once."""
        fleet = self.fleet
        if fleet is not None:
            fleet.abandon(server)

    async def _run_dispatchers(
        self, journal: Store, session: aiohttp.ClientSession
    ) -> None:
        # One dispatcher at a time; a reload that changes sinks drains it and this
        # loop starts the next one with the new sinks.
        while True:
            configs = {c.name: c for c in self.config.sinks}
            built: dict[str, Sink] = {
                name: build_sink(c, session, self._clock) for name, c in configs.items()
            }
            sinks = {**built, **self._extra_sinks}
            dispatcher = Dispatcher(
                journal,
                sinks,
                configs,
                self._clock,
                poll_interval=(
                    CLUSTER_DISPATCH_POLL
                    if self.config.watcher.is_cluster
                    else DISPATCH_POLL
                ),
            )
            self._dispatcher = dispatcher
            try:
                await dispatcher.run()
            finally:
                # A syslog sink keeps its relay connection open between events;
                # the next dispatcher builds its own sinks.
                with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                    await close_sinks(built.values())
            if self._stop is not None and self._stop.is_set():
                return

    async def _retry_journal(self, recorder: JournalRecorder) -> None:
        while True:
            await anyio.sleep(JOURNAL_RETRY_INTERVAL)
            if recorder.pending_events or recorder.failure is not None:
                await recorder.flush()

    async def _prune_outbox(self, journal: Store) -> None:
        # Read the retention each round: a reload may change it.
        while True:
            retention = self.config.watcher.outbox_retention
            if retention > 0:
                before = self._clock.now() - timedelta(seconds=retention)
                try:
                    pruned = await _prune_before(journal, before)
                except JournalError as exc:
                    # Not urgent: the recorder reports a failing journal loudly.
                    log.warning("outbox.prune_failed", error=str(exc))
                else:
                    if pruned:
                        log.info(OUTBOX_PRUNED, rows=pruned, before=before.isoformat())
            await anyio.sleep(OUTBOX_PRUNE_INTERVAL)

    def _wake(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.wake()
        if self.stream is not None:
            # Right after the journal: the dashboard sees the event within the second.
            self.stream.notify()

    def _sink_configs(self, config: Config) -> list[SinkConfig]:
        extra = [SinkConfig(name=name, type="log") for name in self._extra_sinks]
        return [*config.sinks, *extra]

    async def _watch_signals(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(
            signal.SIGTERM, signal.SIGINT, signal.SIGHUP
        ) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self._reopen_audit_log()
                    await self.reload()
                    continue
                log.info(DAEMON_STOPPING, signal=signal.Signals(signum).name)
                self.stop()
                return

    async def _reopen_audit_log(self) -> None:
        # logrotate's postrotate sends SIGHUP: start the new file at once.
        journal = self.journal
        if journal is not None:
            try:
                await journal.call(journal.reopen_audit_log)
            except JournalError as exc:
                log.error(JOURNAL_FAILING, detail=str(exc))

    async def _keep_systemd_informed(self) -> None:
        interval = self._notifier.watchdog_interval
        next_status = 0.0
        while True:
            if interval is not None:
                # Sent from the event loop itself: a wedged loop stops the pings and
                # systemd restarts us (WatchdogSec=).
                self._notifier.watchdog()
            now = self._clock.monotonic()
            if now >= next_status:
                self._notifier.status(await self._status_line_full())
                next_status = now + STATUS_INTERVAL
            await anyio.sleep(min(interval or STATUS_INTERVAL, STATUS_INTERVAL))

    # --- reload -------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the configuration (SIGHUP); return whether it was applied.

        On any problem every problem is logged and the running configuration stays.
        """
        if self._reload is None:
            return False
        self._notifier.reloading()
        try:
            try:
                new = self._reload()
            except ConfigError as exc:
                problems = exc.problems
            else:
                await self._apply(new)
                return True
            for problem in problems:
                log.error(RELOAD_PROBLEM, key=problem.key, reason=problem.reason)
            log.error(RELOAD_REJECTED, detail="keeping the running configuration")
            return False
        finally:
            self._notifier.ready(self._status_line())

    async def _apply(self, new: Config) -> None:
        old = self.config
        if new.watcher.state_dir != old.watcher.state_dir or (
            new.watcher.audit_log != old.watcher.audit_log
        ):
            log.warning(
                RELOAD_PROBLEM,
                key="watcher",
                reason="state_dir and audit_log changes need a restart; ignored",
            )
        if new.watcher.listen != old.watcher.listen:
            log.warning(
                RELOAD_PROBLEM,
                key="watcher.listen",
                reason="a listen change needs a restart; ignored",
            )
        if self._status_server is not None:
            # Credentials apply at once: a rotated token or password must not keep
            # the old one valid until a restart.
            self._status_server.set_auth(_http_auth(new))
        for warning in new.warnings:
            log.warning(CONFIG_WARNING, detail=warning)
        self.config = new
        journal = self.journal
        session = self._session
        if journal is None or session is None:
            raise RuntimeError("reload before the daemon started")
        await journal.call(journal.set_sinks, self._sink_configs(new))
        if self.fleet is not None:
            clients = self._clients_for(new.servers, old.servers, session)
            watched: Sequence[ServerConfig] = new.servers
            if self.keeper is not None:
                # A cluster node watches only what it holds; the keeper's next round
                # takes or gives up servers the reload added or removed.
                held = self.keeper.held
                watched = [s for s in new.servers if s.name in held]
            await self.fleet.reconfigure(watched, clients)
            self._clients = clients
        if new.sinks != old.sinks and self._dispatcher is not None:
            # Draining returns the old dispatcher's run(); the loop builds the new one.
            await self._dispatcher.drain(new.watcher.drain_timeout)
        servers = _changes(old.servers, new.servers)
        sinks = _changes(old.sinks, new.sinks)
        log.info(
            RELOAD_APPLIED,
            servers=len(new.servers),
            sinks=len(new.sinks),
            servers_added=servers.added,
            servers_removed=servers.removed,
            servers_changed=servers.changed,
            sinks_added=sinks.added,
            sinks_removed=sinks.removed,
            sinks_changed=sinks.changed,
        )

    def _clients_for(
        self,
        servers: Sequence[ServerConfig],
        previous: Sequence[ServerConfig],
        session: aiohttp.ClientSession,
    ) -> dict[str, SklmClient]:
        before = {s.name: s for s in previous}
        clients: dict[str, SklmClient] = {}
        for server in servers:
            old = self._clients.get(server.name)
            if old is not None and before.get(server.name) == server:
                clients[server.name] = old
            else:
                clients[server.name] = SklmClient(server, session)
        return clients

    # --- status (the StatusSource of watcher.service) ----------------------------

    def states(self) -> Mapping[str, ServerState]:
        """Every server's tracker state, in configuration order."""
        return self.fleet.states() if self.fleet is not None else {}

    def stats(self) -> Mapping[str, WatchStats]:
        """Every server's loop counters."""
        return self.fleet.stats() if self.fleet is not None else {}

    async def outbox(self) -> Sequence[OutboxSummary]:
        """Every sink's backlog, read from the journal in a worker thread."""
        journal = self.journal
        if journal is None:
            return []
        return await journal.call(journal.outbox_summary, self._clock.now())

    def health(self) -> str | None:
        """None when healthy, else why not (the journal cannot be written).

        On a cluster node also when the shared store cannot be reached by the lease
        keeper: ``store unreachable: <reason> (N events waiting in memory)``.
        """
        recorder = self.recorder
        failure = self._store_failure()
        if failure is None:
            return None
        pending = recorder.pending_events if recorder is not None else 0
        what = (
            "store unreachable" if self.keeper is not None else "journal not writable"
        )
        if isinstance(failure, NodeNameInUse):
            # The store works; this node must not take leases under that name.
            what = "not polling"
        return f"{what}: {failure.detail} ({pending} events waiting in memory)"

    def _store_failure(self) -> JournalError | None:
        """Why the journal (or on a cluster node, the store) fails; None if it works."""
        recorder = self.recorder
        if recorder is not None and recorder.failure is not None:
            return recorder.failure
        if self.keeper is not None:
            return self.keeper.failure
        return None

    def _fleet_view(self, peers: PeerStates) -> FleetView:
        """A cluster node's whole fleet for ``/status`` and the dashboard."""
        return peers.view([s.name for s in self.config.servers], self.states())

    def cluster_stats(self) -> ClusterStats | None:
        """This node's lease counters (``/metrics``); None when not in a cluster."""
        keeper = self.keeper
        if keeper is None:
            return None
        recorder = self.recorder
        fenced = recorder.fenced_writes if recorder is not None else 0
        stats = keeper.stats()
        return replace(
            stats,
            fenced_writes=fenced,
            store_up=stats.store_up and (recorder is None or recorder.failure is None),
        )

    def events_by_type(self) -> Mapping[str, int]:
        """Events journaled by this process, by type."""
        return dict(self.recorder.by_type) if self.recorder is not None else {}

    def _observe_poll(self, latency: float, answered: bool) -> None:
        self._latency["ok" if answered else "failed"].observe(latency)

    def poll_latency(self) -> Mapping[str, LatencyHistogram]:
        """Poll latency histograms by outcome (``ok`` / ``failed``)."""
        return self._latency

    def _status_line(self) -> str:
        return f"watching {self._watching()} servers"

    def _watching(self) -> str:
        """How many servers this node polls: "N" alone, "N of M as node X" in a cluster."""
        total = len(self.config.servers)
        if self.keeper is None:
            return str(total)
        held = len(self.fleet.watching()) if self.fleet is not None else 0
        return f"{held} of {total}"

    async def _status_line_full(self) -> str:
        states = self.fleet.states() if self.fleet is not None else {}
        running = sum(1 for s in states.values() if s.restore_active)
        failing = sum(1 for s in states.values() if s.unreachable_reported)
        line = (
            f"watching {self._watching()} servers"
            + (f" as node {self.keeper.node}" if self.keeper is not None else "")
            + f", {running} restores running, {failing} unreachable"
        )
        recorder = self.recorder
        failure = self._store_failure()
        if failure is not None:
            pending = recorder.pending_events if recorder is not None else 0
            if self.keeper is not None:
                return (
                    f"{line}; STORE UNREACHABLE ({pending} events waiting in "
                    f"memory): {failure.detail}"
                )
            return (
                f"{line}; JOURNAL FAILING ({pending} events in "
                f"memory): {failure.detail}"
            )
        journal = self.journal
        if journal is not None:
            try:
                summary = await journal.call(journal.outbox_summary, self._clock.now())
            except JournalError as exc:
                return f"{line}; journal error: {exc.detail}"
            pending = sum(s.pending for s in summary)
            dead = sum(s.dead for s in summary)
            line += f", outbox {pending} pending, {dead} dead"
        return line


class _FleetFollower:
    """The lease keeper's view of the fleet: watch exactly the servers held."""

    def __init__(self, daemon: Daemon, fleet: Fleet) -> None:
        self._daemon = daemon
        self._fleet = fleet

    def states(self) -> Mapping[str, ServerState]:
        """The tracker state of every server watched now."""
        return self._fleet.states()

    async def follow(
        self, servers: Sequence[str], states: Mapping[str, ServerState]
    ) -> None:
        """Watch exactly ``servers`` (configured ones); new ones start from ``states``."""
        wanted = set(servers)
        configs = [s for s in self._daemon.config.servers if s.name in wanted]
        await self._fleet.reconfigure(configs, self._daemon._clients, states=states)


@dataclass(frozen=True, slots=True)
class _Changes:
    """What a reload did to one list of named things, by name, in config order."""

    added: list[str]
    removed: list[str]
    changed: list[str]


def _changes(
    old: Sequence[ServerConfig | SinkConfig], new: Sequence[ServerConfig | SinkConfig]
) -> _Changes:
    before = {item.name: item for item in old}
    after = {item.name: item for item in new}
    return _Changes(
        added=[name for name in after if name not in before],
        removed=[name for name in before if name not in after],
        changed=[
            name for name, item in after.items() if before.get(name, item) != item
        ],
    )


def _http_auth(config: Config) -> HttpAuth:
    """``[watcher]``'s listen credentials (none configured: an empty HttpAuth)."""
    settings = config.watcher
    return HttpAuth(
        token=settings.listen_token,
        username=settings.listen_username,
        password=settings.listen_password,
    )


async def _prune_before(journal: Store, before: datetime) -> int:
    """Prune the outbox in batches, letting other journal calls in between them."""
    pruned = 0
    while True:
        count = await journal.call(journal.prune_outbox, before)
        pruned += count
        if count < PRUNE_LIMIT:
            return pruned
