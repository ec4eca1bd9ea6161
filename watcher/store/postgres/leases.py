"""Server leases and nodes in PostgreSQL: take, renew, release, leave, heartbeats.

Every instant here is PostgreSQL's (``now()``: the transaction's start), never a
node's, so the nodes agree on expiry whatever their clocks say. A lease's epoch
grows by one at each change of hands (a take), never on a renewal; the store
remembers the epochs this node holds and :mod:`.events` checks them on every write.

What a take may take: a server nobody ever held (a new row, epoch 1), one whose
lease expired or was released, one whose holder left cleanly, and one held under
this node's own name but not by this store (this node restarted: the previous
process's epoch is fenced by the bump).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from watcher.errors import NodeNameInUse
from watcher.store.base import Lease, NodeInfo, NodeRow, Takeover
from watcher.store.postgres.schema import returned

Cursor = psycopg.Cursor[Any]

_HEARTBEAT: Final = """
    INSERT INTO nodes (name, version, host, pid, started_at, heartbeat_at, left_at)
    VALUES (%(name)s, %(version)s, %(host)s, %(pid)s, %(started_at)s, now(), NULL)
    ON CONFLICT (name) DO UPDATE SET version = excluded.version, host = excluded.host,
        pid = excluded.pid, started_at = excluded.started_at,
        heartbeat_at = excluded.heartbeat_at, left_at = NULL
    RETURNING heartbeat_at
"""
# A live row of this name written by another process (FOR UPDATE: two nodes starting
# under one name at once see each other's row in turn, one of them is refused).
_TWIN: Final = """
    SELECT host, pid, EXTRACT(EPOCH FROM now() - heartbeat_at) FROM nodes
    WHERE name = %(name)s AND left_at IS NULL AND heartbeat_at > now() - %(lease)s
        AND (host, pid, started_at)
            IS DISTINCT FROM (%(host)s, %(pid)s, %(started_at)s::timestamptz)
    FOR UPDATE
"""
_RENEW: Final = """
    UPDATE leases l SET expires_at = now() + %(lease)s, released = false
    FROM unnest(%(servers)s::text[], %(epochs)s::bigint[]) AS h(server, epoch)
    WHERE l.server = h.server AND l.epoch = h.epoch AND l.node = %(node)s
    RETURNING l.server
"""
# What each candidate looks like now (no lock: the take below re-checks).
_CANDIDATES: Final = """
    SELECT c.server, l.node, l.epoch,
        l.expires_at < now() OR l.released OR n.left_at IS NOT NULL AS free,
        l.released OR n.left_at IS NOT NULL AS handed_off
    FROM unnest(%(servers)s::text[]) WITH ORDINALITY AS c(server, ord)
    LEFT JOIN leases l ON l.server = c.server
    LEFT JOIN nodes n ON n.name = l.node
    ORDER BY c.ord
"""
# The WHERE is re-evaluated on the row's newest version after waiting for a record
# in flight (which holds it FOR SHARE): a lease renewed meanwhile is not taken.
_TAKE: Final = """
    UPDATE leases l SET node = %(node)s, epoch = l.epoch + 1,
        expires_at = now() + %(lease)s, released = false
    FROM unnest(%(servers)s::text[], %(epochs)s::bigint[]) AS c(server, epoch)
    WHERE l.server = c.server AND l.epoch = c.epoch
        AND (l.expires_at < now() OR l.released OR l.node = %(node)s
             OR EXISTS (SELECT 1 FROM nodes n
                        WHERE n.name = l.node AND n.left_at IS NOT NULL))
    RETURNING l.server, l.epoch
"""
_INSERT: Final = """
    INSERT INTO leases (server, node, epoch, expires_at)
    SELECT s, %(node)s, 1, now() + %(lease)s FROM unnest(%(servers)s::text[]) AS s
    ON CONFLICT (server) DO NOTHING
    RETURNING server, epoch
"""
_RELEASE: Final = """
    UPDATE leases l SET expires_at = now() - interval '1 microsecond', released = true
    FROM unnest(%(servers)s::text[], %(epochs)s::bigint[]) AS h(server, epoch)
    WHERE l.server = h.server AND l.epoch = h.epoch AND l.node = %(node)s
"""
_NODES: Final = """
    SELECT n.name, n.version, n.host, n.pid, n.started_at, n.heartbeat_at, n.left_at,
        n.left_at IS NULL AND n.heartbeat_at > now() - %(lease)s AS alive,
        (SELECT count(*) FROM leases l
         WHERE l.node = n.name AND l.expires_at > now() AND NOT l.released) AS held
    FROM nodes n ORDER BY n.name
