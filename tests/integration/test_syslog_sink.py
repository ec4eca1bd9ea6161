"""The syslog sink against a real relay on 127.0.0.1: TLS (trustme), TCP and UDP.

The relay parses octet-counted frames and RFC 5424 strictly; these tests check the
fields a SIEM parser relies on, one connection reused, reconnection after the relay
closed it, transient failures while it is down (the outbox keeps the event), and
permanent ones for an untrusted certificate or a datagram too large.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.clock import VirtualClock
from tests.integration.syslog_receiver import SyslogReceiver
from watcher.config import SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.errors import DeliveryError
from watcher.events import Event, EventType
from watcher.sinks.syslog import (
    MAX_DATAGRAM_BYTES,
    SyslogSink,
)
from watcher.store.sqlite import SqliteStore as Journal

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 29, 10, 0, 1, 250000, tzinfo=UTC)
TIMEOUT = 0.5
HANG_GUARD = 10.0


def failed(server: str = "sklm-prod-1", reason: str = "restore failed") -> Event:
    """A failed restore."""
    return Event.create(
        EventType.RESTORE_FAILED,
        server,
        START,
        {"restore_id": "r1", "duration": 12.0, "reason": reason, "phase": "CLEANUP"},
        key=("r1",),
    )


def phase(n: int) -> Event:
    """The n-th phase event of one restore (distinct ids)."""
    return Event.create(
        EventType.RESTORE_PHASE,
        "sklm-prod-1",
        START,
        {"restore_id": "r1", "phase": f"P{n}", "code": n, "inferred": False},
        key=("r1", f"P{n}"),
    )


def config(
    port: int, transport: str, ca_file: Path | None, **changes: Any
) -> SinkConfig:
    """A syslog sink to the relay on ``port``."""
    base = SinkConfig(
        name="siem",
        type="syslog",
        host="127.0.0.1",
        port=port,
        transport=transport,
        ca_file=ca_file,
        timeout=TIMEOUT,
        facility="local4",
    )
    return replace(base, **changes)


@pytest.fixture
async def relay(server_ssl: ssl.SSLContext) -> AsyncIterator[SyslogReceiver]:
    """A TLS relay (RFC 5425) with the trustme certificate."""
    async with SyslogReceiver("tls", server_ssl) as receiver:
        yield receiver


async def deliver(sink: SyslogSink, event: Event) -> DeliveryError | None:
    """Deliver once (under a hang guard); return the error, if any."""
    with anyio.fail_after(HANG_GUARD):
        try:
            await sink.deliver(event)
        except DeliveryError as exc:
            return exc
    return None


async def test_tls_message_has_every_documented_field(
    relay: SyslogReceiver, ca_file: Path
) -> None:
    """PRI, version, time, host, app, procid, msgid, SD and the CloudEvent as MSG."""
    sink = SyslogSink(config(relay.port, "tls", ca_file), VirtualClock.auto(START))
    event = failed()
    assert await deliver(sink, event) is None
    (message,) = await relay.wait_for(1)
    assert (message.facility, message.severity) == (20, 3)  # local4, err
    assert message.pri == 163
    assert message.version == 1
    assert message.timestamp == "2026-11-29T10:00:01.250Z"
    assert message.hostname == socket.gethostname()
    assert message.app_name == "sklm-watcher"
    assert message.procid == str(os.getpid())
    assert message.msgid == "sklm.restore.failed"
    assert message.sd == {
        "sklm@32473": {
            "id": event.id,
            "type": "sklm.restore.failed",
            "server": "sklm-prod-1",
            "restore_id": "r1",
            "phase": "CLEANUP",
        }
    }
    assert not message.msg.startswith(b"\xef\xbb\xbf")  # no BOM: the MSG is ASCII
    message.msg.decode("ascii")
    assert json.loads(message.msg) == event.to_dict()
    await sink.aclose()


async def test_one_connection_carries_many_messages(
    relay: SyslogReceiver, ca_file: Path
) -> None:
    """Consecutive events reuse one connection, each in its own octet-counted frame."""
    sink = SyslogSink(config(relay.port, "tls", ca_file), VirtualClock.auto(START))
    for n in range(5):
        assert await deliver(sink, phase(n)) is None
    messages = await relay.wait_for(5)
    assert relay.connections == 1
    assert [m.sd["sklm@32473"]["phase"] for m in messages] == [
        f"P{n}" for n in range(5)
    ]
    assert {m.severity for m in messages} == {6}  # info
    await sink.aclose()


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_relay_that_closed_the_connection_gets_a_new_one(
    relay: SyslogReceiver, ca_file: Path, reset: bool
) -> None:
    """A relay restart between events: the sink sees the close and reconnects first."""
    relay.close_after = 1
    relay.reset = reset
    sink = SyslogSink(config(relay.port, "tls", ca_file), VirtualClock.auto(START))
    assert await deliver(sink, phase(1)) is None
    await relay.wait_closed_connections(1)
    with anyio.fail_after(HANG_GUARD):
        # The FIN reaches our side of the socket (no event to await: poll it).
        while sink.is_connected:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert await deliver(sink, phase(2)) is None
    messages = await relay.wait_for(2)
    assert [m.sd["sklm@32473"]["phase"] for m in messages] == ["P1", "P2"]
    assert relay.connections == 2
    await sink.aclose()


async def test_relay_down_is_transient_and_back_delivers(
    server_ssl: ssl.SSLContext, ca_file: Path
) -> None:
    """Connection refused is transient (outbox keeps it); the relay back gets it."""
    receiver = SyslogReceiver("tls", server_ssl)
    await receiver.start()
    await receiver.stop()
    sink = SyslogSink(config(receiver.port, "tls", ca_file), VirtualClock.auto(START))
    error = await deliver(sink, failed())
    assert error is not None
    assert (error.permanent, error.detail) == (
        False,
        "ConnectionRefusedError (Connection refused)",
    )
    async with receiver:
        assert await deliver(sink, failed()) is None
        assert len(await receiver.wait_for(1)) == 1
        await sink.aclose()


async def test_untrusted_certificate_is_permanent(relay: SyslogReceiver) -> None:
    """Without the trustme CA the relay's certificate is refused: dead-lettered."""
    sink = SyslogSink(config(relay.port, "tls", None), VirtualClock.auto(START))
    error = await deliver(sink, failed())
    assert error is not None
    assert (error.permanent, error.detail) == (
        True,
        "the certificate of 127.0.0.1 is not trusted; check ca_file",
    )
    assert relay.raw == []


