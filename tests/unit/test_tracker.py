from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watcher.config import ServerConfig
from watcher.events import Event, EventType, format_time, stable_id
from watcher.phases import Phase
from watcher.tracker import Failure, Observation, ServerState, Step, step

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
MONO0 = 5000.0
SERVER = "sklm-1"
CONFIG = ServerConfig(
    name=SERVER,
    url="https://sklm1.example.com:9443",
    stall_after=600.0,
    restart_timeout=300.0,
    unreachable_after=30.0,
)

IDLE = Phase.IDLE
INIT = Phase.INITIALIZE
TEMP = Phase.CREATE_TEMP_DIR
CONF = Phase.RESTORE_CONFIG_FILES
KEYS = Phase.RESTORE_KEYSTORES
DBS = Phase.RESTORE_DATABASES
CLEAN = Phase.CLEANUP
DONE = Phase.COMPLETED

Brief = tuple[str, str | None, bool | None]


def at(t: float) -> datetime:
    """The wall-clock instant t seconds after T0."""
    return T0 + timedelta(seconds=t)


def ts(t: float) -> str:
    """The contract's text for the instant t seconds after T0."""
    return format_time(at(t))


def ok(
    t: float, phase: Phase, *, relogin: bool = False, result: int | None = None
) -> Observation:
    """A successful poll at t seconds answering ``phase``."""
    return Observation(
        at=at(t), monotonic=MONO0 + t, phase=phase, relogin=relogin, result=result
    )


def down(
    t: float, failure: Failure = Failure.UNREACHABLE, detail: str = "refused"
) -> Observation:
    """A failed poll at t seconds."""
    return Observation(at=at(t), monotonic=MONO0 + t, failure=failure, detail=detail)


def seq(*phases: Phase) -> list[Observation]:
    """Phase observations ten seconds apart, from t=0."""
    return [ok(10.0 * i, p) for i, p in enumerate(phases)]


def feed(
    observations: Iterable[Observation],
    state: ServerState | None = None,
    config: ServerConfig = CONFIG,
) -> tuple[ServerState, list[Event], list[Step]]:
    """Step through ``observations``; return the final state, all events, each step."""
    current = state if state is not None else ServerState()
    events: list[Event] = []
    steps: list[Step] = []
    for obs in observations:
        result = step(config, current, obs)
        assert all(e.time == obs.at for e in result.events)
        if result.events:
            assert result.save
        current = result.state
        events.extend(result.events)
        steps.append(result)
    return current, events, steps


def brief(events: Sequence[Event]) -> list[Brief]:
    """Each event as (type without ``sklm.``, data.phase, data.inferred)."""
    return [
        (str(e.type).removeprefix("sklm."), e.data.get("phase"), e.data.get("inferred"))
        for e in events
    ]


def ph(phase: Phase, inferred: bool) -> Brief:
    """The brief of a phase event."""
    return ("restore.phase", phase.name, inferred)


def started(phase: Phase = INIT) -> Brief:
    """The brief of a started event."""
    return ("restore.started", phase.name, None)


def inferred_up_to(phase: Phase) -> list[Brief]:
    """Started, then INITIALIZE..phase-1 inferred, then phase observed."""
    return [
        started(),
        *(ph(Phase(c), True) for c in range(1, phase)),
        ph(phase, False),
    ]


def failed(phase: Phase) -> Brief:
    """The brief of a failed event."""
    return ("restore.failed", phase.name, None)


def restarted(phase: Phase) -> Brief:
    """The brief of a restarted event (phase seen on return)."""
    return ("server.restarted", phase.name, None)


