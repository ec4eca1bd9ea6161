"""A syslog relay on 127.0.0.1 for the syslog sink's tests: TLS, TCP or UDP.

It parses what arrives as strictly as a SIEM collector would: octet-counted frames
on TCP and TLS (RFC 6587 3.4.1 / RFC 5425 4.3: ``MSG-LEN SP SYSLOG-MSG``, MSG-LEN
without leading zeros), one message per datagram on UDP, and each message by the
RFC 5424 grammar (header fields, structured data with its escapes). Anything that
does not parse is recorded in ``errors``. It can close every connection after some
frames (a relay restarting), hang a TLS handshake, or be down.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from typing import Literal

import anyio

Transport = Literal["tls", "tcp", "udp"]

_HEADER = re.compile(
    rb"<(?P<pri>[0-9]{1,3})>(?P<version>[1-9][0-9]{0,2}) "
    rb"(?P<timestamp>\S+) (?P<hostname>[!-~]{1,255}) (?P<app_name>[!-~]{1,48}) "
    rb"(?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
)
_TIMESTAMP = re.compile(
    r"-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)
_SD_NAME = re.compile(rb"[!-~]{1,32}")


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    """One RFC 5424 message, parsed."""

    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    #: SD-ID -> {PARAM-NAME: value (unescaped)}.
    sd: dict[str, dict[str, str]]
    msg: bytes

    @property
    def facility(self) -> int:
        """PRI // 8."""
        return self.pri // 8

    @property
    def severity(self) -> int:
        """PRI % 8."""
        return self.pri % 8


def _parse_sd(data: bytes, at: int) -> tuple[dict[str, dict[str, str]], int]:
    sd: dict[str, dict[str, str]] = {}
    if data[at : at + 1] == b"-":
        return sd, at + 1
    while data[at : at + 1] == b"[":
        at += 1
        name = _SD_NAME.match(data, at)
        end = data.find(b" ", at)
        close = data.find(b"]", at)
        stop = min(i for i in (end, close) if i != -1)
        if name is None or b"=" in data[at:stop] or b'"' in data[at:stop]:
            raise ValueError("bad SD-ID")
        sd_id = data[at:stop].decode("ascii")
        params: dict[str, str] = {}
        at = stop
        while data[at : at + 1] == b" ":
            eq = data.find(b'="', at + 1)
            if eq == -1:
                raise ValueError("bad SD-PARAM")
            param = data[at + 1 : eq].decode("ascii")
            if not param or any(c in param for c in ' ="]'):
                raise ValueError(f"bad PARAM-NAME {param!r}")
            at = eq + 2
            value = bytearray()
            while True:
                c = data[at : at + 1]
                if not c:
                    raise ValueError("unterminated PARAM-VALUE")
                if c == b"\\" and data[at + 1 : at + 2] in (b'"', b"\\", b"]"):
                    value += data[at + 1 : at + 2]
                    at += 2
                    continue
                if c in (b'"',):
                    at += 1
                    break
                if c == b"]":
                    raise ValueError("unescaped ] in PARAM-VALUE")
                value += c
                at += 1
            params[param] = value.decode("utf-8")
        if data[at : at + 1] != b"]":
            raise ValueError("SD-ELEMENT not closed")
        at += 1
        sd[sd_id] = params
    if not sd:
        raise ValueError("no STRUCTURED-DATA")
    return sd, at


def parse_message(data: bytes) -> SyslogMessage:
    """Parse one RFC 5424 SYSLOG-MSG; raise ValueError where it breaks the grammar."""
    header = _HEADER.match(data)
    if header is None:
        raise ValueError(f"bad HEADER: {data[:80]!r}")
    timestamp = header["timestamp"].decode("ascii")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise ValueError(f"bad TIMESTAMP {timestamp!r}")
    pri = int(header["pri"])
    if pri > 191 or (len(header["pri"]) > 1 and header["pri"].startswith(b"0")):
        raise ValueError(f"bad PRI {pri}")
    sd, at = _parse_sd(data, header.end())
    if at < len(data) and data[at : at + 1] != b" ":
        raise ValueError("no SP before MSG")
    return SyslogMessage(
        pri=pri,
        version=int(header["version"]),
        timestamp=timestamp,
        hostname=header["hostname"].decode("ascii"),
        app_name=header["app_name"].decode("ascii"),
        procid=header["procid"].decode("ascii"),
        msgid=header["msgid"].decode("ascii"),
        sd=sd,
        msg=data[at + 1 :],
    )


