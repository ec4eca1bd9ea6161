"""What every store offers: the ``Store`` protocol and the values it speaks in.

A store keeps the server states, the events with one outbox row per (event, sink)
written in the same transaction, the outbox's claims and results, the silences, and
the audit log's position. Its methods block (SQLite and psycopg do); async code goes
through :meth:`Store.call`, which runs one in a worker thread, one at a time.

The protocol is split by who uses it: :class:`Outbox` is what the dispatcher needs,
:class:`History` what the read-only views need; :class:`Store` is all of it (the
daemon and the CLI). An implementation satisfies them structurally; the contract
suite in ``tests/unit/store/`` runs against each one.

Times are aware UTC datetimes; every instant a method stores is passed in by the
caller (who owns the clock), so a store never decides what time it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar

from watcher import schema
from watcher.audit import AuditPosition
from watcher.config import SinkConfig
from watcher.events import Event

T = TypeVar("T")

#: Outbox rows one :meth:`Store.prune_outbox` call deletes at most (one short
#: transaction); call again while it returns this many.
PRUNE_LIMIT: Final = 10_000
#: Audit lines one :meth:`History.events_since` call returns at most by default.
EVENTS_SINCE_LIMIT: Final = 1_000


class OutboxStatus(StrEnum):
    """Where one (sink, event) delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    #: Deliberately not delivered (silenced, or :meth:`Store.suppress`); never blocks.
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting for (or done with) one sink.

    ``attempts`` counts delivery attempts made so far; ``first_attempt_at`` is None
    until the first attempt (and again after :meth:`Store.requeue`), so a sink's
    ``max_age`` can be measured from it.
    """

    sink: str
    event: Event
    attempts: int
    first_attempt_at: datetime | None
    next_attempt_at: datetime
    last_error: str | None
    status: OutboxStatus
    delivered_at: datetime | None = None
    #: When it was dead-lettered (None unless ``status`` is ``dead``).
    dead_at: datetime | None = None
    #: The event's position in the store (per-server order).
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Silence:
    """Delivery of events of servers matching ``server_glob`` is off until ``until``."""

    id: int
    server_glob: str
    until: datetime
    reason: str
    created_at: datetime
    #: When ``silence remove`` ended it (None: not removed).
    removed_at: datetime | None = None
    #: Who removed it (the operator's user name), when known.
    removed_by: str | None = None

    def is_active(self, at: datetime) -> bool:
        """Whether the silence holds at ``at`` (until ``until``, or its removal)."""
        return at < self.until and (self.removed_at is None or at < self.removed_at)

    def matches(self, server: str) -> bool:
        """Whether the silence covers ``server`` (shell-style glob, case-sensitive)."""
        return fnmatchcase(server, self.server_glob)

    def to_json(self) -> dict[str, Any]:
        """``silence list --json`` (:func:`watcher.schema.silence_json`)."""
        return schema.silence_json(self)


def wanted_sinks(event: Event, sinks: Sequence[SinkConfig]) -> list[str]:
    """The sinks that get an outbox row for ``event`` (their ``events`` / ``servers``)."""
    return [sink.name for sink in sinks if sink.wants(str(event.type), event.server)]


def outbox_status(
    event: Event, active: Sequence[Silence]
) -> tuple[OutboxStatus, str | None]:
    """How a new event's outbox rows start: pending, or suppressed by a silence (why)."""
    silence = next(
        (x for x in active if x.is_active(event.time) and x.matches(event.server)),
        None,
    )
    if silence is None:
        return OutboxStatus.PENDING, None
    return (
        OutboxStatus.SUPPRESSED,
        f"silenced (silence {silence.id}: {silence.reason})",
    )


