"""JournalRecorder on a cluster node: a fenced write drops that server, not the queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from tests.unit.test_daemon import FlakyJournal, _event
from watcher.daemon import JournalRecorder
from watcher.errors import LeaseLost
from watcher.events import Event
from watcher.tracker import ServerState


class FencingJournal(FlakyJournal):
    """A journal whose record() refuses servers in ``lost`` (LeaseLost)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: set[str] = set()

    def record(
        self, server: str, state: dict[str, Any], events: Sequence[Event]
    ) -> list[Event]:
        """Refuse a server this node no longer holds, else like FlakyJournal."""
        if server in self.lost and not self.broken:
            raise LeaseLost(server, "held by node b now")
        return super().record(server, state, events)


async def test_a_fenced_write_raises_and_tells_the_daemon_once() -> None:
    """record() of a server whose lease is gone raises LeaseLost; nothing queues."""
    journal = FencingJournal()
    journal.lost.add("s1")
    told: list[str] = []
    recorder = JournalRecorder(journal, lambda: None, on_lease_lost=told.append)  # type: ignore[arg-type]
    with pytest.raises(LeaseLost):
        await recorder.record("s1", ServerState(), [_event(1)])
    assert told == ["s1"]
    assert recorder.pending_events == 0
    assert recorder.fenced_writes == 1
    assert recorder.failure is None, "a fenced write is not a failing store"


async def test_queued_records_of_a_lost_server_are_dropped_the_rest_written() -> None:
    """After an outage, the lost server's queue is dropped; others land in order."""
    journal = FencingJournal()
    told: list[str] = []
    recorder = JournalRecorder(journal, lambda: None, on_lease_lost=told.append)  # type: ignore[arg-type]
    journal.broken = True
    await recorder.record("s1", ServerState(), [_event(1)])
    await recorder.record("s2", ServerState(), [_event(2)])
    await recorder.record("s1", ServerState(), [_event(3)])
    await recorder.record("s2", ServerState(), [_event(4)])
    assert recorder.pending_events == 4
    # The store returns; meanwhile another node took s1 over.
    journal.broken = False
    journal.lost.add("s1")
    await recorder.flush()
    assert journal.rows == [("s2", [_event(2).id]), ("s2", [_event(4).id])]
    assert recorder.pending_events == 0
    assert told == ["s1"]
    assert recorder.fenced_writes == 1
    assert recorder.failure is None
