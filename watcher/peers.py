"""What a cluster node shows of the servers its peers poll.

A node's fleet holds only the servers it has leases on, yet its ``/status`` and its
dashboard are what an operator opens during a maintenance window: they must show the
whole fleet. :class:`PeerStates` keeps a copy of the other servers' last stored states
and of who holds each lease, read from the shared store in one worker-thread call,
and merges it with the node's own live states (:meth:`PeerStates.view`).

It reads the store only while someone looks (a ``/status`` or dashboard read within
:data:`WANTED_FOR`), at most every :data:`REFRESH_INTERVAL`, plus once every
:data:`IDLE_REFRESH_INTERVAL` so the first look after a quiet spell is not empty; a
node nobody looks at pays nothing per poll. It also tells the live event stream to
look at the store every refresh, since events recorded by other nodes cannot wake it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import anyio
import structlog

from watcher.clock import Clock
from watcher.errors import JournalError
from watcher.store.base import ClusterStore, Lease
from watcher.tracker import ServerState

log = structlog.get_logger(__name__)

#: Seconds between two reads of the store while someone looks.
REFRESH_INTERVAL: Final = 1.0
#: Seconds after the last look during which the copy is kept fresh.
WANTED_FOR: Final = 60.0
#: Seconds between two reads when nobody looks.
IDLE_REFRESH_INTERVAL: Final = 15.0
PEERS_UNREADABLE: Final = "cluster.peers_unreadable"


@dataclass(frozen=True, slots=True)
class FleetView:
    """Every configured server's state and poller, in configuration order."""

    states: Mapping[str, ServerState]
    #: The node holding each server's unexpired lease (missing: nobody).
    owners: Mapping[str, str]


@dataclass
class _Copy:
    states: dict[str, ServerState] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)


class PeerStates:
    """The other nodes' servers as the store last had them (see the module docstring).

    Args:
        store: The shared store.
        node: This node's name.
        clock: For the looks' ages and the states' rebasing.
        on_refresh: Called after each read (the live stream's ``notify``).
    """

    def __init__(
        self,
        store: ClusterStore,
        node: str,
        clock: Clock,
        *,
        on_refresh: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._node = node
        self._clock = clock
        self._on_refresh = on_refresh
        self._copy = _Copy()
        self._wanted_at = -WANTED_FOR
        self._failing = False

    def view(
        self, configured: Sequence[str], local: Mapping[str, ServerState]
    ) -> FleetView:
        """The whole fleet: this node's live states, the copy for the rest.

        Cheap (no I/O): called on the event loop by the status endpoints.
        """
        self._wanted_at = self._clock.monotonic()
        copy = self._copy
        states: dict[str, ServerState] = {}
        owners: dict[str, str] = {}
        for name in configured:
            if name in local:
                states[name] = local[name]
                owners[name] = self._node
                continue
            stored = copy.states.get(name)
            states[name] = stored if stored is not None else ServerState()
            owner = copy.owners.get(name)
            if owner is not None and owner != self._node:
                owners[name] = owner
        return FleetView(states, owners)

    async def run(self) -> None:
        """Keep the copy fresh while someone looks; returns only when cancelled."""
        last = -IDLE_REFRESH_INTERVAL
        while True:
            now = self._clock.monotonic()
            looked = now - self._wanted_at < WANTED_FOR
            if looked or now - last >= IDLE_REFRESH_INTERVAL:
                await self.refresh()
                last = now
            await anyio.sleep(REFRESH_INTERVAL)

    async def refresh(self) -> None:
        """Read every stored state and lease once (one worker-thread call)."""
        try:
            stored, leases = await self._store.call(self._read)
        except JournalError as exc:
            if not self._failing:
                # The lease keeper and the recorder report the store loudly.
                log.info(PEERS_UNREADABLE, detail=exc.detail)
            self._failing = True
            return
        self._failing = False
        at, mono = self._clock.now(), self._clock.monotonic()
        states: dict[str, ServerState] = {}
        for name, data in stored.items():
            try:
                states[name] = ServerState.from_dict(data, at=at, monotonic=mono)
            except ValueError:
                continue
        # Lease instants are on the store's clock; ours is close enough to tell an
        # expired lease from a live one on a status page.
        self._copy = _Copy(states, _owners(leases, at))
        if self._on_refresh is not None:
            self._on_refresh()

    def _read(self) -> tuple[dict[str, dict[str, Any]], list[Lease]]:
        return self._store.load_states(), self._store.leases()


def _owners(leases: Sequence[Lease], now: datetime) -> dict[str, str]:
    return {lease.server: lease.node for lease in leases if lease.expires_at > now}
