"""Standard Webhooks headers as a real receiver on 127.0.0.1 sees them, signed or not."""

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import anyio
import pytest
from standardwebhooks.webhooks import Webhook

from tests.clock import VirtualClock
from tests.integration.conftest_receiver import Receiver
from watcher.config import Secret, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.events import Event, EventType
from watcher.sinks import build_sink
from watcher.store.sqlite import SqliteStore as Journal

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"header-test-signing-key-32bytes!").decode()
START = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A recording HTTP receiver on 127.0.0.1 (port 0), closed after the test."""
    async with Receiver() as r:
        yield r


def _event() -> Event:
    return Event.create(
        EventType.RESTORE_STARTED,
        "sklm-2",
        START,
        {"restore_id": "r1", "phase": "INITIALIZE", "code": 1},
        key=("r1",),
    )


async def _deliver(
    tmp_path: Path, receiver: Receiver, config: SinkConfig, clock: VirtualClock
) -> list[tuple[dict[str, str], bytes]]:
    """Journal one event, let a real dispatcher deliver it (one 500, then 200)."""
    event = _event()
    receiver.answer(500)
    receiver.always(200)
    with Journal.open(tmp_path / "s", tmp_path / "e.jsonl", [config]) as journal:
        journal.record(event.server, {}, [event])
        async with aiohttp.ClientSession() as session:
            sink = build_sink(config, session, clock)
            dispatcher = Dispatcher(
                journal, {config.name: sink}, {config.name: config}, clock, jitter=0
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(dispatcher.run)
                received = await receiver.wait_for(2)
                tg.cancel_scope.cancel()
    return [({k.lower(): v for k, v in r.headers.items()}, r.body) for r in received]


async def test_unsigned_webhook_has_id_and_timestamp(tmp_path, receiver) -> None:
    """Without a secret: webhook-id (the event id, same on the retry) and timestamp."""
    config = SinkConfig(name="ops", type="webhook", url=Secret(receiver.url()))
    clock = VirtualClock.auto(START)

    [(first, _), (retry, _)] = await _deliver(tmp_path, receiver, config, clock)

    event_id = _event().id
    assert (first["webhook-id"], retry["webhook-id"]) == (event_id, event_id)
    assert first["webhook-timestamp"] == str(int(START.timestamp()))
    # The retry is stamped when it is sent (virtual time moved by the backoff).
    assert int(retry["webhook-timestamp"]) >= int(first["webhook-timestamp"])
    assert "webhook-signature" not in first
    assert "webhook-signature" not in retry


async def test_signed_webhook_has_all_three(tmp_path, receiver) -> None:
    """With a secret: the same id and timestamp, plus a signature that verifies."""
    config = SinkConfig(
        name="ops",
        type="webhook",
        url=Secret(receiver.url()),
        secrets=(Secret(SECRET),),
    )
    # Webhook.verify checks the timestamp against the real time.
    clock = VirtualClock.auto(datetime.now(UTC))

    received = await _deliver(tmp_path, receiver, config, clock)

    for headers, body in received:
        assert headers["webhook-id"] == _event().id
        assert Webhook(SECRET).verify(body, headers)["id"] == _event().id
