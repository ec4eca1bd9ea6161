from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

import watcher.scheduler
import watcher.tracker
from tests.clock import VirtualClock
from watcher.clock import SystemClock
from watcher.config import ServerConfig
from watcher.errors import (
    SklmAuthError,
    SklmError,
    SklmProtocolError,
    SklmTlsError,
    SklmUnreachable,
)
from watcher.events import Event, EventType
from watcher.phases import Phase, PollResult
from watcher.scheduler import (
    EVENT,
    POLL_FAILED,
    POLL_FAILING,
    POLL_OK,
    POLL_RECOVERED,
    WATCH_CRASHED,
    Fleet,
    ServerWatch,
    WatchStats,
)
from watcher.tracker import Failure, Observation, ServerState, Step

START = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
PATH = "/SKLM/rest/v1/ckms/restore/progress"


def server(name: str, **overrides: Any) -> ServerConfig:
    """Return a server config on loopback (nothing connects to it)."""
    return ServerConfig(name=name, url="http://127.0.0.1:9443", **overrides)


@dataclass
class ScriptedPoller:
    """A poller answering from a script: a phase, or an exception to raise.

    When the script runs out, ``then`` repeats forever.
    """

    clock: VirtualClock
    script: Iterable[Phase | BaseException] = ()
    then: Phase | BaseException = Phase.IDLE
    result: int | None = 0
    latency: float = 0.0
    relogin: bool = False
    polled_at: list[float] = field(default_factory=list)
    results_fetched_at: list[float] = field(default_factory=list)
    logouts: int = 0

    def __post_init__(self) -> None:
        self._script = iter(self.script)

    async def poll_phase(self) -> PollResult:
        """Return or raise the next scripted answer."""
        self.polled_at.append(self.clock.monotonic())
        if self.latency:
            await self.clock.sleep(self.latency)
        item = next(self._script, self.then)
        if isinstance(item, BaseException):
            raise item
        return PollResult(phase=item, relogin=self.relogin, path=PATH)

    async def restore_result(self) -> int | None:
        """Return the scripted result hint."""
        self.results_fetched_at.append(self.clock.monotonic())
        return self.result

    async def logout(self) -> None:
        """Count logouts."""
        self.logouts += 1


class BlockingPoller(ScriptedPoller):
    """A poller whose poll never answers (until cancelled)."""

    async def poll_phase(self) -> PollResult:
        """Block forever."""
        self.polled_at.append(self.clock.monotonic())
        await anyio.Event().wait()
        raise AssertionError("unreachable")


@dataclass
class ListRecorder:
    """A recorder that keeps what it was given; ``fail`` makes it raise."""

    calls: list[tuple[str, ServerState, tuple[Event, ...]]] = field(
        default_factory=list
    )
    fail: BaseException | None = None

    async def record(
        self, server: str, state: ServerState, events: Sequence[Event]
    ) -> None:
        """Remember one call (or fail)."""
        if self.fail is not None:
            raise self.fail
        self.calls.append((server, state, tuple(events)))

    def events(self) -> list[Event]:
        """Return every recorded event in order."""
        return [event for _, _, events in self.calls for event in events]


@dataclass
class TrackerSpy:
    """Wraps the real ``step``, keeping every observation and every step it made."""

    observations: list[Observation] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    def step(
        self, config: ServerConfig, state: ServerState, observation: Observation
    ) -> Step:
        """Step the real tracker and remember what happened."""
        outcome = watcher.tracker.step(config, state, observation)
        self.observations.append(observation)
        self.steps.append(outcome)
        return outcome


@pytest.fixture
def clock() -> VirtualClock:
    """Give a virtual clock starting at START."""
    return VirtualClock()


@pytest.fixture
def tracker(monkeypatch: pytest.MonkeyPatch) -> TrackerSpy:
    """Spy on the real tracker as the scheduler calls it."""
    spy = TrackerSpy()
    monkeypatch.setattr(watcher.scheduler, "step", spy.step)
    return spy