async def test_hanging_tls_handshake_is_a_transient_timeout(
    server_ssl: ssl.SSLContext, ca_file: Path
) -> None:
    """A relay that accepts but never speaks TLS ends the attempt at the timeout."""
    async with SyslogReceiver("tls", server_ssl) as receiver:
        await receiver.stop()
        receiver.hang = True
        await receiver.start()
        sink = SyslogSink(
            config(receiver.port, "tls", ca_file), VirtualClock.auto(START)
        )
        error = await deliver(sink, failed())
        assert error is not None
        assert (error.permanent, error.detail) == (False, "no answer within 0.5 s")
        assert not sink.is_connected


async def test_plain_tcp_frames_octet_counted() -> None:
    """transport = tcp: the same octet-counted frames without TLS."""
    async with SyslogReceiver("tcp") as receiver:
        sink = SyslogSink(config(receiver.port, "tcp", None), VirtualClock.auto(START))
        assert await deliver(sink, failed()) is None
        assert await deliver(sink, phase(1)) is None
        messages = await receiver.wait_for(2)
        assert [m.msgid for m in messages] == [
            "sklm.restore.failed",
            "sklm.restore.phase",
        ]
        assert receiver.connections == 1
        await sink.aclose()


async def test_udp_one_datagram_per_message() -> None:
    """transport = udp: one unframed message per datagram."""
    async with SyslogReceiver("udp") as receiver:
        sink = SyslogSink(config(receiver.port, "udp", None), VirtualClock.auto(START))
        event = failed()
        assert await deliver(sink, event) is None
        (message,) = await receiver.wait_for(1)
        assert receiver.raw == [sink.message(event)]
        assert json.loads(message.msg)["id"] == event.id
        await sink.aclose()


async def test_udp_message_too_large_is_permanent() -> None:
    """A message over the datagram limit is refused (permanent: use tcp or tls)."""
    async with SyslogReceiver("udp") as receiver:
        sink = SyslogSink(config(receiver.port, "udp", None), VirtualClock.auto(START))
        error = await deliver(sink, failed(reason="x" * MAX_DATAGRAM_BYTES))
        assert error is not None
        assert error.permanent
        assert error.detail.endswith(
            f"exceeds the UDP limit of {MAX_DATAGRAM_BYTES}; use transport tcp or tls"
        )
        assert receiver.raw == []
        await sink.aclose()


async def test_event_waits_in_the_outbox_until_the_relay_is_back(
    tmp_path: Path, server_ssl: ssl.SSLContext, ca_file: Path
) -> None:
    """Relay down at first: the row is retried and delivered once it listens."""
    receiver = SyslogReceiver("tls", server_ssl)
    await receiver.start()
    await receiver.stop()
    sink_config = config(receiver.port, "tls", ca_file)
    journal = Journal.open(
        tmp_path / "state", tmp_path / "events.jsonl", (sink_config,)
    )
    event = failed()
    journal.record(event.server, {}, [event])
    clock = VirtualClock.auto(START)
    sink = SyslogSink(sink_config, clock)
    errors: list[str] = []

    class Watched:
        """The sink, bringing the relay up after the second failure."""

        name = sink.name

        async def deliver(self, event: Event) -> None:
            try:
                await sink.deliver(event)
            except DeliveryError as exc:
                errors.append(exc.detail)
                if len(errors) == 2:
                    await receiver.start()
                raise

    dispatcher = Dispatcher(
        journal, {"siem": Watched()}, {"siem": sink_config}, clock, jitter=0
    )
    with anyio.fail_after(HANG_GUARD * 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            while (await journal.call(journal.outbox_summary, START))[0].pending:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    journal.close()
    messages = await receiver.wait_for(1)
    await sink.aclose()
    await receiver.stop()
    assert errors == ["ConnectionRefusedError (Connection refused)"] * 2
    assert [m.sd["sklm@32473"]["id"] for m in messages] == [event.id]


async def test_cancellation_propagates_and_the_sink_goes_on(
    server_ssl: ssl.SSLContext, ca_file: Path
) -> None:
    """Cancelled mid-handshake (shutdown): no DeliveryError; the next attempt connects."""
    async with SyslogReceiver("tls", server_ssl) as receiver:
        await receiver.stop()
        receiver.hang = True
        await receiver.start()
        sink_config = config(receiver.port, "tls", ca_file, timeout=HANG_GUARD)
        sink = SyslogSink(sink_config, VirtualClock.auto(START))
        outcome: list[str] = []

        async def attempt() -> None:
            try:
                await sink.deliver(failed())
            except DeliveryError:
                outcome.append("delivery error")
            else:
                outcome.append("delivered")

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(attempt)
                await receiver.hung.wait()
                tg.cancel_scope.cancel()
        assert outcome == []
        assert not sink.is_connected
        await receiver.stop()
        receiver.hang = False
        await receiver.start()
        assert await deliver(sink, failed()) is None
        assert len(await receiver.wait_for(1)) == 1
        await sink.aclose()
