"""The journal: server states, events and per-sink outbox in SQLite, plus the audit log.

SQLite (``state_dir/state.sqlite3``) is the source of truth; the JSON Lines audit log
is derived from it and reconciled whenever the daemon opens the journal (and after a
failed append), so the two never disagree.

Durability (why ``synchronous=FULL``):
    An event must be durable before it is dispatched. :meth:`Journal.record` commits
    the events, the server state and the outbox rows in one transaction, then appends
    the events to the audit log and fsyncs it; only then does the daemon wake the
    dispatcher. In WAL mode ``synchronous=NORMAL`` survives a process crash
    (``kill -9``) but a power loss may roll back the last commits. Reconciliation runs
    one way, SQLite to audit log, so the database must be at least as durable as the
    log: with ``NORMAL`` an fsynced audit line (or a delivered notification) could
    outlive the row that produced it, and the outbox row that would have recorded the
    delivery. ``FULL`` costs one WAL fsync per commit; the journal commits per
    transition and per delivery attempt, never per poll (``shared/performance.md``),
    so the fsyncs scale with what happens, not with the fleet's poll rate.

Crash windows:
    * killed before the commit: nothing is stored; the tracker re-derives the same
      events (stable ids) from its resumed state;
    * killed between the commit and the audit append: the next open appends every
      event stored after the audit log's last id (a torn last line is dropped first);
    * re-derived events whose ids are already stored are skipped, so nothing is
      journaled, logged or queued twice;
    * killed after a delivery but before ``mark_delivered``: the row is still
      pending and is delivered again with the same event id (at-least-once; the id
      is the receiver's idempotency key).

Times are stored as integer microseconds since the Unix epoch (UTC): exact round trips,
cheap comparisons. Events are also stored as their CloudEvents JSON (what sinks get).

The audit log is a hash chain (tamper evidence):
    Each line is the event's CloudEvents JSON with two extension attributes added at
    the end: ``auditseq`` (the line's number since the log began: 1, 2, ... across
    rotations) and ``prevhash``, the SHA-256 (hex) of the previous line's bytes
    without its newline. The first line ever written chains from
    :data:`GENESIS_HASH` (64 zeros). The journal remembers the last line in ``meta``
    (``audit_last_seq``, ``audit_last_index``, ``audit_last_hash``), so when logrotate moves the file away the first line of the
    new file chains from the last line of the old one, whether the move happened
    while the daemon ran (noticed before each append by comparing the open
    descriptor's inode with the path's, or by :meth:`Journal.reopen_audit_log` on
    SIGHUP) or while it was stopped. :func:`watcher.views.verify_audit` checks a
    chain across rotated files.

Silences:
    ``add_silence(server_glob, until, ...)`` stops delivery, not journaling: an event
    of a matching server recorded while a silence is active (``event.time < until``)
    gets its outbox rows written as ``suppressed``: visible, never due, never
    blocking. A silence ends by itself at ``until``, or when removed (the row is
    kept with ``removed_at`` / ``removed_by``, for ``silence list --all``).

Only this module imports :mod:`sqlite3`; ``sqlite3.Error`` and ``OSError`` become
:class:`~watcher.errors.JournalError` here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import structlog

from watcher.config import SinkConfig
from watcher.errors import JournalError
from watcher.events import Event, format_time

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: The schema this code writes. A database at an older version is migrated on open
#: by ``_MIGRATIONS``; a newer one is refused (a downgrade must not corrupt it).
SCHEMA_VERSION: Final = 3
DB_NAME: Final = "state.sqlite3"
LOCK_NAME: Final = "lock"
#: How long a writer waits for another connection's write lock (CLI vs daemon).
BUSY_TIMEOUT_MS: Final = 5000
#: Bytes read per step when looking for the audit log's last line from its end.
TAIL_CHUNK: Final = 64 * 1024
#: Bytes written per ``write`` when the audit log catches up with the database.
_CATCH_UP_BATCH: Final = 1 << 20

# Log event names.
AUDIT_TORN_LINE: Final = "journal.audit_torn_line"
AUDIT_REBUILT: Final = "journal.audit_rebuilt"
AUDIT_CAUGHT_UP: Final = "journal.audit_caught_up"
AUDIT_UNKNOWN_TAIL: Final = "journal.audit_unknown_tail"
SCHEMA_MIGRATED: Final = "journal.schema_migrated"
AUDIT_REOPENED: Final = "journal.audit_reopened"
AUDIT_CONTINUED: Final = "journal.audit_continued"
AUDIT_POSITION_UNSAVED: Final = "journal.audit_position_unsaved"

#: What the first line of a brand-new audit log chains from.
GENESIS_HASH: Final = "0" * 64
#: The CloudEvents extension attributes of an audit line (lowercase alphanumeric).
PREVHASH_KEY: Final = "prevhash"
AUDITSEQ_KEY: Final = "auditseq"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


class OutboxStatus(StrEnum):
    """Where one (sink, event) delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    #: Deliberately not delivered (set by :meth:`Journal.suppress`); never blocks.
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting for (or done with) one sink.

    ``attempts`` counts delivery attempts made so far; ``first_attempt_at`` is None
    until the first attempt (and again after :meth:`Journal.requeue`), so a sink's
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
    #: The event's position in the journal (per-server order).
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
        """The JSON form (``silence list --json``)."""
        return {
            "id": self.id,
            "server_glob": self.server_glob,
            "until": format_time(self.until),
            "reason": self.reason,
            "created_at": format_time(self.created_at),
            "removed_at": None
            if self.removed_at is None
            else format_time(self.removed_at),
            "removed_by": self.removed_by,
        }


@dataclass(frozen=True, slots=True)
class AuditPosition:
    """The last line written to the audit log."""

    #: Its event's position in the journal (``events.seq``; may have gaps).
    seq: int
    #: Its ``auditseq``: lines since the log began, across rotations (no gaps).
    index: int
    #: Its SHA-256 (hex), the next line's ``prevhash``.
    hash: str


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    """One configured sink's backlog: what ``status`` and metrics show."""

    sink: str
    pending: int
    dead: int
    #: Seconds since the oldest pending event happened; None when nothing is pending.
    oldest_pending_age: float | None


