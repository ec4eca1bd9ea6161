"""Events and server states in PostgreSQL: one fenced transition, the audit chain, history.

A transition's events, their outbox rows, the server's state and the events' audit
lines go in one transaction (:func:`store_transition`), after the fencing check
(:func:`check_lease`) in that same transaction: a node whose lease was taken over
writes nothing.

The audit chain is one for the cluster: the ``audit_head`` row, locked ``FOR
UPDATE`` by each appending transaction until it commits, serialises the appends, so
``auditseq`` has no gaps and follows commit order (a reader that sees line n sees
every line before it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Final

import psycopg

from watcher.audit import AuditPosition, chain_line, line_hash
from watcher.config import SinkConfig
from watcher.errors import JournalError, LeaseLost
from watcher.events import Event
from watcher.store.base import (
    AuditLine,
    Silence,
    outbox_status,
    wanted_sinks,
)
from watcher.store.postgres import silences
from watcher.store.postgres.schema import from_us, to_us

Cursor = psycopg.Cursor[Any]

# FOR SHARE: a takeover's UPDATE of this row waits until this transaction ends, and
# a takeover that committed first leaves no row with our epoch (READ COMMITTED
# re-reads the row it waited for), so exactly one of the two goes first.
_CHECK_LEASE: Final = """
    SELECT epoch FROM leases WHERE server = %s AND node = %s AND epoch = %s FOR SHARE
"""
_INSERT_EVENT: Final = """
    INSERT INTO events (id, server, type, time, restore_id, json)
    VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (id) DO NOTHING
    RETURNING seq
"""
_UPSERT_STATE: Final = """
    INSERT INTO server_state (server, json, updated_at, node) VALUES (%s, %s, %s, %s)
    ON CONFLICT (server) DO UPDATE SET json = excluded.json,
        updated_at = excluded.updated_at, node = excluded.node
"""
_INSERT_OUTBOX: Final = """
    INSERT INTO outbox (sink, event_id, server, seq, status, attempts, next_attempt_at,
        last_error)
    VALUES (%s, %s, %s, %s, %s, 0, %s, %s)
    ON CONFLICT DO NOTHING
"""
_INSERT_AUDIT: Final = """
    INSERT INTO audit (auditseq, event_id, seq, line, hash) VALUES (%s, %s, %s, %s, %s)
"""

#: One new event: the event, its ``seq`` and its stored JSON (the audit line's body).
NewEvent = tuple[Event, int, str]


def check_lease(cur: Cursor, server: str, node: str, epoch: int) -> bool:
    """Whether ``node`` still holds ``server`` under ``epoch`` (row locked FOR SHARE)."""
    cur.execute(_CHECK_LEASE, (server, node, epoch))
    return cur.fetchone() is not None


def lease_lost(cur: Cursor, server: str) -> LeaseLost:
    """The :class:`LeaseLost` for ``server``, naming who holds it now."""
    cur.execute("SELECT node, epoch FROM leases WHERE server = %s", (server,))
    row = cur.fetchone()
    if row is None:
        return LeaseLost(server, "no node holds it")
    return LeaseLost(server, f"node {row[0]} holds it now (epoch {row[1]})")


def store_transition(
    cur: Cursor,
    server: str,
    state_json: str,
    events: Sequence[Event],
    sinks: Sequence[SinkConfig],
    at: datetime,
    node: str | None,
) -> list[NewEvent]:
    """Insert the new events, their outbox rows, the state and the audit lines.

    Runs inside the caller's transaction, after its fencing check. Ids already
    stored are skipped (a repeated write is a no-op); a new event gets one outbox
    row per sink that wants it, ``suppressed`` while a silence covers its server.
    """
    new: list[NewEvent] = []
    active: list[Silence] | None = None
    for event in events:
        line = event.to_json()
        restore_id = event.data.get("restore_id")
        cur.execute(
            _INSERT_EVENT,
            (
                event.id,
                event.server,
                str(event.type),
                to_us(event.time),
                restore_id if isinstance(restore_id, str) else None,
                line,
            ),
        )
        row = cur.fetchone()
        if row is None:
            continue
        seq = int(row[0])
        new.append((event, seq, line))
        wanted = wanted_sinks(event, sinks)
        if not wanted:
            continue
        if active is None:
            active = silences.active(cur, min(e.time for e in events))
        status, note = outbox_status(event, active)
        cur.executemany(
            _INSERT_OUTBOX,
            [
                (
                    sink_name,
                    event.id,
                    event.server,
                    seq,
                    status.value,
                    to_us(event.time),
                    note,
                )
                for sink_name in wanted
            ],
        )
    cur.execute(_UPSERT_STATE, (server, state_json, to_us(at), node))
    if new:
        append_audit(cur, new)
    return new


def append_audit(cur: Cursor, new: Sequence[NewEvent]) -> AuditPosition:
    """Chain the new events' lines onto the cluster's audit chain (in this transaction)."""
    cur.execute("SELECT auditseq, hash FROM audit_head FOR UPDATE")
    head = cur.fetchone()
    if head is None:
        raise JournalError(
            "the store's audit chain has no head row",
            hint="the store was changed by hand: restore it from a backup",
        )
    index, prevhash = int(head[0]), str(head[1])
    rows = []
    seq = 0
    for event, seq, text in new:
        index += 1
        line = chain_line(text, index, prevhash)
        prevhash = line_hash(line.encode("utf-8"))
        rows.append((index, event.id, seq, line, prevhash))
    cur.executemany(_INSERT_AUDIT, rows)
    cur.execute(
        "UPDATE audit_head SET auditseq = %s, seq = %s, hash = %s",
        (index, seq, prevhash),
    )
    return AuditPosition(seq=seq, index=index, hash=prevhash)


def position(cur: Cursor) -> AuditPosition | None:
    """The chain's last line (None: no line yet)."""
    cur.execute("SELECT auditseq, seq, hash FROM audit_head")
    row = cur.fetchone()
    if row is None or int(row[0]) == 0:
        return None
    return AuditPosition(seq=int(row[1]), index=int(row[0]), hash=str(row[2]))