COMPLETED = ("restore.completed", "COMPLETED", False)
COMPLETED_INFERRED = ("restore.completed", "COMPLETED", True)


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        pytest.param(
            seq(IDLE, INIT, TEMP, CONF, KEYS, DBS, CLEAN, DONE),
            [started(), *(ph(Phase(c), False) for c in range(1, 8)), COMPLETED],
            id="every-phase-observed",
        ),
        pytest.param(
            seq(IDLE, TEMP, DBS, DONE),
            [
                started(),
                ph(INIT, True),
                ph(TEMP, False),
                ph(CONF, True),
                ph(KEYS, True),
                ph(DBS, False),
                ph(CLEAN, True),
                ph(DONE, False),
                COMPLETED,
            ],
            id="gaps-inferred",
        ),
        pytest.param(
            seq(IDLE, DONE), [*inferred_up_to(DONE), COMPLETED], id="fast-restore"
        ),
        pytest.param(seq(IDLE, KEYS), inferred_up_to(KEYS), id="idle-to-keystores"),
        pytest.param(seq(IDLE, INIT), inferred_up_to(INIT), id="idle-to-initialize"),
        pytest.param(
            seq(KEYS, DBS, DONE),
            [
                started(KEYS),
                ph(KEYS, False),
                ph(DBS, False),
                ph(CLEAN, True),
                ph(DONE, False),
                COMPLETED,
            ],
            id="startup-mid-restore",
        ),
        pytest.param(
            seq(KEYS, IDLE),
            [started(KEYS), ph(KEYS, False), failed(KEYS)],
            id="startup-mid-restore-then-idle",
        ),
        pytest.param(seq(DONE, DONE, IDLE, IDLE), [], id="startup-completed"),
        pytest.param(seq(IDLE, IDLE, IDLE), [], id="startup-idle"),
        pytest.param(
            seq(IDLE, CONF, CONF, CONF), inferred_up_to(CONF), id="repeated-phase"
        ),
        pytest.param(
            [*seq(IDLE, DONE), down(20), down(25), ok(30, IDLE, relogin=True)],
            [*inferred_up_to(DONE), COMPLETED, restarted(IDLE)],
            id="restart-after-completed",
        ),
        pytest.param(
            [*seq(IDLE, DONE), down(20), down(25), ok(30, IDLE)],
            [*inferred_up_to(DONE), COMPLETED, restarted(IDLE)],
            id="restart-seen-as-gone-and-back-idle",
        ),
        pytest.param(
            [*seq(IDLE, DONE), ok(20, IDLE, relogin=True)],
            [*inferred_up_to(DONE), COMPLETED, restarted(IDLE)],
            id="restart-seen-as-relogin-only",
        ),
        pytest.param(
            seq(IDLE, DONE, IDLE, IDLE),
            [*inferred_up_to(DONE), COMPLETED],
            id="completed-then-idle-without-restart",
        ),
        pytest.param(
            [*seq(IDLE, DONE), down(20), ok(30, DONE), ok(40, DONE)],
            [*inferred_up_to(DONE), COMPLETED],
            id="completed-blip-is-not-the-restart",
        ),
        pytest.param(
            [*seq(IDLE, DONE, DONE), ok(30, DONE, relogin=True), ok(40, IDLE)],
            [*inferred_up_to(DONE), COMPLETED, restarted(DONE)],
            id="completed-restarted-still-completed",
        ),
        pytest.param(
            [*seq(IDLE, CLEAN), down(20), down(25), ok(30, IDLE)],
            [
                *inferred_up_to(CLEAN),
                ph(DONE, True),
                COMPLETED_INFERRED,
                restarted(IDLE),
            ],
            id="vanish-in-cleanup-back-idle",
        ),
        pytest.param(
            [*seq(IDLE, CLEAN), ok(20, IDLE, relogin=True)],
            [
                *inferred_up_to(CLEAN),
                ph(DONE, True),
                COMPLETED_INFERRED,
                restarted(IDLE),
            ],
            id="cleanup-then-relogin-idle",
        ),
        pytest.param(
            [*seq(IDLE, CLEAN), down(20), ok(30, CLEAN), ok(40, DONE)],
            [*inferred_up_to(CLEAN), ph(DONE, False), COMPLETED],
            id="cleanup-blip-back-in-cleanup",
        ),
        pytest.param(
            [*seq(IDLE, CLEAN), down(20), ok(30, DONE, relogin=True)],
            [*inferred_up_to(CLEAN), ph(DONE, False), COMPLETED, restarted(DONE)],
            id="cleanup-gone-back-completed-restarted",
        ),
        pytest.param(
            [*seq(IDLE, CLEAN), down(20), ok(30, CONF)],
            [
                *inferred_up_to(CLEAN),
                ph(DONE, True),
                COMPLETED_INFERRED,
                restarted(CONF),
                *inferred_up_to(CONF),
            ],
            id="cleanup-gone-back-in-a-new-restore",
        ),
        pytest.param(
            [*seq(IDLE, KEYS), down(20), down(25), ok(30, IDLE)],
            [*inferred_up_to(KEYS), failed(KEYS)],
            id="vanish-in-keystores-back-idle",
        ),
        pytest.param(
            [*seq(IDLE, KEYS), down(20), ok(30, KEYS), ok(40, DBS)],
            [*inferred_up_to(KEYS), ph(DBS, False)],
            id="keystores-blip-back-in-keystores",
        ),
        pytest.param(
            seq(IDLE, DBS, IDLE, IDLE),
            [*inferred_up_to(DBS), failed(DBS)],
            id="middle-phase-to-idle",
        ),
        pytest.param(
            [*seq(IDLE, CLEAN), ok(20, IDLE, result=0)],
            [*inferred_up_to(CLEAN), failed(CLEAN)],
            id="cleanup-to-idle-result-alone-is-not-trusted",
        ),
        pytest.param(
            seq(IDLE, DBS, TEMP),
            [*inferred_up_to(DBS), failed(DBS), *inferred_up_to(TEMP)],
            id="backwards",
        ),
        pytest.param(
            seq(IDLE, DONE, CONF),
            [*inferred_up_to(DONE), COMPLETED, *inferred_up_to(CONF)],
            id="completed-then-new-restore",
        ),
        pytest.param(
            [*seq(IDLE, DONE), down(20), ok(30, TEMP, relogin=True)],
            [*inferred_up_to(DONE), COMPLETED, restarted(TEMP), *inferred_up_to(TEMP)],
            id="completed-restart-then-new-restore",
        ),
        pytest.param(
            seq(IDLE, KEYS, IDLE, DONE, IDLE),
            [
                *inferred_up_to(KEYS),
                failed(KEYS),
                *inferred_up_to(DONE),
                COMPLETED,
            ],
            id="failed-then-completed",
        ),
    ],
)
def test_sequences(observations: list[Observation], expected: list[Brief]) -> None:
    """A sequence of observations produces exactly the expected events, in order."""
    _, events, _ = feed(observations)
    assert brief(events) == expected


def test_phase_event_data() -> None:
    """Phase events carry code, previous phase and the two polls bracketing them."""
    _, events, _ = feed(seq(IDLE, TEMP, DBS))
    rid = stable_id(SERVER, "restore", ts(10))
    inferred = events[3]
    assert inferred.time == at(20)
    assert dict(inferred.data) == {
        "server": SERVER,
        "restore_id": rid,
        "phase": "RESTORE_CONFIG_FILES",
        "code": 3,
        "previous_phase": "CREATE_TEMP_DIR",
        "inferred": True,
        "poll_at": ts(20),
        "previous_poll_at": ts(10),
    }
    assert dict(events[0].data) == {
        "server": SERVER,
        "restore_id": rid,
        "phase": "INITIALIZE",
        "code": 1,
        "seen_at_startup": False,
        "poll_at": ts(10),
    }
    assert dict(events[1].data)["previous_phase"] == "IDLE"
    assert dict(events[1].data)["previous_poll_at"] == ts(0)


