"""Two daemons, one PostgreSQL store, the simulator on loopback: a cluster in one process.

Real PostgreSQL (the run's throwaway server), real HTTP to the simulator, real
time (leases are on PostgreSQL's clock). Every wait is on an observable condition
with a generous bound that only guards against a hang.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, cast

import anyio
import pytest

import watcher.daemon
from tests.integration.conftest import StartSimulator
from tests.pgserver import PostgresServer
from watcher.config import Config, Secret, ServerConfig, WatcherSettings
from watcher.daemon import Daemon
from watcher.events import Event, EventType
from watcher.notify import SystemdNotifier
from watcher.phases import Phase
from watcher.simulator import Simulator
from watcher.store import open_store
from watcher.store.base import ClusterStore, Store


class ClusterStoreReader(ClusterStore, Protocol):
    """The PostgreSQL store's extra read: which node wrote each server's state."""

    def state_nodes(self) -> dict[str, str]:
        """Server -> the node that stored its state last."""
        ...


LEASE = 1.5
#: Guards against a hang only; conditions normally hold within a few seconds.
BOUND = 30.0
SERVERS = 6
RESTORING = "c-001"

SCENARIO = {
    "servers": [
        {
            "name": "c",
            "count": SERVERS,
            # A restore whose phases last long enough to hand the server over in
            # the middle of it (started on demand by the test).
            "on_demand": {
                "phases": [[1, 0.3], [4, 2.0], [5, 4.0], [6, 0.3], [7, 0.5]],
                "restart_down": 0.5,
                "restart_starting": 0.5,
            },
        }
    ]
}


def config(
    tmp_path: Path, sim: Simulator, pg_url: str, node: str, **settings: object
) -> Config:
    """A cluster node's configuration over every simulated server."""
    servers = tuple(
        ServerConfig(
            name=name,
            url=server.url,
            password=Secret(server.spec.password),
            allow_insecure_http=True,
            idle_interval=0.5,
            active_interval=0.2,
            burst_interval=0.1,
            restart_interval=0.2,
            timeout=2.0,
        )
        for name, server in sim.servers.items()
    )
    state_dir = tmp_path / node
    state_dir.mkdir(exist_ok=True)
    watcher = WatcherSettings(
        state_dir=state_dir,
        audit_log=state_dir / "events.jsonl",
        store_url=Secret(pg_url),
        node_name=node,
        lease=LEASE,
        jitter=0.0,
        **settings,  # type: ignore[arg-type]
    )
    return Config(watcher=watcher, servers=servers)


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Check ``predicate`` every 50 ms until it holds; fail naming ``what`` on a hang."""
    with anyio.fail_after(BOUND):
        # Polling: the conditions live in other tasks' state and in PostgreSQL.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.05)
    assert predicate(), what


class RecordingNotifier(SystemdNotifier):
    """systemd's side of ``sd_notify``: keeps every datagram's fields."""

    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[dict[str, str]] = []

    def send(self, **fields: str) -> bool:
        """Keep the fields instead of sending them."""
        self.sent.append(fields)
        return True

    def statuses(self) -> list[str]:
        """Every STATUS= line sent so far."""
        return [f["STATUS"] for f in self.sent if "STATUS" in f]


@dataclass
class Node:
    """A running daemon and the scope that runs it."""

    daemon: Daemon
    scope: anyio.CancelScope
    done: anyio.Event
    notifier: RecordingNotifier

    def watching(self) -> set[str]:
        """The servers this node polls now."""
        fleet = self.daemon.fleet
        return fleet.watching() if fleet is not None else set()

    async def stop(self) -> None:
        """SIGTERM's path: a clean stop, and wait until run() returned."""
        self.daemon.stop()
        with anyio.fail_after(BOUND):
            await self.done.wait()


@asynccontextmanager
async def cluster() -> AsyncIterator[Callable[..., Node]]:
    """Start daemons in one task group; stop the ones still running at the end."""
    nodes: list[Node] = []
    async with anyio.create_task_group() as tg:

        def start(cfg: Config, reload: Callable[[], Config] | None = None) -> Node:
            notifier = RecordingNotifier()
            daemon = Daemon(cfg, reload=reload, handle_signals=False, notifier=notifier)
            node = Node(daemon, anyio.CancelScope(), anyio.Event(), notifier)
            nodes.append(node)
            tg.start_soon(_run, node)
            return node

        try:
            yield start
        finally:
            for node in nodes:
                node.daemon.stop()


async def _run(node: Node) -> None:
    try:
        with node.scope:
            await node.daemon.run()
    finally:
        node.done.set()


@contextmanager
def reader(cfg: Config) -> Iterator[Store]:
    """The store as the CLI's views open it (read-only)."""
    store = open_store(cfg.watcher, [], mode="read")
    try:
        yield store
    finally:
        store.close()