# --- schema -------------------------------------------------------------------------

#: The silences table as schema version 2 created it (what migration 1 builds).
_SILENCES_TABLE_V2: Final = """CREATE TABLE silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server_glob TEXT NOT NULL,
        until INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )"""
#: Since version 3 a removed silence is kept (``silence list --all``) with when and
#: by whom it was removed; only rows with ``removed_at IS NULL`` hold.
_SILENCES_TABLE: Final = """CREATE TABLE silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server_glob TEXT NOT NULL,
        until INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        removed_at INTEGER,
        removed_by TEXT
    )"""

_SCHEMA: Final = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        server TEXT NOT NULL,
        type TEXT NOT NULL,
        time INTEGER NOT NULL,
        restore_id TEXT,
        json TEXT NOT NULL
    )""",
    "CREATE INDEX events_server ON events (server, seq)",
    "CREATE INDEX events_time ON events (time)",
    """CREATE TABLE server_state (
        server TEXT PRIMARY KEY,
        json TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    )""",
    """CREATE TABLE outbox (
        sink TEXT NOT NULL,
        event_id TEXT NOT NULL,
        server TEXT NOT NULL,
        seq INTEGER NOT NULL REFERENCES events (seq),
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'delivered', 'dead', 'suppressed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt_at INTEGER,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        delivered_at INTEGER,
        dead_at INTEGER,
        PRIMARY KEY (sink, event_id)
    )""",
    "CREATE UNIQUE INDEX outbox_sink_seq ON outbox (sink, seq)",
    # Per-server heads for next_due / next_due_at: small, only what is still pending.
    "CREATE INDEX outbox_pending ON outbox (sink, server, seq) WHERE status = 'pending'",
    "CREATE INDEX outbox_status ON outbox (sink, status)",
    _SILENCES_TABLE,
)


def _add_silences(conn: sqlite3.Connection) -> None:
    conn.execute(_SILENCES_TABLE_V2)


def _keep_removed_silences(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE silences ADD COLUMN removed_at INTEGER")
    conn.execute("ALTER TABLE silences ADD COLUMN removed_by TEXT")


#: ``version -> step`` upgrading a database from ``version`` to ``version + 1``; each
#: step runs inside the transaction that also bumps ``meta.schema_version``.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _add_silences,
    2: _keep_removed_silences,
}


# --- SQL (constant strings: sqlite3 caches their prepared statements) ----------------

_INSERT_EVENT: Final = """
    INSERT INTO events (id, server, type, time, restore_id, json)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO NOTHING
    RETURNING seq
