"""The one error hierarchy of sklm-watcher.

Every error the package raises on purpose is a ``WatcherError``; foreign exceptions
(aiohttp, ssl, sqlite3, OSError) are translated once, at the boundary that meets them
(``client``, ``sinks``, ``journal``), with ``raise ... from exc``::

    WatcherError
    ├── ConfigError(problems)            the configuration file is unusable; exit 2
    ├── SklmError(server)                one SKLM server, one request
    │   ├── SklmUnreachable              connect, DNS, reset, timeout: transient
    │   ├── SklmTlsError                 verification or pin mismatch: loud, not transient
    │   ├── SklmAuthError                credentials rejected at login: a configuration problem
    │   └── SklmProtocolError            unexpected status, malformed or oversized body
    ├── JournalError                     the state database or the audit log failed
    │   ├── LeaseLost(server)            a cluster node no longer owns the server (fenced)
    │   └── NodeNameInUse(node)          another live process heartbeats under this node_name
    ├── DeliveryError(sink)              one sink, one delivery attempt
    └── SimulatorError                   the built-in SKLM simulator (tests, demo)
        ├── ScenarioError(problems)      a scenario file is unusable; also ValueError
        ├── RestoreRunning               SKLM runs one restore at a time; also RuntimeError
        └── TlsUnavailableError          trustme is not installed; also RuntimeError

One vocabulary for "try again?": ``WatcherError.transient`` is True when retrying,
with nothing changed, may succeed (``DeliveryError(permanent=True)`` sets it False).
Each ``SklmError`` class also names its :class:`Failure` kind, the one mapping from a
failed poll's error to the tracker's ``Observation.failure``.

Messages are built here from structured fields and end with what to do. They never
contain a secret, a URL query or a header value: callers pass names, not values.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final

#: The longest ``SklmError.detail``: a reason in words for a log line, a status
#: column or an event field, not a transcript of what the server sent.
MAX_DETAIL_CHARS: Final = 200
#: The longest ``SklmError.hint`` (it may name paths and a fingerprint).
MAX_HINT_CHARS: Final = 400


def one_line(text: str, limit: int) -> str:
    """Return ``text`` as one clean line of at most ``limit`` characters.

    Control and format characters (newlines, escapes, NULs, bidi overrides) become
    spaces, runs of white space one space, and a longer text is cut, ending in
    ``...``. Text quoted from a server goes to terminals and chat messages: it
    must not be able to forge a second log line or recolour one.
    """
    # Longer inputs are cut first: the scan below is per character.
    text = text[: limit * 4 + 16]
    kept = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)
    line = " ".join(kept.split())
    if len(line) > limit:
        return line[: max(limit - 3, 0)].rstrip() + "..."
    return line


class Failure(StrEnum):
    """Why a poll produced no phase: the kind each ``SklmError`` class names.

    The values are persisted (``ServerState.last_failure``) and shown in status.
    """

    UNREACHABLE = "unreachable"  # connect / reset / timeout
    PROTOCOL = "protocol"  # answered, but not as SKLM should (incl. 5xx while starting)
    TLS = "tls"
    AUTH = "auth"  # credentials rejected at login


class WatcherError(Exception):
    """Root of every error sklm-watcher raises on purpose."""

    #: Whether trying the same thing again, with nothing changed, may succeed.
    transient: bool = False


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a configuration file: where it is and why it is wrong.

    Args:
        key: The key path, e.g. ``servers[2].url`` or ``watcher.state_dir``; ``""``
            for the file as a whole (unreadable file, TOML syntax error).
        reason: What is wrong and, where it helps, what to write instead.
    """

    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}" if self.key else self.reason


