"""The e-mail sink against a real SMTP server (aiosmtpd) on 127.0.0.1.

STARTTLS and implicit TLS with a trustme certificate, AUTH with a known password,
and the hostile cases: 4xx replies (transient), 5xx replies (permanent), rejected
credentials (permanent, password never said), untrusted certificates, hangs,
resets and a server that is down, then back. The dispatcher test at the end shows
an event waiting in the outbox until the server accepts it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.clock import VirtualClock
from tests.integration.smtp_receiver import SmtpReceiver
from watcher.config import Secret, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.errors import DeliveryError
from watcher.events import Event, EventType
from watcher.sinks.email import EmailSink
from watcher.store.sqlite import SqliteStore as Journal

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 29, 10, tzinfo=UTC)
LOGIN = "alerts@example.test"
PASSWORD = "smtp-Pa55w0rd-do-not-leak"
TIMEOUT = 0.5
HANG_GUARD = 10.0

TIMELINE = [
    {"phase": "INITIALIZE", "code": 1, "inferred": False, "duration": 2.0},
    {"phase": "RESTORE_CONFIG_FILES", "code": 2, "inferred": False, "duration": 70.0},
    {"phase": "RESTORE_KEYSTORES", "code": 4, "inferred": True, "duration": 0.4},
    {"phase": "COMPLETED", "code": 7, "inferred": False, "duration": None},
]


def completed(server: str = "sklm-prod-1") -> Event:
    """A completed restore of 4m 12s with a timeline."""
    return Event.create(
        EventType.RESTORE_COMPLETED,
        server,
        START,
        {"restore_id": "r1", "duration": 252.0, "timeline": TIMELINE},
        key=("r1",),
    )


def config(port: int, ca_file: Path | None, **changes: Any) -> SinkConfig:
    """An email sink to the receiver on ``port``, STARTTLS and AUTH by default."""
    base = SinkConfig(
        name="mail",
        type="email",
        host="127.0.0.1",
        port=port,
        ca_file=ca_file,
        username=LOGIN,
        password=Secret(PASSWORD),
        sender="sklm-watcher <watcher@example.test>",
        recipients=("ops@example.test", "kms@example.test"),
        timeout=TIMEOUT,
    )
    return replace(base, **changes)


@pytest.fixture
async def smtp(server_ssl: ssl.SSLContext) -> AsyncIterator[SmtpReceiver]:
    """A STARTTLS server requiring AUTH with LOGIN / PASSWORD."""
    async with SmtpReceiver("starttls", server_ssl, (LOGIN, PASSWORD)) as receiver:
        yield receiver


async def deliver(sink: EmailSink, event: Event) -> DeliveryError | None:
    """Deliver once (under a hang guard); return the error, if any."""
    with anyio.fail_after(HANG_GUARD):
        try:
            await sink.deliver(event)
        except DeliveryError as exc:
            return exc
    return None


def assert_no_secret(
    error: DeliveryError | None, logs: list[MutableMapping[str, Any]]
) -> None:
    """The password is in neither the error (and its causes' texts) nor the logs."""
    texts = [repr(entry) for entry in logs]
    if error is not None:
        texts += [str(error), repr(error), error.detail]
    for text in texts:
        assert PASSWORD not in text


async def test_starttls_with_auth_delivers_the_whole_message(
    smtp: SmtpReceiver, ca_file: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """STARTTLS, verified certificate, AUTH: subject, headers and both parts as documented."""
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    event = completed()
    assert await deliver(sink, event) is None
    (mail,) = smtp.mails
    assert (mail.login, mail.tls) == (LOGIN, True)
    assert mail.mail_from == "watcher@example.test"
    assert mail.rcpt_tos == ("ops@example.test", "kms@example.test")
    message = mail.message()
    assert message["Subject"] == (
        "[sklm-watcher] sklm-prod-1: restore completed in 4m 12s"
    )
    assert message["From"] == "sklm-watcher <watcher@example.test>"
    assert message["To"] == "ops@example.test, kms@example.test"
    assert message["Message-ID"] == f"<{event.id}.sklm-watcher@example.test>"
    assert message["Date"] == "Sun, 29 Nov 2026 10:00:00 +0000"
    assert message["X-SKLM-Watcher-Event"] == "sklm.restore.completed"
    assert message["X-SKLM-Watcher-Server"] == "sklm-prod-1"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    rich = message.get_body(("html",))
    assert plain is not None
    assert rich is not None
    text = plain.get_content().replace("\r\n", "\n")
    assert text.splitlines()[:9] == [
        "sklm-prod-1: restore completed in 4m 12s",
        "",
        "Server:     sklm-prod-1",
        "Event:      sklm.restore.completed",
        "Outcome:    completed",
        "Duration:   4m 12s",
        "Ended:      2026-11-29T10:00:00.000Z",
        "Restore id: r1",
        f"Event id:   {event.id}",
    ]
    assert "\nTimeline:\n" in text
    assert "  RESTORE_CONFIG_FILES  1m 10s\n" in text
    assert "  RESTORE_KEYSTORES     0.4s  (inferred)\n" in text
    assert f'"id": "{event.id}"' in text  # the CloudEvent JSON closes the body
    page = rich.get_content()
    assert "<td>RESTORE_KEYSTORES <em>(inferred)</em></td><td>0.4s</td>" in page
    assert_no_secret(None, logs)


async def test_html_escapes_every_server_and_config_string(
    smtp: SmtpReceiver, ca_file: Path
) -> None:
    """A hostile server name and reason reach the HTML part escaped, the subject on one line."""
    event = Event.create(
        EventType.RESTORE_FAILED,
        "evil<b>&",
        START,
        {
            "restore_id": "r<1>",
            "duration": 3.0,
            "reason": "<script>alert(1)</script>\r\nBcc: victim@example.test",
            "timeline": [{"phase": "<img src=x>", "duration": 1.0}],
        },
        key=("r1",),
    )
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    assert await deliver(sink, event) is None
    message = smtp.mails[0].message()
    assert message["Subject"] == (
        "[sklm-watcher] evil<b>&: restore failed after 3.0s: "
        "<script>alert(1)</script> Bcc: victim@example.test"
    )
    assert message["Bcc"] is None
    rich = message.get_body(("html",))
    assert rich is not None
    page = rich.get_content()
    assert "<script>" not in page
    assert "<img" not in page
    assert "<b>&" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "evil&lt;b&gt;&amp;" in page
    assert "&lt;img src=x&gt;" in page


async def test_implicit_tls_delivers(server_ssl: ssl.SSLContext, ca_file: Path) -> None:
    """transport = tls: TLS from the first byte (port 465 style), then AUTH."""
    async with SmtpReceiver("tls", server_ssl, (LOGIN, PASSWORD)) as receiver:
        sink = EmailSink(
            config(receiver.port, ca_file, transport="tls"), VirtualClock.auto(START)
        )
        assert await deliver(sink, completed()) is None
        assert [(m.login, m.tls) for m in receiver.mails] == [(LOGIN, True)]


async def test_plain_relay_without_auth_delivers() -> None:
    """transport = none to a loopback relay without credentials (a local MTA)."""
    async with SmtpReceiver("plain") as receiver:
        sink = EmailSink(
            config(receiver.port, None, transport="none", username=None, password=None),
            VirtualClock.auto(START),
        )
        assert await deliver(sink, completed()) is None
        assert [(m.login, m.tls) for m in receiver.mails] == [(None, False)]


async def test_resend_has_the_same_message_id(
    smtp: SmtpReceiver, ca_file: Path
) -> None:
    """Two deliveries of one event carry one Message-ID (clients show it once)."""
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    event = completed()
    assert await deliver(sink, event) is None
    assert await deliver(sink, event) is None
    ids = {mail.message()["Message-ID"] for mail in smtp.mails}
    assert len(smtp.mails) == 2
    assert ids == {f"<{event.id}.sklm-watcher@example.test>"}


async def test_untrusted_certificate_is_permanent(smtp: SmtpReceiver) -> None:
    """Without the trustme CA the certificate is not trusted: dead-lettered, said so."""
    sink = EmailSink(config(smtp.port, None), VirtualClock.auto(START))
    error = await deliver(sink, completed())
    assert error is not None
    assert error.permanent
    assert error.detail == "the certificate of 127.0.0.1 is not trusted; check ca_file"
    assert smtp.mails == []
    assert smtp.auth_attempts == []  # the password never left


async def test_unverified_tls_works_with_a_warning(
    smtp: SmtpReceiver, logs: list[MutableMapping[str, Any]]
) -> None:
    """verify_tls = false delivers to an untrusted certificate and logs a loud warning."""
    sink = EmailSink(
        config(smtp.port, None, verify_tls=False), VirtualClock.auto(START)
    )
    assert await deliver(sink, completed()) is None
    assert len(smtp.mails) == 1
    warnings = [e for e in logs if e["event"] == "sink.tls_unverified"]
    assert [(w["log_level"], w["sink"]) for w in warnings] == [("warning", "mail")]


async def test_wrong_password_is_permanent_and_never_said(
    smtp: SmtpReceiver, ca_file: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """535 to AUTH: permanent, names the username setting, never the password."""
    smtp.credentials = (LOGIN, "the-right-one")
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    error = await deliver(sink, completed())
    assert error is not None
    assert error.permanent
    assert error.detail == (
        f"SMTP 535 to AUTH: login rejected for username '{LOGIN}'; "
        "check username and password_env / password_file"
    )
    # aiosmtplib tries each mechanism the server offers (PLAIN, LOGIN).
    assert set(smtp.auth_attempts) == {(LOGIN, False)}
    assert_no_secret(error, logs)


async def test_auth_reply_echoing_the_credentials_is_never_repeated(
    smtp: SmtpReceiver, ca_file: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """A server that echoes AUTH PLAIN's base64 back: not in the error or its traceback."""
    blob = base64.b64encode(f"\0{LOGIN}\0{PASSWORD}".encode()).decode()
    smtp.reply("AUTH", f"535 5.7.8 bad credentials {blob} {PASSWORD}", times=2)
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    error = await deliver(sink, completed())
    assert error is not None
    assert error.permanent
    shown = "".join(traceback.format_exception(error))
    assert blob not in shown
    assert PASSWORD not in shown
    assert_no_secret(error, logs)


async def test_temporary_auth_failure_is_transient(
    smtp: SmtpReceiver, ca_file: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """454 to AUTH (the server's credential store is away): retried later."""
    # Once per mechanism aiosmtplib tries (PLAIN, then LOGIN).
    smtp.reply("AUTH", "454 4.7.0 Temporary authentication failure", times=2)
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    error = await deliver(sink, completed())
    assert error is not None
    assert not error.permanent
    assert error.detail == "SMTP 454 to AUTH: temporary authentication failure"
    assert_no_secret(error, logs)


@pytest.mark.parametrize(
    ("step", "reply", "permanent", "detail"),
    [
        ("MAIL", "421 4.3.2 shutting down", False, "SMTP 421 to MAIL FROM (4.3.2)"),
        ("MAIL", "451 4.3.0 try later", False, "SMTP 451 to MAIL FROM (4.3.0)"),
        (
            "MAIL",
            "550 5.7.1 sender rejected",
            True,
            "SMTP 550 to MAIL FROM (5.7.1): message refused",
        ),
        ("RCPT", "451 4.3.0 greylisted", False, r"every recipient refused (SMTP 451)"),
        (
            "RCPT",
            "550 5.1.1 no such user",
            True,
            "every recipient refused (SMTP 550): check to",
        ),
        ("DATA", "451 4.3.0 queue full", False, "SMTP 451 to DATA (4.3.0)"),
        (
            "DATA",
            "554 5.6.0 content rejected",
            True,
            "SMTP 554 to DATA (5.6.0): message refused",
        ),
    ],
)
async def test_smtp_replies_are_classified(
    smtp: SmtpReceiver,
    ca_file: Path,
    logs: list[MutableMapping[str, Any]],
    step: Any,
    reply: str,
    permanent: bool,
    detail: str,
) -> None:
    """4xx at any step is transient, 5xx permanent; the code and RFC 3463 status are said."""
    # Both recipients get the reply, so "every recipient refused" is the RCPT case.
    smtp.reply(step, reply, times=2)
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    error = await deliver(sink, completed())
    assert error is not None
    assert (error.permanent, error.detail) == (permanent, detail)
    assert smtp.mails == []
    assert_no_secret(error, logs)


async def test_one_refused_recipient_still_delivers_to_the_other(
    smtp: SmtpReceiver, ca_file: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """A partial refusal is delivered (a resend would duplicate) and logged as a warning."""
    smtp.reply("RCPT", "550 5.1.1 no such user")
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    event = completed()
    assert await deliver(sink, event) is None
    assert [m.rcpt_tos for m in smtp.mails] == [("kms@example.test",)]
    refused = [e for e in logs if e["event"] == "sink.recipients_refused"]
    assert refused == [
        {
            "event": "sink.recipients_refused",
            "log_level": "warning",
            "sink": "mail",
            "event_id": event.id,
            "refused": ["ops@example.test"],
            "codes": [550],
        }
    ]


@pytest.mark.parametrize("step", ["MAIL", "DATA"])
async def test_hanging_server_is_a_transient_timeout(
    smtp: SmtpReceiver, ca_file: Path, step: Any
) -> None:
    """A server that stops answering ends the attempt at the sink's timeout."""
    smtp.hang_on = step
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    error = await deliver(sink, completed())
    assert error is not None
    assert (error.permanent, error.detail) == (False, "no answer within 0.5 s")


async def test_reset_connection_is_transient(
    smtp: SmtpReceiver, ca_file: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """A connection reset in the middle of the transaction is retried."""
    smtp.reset_on = "MAIL"
    sink = EmailSink(config(smtp.port, ca_file), VirtualClock.auto(START))
    error = await deliver(sink, completed())
    assert error is not None
    assert not error.permanent
    assert error.detail.startswith("SMTPServerDisconnected")
    assert "127.0.0.1" not in error.detail
    assert_no_secret(error, logs)


async def test_server_down_is_transient_and_back_delivers(
    server_ssl: ssl.SSLContext, ca_file: Path
) -> None:
    """Connection refused is transient; once the server is back the same sink delivers."""
    receiver = SmtpReceiver("starttls", server_ssl, (LOGIN, PASSWORD))
    await receiver.start()
    await receiver.stop()
    sink = EmailSink(config(receiver.port, ca_file), VirtualClock.auto(START))
    error = await deliver(sink, completed())
    assert error is not None
    assert (error.permanent, error.detail) == (
        False,
        "SMTPConnectError (Connection refused)",
    )
    async with receiver:
        assert await deliver(sink, completed()) is None
        assert len(receiver.mails) == 1


async def test_starttls_not_offered_is_permanent(ca_file: Path) -> None:
    """A server that offers no STARTTLS (or had it stripped) gets no password: permanent."""
    async with SmtpReceiver("plain") as receiver:
        sink = EmailSink(config(receiver.port, ca_file), VirtualClock.auto(START))
        error = await deliver(sink, completed())
        assert error is not None
        assert error.permanent
        assert error.detail == (
            "SMTP STARTTLS extension not supported by server "
            "(transport starttls); check transport and port"
        )
        assert receiver.auth_attempts == []
        assert receiver.mails == []


async def test_event_waits_in_the_outbox_until_the_server_is_back(
    tmp_path: Path, server_ssl: ssl.SSLContext, ca_file: Path
) -> None:
    """451, then down, then accepted: the outbox row is retried and delivered once."""
    receiver = SmtpReceiver("starttls", server_ssl, (LOGIN, PASSWORD))
    await receiver.start()
    receiver.reply("MAIL", "451 4.3.0 try later")
    sink_config = config(receiver.port, ca_file)
    journal = Journal.open(
        tmp_path / "state", tmp_path / "events.jsonl", (sink_config,)
    )
    event = completed()
    journal.record(event.server, {}, [event])
    clock = VirtualClock.auto(START)
    attempts: list[DeliveryError | None] = []
    sink = EmailSink(sink_config, clock)

    class Watched:
        """The sink, taking the server down after the first failure, up after the second."""

        name = sink.name

        async def deliver(self, event: Event) -> None:
            try:
                await sink.deliver(event)
            except DeliveryError as exc:
                attempts.append(exc)
                if len(attempts) == 1:
                    await receiver.stop()
                else:
                    await receiver.start()
                raise
            attempts.append(None)

    dispatcher = Dispatcher(
        journal, {"mail": Watched()}, {"mail": sink_config}, clock, jitter=0
    )
    with anyio.fail_after(HANG_GUARD * 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            # The row's progress lives in the journal: poll it (no event to await).
            while (await journal.call(journal.outbox_summary, START))[0].pending:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    journal.close()
    await receiver.stop()
    assert [None if a is None else a.detail.split(" ")[0:2] for a in attempts] == [
        ["SMTP", "451"],
        ["SMTPConnectError", "(Connection"],
        None,
    ]
    assert [m.message()["Message-ID"] for m in receiver.mails] == [
        f"<{event.id}.sklm-watcher@example.test>"
    ]


async def _raw_smtp(
    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.AbstractServer, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await behaviour(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _huge_greeting(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"220 " + b"x" * 200_000)
    await writer.drain()
    await reader.read(1)


async def _huge_multiline_greeting(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"220-hello\r\n" * 20_000)
    await writer.drain()
    await reader.read(1)


async def _http_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await reader.read(1)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)


async def _close_at_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    return


async def _reset_at_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.abort()


@pytest.mark.parametrize(
    ("behaviour", "detail"),
    [
        (_huge_greeting, r"^malformed or oversized SMTP reply$"),
        (_huge_multiline_greeting, r"^malformed or oversized SMTP reply$"),
        (_http_answer, r"^malformed or oversized SMTP reply$"),
        (_silent, r"^no answer within 0\.5 s$"),
        (_close_at_once, r"^SMTP(ConnectError|ServerDisconnected)"),
        (_reset_at_once, r"^SMTP(ConnectError|ServerDisconnected)"),
    ],
    ids=["huge-line", "huge-multiline", "http", "silent", "close", "reset"],
)
async def test_hostile_non_smtp_servers_are_transient(
    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    detail: str,
) -> None:
    """Gigantic, foreign, silent or vanishing answers: transient, bounded, unquoted."""
    server, port = await _raw_smtp(behaviour)
    async with server:
        sink = EmailSink(
            config(port, None, transport="none", username=None, password=None),
            VirtualClock.auto(START),
        )
        error = await deliver(sink, completed())
        server.close()
    assert error is not None
    assert not error.permanent
    assert re.search(detail, error.detail), error.detail
    assert "xxxx" not in str(error)
    assert "HTTP" not in str(error)


async def test_cancellation_propagates_and_the_sink_goes_on(
    smtp: SmtpReceiver, ca_file: Path
) -> None:
    """Cancelled mid-transaction (shutdown): no DeliveryError, and the next one works."""
    smtp.hang_on = "DATA"
    sink = EmailSink(
        config(smtp.port, ca_file, timeout=HANG_GUARD), VirtualClock.auto(START)
    )
    outcome: list[str] = []

    async def attempt() -> None:
        try:
            await sink.deliver(completed())
        except DeliveryError:
            outcome.append("delivery error")
        else:
            outcome.append("delivered")

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt)
            await smtp.hung.wait()
            tg.cancel_scope.cancel()
    assert outcome == []
    smtp.hang_on = None
    assert await deliver(sink, completed()) is None
    assert len(smtp.mails) == 1
