"""The e-mail sink: one message per event over SMTP, plain text with an HTML alternative.

The SMTP client is aiosmtplib: the maintained asyncio SMTP client (STARTTLS and
implicit TLS, AUTH, per-command timeouts) that runs on the event loop, where the
standard library's ``smtplib`` would block it or need a thread per delivery.

One connection per message: alerts are rare, and a fresh connection never meets
a server that dropped an idle one. ``transport`` is ``starttls`` (default, port
587; STARTTLS is *required*, never opportunistic, so a stripped offer fails
instead of sending the password in clear), ``tls`` (implicit TLS, port 465) or
``none`` (port 25, for a relay on the same host; AUTH over it is refused unless
the host is loopback). Certificates are verified against ``ca_file`` or the
system CAs (:mod:`watcher.sinks.tls`).

The subject is made for inbox rules: ``[sklm-watcher] <server>: <what happened>``,
e.g. ``[sklm-watcher] sklm-prod-1: restore completed in 4m 12s``. The headers
``X-SKLM-Watcher-Event`` (the event type) and ``X-SKLM-Watcher-Server`` carry the
same facts for filters. ``Message-ID`` is derived from the event id, so a resend
after a lost answer has the id of the first copy and mail clients show it once.

Classification (the dispatcher retries transient errors, dead-letters permanent):

======================================  =========  =============================
SMTP outcome                             outcome    why
======================================  =========  =============================
message accepted (250 after DATA)        delivered  a failing QUIT afterwards is
                                                    ignored (resending would
                                                    duplicate the message)
some recipients refused, others taken    delivered  logged as a warning
4xx reply (421, 450, 451, 452, 454...)   transient  the server says "later"
5xx reply (550, 552, 554...)             permanent  the message or an address
                                                    is refused: fix the config
535 and other 5xx to AUTH                permanent  credentials rejected (the
                                                    reason names the username
                                                    setting, never the password)
STARTTLS / AUTH not offered              permanent  the server and ``transport``
                                                    disagree
certificate not trusted                  permanent  fix ``ca_file``
malformed or oversized reply (> 32 KiB)  transient  not quoted
connect error, reset, timeout            transient  ``timeout`` bounds the whole
                                                    transaction
======================================  =========  =============================
"""

from __future__ import annotations

import email.utils
import html
import ipaddress
import json
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import Final

import aiosmtplib
import anyio
import structlog

from watcher.clock import Clock, SystemClock
from watcher.config import SinkConfig
from watcher.errors import ConfigError, ConfigProblem, DeliveryError
from watcher.events import Event, EventType, format_time
from watcher.sinks.slack import format_duration
from watcher.sinks.text import did_not_come_back, headline, timeline
from watcher.sinks.tls import client_context, is_certificate_error

#: The subject's prefix, for inbox rules.
SUBJECT_PREFIX: Final = "[sklm-watcher]"

#: Longer subjects are cut (with an ellipsis): some servers refuse long header lines.
MAX_SUBJECT_CHARS: Final = 200

#: The ports used when ``port`` is not set, per ``transport``.
DEFAULT_PORTS: Final[Mapping[str, int]] = {"starttls": 587, "tls": 465, "none": 25}

#: Logged when some (not all) recipients were refused; the message went to the rest.
RECIPIENTS_REFUSED: Final = "sink.recipients_refused"

_log = structlog.get_logger(__name__)

_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})


def _one_line(text: object) -> str:
    # Header values must not hold CR/LF (header injection); collapse all whitespace.
    return " ".join(str(text).split())


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def summary(event: Event) -> str:
    """Say in plain words what ``event`` reports (the subject, after the server).

    The wording is :func:`watcher.sinks.text.headline`'s, shared with PagerDuty
    and Teams, except for an unreachable server: the subject leads with
    ``unreachable:`` and the client's words, which is what an inbox rule matches.
    """
    data = event.data
    if did_not_come_back(event):
        away = format_duration(data.get("down_for"))
        return f"did not come back after the restore (away {away})"
    if event.type is EventType.SERVER_UNREACHABLE:
        return f"unreachable: {data.get('detail') or data.get('reason') or 'no answer'}"
    return headline(event).removeprefix(f"{event.server}: ")


