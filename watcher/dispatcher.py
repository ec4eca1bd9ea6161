"""The dispatcher: one outbox worker per sink, from journaled events to delivered ones.

Each worker loops: take the sink's next due row from the journal (oldest first, one
server's events in order), hand the event to the sink, and record the outcome:

- delivered → ``mark_delivered``;
- :class:`~watcher.errors.DeliveryError` not ``transient`` (the sink said
  ``permanent``) → ``dead_letter`` at once;
- transient → ``reschedule`` with ``attempts + 1`` after a delay, or ``dead_letter``
  once the row has been failing for longer than the sink's ``max_age`` (measured
  from its first attempt, not from the event: a daemon that was down for a day
  still tries each event for ``max_age``);
- any other exception is a bug in the sink: logged with its traceback and treated as
  transient (the supervision boundary: one sink's bug never stops the others).

The delay is the :class:`~watcher.backoff.Backoff` policy (1, 2, 4 ... seconds plus
up to ``jitter`` seconds drawn from the dispatcher's own ``random.Random``) computed
from the stored attempt count (so it survives a restart); a receiver's
``Retry-After`` *overrides* it, as in stamina, but never below
:data:`MIN_RETRY_DELAY` so a ``Retry-After: 0`` loop cannot hammer a receiver. Every sink has its own worker, so a slow or dead sink never delays
another. An idle worker sleeps until the next row falls due, :meth:`Dispatcher.wake`
or :data:`POLL_INTERVAL`, whichever comes first.

Shutdown: :meth:`Dispatcher.drain` stops taking rows and waits for deliveries in
flight; a cancelled delivery leaves its row pending (at-least-once: it is sent again,
with the same event id, after a restart). Nothing here catches cancellation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Final

import anyio
import structlog

from watcher.backoff import Backoff
from watcher.clock import Clock
from watcher.config import SinkConfig
from watcher.errors import DeliveryError
from watcher.sinks.base import Sink
from watcher.store.base import Outbox, OutboxRow

#: The shortest delay before retrying, whatever ``Retry-After`` says.
MIN_RETRY_DELAY: Final = 1.0
#: The longest computed backoff between two attempts (``Retry-After`` may be longer).
MAX_BACKOFF: Final = 300.0
#: How long a worker waits after its own failure (e.g. the journal) before going on.
WORKER_RESTART_DELAY: Final = 5.0
#: How long an idle worker waits when a row is due but was not handed out (a race
#: with a new record, which also wakes it): never a busy loop.
RECHECK_INTERVAL: Final = 1.0
#: An idle worker looks at the journal at least this often, for rows that another
#: process changed (``requeue`` from the CLI cannot call :meth:`Dispatcher.wake`).
POLL_INTERVAL: Final = 60.0

# Log event names.
SINK_DELIVERED: Final = "sink.delivered"
SINK_FAILING: Final = "sink.failing"
SINK_RETRY: Final = "sink.retry_scheduled"
SINK_RECOVERED: Final = "sink.recovered"
SINK_DEAD_LETTERED: Final = "sink.dead_lettered"
SINK_CRASHED: Final = "sink.crashed"
WORKER_FAILED: Final = "dispatcher.worker_failed"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Failure:
    """How one delivery attempt failed."""

    error: str  # stored as last_error; names the sink, never its URL
    detail: str
    retry_after: float | None
    transient: bool


class Dispatcher:
    """Delivers journaled events to sinks, one worker per sink.

    Args:
        journal: Where the outbox lives (any :class:`~watcher.store.base.Outbox`).
        sinks: The sinks by name; each gets one worker.
        configs: The sinks' configurations by name (``max_age``).
        clock: Time for scheduling; virtual in tests.
        jitter: Upper bound of the random seconds added to each backoff (0 in tests).
        max_backoff: Cap of the computed backoff, seconds.
        poll_interval: Longest idle wait between two looks at the journal; None to
            rely on :meth:`wake` and ``next_due_at`` only (tests with virtual time).
        rng: Source of the jitter (seeded in tests); a fresh ``random.Random()``
            when None, never the global ``random``.
    """

    def __init__(
        self,
        journal: Outbox,
        sinks: Mapping[str, Sink],
        configs: Mapping[str, SinkConfig],
        clock: Clock,
        *,
        jitter: float = 1.0,
        max_backoff: float = MAX_BACKOFF,
        poll_interval: float | None = POLL_INTERVAL,
        rng: random.Random | None = None,
    ) -> None:
        self._journal = journal
        self._poll_interval = poll_interval
        self._sinks = dict(sinks)
        self._configs = dict(configs)
        self._clock = clock
        self._backoff = Backoff(
            initial=1.0,
            maximum=max_backoff,
            jitter=jitter,
            rng=rng if rng is not None else random.Random(),  # noqa: S311
        )
        self._wakeups = {name: anyio.Event() for name in self._sinks}
        self._failing: set[str] = set()
        self._stop_requested = anyio.Event()
        self._stopped = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    def wake(self) -> None:
        """Tell every worker that something new was journaled."""
        for wakeup in self._wakeups.values():
            wakeup.set()

    def backoff(self, attempts: int) -> float:
        """Return the delay after the ``attempts``-th failed attempt (1 → ~1 s)."""
        return self._backoff.delay(attempts)

    async def run(self) -> None:
        """Run one worker per sink until cancelled or drained."""
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                if not self._sinks:
                    tg.start_soon(self._stop_requested.wait)
                for name in self._sinks:
                    tg.start_soon(self._work, name, name=f"sink {name}")
        finally:
            self._scope = None
            self._stopped.set()

    async def drain(self, grace: float | None = None) -> None:
        """Stop taking rows; let deliveries in flight finish, then return.

        Idle workers stop at once. A delivery in flight gets ``grace`` seconds
        (unbounded when None: the caller may bound it with ``move_on_after``); after
        that it is cancelled and its row stays pending, to be sent after a restart
        with the same event id. :meth:`run` returns once every worker has stopped.
        """
        self._stop_requested.set()
        self.wake()
        if self._scope is None:
            return
        with anyio.move_on_after(math.inf if grace is None else grace):
            await self._stopped.wait()
        if not self._stopped.is_set() and self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()

    async def _work(self, name: str) -> None:
        sink = self._sinks[name]
        config = self._configs.get(name) or SinkConfig(name=name, type="unknown")
        while not self._stop_requested.is_set():
            # A fresh event before each look at the journal: a wake() from here on
            # is seen by the next wait, an earlier one by this query.
            wakeup = self._wakeups[name] = anyio.Event()
            try:
                now = self._clock.now()
                row = await self._journal.call(self._journal.next_due, name, now)
                if self._stop_requested.is_set():
                    return
                if row is None:
                    await self._idle(name, now, wakeup)
                else:
                    await self._attempt(name, sink, config, row)
            except Exception:
                # Supervision boundary: a journal failure must not end the worker.
                log.exception(WORKER_FAILED, sink=name)
                await self._clock.sleep(WORKER_RESTART_DELAY)

    async def _idle(self, name: str, checked_at: datetime, wakeup: anyio.Event) -> None:
        due_at = await self._journal.call(self._journal.next_due_at, name)
        if due_at is None:
            delay: float | None = None
        elif due_at <= checked_at:
            # Due, yet not handed out a moment ago: look again soon, never spin.
            delay = RECHECK_INTERVAL
        else:
            delay = max(0.0, (due_at - self._clock.now()).total_seconds())
        if self._poll_interval is not None:
            delay = (
                self._poll_interval
                if delay is None
                else min(delay, self._poll_interval)
            )
        await self._sleep_or_wake(delay, wakeup)

    async def _sleep_or_wake(self, delay: float | None, wakeup: anyio.Event) -> None:
        if delay is None:
            await wakeup.wait()
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sleep_then_cancel, delay, tg.cancel_scope)
            await wakeup.wait()
            tg.cancel_scope.cancel()

    async def _sleep_then_cancel(self, delay: float, scope: anyio.CancelScope) -> None:
        await self._clock.sleep(delay)
        scope.cancel()

    async def _attempt(
        self, name: str, sink: Sink, config: SinkConfig, row: OutboxRow
    ) -> None:
        event = row.event
        attempted_at = self._clock.now()
        try:
            await sink.deliver(event)
        except DeliveryError as exc:
            failure = _Failure(str(exc), exc.detail, exc.retry_after, exc.transient)
        except Exception as exc:
            # A bug in the sink, not a receiver's answer: keep the event and go on.
            log.exception(SINK_CRASHED, sink=name, event_id=event.id)
            detail = f"{type(exc).__name__} (unexpected; see the log)"
            failure = _Failure(f"sink {name}: {detail}", detail, None, True)
        else:
            now = self._clock.now()
            await self._journal.call(self._journal.mark_delivered, name, event.id, now)
            log.debug(
                SINK_DELIVERED, sink=name, event_id=event.id, type=str(event.type)
            )
            if name in self._failing:
                self._failing.discard(name)
                log.info(SINK_RECOVERED, sink=name, event_id=event.id)
            return
        await self._failed(name, config, row, attempted_at, failure)

    async def _failed(
        self,
        name: str,
        config: SinkConfig,
        row: OutboxRow,
        attempted_at: datetime,
        failure: _Failure,
    ) -> None:
        now = self._clock.now()
        event = row.event
        attempts = row.attempts + 1
        error, transient = failure.error, failure.transient
        age = (now - (row.first_attempt_at or attempted_at)).total_seconds()
        if transient and age > config.max_age:
            error = (
                f"sink {name}: gave up after {age:.0f} s of failures (max_age "
                f"{config.max_age:g} s); last error: {failure.detail}"
            )
            transient = False
        if not transient:
            await self._journal.call(
                partial(self._journal.dead_letter, name, event.id, error=error, at=now)
            )
            log.error(
                SINK_DEAD_LETTERED,
                sink=name,
                event_id=event.id,
                type=str(event.type),
                server=event.server,
                attempts=attempts,
                error=error,
            )
            return
        if failure.retry_after is not None:
            delay = max(failure.retry_after, MIN_RETRY_DELAY)
        else:
            delay = self.backoff(attempts)
        await self._journal.call(
            partial(
                self._journal.reschedule,
                name,
                event.id,
                attempts=attempts,
                next_attempt_at=now + timedelta(seconds=delay),
                error=error,
                at=attempted_at,
            )
        )
        fields = {
            "sink": name,
            "event_id": event.id,
            "attempts": attempts,
            "retry_in": delay,
            "error": error,
        }
        if name in self._failing:
            log.debug(SINK_RETRY, **fields)
        else:
            # The transition into failure is logged once; retries are debug (HA).
            self._failing.add(name)
            log.warning(SINK_FAILING, **fields)