def server_events(cfg: Config, server: str) -> list[Event]:
    """Every stored event of ``server``, in store order."""
    with reader(cfg) as store:
        return store.events(server=server)


@pytest.fixture
async def sim(simulator: StartSimulator) -> Simulator:
    """The simulated fleet."""
    return await simulator(SCENARIO)


async def test_two_nodes_split_the_fleet_evenly(
    tmp_path: Path, sim: Simulator, pg_url: str
) -> None:
    """Each server is polled by exactly one node; three each."""
    names = set(sim.servers)
    async with cluster() as start:
        a = start(config(tmp_path, sim, pg_url, "node-a"))
        b = start(config(tmp_path, sim, pg_url, "node-b"))

        def split() -> bool:
            return (
                len(a.watching()) == len(b.watching()) == SERVERS // 2
                and a.watching() | b.watching() == names
            )

        await wait_until(split, "an even split")
        assert not a.watching() & b.watching()
        with reader(a.daemon.config) as store:
            leases = {
                lease.server: lease.node for lease in cast(ClusterStore, store).leases()
            }
        assert {s for s, n in leases.items() if n == "node-a"} == a.watching()
        assert {s for s, n in leases.items() if n == "node-b"} == b.watching()
        stats = a.daemon.cluster_stats()
        assert stats is not None
        assert stats.leases_held == SERVERS // 2
        assert stats.store_up
        # Every server got its first state from its owner (one poll each at least).
        await wait_until(
            lambda: len(a.daemon.states()) + len(b.daemon.states()) == SERVERS,
            "every server watched",
        )


async def test_a_clean_stop_hands_every_server_to_the_other_node_at_once(
    tmp_path: Path, sim: Simulator, pg_url: str
) -> None:
    """Stopping one node releases its leases: the other takes them as a hand-off."""
    names = set(sim.servers)
    async with cluster() as start:
        a = start(config(tmp_path, sim, pg_url, "node-a"))
        b = start(config(tmp_path, sim, pg_url, "node-b"))
        await wait_until(
            lambda: len(a.watching()) == len(b.watching()) == SERVERS // 2,
            "an even split",
        )
        before = a.daemon.cluster_stats()
        assert before is not None
        await b.stop()
        await wait_until(lambda: a.watching() == names, "node-a watching all")
        stats = a.daemon.cluster_stats()
        assert stats is not None
        # Released, not expired: a hand-off for each of b's servers, no takeover.
        # (The counters count from the start, which may have rebalanced already.)
        assert stats.handoffs - before.handoffs == SERVERS // 2
        assert stats.takeovers == before.takeovers == 0
        with reader(a.daemon.config) as store:
            rows = {n.name: n for n in cast(ClusterStore, store).nodes()}
        assert rows["node-b"].left_at is not None
        assert not rows["node-b"].alive


async def test_a_restore_continues_across_the_handover_as_one_history(
    tmp_path: Path, sim: Simulator, pg_url: str
) -> None:
    """The new owner resumes the running restore: one start, phases in order, one end."""
    async with cluster() as start:
        cfg_a = config(tmp_path, sim, pg_url, "node-a")
        cfg_b = config(tmp_path, sim, pg_url, "node-b")
        a = start(cfg_a)
        b = start(cfg_b)
        await wait_until(
            lambda: len(a.watching()) == len(b.watching()) == SERVERS // 2,
            "an even split",
        )
        first, second = (b, a) if RESTORING in b.watching() else (a, b)
        sim.server(RESTORING).start_restore()

        def seen(phase: Phase) -> bool:
            return any(
                e.type is EventType.RESTORE_PHASE and e.data.get("phase") == phase.name
                for e in server_events(cfg_a, RESTORING)
            )

        await wait_until(lambda: seen(Phase.RESTORE_KEYSTORES), "keystores recorded")
        # The scripted timing: the handover happens while the restore still runs.
        assert sim.server(RESTORING).phase() in (
            Phase.RESTORE_KEYSTORES,
            Phase.RESTORE_DATABASES,
        )
        stopped_at = time.monotonic()
        await first.stop()
        assert sim.server(RESTORING).phase() is not Phase.COMPLETED
        await wait_until(lambda: RESTORING in second.watching(), "the handover")

        def completed() -> bool:
            return any(
                e.type is EventType.RESTORE_COMPLETED
                for e in server_events(cfg_a, RESTORING)
            )

        await wait_until(completed, "the completion recorded")
        assert time.monotonic() > stopped_at
        with reader(cfg_a) as store:
            owners = cast(ClusterStoreReader, store).state_nodes()
        assert owners[RESTORING] == second.daemon.config.watcher.node_name
    events = server_events(cfg_a, RESTORING)
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "no event twice"
    restore = [e for e in events if e.data.get("restore_id")]
    starts = [e for e in restore if e.type is EventType.RESTORE_STARTED]
    assert len(starts) == 1
    assert {e.data["restore_id"] for e in restore} == {starts[0].data["restore_id"]}
    phases = [
        Phase[e.data["phase"]] for e in restore if e.type is EventType.RESTORE_PHASE
    ]
    assert phases == sorted(phases), "phases in order"
    assert phases[-1] >= Phase.RESTORE_DATABASES
    assert [e.type for e in restore].count(EventType.RESTORE_COMPLETED) == 1


