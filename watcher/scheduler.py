"""The fleet scheduler: one polling loop per server, on one event loop.

Each :class:`ServerWatch` waits, polls, stamps an :class:`~watcher.tracker.Observation`,
steps the tracker, hands state and events to the :class:`Recorder` when something
durable changed, and asks :mod:`watcher.cadence` how long to wait. :class:`Fleet`
runs one watch per server in an anyio task group and is the supervision boundary:
one server's bug never stops another server's polls.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

import anyio
import structlog
from anyio.abc import TaskGroup

from watcher.cadence import (
    Cadence,
    after_crash,
    check_jitter,
    initial_delay,
    next_poll,
    until_unreachable,
)
from watcher.clock import Clock
from watcher.config import ServerConfig
from watcher.errors import LeaseLost, SklmError
from watcher.events import Event, log_level
from watcher.phases import Phase, PollResult
from watcher.tracker import Failure, Observation, ServerState, step

#: ``data`` fields an event's log line repeats when present: what went wrong.
_WHY_FIELDS: Final = ("reason", "detail")

#: Logouts run at once when a reload drops servers.
LOGOUT_CONCURRENCY = 32

log = structlog.get_logger(__name__)

POLL_OK: Final = "poll.ok"
POLL_FAILED: Final = "poll.failed"
#: The first failed poll of a server, or a change of failure kind (warning).
POLL_FAILING: Final = "poll.failing"
#: The first answer after failed polls (info), with how long they lasted.
POLL_RECOVERED: Final = "poll.recovered"
EVENT: Final = "event"
WATCH_CRASHED: Final = "watch.crashed"
WATCH_STARTED: Final = "watch.started"
WATCH_STOPPED: Final = "watch.stopped"
#: A cluster node stopped watching a server another node owns now (fenced write).
WATCH_FENCED: Final = "watch.fenced"
LOGOUT_FAILED: Final = "watch.logout_failed"


class Poller(Protocol):
    """What the scheduler needs from an SKLM client (``SklmClient`` satisfies it)."""

    async def poll_phase(self) -> PollResult:
        """Return the current restore phase; raise a ``SklmError`` subclass on failure."""
        ...

    async def restore_result(self) -> int | None:
        """Return the last restore's result hint, or None; never raises."""
        ...

    async def logout(self) -> None:
        """End the session; best effort, never raises."""
        ...


#: ``on_poll(latency, answered)``: a per-poll hook for metrics.
PollObserver = Callable[[float, bool], None]


class Recorder(Protocol):
    """Where new states and events go, durably, before anything is dispatched."""

    async def record(
        self, server: str, state: ServerState, events: Sequence[Event]
    ) -> None:
        """Store ``state`` and ``events`` for ``server``; raise if that failed.

        Raises ``LeaseLost`` when this node may no longer write ``server`` (a
        cluster peer owns it now): the server's loop then ends quietly.
        """
        ...


@dataclass(frozen=True, slots=True)
class WatchStats:
    """Counters of one server's loop (a snapshot, for metrics and status).

    Args:
        last_poll_at: When the last poll answered or failed; None before the first.
        last_latency: Seconds the last poll took.
        polls_ok: Polls that returned a phase.
        polls_failed: Polls that raised an ``SklmError``.
        crashes: Iterations that failed with an unexpected exception.
    """

    last_poll_at: datetime | None
    last_latency: float | None
    polls_ok: int
    polls_failed: int
    crashes: int


