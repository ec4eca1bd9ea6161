"""The SKLM REST client: login, one re-login, restore progress, TLS, bounded bodies.

One :class:`SklmClient` per server, all sharing the one ``aiohttp.ClientSession``
that :func:`create_session` builds for the process. Every aiohttp, ssl and socket
exception is translated here, once, into the ``SklmError`` tree of
:mod:`watcher.errors`; nothing above this module sees a foreign exception::

    ServerFingerprintMismatch, ClientConnectorCertificateError,
    ClientSSLError, ssl.SSLError                     -> SklmTlsError
    ClientConnectorError (incl. a TLS handshake cut
    off by the peer), ServerDisconnectedError,
    ClientOSError, ClientPayloadError (body cut short),
    TimeoutError, other ClientError                  -> SklmUnreachable
    ClientResponseError (malformed HTTP), InvalidURL,
    ClientPayloadError (undecodable Content-Encoding),
    3xx, unexpected status, bad or oversized body    -> SklmProtocolError
    401 at login (CTGKM6003E), session rejected
    right after a fresh login                        -> SklmAuthError

Session expiry (401 CTGKM6004E, 400 CTGKM6002E) is the private ``_SessionExpired``:
it triggers exactly one re-login per poll and never escapes.

The progress path is discovered per server (unless ``progress_path`` is set):
until one has answered 200, *any* 404 on a candidate means "try the other",
whatever its body, because IBM's generic-failure 404 (with a CTGKM id) and a
"no such path" 404 cannot be told apart; a 404 on both is a protocol error
naming both answers. A path that answered 200 is kept: a 404 there later is a
failure (a restarting server), not a reason to look elsewhere.

Every error's ``detail`` is the reason in words, without the server's name:
``connection refused``, ``certificate verify failed: unable to get local issuer
certificate``, ``certificate does not match tls_fingerprint``, ``HTTP 404 from
both progress paths (...)``; an error answer is quoted in its own words (``HTTP
500 CTGKM0001E Internal server error. See the server log.``), scrubbed of
secrets, then cut and freed of control characters.

No error carries a secret: text quoted from a foreign exception is scrubbed of
the password and session id, and a foreign exception that shows one anywhere
(aiohttp's ``ClientResponseError`` repr holds the request's Authorization
header) is not chained as ``__cause__``. tests/integration/test_hostile_sklm.py
holds the corpus of hostile servers (issue #8).

TLS trust comes from the server's configuration alone, never from ``SSL_CERT_FILE``,
``SSL_CERT_DIR`` or proxy variables: ``ca_file`` is the only trust anchor when set;
``tls_fingerprint`` pins the leaf certificate (``aiohttp.Fingerprint``), which
*replaces* CA and host-name checks, as an operator pinning a self-signed
certificate wants; ``verify_tls = false`` turns verification off; otherwise
OpenSSL's compiled-in system store is used.

The client never reads the clock and is meant to be driven by one task per server
(the scheduler's): calls on one instance must not overlap.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any, Final, TypeVar

import aiohttp
import structlog
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL

from watcher.config import Secret, ServerConfig
from watcher.errors import (
    SklmAuthError,
    SklmError,
    SklmProtocolError,
    SklmTlsError,
    SklmUnreachable,
    one_line,
)
from watcher.phases import Phase, PollResult

#: The most bytes of a response body read (after decompression); more is an error.
MAX_BODY_BYTES: Final = 64 * 1024
#: The longest session id accepted from a login answer.
MAX_SESSION_ID_CHARS: Final = 4096
#: Longest excerpt of an offending value put in an error message.
MAX_EXCERPT_CHARS: Final = 80
#: Longest quote of an error answer's own words (``CTGKM0001E Internal ...``).
MAX_ANSWER_CHARS: Final = 150
#: Longest quote of each answer in the "404 from both progress paths" detail,
#: so that both fit in one detail (``errors.MAX_DETAIL_CHARS``).
MAX_MISS_CHARS: Final = 50
#: How much of an HTML page is read for its words.
MAX_PAGE_CHARS: Final = 16 * 1024

#: Progress paths under ``api_base``, in the order discovery tries them: IBM's
#: 4.1.x OpenAPI files and Java client use the first, the 4.2+ docs' URL line
#: the second.
PROGRESS_PATHS: Final = ("/ckms/restore/progress", "/ckms/backupRestore/progress")
LOGIN_PATH: Final = "/ckms/login"
LOGOUT_PATH: Final = "/ckms/logout"
RESULT_PATH: Final = "/ckms/restore/result"
VERSION_PATH: Final = "/ckms/versionInfo"

#: Connections kept alive in total are at least this many (aiohttp's default).
MIN_CONNECTIONS: Final = 100
#: Connections per host: one client polls its server from one task; sinks share it.
CONNECTIONS_PER_HOST: Final = 4
#: Idle keep-alive beyond the longest idle interval, covering jitter and latency.
KEEPALIVE_FACTOR: Final = 1.25
KEEPALIVE_MARGIN: Final = 5.0

LOG_LOGIN: Final = "client.login"
LOG_RELOGIN: Final = "client.relogin"
LOG_PATH_DISCOVERED: Final = "client.path_discovered"
LOG_LOGOUT: Final = "client.logout"
LOG_BEST_EFFORT_FAILED: Final = "client.best_effort_failed"

_CREDENTIALS_REJECTED: Final = "CTGKM6003E"
_SESSION_REJECTED: Final = frozenset({"CTGKM6004E", "CTGKM6002E"})
_CTGKM_ID = re.compile(r"CTGKM\d{4}[A-Z]")
_SESSION_ID_CHARS = re.compile(r"[\x21-\x7e]+")
#: How a peer cutting a connection off shows in ``ClientConnectorError.os_error``.
_CUT_OFF: Final = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
_JSON_HEADERS: Final[Mapping[str, str]] = {
    "Accept": "application/json",
    "Content-Type": "application/json",
}

_log = structlog.get_logger(__name__)

T = TypeVar("T")


# The credentials were accepted, so the usual "check the password" hint would mislead.
_REJECTED_SESSION_HINT: Final = (
    "the login succeeded but the new session was refused: check that the user has "
    "a role allowed to read backup/restore progress, and the server's logs"
)


def create_session(servers: Sequence[ServerConfig]) -> aiohttp.ClientSession:
    """Build the process's one ``aiohttp.ClientSession``, sized for the fleet.

    Call it inside the running event loop and close it with ``await
    session.close()`` (or ``async with``). Connections stay alive longer than the
    longest idle interval so an idle fleet does not reconnect (and re-handshake
    TLS) on every poll. The environment changes nothing (``trust_env=False``: no
    proxies, no netrc), cookies are not kept, and no default header carries a
    secret: TLS settings and credentials are given per request by each client.
    """
    longest_idle = max((s.idle_interval for s in servers), default=30.0)
    connector = aiohttp.TCPConnector(
        limit=max(MIN_CONNECTIONS, 2 * len(servers)),
        limit_per_host=CONNECTIONS_PER_HOST,
        keepalive_timeout=longest_idle * KEEPALIVE_FACTOR + KEEPALIVE_MARGIN,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "sklm-watcher"},
    )


class _SessionExpired(Exception):
    """The server rejected the session id (CTGKM6004E / CTGKM6002E)."""


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str


class SklmClient:
    """Talks to one SKLM server: login, progress, restore result, version, logout.

    Args:
        server: The server's configuration (URL, credentials, TLS, paths, timeout).
        session: The process's shared session from :func:`create_session`.
    """

    def __init__(self, server: ServerConfig, session: aiohttp.ClientSession) -> None:
        self._server = server
        self._name = server.name
        self._http = session
        self._timeout = aiohttp.ClientTimeout(total=server.timeout)
        base = server.url.rstrip("/") + server.api_base.rstrip("/")
        self._api_base = server.api_base.rstrip("/")
        self._login_url = URL(base + LOGIN_PATH)
        self._logout_url = URL(base + LOGOUT_PATH)
        self._result_url = URL(base + RESULT_PATH)
        self._version_url = URL(base + VERSION_PATH)
        origin = server.url.rstrip("/")
        self._origin = origin
        # An explicit progress path is used as is; otherwise discovered, then kept.
        self._candidates: tuple[str, ...] = tuple(
            self._api_base + p for p in PROGRESS_PATHS
        )
        self._progress_path: str | None = server.progress_path
        self._progress_urls: dict[str, URL] = {}
        self._session_id: Secret | None = None
        self._auth_headers: Mapping[str, str] | None = None
        self._session_worked = False
        self._tls_problem: str | None = None
        self._ssl: ssl.SSLContext | aiohttp.Fingerprint | bool = True
        self._https = URL(origin).scheme == "https"
        if self._https:
            try:
                self._ssl = _ssl_for(server)
            except (OSError, ValueError) as exc:
                # One server's unreadable ca_file must not stop the fleet: its
                # every request reports it instead.
                self._tls_problem = f"cannot use its TLS settings: {_os_words(exc)}"

    @property
    def name(self) -> str:
        """The server's configured name."""
        return self._name

    # -- public operations -------------------------------------------------

    async def poll_phase(self) -> PollResult:
        """Read the current restore phase, logging in (or once again) as needed.

        Raises:
            SklmUnreachable: No answer (connect, reset, timeout).
            SklmTlsError: Certificate not trusted or pin mismatch.
            SklmAuthError: Credentials rejected, or a fresh session rejected.
            SklmProtocolError: Unexpected status, or a malformed or oversized body.
        """
        (phase, path), relogin = await self._authenticated(self._read_progress)
        return PollResult(phase=phase, relogin=relogin, path=path)

    async def restore_result(self) -> int | None:
        """Return the outcome code of the last restore, or None on any failure.

        A hint only (IBM does not document the values): never raises ``SklmError``.
        A rejected session is left for the next poll to notice (and re-login).
        """
        data = await self._best_effort_get(self._result_url)
        if data is None:
            return None
        for key in ("result", "code"):
            value = _get_ci(data, key)
            number = _as_int(value, allow_negative=True)
            if number is not None:
                return number
        return None

    async def version(self) -> str | None:
        """Return the server's ``tklm_version`` (e.g. ``"4.2.1.0"``), or None."""
        data = await self._best_effort_get(self._version_url)
        if data is None:
            return None
        value = _get_ci(data, "tklm_version")
        if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
            return value
        return None

    async def logout(self) -> None:
        """End the session on the server, best effort; never raises ``SklmError``.

        The session is forgotten first, so even a failed or cancelled logout
        leaves the client to log in afresh. Cancellation propagates.
        """
        session_id = self._session_id
        if session_id is None:
            return
        self._forget_session()
        body = {"userAuthId": session_id.reveal()}
        try:
            await self._request(
                "DELETE", self._logout_url, body=body, session_id=session_id
            )
        except (SklmError, _SessionExpired):
            return
        except Exception as exc:  # noqa: BLE001 - promised never to raise (shutdown)
            _log.debug(LOG_BEST_EFFORT_FAILED, server=self._name, error=_name_of(exc))
            return
        _log.debug(LOG_LOGOUT, server=self._name)

    # -- sessions ----------------------------------------------------------

    async def _authenticated(self, op: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``op`` with a session; re-login once if an older session is rejected.

        Returns ``op``'s result and whether a session that had worked was
        replaced by a fresh one.
        """
        fresh = False
        if self._session_id is None:
            await self._login()
            fresh = True
        try:
            return await op(), False
        except _SessionExpired:
            if fresh:
                self._forget_session()
                raise SklmAuthError(
                    self._name,
                    "session rejected right after login",
                    hint=_REJECTED_SESSION_HINT,
                ) from None
            had_worked = self._session_worked
            self._forget_session()
        _log.debug(LOG_RELOGIN, server=self._name)
        await self._login()
        try:
            result = await op()
        except _SessionExpired:
            self._forget_session()
            raise SklmAuthError(
                self._name,
                "session rejected right after login",
                hint=_REJECTED_SESSION_HINT,
            ) from None
        return result, had_worked

    async def _login(self) -> None:
        body = {
            "userid": self._server.username,
            "password": self._server.password.reveal(),
        }
        reply = await self._request("POST", self._login_url, body=body)
        if reply.status == 401:
            raise SklmAuthError(
                self._name,
                f"login rejected the credentials of user "
                f"{self._server.username!r}: {self._status_words(reply)}",
            )
        if reply.status != 200:
            raise SklmProtocolError(
                self._name, f"login answered {self._status_words(reply)}"
            )
        # The login answer holds the session id: never quote its body.
        data = _json_object(reply.body)
        if data is None:
            raise SklmProtocolError(self._name, "login answered without a JSON object")
        value = next(
            (v for k, v in data.items() if k.lower() == "userauthid"),
            None,
        )
        if not isinstance(value, str) or not value:
            raise SklmProtocolError(self._name, "login answered without a session id")
        if len(value) > MAX_SESSION_ID_CHARS:
            raise SklmProtocolError(
                self._name,
                f"login answered a session id longer than "
                f"{MAX_SESSION_ID_CHARS} characters",
            )
        if not _SESSION_ID_CHARS.fullmatch(value):
            raise SklmProtocolError(
                self._name, "login answered a session id with unusable characters"
            )
        self._session_id = Secret(value)
        self._auth_headers = {
            **_JSON_HEADERS,
            "Authorization": f"SKLMAuth userAuthId={value}",
        }
        self._session_worked = False
        _log.debug(LOG_LOGIN, server=self._name, user=self._server.username)

    def _forget_session(self) -> None:
        self._session_id = None
        self._auth_headers = None
        self._session_worked = False

    async def _best_effort_get(self, url: URL) -> dict[str, Any] | None:
        try:
            if self._session_id is None:
                await self._login()
            reply = await self._request("GET", url, session_id=self._session_id)
        except (SklmError, _SessionExpired):
            return None
        except Exception as exc:  # noqa: BLE001 - a hint must never break a poll
            _log.debug(LOG_BEST_EFFORT_FAILED, server=self._name, error=_name_of(exc))
            return None
        if reply.status != 200:
            return None
        return _json_object(reply.body)

    # -- progress ----------------------------------------------------------

    async def _read_progress(self) -> tuple[Phase, str]:
        known = self._progress_path
        if known is not None:
            reply = await self._get_progress(known)
            return self._parse_progress(reply, known), known
        misses: list[tuple[str, _Reply]] = []
        for suffix, path in zip(PROGRESS_PATHS, self._candidates, strict=True):
            reply = await self._get_progress(path)
            if reply.status == 404:
                # Any 404, CTGKM body or not: a server that does not know this
                # path may answer with IBM's generic-failure body too (issue 11).
                misses.append((suffix, reply))
                continue
            if reply.status == 200:
                self._progress_path = path
                _log.debug(LOG_PATH_DISCOVERED, server=self._name, path=path)
            return self._parse_progress(reply, path), path
        answers = "; ".join(
            f"{suffix}: {self._answer_words(reply, MAX_MISS_CHARS)}"
            for suffix, reply in misses
        )
        first, second = self._candidates
        raise SklmProtocolError(
            self._name,
            f"HTTP 404 from both progress paths ({answers})",
            hint=f"tried {first} and {second}; check the server's url and api_base, "
            "or set progress_path",
        )

    async def _get_progress(self, path: str) -> _Reply:
        url = self._progress_urls.get(path)
        if url is None:
            url = self._progress_urls[path] = URL(self._origin + path)
        return await self._request("GET", url, session_id=self._session_id)

    def _parse_progress(self, reply: _Reply, path: str) -> Phase:
        # The path goes in the hint: the detail is the reason alone, in words.
        hint = (
            "the server may be starting up; if it persists, check the url and "
            f"progress_path (polled {path})"
        )
        if reply.status != 200:
            raise SklmProtocolError(self._name, self._status_words(reply), hint=hint)
        try:
            return _parse_progress_body(reply.body, reply.content_type)
        except _BadBody as exc:
            detail = exc.detail
        scrubbed = self._scrub_bytes(reply.body)
        if scrubbed != reply.body:
            # Excerpts are cut before the detail is scrubbed, and a cut through
            # a secret would leave part of it: describe the scrubbed body instead.
            try:
                _parse_progress_body(scrubbed, reply.content_type)
            except _BadBody as exc:
                detail = exc.detail
        # Raised outside the handler: the unscrubbed detail stays out of __context__.
        raise SklmProtocolError(self._name, self._scrub(detail), hint=hint)

    # -- HTTP --------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: URL,
        *,
        body: Mapping[str, str] | None = None,
        session_id: Secret | None = None,
    ) -> _Reply:
        """Send one request and read its body (capped); translate every failure.

        With ``session_id``, the request is authenticated and a session rejection
        raises ``_SessionExpired``.
        """
        if self._tls_problem is not None:
            raise SklmTlsError(self._name, self._tls_problem)
        if session_id is None:
            headers: Mapping[str, str] = _JSON_HEADERS
        elif session_id is self._session_id and self._auth_headers is not None:
            headers = self._auth_headers
        else:
            headers = {
                **_JSON_HEADERS,
                "Authorization": f"SKLMAuth userAuthId={session_id.reveal()}",
            }
        data = None if body is None else json.dumps(body).encode()
        failure: SklmError | None = None
        try:
            async with self._http.request(
                method,
                url,
                data=data,
                headers=headers,
                ssl=self._ssl,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                if 300 <= resp.status < 400:
                    # Never followed: it would carry the Authorization header
                    # elsewhere. The Location value is not reported.
                    resp.close()
                    raise SklmProtocolError(
                        self._name,
                        f"{url.path} answered HTTP {resp.status} (a redirect, "
                        "not followed)",
                        hint="check the server's URL (scheme, host and port)",
                    )
                raw = await self._read_body(resp, url.path)
                reply = _Reply(
                    status=resp.status,
                    body=raw,
                    content_type=resp.headers.get("Content-Type", ""),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            failure = self._translate(exc, session_id)
            if not self._carries_secret(exc, session_id):
                raise failure from exc
        if failure is not None:
            # The foreign exception holds a secret (a server echoing it into a
            # header line, or aiohttp's request_info with the Authorization
            # header): raised outside the handler, so no traceback shows it.
            raise failure
        if session_id is not None:
            if (
                reply.status in (400, 401)
                and _ctgkm_id(reply.body) in _SESSION_REJECTED
            ):
                raise _SessionExpired
            if session_id is self._session_id:
                self._session_worked = True
        return reply

    async def _read_body(self, resp: aiohttp.ClientResponse, path: str) -> bytes:
        length = resp.content_length
        if length is not None and length > MAX_BODY_BYTES:
            resp.close()
            raise SklmProtocolError(
                self._name,
                f"{path} answered a body of {length} bytes, more than the "
                f"{MAX_BODY_BYTES}-byte limit",
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            # Reads the decompressed stream, so a gzip bomb stops at the cap too.
            chunk = await resp.content.read(MAX_BODY_BYTES + 1 - total)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                resp.close()
                raise SklmProtocolError(
                    self._name,
                    f"{path} answered a body larger than the "
                    f"{MAX_BODY_BYTES}-byte limit",
                )

    def _translate(
        self, exc: BaseException, session_id: Secret | None = None
    ) -> SklmError:
        """Map a foreign exception to the ``SklmError`` tree (no URL, no header).

        Text taken from the exception may quote what the server sent: it is
        scrubbed of the password and ``session_id`` before it is shortened.
        """
        name = type(exc).__name__

        def quote(text: str) -> str:
            return _short(self._scrub(text, session_id))

        if isinstance(exc, aiohttp.ServerFingerprintMismatch):
            return SklmTlsError(
                self._name,
                # The presented pin in the reason itself: status and events show
                # only the detail, and the operator compares it out of band.
                "certificate does not match tls_fingerprint (the server presented "
                f"sha256:{exc.got.hex()})",
                hint=f"check tls_fingerprint for {self._name} (the server's "
                "certificate may have been renewed)",
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cert_error = exc.certificate_error
            reason = getattr(cert_error, "verify_message", None) or _ssl_words(
                cert_error
            )
            return SklmTlsError(
                self._name, f"certificate verify failed: {reason.rstrip('.')}"
            )
        if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
            cause = exc.os_error if isinstance(exc, aiohttp.ClientSSLError) else exc
            return SklmTlsError(
                self._name, f"TLS handshake failed: {_ssl_words(cause)}"
            )
        if isinstance(exc, TimeoutError):
            return SklmUnreachable(
                self._name, f"no answer within {self._server.timeout:g} s"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            if self._https and isinstance(exc.os_error, _CUT_OFF):
                # Connected (a refusal is ConnectionRefusedError), then cut off
                # before TLS completed: often a server starting or overloaded,
                # sometimes one that accepts no TLS version or cipher we offer.
                return SklmUnreachable(
                    self._name,
                    "connection closed during the TLS handshake "
                    f"({_os_words(exc.os_error)})",
                    hint="check that the server is up; if it persists, check "
                    "that it accepts TLS 1.2 or later on this port",
                )
            return SklmUnreachable(self._name, _connect_words(exc))
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return SklmUnreachable(self._name, "connection closed before an answer")
        if isinstance(exc, aiohttp.ClientPayloadError):
            if _caused_by(exc, ContentEncodingError):
                # The body arrived but does not decode: the server's fault,
                # not the network's.
                return SklmProtocolError(
                    self._name, "body does not match its Content-Encoding"
                )
            return SklmUnreachable(
                self._name, "answer cut short (the connection ended mid-body)"
            )
        if isinstance(exc, aiohttp.ClientResponseError):
            return SklmProtocolError(
                self._name, f"malformed HTTP answer: {quote(exc.message) or name}"
            )
        if isinstance(exc, aiohttp.InvalidURL):
            return SklmProtocolError(
                self._name, "invalid URL", hint="check the server's url"
            )
        if isinstance(exc, OSError):
            return SklmUnreachable(self._name, _os_words(exc))
        return SklmUnreachable(
            self._name, f"connection failed: {quote(str(exc)) or name}"
        )

    def _secrets(self, session_id: Secret | None = None) -> list[str]:
        """The secret values that must never appear in an error."""
        return [
            s.reveal()
            for s in (session_id, self._session_id, self._server.password)
            if s
        ]

    def _carries_secret(
        self, exc: BaseException, session_id: Secret | None = None
    ) -> bool:
        """Whether ``exc`` or its causes show the password or a session id."""
        secrets = self._secrets(session_id)
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            texts = (str(current), repr(current))
            if any(secret in text for secret in secrets for text in texts):
                return True
            current = current.__cause__ or current.__context__
        return False

    def _status_words(self, reply: _Reply) -> str:
        """``HTTP 500 CTGKM0001E Internal server error. ...``: status and its words."""
        return f"HTTP {reply.status} {self._answer_words(reply, MAX_ANSWER_CHARS)}"

    def _answer_words(self, reply: _Reply, limit: int) -> str:
        """What an error answer says, in its own words: scrubbed, one line, cut."""
        # Scrubbed before anything is cut, so no part of a secret survives a cut.
        text = self._scrub(reply.body.decode("utf-8", "replace"))
        return one_line(_body_words(text, reply.content_type), limit)

    def _scrub(self, text: str, session_id: Secret | None = None) -> str:
        """Mask the session id(s) and password should an answer echo them."""
        for secret in self._secrets(session_id):
            text = text.replace(secret, "***")
        return text

    def _scrub_bytes(self, body: bytes) -> bytes:
        """:meth:`_scrub` for a raw body."""
        for secret in self._secrets():
            body = body.replace(secret.encode(), b"***")
        return body


class _BadBody(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


_PHASE_KEYS: Final = frozenset({"status", "code"})


class _JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers which keys it had more than once."""

    __slots__ = ("repeated",)

    repeated: frozenset[str]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        """Build from ``json``'s pairs; ``repeated`` holds lowercase keys seen twice."""
        obj = cls(pairs)
        seen: set[str] = set()
        repeated: set[str] = set()
        for key, _value in pairs:
            folded = key.lower()
            (repeated if folded in seen else seen).add(folded)
        obj.repeated = frozenset(repeated)
        return obj


def _parse_progress_body(body: bytes, content_type: str = "") -> Phase:
    """Parse a progress body such as ``{"code": "7", "status": "COMPLETED"}``.

    Matches on ``status`` and cross-checks ``code`` (an int or a numeric string).

    Raises:
        _BadBody: With a detail naming the offending value (truncated ``repr``).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadBody(f"body is not valid UTF-8: {_excerpt(body)}") from None
    try:
        data = json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except (ValueError, RecursionError):
        kind = content_type.split(";")[0].strip() or "no content type"
        if "html" in kind.lower() or text.lstrip().startswith("<"):
            # The page's words, not its markup: a servlet container's error
            # page says what happened (``SRVE0190E: File not found``).
            words = _page_text(text[:MAX_PAGE_CHARS])
            raise _BadBody(
                f"body is an HTML page, not JSON: {_excerpt(words)}"
            ) from None
        raise _BadBody(f"body is not JSON ({_short(kind)}): {_excerpt(text)}") from None
    if not isinstance(data, dict):
        raise _BadBody(
            f"body is a JSON {_json_type(data)}, not an object: {_excerpt(text)}"
        )
    # json keeps the last of duplicate keys, another parser the first: an
    # answer that says two things about the phase is not trusted either way.
    twice = sorted(data.repeated & _PHASE_KEYS) if isinstance(data, _JsonObject) else []
    if twice:
        raise _BadBody(
            f"body gives {' and '.join(twice)} more than once: {_excerpt(text)}"
        )
    status = _get_ci(data, "status")
    if status is None:
        raise _BadBody(f"body has no status: {_excerpt(text)}")
    phase = (
        Phase.from_status(status.strip().upper()) if isinstance(status, str) else None
    )
    if phase is None:
        raise _BadBody(f"unknown status {_excerpt(status)}")
    raw_code = _get_ci(data, "code")
    if raw_code is None:
        raise _BadBody(f"body has no code: {_excerpt(text)}")
    code = _as_int(raw_code, allow_negative=False)
    if code is None:
        raise _BadBody(f"code is not a number: {_excerpt(raw_code)}")
    if code != phase.value:
        raise _BadBody(
            f"code {_excerpt(raw_code)} disagrees with status {phase.name} "
            f"(code {phase.value})"
        )
    return phase


# -- small pure helpers ----------------------------------------------------


def _get_ci(data: Mapping[str, Any], key: str) -> Any:
    """Return ``data[key]`` matching the key case-insensitively (None if absent)."""
    if key in data:
        return data[key]
    wanted = key.lower()
    return next((v for k, v in data.items() if k.lower() == wanted), None)


def _as_int(value: Any, *, allow_negative: bool) -> int | None:
    """An int, or a string of decimal digits, as int; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if allow_negative or value >= 0 else None
    if isinstance(value, str):
        digits = value.strip()
        negative = allow_negative and digits.startswith("-")
        if negative:
            digits = digits[1:]
        if 0 < len(digits) <= 9 and digits.isascii() and digits.isdigit():
            return -int(digits) if negative else int(digits)
    return None


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``array``, ``null``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _ctgkm_id(body: bytes) -> str | None:
    """The ``CTGKM....E`` id in ``code``, or at the start of ``message``, if any."""
    data = _json_object(body)
    return None if data is None else _ctgkm_of(data)


def _ctgkm_of(data: Mapping[str, Any]) -> str | None:
    """:func:`_ctgkm_id` for a parsed object."""
    code = _get_ci(data, "code")
    if isinstance(code, str) and (match := _CTGKM_ID.fullmatch(code.strip())):
        return match.group()
    message = _get_ci(data, "message")
    if isinstance(message, str) and (match := _CTGKM_ID.match(message.strip())):
        return match.group()
    return None


def _excerpt(value: object) -> str:
    text = repr(value)
    if len(text) > MAX_EXCERPT_CHARS:
        return text[: MAX_EXCERPT_CHARS - 3] + "..."
    return text


def _short(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_EXCERPT_CHARS:
        return text[: MAX_EXCERPT_CHARS - 3] + "..."
    return text


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or an exception in its cause chain is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _name_of(exc: BaseException) -> str:
    return type(exc).__name__


def _os_words(exc: BaseException) -> str:
    """An OS error in words: ``connection reset by peer``, ``no route to host``."""
    strerror = getattr(exc, "strerror", None)
    text = str(strerror) if strerror else _short(str(exc))
    return _lower_first(text) or type(exc).__name__


# aiohttp 3.11 added ClientConnectorDNSError; older ones show a gaierror cause.
_DNS_ERRORS: Final[tuple[type[BaseException], ...]] = tuple(
    kind
    for kind in (getattr(aiohttp, "ClientConnectorDNSError", None),)
    if isinstance(kind, type)
)


def _connect_words(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection could not be made, in the words an operator searches for."""
    cause = exc.os_error
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, _DNS_ERRORS) or isinstance(cause, socket.gaierror):
        return f"host name not resolved: {_os_words(cause)}"
    return f"cannot connect: {_os_words(cause)}"


def _lower_first(text: str) -> str:
    """``Connection refused`` -> ``connection refused``; ``SSL`` stays ``SSL``."""
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


_SSL_CODE = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")
_SSL_NOISE = re.compile(
    r"\[SSL(?:: [A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)|^\[Errno -?\d+\]\s*"
)


def _ssl_words(exc: BaseException) -> str:
    """An ``ssl`` error in OpenSSL's words (``wrong version number``)."""
    text = str(getattr(exc, "strerror", None) or exc)
    words = _SSL_NOISE.sub("", text).strip()
    words = words.removeprefix("certificate verify failed: ")
    if words:
        return _short(words)
    reason = getattr(exc, "reason", None)
    match = _SSL_CODE.search(text)
    code = reason if isinstance(reason, str) and reason else match and match[1]
    if code:
        return code.replace("_", " ").lower()
    return type(exc).__name__


_NOT_JSON: Final = object()


def _body_words(text: str, content_type: str) -> str:
    """What an answer's body says, for an error detail (not yet cut or cleaned).

    IBM's ``{code, message}`` becomes ``CTGKM0001E Internal server error. ...``;
    other JSON is quoted as JSON; an HTML page gives its text, without markup;
    anything else is quoted as it is.
    """
    if not text.strip():
        return "empty body"
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError):
        data = _NOT_JSON
    if isinstance(data, dict):
        code = _ctgkm_of(data)
        if code is None:
            return f"JSON {text.strip()}"
        message = _get_ci(data, "message")
        words = message.strip() if isinstance(message, str) else ""
        if words.startswith(code):
            words = words[len(code) :].lstrip(" :-")
        return f"{code} {words}".rstrip()
    if data is not _NOT_JSON:
        return f"JSON {text.strip()}"
    if "html" in content_type.lower() or text.lstrip().startswith("<"):
        words = _page_text(text[:MAX_PAGE_CHARS])
        return f"HTML page: {words}" if words else "HTML page"
    return text


class _PageText(HTMLParser):
    """Collects the visible text of an HTML page (not head, script or style)."""

    _HIDDEN: Final = frozenset({"head", "title", "script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Enter a hidden element."""
        if tag in self._HIDDEN:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        """Leave a hidden element."""
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        """Keep visible text."""
        if not self._hidden:
            self.parts.append(data)


def _page_text(page: str) -> str:
    """The visible text of an HTML page, on one line (best effort)."""
    parser = _PageText()
    try:
        parser.feed(page)
        parser.close()
    except (AssertionError, ValueError):  # a page broken beyond HTMLParser's repair
        pass
    return " ".join(" ".join(parser.parts).split())


# -- TLS -------------------------------------------------------------------


def _ssl_for(server: ServerConfig) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """The ``ssl=`` argument for this server's requests, from its config alone.

    A pin wins over ``ca_file`` (aiohttp cannot check both: ``Fingerprint`` turns
    CA verification off and compares the leaf certificate's SHA-256).
    """
    if not server.verify_tls:
        return False
    if server.tls_fingerprint:
        return aiohttp.Fingerprint(bytes.fromhex(server.tls_fingerprint))
    if server.ca_file is not None:
        path = os.fspath(server.ca_file)
        stat = os.stat(path)
        return _ca_file_context(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    return _system_context()


# Contexts are shared between clients (a fleet often has one ca_file): each holds
# its trust store in memory. The key includes mtime and size so an edited file
# read by a reloaded daemon is read again.
@lru_cache(maxsize=32)
def _ca_file_context(path: str, _mtime_ns: int, _size: int) -> ssl.SSLContext:
    # create_default_context(cafile=...) loads only this file: SSL_CERT_FILE and
    # SSL_CERT_DIR are not consulted.
    context = ssl.create_default_context(cafile=path)
    context.set_alpn_protocols(("http/1.1",))
    return context


@lru_cache(maxsize=1)
def _system_context() -> ssl.SSLContext:
    # OpenSSL's compiled-in locations, not set_default_verify_paths(), which
    # would let SSL_CERT_FILE / SSL_CERT_DIR swap the trust anchors.
    paths = ssl.get_default_verify_paths()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if cafile or capath:
        context.load_verify_locations(cafile=cafile, capath=capath)
    context.set_alpn_protocols(("http/1.1",))
    return context
