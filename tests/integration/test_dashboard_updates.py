"""The dashboard's cheap paths (issue 14's figures), over real HTTP on 127.0.0.1.

- ``/api/status?server=NAME``: the rows of the servers an event names, what the
  fleet page refetches per event instead of the whole fleet;
- pages and assets served from memory with an ``ETag`` (a reload is a 304);
- the stream: one store read and one socket write per client for the events a
  fan-out carries, and at most one fan-out per ``interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.integration import test_dashboard as base
from tests.integration.test_dashboard import (
    HANG_GUARD,
    Running,
    SseReader,
    StoreSource,
    audit_lines,
    record_phase,
)
from watcher import dashboard
from watcher.service import StatusServer
from watcher.store.sqlite import SqliteStore
from watcher.stream import EventStream

pytestmark = pytest.mark.integration

# The same scripted journal and running server as the dashboard's main tests.
journal = base.journal
running = base.running


# --- /api/status?server= ------------------------------------------------------------


@pytest.mark.parametrize("on_loop", [dashboard.ON_LOOP_ROWS, 0])
async def test_api_status_of_some_servers_is_their_rows(
    running: Running, monkeypatch: pytest.MonkeyPatch, on_loop: int
) -> None:
    """Each asked server's row, exactly as in the whole fleet's answer; no other.

    Built on the event loop (a few rows) or by the cached renderer in a thread.
    """
    monkeypatch.setattr(dashboard, "ON_LOOP_ROWS", on_loop)
    everyone = {row["server"]: row for row in await running.get_json("/api/status")}
    assert {"prod-1", "dr-1", "evil-1"} <= everyone.keys()
    some = await running.get_json("/api/status?server=dr-1&server=evil-1")
    assert sorted(row["server"] for row in some) == ["dr-1", "evil-1"]
    for row in some:
        assert row == everyone[row["server"]]
    # A glob, as /api/restores's server filter; an unknown name is no row.
    globbed = await running.get_json("/api/status?server=prod-*&server=nobody")
    assert globbed == [everyone["prod-1"]]
    assert await running.get_json("/api/status?server=nobody") == []


async def test_a_selection_keeps_the_other_rows_cached(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for one server must not make the next whole-fleet answer rebuild all."""
    monkeypatch.setattr(dashboard, "ON_LOOP_ROWS", 0)  # through the cache
    renderer = running.server._dashboard._status
    await running.get_json("/api/status")
    cached = dict(renderer._rows)
    assert len(cached) > 2
    await running.get_json("/api/status?server=dr-1")
    assert renderer._rows.keys() == cached.keys()
    assert all(renderer._rows[k] is v for k, v in cached.items())


# --- pages and assets -------------------------------------------------------------


async def test_pages_and_assets_revalidate_with_an_etag(running: Running) -> None:
    """An unchanged file is a 304 with the same ETag; its bytes are the file's."""
    for path in ("/", "/assets/fleet.js", "/assets/app.css"):
        status, headers, body = await running.get(path)
        assert status == 200
        assert body
        etag = headers["ETag"]
        assert headers["Cache-Control"] == "no-cache"
        status, again, body = await running.get(path, headers={"If-None-Match": etag})
        assert (status, body) == (304, "")
        assert again["ETag"] == etag
        # Another tag (a stale copy) gets the file.
        status, _, body = await running.get(path, headers={"If-None-Match": '"old"'})
        assert status == 200
        assert body


# --- the stream's batching ------------------------------------------------------------


class Pause:
    """An injected ``sleep`` for the stream's pump: it returns when the test says."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        """Note the pause, then wait for the test's release."""
        self.seconds.append(seconds)
        self.entered.set()
        await self.release.wait()


class Counting:
    """Counts ``events_since`` reads on a real store."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.reads = 0

    def events_since(self, after: int, limit: int) -> Any:
        """The store's lines, counted."""
        self.reads += 1
        return self.store.events_since(after, limit)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Through the real store's worker."""
        return await self.store.call(fn, *args)


async def test_events_journaled_during_the_pause_go_out_in_one_read_and_write(
    journal: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of notifies is one store read, then one socket write per client."""
    writes: list[bytes] = []
    real_write = web.StreamResponse.write

    async def write(self: web.StreamResponse, data: bytes) -> None:
        if self.content_type == "text/event-stream":
            writes.append(bytes(data))
        await real_write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", write)
    position = journal.audit_position()
    counting = Counting(journal)
    pause = Pause()
    stream = EventStream(
        counting,  # type: ignore[arg-type]
        start_after=position.index if position else 0,
        interval=0.25,
        sleep=pause,
    )
    fanned: list[int] = []
    stream.on_fanout = fanned.append
    pump = asyncio.create_task(stream.run())
    server = StatusServer(
        StoreSource(journal), version="9.9.9", store=journal, stream=stream
    )
    host, port = await server.start("127.0.0.1", 0)
    total = len(audit_lines(journal))
    try:
        async with aiohttp.ClientSession() as session:
            with anyio.fail_after(HANG_GUARD):
                async with session.get(
                    f"http://{host}:{port}/api/events/stream"
                ) as response:
                    reader = SseReader(response)
                    assert await reader.message() == {"retry": "2000"}
                    await anyio.to_thread.run_sync(record_phase, journal, 0)
                    stream.notify()
                    assert (await reader.event())["id"] == str(total + 1)
                    # The pump now pauses: three events, three notifies meanwhile.
                    await pause.entered.wait()
                    for n in range(1, 4):
                        await anyio.to_thread.run_sync(record_phase, journal, n)
                        stream.notify()
                    assert counting.reads == 1
                    writes.clear()
                    pause.release.set()
                    ids = [(await reader.event())["id"] for _ in range(3)]
    finally:
        await server.close()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
    assert ids == [str(total + n) for n in range(2, 5)]
    assert pause.seconds[0] == 0.25
    # One read for the three, fanned out at once, written to the client at once.
    assert counting.reads == 2
    assert fanned == [total + 1, total + 4]
    assert len(writes) == 1
    assert [json.loads(line[6:])["auditseq"] for line in _data_lines(writes[0])] == [
        total + 2,
        total + 3,
        total + 4,
    ]


def _data_lines(chunk: bytes) -> list[bytes]:
    return [line for line in chunk.split(b"\n") if line.startswith(b"data: ")]


async def test_a_replay_is_written_in_one_write_per_store_read(
    running: Running, journal: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Last-Event-ID: 0``: every line, in order, in one write (one store batch)."""
    writes: list[bytes] = []
    real_write: Callable[[web.StreamResponse, bytes], Awaitable[None]] = (
        web.StreamResponse.write
    )

    async def write(self: web.StreamResponse, data: bytes) -> None:
        if self.content_type == "text/event-stream":
            writes.append(bytes(data))
        await real_write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", write)
    lines = audit_lines(journal)
    with anyio.fail_after(HANG_GUARD):
        async with running.session.get(
            running.base + "/api/events/stream", headers={"Last-Event-ID": "0"}
        ) as response:
            reader = SseReader(response)
            await reader.message()
            got = [await reader.event() for _ in lines]
    assert [g["data"] for g in got] == lines
    # The retry line, then the whole replay.
    assert len(writes) == 2
    assert len(_data_lines(writes[1])) == len(lines)
