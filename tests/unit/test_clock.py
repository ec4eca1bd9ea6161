"""The one virtual clock the tests inject (tests/clock.py) keeps the Clock contract."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from tests.clock import T0, VirtualClock, settle
from watcher.clock import Clock, SystemClock


def test_both_clocks_satisfy_the_seam() -> None:
    """The real and the virtual clock are both a ``Clock`` (mypy checks the rest)."""
    clocks: list[Clock] = [SystemClock(), VirtualClock()]
    assert clocks[1].now() == T0
    assert clocks[1].monotonic() == 0.0


async def test_autojump_sleeps_move_time_at_once() -> None:
    """With autojump, sleep returns at once, having moved both readings."""
    clock = VirtualClock.auto(origin=1000.0)
    await clock.sleep(2.5)
    await clock.sleep(-1.0)
    assert clock.sleeps == [2.5, -1.0]
    assert clock.monotonic() == 1002.5
    assert clock.now() == T0 + timedelta(seconds=2.5)


async def test_advance_wakes_due_sleepers_in_deadline_order() -> None:
    """Manual time: advance wakes exactly the sleepers whose deadline passed."""
    clock = VirtualClock()
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        for seconds in (3.0, 1.0, 2.0):
            tg.start_soon(sleeper, seconds)
        await settle()
        assert clock.sleeping == 3
        clock.advance(1.5)
        await settle()
        assert (woke, clock.sleeping) == ([1.5], 2)
        await clock.run_for(10.0)
    assert woke == [1.5, 2.0, 3.0]
    assert clock.monotonic() == 11.5


async def test_a_cancelled_sleeper_is_forgotten_and_zero_does_not_wait() -> None:
    """A cancelled sleep leaves no sleeper behind; sleep(0) needs no advance."""
    clock = VirtualClock()
    with anyio.move_on_after(0.01):
        await clock.sleep(5.0)
    assert clock.sleeping == 0
    with anyio.fail_after(1):
        await clock.sleep(0)
    assert clock.monotonic() == 0.0


async def test_run_until_wakes_each_sleeper_at_its_own_deadline() -> None:
    """run_until lets a woken task sleep again before time moves on (a poll loop)."""
    clock = VirtualClock()
    ticks: list[float] = []

    async def loop() -> None:
        while True:
            ticks.append(clock.monotonic())
            await clock.sleep(2.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        await clock.run_until(7.0)
        tg.cancel_scope.cancel()
    assert ticks == pytest.approx([0.0, 2.0, 4.0, 6.0])
