"""The outbox in SQLite: per-server heads falling due, delivery results, backlog, pruning.

Each (sink, event) has one row. Only a server's oldest pending row is a candidate,
so one server's events reach a sink in order while other servers' go on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from watcher.config import SinkConfig
from watcher.errors import JournalError
from watcher.store.base import OutboxRow, OutboxStatus, OutboxSummary
from watcher.store.sqlite.events import decode
from watcher.store.sqlite.schema import from_us, to_us

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


def next_due(conn: sqlite3.Connection, sink: str, now: datetime) -> OutboxRow | None:
    """The row ``sink`` should deliver next, or None if nothing is due at ``now``."""
    row = conn.execute(_NEXT_DUE, {"sink": sink, "now": to_us(now)}).fetchone()
    return None if row is None else _outbox_row(row)


def next_due_at(conn: sqlite3.Connection, sink: str) -> datetime | None:
    """When the next row of ``sink`` falls due (None: nothing pending)."""
    (value,) = conn.execute(_NEXT_DUE_AT, {"sink": sink}).fetchone()
    return None if value is None else from_us(value)


def mark_delivered(
    conn: sqlite3.Connection, sink: str, event_id: str, at: datetime
) -> None:
    """Record a successful delivery made ``at`` (counts as one attempt)."""
    params = {"sink": sink, "event_id": event_id, "at": to_us(at)}
    _update_row(conn, _MARK_DELIVERED, params, "marking a delivery")


def reschedule(
    conn: sqlite3.Connection,
    sink: str,
    event_id: str,
    *,
    attempts: int,
    next_attempt_at: datetime,
    error: str,
    at: datetime,
) -> None:
    """Record a failed attempt made ``at`` and when the row falls due again."""
    params = {
        "sink": sink,
        "event_id": event_id,
        "attempts": attempts,
        "next_attempt_at": to_us(next_attempt_at),
        "error": error,
        "at": to_us(at),
    }
    _update_row(conn, _RESCHEDULE, params, "rescheduling a delivery")


def dead_letter(
    conn: sqlite3.Connection, sink: str, event_id: str, *, error: str, at: datetime
) -> None:
    """Give up on a row ``at``: it stays visible as ``dead`` until requeued."""
    params = {"sink": sink, "event_id": event_id, "error": error, "at": to_us(at)}
    _update_row(conn, _DEAD_LETTER, params, "dead-lettering a delivery")


def suppress(conn: sqlite3.Connection, sink: str, event_id: str, reason: str) -> bool:
    """Mark a pending row not to be delivered; whether one was pending."""
    params = {"sink": sink, "event_id": event_id, "reason": reason}
    return conn.execute(_SUPPRESS, params).rowcount > 0


def requeue(
    conn: sqlite3.Connection, sink: str | None, event_id: str | None, now: datetime
) -> int:
    """Put the selected dead rows back, due ``now``; return how many."""
    params = {"sink": sink, "event_id": event_id, "now": to_us(now)}
    return conn.execute(_REQUEUE, params).rowcount


def summary(
    conn: sqlite3.Connection, sinks: Sequence[SinkConfig], now: datetime
) -> list[OutboxSummary]:
    """Pending and dead counts and the oldest pending age, per configured sink."""
    summaries = []
    now_us = to_us(now)
    for sink in sinks:
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


def prune(conn: sqlite3.Connection, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` delivered or suppressed rows older than ``before``."""
    params = {"before": to_us(before), "limit": limit}
    return conn.execute(_PRUNE, params).rowcount


def dead_rows(conn: sqlite3.Connection, sink: str | None) -> list[OutboxRow]:
    """Every dead-lettered row (of one sink, if given), oldest event first."""
    rows = conn.execute(_DEAD_ROWS, {"sink": sink}).fetchall()
    return [_outbox_row(row) for row in rows]


def _update_row(
    conn: sqlite3.Connection, sql: str, params: dict[str, Any], action: str
) -> None:
    if conn.execute(sql, params).rowcount == 0:
        raise JournalError(
            f"{action}: no outbox row for sink {params['sink']} "
            f"and event {params['event_id']}",
            hint="this is a bug: report it",
        )


def _outbox_row(row: Sequence[Any]) -> OutboxRow:
    sink, status, attempts, first, next_at, error, delivered, dead, seq, time, text = (
        row
    )
    return OutboxRow(
        sink=sink,
        event=decode(seq, time, text),
        attempts=attempts,
        first_attempt_at=None if first is None else from_us(first),
        next_attempt_at=from_us(next_at),
        last_error=error,
        status=OutboxStatus(status),
        delivered_at=None if delivered is None else from_us(delivered),
        dead_at=None if dead is None else from_us(dead),
        seq=seq,
    )