"""
_UPSERT_STATE: Final = """
    INSERT INTO server_state (server, json, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (server) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at
"""
_INSERT_OUTBOX: Final = """
    INSERT INTO outbox (sink, event_id, server, seq, status, attempts, next_attempt_at,
        last_error)
    VALUES (?, ?, ?, ?, ?, 0, ?, ?)
    ON CONFLICT DO NOTHING
"""
_ACTIVE_SILENCES: Final = """
    SELECT id, server_glob, until, reason, created_at, removed_at, removed_by
    FROM silences WHERE until > ? AND removed_at IS NULL ORDER BY id
"""
_ALL_SILENCES: Final = """
    SELECT id, server_glob, until, reason, created_at, removed_at, removed_by
    FROM silences ORDER BY id
"""
_ACTIVE_SILENCES_V2: Final = """
    SELECT id, server_glob, until, reason, created_at, NULL, NULL
    FROM silences WHERE until > ? ORDER BY id
"""
_ALL_SILENCES_V2: Final = """
    SELECT id, server_glob, until, reason, created_at, NULL, NULL
    FROM silences ORDER BY id
"""
_SAVE_META: Final = """
    INSERT INTO meta (key, value) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
# The head of each server's queue is its oldest pending row. Later rows of the same
# server wait behind it even when due, so one server's events arrive in order.
_NEXT_DUE: Final = """
    WITH heads AS (
        SELECT MIN(seq) AS seq FROM outbox
        WHERE sink = :sink AND status = 'pending'
        GROUP BY server
    )
    SELECT o.sink, o.status, o.attempts, o.first_attempt_at, o.next_attempt_at,
        o.last_error, o.delivered_at, o.dead_at, o.seq, e.time, e.json
    FROM heads
    JOIN outbox o ON o.sink = :sink AND o.seq = heads.seq
    JOIN events e ON e.seq = o.seq
    WHERE o.next_attempt_at <= :now
    ORDER BY o.seq
    LIMIT 1
"""
_NEXT_DUE_AT: Final = """
    WITH heads AS (
        SELECT MIN(seq) AS seq FROM outbox
        WHERE sink = :sink AND status = 'pending'
        GROUP BY server
    )
    SELECT MIN(o.next_attempt_at)
    FROM heads JOIN outbox o ON o.sink = :sink AND o.seq = heads.seq
"""
_MARK_DELIVERED: Final = """
    UPDATE outbox SET status = 'delivered', attempts = attempts + 1,
        first_attempt_at = COALESCE(first_attempt_at, :at), delivered_at = :at
    WHERE sink = :sink AND event_id = :event_id
"""
_RESCHEDULE: Final = """
    UPDATE outbox SET status = 'pending', attempts = :attempts,
        first_attempt_at = COALESCE(first_attempt_at, :at),
        next_attempt_at = :next_attempt_at, last_error = :error
    WHERE sink = :sink AND event_id = :event_id
"""
_DEAD_LETTER: Final = """
    UPDATE outbox SET status = 'dead', attempts = attempts + 1,
        first_attempt_at = COALESCE(first_attempt_at, :at),
        last_error = :error, dead_at = :at
    WHERE sink = :sink AND event_id = :event_id
"""
_SUPPRESS: Final = """
    UPDATE outbox SET status = 'suppressed', last_error = :reason
    WHERE sink = :sink AND event_id = :event_id AND status = 'pending'
"""
_REQUEUE: Final = """
    UPDATE outbox SET status = 'pending', attempts = 0, first_attempt_at = NULL,
        next_attempt_at = :now, dead_at = NULL
    WHERE status = 'dead'
        AND (:sink IS NULL OR sink = :sink)
        AND (:event_id IS NULL OR event_id = :event_id)
"""
_COUNTS: Final = """
    SELECT status, COUNT(*) FROM outbox
    WHERE sink = ? AND status IN ('pending', 'dead')
    GROUP BY status
"""
_OLDEST_PENDING: Final = """
    SELECT MIN(e.time) FROM outbox o JOIN events e ON e.seq = o.seq
    WHERE o.sink = ? AND o.status = 'pending'
"""
#: Outbox rows :meth:`Journal.prune_outbox` deletes per call (one short transaction).
PRUNE_LIMIT: Final = 10_000
_PRUNE: Final = """
    DELETE FROM outbox WHERE rowid IN (
        SELECT o.rowid FROM outbox AS o JOIN events AS e ON e.seq = o.seq
        WHERE (o.status = 'delivered' AND o.delivered_at < :before)
           OR (o.status = 'suppressed' AND e.time < :before)
        LIMIT :limit)
"""
_DEAD_ROWS: Final = """
    SELECT o.sink, o.status, o.attempts, o.first_attempt_at, o.next_attempt_at,
        o.last_error, o.delivered_at, o.dead_at, o.seq, e.time, e.json
    FROM outbox o JOIN events e ON e.seq = o.seq
    WHERE o.status = 'dead' AND (:sink IS NULL OR o.sink = :sink)
    ORDER BY o.seq, o.sink
"""


# --- the journal --------------------------------------------------------------------


class Journal:
    """The durable store: SQLite state, events and outbox, plus the JSONL audit log.

    Synchronous (SQLite blocks); async code goes through :meth:`call`, which runs a
    method in a worker thread under the journal's ``CapacityLimiter(1)``. A lock
    also serialises direct calls, so a transaction never interleaves with another.
    Build it with :meth:`open`.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        state_dir: Path,
        audit_log: Path,
        sinks: Sequence[SinkConfig],
        writable: bool,
        owns_audit: bool,
        lock_fd: int | None,
    ) -> None:
        self._conn = conn
        self.state_dir = state_dir
        self.audit_log = audit_log
        self._sinks = tuple(sinks)
        self._writable = writable
        self._owns_audit = owns_audit
        self._lock_fd = lock_fd
        self._audit_fd: int | None = None
        #: The last line in the audit log (None until the log is opened).
        self._audit_position: AuditPosition | None = None
        #: The audit file's size after our last write (a smaller one was truncated).
        self._audit_size = 0
        self._lock = threading.RLock()
        self._limiter = anyio.CapacityLimiter(1)
        self._closed = False

    @classmethod
    def open(
        cls,
        state_dir: Path,
        audit_log: Path,
        sinks: Sequence[SinkConfig],
        *,
        read_only: bool = False,
        lock: bool = True,
    ) -> Journal:
        """Open (creating if needed) the journal in ``state_dir``.

        The default is the daemon's mode: take the ``state_dir/lock`` lock, create or
        migrate the schema, and reconcile the audit log with the database.

        Args:
            state_dir: Directory of ``state.sqlite3`` and ``lock`` (created if missing).
            audit_log: The JSON Lines audit log (parent directories created).
            sinks: The configured sinks; each new event gets one outbox row per sink
                that wants it.
            read_only: For CLI views: no lock, no writes, no audit log; the database
                must exist. Write methods raise :class:`JournalError`.
            lock: False for CLI commands that change the outbox (``requeue``) while a
                daemon runs: no lock and the audit log is left to the daemon, so
                :meth:`record` is refused.

        Raises:
            JournalError: The database cannot be opened, is not ours or has a newer
                schema version; another process holds the lock (its pid is named);
                the audit log cannot be repaired or written.
        """
        db_path = state_dir / DB_NAME
        if read_only:
            conn = _connect_read_only(db_path)
            try:
                _check_schema_read_only(conn, db_path)
            except BaseException:
                conn.close()
                raise
            return cls(
                conn,
                state_dir=state_dir,
                audit_log=audit_log,
                sinks=sinks,
                writable=False,
                owns_audit=False,
                lock_fd=None,
            )
        with _translating(f"creating state_dir {state_dir}"):
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _take_lock(state_dir) if lock else None
        try:
            conn = _connect(db_path)
            journal = cls(
                conn,
                state_dir=state_dir,
                audit_log=audit_log,
                sinks=sinks,
                writable=True,
                owns_audit=lock,
                lock_fd=lock_fd,
            )
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        try:
            _prepare_schema(conn, db_path)
            if lock:
                journal._catch_up_audit()
        except BaseException:
            journal.close()
            raise
        return journal

    # --- plumbing ---------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (a method of this journal) in a worker thread, one at a time."""
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args), limiter=self._limiter
        )

    def close(self) -> None:
        """Close the database and the audit log and release the lock (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with suppress(sqlite3.Error):
                self._conn.close()
            for fd in (self._audit_fd, self._lock_fd):
                if fd is not None:
                    with suppress(OSError):
                        os.close(fd)
            self._audit_fd = self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, _translating(action):
            self._check_open()
            yield self._conn

    @contextmanager
    def _writing(self, action: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any exception)."""
        with self._lock, _translating(action):
            self._check_open()
            if not self._writable:
                raise JournalError(
                    f"cannot {action}: the journal was opened read-only",
                    hint="open it without read_only to change it",
                )
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError("the journal is closed", hint="this is a bug: report it")

    # --- recording --------------------------------------------------------------------

    def record(
        self, server: str, state: dict[str, Any], events: Sequence[Event]
    ) -> list[Event]:
        """Store a server's state and its new events, queue them, append them to the log.

        One transaction stores the events (ids already stored are skipped: events
        re-derived after a crash), the state, and one outbox row per (new event, sink)
        the sink wants, due at the event's time. After the commit the new events are
        appended to the audit log, which is flushed and fsynced.

        Returns:
            The events that were new, in the order given.

        Raises:
            JournalError: Nothing was stored (database failure), or the events are
                stored but the audit append failed; the log catches up on the next
                successful record or open.
        """
        if self._writable and not self._owns_audit:
            raise JournalError(
                "cannot record: the journal was opened without the state_dir lock",
                hint="only the daemon records events",
            )
        state_json = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
        # Held across commit and append, so the log's order is the journal's order.
        with self._lock:
            new = self._store(server, state_json, events)
            if new:
                if self._audit_fd is not None and self._audit_replaced():
                    log.info(AUDIT_REOPENED, path=str(self.audit_log))
                    self._drop_audit_fd()
                if self._audit_fd is None:
                    # A previous append failed or the file was rotated: this
                    # catch-up includes the new events.
                    self._catch_up_audit(expected=len(new))
                else:
                    self._append_new(new)
        return [event for event, _, _ in new]

    def _store(
        self, server: str, state_json: str, events: Sequence[Event]
    ) -> list[tuple[Event, int, str]]:
        new: list[tuple[Event, int, str]] = []
        with self._writing(f"recording events of {server}") as conn:
            silences: list[Silence] | None = None
            for event in events:
                line = event.to_json()
                restore_id = event.data.get("restore_id")
                row = conn.execute(
                    _INSERT_EVENT,
                    (
                        event.id,
                        event.server,
                        str(event.type),
                        _us(event.time),
                        restore_id if isinstance(restore_id, str) else None,
                        line,
                    ),
                ).fetchone()
                if row is None:
                    continue
                new.append((event, row[0], line))
                wanted = [
                    sink.name
                    for sink in self._sinks
                    if sink.wants(str(event.type), event.server)
                ]
                if not wanted:
                    continue
                if silences is None:
                    silences = _active_silences(conn, min(e.time for e in events))
                silence = next(
                    (
                        x
                        for x in silences
                        if x.is_active(event.time) and x.matches(event.server)
                    ),
                    None,
                )
                status, note = OutboxStatus.PENDING, None
                if silence is not None:
                    status = OutboxStatus.SUPPRESSED
                    note = f"silenced (silence {silence.id}: {silence.reason})"
                for sink_name in wanted:
                    conn.execute(
                        _INSERT_OUTBOX,
                        (
                            sink_name,
                            event.id,
                            event.server,
                            row[0],
                            status.value,
                            _us(event.time),
                            note,
                        ),
                    )
            conn.execute(_UPSERT_STATE, (server, state_json, _us(_now())))
        return new

    def set_sinks(self, sinks: Sequence[SinkConfig]) -> None:
        """Use these sinks for events recorded from now on (configuration reload).

        A new sink gets rows only for events recorded after this call; a removed
        sink's rows stay in the outbox (visible, requeueable if it comes back).
        """
        with self._lock:
            self._sinks = tuple(sinks)

    # --- silences ---------------------------------------------------------------------

    def add_silence(
        self, server_glob: str, until: datetime, reason: str, at: datetime
    ) -> int:
        """Stop delivering events of servers matching ``server_glob`` until ``until``.

        Events are still journaled and logged; their outbox rows are written as
        ``suppressed``. Works on a journal opened with ``lock=False`` (the CLI,
        while the daemon runs).

        Args:
            server_glob: Shell-style glob on server names (``*`` for every server).
            until: When the silence ends by itself (aware).
            reason: Shown by ``silence list`` and kept on each suppressed row.
            at: Now (``created_at``).

        Returns:
            The silence's id (for :meth:`remove_silence`).
        """
        params = (server_glob, _us(until), reason, _us(at))
        with self._writing("adding a silence") as conn:
            row = conn.execute(
                "INSERT INTO silences (server_glob, until, reason, created_at) "
                "VALUES (?, ?, ?, ?) RETURNING id",
                params,
            ).fetchone()
        return int(row[0])

    def silences(
        self, now: datetime, *, include_expired: bool = False
    ) -> list[Silence]:
        """The silences active at ``now``, by id.

        With ``include_expired``, every silence ever added: expired and removed ones
        too (a removed one has ``removed_at`` / ``removed_by``).
        """
        with self._reading("reading silences") as conn:
            sql = _silences_sql(conn, include_expired)
            params = () if include_expired else (_us(now),)
            rows = conn.execute(sql, params).fetchall()
        return [_silence(row) for row in rows]

    def remove_silence(
        self, silence_id: int, at: datetime | None = None, by: str | None = None
    ) -> bool:
        """End a silence now; returns whether it existed and was not removed yet.

        The row is kept (``silence list --all`` shows it) with ``removed_at`` and
        ``removed_by``, so who lifted a silence during an incident stays known.

        Args:
            silence_id: The silence's id.
            at: Now (the wall clock when None).
            by: Who removed it (the CLI passes the operator's user name).
        """
        when = _us(_now() if at is None else at)
        with self._writing("removing a silence") as conn:
            cursor = conn.execute(
                "UPDATE silences SET removed_at = ?, removed_by = ? "
                "WHERE id = ? AND removed_at IS NULL",
                (when, by, silence_id),
            )
            return cursor.rowcount > 0

    # --- outbox -----------------------------------------------------------------------

    def next_due(self, sink: str, now: datetime) -> OutboxRow | None:
        """The row ``sink`` should deliver next, or None if nothing is due at ``now``.

        Only each server's oldest pending row is a candidate (a retrying row holds
        back later events of its server, not of other servers); among the candidates
        due at or before ``now``, the one recorded first.
        """
        with self._reading(f"reading the outbox of {sink}") as conn:
            row = conn.execute(_NEXT_DUE, {"sink": sink, "now": _us(now)}).fetchone()
        return None if row is None else _outbox_row(row)

    def next_due_at(self, sink: str) -> datetime | None:
        """When the next row of ``sink`` falls due (None: nothing pending)."""
        with self._reading(f"reading the outbox of {sink}") as conn:
            (value,) = conn.execute(_NEXT_DUE_AT, {"sink": sink}).fetchone()
        return None if value is None else _at(value)

    def mark_delivered(self, sink: str, event_id: str, at: datetime) -> None:
        """Record a successful delivery (counts as one attempt)."""
        params = {"sink": sink, "event_id": event_id, "at": _us(at)}
        self._update_row(_MARK_DELIVERED, params, "marking a delivery")

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
        """Record a failed attempt and when to try again.

        Args:
            attempts: Attempts made so far, this one included.
            next_attempt_at: When the row falls due again.
            error: Why it failed (no secrets: shown by the CLI).
            at: When this attempt was made (``first_attempt_at`` if it was the
                first); now if not given.
        """
        params = {
            "sink": sink,
            "event_id": event_id,
            "attempts": attempts,
            "next_attempt_at": _us(next_attempt_at),
            "error": error,
            "at": _us(at or _now()),
        }
        self._update_row(_RESCHEDULE, params, "rescheduling a delivery")

    def dead_letter(
        self, sink: str, event_id: str, *, error: str, at: datetime
    ) -> None:
        """Give up on a row: it stays visible as ``dead`` until requeued."""
        params = {"sink": sink, "event_id": event_id, "error": error, "at": _us(at)}
        self._update_row(_DEAD_LETTER, params, "dead-lettering a delivery")

    def suppress(self, sink: str, event_id: str, *, reason: str) -> bool:
        """Decide not to deliver a pending row; returns whether one was pending."""
        params = {"sink": sink, "event_id": event_id, "reason": reason}
        with self._writing("suppressing a delivery") as conn:
            return conn.execute(_SUPPRESS, params).rowcount > 0

    def requeue(
        self,
        *,
        sink: str | None = None,
        event_id: str | None = None,
        all_dead: bool = False,
        at: datetime | None = None,
    ) -> int:
        """Put dead rows back in the queue, due now, with attempts and age reset.

        Selects dead rows of ``sink`` and/or ``event_id``; ``all_dead`` must be set to
        requeue every dead row. ``last_error`` is kept. Returns the number requeued.

        Raises:
            ValueError: Neither a sink, an event id nor ``all_dead`` was given.
        """
        if sink is None and event_id is None and not all_dead:
            raise ValueError("name a sink or an event id, or pass all_dead=True")
        params = {"sink": sink, "event_id": event_id, "now": _us(at or _now())}
        with self._writing("requeueing dead deliveries") as conn:
            return conn.execute(_REQUEUE, params).rowcount

    def outbox_summary(self, now: datetime) -> list[OutboxSummary]:
        """Pending and dead counts and the oldest pending age, per configured sink."""
        summaries = []
        now_us = _us(now)
        with self._reading("summarising the outbox") as conn:
            for sink in self._sinks:
                counts = dict(conn.execute(_COUNTS, (sink.name,)).fetchall())
                (oldest,) = conn.execute(_OLDEST_PENDING, (sink.name,)).fetchone()
                age = None if oldest is None else max(0, now_us - oldest) / 1e6
                summaries.append(
                    OutboxSummary(
                        sink=sink.name,
                        pending=counts.get(OutboxStatus.PENDING.value, 0),
                        dead=counts.get(OutboxStatus.DEAD.value, 0),
                        oldest_pending_age=age,
                    )
                )
        return summaries

    def prune_outbox(self, before: datetime, *, limit: int = PRUNE_LIMIT) -> int:
        """Delete up to ``limit`` delivered or suppressed rows older than ``before``.

        Delivered rows by their delivery time, suppressed ones by their event's
        time; pending and dead rows are never pruned. Returns how many went. The
        limit keeps one transaction (and the journal's lock) short; call again
        while it returns ``limit``.
        """
        params = {"before": _us(before), "limit": limit}
        with self._writing("pruning the outbox") as conn:
            return conn.execute(_PRUNE, params).rowcount

    def dead_rows(self, sink: str | None = None) -> list[OutboxRow]:
        """Every dead-lettered row (of one sink, if given), oldest event first."""
        with self._reading("reading dead deliveries") as conn:
            rows = conn.execute(_DEAD_ROWS, {"sink": sink}).fetchall()
        return [_outbox_row(row) for row in rows]

    def _update_row(self, sql: str, params: dict[str, Any], action: str) -> None:
        with self._writing(action) as conn:
            if conn.execute(sql, params).rowcount == 0:
                raise JournalError(
                    f"{action}: no outbox row for sink {params['sink']} "
                    f"and event {params['event_id']}",
                    hint="this is a bug: report it",
                )

    # --- history and state ------------------------------------------------------------

    def load_states(self) -> dict[str, dict[str, Any]]:
        """The last stored state of every server (``ServerState.to_dict()`` form)."""
        with self._reading("loading server states") as conn:
            rows = conn.execute(
                "SELECT server, json FROM server_state ORDER BY server"
            ).fetchall()
        states: dict[str, dict[str, Any]] = {}
        for server, text in rows:
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise JournalError(
                    f"the stored state of {server} is unreadable"
                ) from exc
            if not isinstance(value, dict):
                raise JournalError(f"the stored state of {server} is not an object")
            states[server] = value
        return states

    def last_state_update(self) -> datetime | None:
        """When a server's state was last stored (the age of what ``status`` shows)."""
        with self._reading("reading the newest state") as conn:
            row = conn.execute("SELECT MAX(updated_at) FROM server_state").fetchone()
        return None if row is None or row[0] is None else _at(int(row[0]))

    def events(
        self,
        *,
        server: str | None = None,
        type_glob: str | None = None,
        since: datetime | None = None,
    ) -> list[Event]:
        """Stored events in journal order, optionally filtered.

        Args:
            server: Only this server's events.
            type_glob: Only types matching this shell-style glob (case-sensitive).
            since: Only events that happened at or after this instant.
        """
        sql = "SELECT seq, time, json FROM events WHERE 1 = 1"
        params: list[Any] = []
        if server is not None:
            sql += " AND server = ?"
            params.append(server)
        if since is not None:
            sql += " AND time >= ?"
            params.append(_us(since))
        sql += " ORDER BY seq"
        with self._reading("reading events") as conn:
            rows = conn.execute(sql, params).fetchall()
        found = [_decode_event(seq, time, text) for seq, time, text in rows]
        if type_glob is None:
            return found
        return [e for e in found if fnmatchcase(str(e.type), type_glob)]

    # --- audit log --------------------------------------------------------------------

    def audit_position(self) -> AuditPosition | None:
        """The last line of the audit log as the journal remembers it (``meta``).

        ``verify_audit(..., expect_last_hash=position.hash)`` uses it to notice a
        changed or removed last line, which the chain alone cannot show. None
        before the first open that wrote the log.
        """
        with self._lock:
            if self._audit_position is not None:
                return self._audit_position
        with self._reading("reading the audit log position") as conn:
            return _stored_position(conn)

    def reopen_audit_log(self) -> None:
        """Reopen the audit log by its path (SIGHUP after logrotate moved it).

        The new file continues the chain from the last line written; events stored
        but not yet appended are appended. A no-op for a journal that does not own
        the audit log (read-only or unlocked).
        """
        with self._lock:
            self._check_open()
            if not self._owns_audit:
                return
            self._drop_audit_fd()
            self._catch_up_audit()

    def _drop_audit_fd(self) -> None:
        fd = self._audit_fd
        self._audit_fd = None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)

    def _audit_replaced(self) -> bool:
        """Whether the path no longer names our open file, or the file was truncated."""
        fd = self._audit_fd
        if fd is None:
            return True
        try:
            on_disk = os.stat(self.audit_log)
            ours = os.fstat(fd)
        except OSError:
            return True
        moved = (on_disk.st_dev, on_disk.st_ino) != (ours.st_dev, ours.st_ino)
        return moved or ours.st_size < self._audit_size

    def _append_new(self, new: Sequence[tuple[Event, int, str]]) -> None:
        position = self._audit_position
        if position is None:
            raise JournalError(
                "the audit log position is unknown", hint="this is a bug: report it"
            )
        lines: list[str] = []
        index, previous = position.index, position.hash
        for _, _, text in new:
            index += 1
            line = chain_line(text, index, previous)
            previous = line_hash(line.encode("utf-8"))
            lines.append(line + "\n")
        data = "".join(lines).encode("utf-8")
        self._append_audit(data)
        self._audit_size += len(data)
        self._set_position(AuditPosition(new[-1][1], index, previous))

    def _set_position(self, position: AuditPosition) -> None:
        """Remember the last line in memory and in ``meta`` (rotation while stopped)."""
        self._audit_position = position
        try:
            with self._writing("saving the audit log position") as conn:
                _save_position(conn, position)
        except JournalError as exc:
            # The line is written and memory is right; the next append saves again.
            log.warning(AUDIT_POSITION_UNSAVED, error=str(exc))

    def _append_audit(self, data: bytes) -> None:
        fd = self._audit_fd
        if fd is None:
            raise JournalError(
                "the audit log is not open", hint="this is a bug: report it"
            )
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            # Drop the descriptor: the next record (or open) repairs the tail and
            # appends whatever SQLite holds beyond it.
            self._drop_audit_fd()
            raise JournalError(
                f"appending to the audit log {self.audit_log} failed ({exc}); the "
                "events are stored and the log will catch up"
            ) from exc

    def _catch_up_audit(self, *, expected: int = 0) -> None:
        """Open the audit log, repair its tail and append what SQLite holds beyond it.

        A non-empty file is authoritative: the chain continues from its last line.
        An empty or missing one continues from the remembered position (logrotate
        moved the old file away), or from :data:`GENESIS_HASH` when the journal has
        never written a log (a new database, or one from before the chain), in which
        case the whole history is written. Writing more than the ``expected``
        events just recorded is logged as a warning.
        """
        path = self.audit_log
        with _translating(f"opening the audit log {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            fd = os.open(
                path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
        try:
            with _translating(f"reconciling the audit log {path}"):
                if created:
                    _fsync_dir(path.parent)
                start = self._tail_position(_repair_tail(fd, path))
                position = self._write_missing(fd, start, expected)
                if position != start.position:
                    os.fsync(fd)
                size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self._audit_fd = fd
        self._audit_size = size
        self._set_position(position)

    def _tail_position(self, tail: bytes | None) -> _Start:
        """Where the chain continues, given the file's last line (None: empty file)."""
        conn = self._conn
        if tail is None:
            known = self._audit_position or _stored_position(conn)
            if known is None:
                return _Start(AuditPosition(0, 0, GENESIS_HASH), rebuild=True)
            if known.seq > 0:
                log.info(
                    AUDIT_CONTINUED,
                    path=str(self.audit_log),
                    after_seq=known.seq,
                    prevhash=known.hash,
                )
            return _Start(known, rebuild=False)
        digest = line_hash(tail)
        last_id = _line_id(tail)
        index = _line_index(tail)
        row = conn.execute("SELECT seq FROM events WHERE id = ?", (last_id,)).fetchone()
        if row is None:
            # The log is ahead of (or foreign to) this database, e.g. the database
            # was deleted or restored from a backup: never guess, never duplicate.
            log.warning(AUDIT_UNKNOWN_TAIL, path=str(self.audit_log), last_id=last_id)
            (top,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            return _Start(AuditPosition(top, index, digest), rebuild=False)
        return _Start(AuditPosition(row[0], index, digest), rebuild=False)

    def _write_missing(self, fd: int, start: _Start, expected: int) -> AuditPosition:
        """Append every stored event after ``start``; return the new last line."""
        conn = self._conn
        last_seq, index, previous = (
            start.position.seq,
            start.position.index,
            start.position.hash,
        )
        written = 0
        batch: list[str] = []
        size = 0
        for seq, text in conn.execute(
            "SELECT seq, json FROM events WHERE seq > ? ORDER BY seq",
            (start.position.seq,),
        ):
            last_seq = seq
            index += 1
            line = chain_line(text, index, previous)
            previous = line_hash(line.encode("utf-8"))
            batch.append(line + "\n")
            size += len(line) + 1
            written += 1
            if size >= _CATCH_UP_BATCH:
                _write_all(fd, "".join(batch).encode("utf-8"))
                batch, size = [], 0
        if batch:
            _write_all(fd, "".join(batch).encode("utf-8"))
        if written > expected:
            name = AUDIT_REBUILT if start.rebuild else AUDIT_CAUGHT_UP
            log.warning(name, path=str(self.audit_log), events=written)
        return AuditPosition(last_seq, index, previous)


@dataclass(frozen=True, slots=True)
class _Start:
    """Where appending to an audit log continues from."""

    position: AuditPosition
    #: The file is empty and the journal never wrote a log: the whole history goes in.
    rebuild: bool


# --- the audit chain ----------------------------------------------------------------


def line_hash(line: bytes) -> str:
    """The SHA-256 (hex) of one audit line's bytes, without its newline."""
    return hashlib.sha256(line).hexdigest()


def chain_line(event_json: str, index: int, prevhash: str) -> str:
    """The audit line of an event: its JSON plus ``auditseq`` and ``prevhash``.

    ``index`` (``auditseq``) counts the log's lines from 1 across rotations; a gap
    or step back in it tells a removed or reordered line from a changed one.

    Spliced rather than re-serialised so the line is the stored JSON byte for byte,
    with the two extension attributes after ``data``.
    """
    if not event_json.endswith("}"):
        raise ValueError("an event's JSON must be an object")
    return f'{event_json[:-1]},"{AUDITSEQ_KEY}":{index},"{PREVHASH_KEY}":"{prevhash}"}}'


# --- helpers ------------------------------------------------------------------------


@contextmanager
def _translating(action: str) -> Iterator[None]:
    """Turn ``sqlite3.Error`` / ``OSError`` into :class:`JournalError` (once, here)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise JournalError(f"{action}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise JournalError(f"{action}: {exc}") from exc


def _now() -> datetime:
    return datetime.now(UTC)


def _us(at: datetime) -> int:
    """Integer microseconds since the Unix epoch of an aware datetime."""
    if at.tzinfo is None:
        raise ValueError("journal times must be timezone-aware")
    return (at - _EPOCH) // _MICROSECOND


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _decode_event(seq: int, time: int, text: str) -> Event:
    try:
        event = Event.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise JournalError(f"stored event #{seq} is unreadable") from exc
    # The JSON carries milliseconds; the column keeps the exact instant.
    return dataclasses.replace(event, time=_at(time))


def _silence(row: Sequence[Any]) -> Silence:
    silence_id, glob, until, reason, created, removed_at, removed_by = row
    return Silence(
        id=silence_id,
        server_glob=glob,
        until=_at(until),
        reason=reason,
        created_at=_at(created),
        removed_at=None if removed_at is None else _at(removed_at),
        removed_by=removed_by,
    )


def _active_silences(conn: sqlite3.Connection, at: datetime) -> list[Silence]:
    return [_silence(row) for row in conn.execute(_ACTIVE_SILENCES, (_us(at),))]


def _stored_position(conn: sqlite3.Connection) -> AuditPosition | None:
    rows = dict(
        conn.execute(
            "SELECT key, value FROM meta WHERE key IN "
            "('audit_last_seq', 'audit_last_index', 'audit_last_hash')"
        ).fetchall()
    )
    seq, index = rows.get("audit_last_seq"), rows.get("audit_last_index")
    digest = rows.get("audit_last_hash")
    if seq is None or index is None or digest is None:
        return None
    return AuditPosition(int(seq), int(index), digest)


def _save_position(conn: sqlite3.Connection, position: AuditPosition) -> None:
    conn.execute(_SAVE_META, ("audit_last_seq", str(position.seq)))
    conn.execute(_SAVE_META, ("audit_last_index", str(position.index)))
    conn.execute(_SAVE_META, ("audit_last_hash", position.hash))


def _outbox_row(row: Sequence[Any]) -> OutboxRow:
    sink, status, attempts, first, next_at, error, delivered, dead, seq, time, text = (
        row
    )
    return OutboxRow(
        sink=sink,
        event=_decode_event(seq, time, text),
        attempts=attempts,
        first_attempt_at=None if first is None else _at(first),
        next_attempt_at=_at(next_at),
        last_error=error,
        status=OutboxStatus(status),
        delivered_at=None if delivered is None else _at(delivered),
        dead_at=None if dead is None else _at(dead),
        seq=seq,
    )


def _connect(path: Path) -> sqlite3.Connection:
    with _translating(f"opening the state database {path}"):
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            _configure(conn, path)
        except BaseException:
            conn.close()
            raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(
            f"{path} could not be switched to WAL mode (it is in {mode} mode)",
            hint="is state_dir on a network file system? use a local disk",
        )
    # See the module docstring: the database must be as durable as the audit log.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise JournalError(
            f"no state database at {path}",
            hint="check state_dir; the daemon creates it on its first run",
        )
    uri = path.resolve().as_uri() + "?mode=ro"
    with _translating(f"opening the state database {path} read-only"):
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA query_only = ON")
    return conn


def _stored_version(conn: sqlite3.Connection, path: Path) -> int | None:
    """The database's schema version; None for an empty database."""
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    if "meta" not in tables:
        if tables - {"sqlite_sequence"}:
            raise JournalError(
                f"{path} is not an sklm-watcher state database",
                hint="point state_dir at a directory of its own",
            )
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0])
    except (TypeError, ValueError) as exc:
        raise JournalError(
            f"{path} has no readable schema version",
            hint="point state_dir at a directory of its own",
        ) from exc