class ConfigError(WatcherError):
    """The configuration is unusable; ``problems`` names every problem found at once."""

    def __init__(self, problems: list[ConfigProblem], *, source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{count} configuration {noun}{where}:\n{lines}")


class SklmError(WatcherError):
    """A request to one SKLM server failed; ``server`` is its configured name.

    ``detail`` is the reason in words (``connection refused``, ``HTTP 500
    CTGKM0001E Internal server error. See the server log.``), without the server's
    name: logs, status and events show it beside the name. It is one line of at
    most :data:`MAX_DETAIL_CHARS` characters, whatever the caller passed; the
    caller scrubs secrets before (a cut could leave part of one behind).
    """

    transient = True
    #: What the tracker records for a poll that raised this error.
    failure_kind: ClassVar[Failure] = Failure.PROTOCOL

    def __init__(self, server: str, detail: str, *, hint: str = "") -> None:
        self.server = server
        detail = one_line(detail, MAX_DETAIL_CHARS)
        hint = one_line(hint, MAX_HINT_CHARS)
        self.detail = detail
        self.hint = hint
        message = f"{server}: {detail}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class SklmUnreachable(SklmError):
    """The server did not answer: connection refused or reset, DNS, or a timeout."""

    failure_kind = Failure.UNREACHABLE

    def __init__(self, server: str, detail: str, *, hint: str = "") -> None:
        super().__init__(
            server,
            detail,
            hint=hint or "check that the server is up and reachable from this host",
        )


class SklmTlsError(SklmError):
    """TLS failed: certificate not trusted, wrong host name, or pin mismatch."""

    transient = False
    failure_kind = Failure.TLS

    def __init__(self, server: str, detail: str, *, hint: str = "") -> None:
        super().__init__(
            server,
            detail,
            hint=hint
            or f"check ca_file or tls_fingerprint for {server} "
            "(the server's certificate may have changed)",
        )


class SklmAuthError(SklmError):
    """The server rejected the configured credentials at login (CTGKM6003E)."""

    transient = False
    failure_kind = Failure.AUTH

    def __init__(self, server: str, detail: str, *, hint: str = "") -> None:
        super().__init__(
            server,
            detail,
            hint=hint
            or f"check username and password_env / password_file for {server}",
        )


class SklmProtocolError(SklmError):
    """The server answered, but not as SKLM should: status, body or size unexpected."""

    failure_kind = Failure.PROTOCOL

    def __init__(self, server: str, detail: str, *, hint: str = "") -> None:
        super().__init__(
            server,
            detail,
            hint=hint
            or "the server may be starting up; if it persists, check the URL and "
            "progress_path",
        )


class JournalError(WatcherError):
    """The state database or the audit log could not be read or written."""

    def __init__(self, detail: str, *, hint: str = "") -> None:
        self.detail = detail
        self.hint = (
            hint or "check free space and permissions of state_dir and audit_log"
        )
        super().__init__(f"{detail}; {self.hint}")


class LeaseLost(JournalError):
    """A fenced write was refused: another cluster node owns the server now.

    Not transient: the write must never be retried by this node. The node stops
    polling the server and drops what it held for it (the new owner re-derives
    from the shared state; event ids are deterministic, so nothing is lost).

    Args:
        server: The server whose lease was lost.
        detail: Who holds it now, or why it is gone (never a URL).
    """

    transient = False

    def __init__(self, server: str, detail: str) -> None:
        self.server = server
        super().__init__(
            f"{server}: lease lost: {detail}",
            hint="another node polls this server now; nothing to do",
        )


class NodeNameInUse(JournalError):
    """Another live process heartbeats under this node's ``node_name``.

    Two processes with one name would take each other's leases back and forth, so
    the second one takes nothing until the name is free (the first stops, or its
    heartbeat is older than one lease: it crashed).

    Args:
        node: The name both use.
        detail: Which process holds it (host, pid, how long ago it heartbeat).
    """

    transient = False

    def __init__(self, node: str, detail: str) -> None:
        self.node = node
        super().__init__(
            f"node_name {node!r} is in use by another live node: {detail}",
            hint="give every node its own [watcher] node_name; a crashed process "
            "frees its name one lease after its last heartbeat",
        )


class DeliveryError(WatcherError):
    """One delivery attempt to one sink failed.

    Args:
        sink: The sink's configured name.
        detail: What happened (status code, error class); never the URL.
        retry_after: Seconds the receiver asked us to wait (429 / 503), if any.
        permanent: True when retrying cannot help (e.g. 410 Gone, a revoked URL);
            stored as ``transient = not permanent``.
    """

    transient = True

    def __init__(
        self,
        sink: str,
        detail: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        self.sink = sink
        self.detail = detail
        self.retry_after = retry_after
        self.transient = not permanent
        hint = (
            f"check the configuration of sink {sink}; the event is dead-lettered"
            if permanent
            else "will retry with backoff"
        )
        super().__init__(f"sink {sink}: {detail}; {hint}")

    @property
    def permanent(self) -> bool:
        """Whether retrying cannot help: the event is dead-lettered at once."""
        return not self.transient


class SimulatorError(WatcherError):
    """The built-in SKLM simulator cannot do what it was asked."""


class ScenarioError(SimulatorError, ValueError):
    """A scenario file or dict is unusable; ``problems`` lists every (key, reason).

    Also a ``ValueError``: a bad scenario is a bad value handed to the simulator.
    """

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(
            f"  {key}: {reason}" if key else f"  {reason}"
            for key, reason in self.problems
        )
        super().__init__(f"invalid scenario {source}:\n{lines}")


class RestoreRunning(SimulatorError, RuntimeError):
    """A restore was asked for while one runs (SKLM runs one at a time).

    Also a ``RuntimeError``, as it was before it joined the tree.
    """


class TlsUnavailableError(SimulatorError, RuntimeError):
    """trustme, which makes the simulator's throw-away CA, is not installed.

    It is in the ``simulator`` and ``dev`` extras only: a plain ``pip install`` lacks
    it. (A RuntimeError, as before, for callers that caught that.)
    """
