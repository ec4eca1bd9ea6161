"""Dispatcher + real sinks + a real journal ↔ real HTTP receivers on 127.0.0.1."""

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import anyio
import pytest
from standardwebhooks.webhooks import Webhook

from tests.clock import VirtualClock
from tests.integration.conftest_receiver import HOOK_PATH, Receiver
from watcher.clock import Clock
from watcher.config import Secret, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.events import Event, EventType
from watcher.sinks import build_sink
from watcher.sinks.slack import render
from watcher.store.base import OutboxRow
from watcher.store.sqlite import SqliteStore as Journal

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"integration-signing-key-32bytes!").decode()
TOKEN = HOOK_PATH.rsplit("/", 1)[1]
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A recording HTTP receiver on 127.0.0.1 (port 0), closed after the test."""
    async with Receiver() as r:
        yield r


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The process's one HTTP session, as the daemon would create it."""
    async with aiohttp.ClientSession() as s:
        yield s


def hook(name: str, url: str, **kwargs) -> SinkConfig:
    """A webhook sink configuration."""
    return SinkConfig(name=name, type="webhook", url=Secret(url), **kwargs)


def open_journal(tmp_path: Path, *configs: SinkConfig) -> Journal:
    """The journal in tmp_path (the same files on every call)."""
    return Journal.open(tmp_path / "state", tmp_path / "events.jsonl", configs)


def phases(at: datetime, *servers: str) -> list[Event]:
    """Three phase events per server, interleaved across servers."""
    return [
        Event.create(
            EventType.RESTORE_PHASE,
            server,
            at,
            {"restore_id": "r1", "phase": phase, "code": code, "inferred": False},
            key=("r1", phase),
        )
        for code, phase in enumerate(("INITIALIZE", "CREATE_TEMP_DIR", "CLEANUP"), 1)
        for server in servers
    ]


def record(journal: Journal, events: list[Event]) -> None:
    """Journal each event under its server."""
    for event in events:
        journal.record(event.server, {}, [event])


