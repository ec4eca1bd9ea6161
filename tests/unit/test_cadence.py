from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.cadence import (
    DEADLINE_MARGIN,
    Cadence,
    Mode,
    after_crash,
    backoff,
    check_jitter,
    initial_delay,
    jittered,
    jittered_below,
    next_poll,
    until_unreachable,
)
from watcher.config import ServerConfig
from watcher.phases import Phase
from watcher.tracker import Failure, Observation

AT = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
CONFIG = ServerConfig(name="sklm-1", url="http://127.0.0.1:9443")


@dataclass(frozen=True, slots=True)
class State:
    """The three things cadence reads from a tracker state."""

    phase: Phase | None = None
    restore_active: bool = False
    awaiting_restart: bool = False


IDLE = State(Phase.IDLE)
ACTIVE = State(Phase.RESTORE_KEYSTORES, restore_active=True)
RESTARTING = State(Phase.COMPLETED, awaiting_restart=True)


def seen(phase: Phase) -> Observation:
    """Return a successful poll that saw ``phase``."""
    return Observation(at=AT, monotonic=0.0, phase=phase)


def failed(failure: Failure = Failure.UNREACHABLE) -> Observation:
    """Return a failed poll."""
    return Observation(at=AT, monotonic=0.0, failure=failure, detail="boom")


def run(
    state: State,
    observations: list[Observation],
    cadence: Cadence,
    config: ServerConfig = CONFIG,
) -> tuple[list[float], Cadence]:
    """Feed observations (all against ``state``) with no jitter; return the delays."""
    rng = random.Random(0)
    delays = []
    for observation in observations:
        delay, cadence = next_poll(
            config, state, observation, cadence, rng=rng, jitter=0.0
        )
        delays.append(delay)
    return delays, cadence


def test_idle_server_polls_at_idle_interval_and_keeps_its_cadence_object() -> None:
    """An idle server that stays idle waits idle_interval and allocates no new cadence."""
    cadence = Cadence(last_phase=Phase.IDLE)
    delay, after = next_poll(
        CONFIG, IDLE, seen(Phase.IDLE), cadence, rng=random.Random(), jitter=0.0
    )
    assert delay == CONFIG.idle_interval
    assert after is cadence


def test_running_restore_polls_at_active_interval() -> None:
    """While a restore runs in an unchanged phase, the delay is active_interval."""
    cadence = Cadence(last_phase=Phase.RESTORE_KEYSTORES, mode=Mode.ACTIVE)
    delays, after = run(ACTIVE, [seen(Phase.RESTORE_KEYSTORES)] * 3, cadence)
    assert delays == [CONFIG.active_interval] * 3
    assert after is cadence


def test_transition_starts_a_burst_of_burst_polls_then_active() -> None:
    """After a phase change, exactly burst_polls polls run at burst_interval."""
    cadence = Cadence(last_phase=Phase.CREATE_TEMP_DIR, mode=Mode.ACTIVE)
    observations = [seen(Phase.RESTORE_KEYSTORES)] * 7
    delays, after = run(ACTIVE, observations, cadence)
    burst = [CONFIG.burst_interval] * CONFIG.burst_polls
    assert delays == [*burst, *[CONFIG.active_interval] * (7 - CONFIG.burst_polls)]
    assert after == Cadence(Phase.RESTORE_KEYSTORES, 0, 0, Mode.ACTIVE)


def test_new_transition_during_a_burst_restarts_it() -> None:
    """A second phase change inside a burst grants a full burst again."""
    cadence = Cadence(last_phase=Phase.INITIALIZE)
    observations = [seen(Phase.CREATE_TEMP_DIR)] * 2 + [
        seen(Phase.RESTORE_CONFIG_FILES)
    ] * 5
    delays, _ = run(ACTIVE, observations, cadence)
    assert delays == [CONFIG.burst_interval] * 6 + [CONFIG.active_interval]


def test_transition_to_idle_bursts_too() -> None:
    """Any transition bursts, including a restore dropping back to IDLE."""
    cadence = Cadence(last_phase=Phase.RESTORE_DATABASES, mode=Mode.ACTIVE)
    delays, _ = run(IDLE, [seen(Phase.IDLE)] * 5, cadence)
    assert delays == [CONFIG.burst_interval] * 4 + [CONFIG.idle_interval]


def test_burst_is_never_slower_than_the_steady_interval() -> None:
    """A burst_interval above active_interval falls back to active_interval."""
    config = ServerConfig(
        name="slow", url="http://127.0.0.1:1", burst_interval=5.0, active_interval=2.0
    )
    cadence = Cadence(last_phase=Phase.INITIALIZE)
    delays, _ = run(ACTIVE, [seen(Phase.CREATE_TEMP_DIR)], cadence, config)
    assert delays == [2.0]


def test_first_answer_is_not_a_transition() -> None:
    """With no phase seen before, the first answer starts no burst."""
    delays, after = run(ACTIVE, [seen(Phase.RESTORE_KEYSTORES)], Cadence())
    assert delays == [CONFIG.active_interval]
    assert after.last_phase is Phase.RESTORE_KEYSTORES


