"""The syslog sink: each event as one RFC 5424 message to a SIEM or a relay.

Transports: ``tls`` (RFC 5425, default, port 6514, certificate verified against
``ca_file`` or the system CAs), ``tcp`` (RFC 6587, port 514) or ``udp`` (RFC 5426,
port 514). On TCP and TLS every message is framed by octet counting
(``MSG-LEN SP SYSLOG-MSG``); one connection is kept open and reopened after any
failure. On UDP each message is one datagram of at most
:data:`MAX_DATAGRAM_BYTES`; a larger one is refused (permanent: use tcp or tls).

The message, stable (SIEM parsers are written against it)::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [sklm@32473 ...] MSG

- PRI = facility * 8 + severity; ``facility`` is configured (``local0`` default),
  severity comes from the event type (:data:`SEVERITIES`, the README's table).
- TIMESTAMP is the event's time (when it happened, UTC, milliseconds), so a
  resend is the same message byte for byte.
- HOSTNAME is this host's name, APP-NAME ``app_name`` (``sklm-watcher``), PROCID
  the daemon's process id, MSGID the event type (``sklm.restore.completed``).
- Structured data: one element ``sklm@32473`` (32473 is the example enterprise
  number of RFC 5612; the SD-ID is fixed and documented) with ``id`` (the event
  id, for deduplication), ``type``, ``server`` and, when the event has them,
  ``restore_id`` and ``phase``. ``"``, ``\\`` and ``]`` in values are escaped.
- MSG is the CloudEvent as compact JSON with every non-ASCII character escaped
  (``\\uXXXX``): plain ASCII, so no BOM is needed or sent and any JSON parser
  reads it as the webhook body.

What "delivered" means: TCP has no application-level acknowledgement (RFC 6587
and 5425 define none), so a message counts as delivered once the kernel has
accepted it. Before each write the sink checks whether the relay closed the
connection (a restarted relay), and reconnects rather than writing into a dead
socket; any failure closes the connection and is a transient
:class:`~watcher.errors.DeliveryError`, so the event stays in the outbox. What
remains is the kernel buffer: a relay that crashes after our write was accepted
locally, or a network path that vanishes without a reset, can lose messages
sent in that window. UDP has no delivery signal at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
from collections.abc import Mapping
from typing import Final

import anyio
import anyio.abc

from watcher.clock import Clock, SystemClock
from watcher.config import SYSLOG_FACILITIES, SinkConfig
from watcher.errors import ConfigError, ConfigProblem, DeliveryError
from watcher.events import Event, EventType, format_time
from watcher.sinks.tls import client_context, is_certificate_error

#: RFC 5424 facility codes by name (the configuration's list, in code order).
FACILITIES: Final[Mapping[str, int]] = {
    name: code for code, name in enumerate(SYSLOG_FACILITIES)
}

#: RFC 5424 severity (3 err, 4 warning, 5 notice, 6 info) by event type.
SEVERITIES: Final[Mapping[EventType, int]] = {
    EventType.RESTORE_FAILED: 3,
    EventType.SERVER_UNREACHABLE: 3,
    EventType.AUTH_FAILED: 3,
    EventType.RESTORE_STALLED: 4,
    EventType.RESTORE_STARTED: 5,
    EventType.RESTORE_COMPLETED: 5,
    EventType.SERVER_RECOVERED: 5,
    EventType.SERVER_RESTARTED: 5,
    EventType.AUTH_RECOVERED: 5,
    EventType.RESTORE_PHASE: 6,
    EventType.TEST: 6,
}

#: Severity of an event type missing from :data:`SEVERITIES` (notice).
DEFAULT_SEVERITY: Final = 5

#: The structured-data element's SD-ID (RFC 5612's example enterprise number).
SD_ID: Final = "sklm@32473"

#: ``data`` fields copied into the structured data when present, in this order.
SD_FIELDS: Final = ("restore_id", "phase")

#: The ports used when ``port`` is not set, per ``transport``.
DEFAULT_PORTS: Final[Mapping[str, int]] = {"tls": 6514, "tcp": 514, "udp": 514}

#: The largest UDP datagram sent: above RFC 5426's 2048 "should", below what
#: fragments badly on common paths; a larger message needs tcp or tls.
MAX_DATAGRAM_BYTES: Final = 8192


def _printable(text: str, limit: int) -> str:
    # HOSTNAME, APP-NAME, PROCID and MSGID are PRINTUSASCII (33..126) or "-".
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return cleaned or "-"


def sd_escape(value: object) -> str:
    """Escape a structured-data PARAM-VALUE: ``"``, ``\\`` and ``]`` (RFC 5424 6.3.3)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def severity(event_type: EventType) -> int:
    """Return the RFC 5424 severity the event type is sent with."""
    return SEVERITIES.get(event_type, DEFAULT_SEVERITY)


def format_message(
    event: Event, *, facility: int, hostname: str, app_name: str, procid: str
) -> bytes:
    """Return the RFC 5424 SYSLOG-MSG for ``event`` (no framing), UTF-8 encoded."""
    params = [("id", event.id), ("type", str(event.type)), ("server", event.server)]
    params += [
        (key, event.data[key]) for key in SD_FIELDS if event.data.get(key) is not None
    ]
    sd = "[" + SD_ID + "".join(f' {k}="{sd_escape(v)}"' for k, v in params) + "]"
    header = " ".join(
        [
            f"<{facility * 8 + severity(event.type)}>1",
            format_time(event.time),
            _printable(hostname, 255),
            _printable(app_name, 48),
            _printable(procid, 128),
            _printable(str(event.type), 32),
        ]
    )
    body = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=True)
    return f"{header} {sd} {body}".encode()


