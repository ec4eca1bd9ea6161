"""Events and server states in SQLite: one transition's transaction, history, audit feed.

A transition's events, their outbox rows (due at the event's time) and the server's
state go in one transaction (:func:`store_transition`). Events are stored as their CloudEvents JSON (what sinks get, and what the audit log
chains) beside the exact instant in microseconds.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Final

from watcher.audit import AuditPosition, chain_line
from watcher.config import SinkConfig
from watcher.errors import JournalError
from watcher.events import Event
from watcher.store.base import (
    AuditLine,
    Silence,
    outbox_status,
    wanted_sinks,
)
from watcher.store.sqlite import silences
from watcher.store.sqlite.schema import from_us, to_us

# Constant strings: sqlite3 caches their prepared statements.
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
_SAVE_META: Final = """
    INSERT INTO meta (key, value) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

#: One new event: the event, its ``seq`` and its stored JSON (the audit line's body).
NewEvent = tuple[Event, int, str]


def store_transition(
    conn: sqlite3.Connection,
    server: str,
    state_json: str,
    events: Sequence[Event],
    sinks: Sequence[SinkConfig],
    at: datetime,
) -> list[NewEvent]:
    """Insert the new events, their outbox rows and the server's state (``at``).

    Runs inside the caller's transaction. Ids already stored are skipped (events
    re-derived after a crash); a new event gets one outbox row per sink that wants
    it, ``suppressed`` while a silence covers its server at its time.
    """
    new: list[NewEvent] = []
    active: list[Silence] | None = None
    for event in events:
        line = event.to_json()
        restore_id = event.data.get("restore_id")
        row = conn.execute(
            _INSERT_EVENT,
            (
                event.id,
                event.server,
                str(event.type),
                to_us(event.time),
                restore_id if isinstance(restore_id, str) else None,
                line,
            ),
        ).fetchone()
        if row is None:
            continue
        new.append((event, row[0], line))
        wanted = wanted_sinks(event, sinks)
        if not wanted:
            continue
        if active is None:
            active = silences.active(conn, min(e.time for e in events))
        status, note = outbox_status(event, active)
        for sink_name in wanted:
            conn.execute(
                _INSERT_OUTBOX,
                (
                    sink_name,
                    event.id,
                    event.server,
                    row[0],
                    status.value,
                    to_us(event.time),
                    note,
                ),
            )
    conn.execute(_UPSERT_STATE, (server, state_json, to_us(at)))
    return new


def load_states(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """The last stored state of every server (``ServerState.to_dict()`` form)."""
    rows = conn.execute("SELECT server, json FROM server_state ORDER BY server")
    states: dict[str, dict[str, Any]] = {}
    for server, text in rows.fetchall():
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise JournalError(f"the stored state of {server} is unreadable") from exc
        if not isinstance(value, dict):
            raise JournalError(f"the stored state of {server} is not an object")
        states[server] = value
    return states


def last_state_update(conn: sqlite3.Connection) -> datetime | None:
    """When a server's state was last stored."""
    row = conn.execute("SELECT MAX(updated_at) FROM server_state").fetchone()
    return None if row is None or row[0] is None else from_us(int(row[0]))


def select(
    conn: sqlite3.Connection,
    *,
    server: str | None,
    type_glob: str | None,
    since: datetime | None,
) -> list[Event]:
    """Stored events in store order, filtered like :meth:`SqliteStore.events`."""
    sql = "SELECT seq, time, json FROM events WHERE 1 = 1"
    params: list[Any] = []
    if server is not None:
        sql += " AND server = ?"
        params.append(server)
    if since is not None:
        sql += " AND time >= ?"
        params.append(to_us(since))
    sql += " ORDER BY seq"
    rows = conn.execute(sql, params).fetchall()
    found = [decode(seq, time, text) for seq, time, text in rows]
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
    return dataclasses.replace(event, time=from_us(time))


# --- what the audit writer reads ----------------------------------------------------


class AuditFeed:
    """The stored events as :class:`watcher.audit.AuditSource` (one connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def seq_of(self, event_id: str) -> int | None:
        """Return the position of the event with this id (None: not stored)."""
        row = self._conn.execute(
            "SELECT seq FROM events WHERE id = ?", (event_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def last_seq(self) -> int:
        """Return the newest event's position (0: none)."""
        (top,) = self._conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events"
        ).fetchone()
        return int(top)

    def events_after(self, seq: int) -> Iterator[tuple[int, str]]:
        """Yield ``(seq, json)`` of every event after ``seq``, in order."""
        yield from self._conn.execute(
            "SELECT seq, json FROM events WHERE seq > ? ORDER BY seq", (seq,)
        )


def stored_position(conn: sqlite3.Connection) -> AuditPosition | None:
    """The audit log's last line as remembered in ``meta`` (None: never written)."""
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


def save_position(conn: sqlite3.Connection, position: AuditPosition) -> None:
    """Remember the audit log's last line in ``meta`` (rotation while stopped)."""
    conn.execute(_SAVE_META, ("audit_last_seq", str(position.seq)))
    conn.execute(_SAVE_META, ("audit_last_index", str(position.index)))
    conn.execute(_SAVE_META, ("audit_last_hash", position.hash))


def save_lines(
    conn: sqlite3.Connection, written: Sequence[tuple[int, int, str]]
) -> None:
    """Remember each written audit line's ``auditseq`` and ``prevhash`` by ``seq``."""
    conn.executemany(
        "UPDATE events SET auditseq = ?, prevhash = ? WHERE seq = ?",
        [(index, prevhash, seq) for seq, index, prevhash in written],
    )


def lines_since(conn: sqlite3.Connection, auditseq: int, limit: int) -> list[AuditLine]:
    """The audit lines after ``auditseq``, oldest first, at most ``limit``."""
    rows = conn.execute(
        "SELECT auditseq, prevhash, json FROM events WHERE auditseq > ? "
        "ORDER BY auditseq LIMIT ?",
        (auditseq, limit),
    ).fetchall()
    return [
        AuditLine(auditseq=index, line=chain_line(text, index, prevhash))
        for index, prevhash, text in rows
    ]
