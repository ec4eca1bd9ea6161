"""``SqliteStore``: the :class:`~watcher.store.base.Store` on one SQLite file plus the audit log.

SQLite (``state_dir/state.sqlite3``) is the source of truth; the JSON Lines audit log
(:mod:`watcher.audit`) is derived from it and reconciled whenever the daemon opens the
store (and after a failed append), so the two never disagree.

This class owns the connection, the transactions, the locks and the audit writer;
the SQL lives by concern in :mod:`.events`, :mod:`.outbox`, :mod:`.silences` and
:mod:`.schema`.

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

Silences:
    ``add_silence(server_glob, until, ...)`` stops delivery, not journaling: an event
    of a matching server recorded while a silence is active (``event.time < until``)
    gets its outbox rows written as ``suppressed``: visible, never due, never
    blocking. A silence ends by itself at ``until``, or when removed (the row is
    kept with ``removed_at`` / ``removed_by``, for ``silence list --all``).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import structlog

from watcher.audit import AUDIT_REOPENED, AuditPosition, AuditWriter
from watcher.clock import Clock, SystemClock
from watcher.config import SinkConfig
from watcher.errors import JournalError
from watcher.events import Event
from watcher.store.base import (
    EVENTS_SINCE_LIMIT,
    PRUNE_LIMIT,
    AuditLine,
    OutboxRow,
    OutboxSummary,
    Silence,
)
from watcher.store.sqlite import events as events_sql
from watcher.store.sqlite import outbox, schema, silences
from watcher.store.sqlite.events import AuditFeed

log = structlog.get_logger(__name__)

T = TypeVar("T")

AUDIT_POSITION_UNSAVED: Final = "journal.audit_position_unsaved"


class SqliteStore:
    """The durable store: SQLite state, events and outbox, plus the JSONL audit log.

    Synchronous (SQLite blocks); async code goes through :meth:`call`, which runs a
    method in a worker thread under the store's ``CapacityLimiter(1)``. A lock
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
        clock: Clock,
    ) -> None:
        self._conn = conn
        self.state_dir = state_dir
        self.audit_log = audit_log
        self._sinks = tuple(sinks)
        self._writable = writable
        self._owns_audit = owns_audit
        self._lock_fd = lock_fd
        self._clock = clock
        self._audit = AuditWriter(audit_log)
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
        clock: Clock | None = None,
    ) -> SqliteStore:
        """Open (creating if needed) the store in ``state_dir``.

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
            clock: Where "now" comes from when a caller passes no instant (the
                states' ``updated_at``, the defaults of :meth:`reschedule`,
                :meth:`requeue`, :meth:`remove_silence`); the system clock if None.

        Raises:
            JournalError: The database cannot be opened, is not ours or has a newer
                schema version; another process holds the lock (its pid is named);
                the audit log cannot be repaired or written.
        """
        clock = SystemClock() if clock is None else clock
        db_path = state_dir / schema.DB_NAME
        if read_only:
            conn = schema.connect_read_only(db_path)
            try:
                schema.check_schema_read_only(conn, db_path)
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
                clock=clock,
            )
        with schema.translating(f"creating state_dir {state_dir}"):
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = schema.take_lock(state_dir) if lock else None
        try:
            conn = schema.connect(db_path)
            store = cls(
                conn,
                state_dir=state_dir,
                audit_log=audit_log,
                sinks=sinks,
                writable=True,
                owns_audit=lock,
                lock_fd=lock_fd,
                clock=clock,
            )
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        try:
            schema.prepare_schema(conn, db_path)
            if lock:
                store._catch_up_audit()
        except BaseException:
            store.close()
            raise
        return store

    # --- plumbing ---------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (a method of this store) in a worker thread, one at a time."""
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
            self._audit.close()
            if self._lock_fd is not None:
                with suppress(OSError):
                    os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SqliteStore:
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

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, schema.translating(action):
            self._check_open()
            yield self._conn

    @contextmanager
    def _writing(self, action: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any exception)."""
        with self._lock, schema.translating(action):
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
        # Held across commit and append, so the log's order is the store's order.
        with self._lock:
            with self._writing(f"recording events of {server}") as conn:
                new = events_sql.store_transition(
                    conn, server, state_json, events, self._sinks, self._clock.now()
                )
            if new:
                if self._audit.is_open and self._audit.replaced():
                    log.info(AUDIT_REOPENED, path=str(self.audit_log))
                    self._audit.close()
                if not self._audit.is_open:
                    # A previous append failed or the file was rotated: this
                    # catch-up includes the new events.
                    self._catch_up_audit(expected=len(new))
                else:
                    position = self._audit.append([(seq, text) for _, seq, text in new])
                    self._save_position(position)
        return [event for event, _, _ in new]

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
        ``suppressed``. Works on a store opened with ``lock=False`` (the CLI,
        while the daemon runs).

        Args:
            server_glob: Shell-style glob on server names (``*`` for every server).
            until: When the silence ends by itself (aware).
            reason: Shown by ``silence list`` and kept on each suppressed row.
            at: Now (``created_at``).

        Returns:
            The silence's id (for :meth:`remove_silence`).
        """
        with self._writing("adding a silence") as conn:
            return silences.add(conn, server_glob, until, reason, at)

    def silences(
        self, now: datetime, *, include_expired: bool = False
    ) -> list[Silence]:
        """The silences active at ``now``, by id.

        With ``include_expired``, every silence ever added: expired and removed ones
        too (a removed one has ``removed_at`` / ``removed_by``).
        """
        with self._reading("reading silences") as conn:
            return silences.listing(conn, now, include_expired=include_expired)

    def remove_silence(
        self, silence_id: int, at: datetime | None = None, by: str | None = None
    ) -> bool:
        """End a silence now; returns whether it existed and was not removed yet.

        The row is kept (``silence list --all`` shows it) with ``removed_at`` and
        ``removed_by``, so who lifted a silence during an incident stays known.

        Args:
            silence_id: The silence's id.
            at: Now (the store's clock when None).
            by: Who removed it (the CLI passes the operator's user name).
        """
        when = self._clock.now() if at is None else at
        with self._writing("removing a silence") as conn:
            return silences.remove(conn, silence_id, when, by)

    # --- outbox -----------------------------------------------------------------------

    def next_due(self, sink: str, now: datetime) -> OutboxRow | None:
        """The row ``sink`` should deliver next, or None if nothing is due at ``now``.

        Only each server's oldest pending row is a candidate (a retrying row holds
        back later events of its server, not of other servers); among the candidates
        due at or before ``now``, the one recorded first.
        """
        with self._reading(f"reading the outbox of {sink}") as conn:
            return outbox.next_due(conn, sink, now)

    def next_due_at(self, sink: str) -> datetime | None:
        """When the next row of ``sink`` falls due (None: nothing pending)."""
        with self._reading(f"reading the outbox of {sink}") as conn:
            return outbox.next_due_at(conn, sink)

    def mark_delivered(self, sink: str, event_id: str, at: datetime) -> None:
        """Record a successful delivery (counts as one attempt)."""
        with self._writing("marking a delivery") as conn:
            outbox.mark_delivered(conn, sink, event_id, at)

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
            sink: The sink's name.
            event_id: The event's id.
            attempts: Attempts made so far, this one included.
            next_attempt_at: When the row falls due again.
            error: Why it failed (no secrets: shown by the CLI).
            at: When this attempt was made (``first_attempt_at`` if it was the
                first); the store's clock if not given.
        """
        when = at or self._clock.now()
        with self._writing("rescheduling a delivery") as conn:
            outbox.reschedule(
                conn,
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
        with self._writing("dead-lettering a delivery") as conn:
            outbox.dead_letter(conn, sink, event_id, error=error, at=at)

    def suppress(self, sink: str, event_id: str, *, reason: str) -> bool:
        """Decide not to deliver a pending row; returns whether one was pending."""
        with self._writing("suppressing a delivery") as conn:
            return outbox.suppress(conn, sink, event_id, reason)

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
        now = at or self._clock.now()
        with self._writing("requeueing dead deliveries") as conn:
            return outbox.requeue(conn, sink, event_id, now)

    def outbox_summary(self, now: datetime) -> list[OutboxSummary]:
        """Pending and dead counts and the oldest pending age, per configured sink."""
        with self._reading("summarising the outbox") as conn:
            return outbox.summary(conn, self._sinks, now)

    def prune_outbox(self, before: datetime, *, limit: int = PRUNE_LIMIT) -> int:
        """Delete up to ``limit`` delivered or suppressed rows older than ``before``.

        Delivered rows by their delivery time, suppressed ones by their event's
        time; pending and dead rows are never pruned. Returns how many went. The
        limit keeps one transaction (and the store's lock) short; call again
        while it returns ``limit``.
        """
        with self._writing("pruning the outbox") as conn:
            return outbox.prune(conn, before, limit)

    def dead_rows(self, sink: str | None = None) -> list[OutboxRow]:
        """Every dead-lettered row (of one sink, if given), oldest event first."""
        with self._reading("reading dead deliveries") as conn:
            return outbox.dead_rows(conn, sink)

    # --- history and state ------------------------------------------------------------

    def load_states(self) -> dict[str, dict[str, Any]]:
        """The last stored state of every server (``ServerState.to_dict()`` form)."""
        with self._reading("loading server states") as conn:
            return events_sql.load_states(conn)

    def last_state_update(self) -> datetime | None:
        """When a server's state was last stored (the age of what ``status`` shows)."""
        with self._reading("reading the newest state") as conn:
            return events_sql.last_state_update(conn)

    def events(
        self,
        *,
        server: str | None = None,
        type_glob: str | None = None,
        since: datetime | None = None,
    ) -> list[Event]:
        """Stored events in store order, optionally filtered.

        Args:
            server: Only this server's events.
            type_glob: Only types matching this shell-style glob (case-sensitive).
            since: Only events that happened at or after this instant.
        """
        with self._reading("reading events") as conn:
            return events_sql.select(
                conn, server=server, type_glob=type_glob, since=since
            )

    def events_since(
        self, auditseq: int, limit: int = EVENTS_SINCE_LIMIT
    ) -> list[AuditLine]:
        """The audit lines after ``auditseq``, oldest first, at most ``limit``.

        Each is the audit log's line byte for byte (with ``auditseq`` and
        ``prevhash``). Events stored before the schema remembered their lines
        (version 4) are not included.
        """
        with self._reading("reading audit lines") as conn:
            return events_sql.lines_since(conn, auditseq, limit)

    # --- audit log --------------------------------------------------------------------

    def audit_position(self) -> AuditPosition | None:
        """The last line of the audit log as the store remembers it (``meta``).

        ``verify_audit(..., expect_last_hash=position.hash)`` uses it to notice a
        changed or removed last line, which the chain alone cannot show. None
        before the first open that wrote the log.
        """
        with self._lock:
            if self._audit.position is not None:
                return self._audit.position
        with self._reading("reading the audit log position") as conn:
            return events_sql.stored_position(conn)

    def reopen_audit_log(self) -> None:
        """Reopen the audit log by its path (SIGHUP after logrotate moved it).

        The new file continues the chain from the last line written; events stored
        but not yet appended are appended. A no-op for a store that does not own
        the audit log (read-only or unlocked).
        """
        with self._lock:
            self._check_open()
            if not self._owns_audit:
                return
            self._audit.close()
            self._catch_up_audit()

    def _catch_up_audit(self, *, expected: int = 0) -> None:
        """Reconcile the audit file with the database (see :meth:`AuditWriter.catch_up`)."""
        with schema.translating(f"reconciling the audit log {self.audit_log}"):
            known = self._audit.position or events_sql.stored_position(self._conn)
            position = self._audit.catch_up(
                AuditFeed(self._conn), known, expected=expected
            )
        self._save_position(position)

    def _save_position(self, position: AuditPosition) -> None:
        """Remember the last line in ``meta`` too (rotation while stopped).

        With it, each line just written (``events_since`` replays them).
        """
        written, self._audit.written = self._audit.written, []
        try:
            with self._writing("saving the audit log position") as conn:
                events_sql.save_position(conn, position)
                events_sql.save_lines(conn, written)
        except JournalError as exc:
            # The line is written and memory is right; the next append saves again
            # (the lines' numbers too: they go back to be taken with the next).
            self._audit.written[:0] = written
            log.warning(AUDIT_POSITION_UNSAVED, error=str(exc))