@dataclass(frozen=True, slots=True)
class AuditLine:
    """One event as the audit log holds it: its ``auditseq`` and the whole line."""

    #: The line's number since the log began (``watcher.audit``; no gaps).
    auditseq: int
    #: The CloudEvents JSON with ``auditseq`` and ``prevhash``, byte for byte.
    line: str


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    """One configured sink's backlog: what ``status`` and metrics show."""

    sink: str
    pending: int
    dead: int
    #: Seconds since the oldest pending event happened; None when nothing is pending.
    oldest_pending_age: float | None


class Worker(Protocol):
    """Runs a store's blocking methods off the event loop."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (a method of this store) in a worker thread, one at a time."""
        ...


class Outbox(Worker, Protocol):
    """The outbox as the dispatcher sees it: claim the next due row, record results."""

    def next_due(self, sink: str, now: datetime) -> OutboxRow | None:
        """Return the oldest due row the sink may take now (per-server order)."""
        ...

    def next_due_at(self, sink: str) -> datetime | None:
        """Return when the sink's next pending row falls due, if any."""
        ...

    def mark_delivered(self, sink: str, event_id: str, at: datetime) -> None:
        """Record a delivery made ``at`` (counts as one attempt)."""
        ...

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
        """Record a failed attempt (made ``at``) and when to try again."""
        ...

    def dead_letter(
        self, sink: str, event_id: str, *, error: str, at: datetime
    ) -> None:
        """Give up on a row: it stays visible as ``dead`` until requeued."""
        ...


class History(Protocol):
    """What the read-only views read: server states and events."""

    def load_states(self) -> dict[str, dict[str, Any]]:
        """Return the last stored state of every server (``ServerState.to_dict()``)."""
        ...

    def last_state_update(self) -> datetime | None:
        """Return when a server's state was last stored."""
        ...

    def events(
        self,
        *,
        server: str | None = None,
        type_glob: str | None = None,
        since: datetime | None = None,
    ) -> list[Event]:
        """Return stored events in store order, optionally filtered."""
        ...

    def events_since(
        self, auditseq: int, limit: int = EVENTS_SINCE_LIMIT
    ) -> list[AuditLine]:
        """Return the audit lines after ``auditseq``, oldest first, at most ``limit``."""
        ...


class Store(Outbox, History, Protocol):
    """The whole storage boundary: what the daemon and the CLI use."""

    def close(self) -> None:
        """Release the store (idempotent)."""
        ...

    def __enter__(self) -> Self:
        """Return the store itself (closed on exit)."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        ...

    def record(
        self, server: str, state: dict[str, Any], events: Sequence[Event]
    ) -> list[Event]:
        """Store a state and its new events with their outbox rows in one transaction.

        Events whose ids are already stored are skipped (re-derived after a crash);
        each new event gets one row per sink that wants it (``suppressed`` while a
        silence covers it); the events are in the audit log before this returns.

        Returns:
            The events that were new, in the order given.
        """
        ...

    def set_sinks(self, sinks: Sequence[SinkConfig]) -> None:
        """Use these sinks for events recorded from now on (configuration reload)."""
        ...

    def suppress(self, sink: str, event_id: str, *, reason: str) -> bool:
        """Decide not to deliver a pending row; return whether one was pending."""
        ...

    def requeue(
        self,
        *,
        sink: str | None = None,
        event_id: str | None = None,
        all_dead: bool = False,
        at: datetime | None = None,
    ) -> int:
        """Put dead rows back in the queue, due ``at``; return how many."""
        ...

    def outbox_summary(self, now: datetime) -> list[OutboxSummary]:
        """Return pending and dead counts and the oldest pending age per sink."""
        ...

    def dead_rows(self, sink: str | None = None) -> list[OutboxRow]:
        """Return every dead-lettered row (of one sink), oldest event first."""
        ...

    def prune_outbox(self, before: datetime, *, limit: int = PRUNE_LIMIT) -> int:
        """Delete up to ``limit`` delivered or suppressed rows older than ``before``."""
        ...

    def add_silence(
        self, server_glob: str, until: datetime, reason: str, at: datetime
    ) -> int:
        """Stop delivering events of matching servers until ``until``; return its id."""
        ...

    def silences(
        self, now: datetime, *, include_expired: bool = False
    ) -> list[Silence]:
        """Return the silences active at ``now`` (or every one ever added)."""
        ...

    def remove_silence(
        self, silence_id: int, at: datetime | None = None, by: str | None = None
    ) -> bool:
        """End a silence; return whether it existed and was not removed yet."""
        ...

    def audit_position(self) -> AuditPosition | None:
        """Return the audit log's last line as the store remembers it."""
        ...

    def reopen_audit_log(self) -> None:
        """Reopen the audit log by its path (SIGHUP after logrotate moved it)."""
        ...