def lines_since(cur: Cursor, auditseq: int, limit: int | None) -> list[AuditLine]:
    """The audit lines after ``auditseq``, oldest first, at most ``limit`` (None: all)."""
    if limit is None:
        cur.execute(
            "SELECT auditseq, line FROM audit WHERE auditseq > %s ORDER BY auditseq",
            (auditseq,),
        )
    else:
        cur.execute(
            "SELECT auditseq, line FROM audit WHERE auditseq > %s "
            "ORDER BY auditseq LIMIT %s",
            (auditseq, limit),
        )
    return [AuditLine(auditseq=int(index), line=line) for index, line in cur]


def _state(server: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise JournalError(f"the stored state of {server} is unreadable") from exc
    if not isinstance(value, dict):
        raise JournalError(f"the stored state of {server} is not an object")
    return value


def load_states(cur: Cursor) -> dict[str, dict[str, Any]]:
    """The last stored state of every server (``ServerState.to_dict()`` form)."""
    cur.execute("SELECT server, json FROM server_state ORDER BY server")
    return {server: _state(server, text) for server, text in cur.fetchall()}


def load_state(cur: Cursor, server: str) -> dict[str, Any] | None:
    """The last stored state of one server (None: never stored)."""
    cur.execute("SELECT json FROM server_state WHERE server = %s", (server,))
    row = cur.fetchone()
    return None if row is None else _state(server, row[0])


def state_nodes(cur: Cursor) -> dict[str, str]:
    """Which node last stored each server's state (``status``'s NODE column)."""
    cur.execute(
        "SELECT server, node FROM server_state WHERE node IS NOT NULL ORDER BY server"
    )
    return {str(server): str(node) for server, node in cur.fetchall()}


def last_state_update(cur: Cursor) -> datetime | None:
    """When a server's state was last stored."""
    cur.execute("SELECT MAX(updated_at) FROM server_state")
    row = cur.fetchone()
    return None if row is None or row[0] is None else from_us(int(row[0]))


def select(
    cur: Cursor,
    *,
    server: str | None,
    type_glob: str | None,
    since: datetime | None,
) -> list[Event]:
    """Stored events in store order, filtered like :meth:`PostgresStore.events`."""
    sql = "SELECT seq, time, json FROM events WHERE true"
    params: list[Any] = []
    if server is not None:
        sql += " AND server = %s"
        params.append(server)
    if since is not None:
        sql += " AND time >= %s"
        params.append(to_us(since))
    sql += " ORDER BY seq"
    cur.execute(sql, params)
    found = [decode(seq, time, text) for seq, time, text in cur.fetchall()]
    if type_glob is None:
        return found
    return [e for e in found if fnmatchcase(str(e.type), type_glob)]


def decode(seq: int, time: int, text: str) -> Event:
    """The stored event ``seq`` from its JSON and its exact instant."""
    try:
        event = Event.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise JournalError(f"stored event #{seq} is unreadable") from exc
    # The JSON carries milliseconds; the column keeps the exact instant.
    return dataclasses.replace(event, time=from_us(int(time)))