async def test_a_store_outage_keeps_polling_queues_events_and_writes_them_on_return(
    tmp_path: Path,
    sim: Simulator,
    pg_url: str,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL stopped: nodes poll on, say so in /healthz; back: nothing lost."""
    # systemd's STATUS line is refreshed every 10 s; sooner here.
    monkeypatch.setattr(watcher.daemon, "STATUS_INTERVAL", 0.1)
    async with cluster() as start:
        cfg_a = config(tmp_path, sim, pg_url, "node-a")
        a = start(cfg_a)
        b = start(config(tmp_path, sim, pg_url, "node-b"))
        await wait_until(
            lambda: len(a.watching()) == len(b.watching()) == SERVERS // 2,
            "an even split",
        )
        before = (set(a.watching()), set(b.watching()))
        owner = a if RESTORING in a.watching() else b
        await anyio.to_thread.run_sync(
            lambda: postgres_server.pg_ctl("stop", mode="immediate")
        )
        try:
            sim.server(RESTORING).start_restore()

            def queued() -> bool:
                recorder = owner.daemon.recorder
                return recorder is not None and recorder.pending_events >= 2

            await wait_until(queued, "the restore's events queued in memory")

            def databases() -> bool:
                state = owner.daemon.states().get(RESTORING)
                return state is not None and state.phase is Phase.RESTORE_DATABASES

            # The script's phase 5 starts 2.3 s in: the outage outlasts the lease, so
            # every lease has expired on PostgreSQL's clock when it comes back.
            await wait_until(databases, "phase 5 seen while the store is down")
            await wait_until(lambda: owner.daemon.health() is not None, "unhealthy")
            problem = owner.daemon.health()
            assert problem is not None
            assert problem.startswith("store unreachable: ")
            assert "events waiting in memory" in problem
            assert pg_url not in problem

            def status_says_so() -> bool:
                return any(
                    "STORE UNREACHABLE" in line for line in owner.notifier.statuses()
                )

            await wait_until(status_says_so, "systemd's STATUS line")
            stats = owner.daemon.cluster_stats()
            assert stats is not None
            assert not stats.store_up
            # Still polling what it holds.
            assert RESTORING in owner.watching()
        finally:
            await anyio.to_thread.run_sync(lambda: postgres_server.pg_ctl("start"))

        def written() -> bool:
            recorder = owner.daemon.recorder
            return (
                recorder is not None
                and recorder.pending_events == 0
                and owner.daemon.health() is None
            )

        await wait_until(written, "the queue written after the store returned")
        # Renewed, not taken over: each node kept its own servers.
        assert (a.watching(), b.watching()) == before
        for node in (a, b):
            stats = node.daemon.cluster_stats()
            assert stats is not None
            assert stats.takeovers == 0
            assert stats.leases_lost == 0
    events = server_events(cfg_a, RESTORING)
    types = [e.type for e in events]
    assert types.count(EventType.RESTORE_STARTED) == 1
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))


async def test_a_dead_nodes_servers_are_taken_over_after_its_lease_expired(
    tmp_path: Path, sim: Simulator, pg_url: str
) -> None:
    """A node that stops without leaving: a survivor takes over once its leases expire.

    Cancelling the node's task stands in for ``kill -9`` here (no ``leave()``, its
    leases stay until they expire); the real signal is the e2e fault run's.
    """
    names = set(sim.servers)
    async with cluster() as start:
        cfg_a = config(tmp_path, sim, pg_url, "node-a")
        a = start(cfg_a)
        b = start(config(tmp_path, sim, pg_url, "node-b"))
        await wait_until(
            lambda: len(a.watching()) == len(b.watching()) == SERVERS // 2,
            "an even split",
        )
        dying, survivor = (b, a) if RESTORING in b.watching() else (a, b)
        sim.server(RESTORING).start_restore()

        def seen_keystores() -> bool:
            state = dying.daemon.states().get(RESTORING)
            return state is not None and state.phase is Phase.RESTORE_KEYSTORES

        await wait_until(seen_keystores, "the dying node saw phase 4")
        before = survivor.daemon.cluster_stats()
        assert before is not None
        dying.scope.cancel()
        with anyio.fail_after(BOUND):
            await dying.done.wait()
        assert sim.server(RESTORING).phase() is not Phase.COMPLETED
        await wait_until(lambda: survivor.watching() == names, "the takeover")
        stats = survivor.daemon.cluster_stats()
        assert stats is not None
        # Expired, not released: takeovers (the counters count from the start).
        assert stats.takeovers - before.takeovers == SERVERS // 2
        assert stats.handoffs == before.handoffs

        def completed() -> bool:
            return any(
                e.type is EventType.RESTORE_COMPLETED
                for e in server_events(cfg_a, RESTORING)
            )

        await wait_until(completed, "the completion recorded by the survivor")
    events = server_events(cfg_a, RESTORING)
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))
    restore = [e for e in events if e.data.get("restore_id")]
    assert [e.type for e in restore].count(EventType.RESTORE_STARTED) == 1
    assert len({e.data["restore_id"] for e in restore}) == 1
    phases = [
        Phase[e.data["phase"]] for e in restore if e.type is EventType.RESTORE_PHASE
    ]
    assert phases == sorted(phases)
    assert Phase.RESTORE_DATABASES in phases


async def test_a_reload_that_removes_servers_gives_their_leases_up(
    tmp_path: Path, sim: Simulator, pg_url: str
) -> None:
    """SIGHUP with a shorter server list: the removed ones are watched by nobody."""
    cfg_a = config(tmp_path, sim, pg_url, "node-a")
    cfg_b = config(tmp_path, sim, pg_url, "node-b")
    kept = {s.name for s in cfg_a.servers[:4]}

    def fewer(cfg: Config) -> Config:
        return replace(cfg, servers=cfg.servers[:4])

    async with cluster() as start:
        a = start(cfg_a, reload=lambda: fewer(cfg_a))
        b = start(cfg_b, reload=lambda: fewer(cfg_b))
        await wait_until(
            lambda: len(a.watching()) == len(b.watching()) == SERVERS // 2,
            "an even split",
        )
        assert await a.daemon.reload()
        assert await b.daemon.reload()
        await wait_until(
            lambda: (
                a.watching() | b.watching() == kept
                and len(a.watching()) == len(b.watching()) == 2
            ),
            "an even split of the servers kept",
        )

        def given_up() -> bool:
            with reader(cfg_a) as store:
                leases = cast(ClusterStore, store).leases()
            now = datetime.now(UTC)
            return not [
                lease
                for lease in leases
                if lease.server not in kept and lease.expires_at > now
            ]

        await wait_until(given_up, "the removed servers' leases given up")
        assert a.watching() | b.watching() == kept


async def test_a_node_that_stopped_renewing_is_fenced_and_stops_polling(
    tmp_path: Path, sim: Simulator, pg_url: str
) -> None:
    """A paused lease keeper (a GC pause, SIGSTOP): its late writes are refused.

    Node b keeps polling while its keeper does nothing, so its leases expire and
    node a takes them over; b's next write of the restoring server is fenced, and b
    stops polling that server at once. The restore stays one history.
    """
    async with cluster() as start:
        cfg_a = config(tmp_path, sim, pg_url, "node-a")
        a = start(cfg_a)
        b = start(config(tmp_path, sim, pg_url, "node-b"))
        await wait_until(
            lambda: len(a.watching()) == len(b.watching()) == SERVERS // 2,
            "an even split",
        )
        paused, survivor = (b, a) if RESTORING in b.watching() else (a, b)
        keeper = paused.daemon.keeper
        assert keeper is not None

        async def pause() -> None:
            await anyio.sleep_forever()

        keeper.round = pause  # type: ignore[method-assign]
        sim.server(RESTORING).start_restore()
        await wait_until(
            lambda: RESTORING in survivor.watching(), "the takeover by the survivor"
        )

        def fenced() -> bool:
            stats = paused.daemon.cluster_stats()
            return stats is not None and stats.fenced_writes >= 1

        await wait_until(fenced, "the paused node's late write refused")
        assert RESTORING not in paused.watching()

        def completed() -> bool:
            return any(
                e.type is EventType.RESTORE_COMPLETED
                for e in server_events(cfg_a, RESTORING)
            )

        await wait_until(completed, "the completion recorded")
    events = server_events(cfg_a, RESTORING)
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))
    restore = [e for e in events if e.data.get("restore_id")]
    assert [e.type for e in restore].count(EventType.RESTORE_STARTED) == 1
    assert [e.type for e in restore].count(EventType.RESTORE_COMPLETED) == 1
    phases = [
        Phase[e.data["phase"]] for e in restore if e.type is EventType.RESTORE_PHASE
    ]
    assert phases == sorted(phases)