def subject(event: Event) -> str:
    """Return the one-line subject, e.g. ``[sklm-watcher] sklm-2: unreachable: ...``."""
    text = _one_line(f"{SUBJECT_PREFIX} {event.server}: {summary(event)}")
    if len(text) > MAX_SUBJECT_CHARS:
        text = text[: MAX_SUBJECT_CHARS - 1].rstrip() + "…"
    return text


def _facts(event: Event) -> list[tuple[str, str]]:
    data = event.data
    facts = [("Server", event.server), ("Event", str(event.type))]
    if event.type in (EventType.RESTORE_COMPLETED, EventType.RESTORE_FAILED):
        completed = event.type is EventType.RESTORE_COMPLETED
        facts.append(("Outcome", "completed" if completed else "failed"))
        facts.append(("Duration", format_duration(data.get("duration"))))
        facts.append(("Ended", format_time(event.time)))
        if not completed:
            facts.append(("Reason", str(data.get("reason") or "unknown")))
    else:
        facts.append(("Time", format_time(event.time)))
        if data.get("reason"):
            facts.append(("Reason", str(data["reason"])))
    if data.get("restore_id"):
        facts.append(("Restore id", str(data["restore_id"])))
    facts.append(("Event id", event.id))
    return facts


def text_body(event: Event) -> str:
    """Return the text/plain part: summary, facts, timeline and the CloudEvent JSON."""
    lines = [f"{event.server}: {summary(event)}", ""]
    facts = _facts(event)
    width = max(len(label) for label, _ in facts) + 1
    lines += [f"{label + ':':<{width}} {value}" for label, value in facts]
    rows = timeline(event)
    if rows:
        phase_width = max(len(row.phase) for row in rows)
        lines += ["", "Timeline:"]
        for row in rows:
            line = f"  {row.phase:<{phase_width}}  {row.duration}"
            lines.append((line + ("  (inferred)" if row.inferred else "")).rstrip())
    lines += [
        "",
        "The event (CloudEvents 1.0 JSON):",
        json.dumps(event.to_dict(), indent=2, ensure_ascii=False),
        "",
    ]
    return "\n".join(lines)