"""


def heartbeat(cur: Cursor, info: NodeInfo, lease: float) -> datetime:
    """Upsert this node's row (alive, not left); return the store's clock now.

    Raises:
        NodeNameInUse: Another process (other host, pid or start) heartbeat under
            this name within one lease and did not leave.
    """
    cur.execute(
        _TWIN,
        {
            "name": info.name,
            "host": info.host,
            "pid": info.pid,
            "started_at": info.started_at,
            "lease": timedelta(seconds=lease),
        },
    )
    twin = cur.fetchone()
    if twin is not None:
        host, pid, age = twin
        raise NodeNameInUse(
            info.name, f"pid {pid} on host {host}, heartbeat {float(age):.1f} s ago"
        )
    cur.execute(
        _HEARTBEAT,
        {
            "name": info.name,
            "version": info.version,
            "host": info.host,
            "pid": info.pid,
            "started_at": info.started_at,
        },
    )
    return _utc(returned(cur))


def renew(cur: Cursor, node: str, held: Mapping[str, int], lease: float) -> set[str]:
    """Extend the leases ``node`` holds under these epochs; return the ones renewed."""
    if not held:
        return set()
    servers = list(held)
    cur.execute(
        _RENEW,
        {
            "lease": timedelta(seconds=lease),
            "servers": servers,
            "epochs": [held[s] for s in servers],
            "node": node,
        },
    )
    return {row[0] for row in cur.fetchall()}


def take(
    cur: Cursor,
    node: str,
    servers: Sequence[str],
    limit: int,
    lease: float,
    held: Mapping[str, int],
) -> list[Takeover]:
    """Take at most ``limit`` of ``servers`` that are free, in the order given."""
    wanted = [s for s in dict.fromkeys(servers) if s not in held]
    if limit <= 0 or not wanted:
        return []
    cur.execute(_CANDIDATES, {"servers": wanted})
    fresh: list[str] = []
    existing: dict[str, tuple[str, int, bool]] = {}
    for server, holder, epoch, free, handed_off in cur.fetchall():
        if len(fresh) + len(existing) >= limit:
            break
        if holder is None:
            fresh.append(server)
        elif free or holder == node:
            existing[server] = (holder, int(epoch), not handed_off)
    taken: list[Takeover] = []
    if existing:
        names = sorted(existing)  # one lock order for every node: no deadlock
        cur.execute(
            _TAKE,
            {
                "node": node,
                "lease": timedelta(seconds=lease),
                "servers": names,
                "epochs": [existing[s][1] for s in names],
            },
        )
        for server, epoch in cur.fetchall():
            holder, _, expired = existing[server]
            taken.append(Takeover(server, int(epoch), holder, expired))
    if fresh:
        cur.execute(
            _INSERT,
            {"node": node, "lease": timedelta(seconds=lease), "servers": sorted(fresh)},
        )
        taken.extend(Takeover(s, int(e), None, False) for s, e in cur.fetchall())
    order = {s: i for i, s in enumerate(wanted)}
    return sorted(taken, key=lambda t: order[t.server])


def release(cur: Cursor, node: str, held: Mapping[str, int]) -> None:
    """Expire these leases now, keeping node and epoch (a takeover bumps it)."""
    if not held:
        return
    servers = list(held)
    cur.execute(
        _RELEASE,
        {"servers": servers, "epochs": [held[s] for s in servers], "node": node},
    )


def leave(cur: Cursor, node: str) -> None:
    """Release every lease and sink lease of ``node`` and mark it left."""
    cur.execute(
        "UPDATE leases SET expires_at = now() - interval '1 microsecond', "
        "released = true WHERE node = %s AND NOT released",
        (node,),
    )
    cur.execute(
        "UPDATE sink_leases SET expires_at = now() - interval '1 microsecond' "
        "WHERE node = %s",
        (node,),
    )
    cur.execute("UPDATE nodes SET left_at = now() WHERE name = %s", (node,))


def leases(cur: Cursor) -> list[Lease]:
    """Every server lease in the store, by server."""
    cur.execute("SELECT server, node, epoch, expires_at FROM leases ORDER BY server")
    return [
        Lease(server=s, node=n, epoch=int(e), expires_at=_utc(x))
        for s, n, e, x in cur.fetchall()
    ]


def nodes(cur: Cursor, lease: float) -> list[NodeRow]:
    """Every node that ever heartbeat, by name; alive = heartbeat within ``lease``."""
    cur.execute(_NODES, {"lease": timedelta(seconds=lease)})
    return [
        NodeRow(
            name=name,
            version=version,
            host=host,
            pid=int(pid),
            started_at=_utc(started),
            heartbeat_at=_utc(beat),
            alive=bool(alive),
            leases=int(held),
            left_at=None if left is None else _utc(left),
        )
        for name, version, host, pid, started, beat, left, alive, held in cur.fetchall()
    ]


def _utc(value: datetime) -> datetime:
    """A ``timestamptz`` as an aware UTC datetime (the session's zone is UTC anyway)."""
    return value.astimezone(UTC)
