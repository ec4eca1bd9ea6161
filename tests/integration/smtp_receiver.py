"""A real SMTP server on 127.0.0.1 (aiosmtpd) for the e-mail sink's tests.

It runs in the test's own event loop (no controller thread), speaks STARTTLS or
implicit TLS with a trustme certificate, can require AUTH with a known password,
records every accepted message, and can misbehave on cue: answer a command with a
scripted reply (421, 451, 550...), hang, reset the connection, or be down.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Literal

import anyio
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Step = Literal["MAIL", "RCPT", "DATA", "AUTH"]


@dataclass(frozen=True, slots=True)
class Mail:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    #: The login the client authenticated as, or None.
    login: str | None
    #: Whether the message crossed a TLS connection.
    tls: bool

    def message(self) -> EmailMessage:
        """The message parsed with the standard library (modern policy)."""
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Script:
    replies: dict[Step, deque[str]] = field(default_factory=dict)


class SmtpReceiver:
    """An aiosmtpd server on 127.0.0.1 (port 0 at first, then kept across restarts).

    Args:
        mode: ``starttls`` (offers STARTTLS, requires it before MAIL), ``tls``
            (implicit TLS on connect) or ``plain``.
        server_ssl: The server-side context (needed for ``starttls`` and ``tls``).
        credentials: ``(login, password)`` to require AUTH with, or None.
    """

    def __init__(
        self,
        mode: Literal["starttls", "tls", "plain"],
        server_ssl: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.mode = mode
        self.server_ssl = server_ssl
        self.credentials = credentials
        self.port = 0
        self.mails: list[Mail] = []
        #: Every AUTH attempt: (login, accepted).
        self.auth_attempts: list[tuple[str, bool]] = []
        #: Connections opened (a reconnect shows up as another one).
        self.connections = 0
        self.hang_on: Step | None = None
        self.reset_on: Step | None = None
        self._script = _Script()
        self._server: asyncio.AbstractServer | None = None
        self._release = asyncio.Event()
        self._arrived = anyio.Event()
        #: Set when a command has started hanging (``hang_on``).
        self.hung = asyncio.Event()

    def reply(self, step: Step, reply: str, *, times: int = 1) -> None:
        """Answer the next ``times`` commands of ``step`` with ``reply`` (e.g. ``451 4.3.0 later``)."""
        self._script.replies.setdefault(step, deque()).extend([reply] * times)

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1, on the same port as before if there was one."""
        loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        self._server = await loop.create_server(
            self._protocol,
            "127.0.0.1",
            self.port,
            ssl=self.server_ssl if self.mode == "tls" else None,
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop open connections (hung ones end)."""
        self._release.set()
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            if hasattr(server, "close_clients"):  # Python 3.13+
                server.close_clients()
            with anyio.move_on_after(2):
                await server.wait_closed()

    async def wait_for(self, count: int) -> list[Mail]:
        """Wait (at most 10 s, a hang guard) until ``count`` messages arrived."""
        with anyio.fail_after(10):
            while len(self.mails) < count:
                arrived = self._arrived
                await arrived.wait()
        return list(self.mails)

    def _protocol(self) -> SMTP:
        self.connections += 1
        starttls = self.mode == "starttls"
        with warnings.catch_warnings():
            # aiosmtpd's auth_require_tls knows only STARTTLS; with implicit TLS
            # the connection is encrypted from the first byte, so it is turned off
            # there, and aiosmtpd's warning about that does not apply.
            warnings.filterwarnings(
                "ignore", "Requiring AUTH while not requiring TLS", UserWarning
            )
            return SMTP(
                _Handler(self),
                hostname="smtp.test",
                tls_context=self.server_ssl if starttls else None,
                require_starttls=starttls,
                auth_required=self.credentials is not None,
                auth_require_tls=starttls,
                authenticator=self._authenticate if self.credentials else None,
                loop=asyncio.get_running_loop(),
            )

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert self.credentials is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        queue = self._script.replies.get("AUTH")
        if queue:
            self.auth_attempts.append((login, False))
            return AuthResult(success=False, handled=False, message=queue.popleft())
        ok = (login, auth_data.password.decode()) == self.credentials
        self.auth_attempts.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=login)

    async def _misbehave(self, step: Step, server: SMTP) -> str | None:
        transport = server.transport
        if self.reset_on == step and isinstance(transport, asyncio.Transport):
            transport.abort()
            return "421 gone"
        if self.hang_on == step:
            self.hung.set()
            await self._release.wait()
            return "421 shutting down"
        queue = self._script.replies.get(step)
        if queue:
            return queue.popleft()
        return None

    def _record(self, server: SMTP, session: Session, envelope: Envelope) -> None:
        content = envelope.original_content or b""
        assert isinstance(envelope.mail_from, str)
        login = session.auth_data if isinstance(session.auth_data, str) else None
        self.mails.append(
            Mail(
                envelope.mail_from,
                tuple(envelope.rcpt_tos),
                content,
                login,
                server.transport is not None
                and server.transport.get_extra_info("ssl_object") is not None,
            )
        )
        arrived, self._arrived = self._arrived, anyio.Event()
        arrived.set()

    async def __aenter__(self) -> SmtpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Handler:
    """aiosmtpd hooks: scripted answers first, then the ordinary behaviour."""

    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        scripted = await self.receiver._misbehave("MAIL", server)
        if scripted is not None:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        scripted = await self.receiver._misbehave("RCPT", server)
        if scripted is not None:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        scripted = await self.receiver._misbehave("DATA", server)
        if scripted is not None:
            return scripted
        self.receiver._record(server, session, envelope)
        return "250 2.0.0 queued"