def test_startup_phase_has_no_previous() -> None:
    """A restore seen at start-up reports its first phase with no previous phase."""
    _, events, _ = feed([ok(0, KEYS)])
    assert events[0].data["seen_at_startup"] is True
    assert events[1].data["previous_phase"] is None
    assert events[1].data["previous_poll_at"] is None


def test_completed_data_and_timeline() -> None:
    """The completed event sums the restore up, with each phase's duration."""
    obs = [ok(0, IDLE), ok(10, TEMP), ok(25, DBS), ok(100, DONE, result=0)]
    state, events, _ = feed(obs)
    rid = stable_id(SERVER, "restore", ts(10))
    completed = events[-1]
    assert completed.type is EventType.RESTORE_COMPLETED
    assert dict(completed.data) == {
        "server": SERVER,
        "restore_id": rid,
        "phase": "COMPLETED",
        "code": 7,
        "inferred": False,
        "started_at": ts(10),
        "duration": 90.0,
        "result": 0,
        "seen_at_startup": False,
        "during_watcher_downtime": False,
        "timeline": [
            _visit(INIT, True, 10, 0.0),
            _visit(TEMP, False, 10, 15.0),
            _visit(CONF, True, 25, 0.0),
            _visit(KEYS, True, 25, 0.0),
            _visit(DBS, False, 25, 75.0),
            _visit(CLEAN, True, 100, 0.0),
            _visit(DONE, False, 100, None),
        ],
    }
    assert state.phase is DONE
    assert state.restore_id == rid
    assert not state.restore_active
    assert state.awaiting_restart
    assert state.restore_started_at == at(10)


def _visit(phase: Phase, inferred: bool, t: float, duration: float | None) -> Any:
    return {
        "phase": phase.name,
        "code": int(phase),
        "inferred": inferred,
        "entered_at": ts(t),
        "duration": duration,
    }


@pytest.mark.parametrize(
    ("observations", "reason"),
    [
        pytest.param(
            seq(IDLE, DBS, IDLE),
            "progress went from RESTORE_DATABASES back to IDLE without reaching "
            "COMPLETED",
            id="back-to-idle",
        ),
        pytest.param(
            [*seq(IDLE, KEYS), down(20), ok(30, IDLE, result=1)],
            "the server stopped answering during RESTORE_KEYSTORES and came back "
            "IDLE without reaching COMPLETED (restore/result reports 1, failure)",
            id="vanished",
        ),
        pytest.param(
            [*seq(IDLE, KEYS), ok(20, IDLE, relogin=True)],
            "the server restarted during RESTORE_KEYSTORES (it rejected the "
            "watcher's session) and came back IDLE without reaching COMPLETED",
            id="restarted",
        ),
        pytest.param(
            seq(IDLE, DBS, TEMP),
            "progress went from RESTORE_DATABASES back to CREATE_TEMP_DIR: a new "
            "restore started before this one reached COMPLETED",
            id="backwards",
        ),
        pytest.param(
            [*seq(IDLE, CLEAN), ok(20, IDLE, result=0)],
            "progress went from CLEANUP back to IDLE without reaching COMPLETED "
            "(restore/result reports 0, success)",
            id="result-hint",
        ),
    ],
)
def test_failed_reason(observations: list[Observation], reason: str) -> None:
    """A failed restore says in a sentence why it is considered failed."""
    _, events, _ = feed(observations)
    (fail,) = [e for e in events if e.type is EventType.RESTORE_FAILED]
    assert fail.data["reason"] == reason


def test_failed_data() -> None:
    """The failed event carries the last phase, timeline, duration and hint."""
    state, events, _ = feed([ok(0, IDLE), ok(10, CONF), ok(70, IDLE, result=1)])
    assert dict(events[-1].data) == {
        "server": SERVER,
        "restore_id": stable_id(SERVER, "restore", ts(10)),
        "phase": "RESTORE_CONFIG_FILES",
        "code": 3,
        "reason": "progress went from RESTORE_CONFIG_FILES back to IDLE without "
        "reaching COMPLETED (restore/result reports 1, failure)",
        "started_at": ts(10),
        "duration": 60.0,
        "timeline": [
            _visit(INIT, True, 10, 0.0),
            _visit(TEMP, True, 10, 0.0),
            _visit(CONF, False, 10, None),
        ],
        "result": 1,
        "seen_at_startup": False,
        "during_watcher_downtime": False,
    }
    assert state.phase is IDLE
    assert not state.restore_active
    assert not state.awaiting_restart


