"""Backoff: the one retry-delay policy, for the poll cadence and the sink outbox.

A :class:`Backoff` is a small frozen value, as stamina's retry policy is: the n-th
delay after consecutive failures is ``initial * exp_base ** (n - 1)``, plus a
uniform random ``[0, jitter]`` seconds, and never more than ``maximum``. The
exponential part is tenacity's ``wait_exponential`` (tenacity is a fixed
dependency), called through its public ``RetryCallState``. The jitter does *not*
come from tenacity: its jittered strategies draw from the global ``random``, which a
seeded test cannot control and which every library in the process shares; ours come
from the ``random.Random`` the policy is given.

Pure: no clock, no sleeping, no I/O. Callers keep the attempt count (the scheduler's
cadence in memory, the dispatcher in the outbox, so it survives a restart) and ask
for the delay; a receiver's ``Retry-After`` overriding it is the caller's decision.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final

import tenacity

#: The retrying object a :class:`tenacity.RetryCallState` must name; the wait
#: strategies read only the state's ``attempt_number``, never this.
_RETRYING: Final = tenacity.Retrying()


@dataclass(frozen=True, slots=True)
class Backoff:
    """An exponential backoff with a hard ceiling and optional additive jitter.

    Args:
        initial: The first delay, seconds (the delay after one failure).
        maximum: The longest delay, seconds: a hard ceiling, jitter included. It
            wins over ``initial`` when smaller.
        exp_base: The growth factor from one attempt to the next.
        jitter: Upper bound of the random seconds added to each delay; 0 draws
            nothing.
        rng: The source of the jitter; required when ``jitter`` is above 0.

    Raises:
        ValueError: A negative or non-finite parameter, ``exp_base`` below 1, or
            jitter without a random source.
    """

    initial: float = 1.0
    maximum: float = 300.0
    exp_base: float = 2.0
    jitter: float = 0.0
    rng: random.Random | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("initial", "jitter"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        # An unbounded maximum is allowed (math.inf): tenacity's own default is huge.
        if math.isnan(self.maximum) or self.maximum < 0.0:
            raise ValueError(f"maximum must be >= 0, got {self.maximum!r}")
        if not (math.isfinite(self.exp_base) and self.exp_base >= 1.0):
            raise ValueError(f"exp_base must be >= 1, got {self.exp_base!r}")
        if self.jitter > 0.0 and self.rng is None:
            raise ValueError("jitter needs a random source (rng)")

    def delay(self, attempt: int) -> float:
        """Return the delay after the ``attempt``-th consecutive failure.

        Attempt 1 waits ``initial``; counts below 1 are treated as 1, and a huge
        count (a server down for days) stays at ``maximum`` without overflowing.
        """
        state = tenacity.RetryCallState(_RETRYING, None, (), {})
        state.attempt_number = max(attempt, 1)
        wait = tenacity.wait_exponential(
            multiplier=self.initial, max=self.maximum, exp_base=self.exp_base
        )
        delay = float(wait(state))
        if self.jitter > 0.0 and self.rng is not None:
            # Capped again: the ceiling is a promise, jitter included.
            delay = min(delay + self.rng.uniform(0.0, self.jitter), self.maximum)
        return delay
