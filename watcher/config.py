"""Configuration: a TOML file loaded into frozen, validated dataclasses.

This module holds the data types (the contract's keys, design.md) and
:func:`load_config`, which collects *every* problem before raising one
:class:`~watcher.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from watcher.events import matches_any

#: The SKLM REST base path; GKLM 5.x may use ``/GKLM/rest/v1`` (set ``api_base``).
DEFAULT_API_BASE: Final = "/SKLM/rest/v1"


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret value (password, session id, webhook URL, signing secret).

    ``repr`` and ``str`` never show the value; call :meth:`reveal` where it is used.
    """

    _value: str = field(repr=False)

    def reveal(self) -> str:
        """Return the secret value; only at the point of use, never for logging."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One SKLM server to watch, with ``[defaults]`` already merged in.

    Durations are seconds (float). ``url`` is scheme, host and port only.
    """

    name: str
    url: str
    username: str = "SKLMAdmin"
    password: Secret = field(default_factory=lambda: Secret(""))
    #: Trust anchor for this server's self-signed chain (PEM).
    ca_file: Path | None = None
    #: Certificate pin, normalised to lowercase hex without colons (64 chars).
    tls_fingerprint: str | None = None
    verify_tls: bool = True
    allow_insecure_http: bool = False
    #: REST base path; the progress path is discovered under it.
    api_base: str = DEFAULT_API_BASE
    #: An explicit progress path (absolute, e.g. ``/SKLM/rest/v1/ckms/restore/progress``)
    #: overriding discovery.
    progress_path: str | None = None
    idle_interval: float = 30.0
    active_interval: float = 1.0
    #: Poll interval for ``burst_polls`` polls right after any transition.
    burst_interval: float = 0.25
    burst_polls: int = 4
    #: Poll interval while the server restarts after COMPLETED.
    restart_interval: float = 2.0
    #: Cap of the exponential backoff on errors.
    max_backoff: float = 60.0
    timeout: float = 10.0
    stall_after: float = 1800.0
    restart_timeout: float = 900.0
    #: Continuous failure for this long (outside an expected restart) is an outage.
    unreachable_after: float = 30.0
    #: After rejected credentials, wait this long before the next login attempt.
    auth_retry_interval: float = 300.0


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """One notification sink: where events go and which of them."""

    name: str
    #: ``webhook``, ``slack`` or ``log``.
    type: str
    url: Secret | None = None
    #: Standard Webhooks signing secrets (``whsec_...``); several for rotation.
    secrets: tuple[Secret, ...] = ()
    #: Globs on the event type; empty means every event (Slack has its own default).
    events: tuple[str, ...] = ()
    #: Globs on the server name; empty means every server.
    servers: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    #: A transient failure older than this is dead-lettered.
    max_age: float = 86400.0
    #: Minimum seconds between two messages (Slack's ~1 message/s per webhook).
    min_interval: float = 0.0
    allow_insecure_http: bool = False

    def wants(self, event_type: str, server: str) -> bool:
        """Whether this sink should receive an event of this type about this server."""
        if self.events and not matches_any(self.events, event_type):
            return False
        return not self.servers or matches_any(self.servers, server)


#: What a Slack sink receives when its ``events`` is not set: what a person acts on.
SLACK_DEFAULT_EVENTS: Final = (
    "sklm.restore.started",
    "sklm.restore.completed",
    "sklm.restore.failed",
    "sklm.restore.stalled",
    "sklm.server.unreachable",
    "sklm.server.restarted",
    "sklm.auth.failed",
    "sklm.watcher.test",
)


@dataclass(frozen=True, slots=True)
class WatcherSettings:
    """The ``[watcher]`` table: process-wide settings."""

    state_dir: Path = Path("/var/lib/sklm-watcher")
    audit_log: Path = Path("/var/log/sklm-watcher/events.jsonl")
    #: ``host:port`` for /healthz, /metrics, /status; None to not listen.
    listen: str | None = None
    #: Seconds to let deliveries in flight finish on shutdown.
    drain_timeout: float = 5.0
    #: Fraction of an interval by which polls are randomly spread (0 = none).
    jitter: float = 0.1


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated configuration."""

    watcher: WatcherSettings
    servers: tuple[ServerConfig, ...]
    sinks: tuple[SinkConfig, ...] = ()
    #: Where it was read from (for messages and reload); None when built in code.
    source: Path | None = None
    #: Non-fatal findings to log at start-up (``verify_tls = false``, http:// sinks).
    warnings: tuple[str, ...] = ()


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the TOML file at ``path``.

    Args:
        path: The configuration file.
        environ: Environment for ``*_env`` keys and ``CREDENTIALS_DIRECTORY``;
            ``os.environ`` when None.

    Raises:
        ConfigError: With every problem found, each with its key path and reason.
    """
    raise NotImplementedError
