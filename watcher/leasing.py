"""The lease keeper: a cluster node's loop over its server leases.

Every ``min(lease / 3, 1 s)`` the keeper says the node is alive, renews what it
holds, plans with :func:`watcher.cluster.plan` (the same plan every node computes),
gives up its surplus and takes free servers, and tells the fleet which servers to
watch, loading each newly taken server's stored state so a restore continues across
the takeover as one history.

When the store cannot be reached the node keeps polling what it holds (the
recorder queues the events), takes nothing new, and reports the failure. When the
store answers again it renews first, and takes other nodes' leases only after one
lease period, so peers that were cut off as well have time to renew theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import structlog

from watcher.clock import Clock
from watcher.cluster import RELEASE_LIMIT, fair_share, plan
from watcher.errors import JournalError
from watcher.store.base import ClusterStore, Lease, NodeInfo, NodeRow, Takeover
from watcher.tracker import ServerState

log = structlog.get_logger(__name__)

LEASE_TAKEN: Final = "lease.taken"
LEASE_RELEASED: Final = "lease.released"
LEASE_LOST: Final = "lease.lost"
STORE_FAILING: Final = "cluster.store_failing"
STORE_RECOVERED: Final = "cluster.store_recovered"
LEAVE_FAILED: Final = "cluster.leave_failed"
KEEPER_CRASHED: Final = "cluster.round_crashed"

#: The longest pause between two rounds, whatever the lease.
MAX_ROUND_INTERVAL: Final = 1.0
#: Seconds after a peer's heartbeat or lease runs out at which the next round
#: comes (the store's clock and ours are read a few ms apart).
EXPIRY_MARGIN: Final = 0.05
#: The shortest pause between two rounds.
MIN_ROUND_INTERVAL: Final = 0.05
#: Servers taken in one round above which their states are read in one query.
BULK_LOAD: Final = 8


class Follower(Protocol):
    """What the keeper drives: the fleet of servers this node polls."""

    def states(self) -> Mapping[str, ServerState]:
        """The tracker state of every server watched now."""
        ...

    async def follow(
        self, servers: Sequence[str], states: Mapping[str, ServerState]
    ) -> None:
        """Watch exactly ``servers``; new ones start from ``states``."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """A node's lease counters (``/metrics``), since the process started.

    Args:
        node: This node's name.
        leases_held: Servers whose lease this node holds now.
        takeovers: Leases taken over from a node whose lease had expired.
        handoffs: Leases taken that their previous holder had given up.
        released: Leases this node gave up to rebalance.
        leases_lost: Leases this node held and lost without giving them up.
        store_failures: Times the store became unreachable.
        store_up: Whether the last round reached the store.
        fenced_writes: Writes the store refused because the lease was gone (the
            recorder counts them; the daemon fills this in).
    """

    node: str
    leases_held: int
    takeovers: int
    handoffs: int
    released: int
    leases_lost: int
    store_failures: int
    store_up: bool
    fenced_writes: int = 0


def round_interval(lease: float) -> float:
    """Seconds between two rounds: a third of the lease, at most one second."""
    return min(lease / 3, MAX_ROUND_INTERVAL)


class LeaseKeeper:
    """Keeps this node's server leases and the fleet in step with them.

    Args:
        store: The shared store.
        servers: Returns the configured server names (read every round: a reload
            may change them).
        follower: The fleet.
        clock: The time source (rounds and the quiet period after an outage).
        info: What this node says of itself with every heartbeat.
        release_limit: Servers given up per round at most.
    """

    def __init__(
        self,
        store: ClusterStore,
        servers: Callable[[], Sequence[str]],
        follower: Follower,
        clock: Clock,
        *,
        info: NodeInfo,
        release_limit: int = RELEASE_LIMIT,
    ) -> None:
        self.store = store
        self.interval = round_interval(store.lease_seconds)
        #: Why the store cannot be reached; None while it can.
        self.failure: JournalError | None = None
        self.takeovers = 0
        self.handoffs = 0
        self.released = 0
        self.leases_lost = 0
        self.store_failures = 0
        self._servers = servers
        self._follower = follower
        self._clock = clock
        self._info = info
        self._release_limit = release_limit
        self._held: set[str] = set()
        self._quiet_until = 0.0
        self._rounds = 0
        # What the last full plan saw (see _must_plan).
        self._planned_live: list[str] = []
        self._planned_fleet: frozenset[str] = frozenset()
        self._next_plan = 0.0
        self._next_pause = self.interval
        self._next_renew = 0.0
        self._renewed = (datetime.min.replace(tzinfo=UTC), 0.0)

    @property
    def node(self) -> str:
        """This node's name."""
        return self.store.node_name

    @property
    def held(self) -> frozenset[str]:
        """The servers this node holds, as of its last round."""
        return frozenset(self._held)

    def stats(self) -> ClusterStats:
        """Return a snapshot of the counters."""
        return ClusterStats(
            node=self.node,
            leases_held=len(self._held),
            takeovers=self.takeovers,
            handoffs=self.handoffs,
            released=self.released,
            leases_lost=self.leases_lost,
            store_failures=self.store_failures,
            store_up=self.failure is None and self._rounds > 0,
        )

    async def run(self) -> None:
        """Keep the leases until cancelled: a round, a pause, again.

        The pause is :attr:`interval`, shorter when a peer's heartbeat or a lease
        this node is waiting for runs out sooner: a dead node's servers are taken
        over right when its leases expire, not up to a round later.
        """
        while True:
            try:
                await self.round()
            except Exception:  # the supervision boundary, logged below
                # A bug in one round must not end the node (the task group would
                # stop polling everything); the next round starts afresh.
                log.exception(KEEPER_CRASHED)
                self._next_pause = self.interval
            await self._clock.sleep(self._next_pause)

    async def round(self) -> None:
        """One round: heartbeat, renew, plan, release, take, follow.

        Never raises a ``JournalError``: a failing store is recorded in
        :attr:`failure` and the fleet keeps watching what it has.
        """
        store = self.store
        self._next_pause = self.interval
        try:
            # One trip to the worker thread for the three calls of every round: on
            # a balanced cluster that is all a round does.
            db_now, held, nodes = await store.call(self._beat)
        except JournalError as exc:
            self._fail(exc)
            return
        if self.failure is not None:
            log.info(STORE_RECOVERED, leases=len(held))
            self.failure = None
            # Peers were cut off too: give them a lease period to renew theirs
            # before their leases look free.
            self._quiet_until = self._clock.monotonic() + store.lease_seconds
        self._rounds += 1
        self._note_lost(held)
        configured = list(self._servers())
        if self._clock.monotonic() >= self._quiet_until:
            try:
                await self._rebalance(configured, db_now, nodes)
            except JournalError as exc:
                self._fail(exc)
                return
        await self._follow(configured)

    async def release_all(self) -> None:
        """Give every server lease up now (a clean stop); never raises."""
        store = self.store
        try:
            await store.call(self._release_every_lease)
        except JournalError as exc:
            log.warning(LEAVE_FAILED, detail=exc.detail)
            return
        self._held.clear()

    async def leave(self) -> None:
        """Give every lease up and mark this node left (a clean stop); never raises."""
        store = self.store
        try:
            await store.call(store.leave)
        except JournalError as exc:
            # Peers take over when the leases expire instead.
            log.warning(LEAVE_FAILED, detail=exc.detail)
            return
        self._held.clear()

    def _release_every_lease(self) -> None:
        """Release what the store says this node holds (in the worker thread)."""
        self.store.release(sorted(self.store.held()))

    def _held_now(self) -> set[str]:
        """The servers the store says this node holds (in the worker thread).

        Never read on the event loop: the store's lock may be held by a statement
        waiting for an unreachable database.
        """
        return set(self.store.held())

    def _beat(self) -> tuple[datetime, set[str], list[NodeRow]]:
        """Heartbeat and renew when due, read the nodes (in the store's worker thread).

        Heartbeat and renewal every ``lease / 3`` are what keeps the leases; the
        nodes are read every round, so a peer's join or clean stop is seen within
        a round. Between two renewals the store's clock is read off our monotonic
        one, from the last renewal.
        """
        store = self.store
        mono = self._clock.monotonic()
        if self.failure is not None or mono >= self._next_renew:
            db_now = store.heartbeat(self._info)
            held = store.renew()
            self._renewed = (db_now, mono)
            # A hair early, so a round landing right on the mark renews.
            self._next_renew = mono + store.lease_seconds / 3 - MIN_ROUND_INTERVAL
        else:
            at, then = self._renewed
            db_now = at + timedelta(seconds=mono - then)
            held = self._held_now()
        return db_now, held, store.nodes()

    async def _rebalance(
        self, configured: list[str], db_now: datetime, nodes: list[NodeRow]
    ) -> None:
        store = self.store
        live = sorted(n.name for n in nodes if n.alive)
        lease = timedelta(seconds=store.lease_seconds)
        # A peer that stops heartbeating is dead at heartbeat_at + lease: look then.
        self._wake_at(
            db_now,
            [n.heartbeat_at + lease for n in nodes if n.alive and n.name != self.node],
        )
        if not self._must_plan(configured, live):
            return
        leases = await store.call(store.leases)
        # Others' unexpired leases (on the store's clock), and what the store says
        # this node holds (renew() just extended those).
        holders = {
            lease.server: lease.node
            for lease in leases
            if lease.node != self.node and lease.expires_at > db_now
        }
        holders.update(dict.fromkeys(self._held, self.node))
        states = self._follower.states()
        # A restore, or the restart that ends it: rather not handed over midway.
        busy = [
            s
            for s, state in states.items()
            if state.restore_active or state.awaiting_restart
        ]
        p = plan(
            self.node,
            configured,
            holders,
            live,
            busy=busy,
            release_limit=self._release_limit,
        )
        if p.release:
            giving = set(p.release)
            keep = [s for s in configured if s in self._held and s not in giving]
            # Stop the watches first: nothing of ours is written after release.
            await self._follower.follow(keep, {})
            await store.call(store.release, list(p.release))
            self._held -= giving
            self.released += len(giving)
            log.info(LEASE_RELEASED, servers=sorted(giving), share=p.share)
        if p.take_limit:
            taken: list[Takeover] = await store.call(
                store.take, list(p.take), p.take_limit
            )
            if taken:
                self._count_taken(taken, p.share)
            if len(taken) < p.take_limit:
                self._retry_take(p.take, taken, leases, live, db_now)
        if p.release or p.take_limit:
            self._held = await store.call(self._held_now)

    def _retry_take(
        self,
        wanted: Sequence[str],
        taken: Sequence[Takeover],
        leases: Sequence[Lease],
        live: Sequence[str],
        db_now: datetime,
    ) -> None:
        """Come back soon for the share not taken this round.

        Servers that looked free but were not taken went to a peer filling its
        share at the same moment: plan again at once, with fresh leases. Servers
        still under a dead node's unexpired lease: come back when the first one
        expires. (A lease a live peer holds is no reason to hurry.)
        """
        got = {t.server for t in taken}
        rows = {lease.server: lease for lease in leases}
        alive = set(live)
        instants: list[datetime] = []
        for server in wanted:
            if server in got:
                continue
            lease = rows.get(server)
            if lease is None or lease.expires_at < db_now:
                instants = [db_now]  # lost a race: look again now
                break
            if lease.node not in alive:
                instants.append(lease.expires_at)
        self._wake_at(db_now, instants)

    def _wake_at(self, db_now: datetime, instants: Sequence[datetime]) -> None:
        """Shorten the next pause to reach the earliest of ``instants`` (store clock)."""
        for at in instants:
            wait = (at - db_now).total_seconds() + EXPIRY_MARGIN
            self._next_pause = max(MIN_ROUND_INTERVAL, min(self._next_pause, wait))

    def _must_plan(self, configured: list[str], live: list[str]) -> bool:
        """Whether this round needs every lease read and a plan.

        A balanced, quiet cluster skips it (reading a large fleet's leases every
        second costs more CPU than the polls): only a change of the live nodes or
        of the fleet, a share not yet reached or exceeded, or one lease period
        since the last full look (the safety net) makes a node plan.
        """
        now = self._clock.monotonic()
        fleet = frozenset(configured)
        held = self._held
        balanced = held <= fleet and len(held) == fair_share(
            self.node, live, len(fleet)
        )
        if (
            balanced
            and live == self._planned_live
            and fleet == self._planned_fleet
            and now < self._next_plan
        ):
            return False
        self._planned_live = live
        self._planned_fleet = fleet
        self._next_plan = now + self.store.lease_seconds
        return True

    def _count_taken(self, taken: list[Takeover], share: int) -> None:
        expired = [t for t in taken if t.previous_node and t.expired]
        handed = [t for t in taken if t.previous_node and not t.expired]
        self.takeovers += len(expired)
        self.handoffs += len(handed)
        log.info(
            LEASE_TAKEN,
            servers=len(taken),
            taken_over=sorted(t.server for t in expired),
            handed_off=sorted(t.server for t in handed),
            share=share,
        )

    async def _follow(self, configured: list[str]) -> None:
        """Watch exactly the configured servers held; load the new ones' states."""
        held = self._held
        wanted = [s for s in configured if s in held]
        watched = self._follower.states()
        if len(wanted) == len(watched) and all(s in watched for s in wanted):
            return  # the usual round: nothing to change
        new = [s for s in wanted if s not in watched]
        try:
            stored = await self._load(new)
        except JournalError as exc:
            # Held but not watched yet: the next round tries again.
            self._fail(exc)
            wanted = [s for s in wanted if s in watched]
            stored = {}
        states = {s: self._state_from(s, stored.get(s)) for s in new if s in wanted}
        await self._follower.follow(wanted, states)

    async def _load(self, servers: list[str]) -> Mapping[str, Mapping[str, object]]:
        """The stored states of ``servers``: one query each, or all at once for many.

        A takeover of a dead node's share loads hundreds; one read of every state
        is then far cheaper than a round trip per server.
        """
        store = self.store
        if not servers:
            return {}
        if len(servers) > BULK_LOAD:
            every = await store.call(store.load_states)
            return {s: every[s] for s in servers if s in every}
        found: dict[str, Mapping[str, object]] = {}
        for server in servers:
            state = await store.call(store.load_state, server)
            if state is not None:
                found[server] = state
        return found

    def _state_from(
        self, server: str, stored: Mapping[str, object] | None
    ) -> ServerState:
        if stored is None:
            return ServerState()
        clock = self._clock
        try:
            return ServerState.from_dict(
                stored, at=clock.now(), monotonic=clock.monotonic()
            )
        except ValueError:
            # A state this version cannot read must not keep the server unwatched.
            log.exception("state.unreadable", server=server)
            return ServerState()

    def _note_lost(self, held: set[str]) -> None:
        lost = self._held - held
        if lost:
            self.leases_lost += len(lost)
            log.warning(LEASE_LOST, servers=sorted(lost))
        self._held = set(held)

    def _fail(self, exc: JournalError) -> None:
        if self.failure is None:
            self.store_failures += 1
            log.error(STORE_FAILING, detail=exc.detail)
        self.failure = exc