def test_stall_reported_once_per_phase() -> None:
    """A phase outlasting stall_after is reported once; a failed poll can notice it."""
    obs = [
        ok(0, IDLE),
        ok(10, CONF),
        ok(500, CONF),
        ok(610, CONF),  # lasted 600: not longer than stall_after
        ok(611, CONF),
        ok(900, CONF),
        ok(1000, KEYS),
        ok(1500, KEYS),
        down(1601),
        down(1700),
    ]
    _, events, _ = feed(obs)
    assert brief(events) == [
        *inferred_up_to(CONF),
        ("restore.stalled", "RESTORE_CONFIG_FILES", None),
        ph(KEYS, False),
        ("restore.stalled", "RESTORE_KEYSTORES", None),
        ("server.unreachable", "RESTORE_KEYSTORES", None),
    ]
    stalled = events[4]
    assert stalled.time == at(611)
    assert dict(stalled.data) == {
        "server": SERVER,
        "restore_id": stable_id(SERVER, "restore", ts(10)),
        "phase": "RESTORE_CONFIG_FILES",
        "code": 3,
        "stalled_for": 601.0,
        "stall_after": 600.0,
        "since": ts(10),
    }


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        pytest.param(
            [ok(0, CONF), down(590), down(620)],
            ["restore.stalled", "server.unreachable"],
            id="stall-crossed-first",
        ),
        pytest.param(
            [ok(0, CONF), down(560), down(605)],
            ["server.unreachable", "restore.stalled"],
            id="unreachable-crossed-first",
        ),
    ],
)
def test_thresholds_in_causal_order(
    observations: list[Observation], expected: list[str]
) -> None:
    """When one poll crosses two thresholds, the one crossed first comes first."""
    _, events, _ = feed(observations)
    assert [str(e.type).removeprefix("sklm.") for e in events[2:]] == expected


def test_no_stall_for_idle_or_completed() -> None:
    """Neither IDLE nor COMPLETED can stall."""
    _, events, _ = feed([ok(0, IDLE), ok(5000, IDLE), ok(5010, DONE), ok(9000, DONE)])
    assert "restore.stalled" not in [t for t, _, _ in brief(events)]


def test_outage_reported_once() -> None:
    """Failures lasting unreachable_after give one unreachable, then one recovered."""
    obs = [
        ok(0, IDLE),
        down(10, Failure.PROTOCOL, "HTTP 500"),
        down(39),
        down(40, detail="connection reset"),
        down(70),
        ok(100, IDLE),
        ok(110, IDLE),
    ]
    state, events, _ = feed(obs)
    outage = stable_id(SERVER, "outage", ts(10))
    assert brief(events) == [
        ("server.unreachable", "IDLE", None),
        ("server.recovered", "IDLE", None),
    ]
    unreachable, recovered = events
    assert unreachable.time == at(40)
    assert unreachable.id == stable_id(
        SERVER, str(EventType.SERVER_UNREACHABLE), outage
    )
    assert dict(unreachable.data) == {
        "server": SERVER,
        "reason": "unreachable",
        "failure": "unreachable",
        "detail": "connection reset",
        "since": ts(10),
        "down_for": 30.0,
        "failures": 3,
        "after_restore": False,
        "restore_id": None,
        "phase": "IDLE",
    }
    assert recovered.id == stable_id(SERVER, str(EventType.SERVER_RECOVERED), outage)
    assert dict(recovered.data) == {
        "server": SERVER,
        "down_for": 90.0,
        "phase": "IDLE",
        "since": ts(10),
        "after_restore": False,
        "restore_id": None,
    }
    assert not state.failing
    assert state.outage_id is None


@pytest.mark.parametrize(
    "observations",
    [
        pytest.param([ok(0, IDLE), down(10), ok(20, IDLE)], id="one-failure"),
        pytest.param([ok(0, IDLE), down(10), ok(100, IDLE)], id="one-long-failure"),
        pytest.param(
            [ok(0, IDLE), down(10), down(20), ok(30, IDLE)], id="two-short-failures"
        ),
        pytest.param(
            [ok(0, KEYS), down(10), down(39), ok(40, KEYS)], id="mid-restore-blip"
        ),
    ],
)
def test_short_blip_is_silent(observations: list[Observation]) -> None:
    """Too few or too short failures report nothing."""
    _, events, _ = feed(observations)
    assert [e for e in events if e.type.startswith("sklm.server.")] == []


def test_restart_within_restart_timeout() -> None:
    """The restart after COMPLETED is not an outage while within restart_timeout."""
    obs = [
        *seq(IDLE, DONE),
        down(20),
        down(100),
        down(310),  # 290 s < restart_timeout
        ok(320, IDLE, relogin=True),
    ]
    state, events, _ = feed(obs)
    assert brief(events)[-2:] == [COMPLETED, restarted(IDLE)]
    assert dict(events[-1].data) == {
        "server": SERVER,
        "restore_id": stable_id(SERVER, "restore", ts(10)),
        "down_for": 300.0,
        "phase": "IDLE",
        "late": False,
        "result": None,
        "during_watcher_downtime": False,
    }
    assert not state.awaiting_restart


def test_restart_outlasting_restart_timeout() -> None:
    """A restart longer than restart_timeout is unreachable, then recovered and late."""
    obs = [
        *seq(IDLE, DONE),
        down(20),
        down(200),
        down(320),  # exactly restart_timeout: not yet longer
        down(321),
        down(400),
        ok(500, IDLE, relogin=True),
    ]
    state, events, _ = feed(obs)
    rid = stable_id(SERVER, "restore", ts(10))
    assert brief(events)[-4:] == [
        COMPLETED,
        ("server.unreachable", "COMPLETED", None),
        ("server.recovered", "IDLE", None),
        restarted(IDLE),
    ]
    unreachable = events[-3]
    assert unreachable.time == at(321)
    assert unreachable.data["after_restore"] is True
    assert unreachable.data["restore_id"] == rid
    assert unreachable.data["reason"] == (
        "the server did not come back within restart_timeout (300 s) after the restore"
    )
    assert events[-2].data["after_restore"] is True
    assert events[-1].data["late"] is True
    assert events[-1].data["down_for"] == 480.0
    assert not state.awaiting_restart


