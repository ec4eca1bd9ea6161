"""The outbox in PostgreSQL: per-server heads falling due, results, backlog, sink leases.

Each (sink, event) has one row; only a server's oldest pending row is a candidate,
so one server's events reach a sink in order while other servers' go on (as in
SQLite). In a cluster each sink is delivered by one node at a time: the one holding
its *sink lease* (``sink_leases``), renewed or taken by every :func:`next_due` of
that node, with the same epoch rules as a server's lease. A node that dies
mid-delivery leaves its lease to expire; the next holder sends the same row again
(same event id, the receiver's idempotency key).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg

from watcher.config import SinkConfig
from watcher.errors import JournalError
from watcher.store.base import OutboxRow, OutboxStatus, OutboxSummary
from watcher.store.postgres.events import decode
from watcher.store.postgres.schema import from_us, to_us

Cursor = psycopg.Cursor[Any]

# Renew ours, or take it when expired (or when it is ours by name but another
# process's: epoch bumped). Returns nothing when another node holds it.
_CLAIM_SINK: Final = """
    INSERT INTO sink_leases (sink, node, epoch, expires_at)
    VALUES (%(sink)s, %(node)s, 1, now() + %(lease)s)
    ON CONFLICT (sink) DO UPDATE SET node = excluded.node,
        epoch = CASE WHEN sink_leases.node = excluded.node
                          AND sink_leases.epoch = %(epoch)s
                     THEN sink_leases.epoch ELSE sink_leases.epoch + 1 END,
        expires_at = excluded.expires_at
    WHERE sink_leases.node = excluded.node OR sink_leases.expires_at < now()
    RETURNING epoch
"""
_SINK_HOLDER: Final = """
    SELECT node, epoch, expires_at > now() FROM sink_leases WHERE sink = %s FOR SHARE
"""
# The head of each server's queue is its oldest pending row. Later rows of the same
# server wait behind it even when due, so one server's events arrive in order.
_NEXT_DUE: Final = """
    WITH heads AS (
        SELECT MIN(seq) AS seq FROM outbox
        WHERE sink = %(sink)s AND status = 'pending'
        GROUP BY server
    )
    SELECT o.sink, o.status, o.attempts, o.first_attempt_at, o.next_attempt_at,
        o.last_error, o.delivered_at, o.dead_at, o.seq, e.time, e.json
    FROM heads
    JOIN outbox o ON o.sink = %(sink)s AND o.seq = heads.seq
    JOIN events e ON e.seq = o.seq
    WHERE o.next_attempt_at <= %(now)s
    ORDER BY o.seq
    LIMIT 1
"""
_NEXT_DUE_AT: Final = """
    WITH heads AS (
        SELECT MIN(seq) AS seq FROM outbox
        WHERE sink = %(sink)s AND status = 'pending'
        GROUP BY server
    )
    SELECT MIN(o.next_attempt_at)
    FROM heads JOIN outbox o ON o.sink = %(sink)s AND o.seq = heads.seq
"""
_MARK_DELIVERED: Final = """
    UPDATE outbox SET status = 'delivered', attempts = attempts + 1,
        first_attempt_at = COALESCE(first_attempt_at, %(at)s), delivered_at = %(at)s
    WHERE sink = %(sink)s AND event_id = %(event_id)s
"""
_RESCHEDULE: Final = """
    UPDATE outbox SET status = 'pending', attempts = %(attempts)s,
        first_attempt_at = COALESCE(first_attempt_at, %(at)s),
        next_attempt_at = %(next_attempt_at)s, last_error = %(error)s
    WHERE sink = %(sink)s AND event_id = %(event_id)s
"""
_DEAD_LETTER: Final = """
    UPDATE outbox SET status = 'dead', attempts = attempts + 1,
        first_attempt_at = COALESCE(first_attempt_at, %(at)s),
        last_error = %(error)s, dead_at = %(at)s
    WHERE sink = %(sink)s AND event_id = %(event_id)s
"""
_SUPPRESS: Final = """
    UPDATE outbox SET status = 'suppressed', last_error = %(reason)s
    WHERE sink = %(sink)s AND event_id = %(event_id)s AND status = 'pending'
"""
_REQUEUE: Final = """
    UPDATE outbox SET status = 'pending', attempts = 0, first_attempt_at = NULL,
        next_attempt_at = %(now)s, dead_at = NULL
    WHERE status = 'dead'
        AND (%(sink)s::text IS NULL OR sink = %(sink)s)
        AND (%(event_id)s::text IS NULL OR event_id = %(event_id)s)
"""
_COUNTS: Final = """
    SELECT status, COUNT(*) FROM outbox
    WHERE sink = %s AND status IN ('pending', 'dead')
    GROUP BY status
"""
_OLDEST_PENDING: Final = """
    SELECT MIN(e.time) FROM outbox o JOIN events e ON e.seq = o.seq
    WHERE o.sink = %s AND o.status = 'pending'
"""
_PRUNE: Final = """
    DELETE FROM outbox WHERE ctid IN (
        SELECT o.ctid FROM outbox AS o JOIN events AS e ON e.seq = o.seq
        WHERE (o.status = 'delivered' AND o.delivered_at < %(before)s)
           OR (o.status = 'suppressed' AND e.time < %(before)s)
        LIMIT %(limit)s)
