"""Time as the daemon sees it: one ``Clock`` seam, and the real clock behind it.

Wall-clock instants (aware UTC) stamp events; the monotonic clock measures durations
and deadlines, so a wall-clock jump changes neither intervals nor stall detection.
Tests inject ``tests.clock.VirtualClock``, the one virtual clock, with the same
three methods.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

import anyio


class Clock(Protocol):
    """Where the scheduler, the dispatcher and the sinks get time."""

    def now(self) -> datetime:
        """Return the wall-clock time, aware UTC."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic reading in seconds (durations, deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; a cancellation point."""
        ...


class SystemClock:
    """The real clock: ``datetime.now(UTC)``, ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> datetime:
        """Return the wall-clock time, aware UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep with ``anyio.sleep`` (cancellable)."""
        await anyio.sleep(seconds)
