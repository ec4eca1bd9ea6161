"""SklmClient against SKLM servers that misbehave, over real sockets (issue #8, "Bad input").

Each case is a named hostile behaviour served on 127.0.0.1 by the raw server in
``hostile_server.py`` (or by asyncio TLS with a bad certificate). Every case
asserts the exact error class, the server name and a hint in the message, that
neither the password nor any session id shows in the error or its cause chain,
and that the poll returned (``anyio.fail_after`` is a hang guard, not a speed
assertion). A few cases are variants SKLM may really send and must be accepted.

Decisions the corpus pins down:

- The content type is not checked: a valid JSON object labelled ``text/plain``
  (or unlabelled) is accepted, as servlet containers mislabel answers; a body
  that does not parse is a protocol error whatever its label.
- ``status`` is matched case-insensitively (``"idle"`` is IDLE); ``code`` must be
  a non-negative integer or a string of digits (``"4.0"``, ``4.0``, ``-1`` and
  ``true`` are protocol errors) and must agree with ``status``.
- ``status`` or ``code`` given twice (in any case) is a protocol error: parsers
  disagree on which one wins.
- A body cut short (``Content-Length`` larger than the body, a reset, a
  truncated chunk) is SklmUnreachable, like any connection cut mid-answer; a
  body that arrived but is malformed (framing, encoding, JSON) is
  SklmProtocolError.
- A TLS handshake cut off by the peer (close or reset) is SklmUnreachable: a
  starting server does that; a handshake that fails on what the server sent
  (plain HTTP, garbage, a certificate not trusted) is SklmTlsError.
- Informational 1xx answers before the real one are skipped (aiohttp does);
  endless 1xx answers run into the timeout.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import StartSimulator
from tests.integration.hostile_server import (
    ConnectionHandler,
    Exchange,
    HostileServer,
    Responder,
    answer,
    close_at_once,
    gzip_bomb,
    headers_forever,
    idle,
    login_ok,
    raw,
    redirect,
    reset,
    reset_at_once,
    stopped_reading,
    streamed,
    trickled,
    witness_untouched,
)
from watcher.client import MAX_BODY_BYTES, SklmClient, create_session
from watcher.config import Secret, ServerConfig
from watcher.errors import (
    SklmAuthError,
    SklmError,
    SklmProtocolError,
    SklmTlsError,
    SklmUnreachable,
)
from watcher.phases import Phase, PollResult

pytestmark = pytest.mark.integration

NAME = "sklm-hostile"
PASSWORD = "hostile-Pa55-secret"
SIM_PASSWORD = "healthy-Pa55-secret"
#: A hang guard per poll, far above any honest answer; not a speed assertion.
HANG_GUARD = 10.0
#: The client timeout for cases that only end by it (trickles, hangs).
SLOW_TIMEOUT = 0.5
#: The client timeout for every other case.
TIMEOUT = 5.0
#: Client timeout for the slow cases in the fleet test: they must still be
#: pending when the healthy poll ends, and are released by closing their server.
FLEET_SLOW_TIMEOUT = 30.0

Outcome = PollResult | SklmError
Check = Callable[[HostileServer], Awaitable[None]]
TlsFactory = Callable[[trustme.CA, Path], ssl.SSLContext]


# -- responders ---------------------------------------------------------------------


def expired_session(
    code: str = "CTGKM6004E", status: str = "401 Unauthorized"
) -> Responder:
    """A responder rejecting the session id as SKLM does."""
    text = (
        f'{{"code": "{code}", "message": "{code} User is not authenticated or '
        'has already logged out"}'
    )
    return answer(status, text)


async def echo_session_id(ex: Exchange) -> None:
    """Answer with the Authorization header's value as the status."""
    header = ex.request.headers.get("authorization", "")
    await ex.json("200 OK", {"code": "0", "status": header})


async def echo_password(ex: Exchange) -> None:
    """Answer an HTML page quoting the login request (and so the password)."""
    login = next(r for r in ex.server.requests if r.path.endswith("/login"))
    page = b"<html>password " + login.body + b" is what you sent</html>"
    await ex.respond("200 OK", page, content_type="text/html")


async def echo_session_id_in_header_line(ex: Exchange) -> None:
    """Send a malformed header line quoting the session id (a parse error)."""
    header = ex.request.headers.get("authorization", "").encode()
    await ex.send(b"HTTP/1.1 200 OK\r\nX-Echo " + header + b"\r\n\r\n")
    ex.close()


