"""A raw asyncio HTTP/1.1 server that misbehaves on purpose, for the hostile-SKLM corpus.

aiohttp's own server is too well behaved to send headers that never end, a wrong
``Content-Length``, broken chunked framing or a reset in the middle of a body. This
server parses requests itself (just enough HTTP/1.1 for the client under test),
answers login normally (a fresh ``{"UserAuthId": ...}`` per login) unless told
otherwise, and answers a progress path with scripted raw bytes. It listens on
127.0.0.1, port 0, plain or TLS, and records what it saw, so a test can assert
that the client stopped reading at its cap or that a redirect target got nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Final, Literal

import anyio

#: The largest request head the server reads; a well-behaved client sends far less.
MAX_REQUEST_HEAD: Final = 64 * 1024
#: Where a sink under test posts (``hook=`` answers it).
HOOK_PATH: Final = "/hook"


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request: method, path, lowercase header names, body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Responder = Callable[["Exchange"], Awaitable[None]]
ConnectionHandler = Callable[
    ["HostileServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]


@dataclass
class StreamStats:
    """How much of a streamed answer the server got out before the client hung up."""

    total: int = 0
    sent: int = 0
    aborted: bool = False


class Exchange:
    """One request on one connection: what the client sent and how to answer it."""

    def __init__(
        self,
        server: HostileServer,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.request = request
        self.reader = reader
        self.writer = writer
        #: Set by a responder that leaves the connection unusable for another request.
        self.done = False

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until the transport has taken it."""
        self.writer.write(data)
        await self.writer.drain()

    async def respond(
        self,
        status: str,
        body: bytes = b"",
        *,
        headers: Sequence[tuple[str, str]] = (),
        content_type: str | None = "application/json",
        length: int | None = None,
    ) -> None:
        """Send a whole response; ``length`` overrides the true Content-Length."""
        lines = [f"HTTP/1.1 {status}"]
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body) if length is None else length}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
        await self.send(head + body)

    async def json(self, status: str, value: object) -> None:
        """Send ``value`` as a JSON response."""
        await self.respond(status, json.dumps(value).encode())

    async def trickle(self, data: bytes, interval: float) -> None:
        """Send ``data`` one byte per ``interval`` seconds (until the server closes)."""
        for index in range(len(data)):
            await self.send(data[index : index + 1])
            await self.server.pause(interval)

    async def stream(self, head: bytes, chunk: bytes, total: int) -> None:
        """Send ``head`` then ``chunk`` repeatedly up to ``total`` bytes, recording
        how far it got before the client closed the connection."""
        stats = self.server.stream_stats
        stats.total = total
        try:
            await self.send(head)
            while stats.sent < total:
                piece = chunk[: total - stats.sent]
                await self.send(piece)
                stats.sent += len(piece)
        except (ConnectionError, OSError):
            stats.aborted = True
        finally:
            self.server.stream_done.set()
        self.done = True

    async def hang(self) -> None:
        """Keep the connection open, saying nothing more, until the server closes."""
        self.done = True
        await self.server.closing.wait()

    def close(self) -> None:
        """Close the connection with a FIN."""
        self.done = True
        self.writer.close()

    def reset(self) -> None:
        """Close the connection with a RST (SO_LINGER 0)."""
        self.done = True
        reset(self.writer)


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort ``writer``'s connection with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def login_ok(ex: Exchange) -> None:
    """Answer a login as SKLM does: 200 with a fresh ``UserAuthId``."""
    await ex.json("200 OK", {"UserAuthId": ex.server.new_session_id()})


async def idle(ex: Exchange) -> None:
    """Answer a progress request as an idle SKLM does."""
    await ex.json("200 OK", {"code": "0", "status": "IDLE"})


def answer(
    status: str,
    body: bytes | str,
    *,
    content_type: str | None = "application/json",
    headers: Sequence[tuple[str, str]] = (),
) -> Responder:
    """A responder sending one well-framed response."""
    data = body.encode() if isinstance(body, str) else body

    async def respond(ex: Exchange) -> None:
        await ex.respond(status, data, content_type=content_type, headers=headers)

    return respond


def raw(
    data: bytes, *, then: Literal["keep", "close", "reset", "hang"] = "keep"
) -> Responder:
    """A responder writing ``data`` verbatim, then keeping, closing or resetting."""

    async def respond(ex: Exchange) -> None:
        await ex.send(data)
        if then == "close":
            ex.close()
        elif then == "reset":
            ex.reset()
        elif then == "hang":
            await ex.hang()

    return respond


def trickled(head: bytes, body: bytes, interval: float = 1.0) -> Responder:
    """A responder sending ``head`` at once, then ``body`` a byte per ``interval``."""

    async def respond(ex: Exchange) -> None:
        await ex.send(head)
        await ex.trickle(body, interval)
        await ex.hang()

    return respond


def streamed(head: bytes, total: int) -> Responder:
    """A responder sending ``head`` then ``total`` body bytes as fast as it may."""

    async def respond(ex: Exchange) -> None:
        await ex.stream(head, b" " * 65536, total)

    return respond


def redirect(status: str) -> Responder:
    """A responder redirecting to the same path on the witness server."""

    async def respond(ex: Exchange) -> None:
        assert ex.server.witness is not None
        location = ex.server.witness.url + ex.request.path
        await ex.respond(status, b"", headers=[("Location", location)])

    return respond


