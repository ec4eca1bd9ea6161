"""Silences in PostgreSQL: add, list, remove, and the active ones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import psycopg

from watcher.store.base import Silence
from watcher.store.postgres.schema import from_us, returned, to_us

Cursor = psycopg.Cursor[Any]

_ACTIVE: Final = """
    SELECT id, server_glob, until, reason, created_at, removed_at, removed_by
    FROM silences WHERE until > %s AND removed_at IS NULL ORDER BY id
"""
_ALL: Final = """
    SELECT id, server_glob, until, reason, created_at, removed_at, removed_by
    FROM silences ORDER BY id
"""


def add(
    cur: Cursor, server_glob: str, until: datetime, reason: str, at: datetime
) -> int:
    """Insert a silence created ``at``; return its id."""
    cur.execute(
        "INSERT INTO silences (server_glob, until, reason, created_at) "
        "VALUES (%s, %s, %s, %s) RETURNING id",
        (server_glob, to_us(until), reason, to_us(at)),
    )
    return int(returned(cur))


def listing(cur: Cursor, now: datetime, *, include_expired: bool) -> list[Silence]:
    """The silences active at ``now``, or every one ever added, by id."""
    if include_expired:
        cur.execute(_ALL)
    else:
        cur.execute(_ACTIVE, (to_us(now),))
    return [_silence(row) for row in cur.fetchall()]


def active(cur: Cursor, at: datetime) -> list[Silence]:
    """The silences not yet ended at ``at`` nor removed."""
    cur.execute(_ACTIVE, (to_us(at),))
    return [_silence(row) for row in cur.fetchall()]


def remove(cur: Cursor, silence_id: int, at: datetime, by: str | None) -> bool:
    """Mark a silence removed ``at`` by ``by``; whether it existed and held."""
    cur.execute(
        "UPDATE silences SET removed_at = %s, removed_by = %s "
        "WHERE id = %s AND removed_at IS NULL",
        (to_us(at), by, silence_id),
    )
    return cur.rowcount > 0


def _silence(row: Sequence[Any]) -> Silence:
    silence_id, glob, until, reason, created, removed_at, removed_by = row
    return Silence(
        id=int(silence_id),
        server_glob=glob,
        until=from_us(until),
        reason=reason,
        created_at=from_us(created),
        removed_at=None if removed_at is None else from_us(removed_at),
        removed_by=removed_by,
    )