class SyslogReceiver:
    """A relay on 127.0.0.1 (port 0 at first, then kept across restarts)."""

    def __init__(
        self, transport: Transport, server_ssl: ssl.SSLContext | None = None
    ) -> None:
        self.transport = transport
        self.server_ssl = server_ssl
        self.port = 0
        self.raw: list[bytes] = []
        self.messages: list[SyslogMessage] = []
        self.errors: list[str] = []
        #: TCP/TLS connections accepted so far.
        self.connections = 0
        #: Close each connection after this many frames (a relay restart).
        self.close_after: int | None = None
        #: End those connections with a reset (RST) instead of a close (FIN).
        self.reset = False
        #: Accept TCP but never complete (or even start) the TLS handshake.
        self.hang = False
        self._server: asyncio.AbstractServer | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._arrived = anyio.Event()
        self._closed = anyio.Event()
        self._release = asyncio.Event()
        #: Set when a connection has started hanging (``hang``).
        self.hung = asyncio.Event()

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1, on the same port as before if there was one."""
        loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        if self.transport == "udp":
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=("127.0.0.1", self.port)
            )
            self._udp = udp
            if self.port == 0:
                self.port = udp.get_extra_info("sockname")[1]
            return
        tls = self.server_ssl if self.transport == "tls" and not self.hang else None
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=tls
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        self._release.set()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            for writer in list(self._writers):
                writer.close()
            with anyio.move_on_after(2):
                await server.wait_closed()

    async def wait_for(self, count: int) -> list[SyslogMessage]:
        """Wait (at most 10 s, a hang guard) until ``count`` messages arrived."""
        with anyio.fail_after(10):
            while len(self.raw) < count:
                arrived = self._arrived
                await arrived.wait()
        assert self.errors == []
        return list(self.messages)

    async def wait_closed_connections(self, count: int) -> None:
        """Wait until ``count`` connections have been closed by this side."""
        with anyio.fail_after(10):
            while self._closed_count < count:
                closed = self._closed
                await closed.wait()

    _closed_count = 0

    def received(self, data: bytes) -> None:
        """Record one message as it came off the wire."""
        self.raw.append(data)
        try:
            self.messages.append(parse_message(data))
        except ValueError as exc:
            self.errors.append(str(exc))
        arrived, self._arrived = self._arrived, anyio.Event()
        arrived.set()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        self._writers.add(writer)
        frames = 0
        try:
            if self.hang:
                self.hung.set()
                await self._release.wait()
                return
            while self.close_after is None or frames < self.close_after:
                try:
                    length = await reader.readuntil(b" ")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        self.errors.append(f"partial frame head {exc.partial!r}")
                    return
                digits = length[:-1]
                if not re.fullmatch(rb"[1-9][0-9]{0,9}", digits):
                    self.errors.append(f"bad MSG-LEN {digits!r}")
                    return
                self.received(await reader.readexactly(int(digits)))
                frames += 1
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            self.errors.append(f"connection error {type(exc).__name__}")
        finally:
            self._writers.discard(writer)
            transport = writer.transport
            if self.reset and isinstance(transport, asyncio.Transport):
                transport.abort()
            writer.close()
            self._closed_count += 1
            closed, self._closed = self._closed, anyio.Event()
            closed.set()

    async def __aenter__(self) -> SyslogReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, receiver: SyslogReceiver) -> None:
        self.receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.receiver.received(data)
