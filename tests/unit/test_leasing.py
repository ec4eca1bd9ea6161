"""The lease keeper's decisions (watcher.leasing), over a small in-memory store.

The fake below keeps the leases the way the design says PostgreSQL does (epochs,
expiry on the store's clock, renew of an unchanged epoch even after expiry); the
real store's behaviour is tested against PostgreSQL in tests/integration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import anyio

from tests.clock import VirtualClock
from watcher.errors import JournalError
from watcher.leasing import (
    EXPIRY_MARGIN,
    KEEPER_CRASHED,
    LeaseKeeper,
    round_interval,
)
from watcher.phases import Phase
from watcher.store.base import Lease, NodeInfo, NodeRow, Takeover
from watcher.tracker import ServerState

T = TypeVar("T")
LEASE = 3.0
SERVERS = [f"s{i}" for i in range(10)]


@dataclass
class Db:
    """The shared database: leases, node heartbeats, states; its own clock."""

    clock: VirtualClock
    leases: dict[str, Lease] = field(default_factory=dict)
    beats: dict[str, datetime] = field(default_factory=dict)
    left: set[str] = field(default_factory=set)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Servers whose holder gave them up (a hand-off, not an expiry).
    released: set[str] = field(default_factory=set)
    down: bool = False


class FakeStore:
    """Enough of a ClusterStore for the keeper (one node's connection to ``db``)."""

    def __init__(self, db: Db, node: str, lease: float = LEASE) -> None:
        self.db = db
        self._node = node
        self._lease = lease
        #: How many times renew() ran.
        self.renews = 0
        self._held: dict[str, int] = {}
        #: Names of the calls made, in order.
        self.calls: list[str] = []

    @property
    def node_name(self) -> str:
        """This node."""
        return self._node

    @property
    def lease_seconds(self) -> float:
        """The test lease."""
        return self._lease

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` at once (or fail while the database is down)."""
        self.calls.append(fn.__name__)
        if self.db.down:
            raise JournalError("connection refused")
        return fn(*args)

    def _now(self) -> datetime:
        return self.db.clock.now()

    def heartbeat(self, info: NodeInfo) -> datetime:
        """Note this node alive."""
        self.db.beats[self._node] = self._now()
        self.db.left.discard(self._node)
        return self._now()

    def renew(self) -> set[str]:
        """Extend the leases whose epoch is unchanged."""
        self.renews += 1
        kept: dict[str, int] = {}
        for server, epoch in self._held.items():
            lease = self.db.leases.get(server)
            if lease and lease.node == self._node and lease.epoch == epoch:
                until = self._now() + timedelta(seconds=self._lease)
                self.db.leases[server] = replace(lease, expires_at=until)
                kept[server] = epoch
        self._held = kept
        return set(kept)

    def take(self, servers: Sequence[str], limit: int) -> list[Takeover]:
        """Take free or expired leases, epoch + 1."""
        taken: list[Takeover] = []
        for server in servers:
            if len(taken) >= limit:
                break
            old = self.db.leases.get(server)
            free = (
                old is None or old.expires_at < self._now() or old.node in self.db.left
            )
            if not free:
                continue
            epoch = (old.epoch if old else 0) + 1
            until = self._now() + timedelta(seconds=self._lease)
            self.db.leases[server] = Lease(server, self._node, epoch, until)
            self._held[server] = epoch
            expired = old is not None and server not in self.db.released
            self.db.released.discard(server)
            taken.append(
                Takeover(server, epoch, old.node if old else None, expired=expired)
            )
        return taken

    def release(self, servers: Sequence[str]) -> None:
        """Expire these leases now, keeping node and epoch."""
        for server in servers:
            if self._held.pop(server, None) is not None:
                lease = self.db.leases[server]
                gone = self._now() - timedelta(microseconds=1)
                self.db.leases[server] = replace(lease, expires_at=gone)
                self.db.released.add(server)

    def leave(self) -> None:
        """Release everything and mark this node left."""
        self.release(list(self._held))
        self.db.left.add(self._node)

    def held(self) -> dict[str, int]:
        """This node's leases and epochs."""
        return dict(self._held)

    def leases(self) -> list[Lease]:
        """Every lease."""
        return sorted(self.db.leases.values(), key=lambda lease: lease.server)

    def nodes(self) -> list[NodeRow]:
        """Every node, alive if it beat within a lease."""
        rows = []
        for name, beat in sorted(self.db.beats.items()):
            alive = name not in self.db.left and beat > self._now() - timedelta(
                seconds=self._lease
            )
            rows.append(NodeRow(name, "1", "h", 1, beat, beat, alive, 0))
        return rows

    def load_states(self) -> dict[str, dict[str, Any]]:
        """Every stored state."""
        return dict(self.db.states)

    def load_state(self, server: str) -> dict[str, Any] | None:
        """The stored state of one server."""
        return self.db.states.get(server)


@dataclass
class FakeFleet:
    """The follower: which servers it watches, with their states."""

    watched: dict[str, ServerState] = field(default_factory=dict)
    started: dict[str, ServerState] = field(default_factory=dict)
    log: list[tuple[str, ...]] = field(default_factory=list)

    def states(self) -> Mapping[str, ServerState]:
        """What is watched."""
        return dict(self.watched)

    async def follow(
        self, servers: Sequence[str], states: Mapping[str, ServerState]
    ) -> None:
        """Watch exactly ``servers``."""
        self.log.append(("follow", *servers))
        self.watched = {
            s: self.watched.get(s) or states.get(s) or ServerState() for s in servers
        }
        for s in servers:
            if s in states:
                self.started[s] = states[s]


def node(db: Db, name: str) -> tuple[LeaseKeeper, FakeStore, FakeFleet]:
    """A keeper on ``db`` with its store and fleet."""
    store = FakeStore(db, name)
    fleet = FakeFleet()
    info = NodeInfo(name, "1", "h", 1, db.clock.now())
    keeper = LeaseKeeper(store, lambda: SERVERS, fleet, db.clock, info=info)  # type: ignore[arg-type]
    return keeper, store, fleet


async def rounds(*keepers: LeaseKeeper, n: int = 3, clock: VirtualClock) -> None:
    """``n`` rounds of every keeper, time moving a round interval after each."""
    for _ in range(n):
        for keeper in keepers:
            await keeper.round()
        clock.advance(keeper.interval)


def test_the_round_interval_is_a_third_of_the_lease_at_most_a_second() -> None:
    """Rounds come every lease/3, never less often than every second."""
    assert round_interval(1.5) == 0.5
    assert round_interval(15.0) == 1.0


async def test_two_nodes_split_the_fleet_and_follow_their_leases() -> None:
    """Two nodes end up with five servers each, each watched by one of them."""
    db = Db(VirtualClock())
    a, _, fa = node(db, "a")
    b, sb, fb = node(db, "b")
    await rounds(a, b, clock=db.clock)
    assert len(fa.watched) == 5
    assert len(fb.watched) == 5
    assert "load_state" in sb.calls, "a few servers: one read each"
    assert set(fa.watched) | set(fb.watched) == set(SERVERS)
    assert a.stats().leases_held == 5
    assert a.stats().store_up


async def test_a_new_owner_resumes_from_the_stored_state() -> None:
    """The state of a server taken over is loaded from the store, marked resumed."""
    db = Db(VirtualClock())
    running = replace(ServerState(), phase=Phase.RESTORE_KEYSTORES)
    db.states["s3"] = running.to_dict()
    a, sa, fa = node(db, "a")
    await a.round()
    # Ten servers taken at once: their states are read in one query.
    assert "load_states" in sa.calls
    assert "load_state" not in sa.calls
    assert fa.started["s3"].phase is Phase.RESTORE_KEYSTORES
    assert fa.started["s3"].resumed
    assert fa.started["s0"] == ServerState()


async def test_a_dead_nodes_servers_are_taken_over_after_its_lease() -> None:
    """When a node stops renewing, a survivor takes its servers once they expire."""
    db = Db(VirtualClock())
    a, _, fa = node(db, "a")
    b, _, _ = node(db, "b")
    await rounds(a, b, clock=db.clock)
    # b dies: no more rounds from it.
    for _ in range(int(LEASE / a.interval)):
        await a.round()
        assert len(fa.watched) == 5, "b's leases have not expired yet"
        db.clock.advance(a.interval)
    db.clock.advance(a.interval)
    await a.round()
    assert set(fa.watched) == set(SERVERS)
    assert a.stats().takeovers == 5


async def test_leave_hands_every_server_to_a_peer_at_once() -> None:
    """A clean stop releases everything: the peer takes it in its next round."""
    db = Db(VirtualClock())
    a, _, fa = node(db, "a")
    b, _, _ = node(db, "b")
    await rounds(a, b, clock=db.clock)
    await b.leave()
    await a.round()
    assert set(fa.watched) == set(SERVERS)
    assert a.stats().handoffs == 5
    assert a.stats().takeovers == 0


async def test_a_lease_taken_over_stops_its_watch_and_counts_as_lost() -> None:
    """A server whose epoch moved on (we were paused) leaves the fleet."""
    db = Db(VirtualClock())
    a, _, fa = node(db, "a")
    await a.round()
    lease = db.leases["s1"]
    db.leases["s1"] = replace(lease, node="b", epoch=lease.epoch + 1)
    db.beats["b"] = db.clock.now()
    db.clock.advance(a.interval)  # the next renewal finds out
    await a.round()
    assert "s1" not in fa.watched
    assert a.stats().leases_lost == 1


async def test_surplus_is_released_after_its_watches_stopped() -> None:
    """A node above its share stops watching first, then releases."""
    db = Db(VirtualClock())
    a, sa, fa = node(db, "a")
    await a.round()
    assert len(fa.watched) == 10
    b, _, fb = node(db, "b")
    await b.round()  # b says it is alive; everything is held by a
    assert fb.watched == {}
    sa.calls.clear()
    plain_follow = fa.follow

    async def follow(servers: Sequence[str], states: Mapping[str, ServerState]) -> None:
        sa.calls.append(f"follow {len(servers)}")
        await plain_follow(servers, states)

    fa.follow = follow  # type: ignore[method-assign]
    await a.round()
    assert len(fa.watched) == 5
    steps = [c for c in sa.calls if c.startswith(("follow", "release"))]
    assert steps == ["follow 5", "release"], "watches stopped before release()"
    await b.round()
    assert len(fb.watched) == 5
    assert a.stats().released == 5
    assert b.stats().handoffs == 5


async def test_a_store_outage_keeps_polling_and_takes_nothing_for_a_lease_after() -> (
    None
):
    """Store down: fleet unchanged, failure reported; back: renew first, take later."""
    db = Db(VirtualClock())
    a, _, fa = node(db, "a")
    b, _, fb = node(db, "b")
    await rounds(a, b, clock=db.clock)
    db.down = True
    await a.round()
    await b.round()
    assert a.failure is not None
    assert not a.stats().store_up
    assert len(fa.watched) == 5
    db.clock.advance(LEASE * 3)  # every lease expired on the store's clock
    db.down = False
    await a.round()  # a comes back first: renews its own, takes none of b's
    assert a.stats().store_up
    assert len(fa.watched) == 5
    assert a.stats().store_failures == 1
    await b.round()
    assert len(fb.watched) == 5, "b renewed its leases: same epoch, nobody took them"
    for _ in range(int(LEASE / a.interval) + 2):
        db.clock.advance(a.interval)
        await a.round()
        await b.round()
    assert len(fa.watched) == 5
    assert len(fb.watched) == 5
    assert a.stats().takeovers == 0


async def test_a_balanced_quiet_node_does_not_read_every_lease_each_round() -> None:
    """Stable cluster: heartbeat, renew, nodes only; a full look once per lease."""
    db = Db(VirtualClock())
    a, sa, _ = node(db, "a")
    b, _, _ = node(db, "b")
    await rounds(a, b, clock=db.clock)
    sa.calls.clear()
    await a.round()
    assert sa.calls == ["_beat"], "heartbeat, renew and nodes in one trip"
    db.clock.advance(LEASE)
    await b.round()
    await a.round()
    assert "leases" in sa.calls, "the safety net: one full look per lease"


async def test_a_joining_node_makes_the_others_plan_at_once() -> None:
    """A change of the live nodes is noticed in the next round."""
    db = Db(VirtualClock())
    a, sa, fa = node(db, "a")
    await rounds(a, clock=db.clock)
    c, _, fc = node(db, "c")
    await c.round()
    sa.calls.clear()
    await a.round()
    assert "leases" in sa.calls
    assert len(fa.watched) == 5
    await c.round()
    assert len(fc.watched) == 5


async def test_a_dead_nodes_servers_are_taken_the_moment_its_leases_expire() -> None:
    """The keeper wakes at the dead peer's expiry, not up to a round later."""
    db = Db(VirtualClock())
    a, _, fa = node(db, "a")
    b, _, _ = node(db, "b")
    await rounds(a, b, clock=db.clock)
    # b's last renew was one round ago; its leases run out LEASE after it.
    expiry = db.clock.monotonic() - b.interval + LEASE
    taken_at: list[float] = []

    async def follow(servers: Sequence[str], states: Mapping[str, ServerState]) -> None:
        await FakeFleet.follow(fa, servers, states)
        if len(servers) == len(SERVERS) and not taken_at:
            taken_at.append(db.clock.monotonic())

    fa.follow = follow  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await db.clock.run_for(LEASE * 2)
        tg.cancel_scope.cancel()
    assert taken_at, "a took b's servers over"
    assert expiry <= taken_at[0] <= expiry + EXPIRY_MARGIN + 0.01


async def test_with_a_long_lease_renewal_runs_every_third_of_it_not_every_round() -> (
    None
):
    """Lease 15 s: a round every second (joins, stops), a renewal every 5 s."""
    db = Db(VirtualClock())
    store = FakeStore(db, "a", lease=15.0)
    fleet = FakeFleet()
    info = NodeInfo("a", "1", "h", 1, db.clock.now())
    keeper = LeaseKeeper(store, lambda: SERVERS, fleet, db.clock, info=info)  # type: ignore[arg-type]
    assert keeper.interval == 1.0
    for _ in range(15):
        await keeper.round()
        db.clock.advance(keeper.interval)
    assert store.renews == 3
    assert len(fleet.watched) == 10


async def test_a_round_that_crashes_is_logged_and_the_keeper_goes_on(
    logs: list[dict[str, object]],
) -> None:
    """The keeper is a supervision boundary: a bug in one round is not fatal."""
    db = Db(VirtualClock())
    a, _, fa = node(db, "a")
    plain_follow = fa.follow
    calls: list[int] = []

    async def follow(servers: Sequence[str], states: Mapping[str, ServerState]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        await plain_follow(servers, states)

    fa.follow = follow  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await db.clock.run_for(3 * a.interval)
        tg.cancel_scope.cancel()
    assert len(fa.watched) == 10
    assert [e["event"] for e in logs].count(KEEPER_CRASHED) == 1


async def test_a_take_lost_to_a_peer_is_retried_at_once_not_a_round_later() -> None:
    """Two survivors filling their shares at once: the one that lost a race retries."""
    db = Db(VirtualClock())
    gone = db.clock.now() - timedelta(seconds=1)
    for i, server in enumerate(SERVERS):
        db.leases[server] = Lease(server, "dead", i + 1, gone)
    db.beats["dead"] = gone - timedelta(seconds=LEASE)
    a, sa, fa = node(db, "a")
    _, sb, fb = node(db, "b")
    db.beats["a"] = db.beats["b"] = db.clock.now()
    plain_take = sa.take

    def racing_take(servers: Sequence[str], limit: int) -> list[Takeover]:
        # Like the real store: a reads its first ``limit`` candidates, b's take of
        # three of them commits first (once), and a's update gets the other two.
        first = list(servers)[:limit]
        if not sb.held():
            sb.take(first[:3], 3)
        return plain_take(first, limit)

    sa.take = racing_take  # type: ignore[method-assign]
    start = db.clock.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await db.clock.run_for(0.2)
        tg.cancel_scope.cancel()
    assert len(fa.watched) == 5
    assert db.clock.monotonic() - start < a.interval
    assert fb.watched == {}  # b's own keeper never ran; its 3 are in the store
    assert len(sb.held()) == 3