class ServerWatch:
    """One server's polling loop and its counters.

    Args:
        config: The server.
        poller: Its client.
        recorder: Where state changes and events go.
        clock: The time source.
        state: The tracker state to resume from.
        rng: Source of the initial offset and jitter.
        jitter: Fraction (0..1) by which delays are spread.
        on_poll: Called after every poll with its latency and whether it answered
            (metrics); must be cheap.
        first_poll_within: Seconds within which the first poll comes (uniformly
            spread; at once while a restore runs); None to spread it over the
            server's first interval.
    """

    def __init__(
        self,
        config: ServerConfig,
        poller: Poller,
        recorder: Recorder,
        clock: Clock,
        *,
        state: ServerState,
        rng: random.Random,
        jitter: float,
        on_poll: PollObserver | None = None,
        first_poll_within: float | None = None,
    ) -> None:
        self.config = config
        self.poller = poller
        self.state = state
        self.cadence = Cadence.start(state)
        self.last_poll_at: datetime | None = None
        self.last_latency: float | None = None
        self.polls_ok = 0
        self.polls_failed = 0
        self.crashes = 0
        self._recorder = recorder
        self._clock = clock
        self._rng = rng
        self._jitter = check_jitter(jitter)
        self._log = log.bind(server=config.name)
        self._on_poll = on_poll
        self._first_poll_within = first_poll_within
        # Log on transitions, not per poll (Home Assistant's coordinator rule): the
        # kind of failure the last poll had, since when and over how many polls.
        self._failing: Failure | None = None
        self._failing_since: float = 0.0
        self._failed_polls = 0

    def stats(self) -> WatchStats:
        """Return a snapshot of this loop's counters."""
        return WatchStats(
            last_poll_at=self.last_poll_at,
            last_latency=self.last_latency,
            polls_ok=self.polls_ok,
            polls_failed=self.polls_failed,
            crashes=self.crashes,
        )

    async def run(self) -> None:
        """Poll forever: first after a random offset, then as the cadence says.

        Returns when cancelled, or when the recorder says this node lost the
        server's lease (``LeaseLost``: another node polls it now). Any other
        ``Exception`` in one iteration is logged (``watch.crashed``) and the loop
        backs off and goes on; cancellation always propagates.
        """
        clock = self._clock
        first = initial_delay(self.config, self.state, self._rng)
        if self._first_poll_within is not None:
            # A cluster node that just took the server over: poll soon, and a
            # running restore at once (its next phase may be the completion).
            state = self.state
            busy = state.restore_active or state.awaiting_restart
            spread = 0.0 if busy else self._first_poll_within
            first = min(first, spread * self._rng.random())
        await clock.sleep(first)
        while True:
            try:
                delay = await self.poll_once()
            except LeaseLost as exc:
                self._log.info(WATCH_FENCED, detail=str(exc))
                return
            except Exception:  # noqa: BLE001 - the supervision boundary, logged below
                self.crashes += 1
                delay, self.cadence = after_crash(
                    self.config,
                    self.state,
                    self.cadence,
                    rng=self._rng,
                    jitter=self._jitter,
                )
                self._log.exception(WATCH_CRASHED, retry_in=delay)
            await clock.sleep(delay)

    async def poll_once(self) -> float:
        """Poll once, step the tracker, record what changed; return the next delay.

        The new state is adopted only after the recorder stored it: if recording
        fails, the next poll derives the events again and the recorder gets another
        try (at least once, never silently lost).
        """
        clock = self._clock
        config = self.config
        state = self.state
        start = clock.monotonic()
        hint = ""
        try:
            result = await self.poller.poll_phase()
        except SklmError as exc:
            mono = clock.monotonic()
            at = clock.now()
            # The reason in words (the client's ``detail``), not the message: that
            # repeats the server name and appends the hint.
            observation = Observation(
                at=at,
                monotonic=mono,
                latency=mono - start,
                failure=exc.failure_kind,
                detail=exc.detail,
            )
            self.polls_failed += 1
            self._log.debug(
                POLL_FAILED, failure=observation.failure, detail=observation.detail
            )
            hint = exc.hint
        else:
            mono = clock.monotonic()
            at = clock.now()
            phase = result.phase
            restore_result = None
            if _may_have_ended(state, phase):
                restore_result = await self.poller.restore_result()
            observation = Observation(
                at=at,
                monotonic=mono,
                latency=mono - start,
                phase=phase,
                relogin=result.relogin,
                result=restore_result,
            )
            self.polls_ok += 1
            self._log.debug(POLL_OK, phase=phase.name, latency=observation.latency)
        self.last_poll_at = at
        self.last_latency = observation.latency
        if self._on_poll is not None:
            self._on_poll(observation.latency, observation.failure is None)

        outcome = step(config, state, observation)
        # Before the events: "answering again", then what the answer revealed.
        if observation.failure is None:
            self._note_success(observation.monotonic)
        else:
            self._note_failure(observation, hint, outcome.state)
        # ``save`` covers every step with events; quiet polls never touch the journal.
        if outcome.save:
            await self._recorder.record(config.name, outcome.state, outcome.events)
            for event in outcome.events:
                # A problem's line says why (journalctl -p warning shows only these).
                why = {k: event.data[k] for k in _WHY_FIELDS if k in event.data}
                self._log.log(
                    log_level(event.type),
                    EVENT,
                    type=str(event.type),
                    phase=event.data.get("phase"),
                    id=event.id,
                    **why,
                )
        self.state = outcome.state
        delay, self.cadence = next_poll(
            config,
            outcome.state,
            observation,
            self.cadence,
            rng=self._rng,
            jitter=self._jitter,
        )
        if observation.failure not in (None, Failure.AUTH):
            # Wake at the outage's reporting deadline even when backoff says later.
            until = until_unreachable(config, outcome.state, observation.monotonic)
            if until is not None and until < delay:
                delay = until
        return delay

    def _note_failure(
        self, observation: Observation, hint: str, state: ServerState
    ) -> None:
        """Log the first failed poll, and each change of failure kind, once.

        A warning, except while the server restarts after a restore: that outage
        is expected (and reported as unreachable if it outlasts restart_timeout).
        """
        failure = observation.failure
        previous = self._failing
        if previous is None:
            self._failing_since = observation.monotonic
            self._failed_polls = 0
        self._failed_polls += 1
        if failure is previous:
            return
        self._failing = failure
        self._log.log(
            logging.INFO if state.awaiting_restart else logging.WARNING,
            POLL_FAILING,
            failure=str(failure),
            detail=observation.detail,
            hint=hint,
            previous=None if previous is None else str(previous),
            after_restore=state.awaiting_restart,
        )

    def _note_success(self, monotonic: float) -> None:
        """Log the first answer after failed polls, with how long they lasted."""
        failure = self._failing
        if failure is None:
            return
        self._log.info(
            POLL_RECOVERED,
            failure=str(failure),
            failed_for=round(monotonic - self._failing_since, 3),
            failed_polls=self._failed_polls,
        )
        self._failing = None
        self._failed_polls = 0


