"""What every sink shares: the ``Sink`` and ``Clock`` seams, one HTTP POST, its classification.

A sink delivers one event and either returns or raises
:class:`~watcher.errors.DeliveryError`, saying whether a retry may help
(``permanent``) and how long the receiver asked us to wait (``retry_after``). The
dispatcher owns retries; a sink never retries by itself.

HTTP classification, shared by the webhook and Slack sinks (see :func:`classify`):

======================================  =========  =============================
response                                 outcome    why
======================================  =========  =============================
2xx                                      delivered
3xx                                      permanent  redirects are never followed
                                                    (they could carry the signed
                                                    body elsewhere): fix the URL
408, 409, 425                            transient  timeout / conflict / too early
                                                    are about this moment, not the
                                                    request
429                                      transient  ``Retry-After`` honoured
400, 401, 403, 404, 410, other 4xx       permanent  the request or the URL is wrong
503                                      transient  ``Retry-After`` honoured
other 5xx (and anything >= 500)          transient
connect error, reset, timeout            transient
invalid URL                              permanent
======================================  =========  =============================
"""

from __future__ import annotations

import contextlib
import email.utils
import math
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Final, Protocol, runtime_checkable

import aiohttp
import anyio

from watcher.clock import Clock
from watcher.errors import DeliveryError
from watcher.events import Event

#: At most this much of a receiver's answer is read (and then discarded).
MAX_BODY_BYTES: Final = 4096

#: 4xx statuses that describe the moment rather than the request: retried.
TRANSIENT_4XX: Final = frozenset({408, 409, 425, 429})

#: Statuses whose ``Retry-After`` header is honoured.
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


class Sink(Protocol):
    """Somewhere events go: a webhook, a Slack channel, the log."""

    @property
    def name(self) -> str:
        """The sink's configured name (used in logs, errors and the outbox)."""
        ...

    async def deliver(self, event: Event) -> None:
        """Deliver one event, or raise :class:`~watcher.errors.DeliveryError`."""
        ...


@runtime_checkable
class ClosableSink(Sink, Protocol):
    """A sink that holds a connection of its own (syslog) and must close it."""

    async def aclose(self) -> None:
        """Close what the sink holds open; delivering again reopens it."""
        ...


async def close_sinks(sinks: Iterable[Sink]) -> None:
    """Close every sink that holds a connection (after a reload, at shutdown)."""
    for sink in sinks:
        if isinstance(sink, ClosableSink):
            await sink.aclose()


class Pacer:
    """At most one send per ``interval`` seconds (Slack's and Teams' rate limits).

    Every send counts, answered or not: the receiver counts the attempt.
    """

    def __init__(self, interval: float, clock: Clock) -> None:
        self._interval = interval
        self._clock = clock
        self._next = -math.inf
        self._lock = anyio.Lock()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait until a send is allowed and hold the turn while it is made."""
        async with self._lock:
            wait = self._next - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
            self._next = self._clock.monotonic() + self._interval
            yield


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for, or None if absent or bad.

    Args:
        value: The header: delay-seconds (``"120"``) or an HTTP date.
        now: The current time, to turn a date into seconds from now.

    Returns:
        Non-negative seconds (a date in the past gives 0.0), or None.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        at = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:  # RFC 9110 dates are GMT; parsedate gives naive for -0000
        at = at.replace(tzinfo=UTC)
    return max(0.0, (at - now).total_seconds())


def classify(
    sink: str,
    status: int,
    headers: Mapping[str, str],
    now: datetime,
    *,
    detail: str = "",
) -> DeliveryError | None:
    """Turn an HTTP status into None (delivered) or the error to raise.

    Args:
        sink: The sink's name (for the error message).
        status: The response status.
        headers: The response headers (for ``Retry-After``).
        now: The current time (an HTTP-date ``Retry-After``).
        detail: Extra words for the message (e.g. Slack's error code); no secrets.
    """
    if 200 <= status < 300:
        return None
    what = f"HTTP {status}" + (f" {detail}" if detail else "")
    retry_after = (
        parse_retry_after(headers.get("Retry-After"), now)
        if status in RETRY_AFTER_STATUSES
        else None
    )
    if 300 <= status < 400:
        return DeliveryError(
            sink,
            f"{what}: redirect not followed, configure the final URL",
            permanent=True,
        )
    if status in TRANSIENT_4XX or status >= 500:
        return DeliveryError(sink, what, retry_after=retry_after)
    return DeliveryError(sink, what, permanent=True)


def describe_client_error(exc: BaseException) -> str:
    """Name a transport failure without its message (which may hold the URL).

    The operating system's reason is kept (``Connection refused``, ``Connection
    reset by peer``); a response aiohttp could not parse is said to be malformed,
    without quoting it (a hostile receiver could echo the URL's token back).
    """
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{name} (malformed HTTP response)"
    os_error = getattr(exc, "os_error", None)
    if not isinstance(os_error, OSError) and isinstance(exc, OSError):
        os_error = exc
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"{name} ({os_error.strerror})"
    return name


async def post(
    sink: str,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    seconds: float,
) -> tuple[int, Mapping[str, str], bytes]:
    """POST ``body`` once, never following redirects; return status, headers, body head.

    ``seconds`` bounds the whole request (``aiohttp.ClientTimeout(total=...)``).
    At most :data:`MAX_BODY_BYTES` of the answer are read. Transport failures are
    translated here, once, into :class:`~watcher.errors.DeliveryError` naming only
    the sink.

    Raises:
        DeliveryError: Connect, reset or timeout (transient); an invalid URL
            (permanent).
    """
    try:
        async with session.post(
            url,
            data=body,
            headers=dict(headers),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            head = await response.content.read(MAX_BODY_BYTES)
            return response.status, response.headers, head
    except aiohttp.InvalidURL as exc:
        # Not transient, and its message is the URL itself: say neither.
        raise DeliveryError(sink, "invalid URL", permanent=True) from exc
    except TimeoutError as exc:
        raise DeliveryError(sink, f"no answer within {seconds:g} s") from exc
    except aiohttp.ClientError as exc:
        raise DeliveryError(sink, describe_client_error(exc)) from exc