"""
_DEAD_ROWS: Final = """
    SELECT o.sink, o.status, o.attempts, o.first_attempt_at, o.next_attempt_at,
        o.last_error, o.delivered_at, o.dead_at, o.seq, e.time, e.json
    FROM outbox o JOIN events e ON e.seq = o.seq
    WHERE o.status = 'dead' AND (%(sink)s::text IS NULL OR o.sink = %(sink)s)
    ORDER BY o.seq, o.sink
"""


def claim_sink(
    cur: Cursor, sink: str, node: str, epoch: int | None, lease: float
) -> int | None:
    """Renew or take the sink's lease for ``node``; its epoch, or None (another holds it)."""
    cur.execute(
        _CLAIM_SINK,
        {
            "sink": sink,
            "node": node,
            "epoch": -1 if epoch is None else epoch,
            "lease": timedelta(seconds=lease),
        },
    )
    row = cur.fetchone()
    return None if row is None else int(row[0])


def may_write(cur: Cursor, sink: str, node: str, epoch: int | None) -> bool:
    """Whether ``node`` may record a result for ``sink`` (its row locked FOR SHARE).

    No: the lease moved on since this node took it (under ``epoch``), or, holding
    none, another node holds it now. Yes otherwise (nobody holds it: the CLI-like
    first write of a node that never claimed).
    """
    cur.execute(_SINK_HOLDER, (sink,))
    row = cur.fetchone()
    if row is None:
        return epoch is None
    holder, held_epoch, unexpired = row
    if epoch is not None:
        return bool(holder == node and int(held_epoch) == epoch)
    return holder == node or not unexpired


def next_due(cur: Cursor, sink: str, now: datetime) -> OutboxRow | None:
    """The row ``sink`` should deliver next, or None if nothing is due at ``now``."""
    cur.execute(_NEXT_DUE, {"sink": sink, "now": to_us(now)})
    row = cur.fetchone()
    return None if row is None else _outbox_row(row)


def next_due_at(cur: Cursor, sink: str) -> datetime | None:
    """When the next row of ``sink`` falls due (None: nothing pending)."""
    cur.execute(_NEXT_DUE_AT, {"sink": sink})
    row = cur.fetchone()
    return None if row is None or row[0] is None else from_us(int(row[0]))


def mark_delivered(cur: Cursor, sink: str, event_id: str, at: datetime) -> None:
    """Record a successful delivery made ``at`` (counts as one attempt)."""
    params = {"sink": sink, "event_id": event_id, "at": to_us(at)}
    _update_row(cur, _MARK_DELIVERED, params, "marking a delivery")


def reschedule(
    cur: Cursor,
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
    _update_row(cur, _RESCHEDULE, params, "rescheduling a delivery")


def dead_letter(
    cur: Cursor, sink: str, event_id: str, *, error: str, at: datetime
) -> None:
    """Give up on a row ``at``: it stays visible as ``dead`` until requeued."""
    params = {"sink": sink, "event_id": event_id, "error": error, "at": to_us(at)}
    _update_row(cur, _DEAD_LETTER, params, "dead-lettering a delivery")


def suppress(cur: Cursor, sink: str, event_id: str, reason: str) -> bool:
    """Mark a pending row not to be delivered; whether one was pending."""
    cur.execute(_SUPPRESS, {"sink": sink, "event_id": event_id, "reason": reason})
    return cur.rowcount > 0


def requeue(cur: Cursor, sink: str | None, event_id: str | None, now: datetime) -> int:
    """Put the selected dead rows back, due ``now``; return how many."""
    cur.execute(_REQUEUE, {"sink": sink, "event_id": event_id, "now": to_us(now)})
    return cur.rowcount


def summary(
    cur: Cursor, sinks: Sequence[SinkConfig], now: datetime
) -> list[OutboxSummary]:
    """Pending and dead counts and the oldest pending age, per configured sink."""
    summaries = []
    now_us = to_us(now)
    for sink in sinks:
        cur.execute(_COUNTS, (sink.name,))
        counts = {status: int(n) for status, n in cur.fetchall()}
        cur.execute(_OLDEST_PENDING, (sink.name,))
        row = cur.fetchone()
        oldest = None if row is None else row[0]
        age = None if oldest is None else max(0, now_us - int(oldest)) / 1e6
        summaries.append(
            OutboxSummary(
                sink=sink.name,
                pending=counts.get(OutboxStatus.PENDING.value, 0),
                dead=counts.get(OutboxStatus.DEAD.value, 0),
                oldest_pending_age=age,
            )
        )
    return summaries


def prune(cur: Cursor, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` delivered or suppressed rows older than ``before``."""
    cur.execute(_PRUNE, {"before": to_us(before), "limit": limit})
    return cur.rowcount


def dead_rows(cur: Cursor, sink: str | None) -> list[OutboxRow]:
    """Every dead-lettered row (of one sink, if given), oldest event first."""
    cur.execute(_DEAD_ROWS, {"sink": sink})
    return [_outbox_row(row) for row in cur.fetchall()]


def _update_row(cur: Cursor, sql: str, params: dict[str, Any], action: str) -> None:
    cur.execute(sql, params)
    if cur.rowcount == 0:
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
        attempts=int(attempts),
        first_attempt_at=None if first is None else from_us(int(first)),
        next_attempt_at=from_us(int(next_at)),
        last_error=error,
        status=OutboxStatus(status),
        delivered_at=None if delivered is None else from_us(int(delivered)),
        dead_at=None if dead is None else from_us(int(dead)),
        seq=int(seq),
    )