def fleet_of(
    clock: VirtualClock,
    pollers: dict[str, ScriptedPoller],
    recorder: ListRecorder,
    configs: Sequence[ServerConfig] | None = None,
    states: dict[str, Any] | None = None,
) -> Fleet:
    """Build a fleet without jitter and with a seeded generator."""
    return Fleet(
        configs or [server(name) for name in pollers],
        pollers,
        recorder,
        clock,
        states=states,
        rng=random.Random(1),
        jitter=0.0,
    )


async def run_for(fleet: Fleet, clock: VirtualClock, seconds: float) -> None:
    """Run ``fleet`` for ``seconds`` of virtual time, then cancel it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet.run)
        await clock.run_for(seconds)
        tg.cancel_scope.cancel()


def gaps(times: list[float]) -> list[float]:
    """Return the differences between consecutive times, rounded."""
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


# --- the loop -----------------------------------------------------------------


async def test_idle_server_polls_at_idle_interval_after_an_offset(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """An idle server's first poll lands within the first interval, then every 30 s."""
    poller = ScriptedPoller(clock)
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 300)
    assert 0 <= poller.polled_at[0] < 30
    assert gaps(poller.polled_at) == [30.0] * (len(poller.polled_at) - 1)
    assert len(poller.polled_at) == 10


async def test_restore_polls_burst_then_active_then_restart_watch(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """Phase changes burst, a running restore polls at 1 s, COMPLETED at 2 s."""
    script = [Phase.IDLE, Phase.INITIALIZE, *[Phase.INITIALIZE] * 5, Phase.COMPLETED]
    poller = ScriptedPoller(clock, script, then=Phase.COMPLETED)
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 60)
    assert gaps(poller.polled_at)[:12] == [
        30.0,  # IDLE -> INITIALIZE: idle interval
        *[0.25] * 4,  # burst after the transition
        1.0,  # active
        1.0,
        2.0,  # COMPLETED: restart watch
        2.0,
        2.0,
        2.0,
        2.0,
    ]


async def test_initial_offsets_spread_a_fleet_over_the_first_interval(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """Twenty idle servers start at distinct offsets within [0, idle_interval)."""
    pollers = {f"s{i}": ScriptedPoller(clock) for i in range(20)}
    await run_for(fleet_of(clock, pollers, ListRecorder()), clock, 29.999)
    firsts = [p.polled_at[0] for p in pollers.values()]
    assert all(len(p.polled_at) == 1 for p in pollers.values())
    assert len(set(firsts)) == 20
    assert all(0 <= t < 30 for t in firsts)
    assert max(firsts) - min(firsts) > 15


async def test_observation_is_stamped_with_clock_times_and_latency(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """The scheduler stamps at, monotonic and latency around the poll."""
    poller = ScriptedPoller(clock, [Phase.IDLE], latency=0.5, relogin=True)
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 30)
    [observation] = tracker.observations
    answered = poller.polled_at[0] + 0.5
    assert observation == Observation(
        at=START + timedelta(seconds=answered),
        monotonic=answered,
        latency=0.5,
        phase=Phase.IDLE,
        relogin=True,
    )


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (SklmUnreachable("a", "connection refused"), Failure.UNREACHABLE),
        (SklmProtocolError("a", "HTTP 500"), Failure.PROTOCOL),
        (SklmTlsError("a", "certificate verify failed"), Failure.TLS),
        (SklmAuthError("a", "CTGKM6003E"), Failure.AUTH),
        (SklmError("a", "something else"), Failure.PROTOCOL),
    ],
)
async def test_client_errors_become_failed_observations(
    clock: VirtualClock, tracker: TrackerSpy, error: SklmError, failure: Failure
) -> None:
    """Each client error class maps to its failure kind, its reason in words as detail.

    The error's ``detail``, not its message: that repeats the server name and adds
    the hint, and the detail is what status, events and logs show (issue 11).
    """
    poller = ScriptedPoller(clock, [error])
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 29.999)
    observation = tracker.observations[0]
    assert observation.failure is failure
    assert observation.detail == error.detail
    assert observation.phase is None