@asynccontextmanager
async def dispatching(
    journal: Journal,
    session: aiohttp.ClientSession,
    clock: Clock,
    *configs: SinkConfig,
) -> AsyncIterator[Dispatcher]:
    """Run a dispatcher with real sinks for the block, then cancel it."""
    sinks = {c.name: build_sink(c, session, clock) for c in configs}
    dispatcher = Dispatcher(
        journal, sinks, {c.name: c for c in configs}, clock, jitter=0
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        yield dispatcher
        tg.cancel_scope.cancel()


async def until(journal: Journal, check: Callable[[], bool]) -> None:
    """Poll the journal-backed ``check`` in its thread, with a deadline."""
    with anyio.fail_after(10):
        while True:
            if await journal.call(check):
                return
            await anyio.sleep(0.005)


def head(journal: Journal, sink: str) -> OutboxRow | None:
    """The sink's next row, whenever due."""
    return journal.next_due(sink, FAR_FUTURE)


def pending(journal: Journal, sink: str) -> int:
    """Pending rows of ``sink``."""
    [summary] = [s for s in journal.outbox_summary(FAR_FUTURE) if s.sink == sink]
    return summary.pending


async def test_receiver_down_then_up_loses_nothing(tmp_path, receiver, session) -> None:
    """While the receiver is down rows wait; once up, each arrives once, in order per server."""
    config = hook("ops", receiver.url())
    journal = open_journal(tmp_path, config)
    clock = VirtualClock.auto(datetime(2026, 11, 29, 10, tzinfo=UTC))
    events = phases(clock.start, "a", "b", "c")
    record(journal, events)
    await receiver.stop()
    async with dispatching(journal, session, clock, config):

        def retried() -> bool:
            row = head(journal, "ops")
            return row is not None and row.attempts >= 3

        await until(journal, retried)
        assert receiver.requests == []
        await receiver.start()
        received = await receiver.wait_for(len(events))
        await until(journal, lambda: pending(journal, "ops") == 0)
    journal.close()
    bodies = [r.json() for r in received]
    assert sorted(b["id"] for b in bodies) == sorted(e.id for e in events)
    for server in "abc":
        sent = [e.to_dict() for e in events if e.server == server]
        assert [b for b in bodies if b["subject"] == server] == sent
    assert {r.path for r in received} == {HOOK_PATH}


async def test_retry_after_sets_the_next_attempt(tmp_path, receiver, session) -> None:
    """429 with Retry-After: 2 stores next_attempt_at 2 s after the attempt, and waits."""
    config = hook("ops", receiver.url())
    journal = open_journal(tmp_path, config)
    start = datetime(2026, 11, 29, 10, tzinfo=UTC)
    clock = VirtualClock(start)
    record(journal, phases(start, "a")[:1])
    receiver.now = clock.now
    receiver.answer(429, {"Retry-After": "2"})
    async with dispatching(journal, session, clock, config):
        await receiver.wait_for(1)

        def rescheduled() -> bool:
            row = head(journal, "ops")
            return row is not None and row.attempts == 1

        await until(journal, rescheduled)
        row = await journal.call(head, journal, "ops")
        assert row is not None
        assert row.first_attempt_at == start
        assert row.next_attempt_at == start + timedelta(seconds=2)
        assert row.last_error == "sink ops: HTTP 429; will retry with backoff"
        with anyio.fail_after(5):
            while clock.sleeping == 0:
                await anyio.lowlevel.checkpoint()
        clock.advance(1.5)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert len(receiver.requests) == 1
        clock.advance(0.5)
        first, second = await receiver.wait_for(2)
        await until(journal, lambda: pending(journal, "ops") == 0)
    journal.close()
    assert second.at - first.at == timedelta(seconds=2)


@pytest.mark.parametrize(
    ("status", "headers"),
    [(410, {}), (302, {"Location": "/elsewhere"}), (400, {})],
)
async def test_permanent_answers_dead_letter_at_once(
    tmp_path, receiver, session, logs, status, headers
) -> None:
    """410, 400 or a redirect dead-letters after one POST; the URL shows nowhere."""
    config = hook("ops", receiver.url(), secrets=(Secret(SECRET),))
    journal = open_journal(tmp_path, config)
    clock = VirtualClock.auto(datetime.now(UTC))
    [event] = phases(clock.start, "a")[:1]
    record(journal, [event])
    receiver.always(status, headers)
    async with dispatching(journal, session, clock, config):
        await until(journal, lambda: bool(journal.dead_rows()))
    [dead] = journal.dead_rows()
    journal.close()
    assert [r.path for r in receiver.requests] == [HOOK_PATH]
    assert dead.event == event
    assert dead.last_error is not None
    assert dead.last_error.startswith(f"sink ops: HTTP {status}")
    [entry] = [e for e in logs if e["event"] == "sink.dead_lettered"]
    assert entry["log_level"] == "error"
    for text in (dead.last_error, repr(logs)):
        assert TOKEN not in text
        assert "127.0.0.1" not in text
        assert SECRET.removeprefix("whsec_") not in text


async def test_a_hung_sink_does_not_delay_a_healthy_one(
    tmp_path, receiver, session
) -> None:
    """A receiver that never answers holds up its own sink only."""
    async with Receiver() as slow:
        slow.hang = True
        configs = (hook("slow", slow.url(), timeout=30.0), hook("ops", receiver.url()))
        journal = open_journal(tmp_path, *configs)
        clock = VirtualClock.auto(datetime(2026, 11, 29, 10, tzinfo=UTC))
        events = phases(clock.start, "a")
        record(journal, events)
        async with dispatching(journal, session, clock, *configs):
            received = await receiver.wait_for(len(events))
            assert [r.json()["id"] for r in received] == [e.id for e in events]
            assert len(slow.requests) == 1
    assert await journal.call(pending, journal, "slow") == len(events)
    journal.close()


async def test_restart_delivers_pending_rows_with_their_ids(
    tmp_path, receiver, session
) -> None:
    """Rows left pending by one process are delivered, signed, by the next one."""
    config = hook("ops", receiver.url(), secrets=(Secret(SECRET),))
    journal = open_journal(tmp_path, config)
    clock = VirtualClock.auto(datetime.now(UTC))
    events = phases(clock.start, "a", "b")
    record(journal, events)
    receiver.always(500)
    async with dispatching(journal, session, clock, config):
        await receiver.wait_for(2)
    journal.close()
    receiver.requests.clear()
    receiver.always(200)

    journal = open_journal(tmp_path, config)
    assert await journal.call(pending, journal, "ops") == len(events)
    async with dispatching(journal, session, clock, config):
        received = await receiver.wait_for(len(events))
        await until(journal, lambda: pending(journal, "ops") == 0)
    journal.close()
    verified = [Webhook(SECRET).verify(r.body, dict(r.headers)) for r in received]
    assert sorted(v["id"] for v in verified) == sorted(e.id for e in events)
    assert [r.headers["webhook-id"] for r in received] == [v["id"] for v in verified]
    for server in "ab":
        ids = [v["id"] for v in verified if v["subject"] == server]
        assert ids == [e.id for e in events if e.server == server]


async def test_cancellation_propagates_from_a_request_in_flight(
    tmp_path, receiver, session, logs
) -> None:
    """Cancelling during a POST ends the dispatcher by cancellation; the row stays pending."""
    config = hook("ops", receiver.url())
    journal = open_journal(tmp_path, config)
    clock = VirtualClock.auto(datetime(2026, 11, 29, 10, tzinfo=UTC))
    record(journal, phases(clock.start, "a")[:1])
    receiver.hang = True
    sinks = {"ops": build_sink(config, session, clock)}
    dispatcher = Dispatcher(journal, sinks, {"ops": config}, clock, poll_interval=None)
    with anyio.fail_after(5), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            await receiver.wait_for(1)
            scope.cancel()
    assert scope.cancelled_caught
    row = await journal.call(head, journal, "ops")
    journal.close()
    assert row is not None
    assert (row.attempts, row.last_error) == (0, None)
    assert logs == []


async def test_slack_sink_posts_its_message(tmp_path, receiver, session) -> None:
    """The Slack sink's POST body is the rendered Block Kit message."""
    config = SinkConfig(name="chat", type="slack", url=Secret(receiver.url()))
    journal = open_journal(tmp_path, config)
    clock = VirtualClock.auto(datetime(2026, 11, 29, 10, tzinfo=UTC))
    event = Event.create(
        EventType.RESTORE_STARTED, "a", clock.start, {"phase": "INITIALIZE"}, key=("r",)
    )
    record(journal, [event])
    async with dispatching(journal, session, clock, config):
        [received] = await receiver.wait_for(1)
        await until(journal, lambda: pending(journal, "chat") == 0)
    journal.close()
    assert received.json() == render(event)