def test_vanish_in_cleanup_waits_for_restart_timeout() -> None:
    """Gone after CLEANUP is the expected restart: no stall, no early unreachable."""
    obs = [ok(0, IDLE), ok(10, CLEAN), down(20), down(200), down(700)]
    state, events, _ = feed(obs)
    assert brief(events)[-1] == ("server.unreachable", "CLEANUP", None)
    assert events[-1].data["after_restore"] is True
    assert state.awaiting_restart
    assert state.restore_active


def test_auth_failed_once_per_run() -> None:
    """Rejected credentials are reported once per run; a good poll ends the run.

    ... and says so (``sklm.auth.recovered``, issue 11).
    """
    bad = Failure.AUTH
    obs = [
        ok(0, IDLE),
        down(10, bad, "CTGKM6003E"),
        down(20, bad, "CTGKM6003E"),
        ok(30, IDLE),
        down(40, bad, "CTGKM6003E"),
        down(50, bad, "CTGKM6003E"),
    ]
    state, events, _ = feed(obs)
    assert brief(events) == [
        ("auth.failed", "IDLE", None),
        ("auth.recovered", "IDLE", None),
        ("auth.failed", "IDLE", None),
    ]
    assert dict(events[0].data) == {
        "server": SERVER,
        "detail": "CTGKM6003E",
        "phase": "IDLE",
    }
    assert events[0].id == stable_id(
        SERVER, str(EventType.AUTH_FAILED), stable_id(SERVER, "auth", ts(10))
    )
    assert events[2].id != events[0].id
    assert state.auth_failed
    assert not state.failing


def test_auth_is_not_an_outage() -> None:
    """However long credentials are rejected, the server is not called unreachable."""
    obs = [ok(0, IDLE), *(down(t, Failure.AUTH) for t in range(10, 400, 10))]
    state, events, steps = feed(obs)
    assert brief(events) == [("auth.failed", "IDLE", None)]
    assert state.consecutive_failures == 0
    assert [s.save for s in steps[2:]] == [False] * (len(steps) - 2)


def test_event_ids_follow_the_keys() -> None:
    """Event ids derive from the documented keys and are the same on every run."""
    obs = [*seq(IDLE, CONF, DONE), down(30), ok(40, IDLE, relogin=True)]
    _, first, _ = feed(obs)
    _, second, _ = feed(obs)
    assert [e.id for e in first] == [e.id for e in second]
    assert len({e.id for e in first}) == len(first)
    rid = stable_id(SERVER, "restore", ts(10))
    for event in first:
        key = (
            (rid, event.data["phase"])
            if event.type is EventType.RESTORE_PHASE
            else (rid,)
        )
        assert event.id == stable_id(SERVER, str(event.type), *key)


def test_save_only_on_durable_change() -> None:
    """Save is set for transitions, not for repeated polls or repeated failures."""
    obs = [
        ok(0, IDLE),  # first answer: phase learnt
        ok(10, IDLE),
        ok(20, IDLE),
        down(30),  # outage begins
        down(40),
        ok(50, IDLE),  # outage over
        ok(60, CONF),
        ok(70, CONF),
    ]
    _, _, steps = feed(obs)
    assert [s.save for s in steps] == [
        True,
        False,
        False,
        True,
        False,
        True,
        True,
        False,
    ]


def test_repeated_observation_changes_nothing() -> None:
    """The very same observation twice: no events, no save, the same state."""
    state, _, _ = feed(seq(IDLE, KEYS))
    again = step(CONFIG, state, ok(10, KEYS))
    assert again == Step(state=state, events=(), save=False)


def test_observation_needs_exactly_one_outcome() -> None:
    """An observation with neither or both of phase and failure is a bug."""
    with pytest.raises(ValueError, match="exactly one"):
        step(CONFIG, ServerState(), Observation(at=T0, monotonic=0.0))
    both = Observation(at=T0, monotonic=0.0, phase=IDLE, failure=Failure.TLS)
    with pytest.raises(ValueError, match="exactly one"):
        step(CONFIG, ServerState(), both)


# --- persistence -----------------------------------------------------------------


def _states_worth_saving() -> list[ServerState]:
    runs = [
        [],
        seq(IDLE),
        seq(IDLE, KEYS),
        [*seq(IDLE, CLEAN), down(20), down(60)],
        [*seq(IDLE, DONE), down(20), down(400)],
        [ok(0, CONF), down(10, Failure.AUTH)],
        seq(IDLE, DBS, IDLE),
    ]
    return [feed(obs)[0] for obs in runs]


@pytest.mark.parametrize("state", _states_worth_saving())
def test_to_dict_round_trip(state: ServerState) -> None:
    """A state survives JSON unchanged when restored at the moment it was saved."""
    saved = json.loads(json.dumps(state.to_dict()))
    last = state.last_ok_at or T0
    if state.outage_since_at is not None and state.outage_since_at > last:
        last = state.outage_since_at
    mono = MONO0 + (last - T0).total_seconds()
    assert "resumed" not in saved
    # Loading marks the state resumed (process-local, never saved); all else equal.
    restored = ServerState.from_dict(saved, at=last, monotonic=mono)
    assert restored == replace(state, resumed=True)


def test_from_dict_rebases_monotonic_readings() -> None:
    """Monotonic readings are rebased onto the new process's clock."""
    state, _, _ = feed([*seq(IDLE, CONF), down(20)])
    restored = ServerState.from_dict(state.to_dict(), at=at(1010), monotonic=7.0)
    assert restored.phase_since_monotonic == 7.0 - 1000
    assert restored.outage_since_monotonic == 7.0 - 990
    assert restored.timeline[0].entered_monotonic == 7.0 - 1000
    assert restored.consecutive_failures == 1