def _too_new(path: Path, version: int) -> JournalError:
    return JournalError(
        f"{path} has schema version {version}, newer than this sklm-watcher "
        f"understands ({SCHEMA_VERSION})",
        hint="run the sklm-watcher release that wrote it, or a newer one",
    )


def _prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty database, migrate an older one, refuse a newer."""
    with _translating(f"preparing the state database {path}"):
        conn.execute("BEGIN IMMEDIATE")
        try:
            _create_or_migrate(conn, path)
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


def _create_or_migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = _stored_version(conn, path)
    if version is None:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        return
    if version > SCHEMA_VERSION:
        raise _too_new(path, version)
    if version == SCHEMA_VERSION:
        return
    for step in range(version, SCHEMA_VERSION):
        migrate = _MIGRATIONS.get(step)
        if migrate is None:
            raise JournalError(
                f"{path} has schema version {version} and there is no migration "
                f"from version {step}",
                hint="upgrade through an intermediate sklm-watcher release",
            )
        migrate(conn)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
        (str(SCHEMA_VERSION),),
    )
    log.info(SCHEMA_MIGRATED, path=str(path), old=version, new=SCHEMA_VERSION)


def _check_schema_read_only(conn: sqlite3.Connection, path: Path) -> None:
    with _translating(f"reading the state database {path}"):
        version = _stored_version(conn, path)
    if version is None:
        raise JournalError(
            f"{path} holds no journal yet",
            hint="the daemon creates it on its first run",
        )
    if version > SCHEMA_VERSION:
        raise _too_new(path, version)
    if version == _READABLE_AS_CURRENT:
        # Right after an upgrade the running daemon may still be the old one: the
        # views must not go blind until it restarts. Version 3 only added the
        # removal columns, which :meth:`Journal.silences` reads as NULL there.
        return
    if version < SCHEMA_VERSION:
        raise JournalError(
            f"{path} has schema version {version}, older than {SCHEMA_VERSION}",
            hint="start the daemon once to migrate it",
        )


#: The older schema version the read-only views still read (see above).
_READABLE_AS_CURRENT: Final = 2


def _silences_sql(conn: sqlite3.Connection, include_expired: bool) -> str:
    """The listing query; a version-2 database (read-only) has no removal columns."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(silences)")}
    if "removed_at" in columns:
        return _ALL_SILENCES if include_expired else _ACTIVE_SILENCES
    return _ALL_SILENCES_V2 if include_expired else _ACTIVE_SILENCES_V2


