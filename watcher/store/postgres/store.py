"""``PostgresStore``: the :class:`~watcher.store.base.ClusterStore` on one PostgreSQL database.

Every node of a cluster opens the same database. The store is the source of truth
for server states, events, the outbox, silences, the audit chain and the leases;
no node keeps a local copy it must reconcile.

This class owns the connection, its transactions and reconnection, and the epochs
of the leases this node holds; the SQL lives by concern in :mod:`.events`,
:mod:`.outbox`, :mod:`.leases`, :mod:`.silences` and :mod:`.schema`.

Three ways to open it (:meth:`PostgresStore.open`):
    * ``daemon``: a cluster node. Creates or migrates the schema; every
      :meth:`record` is fenced by the server's lease (:class:`LeaseLost` when this
      node does not hold it under the epoch it took it with); each sink is
      delivered under a sink lease.
    * ``write``: the CLI changing the outbox or silences while nodes run. No
      leases; :meth:`record` is refused.
    * ``read``: the CLI's views. Read-only transactions; the schema must exist.

Connection loss (PostgreSQL restarted, a network cut): the failing call raises
:class:`JournalError` (in words, never the URL's password) and the broken
connection is dropped; the next call opens a fresh one. A call that finds the
connection dead before it sent anything (the ``BEGIN`` failed) retries once on a
fresh one, so the first call after a restart does not fail for nothing. Waits are
bounded: connecting by ``connect_timeout``, each statement by ``statement_timeout``.

Crash windows: a transaction either commits whole (events, outbox rows, state,
audit lines) or not at all; re-derived events keep their ids, so writing them again
is a no-op. A delivery made but not marked is made again by whoever holds the sink
lease next (at-least-once, same event id).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread
import psycopg
import structlog

from watcher.audit import AuditPosition
from watcher.clock import Clock, SystemClock
from watcher.config import SinkConfig
from watcher.errors import JournalError, LeaseLost
from watcher.events import Event
from watcher.store.base import (
    EVENTS_SINCE_LIMIT,
    PRUNE_LIMIT,
    AuditLine,
    Lease,
    NodeInfo,
    NodeRow,
    OutboxRow,
    OutboxSummary,
    Silence,
    Takeover,
)
from watcher.store.postgres import events as events_sql
from watcher.store.postgres import leases as leases_sql
from watcher.store.postgres import outbox, schema, silences

log = structlog.get_logger(__name__)

T = TypeVar("T")

Mode = Literal["daemon", "read", "write"]
Cursor = psycopg.Cursor[Any]

# Log event names.
STORE_RECONNECTED: Final = "journal.store_reconnected"
STORE_CONNECTION_LOST: Final = "journal.store_connection_lost"
SINK_LEASE_LOST: Final = "journal.sink_lease_lost"


class PostgresStore:
    """The shared store of a cluster: PostgreSQL state, events, outbox, audit, leases.

    Synchronous (psycopg's blocking API); async code goes through :meth:`call`,
    which runs a method in a worker thread under the store's ``CapacityLimiter(1)``.
    A lock also serialises direct calls, so transactions never interleave on the
    one connection. Build it with :meth:`open`.
    """

    def __init__(
        self,
        url: str,
        conn: psycopg.Connection[Any] | None,
        *,
        mode: Mode,
        sinks: Sequence[SinkConfig],
        node_name: str,
        lease_seconds: float,
        clock: Clock,
    ) -> None:
        self._url = url
        self._conn = conn
        self._mode: Mode = mode
        self._sinks = tuple(sinks)
        self._node = node_name
        self._lease = float(lease_seconds)
        self._clock = clock
        self.where = schema.describe(url)
        #: server -> epoch of the leases this node holds (what record checks).
        self._held: dict[str, int] = {}
        #: sink -> epoch of the sink leases this node holds.
        self._sink_epochs: dict[str, int] = {}
        self._lock = threading.RLock()
        self._limiter = anyio.CapacityLimiter(1)
        self._closed = False
        self._lost = False

    @classmethod
    def open(
        cls,
        url: str,
        sinks: Sequence[SinkConfig],
        *,
        mode: Mode = "daemon",
        node_name: str = "",
        lease_seconds: float = 15.0,
        clock: Clock | None = None,
    ) -> PostgresStore:
        """Connect to the store at ``url``; in ``daemon``/``write`` mode create or migrate it.

        Args:
            url: ``postgresql://...`` (may carry a password: never shown).
            sinks: The configured sinks; each new event gets one outbox row per sink
                that wants it.
            mode: ``daemon`` (a cluster node: leases, fenced writes), ``write``
                (CLI changes, no leases, no record) or ``read`` (views).
            node_name: This node's name (daemon mode; lease holder and state's node).
            lease_seconds: How long a lease lasts without renewal (>= 1).
            clock: Where "now" comes from when a caller passes no instant (states'
                ``updated_at``, defaults of :meth:`reschedule` and friends). Lease
                instants never use it: they are PostgreSQL's.

        Raises:
            JournalError: Unreachable; not ours; a newer schema; (read) no schema
                yet or an older one; (daemon) no node name.
        """
        if mode == "daemon" and not node_name:
            raise JournalError(
                "a cluster node needs a name",
                hint="set [watcher] node_name (default: the host name)",
            )
        store = cls(
            url,
            None,
            mode=mode,
            sinks=sinks,
            node_name=node_name,
            lease_seconds=lease_seconds,
            clock=SystemClock() if clock is None else clock,
        )
        where = store.where
        with schema.translating(f"connecting to the store at {where}", url):
            conn = schema.connect(url, read_only=mode == "read")
        try:
            with schema.translating(f"preparing the store at {where}", url):
                if mode == "read":
                    schema.check_readable(conn)
                else:
                    schema.prepare(conn, where)
        except BaseException:
            with suppress(psycopg.Error):
                conn.close()
            raise
        store._conn = conn
        return store

    # --- plumbing ---------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        """This node's name."""
        return self._node

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts without renewal."""
        return self._lease

    @property
    def mode(self) -> Mode:
        """How the store was opened (``daemon``, ``write`` or ``read``)."""
        return self._mode

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (a method of this store) in a worker thread, one at a time."""
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args), limiter=self._limiter
        )

    def close(self) -> None:
        """Close the connection (idempotent). Leases are kept: :meth:`leave` gives them up."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()

    def __enter__(self) -> PostgresStore:
        """Return the store (closed on exit)."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()

    def _connection(self) -> tuple[psycopg.Connection[Any], bool]:
        """The open connection, or a fresh one (``True``) after the old one broke."""
        if self._closed:
            raise JournalError("the journal is closed", hint="this is a bug: report it")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, False
        self._conn = None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()
        conn = schema.connect(self._url, read_only=self._mode == "read")
        self._conn = conn
        if self._lost:
            self._lost = False
            log.info(STORE_RECONNECTED, store=self.where)
        return conn, True

    def _drop(self, exc: BaseException) -> None:
        """Forget a connection that failed (the next call opens a fresh one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()
        if not self._lost:
            self._lost = True
            log.warning(
                STORE_CONNECTION_LOST,
                store=self.where,
                error=schema.scrub(str(exc) or type(exc).__name__, self._url),
            )

    @contextmanager
    def _tx(self, action: str, *, write: bool = False) -> Iterator[Cursor]:
        """One transaction on a live connection (rolled back on any exception).

        A connection found dead at ``BEGIN`` (nothing sent yet) is replaced and the
        ``BEGIN`` retried once; any later failure drops it for the next call.
        """
        with self._lock:
            if write and self._mode == "read":
                raise JournalError(
                    f"cannot {action}: the journal was opened read-only",
                    hint="open it without read_only to change it",
                )
            with schema.translating(action, self._url):
                # Entered by hand: a BEGIN that fails on a connection that died
                # while idle ran nothing, so it is retried once on a fresh one.
                for attempt in (1, 2):
                    conn, fresh = self._connection()
                    tx = conn.transaction()
                    try:
                        tx.__enter__()
                    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                        self._drop(exc)
                        if fresh or attempt == 2:
                            raise
                        continue
                    break
                try:
                    with conn.cursor() as cur:
                        yield cur
                except BaseException as exc:
                    try:
                        tx.__exit__(type(exc), exc, exc.__traceback__)
                    except psycopg.Error as rollback:
                        self._drop(rollback)
                    if isinstance(
                        exc, psycopg.OperationalError | psycopg.InterfaceError
                    ):
                        self._drop(exc)
                    raise
                else:
                    try:
                        tx.__exit__(None, None, None)
                    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                        self._drop(exc)
                        raise

    def _need_leases(self, action: str) -> None:
        """Refuse a lease operation of a store opened for the CLI (``read``/``write``)."""
        if self._mode != "daemon":
            raise JournalError(
                f"cannot {action}: the store was opened without leases",
                hint="only the daemon (a cluster node) holds leases",
            )

    # --- recording --------------------------------------------------------------------

    def record(
        self, server: str, state: dict[str, Any], events: Sequence[Event]
    ) -> list[Event]:
        """Store a server's state and its new events with their outbox and audit rows.

        One transaction: the fencing check (this node holds ``server`` under the
        epoch it took it with, the row locked ``FOR SHARE`` so a takeover waits for
        this write or this write sees the takeover), the events (ids already stored
        are skipped), one outbox row per (new event, sink) the sink wants, the state
        (with this node's name) and the new events' audit lines.

        Returns:
            The events that were new, in the order given.

        Raises:
            LeaseLost: This node does not hold ``server`` (never took it, released
                it, or another node took it over); nothing was written.
            JournalError: Nothing was stored (database failure, or opened without
                leases).
        """
        self._need_leases("record")
        state_json = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            epoch = self._held.get(server)
            if epoch is None:
                raise LeaseLost(server, f"node {self._node} does not hold it")
            with self._tx(f"recording events of {server}", write=True) as cur:
                if not events_sql.check_lease(cur, server, self._node, epoch):
                    self._held.pop(server, None)
                    raise events_sql.lease_lost(cur, server)
                new = events_sql.store_transition(
                    cur,
                    server,
                    state_json,
                    events,
                    self._sinks,
                    self._clock.now(),
                    self._node,
                )
        return [event for event, _, _ in new]

    def set_sinks(self, sinks: Sequence[SinkConfig]) -> None:
        """Use these sinks for events recorded from now on (configuration reload).

        A new sink gets rows only for events recorded after this call; a removed
        sink's rows stay in the outbox (visible, requeueable if it comes back).
        """
        with self._lock:
            self._sinks = tuple(sinks)

    # --- leases and nodes -------------------------------------------------------------

    def heartbeat(self, info: NodeInfo) -> datetime:
        """Say this node is alive (upsert its row); return the store's clock now."""
        self._need_leases("send a heartbeat")
        with self._tx("sending a heartbeat", write=True) as cur:
            return leases_sql.heartbeat(cur, info, self.lease_seconds)

    def renew(self) -> set[str]:
        """Extend every lease this node holds; return the servers still held.

        A lease whose epoch is unchanged is renewed even if it expired meanwhile
        (nobody took it over, so nobody else wrote); one taken over is dropped.
        """
        self._need_leases("renew leases")
        with self._lock:
            held = dict(self._held)
            if not held:
                return set()
            with self._tx("renewing leases", write=True) as cur:
                kept = leases_sql.renew(cur, self._node, held, self._lease)
            for server in set(held) - kept:
                if self._held.get(server) == held[server]:
                    del self._held[server]
            return set(self._held)

    def take(self, servers: Sequence[str], limit: int) -> list[Takeover]:
        """Take at most ``limit`` of ``servers`` that are free; remember their epochs.

        Free: nobody ever held it, its lease expired or was released, its holder
        left, or it is held under this node's name by an earlier process of it.
        Servers this store already holds are skipped.
        """
        self._need_leases("take leases")
        with self._lock:
            with self._tx("taking leases", write=True) as cur:
                taken = leases_sql.take(
                    cur, self._node, servers, limit, self._lease, self._held
                )
            for takeover in taken:
                self._held[takeover.server] = takeover.epoch
            return taken

    def release(self, servers: Sequence[str]) -> None:
        """Give up these leases now (expired at once; a taker bumps the epoch)."""
        self._need_leases("release leases")
        with self._lock:
            held = {s: self._held[s] for s in servers if s in self._held}
            if not held:
                return
            with self._tx("releasing leases", write=True) as cur:
                leases_sql.release(cur, self._node, held)
            for server in held:
                self._held.pop(server, None)

    def leave(self) -> None:
        """Release every lease and sink lease and mark this node left (clean stop)."""
        self._need_leases("leave the cluster")
        with self._lock:
            with self._tx("leaving the cluster", write=True) as cur:
                leases_sql.leave(cur, self._node)
            self._held.clear()
            self._sink_epochs.clear()

    def held(self) -> dict[str, int]:
        """The servers this node holds, with their epochs (no store access)."""
        with self._lock:
            return dict(self._held)

    def leases(self) -> list[Lease]:
        """Every server lease in the store, by server."""
        with self._tx("reading leases") as cur:
            return leases_sql.leases(cur)

    def nodes(self) -> list[NodeRow]:
        """Every node that ever heartbeat, by name (alive: within one lease period)."""
        with self._tx("reading nodes") as cur:
            return leases_sql.nodes(cur, self._lease)

    # --- silences ---------------------------------------------------------------------

    def add_silence(
        self, server_glob: str, until: datetime, reason: str, at: datetime
    ) -> int:
        """Stop delivering events of servers matching ``server_glob`` until ``until``."""
        with self._tx("adding a silence", write=True) as cur:
            return silences.add(cur, server_glob, until, reason, at)

    def silences(
        self, now: datetime, *, include_expired: bool = False
    ) -> list[Silence]:
        """The silences active at ``now`` (or every one ever added), by id."""
        with self._tx("reading silences") as cur:
            return silences.listing(cur, now, include_expired=include_expired)

    def remove_silence(
        self, silence_id: int, at: datetime | None = None, by: str | None = None
    ) -> bool:
        """End a silence now (kept, with who and when); whether it existed and held."""
        when = self._clock.now() if at is None else at
        with self._tx("removing a silence", write=True) as cur:
            return silences.remove(cur, silence_id, when, by)

    # --- outbox -----------------------------------------------------------------------

    def _sink_lease(self, sink: str) -> float:
        """How long a sink lease lasts: a delivery in flight ends before it expires."""
        config = next((s for s in self._sinks if s.name == sink), None)
        extra = 0.0 if config is None else config.timeout + config.min_interval
        return self._lease + extra

    def next_due(self, sink: str, now: datetime) -> OutboxRow | None:
        """The row ``sink`` should deliver next, or None (nothing due, or not ours).

        In daemon mode this first renews or takes the sink's lease: only its holder
        gets rows, so one node at a time delivers each sink, in per-server order.
        """
        with self._lock, self._tx(f"reading the outbox of {sink}", write=True) as cur:
            if self._mode == "daemon":
                epoch = outbox.claim_sink(
                    cur,
                    sink,
                    self._node,
                    self._sink_epochs.get(sink),
                    self._sink_lease(sink),
                )
                if epoch is None:
                    self._sink_epochs.pop(sink, None)
                    return None
                self._sink_epochs[sink] = epoch
            return outbox.next_due(cur, sink, now)

    def next_due_at(self, sink: str) -> datetime | None:
        """When the next row of ``sink`` falls due (None: nothing pending).

        For a node that does not hold the sink lease too: the holder may die, and
        the dispatcher then looks again at that time (or soon, when it is past).
        """
        with self._tx(f"reading the outbox of {sink}") as cur:
            return outbox.next_due_at(cur, sink)

    @contextmanager
    def _result(self, sink: str, action: str) -> Iterator[Cursor | None]:
        """A transaction for a delivery result; None when the sink lease moved on.

        A node paused mid-delivery must not undo what the new holder recorded (a
        late reschedule would make a delivered row pending again): its result is
        dropped, and the new holder's (re)delivery stands.
        """
        with self._lock, self._tx(action, write=True) as cur:
            if self._mode == "daemon":
                epoch = self._sink_epochs.get(sink)
                if not outbox.may_write(cur, sink, self._node, epoch):
                    self._sink_epochs.pop(sink, None)
                    log.warning(SINK_LEASE_LOST, sink=sink, node=self._node)
                    yield None
                    return
            yield cur

    def mark_delivered(self, sink: str, event_id: str, at: datetime) -> None:
        """Record a successful delivery (counts as one attempt)."""
        with self._result(sink, "marking a delivery") as cur:
            if cur is not None:
                outbox.mark_delivered(cur, sink, event_id, at)

    def reschedule(
        self,
        sink: str,
        event_id: str,
        *,
        attempts: int,
        next_attempt_at: datetime,
        error: str,
        at: datetime | None = None,
    ) -> None:
        """Record a failed attempt (made ``at``, else now) and when to try again."""
        when = at or self._clock.now()
        with self._result(sink, "rescheduling a delivery") as cur:
            if cur is not None:
                outbox.reschedule(
                    cur,
                    sink,
                    event_id,
                    attempts=attempts,
                    next_attempt_at=next_attempt_at,
                    error=error,
                    at=when,
                )

    def dead_letter(
        self, sink: str, event_id: str, *, error: str, at: datetime
    ) -> None:
        """Give up on a row: it stays visible as ``dead`` until requeued."""
        with self._result(sink, "dead-lettering a delivery") as cur:
            if cur is not None:
                outbox.dead_letter(cur, sink, event_id, error=error, at=at)

    def suppress(self, sink: str, event_id: str, *, reason: str) -> bool:
        """Decide not to deliver a pending row; returns whether one was pending."""
        with self._tx("suppressing a delivery", write=True) as cur:
            return outbox.suppress(cur, sink, event_id, reason)

    def requeue(
        self,
        *,
        sink: str | None = None,
        event_id: str | None = None,
        all_dead: bool = False,
        at: datetime | None = None,
    ) -> int:
        """Put dead rows back in the queue, due ``at`` (now), attempts and age reset.

        Raises:
            ValueError: Neither a sink, an event id nor ``all_dead`` was given.
        """
        if sink is None and event_id is None and not all_dead:
            raise ValueError("name a sink or an event id, or pass all_dead=True")
        now = at or self._clock.now()
        with self._tx("requeueing dead deliveries", write=True) as cur:
            return outbox.requeue(cur, sink, event_id, now)

    def outbox_summary(self, now: datetime) -> list[OutboxSummary]:
        """Pending and dead counts and the oldest pending age, per configured sink."""
        with self._tx("summarising the outbox") as cur:
            return outbox.summary(cur, self._sinks, now)

    def prune_outbox(self, before: datetime, *, limit: int = PRUNE_LIMIT) -> int:
        """Delete up to ``limit`` delivered or suppressed rows older than ``before``."""
        with self._tx("pruning the outbox", write=True) as cur:
            return outbox.prune(cur, before, limit)

    def dead_rows(self, sink: str | None = None) -> list[OutboxRow]:
        """Every dead-lettered row (of one sink, if given), oldest event first."""
        with self._tx("reading dead deliveries") as cur:
            return outbox.dead_rows(cur, sink)

    # --- history and state ------------------------------------------------------------

    def load_states(self) -> dict[str, dict[str, Any]]:
        """The last stored state of every server (``ServerState.to_dict()`` form)."""
        with self._tx("loading server states") as cur:
            return events_sql.load_states(cur)

    def load_state(self, server: str) -> dict[str, Any] | None:
        """The last stored state of one server (a new owner resumes from it)."""
        with self._tx(f"loading the state of {server}") as cur:
            return events_sql.load_state(cur, server)

    def state_nodes(self) -> dict[str, str]:
        """Which node last stored each server's state (``status``'s NODE column)."""
        with self._tx("reading which node polls each server") as cur:
            return events_sql.state_nodes(cur)

    def last_state_update(self) -> datetime | None:
        """When a server's state was last stored."""
        with self._tx("reading the newest state") as cur:
            return events_sql.last_state_update(cur)

    def events(
        self,
        *,
        server: str | None = None,
        type_glob: str | None = None,
        since: datetime | None = None,
    ) -> list[Event]:
        """Stored events in store order, optionally filtered (server, type glob, time)."""
        with self._tx("reading events") as cur:
            return events_sql.select(
                cur, server=server, type_glob=type_glob, since=since
            )

    def events_since(
        self, auditseq: int, limit: int = EVENTS_SINCE_LIMIT
    ) -> list[AuditLine]:
        """The audit lines after ``auditseq``, oldest first, at most ``limit``."""
        with self._tx("reading audit lines") as cur:
            return events_sql.lines_since(cur, auditseq, limit)

    def export_audit(self, after: int = 0) -> list[AuditLine]:
        """Every audit line after ``auditseq`` ``after``, oldest first (``audit export``)."""
        with self._tx("exporting the audit chain") as cur:
            return events_sql.lines_since(cur, after, None)

    # --- audit chain ------------------------------------------------------------------

    def audit_position(self) -> AuditPosition | None:
        """The chain's last line (None: no event recorded yet)."""
        with self._tx("reading the audit chain's head") as cur:
            return events_sql.position(cur)

    def reopen_audit_log(self) -> None:
        """A no-op: the chain lives in the store (``audit export`` writes the file)."""
