"""Clock jumps: durations come from the monotonic clock, event times from the wall."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from watcher.config import ServerConfig
from watcher.events import EventType
from watcher.phases import Phase
from watcher.tracker import Observation, ServerState, step

CONFIG = ServerConfig(name="s1", url="https://sklm.example", stall_after=60.0)
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def _run(observations: list[Observation]) -> list[tuple[EventType, datetime]]:
    state = ServerState()
    out: list[tuple[EventType, datetime]] = []
    for obs in observations:
        result = step(CONFIG, state, obs)
        state = result.state
        out.extend((e.type, e.time) for e in result.events)
    return out


def test_wall_clock_forward_jump_is_not_a_stall() -> None:
    """The wall clock jumping an hour ahead does not make a 10 s phase 'stalled'."""
    events = _run(
        [
            Observation(at=T0, monotonic=100.0, phase=Phase.IDLE),
            Observation(at=T0, monotonic=101.0, phase=Phase.RESTORE_KEYSTORES),
            Observation(
                at=T0 + timedelta(hours=1, seconds=10),
                monotonic=111.0,
                phase=Phase.RESTORE_KEYSTORES,
            ),
        ]
    )
    assert EventType.RESTORE_STALLED not in [t for t, _ in events]


def test_wall_clock_backward_jump_still_stalls_on_time_with_true_times() -> None:
    """An hour back on the wall: the stall fires after 60 monotonic s, stamped truthfully."""
    jumped = T0 - timedelta(hours=1)
    events = _run(
        [
            Observation(at=T0, monotonic=100.0, phase=Phase.IDLE),
            Observation(at=T0, monotonic=101.0, phase=Phase.RESTORE_KEYSTORES),
            Observation(at=jumped, monotonic=150.0, phase=Phase.RESTORE_KEYSTORES),
            Observation(
                at=jumped + timedelta(seconds=12),
                monotonic=162.0,
                phase=Phase.RESTORE_KEYSTORES,
            ),
        ]
    )
    stalls = [(t, at) for t, at in events if t is EventType.RESTORE_STALLED]
    assert stalls == [(EventType.RESTORE_STALLED, jumped + timedelta(seconds=12))]