def _may_have_ended(state: ServerState, phase: Phase) -> bool:
    """Whether this answer may end a restore in a way the result hint can decide.

    True when a running restore's progress goes back (to IDLE: failed, or CLEANUP
    and back: the restart), the cases where restore/result is evidence worth a
    round trip. Not on a live COMPLETED answer: COMPLETED is the signal itself, the
    hint could not change the outcome, and waiting one more request before
    journaling delays every completion alert (the benchmark's detection p99 went
    from 1.26 s to 1.03 s without it). Not on repeated answers, nor after a
    completed restore: the hint resets when the server restarts. After a resume
    (the daemon's own downtime) the first answer may follow an unseen ending or
    restart, and the tracker decides it from the hint: fetched then for IDLE,
    COMPLETED or a phase gone back, even if it repeats the saved phase (issue #3).
    """
    previous = state.phase
    if previous is None:
        return False
    if state.resumed and (state.restore_active or state.awaiting_restart):
        return phase in (Phase.IDLE, Phase.COMPLETED) or phase < previous
    if phase is previous:
        return False
    return state.restore_active and phase < previous


class _Running:
    """A started watch's cancel scope, and an event set once its task has ended."""

    __slots__ = ("scope", "stopped")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.stopped = anyio.Event()


class Fleet:
    """One :class:`ServerWatch` per server, in one anyio task group.

    Args:
        servers: The servers to watch (unique names).
        pollers: A client per server name.
        recorder: Where state changes and events go (the journal).
        clock: The time source.
        states: Tracker states to resume from (from the journal), by server name.
        rng: Source of offsets and jitter; a fresh ``random.Random()`` when None.
        jitter: Fraction (0..1) by which delays are spread.
        on_poll: Called after every poll with its latency and whether it answered.
        first_poll_within: Seconds within which a server added by
            :meth:`reconfigure` with a state (a cluster takeover) is first polled;
            None to spread its first poll over its first interval.

    A cluster node starts with no servers and follows its leases: servers it takes
    come in through :meth:`reconfigure` with the stored state, ones it gives up
    leave the same way, and one whose lease was lost stops at once
    (:meth:`abandon`).

    Raises:
        ValueError: ``jitter`` outside [0, 1], or a server without a poller.
    """

    def __init__(
        self,
        servers: Sequence[ServerConfig],
        pollers: Mapping[str, Poller],
        recorder: Recorder,
        clock: Clock,
        *,
        states: Mapping[str, ServerState] | None = None,
        rng: random.Random | None = None,
        jitter: float = 0.1,
        on_poll: PollObserver | None = None,
        first_poll_within: float | None = None,
    ) -> None:
        self._recorder = recorder
        self._on_poll = on_poll
        self._first_poll_within = first_poll_within
        self._clock = clock
        # Spreading polls, not cryptography.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._jitter = check_jitter(jitter)
        known = states or {}
        self._watches: dict[str, ServerWatch] = {
            config.name: self._watch(
                config, _poller(pollers, config), known.get(config.name)
            )
            for config in servers
        }
        self._running: dict[str, _Running] = {}
        self._tg: TaskGroup | None = None
        self._lock: anyio.Lock | None = None

    def states(self) -> dict[str, ServerState]:
        """Return the current tracker state of every server."""
        return {name: watch.state for name, watch in self._watches.items()}

    def stats(self) -> dict[str, WatchStats]:
        """Return every server's loop counters."""
        return {name: watch.stats() for name, watch in self._watches.items()}

    def watching(self) -> set[str]:
        """Return the names of the servers watched now."""
        return set(self._watches)

    async def run(self) -> None:
        """Watch every server until cancelled; returns only when cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for watch in self._watches.values():
                    self._launch(tg, watch)
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self._running.clear()

    async def reconfigure(
        self,
        servers: Sequence[ServerConfig],
        pollers: Mapping[str, Poller],
        *,
        states: Mapping[str, ServerState] | None = None,
    ) -> None:
        """Apply a new server list (SIGHUP, or a cluster node's leases changed).

        New servers start from ``states`` (a cluster node resumes a server it took
        over from the shared state) or a fresh state; removed ones stop and are
        logged out; servers whose config or poller changed restart, keeping their
        tracker state and counters. Unchanged servers are not touched, and
        ``states`` is ignored for servers already watched.

        Raises:
            ValueError: A server without a poller (nothing is changed then).
        """
        known = states or {}
        wanted = {config.name: config for config in servers}
        new_pollers = {name: _poller(pollers, c) for name, c in wanted.items()}
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            dropped: list[Poller] = []
            for name in [n for n in self._watches if n not in wanted]:
                await self._stop(name)
                gone = self._watches.pop(name, None)
                if gone is not None:  # not abandon()ed meanwhile
                    dropped.append(gone.poller)
                log.info(WATCH_STOPPED, server=name)
            for name, config in wanted.items():
                poller = new_pollers[name]
                old = self._watches.get(name)
                if old is not None:
                    if old.config == config and old.poller is poller:
                        continue
                    await self._stop(name)
                    if old.poller is not poller:
                        dropped.append(old.poller)
                if old is not None:
                    watch = self._watch(config, poller, old.state)
                    _carry_counters(old, watch)
                else:
                    taken_over = known.get(name)
                    watch = self._watch(
                        config, poller, taken_over, prompt=taken_over is not None
                    )
                self._watches[name] = watch
                if self._tg is not None:
                    self._launch(self._tg, watch)
                log.info(WATCH_STARTED, server=name, restarted=old is not None)
            await _logout_all(dropped)

    def abandon(self, name: str) -> bool:
        """Stop watching ``name`` at once (its lease was lost); return if it was watched.

        Synchronous, so the recorder can call it from inside the server's own loop:
        the loop is cancelled (not awaited) and forgotten, and its session is logged
        out in the background. A later :meth:`reconfigure` may start it again.
        """
        watch = self._watches.pop(name, None)
        running = self._running.pop(name, None)
        if running is not None:
            running.scope.cancel()
        if watch is None:
            return False
        log.info(WATCH_STOPPED, server=name, lease_lost=True)
        if self._tg is not None:
            self._tg.start_soon(_logout, watch.poller, name=f"logout {name}")
        return True

    def _watch(
        self,
        config: ServerConfig,
        poller: Poller,
        state: ServerState | None,
        *,
        prompt: bool = False,
    ) -> ServerWatch:
        return ServerWatch(
            config,
            poller,
            self._recorder,
            self._clock,
            state=state if state is not None else ServerState(),
            rng=self._rng,
            jitter=self._jitter,
            on_poll=self._on_poll,
            first_poll_within=self._first_poll_within if prompt else None,
        )

    def _launch(self, tg: TaskGroup, watch: ServerWatch) -> None:
        running = _Running()
        self._running[watch.config.name] = running
        tg.start_soon(_run_watch, watch, running, name=f"watch {watch.config.name}")

    async def _stop(self, name: str) -> None:
        running = self._running.pop(name, None)
        if running is not None:
            running.scope.cancel()
            # Wait, so the old loop cannot change the state we are about to hand on.
            await running.stopped.wait()


async def _run_watch(watch: ServerWatch, running: _Running) -> None:
    try:
        with running.scope:
            await watch.run()
    finally:
        running.stopped.set()


def _poller(pollers: Mapping[str, Poller], config: ServerConfig) -> Poller:
    try:
        return pollers[config.name]
    except KeyError:
        raise ValueError(f"no poller for server {config.name}") from None


def _carry_counters(old: ServerWatch, new: ServerWatch) -> None:
    new.last_poll_at = old.last_poll_at
    new.last_latency = old.last_latency
    new.polls_ok = old.polls_ok
    new.polls_failed = old.polls_failed
    new.crashes = old.crashes
    # A reload must not repeat the failure warning nor lose the recovery line.
    new._failing = old._failing
    new._failing_since = old._failing_since
    new._failed_polls = old._failed_polls


async def _logout_all(pollers: Sequence[Poller]) -> None:
    """Log out of dropped servers side by side, a bounded number at a time.

    One after another, a reload that drops a large part of the fleet would hold the
    reload (and the signal loop waiting on it) for the sum of every logout's latency.
    """
    if not pollers:
        return
    limiter = anyio.CapacityLimiter(LOGOUT_CONCURRENCY)

    async def one(poller: Poller) -> None:
        async with limiter:
            await _logout(poller)

    async with anyio.create_task_group() as tg:
        for poller in pollers:
            tg.start_soon(one, poller)


async def _logout(poller: Poller) -> None:
    try:
        await poller.logout()
    except Exception:
        # logout promises never to raise; a broken one must not break a reload.
        log.warning(LOGOUT_FAILED, exc_info=True)