def test_resume_mid_restore_without_repeats() -> None:
    """After a daemon restart a restore resumes with its id and no repeated events."""
    before, first, _ = feed(seq(IDLE, TEMP))
    saved = json.loads(json.dumps(before.to_dict()))
    # The new process: its monotonic clock starts near zero, 100 s of wall time later.
    state = ServerState.from_dict(saved, at=at(110), monotonic=1.0)

    def later(t: float, phase: Phase) -> Observation:
        return Observation(at=at(t), monotonic=1.0 + t - 110, phase=phase)

    after, events, _ = feed(
        [later(110, TEMP), later(120, KEYS), later(700, KEYS), later(800, DONE)],
        state,
    )
    rid = stable_id(SERVER, "restore", ts(10))
    assert after.restore_id == rid
    assert brief(events) == [
        ph(CONF, True),
        ph(KEYS, False),
        ph(DBS, True),
        ph(CLEAN, True),
        ph(DONE, False),
        COMPLETED,
    ]
    assert {e.data["restore_id"] for e in events} == {rid}
    assert not {e.id for e in events} & {e.id for e in first}
    assert events[-1].data["duration"] == 790.0
    assert events[0].data["previous_poll_at"] == ts(110)


def test_resume_counts_downtime_towards_a_stall() -> None:
    """Time the daemon was down counts towards the current phase's stall."""
    before, _, _ = feed(seq(IDLE, TEMP))
    state = ServerState.from_dict(before.to_dict(), at=at(700), monotonic=1.0)
    obs = Observation(at=at(700), monotonic=1.0, phase=TEMP)
    result = step(CONFIG, state, obs)
    assert brief(result.events) == [("restore.stalled", "CREATE_TEMP_DIR", None)]
    assert result.events[0].data["stalled_for"] == 690.0


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"version": 99}, id="version"),
        pytest.param({"phase": "FAILED"}, id="phase-name"),
        pytest.param({"phase": 3}, id="phase-type"),
        pytest.param({"restore_active": "yes"}, id="bool"),
        pytest.param({"phase_since_at": 12}, id="time-type"),
        pytest.param({"phase_since_at": "yesterday"}, id="time-text"),
        pytest.param({"timeline": {}}, id="timeline-type"),
        pytest.param({"timeline": [{"phase": "IDLE"}]}, id="timeline-item"),
        pytest.param({"consecutive_failures": -1}, id="negative"),
        pytest.param({"consecutive_failures": "2"}, id="count-type"),
        pytest.param({"restore_id": 5}, id="str-type"),
    ],
)
def test_from_dict_rejects_garbage(bad: dict[str, Any]) -> None:
    """A stored state this version cannot read is a ValueError, whatever is wrong."""
    with pytest.raises(ValueError, match="tracker state"):
        ServerState.from_dict(bad, at=T0, monotonic=0.0)


def test_from_dict_empty_is_fresh() -> None:
    """An empty dict (every key missing) is a fresh state, marked resumed."""
    assert ServerState.from_dict({}, at=T0, monotonic=0.0) == ServerState(resumed=True)


# --- resuming after the watcher's own downtime (issue #3) ------------------------

#: When the new process loads the saved state (and polls for the first time).
T_RESUME = 500.0


def resumed_after(observations: Iterable[Observation]) -> ServerState:
    """The state a first process saved after ``observations``, loaded at T_RESUME."""
    before, _, _ = feed(observations)
    saved = json.loads(json.dumps(before.to_dict()))
    return ServerState.from_dict(saved, at=at(T_RESUME), monotonic=MONO0 + T_RESUME)


def first(phase: Phase, result: int | None = None) -> Observation:
    """The new process's first poll, at T_RESUME (a fresh login: no relogin)."""
    return ok(T_RESUME, phase, result=result)


def completed_while_down(prev: Phase, back: Phase) -> list[Brief]:
    """The phases after ``prev`` inferred, COMPLETED inferred, then the restart."""
    return [
        *(ph(Phase(c), True) for c in range(prev + 1, DONE + 1)),
        COMPLETED_INFERRED,
        restarted(back),
    ]