async def continues_forever(ex: Exchange) -> None:
    """Send 100 Continue again and again, never a final answer."""
    while not ex.server.closing.is_set():
        await ex.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await ex.server.pause(0.01)


def json_head(length: int | None = None, *, extra: str = "") -> bytes:
    """A 200 head for a JSON body; no Content-Length when ``length`` is None."""
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json"]
    if length is None:
        lines.append("Connection: close")
    else:
        lines.append(f"Content-Length: {length}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


IDLE_BODY = b'{"code": "0", "status": "IDLE"}'
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


# -- connection handlers: TLS-level misbehaviour ----------------------------------------


async def speak_http(
    _server: HostileServer,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Answer a TLS ClientHello with plain HTTP."""
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def speak_garbage(
    server: HostileServer,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Answer a ClientHello with TLS-looking records that make no sense."""
    await reader.read(1024)
    writer.write(b"\x16\x03\x03\x00\x05hello" * 8)
    await writer.drain()
    await server.closing.wait()


async def close_in_handshake(
    _server: HostileServer,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Read the ClientHello, then close the connection (FIN)."""
    await reader.read(1024)
    writer.close()


async def reset_in_handshake(
    _server: HostileServer,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Read the ClientHello, then reset the connection."""
    await reader.read(1024)
    reset(writer)


async def hang_in_handshake(
    server: HostileServer,
    _reader: asyncio.StreamReader,
    _writer: asyncio.StreamWriter,
) -> None:
    """Accept the connection and never answer the ClientHello."""
    await server.closing.wait()


# -- TLS server contexts --------------------------------------------------------------


def _context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def trusted_cert(ca: trustme.CA, _tmp: Path) -> ssl.SSLContext:
    """A certificate for 127.0.0.1 from the configured CA (the control case)."""
    return _context(ca.issue_cert("127.0.0.1"))


def other_host_cert(ca: trustme.CA, _tmp: Path) -> ssl.SSLContext:
    """A certificate from the configured CA, but for another host name."""
    return _context(ca.issue_cert("sklm.example.com"))


def expired_cert(ca: trustme.CA, _tmp: Path) -> ssl.SSLContext:
    """A certificate for 127.0.0.1 from the configured CA that expired yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    return _context(
        ca.issue_cert(
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
    )


def other_ca_cert(_ca: trustme.CA, _tmp: Path) -> ssl.SSLContext:
    """A certificate for 127.0.0.1 from a CA the client was not given."""
    return _context(trustme.CA().issue_cert("127.0.0.1"))


def self_signed_cert(_ca: trustme.CA, tmp: Path) -> ssl.SSLContext:
    """A valid self-signed certificate for 127.0.0.1, from no CA at all."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    path = tmp / "self-signed.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(path)
    return context


# -- checks on what the server saw ---------------------------------------------------


# -- the corpus ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One hostile behaviour and what the client must make of it.

    ``outcome`` is the exact error class, or the phase when the variant must be
    accepted; ``detail`` is a piece of the message.
    """

    id: str
    outcome: type[SklmError] | Phase
    detail: str = ""
    progress: Responder | tuple[Responder, ...] = idle
    login: Responder = login_ok
    #: The server's TLS context (the client trusts the session CA).
    tls: TlsFactory | None = None
    #: Replace HTTP entirely (TLS handshake misbehaviour); the URL is https.
    connection: ConnectionHandler | None = None
    #: Ends only by the client's timeout.
    slow: bool = False
    #: Successful polls before the hostile one(s).
    warmup: int = 0
    #: Polls in a row that must each end in ``outcome``.
    polls: int = 1
    #: Logins the server must have seen in all (no hammering).
    logins: int | None = None
    #: Start a second server for redirects to point at.
    witness: bool = False
    check: Check | None = None

    @property
    def https(self) -> bool:
        """Whether the client is given an https URL."""
        return self.tls is not None or self.connection is not None


P = SklmProtocolError
U = SklmUnreachable
T = SklmTlsError
A = SklmAuthError

CASES: tuple[Case, ...] = (
    # -- bodies that are not the JSON object SKLM sends
    Case("empty-body", P, "body is not JSON", answer("200 OK", b"")),
    Case("not-json", P, "body is not JSON", answer("200 OK", "restore is idle")),
    Case(
        "html-200",
        P,
        "body is an HTML page, not JSON: 'SRVE0255E'",
        answer(
            "200 OK", "<html><body>SRVE0255E</body></html>", content_type="text/html"
        ),
    ),
    Case(
        "html-500",
        P,
        "HTTP 500 HTML page: Error 500",
        answer(
            "500 Internal Server Error",
            "<html>Error 500</html>",
            content_type="text/html",
        ),
    ),
    Case(
        "html-503",
        P,
        "HTTP 503 HTML page: SRVE0211I: starting",
        answer(
            "503 Service Unavailable",
            "<html>SRVE0211I: starting</html>",
            content_type="text/html",
            headers=[("Retry-After", "120")],
        ),
    ),
    Case(
        "truncated-json",
        P,
        "body is not JSON",
        answer("200 OK", '{"code": "4", "status": "RESTO'),
    ),
    Case(
        "json-array",
        P,
        "JSON array, not an object",
        answer("200 OK", '[{"code": "0", "status": "IDLE"}]'),
    ),
    Case("json-string", P, "JSON string, not an object", answer("200 OK", '"IDLE"')),
    Case("json-number", P, "JSON number, not an object", answer("200 OK", "0")),
    Case("json-null", P, "JSON null, not an object", answer("200 OK", "null")),
    Case("missing-status", P, "body has no status", answer("200 OK", '{"code": "0"}')),
    Case("missing-code", P, "body has no code", answer("200 OK", '{"status": "IDLE"}')),
    Case(
        "code-status-disagree",
        P,
        "code '7' disagrees with status IDLE",
        answer("200 OK", '{"code": "7", "status": "IDLE"}'),
    ),
    Case(
        "unknown-phase",
        P,
        "unknown status 'RESTORING'",
        answer("200 OK", '{"code": "8", "status": "RESTORING"}'),
    ),
    Case(
        "status-not-string",
        P,
        "unknown status 0",
        answer("200 OK", '{"code": 0, "status": 0}'),
    ),
    Case(
        "negative-code-string",
        P,
        "code is not a number: '-1'",
        answer("200 OK", '{"code": "-1", "status": "IDLE"}'),
    ),
    Case(
        "negative-code-int",
        P,
        "code is not a number: -1",
        answer("200 OK", '{"code": -1, "status": "IDLE"}'),
    ),
    Case(
        "huge-code-int",
        P,
        f"code {10**30} disagrees with status IDLE",
        answer("200 OK", f'{{"code": {10**30}, "status": "IDLE"}}'),
    ),
    Case(
        "huge-code-string",
        P,
        "code is not a number",
        answer("200 OK", f'{{"code": "{10**30}", "status": "IDLE"}}'),
    ),
    Case(
        "code-float-string",
        P,
        "code is not a number: '4.0'",
        answer("200 OK", '{"code": "4.0", "status": "RESTORE_KEYSTORES"}'),
    ),
    Case(
        "code-float",
        P,
        "code is not a number: 4.0",
        answer("200 OK", '{"code": 4.0, "status": "RESTORE_KEYSTORES"}'),
    ),
    Case(
        "code-boolean",
        P,
        "code is not a number: False",
        answer("200 OK", '{"code": false, "status": "IDLE"}'),
    ),
    Case(
        "very-long-status",
        P,
        "unknown status 'AAAA",
        answer("200 OK", '{"code": "0", "status": "' + "A" * 50_000 + '"}'),
    ),
    Case(
        "duplicate-status",
        P,
        "body gives status more than once",
        answer("200 OK", '{"code": "0", "status": "IDLE", "status": "COMPLETED"}'),
    ),
    Case(
        "duplicate-status-other-case",
        P,
        "body gives status more than once",
        answer("200 OK", '{"code": "7", "Status": "IDLE", "status": "COMPLETED"}'),
    ),
    Case(
        "duplicate-code",
        P,
        "body gives code more than once",
        answer("200 OK", '{"code": "7", "status": "COMPLETED", "code": "0"}'),
    ),
    Case(
        "invalid-utf8",
        P,
        "body is not valid UTF-8",
        answer("200 OK", b'{"code": "0", "status": "ID\xff\xfeLE"}'),
    ),
    Case(
        "utf8-bom",
        P,
        "body is not JSON",
        answer("200 OK", b"\xef\xbb\xbf" + IDLE_BODY),
    ),
    Case(
        "nested-30000-deep",
        P,
        "body is not JSON",
        answer("200 OK", "[" * 30_000 + "]" * 30_000),
    ),
    Case(
        "nested-100000-deep",
        P,
        f"more than the {MAX_BODY_BYTES}-byte limit",
        answer("200 OK", "[" * 100_000 + "]" * 100_000),
    ),
    Case(
        "status-echoes-session-id",
        P,
        "unknown status 'SKLMAuth userAuthId=***'",
        echo_session_id,
    ),
    Case(
        "body-echoes-password",
        P,
        'body is an HTML page, not JSON: \'password {"userid": "SKLMAdmin", '
        '"password": "***"} is what you sent\'',
        echo_password,
    ),
    # -- variants SKLM may send: accepted
    Case(
        "status-lowercase",
        Phase.IDLE,
        progress=answer("200 OK", '{"code": "0", "status": "idle"}'),
    ),
    Case(
        "extra-fields",
        Phase.RESTORE_DATABASES,
        progress=answer(
            "200 OK",
            '{"code": "5", "status": "RESTORE_DATABASES", "message": "CTGKM3066I",'
            ' "details": {"percent": [50, null]}, "startedAt": 1700000000}',
        ),
    ),
    Case(
        "text-plain-json",
        Phase.CLEANUP,
        progress=answer(
            "200 OK", '{"code": 6, "status": "CLEANUP"}', content_type="text/plain"
        ),
    ),
    Case(
        "no-content-type",
        Phase.IDLE,
        progress=answer("200 OK", IDLE_BODY, content_type=None),
    ),
    Case(
        "continue-then-200",
        Phase.IDLE,
        progress=raw(
            b"HTTP/1.1 100 Continue\r\n\r\n" + json_head(len(IDLE_BODY)) + IDLE_BODY
        ),
    ),
    Case(
        "early-hints-then-200",
        Phase.IDLE,
        progress=raw(
            b"HTTP/1.1 103 Early Hints\r\nLink: </x.css>; rel=preload\r\n\r\n"
            + json_head(len(IDLE_BODY))
            + IDLE_BODY
        ),
    ),
    # -- sizes
    Case(
        "several-mb-streamed",
        P,
        f"body larger than the {MAX_BODY_BYTES}-byte limit",
        streamed(json_head(), 32 << 20),
        check=stopped_reading,
    ),
    Case(
        "several-mb-declared",
        P,
        f"a body of {32 << 20} bytes, more than the {MAX_BODY_BYTES}-byte limit",
        streamed(json_head(32 << 20), 32 << 20),
        check=stopped_reading,
    ),
    Case(
        "gzip-bomb",
        P,
        f"body larger than the {MAX_BODY_BYTES}-byte limit",
        answer("200 OK", gzip_bomb(), headers=[("Content-Encoding", "gzip")]),
    ),
    Case(
        "gzip-broken",
        P,
        "body does not match its Content-Encoding",
        answer("200 OK", b"not gzip at all", headers=[("Content-Encoding", "gzip")]),
    ),
    Case(
        "brotli-unasked",
        P,
        "malformed HTTP answer",
        answer("200 OK", b"\x0b\x02\x80{}\x03", headers=[("Content-Encoding", "br")]),
    ),
    # -- HTTP framing
    Case(
        "headers-never-end",
        P,
        "malformed HTTP answer: Too many headers received; ",
        headers_forever,
    ),
    Case(
        "header-line-too-long",
        P,
        "malformed HTTP answer",
        raw(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"),
    ),
    Case(
        "headers-trickle",
        U,
        f"no answer within {SLOW_TIMEOUT:g} s",
        trickled(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"s" * 100, 0.05),
        slow=True,
    ),
    Case(
        "body-trickle",
        U,
        f"no answer within {SLOW_TIMEOUT:g} s",
        trickled(json_head(len(IDLE_BODY)), IDLE_BODY),
        slow=True,
    ),
    Case(
        "garbage-status-line",
        P,
        "malformed HTTP answer",
        raw(b"SKLM/9.9 OK\r\n\r\n", then="close"),
    ),
    Case(
        "status-code-2000",
        P,
        "malformed HTTP answer",
        raw(b"HTTP/1.1 2000 OK\r\n\r\n", then="close"),
    ),
    Case("no-status-line", P, "malformed HTTP answer", raw(IDLE_BODY, then="close")),
    Case(
        "content-length-larger-then-close",
        U,
        "answer cut short",
        raw(json_head(100) + IDLE_BODY, then="close"),
    ),
    Case(
        "content-length-larger-then-hang",
        U,
        f"no answer within {SLOW_TIMEOUT:g} s",
        raw(json_head(100) + IDLE_BODY, then="hang"),
        slow=True,
    ),
    Case(
        "content-length-smaller",
        P,
        "malformed HTTP answer",
        raw(json_head(10) + IDLE_BODY),
    ),
    Case(
        "content-length-not-a-number",
        P,
        "malformed HTTP answer",
        raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n" + IDLE_BODY, then="close"
        ),
    ),
    Case(
        "content-length-twice",
        P,
        "malformed HTTP answer",
        raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 31\r\nContent-Length: 2\r\n\r\n"
            + IDLE_BODY,
            then="close",
        ),
    ),
    Case(
        "reset-mid-body",
        U,
        "answer cut short",
        raw(json_head(100) + IDLE_BODY[:10], then="reset"),
    ),
    Case(
        "chunked-broken",
        P,
        "malformed HTTP answer",
        raw(
            CHUNKED_HEAD + b"zz\r\n{}\r\n0\r\n\r\n",
            then="close",
        ),
    ),
    Case(
        "chunked-truncated",
        U,
        "answer cut short",
        raw(
            CHUNKED_HEAD + b'64\r\n{"code"',
            then="close",
        ),
    ),
    Case(
        "chunked-and-content-length",
        P,
        "malformed HTTP answer",
        raw(
            json_head(len(IDLE_BODY), extra="Transfer-Encoding: chunked")
            + b"%x\r\n" % len(IDLE_BODY)
            + IDLE_BODY
            + b"\r\n0\r\n\r\n",
            then="close",
        ),
    ),
    Case(
        "closed-without-answer", U, "connection closed before an answer", close_at_once
    ),
    Case("reset-without-answer", U, "connection reset by peer", reset_at_once),
    Case(
        "switching-protocols",
        P,
        "HTTP 101",
        raw(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            then="hang",
        ),
    ),
    Case(
        "continue-forever",
        U,
        f"no answer within {SLOW_TIMEOUT:g} s",
        continues_forever,
        slow=True,
    ),
    Case(
        "no-content-204",
        P,
        "HTTP 204 empty body",
        raw(b"HTTP/1.1 204 No Content\r\n\r\n"),
    ),
    Case(
        "header-echoes-session-id",
        P,
        "malformed HTTP answer: Invalid header token: "
        "b'X-Echo SKLMAuth userAuthId=***'",
        echo_session_id_in_header_line,
    ),
    # -- statuses SKLM uses for failures
    Case(
        "404-ctgkm",
        P,
        # Before discovery any 404 means "try the other path" (issue 11); this
        # server answers every progress path alike.
        "HTTP 404 from both progress paths (/ckms/restore/progress: CTGKM0501E "
        "Internal error; /ckms/backupRestore/progress: CTGKM0501E Internal error); "
        "tried /SKLM/rest/v1/ckms/restore/progress and "
        "/SKLM/rest/v1/ckms/backupRestore/progress",
        answer(
            "404 Not Found",
            '{"code": "CTGKM0501E", "message": "CTGKM0501E Internal error"}',
        ),
    ),
    Case(
        "404-ctgkm-on-kept-path",
        P,
        "sklm-hostile: HTTP 404 CTGKM0501E Internal error; ",
        (
            idle,
            answer(
                "404 Not Found",
                '{"code": "CTGKM0501E", "message": "CTGKM0501E Internal error"}',
            ),
        ),
        warmup=1,
        polls=2,
    ),
    Case(
        "404-ctgkm-message-only-on-both",
        P,
        "HTTP 404 from both progress paths (/ckms/restore/progress: CTGKM6005E "
        "Not found.; /ckms/backupRestore/progress: CTGKM6005E Not found.)",
        answer("404 Not Found", '{"message": "CTGKM6005E Not found."}'),
    ),
    Case(
        "500-ctgkm0001e",
        P,
        "sklm-hostile: HTTP 500 CTGKM0001E Internal server error. See the server "
        "log.; ",
        answer(
            "500 Internal Server Error",
            '{"code": "CTGKM0001E", "message": "CTGKM0001E Internal server error. '
            'See the server log."}',
        ),
    ),
    Case(
        "500-ctgkm-control-characters",
        P,
        "sklm-hostile: HTTP 500 CTGKM0001E one two [2Jthree four; ",
        answer(
            "500 Internal Server Error",
            '{"code": "CTGKM0001E", "message": "CTGKM0001E one\\r\\ntwo\\u001b[2J'
            'three\\u202e\\u0000four"}',
        ),
    ),
    Case(
        "500-ctgkm-endless-message",
        P,
        "sklm-hostile: HTTP 500 CTGKM0001E " + "blah " * 27 + "b...; ",
        answer(
            "500 Internal Server Error",
            '{"code": "CTGKM0001E", "message": "CTGKM0001E ' + "blah " * 5000 + '"}',
        ),
    ),
    Case(
        "both-paths-404",
        P,
        "HTTP 404 from both progress paths (/ckms/restore/progress: Error 404: "
        "SRVE0190E: File not found; /ckms/backupRestore/progress: Error 404: "
        "SRVE0190E: File not found)",
        answer(
            "404 Not Found",
            "Error 404: SRVE0190E: File not found",
            content_type="text/plain",
        ),
    ),
    Case(
        "500-servlet-exception",
        P,
        "HTTP 500 Error 500: javax.servlet.ServletException: "
        "java.lang.NullPointerException",
        answer(
            "500 Internal Server Error",
            "Error 500: javax.servlet.ServletException: java.lang.NullPointerException",
            content_type="text/plain",
        ),
    ),
    Case(
        "405-no-body",
        P,
        "HTTP 405 empty body",
        answer("405 Method Not Allowed", b"", content_type=None),
    ),
    Case(
        "redirect-301",
        P,
        "answered HTTP 301 (a redirect, not followed)",
        redirect("301 Moved Permanently"),
        witness=True,
        check=witness_untouched,
    ),
    Case(
        "redirect-302",
        P,
        "answered HTTP 302 (a redirect, not followed)",
        redirect("302 Found"),
        witness=True,
        check=witness_untouched,
    ),
    Case(
        "redirect-307",
        P,
        "answered HTTP 307 (a redirect, not followed)",
        redirect("307 Temporary Redirect"),
        witness=True,
        check=witness_untouched,
    ),
    Case(
        "redirect-308",
        P,
        "answered HTTP 308 (a redirect, not followed)",
        redirect("308 Permanent Redirect"),
        witness=True,
        check=witness_untouched,
    ),
    # -- login
    Case(
        "login-without-session-id",
        P,
        "login answered without a session id",
        login=answer("200 OK", '{"result": "ok"}'),
        logins=1,
    ),
    Case(
        "login-empty-session-id",
        P,
        "login answered without a session id",
        login=answer("200 OK", '{"UserAuthId": ""}'),
    ),
    Case(
        "login-session-id-number",
        P,
        "login answered without a session id",
        login=answer("200 OK", '{"UserAuthId": 123456}'),
    ),
    Case(
        "login-session-id-100kb",
        P,
        f"more than the {MAX_BODY_BYTES}-byte limit",
        login=answer("200 OK", '{"UserAuthId": "' + "s" * 100_000 + '"}'),
    ),
    Case(
        "login-session-id-5kb",
        P,
        "login answered a session id longer than 4096 characters",
        login=answer("200 OK", '{"UserAuthId": "' + "s" * 5_000 + '"}'),
    ),
    Case(
        "login-session-id-header-injection",
        P,
        "login answered a session id with unusable characters",
        login=answer("200 OK", '{"UserAuthId": "abc\\r\\nX-Injected: 1"}'),
    ),
    Case(
        "login-html-200",
        P,
        "login answered without a JSON object",
        login=answer("200 OK", "<html>Welcome</html>", content_type="text/html"),
    ),
    Case(
        "login-401-ctgkm6003e",
        A,
        "login rejected the credentials of user 'SKLMAdmin': HTTP 401 CTGKM6003E "
        "Authentication Failure: Incorrect userid or password; ",
        login=answer(
            "401 Unauthorized",
            '{"code": "CTGKM6003E", "message": "CTGKM6003E Authentication Failure: '
            'Incorrect userid or password"}',
        ),
        polls=2,
        logins=2,
    ),
    Case(
        "login-401-no-body",
        A,
        "login rejected the credentials of user 'SKLMAdmin': HTTP 401 empty body; ",
        login=answer("401 Unauthorized", b"", content_type=None),
    ),
    Case(
        "login-500-servlet",
        P,
        "login answered HTTP 500 Error 500: SRVE0777E; ",
        login=answer(
            "500 Internal Server Error",
            "Error 500: SRVE0777E",
            content_type="text/plain",
        ),
    ),
    Case(
        "login-redirect-307",
        P,
        "/ckms/login answered HTTP 307 (a redirect, not followed)",
        login=redirect("307 Temporary Redirect"),
        witness=True,
        check=witness_untouched,
    ),
    # -- sessions rejected again and again
    Case(
        "session-401-ctgkm6004e-always",
        A,
        "session rejected right after login",
        expired_session(),
        polls=3,
        logins=3,
    ),
    Case(
        "session-400-ctgkm6002e-always",
        A,
        "session rejected right after login",
        expired_session("CTGKM6002E", "400 Bad Request"),
        polls=3,
        logins=3,
    ),
    Case(
        "session-rejected-in-message-only",
        A,
        "session rejected right after login",
        answer(
            "401 Unauthorized",
            '{"message": "CTGKM6004E User is not authenticated or has already logged out"}',
        ),
        logins=1,
    ),
    Case(
        "session-works-once-then-always-rejected",
        A,
        "session rejected right after login",
        (idle, expired_session()),
        warmup=1,
        logins=2,
    ),
    # -- TLS
    Case("tls-trusted-control", Phase.IDLE, tls=trusted_cert),
    Case("tls-plain-http-server", T, "TLS handshake failed", connection=speak_http),
    Case("tls-garbage-records", T, "TLS handshake failed", connection=speak_garbage),
    Case(
        "tls-closed-in-handshake",
        U,
        "connection closed during the TLS handshake",
        connection=close_in_handshake,
    ),
    Case(
        "tls-reset-in-handshake",
        U,
        "connection closed during the TLS handshake",
        connection=reset_in_handshake,
    ),
    Case(
        "tls-hang-in-handshake",
        U,
        f"no answer within {SLOW_TIMEOUT:g} s",
        connection=hang_in_handshake,
        slow=True,
    ),
    Case(
        "tls-other-host",
        T,
        "certificate verify failed: IP address mismatch, certificate is not valid "
        "for '127.0.0.1'; ",
        tls=other_host_cert,
    ),
    Case(
        "tls-expired",
        T,
        "certificate verify failed: certificate has expired; ",
        tls=expired_cert,
    ),
    Case(
        "tls-other-ca",
        T,
        "certificate verify failed: unable to get local issuer certificate; ",
        tls=other_ca_cert,
    ),
    Case(
        "tls-self-signed",
        T,
        "certificate verify failed: self-signed certificate; ",
        tls=self_signed_cert,
    ),
)


# -- running a case ---------------------------------------------------------------------


async def start_case(
    case: Case, ca: trustme.CA, tmp_path: Path, stack: AsyncExitStack
) -> HostileServer:
    """Start the case's server (and witness), closed when ``stack`` closes."""
    server = HostileServer(
        case.progress,
        login=case.login,
        ssl_context=case.tls(ca, tmp_path) if case.tls else None,
        connection=case.connection,
    )
    await stack.enter_async_context(server)
    if case.witness:
        server.witness = await stack.enter_async_context(HostileServer())
    return server


def case_config(
    case: Case, server: HostileServer, ca_file: Path, *, slow_timeout: float
) -> ServerConfig:
    """The client's configuration for ``case``'s server."""
    url = server.url.replace("http:", "https:") if case.https else server.url
    return ServerConfig(
        name=NAME,
        url=url,
        password=Secret(PASSWORD),
        ca_file=ca_file if case.https else None,
        allow_insecure_http=not case.https,
        timeout=slow_timeout if case.slow else TIMEOUT,
    )


async def poll_once(client: SklmClient) -> Outcome:
    """One poll under the hang guard: its result, or the SklmError it raised."""
    with anyio.fail_after(HANG_GUARD):
        try:
            return await client.poll_phase()
        except SklmError as exc:
            return exc


async def run_case(client: SklmClient, case: Case) -> list[Outcome]:
    """Warm up, then poll ``case.polls`` times; return the hostile outcomes."""
    for _ in range(case.warmup):
        warm = await poll_once(client)
        assert isinstance(warm, PollResult), warm
    return [await poll_once(client) for _ in range(case.polls)]


def secrets_of(server: HostileServer) -> list[str]:
    """Every secret the client must keep out of errors: password, session ids."""
    return [PASSWORD, *server.session_ids]


def assert_outcome(case: Case, outcome: Outcome, server: HostileServer) -> None:
    """The outcome is the case's: class, name, detail, hint, no secret."""
    if isinstance(case.outcome, Phase):
        assert isinstance(outcome, PollResult), outcome
        assert outcome.phase is case.outcome
        return
    assert type(outcome) is case.outcome, repr(outcome)
    assert isinstance(outcome, SklmError)
    message = str(outcome)
    assert outcome.server == NAME
    assert message.startswith(f"{NAME}: ")
    assert case.detail in message
    assert outcome.hint
    assert message.endswith(f"; {outcome.hint}")
    assert "check" in outcome.hint
    assert len(message) < 600
    assert_no_secret(outcome, secrets_of(server))


def assert_no_secret(exc: BaseException, secrets: Sequence[str]) -> None:
    """No secret in the text of ``exc`` nor of anything in its cause chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in (str(current), repr(current)):
            for secret in secrets:
                assert secret not in text, f"a secret in {type(current).__name__}"
        current = current.__cause__ or current.__context__


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The process session as the daemon builds it."""
    async with create_session([]) as s:
        yield s


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_hostile_server(case, ca, ca_file, tmp_path, session) -> None:
    """The client turns one hostile behaviour into the right error, or accepts it."""
    async with AsyncExitStack() as stack:
        server = await start_case(case, ca, tmp_path, stack)
        config = case_config(case, server, ca_file, slow_timeout=SLOW_TIMEOUT)
        client = SklmClient(config, session)
        outcomes = await run_case(client, case)
        for outcome in outcomes:
            assert_outcome(case, outcome, server)
        if case.logins is not None:
            assert server.logins == case.logins
        if case.check is not None:
            await case.check(server)


def test_corpus_is_large_and_named() -> None:
    """The corpus holds at least 40 hostile cases, each with a unique id."""
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids)
    assert sum(not isinstance(case.outcome, Phase) for case in CASES) >= 40


async def test_fleet_of_hostile_servers_spares_the_healthy_one(
    ca, ca_file, tmp_path, simulator: StartSimulator
) -> None:
    """Polled together, the healthy server answers while the slow hostile ones hang."""
    sim = await simulator({"servers": [{"name": "healthy", "password": SIM_PASSWORD}]})
    healthy_config = ServerConfig(
        name="healthy",
        url=sim.urls["healthy"],
        password=Secret(SIM_PASSWORD),
        allow_insecure_http=True,
        timeout=TIMEOUT,
    )
    slow = [case for case in CASES if case.slow]
    outcomes: dict[str, list[Outcome]] = {}
    finished = {case.id: anyio.Event() for case in CASES}
    async with AsyncExitStack() as stack:
        servers = {
            case.id: await start_case(case, ca, tmp_path, stack) for case in CASES
        }
        configs = {
            case.id: case_config(
                case, servers[case.id], ca_file, slow_timeout=FLEET_SLOW_TIMEOUT
            )
            for case in CASES
        }
        session = await stack.enter_async_context(
            create_session([*configs.values(), healthy_config])
        )

        async def run(case: Case) -> None:
            client = SklmClient(configs[case.id], session)
            outcomes[case.id] = await run_case(client, case)
            finished[case.id].set()

        async with anyio.create_task_group() as group:
            for case in CASES:
                group.start_soon(run, case)
            with anyio.fail_after(HANG_GUARD):
                for case in slow:
                    server = servers[case.id]
                    engaged = (
                        server.connected if case.connection else server.progress_seen
                    )
                    await engaged.wait()
            healthy = await poll_once(SklmClient(healthy_config, session))
            assert isinstance(healthy, PollResult), healthy
            assert healthy.phase is Phase.IDLE
            assert [c.id for c in slow if finished[c.id].is_set()] == []
            for case in slow:
                await servers[case.id].close()

    for case in CASES:
        server = servers[case.id]
        for outcome in outcomes[case.id]:
            if case.slow:
                # Released by closing their server rather than by the timeout.
                assert type(outcome) is SklmUnreachable, repr(outcome)
                assert_no_secret(outcome, secrets_of(server))
            else:
                assert_outcome(case, outcome, server)
