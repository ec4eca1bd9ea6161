"""The live event stream: audit lines fanned out to Server-Sent Events clients.

:class:`EventStream` keeps a cursor (the last ``auditseq`` it fanned out). The daemon
calls :meth:`EventStream.notify` right after new events were journaled; the pump
task then reads the lines after the cursor from the store (one query, however many
clients) and puts each in every client's bounded queue. Pushed, not polled: nothing
runs while nothing happens.

A client that sends ``Last-Event-ID: N`` is subscribed first and then replayed every
line after ``N`` from the store; the live lines that arrived meanwhile are skipped up
to the last replayed ``auditseq``: no gap, no duplicate. A client whose queue is full
(it reads slower than events come) is dropped; its browser reconnects with its last
id and catches up from the store, so memory stays bounded by
``clients x queue_size``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

import anyio
import structlog
from aiohttp import web
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from watcher.errors import JournalError
from watcher.store.base import EVENTS_SINCE_LIMIT, AuditLine, History, Worker

log = structlog.get_logger(__name__)

STREAM_CLIENT_DROPPED: Final = "stream.client_dropped"
STREAM_READ_FAILED: Final = "stream.read_failed"

#: Seconds between two ``: keepalive`` comments on an idle stream.
KEEPALIVE_INTERVAL: Final = 15.0
#: Lines a client may have waiting before it is dropped as too slow.
QUEUE_SIZE: Final = 1_000
#: Milliseconds a browser waits before reconnecting (``retry:``).
RETRY_MS: Final = 2000


class StreamStore(History, Worker, Protocol):
    """What the stream reads: ``events_since`` through the store's worker."""


class _Client:
    __slots__ = ("receive", "send")

    def __init__(self, size: int) -> None:
        self.send: MemoryObjectSendStream[AuditLine]
        self.receive: MemoryObjectReceiveStream[AuditLine]
        self.send, self.receive = anyio.create_memory_object_stream[AuditLine](size)


class EventStream:
    """Fans journaled audit lines out to SSE clients, with replay from the store.

    Args:
        store: Where the lines come from (``events_since``, run through ``call``).
        start_after: The ``auditseq`` already journaled at start (live clients get
            what comes after it).
        queue_size: Lines a client may have waiting before it is dropped.
        keepalive: Seconds between keepalive comments.
        batch: Lines read from the store per query.
    """

    def __init__(
        self,
        store: StreamStore,
        *,
        start_after: int = 0,
        queue_size: int = QUEUE_SIZE,
        keepalive: float = KEEPALIVE_INTERVAL,
        batch: int = EVENTS_SINCE_LIMIT,
    ) -> None:
        self._store = store
        self._cursor = start_after
        self._queue_size = queue_size
        self._keepalive = keepalive
        self._batch = batch
        self._clients: set[_Client] = set()
        self._wanted = anyio.Event()
        #: Clients dropped for being too slow (tests and metrics read it).
        self.dropped = 0
        #: Called with the cursor after each fan-out (tests wait on it).
        self.on_fanout: Callable[[int], None] | None = None

    @property
    def clients(self) -> int:
        """Clients connected now."""
        return len(self._clients)

    @property
    def cursor(self) -> int:
        """The last ``auditseq`` fanned out."""
        return self._cursor

    def notify(self) -> None:
        """New events were journaled: fan them out soon (cheap; call on the loop)."""
        self._wanted.set()

    async def run(self) -> None:
        """Fan out after each :meth:`notify` until cancelled (the pump task)."""
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            await self.pump()

    async def pump(self) -> None:
        """Read every line after the cursor from the store and fan it out."""
        while True:
            try:
                lines = await self._store.call(
                    self._store.events_since, self._cursor, self._batch
                )
            except JournalError as exc:
                # The next notify retries; clients reconnecting replay from the store.
                log.warning(STREAM_READ_FAILED, error=exc.detail)
                return
            for line in lines:
                self._fan_out(line)
            if lines:
                self._cursor = lines[-1].auditseq
                if self.on_fanout is not None:
                    self.on_fanout(self._cursor)
            if len(lines) < self._batch:
                return

    def _fan_out(self, line: AuditLine) -> None:
        for client in list(self._clients):
            try:
                client.send.send_nowait(line)
            except anyio.WouldBlock:
                # Too slow: drop it rather than let its queue grow. Closing the send
                # side ends its response; the browser reconnects and replays.
                self._clients.discard(client)
                client.send.close()
                self.dropped += 1
                log.info(STREAM_CLIENT_DROPPED, queued=self._queue_size)

    async def serve(
        self, request: web.Request, *, after: int | None
    ) -> web.StreamResponse:
        """Answer one ``/api/events/stream`` request until the client goes away.

        Args:
            request: The request.
            after: The client's ``Last-Event-ID``: replay every line after it
                first; None: live lines only.
        """
        client = _Client(self._queue_size)
        # Subscribed before the replay reads the store: a line journaled meanwhile
        # is in the queue, and skipped below if the replay already sent it.
        self._clients.add(client)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            sent = self._cursor if after is None else after
            if after is not None:
                sent = await self._replay(response, after)
            await self._live(response, client, sent)
        except (ConnectionResetError, anyio.BrokenResourceError):
            pass  # the client went away
        except JournalError as exc:
            # End this stream; the browser reconnects (retry) and replays from there.
            log.warning(STREAM_READ_FAILED, error=exc.detail)
        finally:
            self._clients.discard(client)
            client.send.close()
            client.receive.close()
        return response

    async def _replay(self, response: web.StreamResponse, after: int) -> int:
        sent = after
        while True:
            lines = await self._store.call(self._store.events_since, sent, self._batch)
            for line in lines:
                await response.write(_message(line))
                sent = line.auditseq
            if len(lines) < self._batch:
                return sent

    async def _live(
        self, response: web.StreamResponse, client: _Client, sent: int
    ) -> None:
        while True:
            line: AuditLine | None = None
            with anyio.move_on_after(self._keepalive):
                try:
                    line = await client.receive.receive()
                except anyio.EndOfStream:
                    return  # dropped as too slow, or the server is closing
            if line is None:
                await response.write(b": keepalive\n\n")
            elif line.auditseq > sent:
                await response.write(_message(line))
                sent = line.auditseq

    def close(self) -> None:
        """End every client's stream (the server is shutting down)."""
        for client in list(self._clients):
            client.send.close()
        self._clients.clear()


def _message(line: AuditLine) -> bytes:
    # An audit line is one line of compact JSON: it never contains a newline.
    return f"id: {line.auditseq}\ndata: {line.line}\n\n".encode()