async def headers_forever(ex: Exchange) -> None:
    """Send a status line, then header lines until the client gives up."""
    await ex.send(b"HTTP/1.1 200 OK\r\n")
    for index in range(1_000_000):
        await ex.send(b"X-Pad-%d: padding\r\n" % index)


async def close_at_once(ex: Exchange) -> None:
    """Close the connection without answering."""
    ex.close()


async def reset_at_once(ex: Exchange) -> None:
    """Reset the connection without answering."""
    ex.reset()


@cache
def gzip_bomb() -> bytes:
    """About 40 KB of gzip (under the cap) that inflates to 40 MB of zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    parts = [packer.compress(block) for _ in range(40)]
    return b"".join(parts) + packer.flush()


async def stopped_reading(server: HostileServer) -> None:
    """The client closed the connection long before the server sent everything."""
    with anyio.fail_after(10.0):  # a hang guard, not a speed assertion
        await server.stream_done.wait()
    stats = server.stream_stats
    assert stats.aborted
    assert stats.sent < stats.total // 2


async def witness_untouched(server: HostileServer) -> None:
    """The redirect's target never saw a connection."""
    assert server.witness is not None
    assert server.witness.connections == 0
    assert server.witness.requests == []


class HostileServer:
    """A raw HTTP/1.1 server on 127.0.0.1 answering with scripted (mis)behaviour.

    Args:
        progress: The answer(s) to progress requests, used in order; the last repeats.
        login: The answer to ``POST .../ckms/login``.
        ssl_context: Serve TLS with this context.
        connection: Replace HTTP handling entirely: called per accepted connection
            (for TLS handshake failures, which happen before any request).
        hook: The answer(s) to requests for :data:`HOOK_PATH` (a hostile webhook
            or Slack receiver for the sink corpus), used in order; the last repeats.
    """

    def __init__(
        self,
        progress: Responder | Sequence[Responder] = idle,
        *,
        login: Responder = login_ok,
        ssl_context: ssl.SSLContext | None = None,
        connection: ConnectionHandler | None = None,
        hook: Responder | Sequence[Responder] = idle,
    ) -> None:
        self._progress = (progress,) if callable(progress) else tuple(progress)
        self._hook = (hook,) if callable(hook) else tuple(hook)
        self.hook_requests = 0
        self._login = login
        self._ssl = ssl_context
        self._connection = connection
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.url = ""
        #: Every request parsed, in order.
        self.requests: list[Request] = []
        #: Session ids handed out by login answers (the test checks none leaks).
        self.session_ids: list[str] = []
        self.connections = 0
        self.logins = 0
        self.progress_requests = 0
        #: Set when the first connection is accepted (after TLS, if any).
        self.connected = asyncio.Event()
        #: Set when the first progress request arrives.
        self.progress_seen = asyncio.Event()
        #: Set when the server closes: hanging and trickling answers stop.
        self.closing = asyncio.Event()
        self.stream_stats = StreamStats()
        #: Set when a streamed answer ends, sent in full or cut off by the client.
        self.stream_done = asyncio.Event()
        #: Another server a responder may point at (a redirect's target).
        self.witness: HostileServer | None = None

    async def __aenter__(self) -> HostileServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on 127.0.0.1, port 0; ``url`` then names it."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, ssl=self._ssl, limit=MAX_REQUEST_HEAD
        )
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self._ssl else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening, end every connection and wait for the handlers."""
        self.closing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # Handlers end on their own once ``closing`` is set and their transports
        # are gone; cancelling them would make Python 3.11's stream callback log
        # the CancelledError. Cancel only a handler that fails to notice.
        if self._tasks:
            _done, stuck = await asyncio.wait(list(self._tasks), timeout=5.0)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the server closes meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)

    def new_session_id(self, value: str | None = None) -> str:
        """Record and return a session id (a fresh one unless ``value`` is given)."""
        session_id = value or f"sid-{len(self.session_ids)}-{id(self):x}-hostile"
        self.session_ids.append(session_id)
        return session_id

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.connected.set()
        try:
            if self._connection is not None:
                await self._connection(self, reader, writer)
            else:
                await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.LimitOverrunError:
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not self.closing.is_set():
            request = await _read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            exchange = Exchange(self, request, reader, writer)
            await self._dispatch(exchange)
            if exchange.done or writer.is_closing():
                return

    async def _dispatch(self, ex: Exchange) -> None:
        path = ex.request.path
        if path.endswith("/ckms/login"):
            self.logins += 1
            await self._login(ex)
        elif path.endswith("/progress"):
            index = min(self.progress_requests, len(self._progress) - 1)
            self.progress_requests += 1
            self.progress_seen.set()
            await self._progress[index](ex)
        elif path.endswith("/ckms/logout"):
            await ex.json("200 OK", {})
        elif path == HOOK_PATH:
            index = min(self.hook_requests, len(self._hook) - 1)
            self.hook_requests += 1
            await self._hook[index](ex)
        else:
            await ex.json("404 Not Found", {"code": "CTGKM0001E", "message": "no"})


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request (head and Content-Length body); None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Request(method, path, headers, body)


@dataclass
class Fleet:
    """Hostile servers started together and closed together."""

    servers: list[HostileServer] = field(default_factory=list)

    async def start(self, server: HostileServer) -> HostileServer:
        """Start ``server`` and close it with the rest."""
        await server.start()
        self.servers.append(server)
        return server

    async def close(self) -> None:
        """Close every server started, newest first."""
        for server in reversed(self.servers):
            await server.close()