# --- the cluster (issue 13): what a shared store adds ---------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """One server's lease: which node polls it, under which epoch, until when.

    ``epoch`` grows by one at every change of owner; every write of the server's
    state and events checks it (fencing), so a node that lost the lease cannot write.
    ``expires_at`` is on the store's clock (PostgreSQL's ``now()``), never a node's.
    """

    server: str
    node: str
    epoch: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node says of itself with every heartbeat."""

    name: str
    version: str
    host: str
    pid: int
    started_at: datetime


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A node as the store knows it (``sklm-watcher cluster``)."""

    name: str
    version: str
    host: str
    pid: int
    started_at: datetime
    #: The last heartbeat, on the store's clock.
    heartbeat_at: datetime
    #: Whether it heartbeat within one lease period (and did not leave).
    alive: bool
    #: Server leases it holds now (unexpired).
    leases: int
    #: When it left cleanly (``run`` stopped); None while it runs or after a crash.
    left_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Takeover:
    """A lease this node just took: from whom (None: nobody held it) and its epoch."""

    server: str
    epoch: int
    previous_node: str | None
    #: Whether the previous holder's lease had expired (a takeover, not a hand-off).
    expired: bool


class ClusterStore(Store, Protocol):
    """A store shared by the nodes of a cluster: leases, heartbeats, fenced writes.

    The store itself keeps the epochs of the leases this node holds; :meth:`record`
    of a server this node does not hold (or whose epoch moved on) raises
    :class:`~watcher.errors.LeaseLost` and writes nothing. Every lease instant is on
    the store's clock.
    """

    @property
    def node_name(self) -> str:
        """This node's name."""
        ...

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts without renewal."""
        ...

    def heartbeat(self, info: NodeInfo) -> datetime:
        """Say this node is alive (upsert its row); return the store's clock now."""
        ...

    def renew(self) -> set[str]:
        """Extend every lease this node holds; return the servers still held.

        A lease whose epoch is unchanged is renewed even if it expired meanwhile
        (nobody took it over, so nobody else wrote); one taken over is dropped from
        this node's epochs and left out of the answer.
        """
        ...

    def take(self, servers: Sequence[str], limit: int) -> list[Takeover]:
        """Take at most ``limit`` of ``servers`` that nobody holds or whose lease expired.

        Each gets epoch + 1; the new epochs are remembered for :meth:`record`.
        """
        ...

    def release(self, servers: Sequence[str]) -> None:
        """Give up these leases now (rebalancing, or a clean stop): expired at once."""
        ...

    def leave(self) -> None:
        """Release every lease and sink lease and mark this node left (clean stop)."""
        ...

    def held(self) -> dict[str, int]:
        """The servers this node holds, with their epochs (no store access)."""
        ...

    def leases(self) -> list[Lease]:
        """Every server lease in the store, by server."""
        ...

    def nodes(self) -> list[NodeRow]:
        """Every node that ever heartbeat, by name."""
        ...

    def load_state(self, server: str) -> dict[str, Any] | None:
        """The last stored state of one server (a new owner resumes from it)."""
        ...

    def export_audit(self, after: int = 0) -> list[AuditLine]:
        """Every audit line after ``auditseq`` ``after``, oldest first (``audit export``)."""
        ...