@pytest.mark.parametrize(
    ("saved", "after", "expected"),
    [
        pytest.param(seq(IDLE, KEYS), [first(KEYS)], [], id="same-phase-no-gap"),
        pytest.param(seq(IDLE), [first(IDLE)], [], id="idle-stays-idle"),
        pytest.param(
            seq(IDLE, KEYS),
            [first(CLEAN)],
            [ph(DBS, True), ph(CLEAN, False)],
            id="later-phase",
        ),
        pytest.param(
            seq(IDLE, KEYS),
            [first(DONE, result=0)],
            [ph(DBS, True), ph(CLEAN, True), ph(DONE, False), COMPLETED],
            id="later-completed",
        ),
        pytest.param(
            seq(IDLE, CLEAN),
            [first(IDLE, result=-1)],
            completed_while_down(CLEAN, IDLE),
            id="cleanup-idle-result-reset",
        ),
        pytest.param(
            seq(IDLE, CLEAN),
            [first(IDLE)],
            completed_while_down(CLEAN, IDLE),
            id="cleanup-idle-result-unavailable",
        ),
        pytest.param(
            seq(IDLE, CLEAN),
            [first(IDLE, result=0)],
            [ph(DONE, True), COMPLETED_INFERRED],
            id="cleanup-idle-completed-restart-pending",
        ),
        pytest.param(
            seq(IDLE, CLEAN),
            [first(IDLE, result=1)],
            [failed(CLEAN)],
            id="cleanup-idle-result-failed",
        ),
        pytest.param(
            [*seq(IDLE, CLEAN), down(20), down(25)],
            [first(IDLE)],
            completed_while_down(CLEAN, IDLE),
            id="cleanup-gone-then-down-then-idle",
        ),
        pytest.param(
            seq(IDLE, DBS),
            [first(IDLE, result=-1)],
            completed_while_down(DBS, IDLE),
            id="earlier-phase-result-reset",
        ),
        pytest.param(
            seq(IDLE, DBS),
            [first(IDLE, result=0)],
            [ph(CLEAN, True), ph(DONE, True), COMPLETED_INFERRED],
            id="earlier-phase-result-success",
        ),
        pytest.param(
            seq(IDLE, DBS),
            [first(IDLE, result=1)],
            [failed(DBS)],
            id="earlier-phase-result-failure",
        ),
        pytest.param(
            seq(IDLE, DBS),
            [first(IDLE)],
            [failed(DBS)],
            id="earlier-phase-result-unavailable",
        ),
        pytest.param(
            seq(IDLE, DBS),
            [down(T_RESUME), down(T_RESUME + 5), ok(T_RESUME + 10, IDLE, result=-1)],
            completed_while_down(DBS, IDLE),
            id="first-successful-observation-decides",
        ),
        pytest.param(
            seq(IDLE, DBS),
            [first(TEMP, result=-1)],
            [*completed_while_down(DBS, TEMP), *inferred_up_to(TEMP)],
            id="backwards-result-reset",
        ),
        pytest.param(
            seq(IDLE, DBS),
            [first(TEMP, result=1)],
            [failed(DBS), *inferred_up_to(TEMP)],
            id="backwards-result-failure",
        ),
        pytest.param(
            seq(IDLE, CLEAN),
            [first(CONF)],
            [*completed_while_down(CLEAN, CONF), *inferred_up_to(CONF)],
            id="backwards-from-cleanup",
        ),
        pytest.param(
            seq(IDLE, DONE),
            [first(IDLE, result=-1)],
            [restarted(IDLE)],
            id="awaiting-restart-idle",
        ),
        pytest.param(
            seq(IDLE, DONE),
            [first(IDLE)],
            [restarted(IDLE)],
            id="awaiting-restart-idle-result-unavailable",
        ),
        pytest.param(
            seq(IDLE, DONE),
            [first(IDLE, result=0)],
            [],
            id="awaiting-restart-idle-not-restarted-yet",
        ),
        pytest.param(
            seq(IDLE, DONE),
            [first(DONE, result=0)],
            [],
            id="awaiting-restart-still-completed",
        ),
        pytest.param(
            seq(IDLE, DONE),
            [first(CONF, result=-1)],
            [restarted(CONF), *inferred_up_to(CONF)],
            id="awaiting-restart-new-restore",
        ),
        pytest.param(
            seq(IDLE, DONE, IDLE),
            [first(IDLE)],
            [],
            id="completed-long-ago",
        ),
    ],
)
def test_resume_sequences(
    saved: list[Observation], after: list[Observation], expected: list[Brief]
) -> None:
    """The first answer after the daemon's downtime settles what the gap hid."""
    last, before, _ = feed(saved)
    state, events, steps = feed(after, resumed_after(saved))
    assert brief(events) == expected
    assert not state.resumed
    # Nothing the first process emitted is emitted again.
    assert not {e.id for e in before} & {e.id for e in events}
    if state.phase is last.phase and not expected:
        # No gap to speak of: not even a journal write.
        assert [s.save for s in steps] == [False] * len(steps)


@pytest.mark.parametrize(
    ("saved", "after", "awaiting"),
    [
        pytest.param(seq(IDLE, CLEAN), [first(IDLE, result=0)], True, id="pending"),
        pytest.param(seq(IDLE, CLEAN), [first(IDLE, result=-1)], False, id="reset"),
        pytest.param(seq(IDLE, DONE), [first(IDLE, result=0)], True, id="not-yet"),
        pytest.param(seq(IDLE, DONE), [first(DONE, result=0)], True, id="completed"),
        pytest.param(seq(IDLE, DBS), [first(IDLE, result=1)], False, id="failed"),
    ],
)
def test_resume_leaves_restart_expected(
    saved: list[Observation], after: list[Observation], awaiting: bool
) -> None:
    """A restore found completed with restore/result 0 still awaits its restart."""
    state, _, _ = feed(after, resumed_after(saved))
    assert not state.restore_active
    assert state.awaiting_restart is awaiting


def test_restart_pending_after_resume_is_seen() -> None:
    """While still IDLE, the pending restart is awaited; when it comes, it is reported."""
    state = resumed_after(seq(IDLE, DBS))
    later = [
        first(IDLE, result=0),
        ok(T_RESUME + 10, IDLE),
        down(T_RESUME + 20),
        ok(T_RESUME + 30, IDLE, relogin=True),
    ]
    state, events, _ = feed(later, state)
    assert brief(events) == [
        ph(CLEAN, True),
        ph(DONE, True),
        COMPLETED_INFERRED,
        restarted(IDLE),
    ]
    assert events[-1].data["during_watcher_downtime"] is False
    assert events[-1].data["down_for"] == 10.0
    assert not state.awaiting_restart


def test_restart_pending_after_resume_gives_up_after_restart_timeout() -> None:
    """A pending restart that never comes stops being awaited after restart_timeout."""
    state = resumed_after(seq(IDLE, DONE))
    later = [
        first(IDLE, result=0),
        ok(T_RESUME + 300, IDLE),  # exactly restart_timeout: still waiting
        ok(T_RESUME + 301, IDLE),
    ]
    state, events, steps = feed(later, state)
    assert events == []
    assert [s.state.awaiting_restart for s in steps] == [True, True, False]
    assert [s.save for s in steps] == [True, False, True]