async def test_errors_back_off_and_recover(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """Failed polls back off exponentially; an answer returns to the idle interval.

    (unreachable_after is out of the way: its deadline would cut a backoff short.)
    """
    down = SklmUnreachable("a", "connection refused")
    poller = ScriptedPoller(clock, [Phase.IDLE, *[down] * 5, Phase.IDLE])
    configs = [server("a", unreachable_after=600.0)]
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder(), configs), clock, 200)
    assert gaps(poller.polled_at)[:8] == [30.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


async def test_auth_failure_waits_auth_retry_interval(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """Rejected credentials are retried only after auth_retry_interval."""
    rejected = SklmAuthError("a", "CTGKM6003E")
    poller = ScriptedPoller(clock, then=rejected)
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 1000)
    assert gaps(poller.polled_at) == [300.0, 300.0, 300.0]


# --- restore result and recording ------------------------------------------------


async def test_restore_result_fetched_only_when_a_restore_may_have_ended(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """The result hint is fetched once per restore that ends by going back.

    A live COMPLETED answer is journaled at once: the hint could not change it.
    """
    down = SklmUnreachable("a", "restarting")
    script: list[Phase | BaseException] = [
        Phase.IDLE,  # first answer: nothing to end
        Phase.IDLE,
        Phase.INITIALIZE,
        Phase.RESTORE_DATABASES,
        Phase.COMPLETED,  # reached COMPLETED: the signal itself, no fetch
        Phase.COMPLETED,  # still COMPLETED
        down,
        Phase.IDLE,  # back after the restart: the hint has reset, no fetch
        Phase.INITIALIZE,
        Phase.IDLE,  # dropped back to IDLE: a failed restore, fetch
        Phase.COMPLETED,  # straight from IDLE: a fast restore, no fetch
        down,
        Phase.IDLE,
        Phase.INITIALIZE,
        Phase.CLEANUP,
        down,  # gone after CLEANUP: the restart began before COMPLETED was seen
        Phase.IDLE,  # back: completed while away, fetch
        Phase.IDLE,
    ]
    poller = ScriptedPoller(clock, script, result=1)
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 600)
    fetched = [o.result == 1 for o in tracker.observations[: len(script)]]
    assert [i for i, hit in enumerate(fetched) if hit] == [9, 16]
    assert len(poller.results_fetched_at) == 2
    endings = [
        (event.type, event.data["result"])
        for outcome in tracker.steps
        for event in outcome.events
        if event.type in (EventType.RESTORE_COMPLETED, EventType.RESTORE_FAILED)
    ]
    assert endings == [
        (EventType.RESTORE_COMPLETED, None),
        (EventType.RESTORE_FAILED, 1),
        (EventType.RESTORE_COMPLETED, None),
        (EventType.RESTORE_COMPLETED, 1),
    ]


def loaded_after(*phases: Phase) -> ServerState:
    """The state an earlier process saved after polls answering ``phases``, loaded now."""
    config = server("a")
    state = ServerState()
    for i, phase in enumerate(phases):
        t = 10.0 * i - 600.0  # ten minutes before this process started
        observation = Observation(
            at=START + timedelta(seconds=t), monotonic=t, phase=phase
        )
        state = watcher.tracker.step(config, state, observation).state
    stored = json.loads(json.dumps(state.to_dict()))
    return ServerState.from_dict(stored, at=START, monotonic=0.0)


DOWN = SklmUnreachable("a", "connection refused")


@pytest.mark.parametrize(
    ("saved", "script", "fetched"),
    [
        pytest.param(
            (Phase.IDLE, Phase.RESTORE_KEYSTORES), [Phase.IDLE], [0], id="active-idle"
        ),
        pytest.param(
            (Phase.IDLE, Phase.RESTORE_KEYSTORES),
            [Phase.CREATE_TEMP_DIR],
            [0],
            id="active-lower",
        ),
        pytest.param(
            (Phase.IDLE, Phase.RESTORE_KEYSTORES),
            [Phase.COMPLETED],
            [0],
            id="active-completed",
        ),
        pytest.param(
            (Phase.IDLE, Phase.RESTORE_KEYSTORES),
            [Phase.RESTORE_KEYSTORES],
            [],
            id="active-same",
        ),
        pytest.param(
            (Phase.IDLE, Phase.RESTORE_KEYSTORES),
            [Phase.CLEANUP],
            [],
            id="active-later",
        ),
        pytest.param(
            (Phase.IDLE, Phase.RESTORE_KEYSTORES),
            [DOWN, Phase.IDLE],
            [1],
            id="after-a-failure",
        ),
        pytest.param(
            (Phase.IDLE, Phase.COMPLETED), [Phase.IDLE], [0], id="awaiting-idle"
        ),
        pytest.param(
            (Phase.IDLE, Phase.COMPLETED),
            [Phase.COMPLETED],
            [0],
            id="awaiting-completed",
        ),
        pytest.param((Phase.IDLE,), [Phase.IDLE], [], id="idle"),
        pytest.param(
            (Phase.IDLE, Phase.COMPLETED, Phase.IDLE), [Phase.IDLE], [], id="done"
        ),
    ],
)
async def test_restore_result_fetched_on_the_first_poll_after_resume(
    clock: VirtualClock,
    tracker: TrackerSpy,
    saved: tuple[Phase, ...],
    script: list[Phase | BaseException],
    fetched: list[int],
) -> None:
    """After a daemon restart the first answer that may follow an unseen end gets the hint."""
    poller = ScriptedPoller(clock, script, then=script[-1], result=-1)
    states = {"a": loaded_after(*saved)}
    await run_for(
        fleet_of(clock, {"a": poller}, ListRecorder(), states=states), clock, 60
    )
    assert len(tracker.observations) > len(script)
    hinted = [i for i, o in enumerate(tracker.observations) if o.result is not None]
    assert hinted == fetched
    assert len(poller.results_fetched_at) == len(fetched)
    assert not tracker.steps[-1].state.resumed


async def test_restore_completed_while_the_daemon_was_down_is_reported(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """A restore that completed and restarted the server during downtime is recorded."""
    poller = ScriptedPoller(clock, then=Phase.IDLE, result=-1)
    recorder = ListRecorder()
    states = {"a": loaded_after(Phase.IDLE, Phase.CLEANUP)}
    await run_for(fleet_of(clock, {"a": poller}, recorder, states=states), clock, 60)
    assert [
        (e.type, e.data.get("during_watcher_downtime")) for e in recorder.events()
    ] == [
        (EventType.RESTORE_PHASE, None),
        (EventType.RESTORE_COMPLETED, True),
        (EventType.SERVER_RESTARTED, True),
    ]
    assert [e.data.get("result") for e in recorder.events()] == [None, -1, -1]
    assert len(recorder.calls) == 1
    assert not tracker.steps[-1].state.resumed


async def test_recorder_called_only_when_the_step_says_save(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """The recorder gets exactly the steps marked save, and nothing per quiet poll."""
    down = SklmUnreachable("a", "connection refused")
    script: list[Phase | BaseException] = [
        *[Phase.IDLE] * 5,
        down,
        Phase.IDLE,
        Phase.INITIALIZE,
        *[Phase.INITIALIZE] * 10,
        Phase.CLEANUP,
    ]
    poller = ScriptedPoller(clock, script, then=Phase.CLEANUP)
    recorder = ListRecorder()
    await run_for(fleet_of(clock, {"a": poller}, recorder), clock, 300)
    saved = [("a", o.state, o.events) for o in tracker.steps if o.save]
    assert recorder.calls == saved
    assert len(saved) == 5  # first answer, outage, recovery, start, CLEANUP
    assert len(tracker.steps) > 30


async def test_recorder_failure_keeps_the_old_state_and_retries(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """If recording fails the state is not adopted, so the next poll derives the events again."""
    recorder = ListRecorder(fail=OSError("disk full"))
    poller = ScriptedPoller(clock, then=Phase.INITIALIZE)
    fleet = fleet_of(clock, {"a": poller}, recorder)
    await run_for(fleet, clock, 30)
    crashes = [entry for entry in logs if entry["event"] == WATCH_CRASHED]
    assert len(crashes) == len(poller.polled_at) > 3
    assert fleet.states()["a"] == ServerState()
    recorder.fail = None
    await run_for(fleet, clock, 30)
    assert [e.type for e in recorder.events()] == [
        EventType.RESTORE_STARTED,
        EventType.RESTORE_PHASE,
    ]
    assert fleet.states()["a"].phase is Phase.INITIALIZE
    assert fleet.states()["a"].restore_active


# --- supervision and cancellation ------------------------------------------------


async def test_one_servers_bug_does_not_stop_another_server(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """A poller raising RuntimeError every time is logged and retried; others poll on."""
    broken = ScriptedPoller(clock, then=RuntimeError("bug in the client"))
    healthy = ScriptedPoller(clock)
    fleet = fleet_of(clock, {"broken": broken, "healthy": healthy}, ListRecorder())
    await run_for(fleet, clock, 600)
    assert len(healthy.polled_at) == 20
    # Backoff: 1, 2, 4, ... capped at max_backoff, so about 15 tries in 10 minutes.
    assert 10 <= len(broken.polled_at) <= 20
    crashes = [entry for entry in logs if entry["event"] == WATCH_CRASHED]
    assert len(crashes) == len(broken.polled_at)
    assert {entry["server"] for entry in crashes} == {"broken"}
    assert all(entry["exc_info"] is True for entry in crashes)
    assert crashes[0]["log_level"] == "error"
    stats = fleet.stats()
    assert stats["broken"].crashes == len(broken.polled_at)
    assert stats["healthy"].crashes == 0


async def test_cancellation_propagates_out_of_a_blocked_poll(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """Cancelling Fleet.run ends it at once, even with a poll in flight, without a crash log."""
    stuck = BlockingPoller(clock)
    healthy = ScriptedPoller(clock)
    fleet = fleet_of(clock, {"stuck": stuck, "healthy": healthy}, ListRecorder())
    finished = False

    async def run() -> None:
        nonlocal finished
        await fleet.run()
        finished = True  # pragma: no cover - run never returns normally

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await clock.run_for(40)
        assert len(stuck.polled_at) == 1
        tg.cancel_scope.cancel()
    assert not finished
    assert not [entry for entry in logs if entry["event"] == WATCH_CRASHED]


async def test_cancellation_raised_inside_a_poll_is_not_swallowed(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """A cancellation surfacing from the poller propagates instead of being retried."""
    poller = ScriptedPoller(clock, then=asyncio.CancelledError())
    watch = ServerWatch(
        server("a"),
        poller,
        ListRecorder(),
        clock,
        state=ServerState(),
        rng=random.Random(0),
        jitter=0.0,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        await clock.run_for(30)
    assert len(poller.polled_at) == 1
    assert watch.crashes == 0


# --- logging and counters --------------------------------------------------------


async def test_logs_debug_per_poll_and_info_per_event(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """Polls log at debug; each recorded event logs one info line.

    The one failed poll in between is a failure transition: one warning when it
    starts, one info line when the server answers again (issue 11).
    """
    down = SklmUnreachable("a", "connection refused")
    poller = ScriptedPoller(clock, [Phase.IDLE, down, Phase.INITIALIZE])
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 35.1)
    polls = [e for e in logs if e["event"] in (POLL_OK, POLL_FAILED)]
    assert {e["log_level"] for e in polls} == {"debug"}
    assert [e["event"] for e in polls] == [POLL_OK, POLL_FAILED, POLL_OK]
    assert polls[1]["failure"] is Failure.UNREACHABLE
    infos = [e for e in logs if e["log_level"] == "info"]
    assert [
        (e["event"], e.get("type"), e["server"], e.get("phase")) for e in infos
    ] == [
        (POLL_RECOVERED, None, "a", None),
        (EVENT, "sklm.restore.started", "a", "INITIALIZE"),
        (EVENT, "sklm.restore.phase", "a", "INITIALIZE"),
    ]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == [POLL_FAILING]


async def test_stats_count_polls_and_keep_the_last_latency(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """Fleet.stats reports per-server poll counters and the last poll's time and latency."""
    down = SklmUnreachable("a", "connection refused")
    poller = ScriptedPoller(clock, [Phase.IDLE, down, down], latency=0.25)
    fleet = fleet_of(clock, {"a": poller}, ListRecorder())
    assert fleet.stats() == {"a": WatchStats(None, None, 0, 0, 0)}
    await run_for(fleet, clock, 40)
    last = poller.polled_at[-1] + 0.25
    assert fleet.stats()["a"] == WatchStats(
        last_poll_at=START + timedelta(seconds=last),
        last_latency=0.25,
        polls_ok=len(poller.polled_at) - 2,
        polls_failed=2,
        crashes=0,
    )


# --- fleet construction and reconfiguration ---------------------------------------


def test_fleet_rejects_bad_jitter_and_missing_pollers(clock: VirtualClock) -> None:
    """A jitter outside [0, 1] or a server without a poller is a ValueError."""
    poller = ScriptedPoller(clock)
    with pytest.raises(ValueError, match="jitter"):
        Fleet([server("a")], {"a": poller}, ListRecorder(), clock, jitter=2.0)
    with pytest.raises(ValueError, match="no poller for server b"):
        Fleet([server("b")], {"a": poller}, ListRecorder(), clock)


def test_fleet_resumes_from_given_states(clock: VirtualClock) -> None:
    """States passed in (from the journal) are the fleet's starting states."""
    resumed = replace(ServerState(), phase=Phase.RESTORE_KEYSTORES)
    pollers = {"a": ScriptedPoller(clock), "b": ScriptedPoller(clock)}
    fleet = fleet_of(clock, pollers, ListRecorder(), states={"a": resumed})
    assert fleet.states() == {"a": resumed, "b": ServerState()}


async def test_reconfigure_adds_removes_restarts_and_keeps_state(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """Reload starts new servers, stops removed ones, restarts changed ones with their state."""
    pollers = {
        "keep": ScriptedPoller(clock, then=Phase.IDLE),
        "drop": ScriptedPoller(clock),
        "change": ScriptedPoller(clock, then=Phase.RESTORE_DATABASES),
    }
    fleet = fleet_of(clock, pollers, ListRecorder())
    new_change = ScriptedPoller(clock, then=Phase.RESTORE_DATABASES)
    added = ScriptedPoller(clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet.run)
        await clock.run_for(60)
        keep_state = fleet.states()["keep"]
        change_state = fleet.states()["change"]
        assert change_state.phase is Phase.RESTORE_DATABASES
        polls = {name: len(p.polled_at) for name, p in pollers.items()}
        await fleet.reconfigure(
            [server("keep"), server("change", active_interval=0.5), server("new")],
            {"keep": pollers["keep"], "change": new_change, "new": added},
        )
        assert sorted(fleet.states()) == ["change", "keep", "new"]
        assert fleet.states()["keep"] is keep_state
        assert fleet.states()["change"] is change_state
        assert fleet.states()["new"] == ServerState()
        await clock.run_for(60)
        tg.cancel_scope.cancel()
    assert pollers["drop"].logouts == 1
    assert pollers["change"].logouts == 1
    assert pollers["keep"].logouts == 0
    assert len(pollers["drop"].polled_at) == polls["drop"]
    assert len(pollers["change"].polled_at) == polls["change"]
    # The unchanged server kept its rhythm; the changed one resumed mid-restore at 0.5 s.
    assert gaps(pollers["keep"].polled_at) == [30.0] * (
        len(pollers["keep"].polled_at) - 1
    )
    assert len(pollers["keep"].polled_at) == polls["keep"] + 2
    assert gaps(new_change.polled_at)[1:] == [0.5] * (len(new_change.polled_at) - 2)
    assert len(added.polled_at) >= 2
    # The restarted watch kept its counters.
    assert fleet.stats()["change"].polls_ok == polls["change"] + len(
        new_change.polled_at
    )


async def test_reconfigure_before_run_takes_effect_when_run_starts(
    clock: VirtualClock, tracker: TrackerSpy
) -> None:
    """A reload before the fleet runs just changes what run() will start."""
    first = ScriptedPoller(clock)
    second = ScriptedPoller(clock)
    fleet = fleet_of(clock, {"a": first}, ListRecorder())
    await fleet.reconfigure([server("b")], {"b": second})
    await run_for(fleet, clock, 30)
    assert first.polled_at == []
    assert first.logouts == 1
    assert len(second.polled_at) == 1


async def test_reconfigure_with_a_missing_poller_changes_nothing(
    clock: VirtualClock,
) -> None:
    """A reload naming a server without a poller is rejected before anything stops."""
    poller = ScriptedPoller(clock)
    fleet = fleet_of(clock, {"a": poller}, ListRecorder())
    with pytest.raises(ValueError, match="no poller for server b"):
        await fleet.reconfigure([server("b")], {"a": poller})
    assert sorted(fleet.states()) == ["a"]
    assert poller.logouts == 0


async def test_reconfigure_survives_a_logout_that_raises(
    clock: VirtualClock, logs: list[dict[str, Any]]
) -> None:
    """A removed server's broken logout is logged and the reload still completes."""

    class BrokenLogout(ScriptedPoller):
        async def logout(self) -> None:
            raise RuntimeError("logout bug")

    first = BrokenLogout(clock)
    second = ScriptedPoller(clock)
    fleet = fleet_of(clock, {"a": first}, ListRecorder())
    await fleet.reconfigure([server("b")], {"b": second})
    assert sorted(fleet.states()) == ["b"]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "watch.logout_failed"
    ]


async def test_reconfigure_logs_dropped_servers_out_side_by_side(
    clock: VirtualClock,
) -> None:
    """Logouts of dropped servers overlap (bounded), not one after another."""
    inside = 0
    all_inside = anyio.Event()

    class SlowLogout(ScriptedPoller):
        async def logout(self) -> None:
            nonlocal inside
            inside += 1
            if inside == 3:
                all_inside.set()
            # Serial logouts would never get a second one in here: deadlock.
            await all_inside.wait()
            await super().logout()

    old = {name: SlowLogout(clock) for name in ("a", "b", "c")}
    fleet = fleet_of(clock, dict(old), ListRecorder())
    replacement = ScriptedPoller(clock)
    with anyio.fail_after(10):  # a guard against the deadlock, not a timing
        await fleet.reconfigure([server("d")], {"d": replacement})
    assert [poller.logouts for poller in old.values()] == [1, 1, 1]


async def test_system_clock_reads_real_time() -> None:
    """SystemClock gives aware UTC now, a monotonic reading and a working sleep."""
    clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(0)
    assert clock.monotonic() >= before
    assert clock.now().tzinfo is UTC


# --- operator truth: transitions logged once, with the reason (issue 11) ----------


def transitions(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failure-transition log entries, whole."""
    return [e for e in logs if e["event"] in (POLL_FAILING, POLL_RECOVERED)]


REFUSED_HINT = "check that the server is up and reachable from this host"


async def test_first_failed_poll_warns_once_with_the_reason_and_recovery_says_how_long(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """One warning on the first failure (none on the next two), one info when back."""
    down = SklmUnreachable("a", "connection refused")
    poller = ScriptedPoller(clock, [Phase.IDLE, down, down, down, Phase.IDLE])
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 100)
    # Failures at T, T+1, T+3; the answer at T+7 (backoff 1, 2, 4).
    assert transitions(logs) == [
        {
            "event": POLL_FAILING,
            "log_level": "warning",
            "server": "a",
            "failure": "unreachable",
            "detail": "connection refused",
            "hint": REFUSED_HINT,
            "previous": None,
            "after_restore": False,
        },
        {
            "event": POLL_RECOVERED,
            "log_level": "info",
            "server": "a",
            "failure": "unreachable",
            "failed_for": 7.0,
            "failed_polls": 3,
        },
    ]


async def test_a_change_of_failure_kind_warns_again(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """Refused, refused, then a bad certificate twice: two warnings, one recovery."""
    down = SklmUnreachable("a", "connection refused")
    tls = SklmTlsError(
        "a", "certificate verify failed: unable to get local issuer certificate"
    )
    script: list[Phase | BaseException] = [Phase.IDLE, down, down, tls, tls]
    poller = ScriptedPoller(clock, [*script, Phase.IDLE])
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 100)
    assert [
        (e["event"], e["log_level"], e["failure"], e.get("previous"), e.get("detail"))
        for e in transitions(logs)
    ] == [
        (POLL_FAILING, "warning", "unreachable", None, "connection refused"),
        (
            POLL_FAILING,
            "warning",
            "tls",
            "unreachable",
            "certificate verify failed: unable to get local issuer certificate",
        ),
        (POLL_RECOVERED, "info", "tls", None, None),
    ]
    assert transitions(logs)[-1]["failed_polls"] == 4


async def test_failure_during_the_expected_restart_is_info_not_a_warning(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """After COMPLETED the server is expected away: its first failed poll is info."""
    down = SklmUnreachable("a", "connection refused")
    script: list[Phase | BaseException] = [Phase.IDLE, Phase.COMPLETED, down, down]
    poller = ScriptedPoller(clock, [*script, Phase.IDLE])
    await run_for(fleet_of(clock, {"a": poller}, ListRecorder()), clock, 100)
    assert [
        (e["event"], e["log_level"], e.get("after_restore")) for e in transitions(logs)
    ] == [(POLL_FAILING, "info", True), (POLL_RECOVERED, "info", None)]


async def test_unreachable_fires_at_unreachable_after_even_when_backoff_is_longer(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """Backoff 1, 2, 4, ... 32 would poll next at +63 s; the deadline poll is at +60.

    The event's detail is the reason in words, and its log line is a warning.
    """
    config = server("a", unreachable_after=60.0, max_backoff=300.0)
    down = SklmUnreachable("a", "connection refused")
    poller = ScriptedPoller(clock, [Phase.IDLE], then=down)
    recorder = ListRecorder()
    await run_for(fleet_of(clock, {"a": poller}, recorder, [config]), clock, 200)
    first_failure = poller.polled_at[1]
    unreachable = [
        e for e in recorder.events() if e.type is EventType.SERVER_UNREACHABLE
    ]
    assert len(unreachable) == 1
    data = unreachable[0].data
    assert data["down_for"] <= 60.0 + 0.01
    assert data["down_for"] >= 60.0
    assert data["detail"] == "connection refused"
    assert data["failure"] == "unreachable"
    offsets = [round(t - first_failure, 3) for t in poller.polled_at[1:8]]
    assert offsets == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 60.001]
    lines = [e for e in logs if e["event"] == EVENT]
    assert [(e["type"], e["log_level"], e["detail"]) for e in lines] == [
        ("sklm.server.unreachable", "warning", "connection refused")
    ]


async def test_auth_rejection_warns_once_and_recovery_is_logged(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """Rejected credentials three polls in a row: one warning; then auth.recovered."""
    rejected = SklmAuthError("a", "CTGKM6003E: invalid user name or password")
    poller = ScriptedPoller(clock, [Phase.IDLE, rejected, rejected, rejected])
    recorder = ListRecorder()
    await run_for(fleet_of(clock, {"a": poller}, recorder), clock, 1000)
    assert [(e["event"], e["log_level"], e["failure"]) for e in transitions(logs)] == [
        (POLL_FAILING, "warning", "auth"),
        (POLL_RECOVERED, "info", "auth"),
    ]
    assert [e.type for e in recorder.events()] == [
        EventType.AUTH_FAILED,
        EventType.AUTH_RECOVERED,
    ]
    levels = [(e["type"], e["log_level"]) for e in logs if e["event"] == EVENT]
    assert levels == [
        ("sklm.auth.failed", "warning"),
        ("sklm.auth.recovered", "info"),
    ]


async def test_a_reload_neither_repeats_the_failure_warning_nor_loses_the_recovery(
    clock: VirtualClock, tracker: TrackerSpy, logs: list[dict[str, Any]]
) -> None:
    """A server failing across a reload that restarts its watch: one warning, one info."""
    down = SklmUnreachable("a", "connection refused")
    poller = ScriptedPoller(clock, [Phase.IDLE, down, down, down], then=down)
    fleet = fleet_of(clock, {"a": poller}, ListRecorder())
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet.run)
        await clock.run_for(40)
        assert len(poller.polled_at) >= 3
        poller.then = Phase.IDLE
        await fleet.reconfigure([server("a", idle_interval=20.0)], {"a": poller})
        await clock.run_for(60)
        tg.cancel_scope.cancel()
    assert [(e["event"], e["log_level"]) for e in transitions(logs)] == [
        (POLL_FAILING, "warning"),
        (POLL_RECOVERED, "info"),
    ]
