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
    """A true sequence of restores and the observations a poller made of it.

    ``results`` holds, per observation, what ``restore/result`` would have answered
    then (as the simulator does: -1 after a (re)start until a restore ends, 0 from
    COMPLETED on, 1 after a failed restore). ``idle_ends`` are the indices of the
    last IDLE poll before each restore and of the last observation; ``phase_ends``
    the indices just after each restore's last phase poll.
    """

    restores: tuple[TrueRestore, ...]
    observations: tuple[Observation, ...]
    results: tuple[int, ...]
    idle_ends: tuple[int, ...]
    phase_ends: tuple[int, ...]


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
    results: list[int] = []
    idle_ends: list[int] = []
    phase_ends: list[int] = []
    result = -1

    def poll(phase: Phase | None, *, relogin: bool = False) -> None:
        nonlocal t
        results.append(result)
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
    idle_ends.append(len(observations) - 1)
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
            if phase is Phase.COMPLETED:
                result = 0
            for _ in range(counts[phase]):
                poll(phase)
        phase_ends.append(len(observations))
        if restart:
            result = -1
            for _ in range(draw(st.integers(0, 3))):
                poll(None)
        if not completed:
            result = 1
        # Back (after the restart, if any): the first answer comes on a new session.
        for i in range(draw(st.integers(1, 2))):
            poll(Phase.IDLE, relogin=restart and i == 0)
        idle_ends.append(len(observations) - 1)
        polled = frozenset(p for p, n in counts.items() if n)
        restores.append(TrueRestore(phases, completed, restart, polled))
    return History(
        tuple(restores),
        tuple(observations),
        tuple(results),
        tuple(idle_ends),
        tuple(phase_ends),
    )


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


def _outcomes(
    events: list[Event], restores: tuple[TrueRestore, ...]
) -> list[tuple[tuple[Phase, ...], bool, bool, int]]:
    """Per restore found in ``events``: phases, completed, failed, restarts."""
    starts = [e for e in events if e.type is EventType.RESTORE_STARTED]
    assert len(starts) == len(restores)
    found = []
    for start in starts:
        mine = [
            e for e in events if e.data.get("restore_id") == start.data["restore_id"]
        ]
        kinds = Counter(e.type for e in mine)
        phases = tuple(
            Phase[e.data["phase"]] for e in mine if e.type is EventType.RESTORE_PHASE
        )
        found.append(
            (
                phases,
                kinds[EventType.RESTORE_COMPLETED] == 1,
                kinds[EventType.RESTORE_FAILED] == 1,
                kinds[EventType.SERVER_RESTARTED],
            )
        )
    return found


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_resume_from_saved_state_repeats_nothing(
    history: History, data: st.DataObject
) -> None:
    """A daemon restart, resuming from the last saved state, re-emits nothing.

    The daemon is down from observation ``cut`` to ``back``; the polls in between
    never happen, so the downtime may swallow the end of a restore, its restart or
    both (never the start of the next one: some IDLE poll is always seen between
    two restores). The first answer afterwards carries the result hint the server
    would give then, as the scheduler fetches it.
    """
    observations = history.observations
    # Often right after a restore's last phase poll: a crash then hides its end.
    cut = data.draw(
        st.one_of(
            st.sampled_from(history.phase_ends), st.integers(1, len(observations))
        ),
        label="cut",
    )
    back = cut
    if cut < len(observations) and cut - 1 not in history.idle_ends:
        # Not a restore's first poll: down until that restore's last IDLE at most.
        end = min(i for i in history.idle_ends if i >= cut)
        back = data.draw(st.integers(cut, end), label="back")
    whole, _, _ = _run(observations)
    before, last, saved = _run(observations[:cut])
    # The new process's monotonic clock has another origin.
    shift = 17.0 - MONO0
    loaded = observations[back - 1]
    stored = json.loads(json.dumps(saved.to_dict()))
    resumed = ServerState.from_dict(
        stored, at=loaded.at, monotonic=loaded.monotonic + shift
    )
    later = [replace(o, monotonic=o.monotonic + shift) for o in observations[back:]]
    answered = next((i for i, o in enumerate(later) if o.phase is not None), None)
    if answered is not None:
        hint = history.results[back + answered]
        later[answered] = replace(later[answered], result=hint)
    after, _, _ = _run(tuple(later), resumed)
    assert not {e.id for e in before} & {e.id for e in after}
    assert last.restore_id == saved.restore_id

    def restore_ids(events: list[Event]) -> list[str]:
        return [e.id for e in events if e.type in _RESTORE_TYPES]

    resumed_ids = restore_ids(before) + restore_ids(after)
    if back == cut:
        # No poll missed: exactly what one uninterrupted process records.
        assert resumed_ids == restore_ids(whole)
    else:
        # Fewer phases may be known, but whatever is derived has the id it would
        # have had (so a journal holding it already skips it), in the same order.
        remaining = iter(restore_ids(whole))
        assert all(i in remaining for i in resumed_ids)
    # Each restore's outcome and restart are the truth; its phases in order, all
    # of them when it completed (the missed ones inferred), up to the last one
    # seen when it failed.
    for (phases, completed, failed, restarts), truth in zip(
        _outcomes(before + after, history.restores), history.restores, strict=True
    ):
        assert completed is truth.completed
        assert failed is not truth.completed
        assert restarts == int(truth.restart)
        assert phases == truth.phases[: len(phases)]
        if truth.completed:
            assert phases == truth.phases
