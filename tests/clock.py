"""One virtual clock for every test that injects a ``watcher.clock.Clock``.

Time moves only on command, so tests are exact and no real time passes. Two modes:

- ``autojump=True``: every ``sleep`` returns at once, having moved time forward by
  its delay (for code that merely has to wait: sinks, the dispatcher).
- ``autojump=False`` (default): ``sleep`` blocks until the test moves time past its
  deadline, by hand with :meth:`VirtualClock.advance`, or deterministically with
  ``await`` :meth:`VirtualClock.run_for` / :meth:`VirtualClock.run_until`, which let
  every task run until it blocks, wake the earliest sleeper, and repeat.

Either way ``sleeps`` records every delay asked for.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Final

import anyio
import anyio.lowlevel

#: The default virtual start: a fixed instant, so expected timestamps are literals.
T0: Final = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
#: Plain yields before asking anyio whether every task is blocked: enough for the
#: scheduler tests' tasks to block, so anyio's check (which sleeps 0.1 s real while
#: something still runs) almost always answers at once.
_YIELDS: Final = 20


async def settle() -> None:
    """Return once every other task is blocked (waiting on something not yet done).

    asyncio has no public "can this task run?"; ``anyio.wait_all_tasks_blocked`` is
    the maintained, public answer, and the yields before it make it fast.
    """
    for _ in range(_YIELDS):
        await asyncio.sleep(0)
    await anyio.wait_all_tasks_blocked()


class VirtualClock:
    """The ``Clock`` seam over virtual time that moves only when told to.

    ``now()`` counts from ``start`` and ``monotonic()`` from ``origin``, both moved
    by ``elapsed`` seconds.

    Args:
        start: The wall-clock instant at ``elapsed == 0``.
        origin: The monotonic reading at ``elapsed == 0`` (a non-zero one catches
            code that takes 0 for "never").
        autojump: Let ``sleep`` advance time itself instead of waiting for the test.
    """

    def __init__(
        self, start: datetime = T0, *, origin: float = 0.0, autojump: bool = False
    ) -> None:
        self.start = start
        self.origin = origin
        self.autojump = autojump
        self.elapsed = 0.0
        #: Every delay ``sleep`` was asked for, in order.
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    @classmethod
    def auto(cls, start: datetime = T0, *, origin: float = 0.0) -> VirtualClock:
        """A clock whose every ``sleep`` returns at once, having advanced it."""
        return cls(start, origin=origin, autojump=True)

    @property
    def sleeping(self) -> int:
        """How many tasks wait in ``sleep`` for time to move."""
        return len(self._sleepers)

    def now(self) -> datetime:
        """Return the virtual wall-clock time."""
        return self.start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        """Return the virtual monotonic time."""
        return self.origin + self.elapsed

    async def sleep(self, seconds: float) -> None:
        """Wait until virtual time is ``seconds`` later (at once with ``autojump``)."""
        self.sleeps.append(seconds)
        if self.autojump:
            self.elapsed += max(0.0, seconds)
            await anyio.lowlevel.checkpoint()
            return
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self.elapsed + seconds, next(self._seq), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        try:
            await entry[2].wait()
        finally:
            if not entry[2].is_set():  # cancelled: nobody is waiting any more
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move time forward now and wake every sleeper whose deadline passed."""
        self.elapsed += seconds
        while self._sleepers and self._sleepers[0][0] <= self.elapsed:
            heapq.heappop(self._sleepers)[2].set()

    async def run_until(self, deadline: float) -> None:
        """Advance to ``elapsed == deadline``, waking sleepers one by one, in order.

        Before each wake every task runs until it blocks, so what a woken task
        does happens at its own deadline, as with a real clock.
        """
        while True:
            await settle()
            if not self._sleepers or self._sleepers[0][0] > deadline:
                break
            when, _, event = heapq.heappop(self._sleepers)
            self.elapsed = max(self.elapsed, when)
            event.set()
        self.elapsed = max(self.elapsed, deadline)

    async def run_for(self, seconds: float) -> None:
        """Advance by ``seconds`` as :meth:`run_until` does."""
        await self.run_until(self.elapsed + seconds)
