import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest

from tests.clock import VirtualClock
from tests.unit.sinks.fakes import T0, phase_event
from watcher.config import SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.errors import DeliveryError, JournalError
from watcher.events import Event
from watcher.store.base import OutboxRow
from watcher.store.sqlite import SqliteStore as Journal

FAR_FUTURE = T0 + timedelta(days=3650)

#: What a scripted sink does on one attempt: deliver (None), raise, or await first.
Answer = BaseException | Callable[[], Awaitable[None]] | None


class ScriptedSink:
    """A sink that answers from a script, then delivers; records every attempt."""

    def __init__(self, name: str, *answers: Answer) -> None:
        self.name = name
        self.answers: deque[Answer] = deque(answers)
        self.attempts: list[Event] = []
        self.delivered: list[Event] = []

    async def deliver(self, event: Event) -> None:
        """Play the next answer of the script (deliver when it is exhausted)."""
        self.attempts.append(event)
        answer = self.answers.popleft() if self.answers else None
        if isinstance(answer, BaseException):
            raise answer
        if answer is not None:
            await answer()
        self.delivered.append(event)


def transient(retry_after: float | None = None) -> DeliveryError:
    """A retryable failure, as a 500 or a 429 gives."""
    return DeliveryError("a", "HTTP 500", retry_after=retry_after)


@pytest.fixture
def journal(tmp_path):
    """A real journal on tmp_path whose sinks ``a`` and ``b`` want every event."""
    sinks = [SinkConfig(name="a", type="log"), SinkConfig(name="b", type="log")]
    j = Journal.open(tmp_path / "state", tmp_path / "events.jsonl", sinks)
    yield j
    j.close()


@pytest.fixture
def clock():
    """A virtual clock at T0: sleeps return at once and advance it."""
    return VirtualClock.auto()


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[None]:
    """Run the dispatcher for the block, then cancel it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        yield
        tg.cancel_scope.cancel()


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (real time, bounded) until it holds."""
    # Polling: the journal and the worker thread give no event to wait on.
    with anyio.fail_after(5):
        while True:
            if predicate():
                return
            await anyio.sleep(0.001)


def dispatcher_for(journal, clock, *sinks: ScriptedSink, **configs: Any) -> Dispatcher:
    """A dispatcher with jitter 0 over ``sinks`` (SinkConfig overrides by name)."""
    return Dispatcher(
        journal,
        {s.name: s for s in sinks},
        {s.name: SinkConfig(name=s.name, type="log", **configs) for s in sinks},
        clock,
        jitter=0,
        poll_interval=None,
    )


def head(journal: Journal, sink: str) -> OutboxRow | None:
    """The sink's head row, whenever it is due."""
    return journal.next_due(sink, FAR_FUTURE)


def record(journal: Journal, *events: Event) -> None:
    """Journal ``events`` (each under its own server)."""
    for event in events:
        journal.record(event.server, {}, [event])


def pending(journal: Journal, sink: str) -> int:
    """How many rows of ``sink`` are pending."""
    return next(s.pending for s in journal.outbox_summary(T0) if s.sink == sink)


async def test_delivers_every_event_in_order_per_server(journal, clock) -> None:
    """Each server's events reach the sink in the order they were journaled."""
    events = [phase_event(s, "r", p) for p in ("INITIALIZE", "CLEANUP") for s in "xy"]
    record(journal, *events)
    sink = ScriptedSink("a")
    async with running(dispatcher_for(journal, clock, sink)):
        await until(lambda: pending(journal, "a") == 0)
    assert sink.delivered == events
    assert pending(journal, "a") == 0


async def test_transient_failure_is_rescheduled_with_backoff(journal, clock) -> None:
    """A transient failure stores attempts, the error and now + backoff, then retries."""
    event = phase_event("x", "r", "INITIALIZE")
    record(journal, event)
    gate = anyio.Event()
    sink = ScriptedSink("a", transient(), transient(), gate.wait)
    async with running(dispatcher_for(journal, clock, sink)):
        await until(lambda: len(sink.attempts) == 3)
        row = head(journal, "a")
        gate.set()
        await until(lambda: len(sink.delivered) == 1)
    assert row is not None
    assert (row.attempts, row.first_attempt_at) == (2, T0)
    assert row.next_attempt_at == T0 + timedelta(seconds=1 + 2)
    assert row.last_error == "sink a: HTTP 500; will retry with backoff"
    assert clock.sleeps == [1.0, 2.0]


def test_backoff_doubles_up_to_its_cap(journal, clock) -> None:
    """The computed backoff is 1, 2, 4 ... seconds, capped at 300; jitter only adds."""
    plain = dispatcher_for(journal, clock)
    assert [plain.backoff(n) for n in range(1, 12)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0,
    ]  # fmt: skip
    jittered = Dispatcher(journal, {}, {}, clock, jitter=0.5, poll_interval=None)
    assert all(4.0 <= jittered.backoff(3) <= 4.5 for _ in range(50))