def _take_lock(state_dir: Path) -> int:
    """Lock ``state_dir/lock`` exclusively and write our pid in it; return the fd."""
    path = state_dir / LOCK_NAME
    with _translating(f"opening the lock file {path}"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            raise JournalError(
                f"state_dir {state_dir} is in use by another sklm-watcher "
                f"(pid {holder or 'unknown'})",
                hint="stop that process first, or give this one its own state_dir",
            ) from None
        with _translating(f"writing the lock file {path}"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    """Make a newly created file's directory entry durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_line(fd: int, end: int) -> tuple[int, bytes, bool]:
    """Find the last line of the first ``end`` bytes, reading backwards from the end.

    Returns:
        ``(start, line, terminated)``: its offset, its bytes without the newline, and
        whether it ends with one.
    """
    terminated = os.pread(fd, 1, end - 1) == b"\n"
    pos = end - 1 if terminated else end
    chunks: list[bytes] = []
    start = 0
    while pos > 0:
        size = min(TAIL_CHUNK, pos)
        pos -= size
        chunk = os.pread(fd, size, pos)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            chunks.append(chunk[newline + 1 :])
            start = pos + newline + 1
            break
        chunks.append(chunk)
    return start, b"".join(reversed(chunks)), terminated


def _line_id(line: bytes) -> str | None:
    """The event id of one audit line, or None when it is not a whole event."""
    try:
        obj = json.loads(line)
    except ValueError:  # incl. UnicodeDecodeError and JSONDecodeError
        return None
    event_id = obj.get("id") if isinstance(obj, dict) else None
    return event_id if isinstance(event_id, str) else None


def _line_index(line: bytes) -> int:
    """The ``auditseq`` of one audit line; 0 for a line from before the chain."""
    try:
        obj = json.loads(line)
    except ValueError:
        return 0
    index = obj.get(AUDITSEQ_KEY) if isinstance(obj, dict) else None
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def _repair_tail(fd: int, path: Path) -> bytes | None:
    """Drop a torn last line and return the last event line's bytes (None: empty).

    Only the last line can be torn by a crash (the journal appends whole lines, then
    fsyncs), so at most one line is dropped; anything worse is refused rather than
    truncated, in case ``audit_log`` names someone else's file.
    """
    end = os.fstat(fd).st_size
    if end == 0:
        return None
    start, line, terminated = _last_line(fd, end)
    if _line_id(line) is not None:
        if not terminated:
            # Whole JSON, only the newline is missing: keep the event, end the line.
            _write_all(fd, b"\n")
        return line
    previous_line = None
    if start > 0:
        previous_start, previous, _ = _last_line(fd, start)
        previous_line = previous
        if _line_id(previous) is None:
            raise JournalError(
                f"the audit log {path} does not end with an event "
                f"(lines at bytes {previous_start} and {start})",
                hint="check that audit_log names sklm-watcher's own file; move it "
                "aside to have it rebuilt from the state database",
            )
    log.warning(AUDIT_TORN_LINE, path=str(path), offset=start, dropped=end - start)
    os.ftruncate(fd, start)
    return previous_line
