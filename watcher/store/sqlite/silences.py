"""Silences in SQLite: add, list (a version-2 database too), remove, and the active ones."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from watcher.store.base import Silence
from watcher.store.sqlite.schema import from_us, to_us

_ACTIVE: Final = """
    SELECT id, server_glob, until, reason, created_at, removed_at, removed_by
    FROM silences WHERE until > ? AND removed_at IS NULL ORDER BY id
"""
_ALL: Final = """
    SELECT id, server_glob, until, reason, created_at, removed_at, removed_by
    FROM silences ORDER BY id
"""
# A version-2 database (read by the views right after an upgrade) has no removal
# columns: they read as NULL.
_ACTIVE_V2: Final = """
    SELECT id, server_glob, until, reason, created_at, NULL, NULL
    FROM silences WHERE until > ? ORDER BY id
"""
_ALL_V2: Final = """
    SELECT id, server_glob, until, reason, created_at, NULL, NULL
    FROM silences ORDER BY id
"""


def add(
    conn: sqlite3.Connection,
    server_glob: str,
    until: datetime,
    reason: str,
    at: datetime,
) -> int:
    """Insert a silence created ``at``; return its id."""
    row = conn.execute(
        "INSERT INTO silences (server_glob, until, reason, created_at) "
        "VALUES (?, ?, ?, ?) RETURNING id",
        (server_glob, to_us(until), reason, to_us(at)),
    ).fetchone()
    return int(row[0])


def listing(
    conn: sqlite3.Connection, now: datetime, *, include_expired: bool
) -> list[Silence]:
    """The silences active at ``now``, or every one ever added, by id."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(silences)")}
    if "removed_at" in columns:
        sql = _ALL if include_expired else _ACTIVE
    else:
        sql = _ALL_V2 if include_expired else _ACTIVE_V2
    params = () if include_expired else (to_us(now),)
    return [_silence(row) for row in conn.execute(sql, params).fetchall()]


def active(conn: sqlite3.Connection, at: datetime) -> list[Silence]:
    """The silences not yet ended at ``at`` nor removed (the current schema only)."""
    return [_silence(row) for row in conn.execute(_ACTIVE, (to_us(at),))]


def remove(
    conn: sqlite3.Connection, silence_id: int, at: datetime, by: str | None
) -> bool:
    """Mark a silence removed ``at`` by ``by``; whether it existed and held."""
    cursor = conn.execute(
        "UPDATE silences SET removed_at = ?, removed_by = ? "
        "WHERE id = ? AND removed_at IS NULL",
        (to_us(at), by, silence_id),
    )
    return cursor.rowcount > 0


def _silence(row: Sequence[Any]) -> Silence:
    silence_id, glob, until, reason, created, removed_at, removed_by = row
    return Silence(
        id=silence_id,
        server_glob=glob,
        until=from_us(until),
        reason=reason,
        created_at=from_us(created),
        removed_at=None if removed_at is None else from_us(removed_at),
        removed_by=removed_by,
    )