def test_backoff_jitter_comes_from_the_injected_random_source(journal, clock) -> None:
    """Seeded dispatchers jitter alike, and the global ``random`` is left alone."""
    global_before = random.getstate()
    first, second = (
        Dispatcher(journal, {}, {}, clock, poll_interval=None, rng=random.Random(3))
        for _ in range(2)
    )
    delays = [first.backoff(n) for n in range(1, 6)]
    assert delays == [second.backoff(n) for n in range(1, 6)]
    assert all(2 ** (n - 1) <= d <= 2 ** (n - 1) + 1 for n, d in enumerate(delays, 1))
    assert random.getstate() == global_before


@pytest.mark.parametrize(
    ("retry_after", "delay"), [(10.0, 10.0), (2.5, 2.5), (0.0, 1.0), (0.2, 1.0)]
)
async def test_retry_after_overrides_the_backoff(
    journal, clock, retry_after, delay
) -> None:
    """Retry-After replaces the computed backoff (4 s here), but never below 1 s."""
    record(journal, phase_event("x", "r", "INITIALIZE"))
    sink = ScriptedSink("a", transient(), transient(), transient(retry_after))
    async with running(dispatcher_for(journal, clock, sink)):
        await until(lambda: len(sink.delivered) == 1)
    assert clock.sleeps == [1.0, 2.0, delay]


async def test_permanent_error_dead_letters_at_once(journal, clock, logs) -> None:
    """A permanent error dead-letters the row, logs once, and the server's queue moves on."""
    first, second = (phase_event("x", "r", p) for p in ("INITIALIZE", "CLEANUP"))
    record(journal, first, second)
    gone = DeliveryError("a", "HTTP 410", permanent=True)
    sink = ScriptedSink("a", gone)
    async with running(dispatcher_for(journal, clock, sink)):
        await until(lambda: sink.delivered == [second])
    [dead] = journal.dead_rows()
    assert (dead.event, dead.attempts, dead.last_error) == (first, 1, str(gone))
    assert [e for e in logs if e["log_level"] != "debug"] == [
        {
            "event": "sink.dead_lettered",
            "log_level": "error",
            "sink": "a",
            "event_id": first.id,
            "type": "sklm.restore.phase",
            "server": "x",
            "attempts": 1,
            "error": "sink a: HTTP 410; check the configuration of sink a; "
            "the event is dead-lettered",
        }
    ]
    assert clock.sleeps == []


async def test_transient_failures_older_than_max_age_dead_letter(
    journal, clock
) -> None:
    """A row failing for longer than max_age is dead-lettered with the last error."""
    record(journal, phase_event("x", "r", "INITIALIZE"))
    sink = ScriptedSink("a", *(transient() for _ in range(10)))
    async with running(dispatcher_for(journal, clock, sink, max_age=10.0)):
        await until(lambda: bool(journal.dead_rows()))
    [dead] = journal.dead_rows()
    # Attempts at 0, 1, 3, 7 and 15 s: the fifth is past max_age.
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0]
    assert dead.attempts == 5
    assert dead.last_error == (
        "sink a: gave up after 15 s of failures (max_age 10 s); last error: HTTP 500"
    )


async def test_unexpected_exception_is_transient_and_logged(
    journal, clock, logs
) -> None:
    """A sink bug is logged with its traceback and retried like a transient failure."""
    event = phase_event("x", "r", "INITIALIZE")
    record(journal, event)
    sink = ScriptedSink("a", RuntimeError("boom"))
    async with running(dispatcher_for(journal, clock, sink)):
        await until(lambda: any(e["event"] == "sink.recovered" for e in logs))
    assert clock.sleeps == [1.0]
    assert [e for e in logs if e["log_level"] != "debug"] == [
        {
            "event": "sink.crashed",
            "log_level": "error",
            "sink": "a",
            "event_id": event.id,
            "exc_info": True,
        },
        {
            "event": "sink.failing",
            "log_level": "warning",
            "sink": "a",
            "event_id": event.id,
            "attempts": 1,
            "retry_in": 1.0,
            "error": "sink a: RuntimeError (unexpected; see the log)",
        },
        {
            "event": "sink.recovered",
            "log_level": "info",
            "sink": "a",
            "event_id": event.id,
        },
    ]


async def test_failure_is_logged_on_transitions_only(journal, clock, logs) -> None:
    """Failing is a warning once, each retry is debug, recovery is info."""
    event = phase_event("x", "r", "INITIALIZE")
    record(journal, event)
    sink = ScriptedSink("a", transient(), transient(), transient())
    async with running(dispatcher_for(journal, clock, sink)):
        await until(lambda: any(e["event"] == "sink.recovered" for e in logs))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("sink.failing", "warning"),
        ("sink.retry_scheduled", "debug"),
        ("sink.retry_scheduled", "debug"),
        ("sink.delivered", "debug"),
        ("sink.recovered", "info"),
    ]