def test_awaiting_restart_polls_at_restart_interval_without_burst() -> None:
    """After COMPLETED the restart watch wins over the burst the transition earned."""
    cadence = Cadence(last_phase=Phase.CLEANUP, mode=Mode.BURST, burst_left=2)
    delays, after = run(RESTARTING, [seen(Phase.COMPLETED)] * 3, cadence)
    assert delays == [CONFIG.restart_interval] * 3
    assert after == Cadence(Phase.COMPLETED, 0, 0, Mode.RESTART)


def test_auth_failure_waits_auth_retry_interval_even_while_restoring() -> None:
    """Rejected credentials are not retried sooner than auth_retry_interval."""
    for state in (IDLE, ACTIVE, RESTARTING):
        delays, after = run(state, [failed(Failure.AUTH)] * 3, Cadence(Phase.IDLE))
        assert delays == [CONFIG.auth_retry_interval] * 3
        assert after == Cadence(Phase.IDLE, 0, 3, Mode.AUTH)


def test_backoff_doubles_from_one_second_up_to_max_backoff() -> None:
    """Errors on an idle server back off 1, 2, 4, ... seconds, capped at max_backoff."""
    for failure in (Failure.UNREACHABLE, Failure.PROTOCOL, Failure.TLS):
        delays, after = run(IDLE, [failed(failure)] * 8, Cadence(Phase.IDLE))
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
        assert after == Cadence(Phase.IDLE, 0, 8, Mode.BACKOFF)


def test_backoff_stays_close_while_a_restore_runs_or_the_server_restarts() -> None:
    """Errors never stretch polls past 4 * active_interval / restart_interval."""
    delays, _ = run(ACTIVE, [failed()] * 5, Cadence(Phase.RESTORE_KEYSTORES))
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    delays, _ = run(RESTARTING, [failed()] * 4, Cadence(Phase.COMPLETED))
    assert delays == [1.0, 2.0, 2.0, 2.0]


def test_first_backoff_follows_a_short_active_interval() -> None:
    """The first backoff is min(active_interval, 1.0)."""
    config = ServerConfig(name="fast", url="http://127.0.0.1:1", active_interval=0.5)
    delays, _ = run(IDLE, [failed()] * 4, Cadence(Phase.IDLE), config)
    assert delays == [0.5, 1.0, 2.0, 4.0]
    delays, _ = run(ACTIVE, [failed()] * 4, Cadence(Phase.IDLE), config)
    assert delays == [0.5, 1.0, 2.0, 2.0]


def test_huge_attempt_counts_stay_at_the_cap() -> None:
    """A server down for days does not overflow the backoff."""
    assert backoff(CONFIG, IDLE, 10_000) == CONFIG.max_backoff


def test_success_after_errors_resets_backoff() -> None:
    """One answer resets the error count; the next error starts at 1 s again."""
    observations = [failed(), failed(), failed(), seen(Phase.IDLE), failed()]
    delays, after = run(IDLE, observations, Cadence(Phase.IDLE))
    assert delays == [1.0, 2.0, 4.0, CONFIG.idle_interval, 1.0]
    assert after.error_attempt == 1


def test_error_interrupts_a_burst() -> None:
    """A failed poll ends a burst; the phase seen last is remembered."""
    cadence = Cadence(last_phase=Phase.INITIALIZE)
    observations = [seen(Phase.CREATE_TEMP_DIR), failed(), seen(Phase.CREATE_TEMP_DIR)]
    delays, after = run(ACTIVE, observations, cadence)
    assert delays == [CONFIG.burst_interval, 1.0, CONFIG.active_interval]
    assert after == Cadence(Phase.CREATE_TEMP_DIR, 0, 0, Mode.ACTIVE)


def test_crash_backs_off_like_an_error() -> None:
    """A crashed iteration is paced like a failed poll, with the same caps."""
    rng = random.Random(0)
    cadence = Cadence(Phase.RESTORE_KEYSTORES, burst_left=3)
    delays = []
    for _ in range(4):
        delay, cadence = after_crash(CONFIG, ACTIVE, cadence, rng=rng, jitter=0.0)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert cadence == Cadence(Phase.RESTORE_KEYSTORES, 0, 4, Mode.BACKOFF)


def test_start_resumes_from_the_tracker_state() -> None:
    """A loop resuming mid-restore remembers the phase, so a change bursts."""
    assert Cadence.start(ACTIVE) == Cadence(Phase.RESTORE_KEYSTORES, 0, 0, Mode.ACTIVE)
    assert Cadence.start(RESTARTING).mode is Mode.RESTART
    assert Cadence.start(State()) == Cadence()


