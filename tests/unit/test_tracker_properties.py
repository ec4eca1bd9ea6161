"""Property tests: random true restore histories, polled sparsely, read back right."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.config import ServerConfig
from watcher.events import Event, EventType
from watcher.phases import RESTORE_PHASES, Phase
from watcher.tracker import Failure, Observation, ServerState, step

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
MONO0 = 5000.0
CONFIG = ServerConfig(name="sklm-1", url="https://sklm1.example.com:9443")

_RESTORE_TYPES = frozenset(
    {
        EventType.RESTORE_STARTED,
        EventType.RESTORE_PHASE,
        EventType.RESTORE_COMPLETED,
        EventType.RESTORE_FAILED,
        EventType.SERVER_RESTARTED,
    }
)


@dataclass(frozen=True)
class TrueRestore:
    """What really happened in one restore, and which of its phases were polled."""

    phases: tuple[Phase, ...]
    completed: bool
    restart: bool
    polled: frozenset[Phase]


@dataclass(frozen=True)
class History:
    """A true sequence of restores and the observations a poller made of it."""

    restores: tuple[TrueRestore, ...]
    observations: tuple[Observation, ...]


@st.composite
def histories(draw: st.DrawFn) -> History:
    """Generate restores (completed, maybe restarting, or failed) and sparse polls.

    Some facts are unknowable from polls, so the subsampling keeps what is needed:
    an IDLE poll before and after every restore (else two restores merge); for a
    failed restore a poll in the phase it failed in (else a shorter restore failing
    earlier looks the same); for a completed one without restart a poll in
    COMPLETED (else it looks like one failing in its last polled phase), and with
    a restart a poll in CLEANUP or COMPLETED (the restart then proves completion).
    """
    t = 0
    observations: list[Observation] = []

    def poll(phase: Phase | None, *, relogin: bool = False) -> None:
        nonlocal t
        t += draw(st.integers(1, 120))
        at = T0 + timedelta(seconds=t)
        if phase is None:
            failure = draw(
                st.sampled_from([Failure.UNREACHABLE, Failure.PROTOCOL, Failure.TLS])
            )
            observations.append(
                Observation(at=at, monotonic=MONO0 + t, failure=failure, detail="x")
            )
        else:
            observations.append(
                Observation(at=at, monotonic=MONO0 + t, phase=phase, relogin=relogin)
            )

    for _ in range(draw(st.integers(1, 2))):
        poll(Phase.IDLE)
    restores: list[TrueRestore] = []
    for _ in range(draw(st.integers(1, 4))):
        completed = draw(st.booleans())
        restart = completed and draw(st.booleans())
        last = (
            Phase.COMPLETED if completed else draw(st.sampled_from(RESTORE_PHASES[:-1]))
        )
        phases = tuple(p for p in RESTORE_PHASES if p <= last)
        counts = {p: draw(st.integers(0, 2)) for p in phases}
        if not completed:
            counts[last] = max(counts[last], 1)
        elif not restart:
            counts[Phase.COMPLETED] = max(counts[Phase.COMPLETED], 1)
        elif counts[Phase.CLEANUP] + counts[Phase.COMPLETED] == 0:
            counts[draw(st.sampled_from([Phase.CLEANUP, Phase.COMPLETED]))] = 1
        for phase in phases:
            for _ in range(counts[phase]):
                poll(phase)
        if restart:
            for _ in range(draw(st.integers(0, 3))):
                poll(None)
        # Back (after the restart, if any): the first answer comes on a new session.
        for i in range(draw(st.integers(1, 2))):
            poll(Phase.IDLE, relogin=restart and i == 0)
        polled = frozenset(p for p, n in counts.items() if n)
        restores.append(TrueRestore(phases, completed, restart, polled))
    return History(tuple(restores), tuple(observations))


def _run(
    observations: tuple[Observation, ...], state: ServerState | None = None
) -> tuple[list[Event], ServerState, ServerState]:
    """Step through; return the events, the final state and the last saved state."""
    current = state if state is not None else ServerState()
    saved = current
    events: list[Event] = []
    for obs in observations:
        result = step(CONFIG, current, obs)
        events.extend(result.events)
        current = result.state
        if result.save:
            saved = current
    return events, current, saved


@settings(max_examples=300, deadline=None)
@given(histories())
def test_recorded_restores_match_the_truth(history: History) -> None:
    """Each restore's recorded phases, outcome and restart equal what happened."""
    events, _, _ = _run(history.observations)
    starts = [e for e in events if e.type is EventType.RESTORE_STARTED]
    assert len(starts) == len(history.restores)
    for start, truth in zip(starts, history.restores, strict=True):
        rid = start.data["restore_id"]
        mine = [e for e in events if e.data.get("restore_id") == rid]
        kinds = Counter(e.type for e in mine)
        phase_events = [e for e in mine if e.type is EventType.RESTORE_PHASE]
        # Exactly the true phases, each once, in order, observed iff polled.
        assert tuple(Phase[e.data["phase"]] for e in phase_events) == truth.phases
        observed = {
            Phase[e.data["phase"]] for e in phase_events if not e.data["inferred"]
        }
        assert observed == truth.polled
        assert kinds[EventType.RESTORE_COMPLETED] == int(truth.completed)
        assert kinds[EventType.RESTORE_FAILED] == int(not truth.completed)
        assert kinds[EventType.SERVER_RESTARTED] == int(truth.restart)
        # Started first; completed or failed after every phase of the restore.
        restore_events = [e for e in mine if e.type in _RESTORE_TYPES]
        assert restore_events[0] is start
        end = next(
            i
            for i, e in enumerate(restore_events)
            if e.type in {EventType.RESTORE_COMPLETED, EventType.RESTORE_FAILED}
        )
        assert all(e.type is not EventType.RESTORE_PHASE for e in restore_events[end:])


