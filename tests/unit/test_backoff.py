from __future__ import annotations

import math
import random
import re

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from watcher.backoff import Backoff


def test_delays_grow_exponentially_up_to_the_maximum() -> None:
    """Without jitter the delays are initial * 2 ** (n - 1), capped at maximum."""
    policy = Backoff(initial=1.0, maximum=300.0)
    assert [policy.delay(n) for n in range(1, 12)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0,
    ]  # fmt: skip


def test_initial_and_exp_base_shape_the_curve() -> None:
    """A short initial and a base of 3 give 0.5, 1.5, 4.5, ... seconds."""
    policy = Backoff(initial=0.5, maximum=100.0, exp_base=3.0)
    assert [policy.delay(n) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]


def test_a_maximum_below_initial_wins() -> None:
    """The ceiling is hard: a cap tighter than the first delay is the delay."""
    assert Backoff(initial=1.0, maximum=0.25).delay(1) == 0.25


@pytest.mark.parametrize("attempt", [0, -3])
def test_attempt_counts_below_one_count_as_the_first(attempt: int) -> None:
    """Attempt 0 or below waits like attempt 1 (a counter that starts at 0)."""
    assert Backoff(initial=2.0).delay(attempt) == 2.0


def test_huge_attempt_counts_stay_at_the_maximum() -> None:
    """A peer down for days neither overflows nor exceeds the cap."""
    assert Backoff(maximum=300.0).delay(100_000) == 300.0
    assert Backoff(maximum=math.inf).delay(100_000) == math.inf


@pytest.mark.parametrize("attempt", range(1, 15))
def test_without_jitter_it_equals_tenacitys_exponential_jitter_at_zero(
    attempt: int,
) -> None:
    """The policy is tenacity's curve: the same numbers the old call sites computed."""
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    expected = tenacity.wait_exponential_jitter(max=300.0, jitter=0)(state)
    assert Backoff(initial=1.0, maximum=300.0).delay(attempt) == expected


def test_zero_jitter_draws_nothing() -> None:
    """Without jitter the random source is never consulted (cheap and predictable)."""
    rng = random.Random(7)
    before = rng.getstate()
    Backoff(rng=rng).delay(3)
    assert rng.getstate() == before


@given(
    seed=st.integers(0, 2**32),
    attempt=st.integers(1, 40),
    jitter=st.floats(0.01, 10.0),
)
def test_jitter_adds_at_most_jitter_and_never_passes_the_maximum(
    seed: int, attempt: int, jitter: float
) -> None:
    """A jittered delay lies in [base, base + jitter] and at or under the cap."""
    base = Backoff(initial=1.0, maximum=60.0).delay(attempt)
    delay = Backoff(
        initial=1.0, maximum=60.0, jitter=jitter, rng=random.Random(seed)
    ).delay(attempt)
    assert base <= delay <= min(base + jitter, 60.0)


def test_jitter_comes_from_the_injected_source_only() -> None:
    """Same seed, same delays; the global ``random`` is neither read nor advanced."""
    global_before = random.getstate()
    first = Backoff(jitter=1.0, rng=random.Random(42))
    second = Backoff(jitter=1.0, rng=random.Random(42))
    delays = [first.delay(n) for n in range(1, 6)]
    assert delays == [second.delay(n) for n in range(1, 6)]
    assert random.getstate() == global_before
    assert len(set(delays)) == 5


def test_policies_compare_by_their_parameters() -> None:
    """Two policies with the same numbers are equal, whatever their random source."""
    assert Backoff(jitter=1.0, rng=random.Random(1)) == Backoff(
        jitter=1.0, rng=random.Random(2)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": -1.0}, "initial must be a finite number >= 0, got -1.0"),
        ({"initial": math.inf}, "initial must be a finite number >= 0, got inf"),
        ({"jitter": math.nan}, "jitter must be a finite number >= 0, got nan"),
        ({"maximum": -0.5}, "maximum must be >= 0, got -0.5"),
        ({"maximum": math.nan}, "maximum must be >= 0, got nan"),
        ({"exp_base": 0.5}, "exp_base must be >= 1, got 0.5"),
        ({"jitter": 1.0}, "jitter needs a random source (rng)"),
    ],
)
def test_invalid_parameters_are_rejected(
    kwargs: dict[str, float], message: str
) -> None:
    """A policy that could not give a sane delay fails at construction, saying why."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Backoff(**kwargs)  # type: ignore[arg-type]