@pytest.mark.parametrize(
    ("state", "interval"),
    [(IDLE, 30.0), (State(), 30.0), (ACTIVE, 1.0), (RESTARTING, 2.0)],
)
def test_initial_offsets_spread_over_the_first_interval(
    state: State, interval: float
) -> None:
    """First-poll offsets fall in [0, first interval) and cover it."""
    rng = random.Random(42)
    offsets = [initial_delay(CONFIG, state, rng) for _ in range(1000)]
    assert all(0.0 <= offset < interval for offset in offsets)
    assert min(offsets) < 0.01 * interval
    assert max(offsets) > 0.99 * interval
    # Spread, not clustered: each tenth of the interval holds some servers.
    assert {int(offset / interval * 10) for offset in offsets} == set(range(10))


@pytest.mark.parametrize("jitter", [-0.1, 1.5, float("nan"), float("inf")])
def test_jitter_outside_zero_to_one_is_rejected(jitter: float) -> None:
    """A jitter fraction outside [0, 1] is a ValueError."""
    with pytest.raises(ValueError, match="jitter"):
        check_jitter(jitter)


def test_zero_jitter_draws_nothing() -> None:
    """With jitter 0 the delay is exact and the generator is not consumed."""
    rng = random.Random(7)
    before = rng.getstate()
    assert jittered(30.0, 0.0, rng) == 30.0
    assert rng.getstate() == before


_SCENARIOS = [
    (IDLE, seen(Phase.IDLE), Cadence(Phase.IDLE), 30.0, None),
    (
        ACTIVE,
        seen(Phase.RESTORE_KEYSTORES),
        Cadence(Phase.RESTORE_KEYSTORES),
        1.0,
        None,
    ),
    (ACTIVE, seen(Phase.RESTORE_KEYSTORES), Cadence(Phase.INITIALIZE), 0.25, None),
    (RESTARTING, seen(Phase.COMPLETED), Cadence(Phase.COMPLETED), 2.0, None),
    (IDLE, failed(Failure.AUTH), Cadence(Phase.IDLE), 300.0, None),
    (IDLE, failed(), Cadence(Phase.IDLE, error_attempt=2), 4.0, 60.0),
    (IDLE, failed(), Cadence(Phase.IDLE, error_attempt=9), 60.0, 60.0),
    (ACTIVE, failed(), Cadence(Phase.IDLE, error_attempt=9), 4.0, 4.0),
    (RESTARTING, failed(), Cadence(Phase.IDLE, error_attempt=9), 2.0, 2.0),
]


@given(
    scenario=st.sampled_from(_SCENARIOS),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_jitter_stays_within_its_fraction_and_under_caps(
    scenario: tuple[State, Observation, Cadence, float, float | None],
    jitter: float,
    seed: int,
) -> None:
    """Every delay lies within ± jitter of its interval, and a backoff under its cap.

    Active, burst and restart intervals are never exceeded.
    """
    state, observation, cadence, interval, cap = scenario
    delay, _ = next_poll(
        CONFIG, state, observation, cadence, rng=random.Random(seed), jitter=jitter
    )
    low, high = interval * (1 - jitter), interval * (1 + jitter)
    if observation.failure is None and state is not IDLE:
        # Active, burst and restart intervals are ceilings: jitter only shortens them.
        high = interval
    assert low - 1e-9 <= delay <= high + 1e-9
    if cap is not None:
        assert delay <= cap
    assert delay >= 0.0


def test_jitter_spreads_delays_both_ways() -> None:
    """Jittered delays fall on both sides of the interval (the fleet desynchronises)."""
    rng = random.Random(3)
    delays = [jittered(10.0, 0.1, rng) for _ in range(200)]
    assert min(delays) < 9.5
    assert max(delays) > 10.5
    assert all(9.0 <= d <= 11.0 for d in delays)


def test_active_intervals_are_only_shortened_by_jitter() -> None:
    """While a restore runs, jitter spreads polls below the interval, never above."""
    rng = random.Random(5)
    delays = [jittered_below(1.0, 0.2, rng) for _ in range(200)]
    assert all(0.8 <= d <= 1.0 for d in delays)
    assert min(delays) < 0.85
    assert max(delays) > 0.95
    assert jittered_below(1.0, 0.0, rng) == 1.0


@dataclass(frozen=True, slots=True)
class Outage:
    """The three things until_unreachable reads from a tracker state."""

    outage_since_monotonic: float | None = 100.0
    unreachable_reported: bool = False
    awaiting_restart: bool = False


def test_until_unreachable_is_the_time_left_to_the_reporting_deadline() -> None:
    """unreachable_after (restart_timeout after a restore) from the outage's start."""
    config = ServerConfig(
        name="sklm-1",
        url="http://127.0.0.1:9443",
        unreachable_after=60.0,
        restart_timeout=900.0,
    )
    left = until_unreachable(config, Outage(), 131.0)
    assert left == pytest.approx(29.0 + DEADLINE_MARGIN)
    restart = until_unreachable(config, Outage(awaiting_restart=True), 131.0)
    assert restart == pytest.approx(869.0 + DEADLINE_MARGIN)
    assert until_unreachable(config, Outage(outage_since_monotonic=None), 131.0) is None
    assert until_unreachable(config, Outage(unreachable_reported=True), 131.0) is None
    # Past the deadline and unreported: no zero-delay spin, the backoff decides.
    assert until_unreachable(config, Outage(), 500.0) is None