def test_resume_completion_data() -> None:
    """Completion and restart across the downtime say so and carry the hint."""
    state = resumed_after(seq(IDLE, DBS))
    _, events, _ = feed([first(IDLE, result=-1)], state)
    rid = stable_id(SERVER, "restore", ts(10))
    clean, done, completed, restart = events
    assert dict(clean.data) == {
        "server": SERVER,
        "restore_id": rid,
        "phase": "CLEANUP",
        "code": 6,
        "previous_phase": "RESTORE_DATABASES",
        "inferred": True,
        "poll_at": ts(T_RESUME),
        "previous_poll_at": ts(10),
    }
    assert done.data["previous_phase"] == "CLEANUP"
    assert dict(completed.data) == {
        "server": SERVER,
        "restore_id": rid,
        "phase": "COMPLETED",
        "code": 7,
        "inferred": True,
        "started_at": ts(10),
        "duration": T_RESUME - 10,
        "result": -1,
        "seen_at_startup": False,
        "during_watcher_downtime": True,
        "timeline": [
            _visit(INIT, True, 10, 0.0),
            _visit(TEMP, True, 10, 0.0),
            _visit(CONF, True, 10, 0.0),
            _visit(KEYS, True, 10, 0.0),
            _visit(DBS, False, 10, T_RESUME - 10),
            _visit(CLEAN, True, T_RESUME, 0.0),
            _visit(DONE, True, T_RESUME, None),
        ],
    }
    assert dict(restart.data) == {
        "server": SERVER,
        "restore_id": rid,
        "down_for": None,
        "phase": "IDLE",
        "late": False,
        "result": -1,
        "during_watcher_downtime": True,
    }


def test_resume_restart_after_reported_outage_is_late() -> None:
    """An outage reported before the crash recovers, then the restart is late."""
    saved = [*seq(IDLE, DONE), down(20), down(400)]  # beyond restart_timeout
    _, before, _ = feed(saved)
    assert brief(before)[-1] == ("server.unreachable", "COMPLETED", None)
    _, events, _ = feed([first(IDLE, result=-1)], resumed_after(saved))
    assert brief(events) == [("server.recovered", "IDLE", None), restarted(IDLE)]
    assert events[0].data["down_for"] == T_RESUME - 20
    assert events[1].data["late"] is True
    assert events[1].data["down_for"] is None
    assert events[1].data["during_watcher_downtime"] is True


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        pytest.param(
            first(IDLE, result=1),
            "the restore failed while the watcher was down (restore/result reports "
            "1, failure)",
            id="failed",
        ),
        pytest.param(
            first(IDLE),
            "the restore ended while the watcher was down; outcome unknown "
            "(restore/result unavailable)",
            id="unavailable",
        ),
        pytest.param(
            first(IDLE, result=2),
            "the restore ended while the watcher was down; outcome unknown "
            "(restore/result reports 2)",
            id="unexpected-result",
        ),
        pytest.param(
            first(TEMP, result=1),
            "the restore failed while the watcher was down (restore/result reports "
            "1, failure); a new restore is running, now in CREATE_TEMP_DIR",
            id="new-restore",
        ),
    ],
)
def test_resume_failed_reason(after: Observation, reason: str) -> None:
    """A restore that ended unseen and not successfully says why it is failed."""
    _, events, _ = feed([after], resumed_after(seq(IDLE, KEYS)))
    (fail,) = [e for e in events if e.type is EventType.RESTORE_FAILED]
    assert fail.data["reason"] == reason
    assert fail.data["result"] == after.result
    assert fail.data["during_watcher_downtime"] is True
    assert fail.data["phase"] == "RESTORE_KEYSTORES"


@pytest.mark.parametrize(
    ("saved", "seen", "after"),
    [
        pytest.param(
            seq(IDLE, CLEAN),
            [down(20), ok(30, IDLE, relogin=True)],
            [first(IDLE, result=-1)],
            id="completed-and-restarted",
        ),
        pytest.param(
            seq(IDLE, DBS),
            [ok(20, IDLE, result=1)],
            [first(IDLE, result=1)],
            id="failed",
        ),
        pytest.param(
            seq(IDLE, DONE),
            [down(20), ok(30, IDLE)],
            [first(IDLE, result=-1)],
            id="restarted",
        ),
    ],
)
def test_resume_derives_the_ids_an_uninterrupted_run_gives(
    saved: list[Observation], seen: list[Observation], after: list[Observation]
) -> None:
    """An ending derived after a crash has the id it had if seen, so it is deduped."""
    _, watched, _ = feed([*saved, *seen])
    _, before, _ = feed(saved)
    _, derived, _ = feed(after, resumed_after(saved))
    ending = [e for e in watched if e not in before]
    assert [e.id for e in derived] == [e.id for e in ending]
    assert [e.type for e in derived] == [e.type for e in ending]


def test_resumed_flag_is_process_local() -> None:
    """Loading marks the state resumed; failures keep it; the first answer clears it."""
    state = resumed_after(seq(IDLE, KEYS))
    assert state.resumed
    assert "resumed" not in state.to_dict()
    failing = step(CONFIG, state, down(T_RESUME))
    assert failing.state.resumed
    answered = step(CONFIG, failing.state, ok(T_RESUME + 5, KEYS))
    assert not answered.state.resumed
    # Clearing the flag alone is no reason to write the journal.
    quiet = step(CONFIG, state, first(KEYS))
    assert not quiet.state.resumed
    assert quiet == Step(state=replace(state, resumed=False, last_ok_at=at(T_RESUME)))