def html_body(event: Event) -> str:
    """Return the text/html part; every value from a server or the config is escaped."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"></head><body>',
        f"<h2>{esc(event.server)}: {esc(summary(event))}</h2>",
        "<table>",
        *(
            f"<tr><th align='left'>{esc(label)}</th><td>{esc(value)}</td></tr>"
            for label, value in _facts(event)
        ),
        "</table>",
    ]
    rows = timeline(event)
    if rows:
        parts += [
            "<h3>Timeline</h3>",
            "<table><tr><th align='left'>Phase</th><th align='left'>Duration</th></tr>",
        ]
        for row in rows:
            note = " <em>(inferred)</em>" if row.inferred else ""
            parts.append(
                f"<tr><td>{esc(row.phase)}{note}</td><td>{esc(row.duration)}</td></tr>"
            )
        parts.append("</table>")
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def message_id(event: Event, sender: str) -> str:
    """Return the ``Message-ID`` for ``event``: the same for every resend of it."""
    _, address = email.utils.parseaddr(sender)
    domain = address.rpartition("@")[2] or "sklm-watcher.invalid"
    return f"<{event.id}.sklm-watcher@{_one_line(domain)}>"


def build_message(event: Event, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """Return the whole message for ``event``: headers, text/plain and text/html."""
    message = EmailMessage(policy=SMTP_POLICY)
    message["Subject"] = subject(event)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = email.utils.format_datetime(event.time)
    message["Message-ID"] = message_id(event, sender)
    message["X-SKLM-Watcher-Event"] = str(event.type)
    message["X-SKLM-Watcher-Server"] = _one_line(event.server)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message.set_content(text_body(event), subtype="plain", charset="utf-8")
    message.add_alternative(html_body(event), subtype="html", charset="utf-8")
    return message


def _problem(config: SinkConfig, key: str, reason: str) -> ConfigProblem:
    return ConfigProblem(f"sinks.{config.name}.{key}", reason)


def _check(config: SinkConfig) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    transport = config.transport or "starttls"
    if transport not in DEFAULT_PORTS:
        problems.append(
            _problem(
                config,
                "transport",
                f"unknown transport {transport!r}; use starttls, tls or none",
            )
        )
    if not config.host:
        problems.append(_problem(config, "host", "an email sink needs the SMTP host"))
    if not config.sender:
        problems.append(_problem(config, "from", "an email sink needs a From address"))
    if not config.recipients:
        problems.append(
            _problem(config, "to", "an email sink needs at least one address")
        )
    if config.password and not config.username:
        problems.append(
            _problem(config, "username", "a password is set but no username")
        )
    if config.password and transport == "none" and not _is_loopback(config.host or ""):
        problems.append(
            _problem(
                config,
                "transport",
                "transport none would send the SMTP password unencrypted; "
                "use starttls or tls (none is for a relay on this host)",
            )
        )
    return problems


class EmailSink:
    """Sends each event as one e-mail through an SMTP server.

    Raises:
        ConfigError: At construction, when host, From or To is missing, the
            transport is unknown, or a password would cross the network in clear.
    """

    def __init__(self, config: SinkConfig, clock: Clock | None = None) -> None:
        problems = _check(config)
        if problems:
            raise ConfigError(problems)
        self._config = config
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._transport = config.transport or "starttls"
        self._host = config.host or ""
        self._port = config.port or DEFAULT_PORTS[self._transport]
        self._sender = config.sender or ""
        self._recipients = tuple(config.recipients)
        self._tls: ssl.SSLContext | None = (
            None if self._transport == "none" else client_context(config)
        )
        # Named once here: aiosmtplib would otherwise ask getfqdn(), a DNS lookup.
        self._local_hostname = socket.gethostname() or "localhost"

    @property
    def name(self) -> str:
        """The sink's configured name."""
        return self._config.name

    def _client(self) -> aiosmtplib.SMTP:
        password = self._config.password
        return aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            username=self._config.username if password else None,
            password=password.reveal() if password else None,
            local_hostname=self._local_hostname,
            timeout=self._config.timeout,
            use_tls=self._transport == "tls",
            start_tls=self._transport == "starttls",
            tls_context=self._tls,
        )

    async def deliver(self, event: Event) -> None:
        """Send the message for ``event`` once, on a connection of its own.

        Raises:
            DeliveryError: Classified as in the module's table.
        """
        message = build_message(event, self._sender, self._recipients)
        client = self._client()
        try:
            # One bound for the whole transaction: aiosmtplib's timeout is per
            # command, so a server trickling answers could otherwise hold us long.
            with anyio.fail_after(self._config.timeout):
                await client.connect()
                refused, _ = await client.send_message(message)
        except Exception as exc:
            client.close()
            error = self._translate(exc)
            if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                # The server's reply to AUTH may echo the credentials back (base64
                # is not encryption): keep it out of every traceback.
                raise error from None
            raise error from exc
        except BaseException:
            # Cancelled (shutdown): drop the connection without waiting, go on.
            client.close()
            raise
        await self._quit(client)
        if refused:
            _log.warning(
                RECIPIENTS_REFUSED,
                sink=self.name,
                event_id=event.id,
                refused=sorted(refused),
                codes=sorted({response.code for response in refused.values()}),
            )

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        # The message is accepted: a failing QUIT must not turn into a resend.
        try:
            with anyio.move_on_after(self._config.timeout):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            client.close()

    def _translate(self, exc: Exception) -> DeliveryError:
        """Turn what aiosmtplib raised into a classified error, naming no secret."""
        name = self.name
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            where = f"SMTP {exc.code} to AUTH"
            if exc.code >= 500:
                return DeliveryError(
                    name,
                    f"{where}: login rejected for username {self._config.username!r}; "
                    "check username and password_env / password_file",
                    permanent=True,
                )
            return DeliveryError(name, f"{where}: temporary authentication failure")
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = sorted({refused.code for refused in exc.recipients})
            what = "every recipient refused (SMTP " + ", ".join(map(str, codes)) + ")"
            if any(400 <= code < 500 for code in codes):
                return DeliveryError(name, what)
            return DeliveryError(name, f"{what}: check to", permanent=True)
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return self._reply(exc)
        if isinstance(exc, TimeoutError):
            # aiosmtplib's own timeouts are TimeoutErrors too.
            return DeliveryError(name, f"no answer within {self._config.timeout:g} s")
        if is_certificate_error(exc):
            return DeliveryError(
                name,
                f"the certificate of {self._host} is not trusted; check ca_file",
                permanent=True,
            )
        if type(exc) in (aiosmtplib.SMTPException, aiosmtplib.SMTPNotSupported):
            # aiosmtplib's own fixed words (STARTTLS or AUTH not offered, no
            # common AUTH mechanism, SMTPUTF8 missing), never the server's text.
            return DeliveryError(
                name,
                f"{exc.args[0] if exc.args else 'SMTP error'}".rstrip(".")
                + f" (transport {self._transport}); check transport and port",
                permanent=True,
            )
        if isinstance(exc, OSError):
            # Includes aiosmtplib's SMTPConnectError and SMTPServerDisconnected
            # (ConnectionErrors), whose messages name host and port: keep only
            # the operating system's reason.
            reason = _os_reason(exc)
            detail = type(exc).__name__ + (f" ({reason})" if reason else "")
            return DeliveryError(name, detail)
        # Anything else from the client (a protocol it could not parse, a
        # connection already closed): transient, said by class only.
        return DeliveryError(name, f"SMTP client error ({type(exc).__name__})")

    def _reply(self, exc: aiosmtplib.SMTPResponseException) -> DeliveryError:
        step = {
            aiosmtplib.SMTPConnectResponseError: "greeting",
            aiosmtplib.SMTPHeloError: "EHLO",
            aiosmtplib.SMTPSenderRefused: "MAIL FROM",
            aiosmtplib.SMTPRecipientRefused: "RCPT TO",
            aiosmtplib.SMTPDataError: "DATA",
        }.get(type(exc), "a command")
        if exc.code < 100:
            # aiosmtplib's -1: an answer that is not SMTP, or longer than its limit
            # (32 KiB); its text is not quoted (a hostile server wrote it).
            return DeliveryError(self.name, "malformed or oversized SMTP reply")
        what = f"SMTP {exc.code} to {step}" + _enhanced_code(exc.message)
        if 400 <= exc.code < 500:
            return DeliveryError(self.name, what)
        if exc.code >= 500:
            return DeliveryError(self.name, f"{what}: message refused", permanent=True)
        return DeliveryError(self.name, f"{what}: unexpected reply")


def _enhanced_code(message: str) -> str:
    # RFC 3463 status (5.1.1...) is safe to quote; the free text after it is not
    # (a hostile server could echo anything back).
    head = message.strip().split(" ", 1)[0]
    pieces = head.split(".")
    if len(pieces) == 3 and all(p.isdigit() and len(p) <= 3 for p in pieces):
        return f" ({head})"
    return ""


def _os_reason(exc: BaseException) -> str:
    # The errno's standard words ("Connection refused"): asyncio's strerror
    # ("Connect call failed ('10.0.0.5', 587)") and aiosmtplib's messages name
    # the address.
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno)
        current = current.__cause__
    return ""