@settings(max_examples=300, deadline=None)
@given(histories())
def test_outage_events_pair_up_and_ids_are_unique(history: History) -> None:
    """Ids never repeat; each outage is reported at most once and recovers once."""
    events, _, _ = _run(history.observations)
    assert len({e.id for e in events}) == len(events)
    unreachable = Counter(
        e.id for e in events if e.type is EventType.SERVER_UNREACHABLE
    )
    recovered = [e for e in events if e.type is EventType.SERVER_RECOVERED]
    # Every history ends with a good poll, so every reported outage recovered.
    assert len(recovered) == len(unreachable)


@settings(max_examples=200, deadline=None)
@given(histories())
def test_repeated_observation_is_silent(history: History) -> None:
    """Stepping the same successful observation again yields nothing and no save."""
    state = ServerState()
    for obs in history.observations:
        state = step(CONFIG, state, obs).state
        if obs.phase is not None:
            again = step(CONFIG, state, obs)
            assert again.events == ()
            assert not again.save
            assert again.state == state


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_resume_from_saved_state_repeats_nothing(
    history: History, data: st.DataObject
) -> None:
    """A daemon restart, resuming from the last saved state, re-emits nothing."""
    cut = data.draw(st.integers(1, len(history.observations)))
    whole, _, _ = _run(history.observations)
    before, last, saved = _run(history.observations[:cut])
    # The new process's monotonic clock has another origin.
    shift = 17.0 - MONO0
    at_cut = history.observations[cut - 1]
    stored = json.loads(json.dumps(saved.to_dict()))
    resumed = ServerState.from_dict(
        stored, at=at_cut.at, monotonic=at_cut.monotonic + shift
    )
    later = tuple(
        replace(o, monotonic=o.monotonic + shift) for o in history.observations[cut:]
    )
    after, _, _ = _run(later, resumed)
    assert not {e.id for e in before} & {e.id for e in after}

    def restore_ids(events: list[Event]) -> list[str]:
        return [e.id for e in events if e.type in _RESTORE_TYPES]

    assert restore_ids(before) + restore_ids(after) == restore_ids(whole)
    assert last.restore_id == saved.restore_id
