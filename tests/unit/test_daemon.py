"""JournalRecorder: journal first, a bounded queue while the journal fails."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from watcher.daemon import JournalRecorder
from watcher.errors import JournalError
from watcher.events import Event, EventType
from watcher.tracker import ServerState

T = TypeVar("T")
AT = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


class FlakyJournal:
    """A journal stand-in whose record() fails while ``broken`` is True."""

    def __init__(self) -> None:
        self.broken = False
        self.rows: list[tuple[str, list[str]]] = []

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` inline (the real journal uses a worker thread)."""
        return fn(*args)

    def record(
        self, server: str, state: dict[str, Any], events: Sequence[Event]
    ) -> list[Event]:
        """Store the ids, or fail like a full disk."""
        if self.broken:
            raise JournalError("disk full (simulated)")
        self.rows.append((server, [e.id for e in events]))
        return list(events)


def failing(recorder: JournalRecorder) -> bool:
    """Whether the recorder currently reports a journal failure."""
    return recorder.failure is not None


def _event(n: int) -> Event:
    return Event.create(EventType.RESTORE_PHASE, "s1", AT, {"n": n}, key=(str(n),))


async def test_records_wait_in_memory_and_are_written_in_order_later(logs) -> None:
    """While the journal fails, records queue; once it works, they land in order."""
    journal = FlakyJournal()
    woken: list[int] = []
    recorder = JournalRecorder(journal, lambda: woken.append(1))  # type: ignore[arg-type]
    journal.broken = True
    await recorder.record("s1", ServerState(), [_event(1)])
    await recorder.record("s1", ServerState(), [_event(2), _event(3)])
    assert journal.rows == []
    assert recorder.pending_events == 3
    assert failing(recorder)
    assert woken == []
    journal.broken = False
    await recorder.flush()
    assert journal.rows == [
        ("s1", [_event(1).id]),
        ("s1", [_event(2).id, _event(3).id]),
    ]
    assert recorder.pending_events == 0
    assert not failing(recorder)
    assert woken == [1]
    assert [e["event"] for e in logs] == ["journal.failing", "journal.recovered"]


async def test_a_full_queue_refuses_so_the_scheduler_keeps_its_state() -> None:
    """Past the bound, record() raises and nothing more is queued."""
    journal = FlakyJournal()
    recorder = JournalRecorder(journal, lambda: None, max_pending_events=2)  # type: ignore[arg-type]
    journal.broken = True
    await recorder.record("s1", ServerState(), [_event(1), _event(2)])
    with pytest.raises(JournalError, match="wait in memory"):
        await recorder.record("s1", ServerState(), [_event(3)])
    assert recorder.pending_events == 2
    journal.broken = False
    await recorder.record("s1", ServerState(), [_event(3)])
    assert [ids for _, ids in journal.rows] == [
        [_event(1).id, _event(2).id],
        [_event(3).id],
    ]


def test_service_tuning_raises_gc_threshold_freezes_and_shrinks_tls_buffer() -> None:
    """The service's runtime tuning, applied in a fresh interpreter, not this one."""
    import subprocess
    import sys

    code = (
        "import gc; from watcher.daemon import tune_runtime_for_service;"
        "tune_runtime_for_service(); import asyncio.sslproto as p;"
        "print(gc.get_threshold()[0], gc.get_freeze_count() > 0, p.SSLProtocol.max_size)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["50000", "True", "16384"]