def frame(message: bytes) -> bytes:
    """Frame one message for TCP by octet counting (RFC 6587 3.4.1, RFC 5425 4.3)."""
    return str(len(message)).encode("ascii") + b" " + message


def _check(config: SinkConfig) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    transport = config.transport or "tls"
    if transport not in DEFAULT_PORTS:
        problems.append(
            ConfigProblem(
                f"sinks.{config.name}.transport",
                f"unknown transport {transport!r}; use tls, tcp or udp",
            )
        )
    if not config.host:
        problems.append(
            ConfigProblem(
                f"sinks.{config.name}.host", "a syslog sink needs the relay's host"
            )
        )
    if config.facility not in FACILITIES:
        problems.append(
            ConfigProblem(
                f"sinks.{config.name}.facility",
                f"unknown facility {config.facility!r}; use local0 .. local7, "
                "daemon, auth, security, ... (RFC 5424 names)",
            )
        )
    return problems


class SyslogSink:
    """Sends each event as one RFC 5424 message over TLS, TCP or UDP.

    Holds one connection; :meth:`aclose` closes it.

    Raises:
        ConfigError: At construction, when the host is missing, or the
            transport, facility or ``ca_file`` is unusable.
    """

    def __init__(self, config: SinkConfig, clock: Clock | None = None) -> None:
        problems = _check(config)
        if problems:
            raise ConfigError(problems)
        self._config = config
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._transport = config.transport or "tls"
        self._host = config.host or ""
        self._port = config.port or DEFAULT_PORTS[self._transport]
        self._facility = FACILITIES[config.facility]
        self._tls: ssl.SSLContext | None = (
            client_context(config) if self._transport == "tls" else None
        )
        self._hostname = socket.gethostname()
        self._procid = str(os.getpid())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._udp: anyio.abc.ConnectedUDPSocket | None = None
        self._lock = anyio.Lock()

    @property
    def name(self) -> str:
        """The sink's configured name."""
        return self._config.name

    @property
    def is_connected(self) -> bool:
        """Whether a TCP/TLS connection is open and the relay has not closed it."""
        return self._writer is not None and not self._peer_gone()

    def message(self, event: Event) -> bytes:
        """Return the RFC 5424 message for ``event``, unframed."""
        return format_message(
            event,
            facility=self._facility,
            hostname=self._hostname,
            app_name=self._config.app_name,
            procid=self._procid,
        )

    async def deliver(self, event: Event) -> None:
        """Send the message for ``event`` once, (re)connecting if needed.

        Raises:
            DeliveryError: Transient for any connect or write failure (the
                connection is closed first); permanent for an untrusted
                certificate or a message too large for a UDP datagram.
        """
        message = self.message(event)
        async with self._lock:
            try:
                with anyio.fail_after(self._config.timeout):
                    if self._transport == "udp":
                        await self._send_udp(message)
                    else:
                        await self._send_stream(frame(message))
            except DeliveryError:
                raise
            except Exception as exc:
                await self._close()
                raise self._translate(exc) from exc
            except BaseException:
                # Cancelled mid-write: a partial frame would corrupt the next
                # one, so drop the connection (without awaiting) and go on.
                self._drop_stream()
                raise

    async def _send_stream(self, data: bytes) -> None:
        if self._writer is not None and self._peer_gone():
            await self._close()
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None,
            )
        writer = self._writer
        writer.write(data)
        await writer.drain()

    def _peer_gone(self) -> bool:
        # A relay never sends us anything: data or EOF means it closed (or
        # broke) the connection, and a write now would vanish.
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            return True
        return writer.is_closing() or reader.at_eof() or reader.exception() is not None

    async def _send_udp(self, message: bytes) -> None:
        if len(message) > MAX_DATAGRAM_BYTES:
            raise DeliveryError(
                self.name,
                f"message of {len(message)} bytes exceeds the UDP limit of "
                f"{MAX_DATAGRAM_BYTES}; use transport tcp or tls",
                permanent=True,
            )
        if self._udp is None:
            self._udp = await anyio.create_connected_udp_socket(self._host, self._port)
        await self._udp.send(message)

    def _translate(self, exc: Exception) -> DeliveryError:
        if isinstance(exc, TimeoutError):
            return DeliveryError(
                self.name, f"no answer within {self._config.timeout:g} s"
            )
        if is_certificate_error(exc):
            return DeliveryError(
                self.name,
                f"the certificate of {self._host} is not trusted; check ca_file",
                permanent=True,
            )
        if isinstance(exc, OSError | anyio.BrokenResourceError):
            # The errno's standard words: asyncio's strerror names the address.
            errno = exc.errno if isinstance(exc, OSError) else None
            reason = os.strerror(errno) if errno else None
            return DeliveryError(
                self.name, type(exc).__name__ + (f" ({reason})" if reason else "")
            )
        return DeliveryError(self.name, f"syslog write failed ({type(exc).__name__})")

    def _drop_stream(self) -> asyncio.StreamWriter | None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
        return writer

    async def _close(self) -> None:
        writer = self._drop_stream()
        udp, self._udp = self._udp, None
        if writer is not None:
            # Bounded: a TLS close_notify to a hung relay must not hold the sink.
            with anyio.move_on_after(1.0), contextlib.suppress(OSError):
                await writer.wait_closed()
        if udp is not None:
            await udp.aclose()

    async def aclose(self) -> None:
        """Close the connection to the relay, if one is open."""
        async with self._lock:
            await self._close()
