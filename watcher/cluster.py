"""The cluster's lease plan: which servers this node should take and give up (pure).

Every node of a cluster runs the same plan over the same picture of the store (the
configured servers, who holds which lease, which nodes are alive) and so agrees,
without talking to the others, on a fair share for each node: the live nodes are
sorted by name and the first ``len(servers) % len(nodes)`` of them get one server
more than the rest. A node takes free servers (nobody holds them, the lease
expired, or its holder is dead or left) up to its share and gives up what it holds
above it, idle servers first; a server in the middle of a restore is kept unless the
node is far above its share, so rebalancing rarely moves a running restore.

Which free servers a node prefers is decided by rendezvous hashing of (node,
server): two nodes filling their shares at once mostly reach for different
servers, and the same node keeps getting the same ones.

No I/O, no clock, no randomness: the lease keeper (:mod:`watcher.leasing`) feeds it
and applies the plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

#: Servers one node gives up in one round at most: a node joining a large fleet
#: gets its share over a few rounds instead of every server changing hands at once.
RELEASE_LIMIT: Final = 16
#: Busy (restoring) servers a node keeps above its share before it gives one up.
BUSY_SLACK: Final = 1


@dataclass(frozen=True, slots=True)
class LeasePlan:
    """What one node does with its leases this round.

    Args:
        take: Free servers to try to take, most preferred first (the store takes at
            most ``take_limit`` of them: another node may win some).
        take_limit: How many of ``take`` this node still needs.
        release: Servers to give up now.
        share: This node's fair share of the fleet.
    """

    take: tuple[str, ...]
    take_limit: int
    release: tuple[str, ...]
    share: int

    @property
    def is_empty(self) -> bool:
        """Whether the plan changes nothing."""
        return self.take_limit == 0 and not self.release


def fair_share(node: str, live_nodes: Iterable[str], servers: int) -> int:
    """Return ``node``'s share of ``servers`` among ``live_nodes`` (and itself).

    ``floor(servers / n)``, plus one for the first ``servers % n`` nodes by name, so
    the shares add up to ``servers`` exactly and differ by at most one.
    """
    ranked = sorted({*live_nodes, node})
    base, extra = divmod(servers, len(ranked))
    return base + (1 if ranked.index(node) < extra else 0)


def plan(
    node: str,
    servers: Collection[str],
    holders: Mapping[str, str],
    live_nodes: Collection[str],
    *,
    busy: Collection[str] = (),
    release_limit: int = RELEASE_LIMIT,
    busy_slack: int = BUSY_SLACK,
) -> LeasePlan:
    """Plan one round of lease changes for ``node``.

    Args:
        node: This node's name.
        servers: The configured servers (the same on every node).
        holders: Who holds each server's lease now: only unexpired leases, by
            server. Servers held by a node not in ``live_nodes`` count as free.
        live_nodes: The nodes alive now (``node`` counts as alive either way).
        busy: Servers this node holds that are in the middle of a restore.
        release_limit: Servers given up in this round at most.
        busy_slack: Busy servers kept above the share before one is given up.

    Returns:
        The plan. A server this node holds that is no longer configured is always
        released (it is not counted in the share).
    """
    live = {*live_nodes, node}
    configured = set(servers)
    share = fair_share(node, live, len(configured))
    mine = sorted(s for s in configured if holders.get(s) == node)
    unconfigured = sorted(
        s for s, n in holders.items() if n == node and s not in configured
    )
    free = [s for s in configured if holders.get(s) not in live]
    need = max(0, share - len(mine))
    take = tuple(sorted(free, key=lambda s: _preference(node, s))) if need else ()
    surplus = len(mine) - share
    release = list(unconfigured)
    if surplus > 0:
        busy_set = set(busy)
        # The ones this node likes least go first, so it keeps a stable set.
        order = sorted(mine, key=lambda s: _preference(node, s), reverse=True)
        idle = [s for s in order if s not in busy_set]
        running = [s for s in order if s in busy_set]
        chosen = idle[:surplus]
        chosen += running[: max(0, surplus - len(chosen) - busy_slack)]
        release += chosen
    release = release[: max(0, release_limit)]
    return LeasePlan(
        take=take,
        take_limit=min(need, len(take)),
        release=tuple(release),
        share=share,
    )


def _preference(node: str, server: str) -> bytes:
    """Rendezvous hash: a node's order of preference over servers (lower first)."""
    return hashlib.blake2b(f"{node}\0{server}".encode(), digest_size=8).digest()
