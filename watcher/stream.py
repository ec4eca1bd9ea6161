"""The live event stream: audit lines fanned out to Server-Sent Events clients.

:class:`EventStream` keeps a cursor (the last ``auditseq`` it fanned out). The daemon
calls :meth:`EventStream.notify` right after new events were journaled; the pump
task then reads the lines after the cursor from the store (one query, however many
clients), encodes each as an SSE message once, and appends them to every client's
bounded queue. Pushed, not polled: nothing runs while nothing happens.

Batched, because the cost is per wake-up, not per byte: the pump runs at most once
per ``interval`` (0.1 s; a burst of events is one read and one fan-out), and a client
writes everything queued for it in one socket write per wake-up. 20 clients on a
fleet journaling 50 events/s then cost ~200 writes/s, not 1,000 (issue 14's goal:
<= 5 % of one core), for at most ``interval`` of latency (goal: < 1 s).

A client that sends ``Last-Event-ID: N`` is subscribed first and then replayed every
line after ``N`` from the store; the live lines that arrived meanwhile are skipped up
to the last replayed ``auditseq``: no gap, no duplicate. A client whose queue is full
(it reads slower than events come) is dropped; its browser reconnects with its last
id and catches up from the store, so memory stays bounded by
``clients x queue_size``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import anyio
import structlog
from aiohttp import web

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
#: Least seconds between two fan-outs: events journaled meanwhile go out together.
FANOUT_INTERVAL: Final = 0.1


class StreamStore(History, Worker, Protocol):
    """What the stream reads: ``events_since`` through the store's worker."""


class _Client:
    """One connected client: its queued messages and what wakes its writer."""

    __slots__ = ("closed", "pending", "wake")

    def __init__(self) -> None:
        #: ``(auditseq, SSE message)`` not yet written, oldest first.
        self.pending: list[tuple[int, bytes]] = []
        #: Set when ``pending`` grew or the client was closed; replaced once seen.
        self.wake = anyio.Event()
        #: Dropped as too slow, or the server is closing: end after ``pending``.
        self.closed = False

    def close(self) -> None:
        """End this client's stream once what is queued is written."""
        self.closed = True
        self.wake.set()


class EventStream:
    """Fans journaled audit lines out to SSE clients, with replay from the store.

    Args:
        store: Where the lines come from (``events_since``, run through ``call``).
        start_after: The ``auditseq`` already journaled at start (live clients get
            what comes after it).
        queue_size: Lines a client may have waiting before it is dropped.
        keepalive: Seconds between keepalive comments.
        batch: Lines read from the store per query.
        interval: Least seconds between two fan-outs of :meth:`run`.
        sleep: How :meth:`run` waits ``interval`` (tests pass their own clock).
    """

    def __init__(
        self,
        store: StreamStore,
        *,
        start_after: int = 0,
        queue_size: int = QUEUE_SIZE,
        keepalive: float = KEEPALIVE_INTERVAL,
        batch: int = EVENTS_SINCE_LIMIT,
        interval: float = FANOUT_INTERVAL,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._store = store
        self._cursor = start_after
        self._queue_size = queue_size
        self._keepalive = keepalive
        self._batch = batch
        self._interval = interval
        self._sleep = sleep
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
            if self._interval > 0:
                # Notifies meanwhile set _wanted again: their lines go out in one
                # read and one write per client, after this pause.
                await self._sleep(self._interval)

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
            if lines:
                self._fan_out(lines)
                self._cursor = lines[-1].auditseq
                if self.on_fanout is not None:
                    self.on_fanout(self._cursor)
            if len(lines) < self._batch:
                return

    def _fan_out(self, lines: Sequence[AuditLine]) -> None:
        # Encoded once for every client.
        messages = [(line.auditseq, _message(line)) for line in lines]
        for client in list(self._clients):
            room = self._queue_size - len(client.pending)
            client.pending.extend(messages[: max(0, room)])
            if len(messages) > room:
                # Too slow: drop it rather than let its queue grow. It writes what
                # it holds and ends its response; the browser reconnects and replays.
                self._clients.discard(client)
                client.close()
                self.dropped += 1
                log.info(STREAM_CLIENT_DROPPED, queued=self._queue_size)
            else:
                client.wake.set()

    async def serve(
        self, request: web.Request, *, after: int | None
    ) -> web.StreamResponse:
        """Answer one ``/api/events/stream`` request until the client goes away.

        Args:
            request: The request.
            after: The client's ``Last-Event-ID``: replay every line after it
                first; None: live lines only.
        """
        client = _Client()
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
        except ConnectionResetError:
            pass  # the client went away
        except JournalError as exc:
            # End this stream; the browser reconnects (retry) and replays from there.
            log.warning(STREAM_READ_FAILED, error=exc.detail)
        finally:
            self._clients.discard(client)
            client.close()
        return response

    async def _replay(self, response: web.StreamResponse, after: int) -> int:
        sent = after
        while True:
            lines = await self._store.call(self._store.events_since, sent, self._batch)
            if lines:
                await response.write(b"".join(_message(line) for line in lines))
                sent = lines[-1].auditseq
            if len(lines) < self._batch:
                return sent

    async def _live(
        self, response: web.StreamResponse, client: _Client, sent: int
    ) -> None:
        while True:
            if not client.pending and not client.closed:
                with anyio.move_on_after(self._keepalive):
                    await client.wake.wait()
            # Everything queued, in one write; replaced before the write yields, so
            # a fan-out meanwhile sets the new event.
            batch, client.pending = client.pending, []
            client.wake = anyio.Event()
            # Lines the replay already sent were queued too: skipped here.
            data = b"".join(message for seq, message in batch if seq > sent)
            if batch:
                sent = max(sent, batch[-1][0])
            if data:
                await response.write(data)
            elif client.closed:
                return  # dropped as too slow, or the server is closing
            elif not batch:
                await response.write(b": keepalive\n\n")

    def close(self) -> None:
        """End every client's stream (the server is shutting down)."""
        for client in list(self._clients):
            client.close()
        self._clients.clear()


def _message(line: AuditLine) -> bytes:
    # An audit line is one line of compact JSON: it never contains a newline.
    return f"id: {line.auditseq}\ndata: {line.line}\n\n".encode()
