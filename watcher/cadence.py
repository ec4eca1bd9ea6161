"""Poll cadence: how long one server's loop waits before its next poll.

Pure: the delay is a function of the server's config, its tracker state (after the
step), the last observation and a small :class:`Cadence` value the per-server loop
owns (burst and error counters). Randomness comes from an injected
``random.Random``; nothing here reads a clock.

Rules, first match wins:

1. Failure ``AUTH`` → ``auth_retry_interval``: rejected credentials are a
   configuration problem, and hammering the login would lock the account out.
2. Any other failure → exponential backoff (``watcher.backoff``), starting at
   ``min(active_interval, 1.0)`` and doubling per consecutive failure, capped at
   ``max_backoff``; tighter while it matters: at most ``restart_interval`` while
   awaiting the restart after a restore (the server is *expected* to be away, and we
   want to see it come back), at most ``4 * active_interval`` while a restore runs.
   The scheduler also cuts a backoff short at the outage's reporting deadline
   (:func:`until_unreachable`), so ``sklm.server.unreachable`` is never late.
3. Awaiting the restart after COMPLETED → ``restart_interval``.
4. Within ``burst_polls`` polls after a phase change → ``burst_interval`` (never
   slower than the steady interval): the next phase may last milliseconds.
5. A restore is running → ``active_interval``.
6. Otherwise → ``idle_interval``.

Every delay is then spread by jitter so a fleet does not poll in lock-step: idle,
auth and backoff delays by ``± jitter`` of themselves (a backoff's cap stays a hard
ceiling); active, burst and restart intervals only downwards, by up to ``jitter``
of themselves, because while a restore runs the interval is a promise to the
operator (a completion is seen at most ``active_interval`` after it happened).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from watcher.backoff import Backoff
from watcher.config import ServerConfig
from watcher.phases import Phase
from watcher.tracker import Failure, Observation

#: The first error backoff never exceeds this (seconds), whatever ``active_interval``.
FIRST_BACKOFF_MAX: Final = 1.0
#: While a restore runs, errors back off to at most this many ``active_interval``s.
ACTIVE_BACKOFF_FACTOR: Final = 4.0
#: Seconds past an outage's reporting deadline at which the deadline poll runs: a
#: hair late rather than a hair early (float sums of monotonic readings), since a
#: poll just before the deadline reports nothing and the next may be a backoff away.
DEADLINE_MARGIN: Final = 0.001


class WatchedState(Protocol):
    """What cadence reads from a tracker state (``ServerState`` satisfies it)."""

    @property
    def phase(self) -> Phase | None:
        """The last phase observed or inferred."""
        ...

    @property
    def restore_active(self) -> bool:
        """Whether a restore is running."""
        ...

    @property
    def awaiting_restart(self) -> bool:
        """Whether the server should restart (or is restarting) after a restore."""
        ...


class Mode(StrEnum):
    """Which cadence rule chose the last delay (for logs and status)."""

    IDLE = "idle"
    ACTIVE = "active"
    BURST = "burst"
    RESTART = "restart"
    BACKOFF = "backoff"
    AUTH = "auth"


@dataclass(frozen=True, slots=True)
class Cadence:
    """The cadence memory of one server's loop, carried from one poll to the next.

    Args:
        last_phase: The phase the last successful poll reported (a change starts a
            burst); None before the first answer.
        burst_left: Polls still to run at ``burst_interval``.
        error_attempt: Consecutive failed polls (or crashed iterations); 0 after a
            success.
        mode: The rule that chose the last delay.
    """

    last_phase: Phase | None = None
    burst_left: int = 0
    error_attempt: int = 0
    mode: Mode = Mode.IDLE

    @classmethod
    def start(cls, state: WatchedState) -> Cadence:
        """Return the cadence for a loop starting (or resuming) with ``state``."""
        return cls(last_phase=state.phase, mode=_steady(state))


def steady_interval(config: ServerConfig, state: WatchedState) -> float:
    """Return the interval without burst, errors or jitter: restart, active or idle."""
    if state.awaiting_restart:
        return config.restart_interval
    if state.restore_active:
        return config.active_interval
    return config.idle_interval


def initial_delay(
    config: ServerConfig, state: WatchedState, rng: random.Random
) -> float:
    """Return the offset of a server's first poll, uniform in [0, first interval).

    Spreads a fleet's first polls over one interval instead of all at start-up.
    """
    return steady_interval(config, state) * rng.random()


def backoff_cap(config: ServerConfig, state: WatchedState) -> float:
    """Return the longest error backoff allowed in ``state``."""
    cap = config.max_backoff
    if state.awaiting_restart:
        return min(cap, config.restart_interval)
    if state.restore_active:
        return min(cap, config.active_interval * ACTIVE_BACKOFF_FACTOR)
    return cap


def backoff(config: ServerConfig, state: WatchedState, attempt: int) -> float:
    """Return the error backoff (before jitter) after ``attempt`` consecutive errors.

    ``min(active_interval, 1.0) * 2 ** (attempt - 1)``, capped by :func:`backoff_cap`.
    The policy carries no jitter of its own: cadence spreads every delay, backoff
    or not, by its ``± jitter`` rule (:func:`jittered`).
    """
    policy = Backoff(
        initial=min(config.active_interval, FIRST_BACKOFF_MAX),
        maximum=backoff_cap(config, state),
    )
    return policy.delay(attempt)


def _error_delay(
    config: ServerConfig,
    state: WatchedState,
    attempt: int,
    rng: random.Random,
    jitter: float,
) -> float:
    """Return the jittered backoff; its cap stays a hard ceiling after the jitter."""
    return min(
        jittered(backoff(config, state, attempt), jitter, rng),
        backoff_cap(config, state),
    )


def jittered(interval: float, jitter: float, rng: random.Random) -> float:
    """Return ``interval`` spread uniformly by ``± jitter`` of itself (0 <= jitter <= 1)."""
    if jitter <= 0.0:
        return interval
    return interval * (1.0 + jitter * (2.0 * rng.random() - 1.0))


def jittered_below(interval: float, jitter: float, rng: random.Random) -> float:
    """Return ``interval`` shortened by a uniform fraction in [0, jitter) of itself.

    For the intervals that are a ceiling (active, burst, restart): spreading them
    upwards would let a restore's phases go unseen for longer than configured.
    """
    if jitter <= 0.0:
        return interval
    return interval * (1.0 - jitter * rng.random())


def next_poll(
    config: ServerConfig,
    state: WatchedState,
    observation: Observation,
    cadence: Cadence,
    *,
    rng: random.Random,
    jitter: float,
) -> tuple[float, Cadence]:
    """Return the delay until the next poll and the cadence to carry to it.

    Args:
        config: The server's configuration.
        state: The tracker state *after* stepping ``observation``.
        observation: The poll just made.
        cadence: The cadence carried from the previous poll.
        rng: The source of jitter.
        jitter: Fraction (0..1) by which the delay is spread.

    Returns:
        The delay in seconds, and the new cadence (``cadence`` itself when nothing
        changed, the common idle case).
    """
    failure = observation.failure
    if failure is not None:
        attempt = cadence.error_attempt + 1
        if failure is Failure.AUTH:
            mode = Mode.AUTH
            delay = jittered(config.auth_retry_interval, jitter, rng)
        else:
            mode = Mode.BACKOFF
            delay = _error_delay(config, state, attempt, rng, jitter)
        # An error interrupts a burst: its phase information is stale.
        return delay, Cadence(cadence.last_phase, 0, attempt, mode)

    phase = observation.phase
    previous = cadence.last_phase
    burst_left = (
        config.burst_polls
        if previous is not None and phase is not previous
        else cadence.burst_left
    )
    if state.awaiting_restart:
        mode, interval, burst_left = Mode.RESTART, config.restart_interval, 0
    elif burst_left > 0:
        mode = Mode.BURST
        interval = min(config.burst_interval, steady_interval(config, state))
        burst_left -= 1
    elif state.restore_active:
        mode, interval = Mode.ACTIVE, config.active_interval
    else:
        mode, interval = Mode.IDLE, config.idle_interval
    if mode is Mode.IDLE:
        delay = jittered(interval, jitter, rng)
    else:
        delay = jittered_below(interval, jitter, rng)
    if (
        phase is previous
        and mode is cadence.mode
        and burst_left == cadence.burst_left
        and cadence.error_attempt == 0
    ):
        return delay, cadence
    return delay, Cadence(phase, burst_left, 0, mode)


def after_crash(
    config: ServerConfig,
    state: WatchedState,
    cadence: Cadence,
    *,
    rng: random.Random,
    jitter: float,
) -> tuple[float, Cadence]:
    """Return the delay after an iteration crashed (a bug, a journal failure).

    Paced like a failed poll (backoff with the same caps), so a persistent bug
    neither spins nor stops watching a restore closely.
    """
    attempt = cadence.error_attempt + 1
    delay = _error_delay(config, state, attempt, rng, jitter)
    return delay, Cadence(cadence.last_phase, 0, attempt, Mode.BACKOFF)


class OutageState(Protocol):
    """What :func:`until_unreachable` reads (``ServerState`` satisfies it)."""

    @property
    def awaiting_restart(self) -> bool:
        """Whether the server should restart (or is restarting) after a restore."""
        ...

    @property
    def outage_since_monotonic(self) -> float | None:
        """When the outage in progress began; None while polls succeed."""
        ...

    @property
    def unreachable_reported(self) -> bool:
        """Whether the outage in progress was already reported."""
        ...


def until_unreachable(
    config: ServerConfig, state: OutageState, monotonic: float
) -> float | None:
    """Return the seconds until the outage in progress is due to be reported.

    The tracker reports an outage only on a failed poll at or after
    ``unreachable_after`` (``restart_timeout`` after a restore); an error backoff of
    up to ``max_backoff`` could put that poll far later. The scheduler waits no
    longer than this, so ``sklm.server.unreachable`` fires on time (issue 11).
    None when no outage is in progress, it was reported, or its deadline passed.

    Args:
        config: The server's configuration.
        state: The tracker state after the failed poll.
        monotonic: The failed poll's monotonic reading.
    """
    since = state.outage_since_monotonic
    if since is None or state.unreachable_reported:
        return None
    if state.awaiting_restart:
        limit = config.restart_timeout
    else:
        limit = config.unreachable_after
    until = since + limit + DEADLINE_MARGIN - monotonic
    # Past the deadline and still unreported cannot last (the next failed poll
    # reports it); never turn that into a zero-delay spin.
    return until if until > 0.0 else None


def _steady(state: WatchedState) -> Mode:
    if state.awaiting_restart:
        return Mode.RESTART
    if state.restore_active:
        return Mode.ACTIVE
    return Mode.IDLE


def check_jitter(jitter: float) -> float:
    """Return ``jitter`` if it is a fraction in [0, 1]; raise ValueError otherwise."""
    if not (math.isfinite(jitter) and 0.0 <= jitter <= 1.0):
        raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
    return jitter
