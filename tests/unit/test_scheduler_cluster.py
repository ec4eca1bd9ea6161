"""The fleet on a cluster node: starts empty, follows leases, stops a fenced server."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import anyio

from tests.clock import VirtualClock, settle
from tests.unit.test_scheduler import ListRecorder, ScriptedPoller, server
from watcher.errors import LeaseLost
from watcher.events import Event, EventType
from watcher.phases import Phase
from watcher.scheduler import WATCH_CRASHED, WATCH_FENCED, Fleet
from watcher.tracker import ServerState


def empty_fleet(
    clock: VirtualClock, pollers: dict[str, ScriptedPoller], recorder: object
) -> Fleet:
    """A cluster node's fleet: no servers until its leases say so."""
    return Fleet(
        [],
        pollers,
        recorder,  # type: ignore[arg-type]
        clock,
        rng=random.Random(1),
        jitter=0.0,
        first_poll_within=0.3,
    )


@dataclass
class FencingRecorder:
    """Records like ListRecorder, but refuses writes of servers in ``lost``.

    Like the daemon's JournalRecorder, it tells the fleet to stop the server first.
    """

    fleet: Fleet | None = None
    lost: set[str] = field(default_factory=set)
    calls: list[tuple[str, ServerState, tuple[Event, ...]]] = field(
        default_factory=list
    )

    async def record(
        self, server: str, state: ServerState, events: Sequence[Event]
    ) -> None:
        """Remember one call, or refuse it as a fenced write."""
        if server in self.lost:
            assert self.fleet is not None
            self.fleet.abandon(server)
            raise LeaseLost(server, "taken over by node b")
        self.calls.append((server, state, tuple(events)))


async def test_an_empty_fleet_runs_and_starts_what_reconfigure_adds() -> None:
    """An empty fleet runs and starts what reconfigure adds."""
    clock = VirtualClock()
    poller = ScriptedPoller(clock)
    fleet = empty_fleet(clock, {"a": poller}, ListRecorder())
    assert fleet.states() == {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet.run)
        await clock.run_for(10)
        assert poller.polled_at == []
        await fleet.reconfigure([server("a")], {"a": poller})
        assert fleet.watching() == {"a"}
        await clock.run_for(35)
        tg.cancel_scope.cancel()
    # A plain reconfigure (no state: not a takeover) spreads over the interval.
    assert 10 <= poller.polled_at[0] < 40


async def test_a_server_taken_over_resumes_its_state_and_is_polled_at_once() -> None:
    """A server taken over resumes its state and is polled at once."""
    clock = VirtualClock()
    # The old owner saw the restore start and its keystore phase, then died.
    old_poller = ScriptedPoller(
        clock,
        script=[Phase.IDLE, Phase.RESTORE_KEYSTORES],
        then=Phase.RESTORE_KEYSTORES,
    )
    old_recorder = ListRecorder()
    old = empty_fleet(clock, {"a": old_poller}, old_recorder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(old.run)
        await old.reconfigure(
            [server("a")], {"a": old_poller}, states={"a": ServerState()}
        )
        await clock.run_for(40)
        tg.cancel_scope.cancel()
    started = [e for e in old_recorder.events() if e.type is EventType.RESTORE_STARTED]
    assert len(started) == 1
    stored = old_recorder.calls[-1][1].to_dict()
    await clock.run_for(20)  # the lease expires; a survivor takes the server over
    state = ServerState.from_dict(stored, at=clock.now(), monotonic=clock.monotonic())

    poller = ScriptedPoller(clock, then=Phase.RESTORE_DATABASES)
    recorder = ListRecorder()
    fleet = empty_fleet(clock, {"a": poller}, recorder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet.run)
        taken_at = clock.monotonic()
        await fleet.reconfigure([server("a")], {"a": poller}, states={"a": state})
        assert fleet.states()["a"] is state
        await clock.run_for(2)
        tg.cancel_scope.cancel()
    # A running restore is polled at once (idle servers within 0.3 s).
    assert poller.polled_at[0] == taken_at
    # The restore continued: no second start, the next phase under the same id.
    types = [e.type for e in recorder.events()]
    assert EventType.RESTORE_STARTED not in types
    assert EventType.RESTORE_PHASE in types
    ids = {e.data.get("restore_id") for e in recorder.events()} - {None}
    assert ids == {started[0].data["restore_id"]}


async def test_states_are_ignored_for_servers_already_watched() -> None:
    """States are ignored for servers already watched."""
    clock = VirtualClock()
    poller = ScriptedPoller(clock)
    fleet = empty_fleet(clock, {"a": poller}, ListRecorder())
    await fleet.reconfigure([server("a")], {"a": poller})
    current = fleet.states()["a"]
    other = replace(ServerState(), phase=Phase.RESTORE_DATABASES)
    await fleet.reconfigure([server("a")], {"a": poller}, states={"a": other})
    assert fleet.states()["a"] is current


async def test_a_lost_lease_stops_the_watch_at_once_and_quietly(
    logs: list[dict[str, object]],
) -> None:
    """A lost lease stops the watch at once and quietly."""
    clock = VirtualClock()
    pa = ScriptedPoller(clock, script=[Phase.IDLE], then=Phase.RESTORE_DATABASES)
    pb = ScriptedPoller(clock, script=[Phase.IDLE], then=Phase.RESTORE_DATABASES)
    recorder = FencingRecorder()
    fleet = empty_fleet(clock, {"a": pa, "b": pb}, recorder)
    recorder.fleet = fleet
    recorder.lost.add("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet.run)
        await fleet.reconfigure([server("a"), server("b")], {"a": pa, "b": pb})
        await clock.run_for(120)
        await settle()
        assert fleet.watching() == {"b"}
        tg.cancel_scope.cancel()
    # a polled until its first write (the first answer) was refused, then never.
    assert len(pa.polled_at) == 1
    assert pa.logouts == 1
    assert len(pb.polled_at) > 2
    assert recorder.calls
    assert {c[0] for c in recorder.calls} == {"b"}
    events = [entry["event"] for entry in logs]
    assert WATCH_FENCED in events
    assert WATCH_CRASHED not in events


async def test_abandon_of_a_server_not_watched_is_a_no_op() -> None:
    """Abandoning a server not watched is a no-op."""
    clock = VirtualClock()
    fleet = empty_fleet(clock, {}, ListRecorder())
    assert fleet.abandon("nope") is False


async def test_a_server_abandoned_can_be_taken_again() -> None:
    """A server abandoned can be taken again."""
    clock = VirtualClock()
    poller = ScriptedPoller(clock)
    fleet = empty_fleet(clock, {"a": poller}, ListRecorder())
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet.run)
        await fleet.reconfigure([server("a")], {"a": poller})
        await clock.run_for(40)
        assert fleet.abandon("a") is True
        await settle()
        before = len(poller.polled_at)
        await clock.run_for(40)
        assert len(poller.polled_at) == before
        await fleet.reconfigure(
            [server("a")], {"a": poller}, states={"a": ServerState()}
        )
        await clock.run_for(1)
        tg.cancel_scope.cancel()
    assert len(poller.polled_at) == before + 1