async def test_wake_delivers_newly_journaled_events(journal, clock) -> None:
    """An idle worker waits for wake() and then takes what was journaled."""
    sink = ScriptedSink("a")
    dispatcher = dispatcher_for(journal, clock, sink)
    async with running(dispatcher):
        for phase in ("INITIALIZE", "CLEANUP"):
            event = phase_event("x", "r", phase)
            await journal.call(record, journal, event)
            dispatcher.wake()
            await until(lambda: sink.delivered[-1:] == [event])  # noqa: B023


async def test_idle_worker_polls_for_rows_changed_elsewhere(journal, clock) -> None:
    """Without wake(), an idle worker still finds new rows within poll_interval."""
    sink = ScriptedSink("a")
    dispatcher = Dispatcher(journal, {"a": sink}, {}, clock, poll_interval=30.0)
    event = phase_event("x", "r", "INITIALIZE")
    async with running(dispatcher):
        await until(lambda: bool(clock.sleeps))
        await journal.call(record, journal, event)
        await until(lambda: sink.delivered == [event])
    # Idle waits never exceed poll_interval; a row recorded between the worker's two
    # journal reads is re-checked after RECHECK_INTERVAL (1 s) instead.
    assert clock.sleeps
    assert set(clock.sleeps) <= {30.0, 1.0}


async def test_a_stuck_sink_does_not_delay_another(journal, clock) -> None:
    """Sink b delivers everything while sink a hangs on its first event."""
    events = [phase_event("x", "r", p) for p in ("INITIALIZE", "CLEANUP")]
    record(journal, *events)
    stuck = ScriptedSink("a", anyio.sleep_forever)
    healthy = ScriptedSink("b")
    async with running(dispatcher_for(journal, clock, stuck, healthy)):
        await until(lambda: healthy.delivered == events)
        assert stuck.attempts == events[:1]
    assert pending(journal, "a") == 2


async def test_journal_failure_does_not_end_the_worker(
    journal: Journal, clock, logs, monkeypatch
) -> None:
    """A journal error is logged with its traceback; the worker waits and goes on."""
    event = phase_event("x", "r", "INITIALIZE")
    record(journal, event)
    real = journal.next_due
    failures = [JournalError("disk full")]

    def next_due(sink: str, now: datetime) -> OutboxRow | None:
        if failures:
            raise failures.pop()
        return real(sink, now)

    monkeypatch.setattr(journal, "next_due", next_due)
    sink = ScriptedSink("a")
    async with running(dispatcher_for(journal, clock, sink)):
        await until(lambda: len(sink.delivered) == 1)
    assert clock.sleeps == [5.0]
    assert logs[0] == {
        "event": "dispatcher.worker_failed",
        "log_level": "error",
        "sink": "a",
        "exc_info": True,
    }


async def test_cancellation_propagates_and_keeps_the_row(journal, clock, logs) -> None:
    """Cancelling a delivery in flight ends run() by cancellation; the row stays pending."""
    record(journal, phase_event("x", "r", "INITIALIZE"))
    sink = ScriptedSink("a", anyio.sleep_forever)
    dispatcher = dispatcher_for(journal, clock, sink)
    with anyio.fail_after(5), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            await until(lambda: len(sink.attempts) == 1)
            scope.cancel()
    assert scope.cancelled_caught
    row = head(journal, "a")
    assert row is not None
    assert (row.attempts, row.last_error) == (0, None)
    assert logs == []


async def test_drain_lets_a_delivery_in_flight_finish(journal, clock) -> None:
    """drain() stops new work, waits for the delivery in flight, and run() returns."""
    events = [phase_event("x", "r", p) for p in ("INITIALIZE", "CLEANUP")]
    record(journal, *events)
    gate = anyio.Event()
    sink = ScriptedSink("a", gate.wait)
    dispatcher = dispatcher_for(journal, clock, sink)
    ran = anyio.Event()

    async def run() -> None:
        await dispatcher.run()
        ran.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await until(lambda: len(sink.attempts) == 1)
            tg.start_soon(dispatcher.drain)
            await anyio.lowlevel.checkpoint()
            gate.set()
            await ran.wait()
    assert sink.delivered == events[:1]
    assert pending(journal, "a") == 1


async def test_drain_grace_cancels_a_hung_delivery(journal, clock) -> None:
    """After the grace period a hung delivery is cancelled and its row stays pending."""
    record(journal, phase_event("x", "r", "INITIALIZE"))
    sink = ScriptedSink("a", anyio.sleep_forever)
    dispatcher = dispatcher_for(journal, clock, sink)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            await until(lambda: len(sink.attempts) == 1)
            await dispatcher.drain(0.01)
    row = head(journal, "a")
    assert row is not None
    assert row.attempts == 0


async def test_drain_stops_idle_workers_and_an_empty_dispatcher(journal, clock) -> None:
    """drain() ends run() at once when nothing is in flight, with or without sinks."""
    for sinks in ((ScriptedSink("a"), ScriptedSink("b")), ()):
        dispatcher = dispatcher_for(journal, clock, *sinks)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(dispatcher.run)
                await anyio.lowlevel.checkpoint()
                await dispatcher.drain()
    await dispatcher_for(journal, clock).drain()  # never ran: returns at once
