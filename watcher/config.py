"""Configuration's pure core: the frozen types every other module reads.

:class:`Config` and its parts (the contract's keys, design.md), :class:`Secret`,
the typed :class:`Listen` and the one :func:`is_loopback`. Reading a file into
them (TOML, environment, credential files, certificate checks) is
:mod:`watcher.configfile`'s job: this module does no I/O and imports nothing that
does, so the tracker and the other pure modules load neither ``ssl`` nor ``tomllib``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, NamedTuple

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
    #: ``webhook``, ``slack``, ``log``, ``pagerduty``, ``teams``, ``email`` or ``syslog``.
    type: str
    url: Secret | None = None
    #: Standard Webhooks signing secrets (``whsec_...``); several for rotation.
    secrets: tuple[Secret, ...] = ()
    #: Globs on the event type; empty means every event (Slack has its own default).
    events: tuple[str, ...] = ()
    #: Globs on the server name; empty means every server.
    servers: tuple[str, ...] = ()
    #: Extra HTTP headers; values may be credentials, so ``repr`` leaves them out.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 10.0
    #: A transient failure older than this is dead-lettered.
    max_age: float = 86400.0
    #: Minimum seconds between two messages (Slack's ~1 message/s per webhook).
    min_interval: float = 0.0
    allow_insecure_http: bool = False
    # -- pagerduty ---------------------------------------------------------------
    #: PagerDuty Events API v2 integration (routing) key.
    routing_key: Secret | None = None
    # -- email and syslog: a host and port instead of a URL ---------------------------
    #: SMTP server or syslog relay.
    host: str | None = None
    #: Its port; None means the protocol's default (587 / 465 / 25, 6514 / 514).
    port: int | None = None
    #: email: ``starttls`` (default), ``tls`` (implicit TLS) or ``none``;
    #: syslog: ``tls`` (RFC 5425, default), ``tcp`` or ``udp``.
    transport: str | None = None
    #: CA bundle for verifying the SMTP server or syslog relay; system CAs when None.
    ca_file: Path | None = None
    #: TLS verification for SMTP / syslog; on unless explicitly turned off.
    verify_tls: bool = True
    # -- email -------------------------------------------------------------------
    username: str | None = None
    password: Secret | None = None
    #: The ``From:`` address (TOML key ``from``).
    sender: str | None = None
    #: ``To:`` addresses.
    recipients: tuple[str, ...] = ()
    # -- syslog ------------------------------------------------------------------
    #: RFC 5424 facility name (``local0`` .. ``local7``, ``auth``, ``daemon``, ...).
    facility: str = "local0"
    #: RFC 5424 APP-NAME.
    app_name: str = "sklm-watcher"

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
    "sklm.server.recovered",
    "sklm.server.restarted",
    "sklm.auth.failed",
    "sklm.auth.recovered",
    "sklm.watcher.test",
)


@dataclass(frozen=True, slots=True)
class WatcherSettings:
    """The ``[watcher]`` table: process-wide settings."""

    state_dir: Path = Path("/var/lib/sklm-watcher")
    audit_log: Path = Path("/var/log/sklm-watcher/events.jsonl")
    #: Where /healthz, /metrics and /status listen (``host:port`` in the file);
    #: None to not listen.
    listen: Listen | None = None
    #: Seconds to let deliveries in flight finish on shutdown.
    drain_timeout: float = 5.0
    #: Fraction of an interval by which polls are randomly spread (0 = none).
    jitter: float = 0.1
    #: Seconds a delivered or suppressed outbox row is kept (0 = forever). The
    #: events themselves are the history and are never pruned.
    outbox_retention: float = 7 * 86400.0
    #: A bearer token every path of ``listen`` but ``/healthz`` then requires
    #: (``listen_token`` / ``_env`` / ``_file``).
    listen_token: Secret | None = None
    #: With ``listen_password``: HTTP Basic, what a browser asks for.
    listen_username: str | None = None
    listen_password: Secret | None = None
    #: The cluster store (``postgresql://...``, a secret: it may carry a password);
    #: None keeps the embedded SQLite store in ``state_dir`` (issue 13).
    store_url: Secret | None = None
    #: This node's name in the cluster (default: the host name).
    node_name: str = ""
    #: Seconds a server's lease lasts without renewal (cluster only; from 1).
    lease: float = 15.0

    @property
    def listen_auth(self) -> bool:
        """Whether ``listen`` requires credentials (a token, or Basic)."""
        basic = bool(self.listen_username) and bool(self.listen_password)
        return bool(self.listen_token) or basic

    @property
    def is_cluster(self) -> bool:
        """Whether this node shares a PostgreSQL store with others (``store_url``)."""
        return self.store_url is not None


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

    def summary(self) -> str:
        """One line for ``check-config``, e.g. ``2 servers, 1 sink (slack); state in ...``."""
        servers = _count(len(self.servers), "server")
        if self.sinks:
            types = ", ".join(dict.fromkeys(sink.type for sink in self.sinks))
            sinks = f"{_count(len(self.sinks), 'sink')} ({types})"
        else:
            sinks = "no sinks"
        settings = self.watcher
        if settings.is_cluster:
            return (
                f"{servers}, {sinks}; state in the cluster store (node "
                f"{settings.node_name or 'named after the host'}, lease "
                f"{settings.lease:g} s)"
            )
        return f"{servers}, {sinks}; state in {settings.state_dir}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


#: Sink types :func:`~watcher.configfile.load_config` accepts.
SINK_TYPES: Final = (
    "webhook",
    "slack",
    "log",
    "pagerduty",
    "teams",
    "email",
    "syslog",
)

#: A Slack incoming webhook takes about one message per second.
SLACK_MIN_INTERVAL: Final = 1.0

#: Teams Workflows webhooks throttle bursts (Microsoft documents ~4 requests/s for
#: channel webhooks and Power Automate flows queue beyond that): one a second.
TEAMS_MIN_INTERVAL: Final = 1.0

#: What a PagerDuty sink receives when its ``events`` is not set: every event that
#: opens an alert (trigger) or closes one (resolve), and test events.
PAGERDUTY_DEFAULT_EVENTS: Final = (
    "sklm.restore.completed",
    "sklm.restore.failed",
    "sklm.restore.stalled",
    "sklm.server.unreachable",
    "sklm.server.recovered",
    "sklm.server.restarted",
    "sklm.auth.failed",
    "sklm.auth.recovered",
    "sklm.watcher.test",
)

#: RFC 5424 facility names; a name's index is its numeric code (local0 = 16).
SYSLOG_FACILITIES: Final = (
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    *(f"local{i}" for i in range(8)),
)

#: ``transport`` values per sink type; the first is the default.
SINK_TRANSPORTS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {"email": ("starttls", "tls", "none"), "syslog": ("tls", "tcp", "udp")}
)

#: Standard Webhooks signing secrets carry this prefix before the base64 key.
SIGNING_SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret

#: Shortest signing key accepted (Standard Webhooks recommends 24 to 64 bytes).
MIN_SIGNING_KEY_BYTES: Final = 16


#: Why a ``[watcher] listen`` value is not an address (the message check-config shows).
LISTEN_FORMAT: Final = "expected host:port, e.g. 127.0.0.1:9109 or [::1]:9109"


class Listen(NamedTuple):
    """Where the status endpoint listens: ``[watcher] listen``, parsed once.

    A named tuple, so ``host, port = listen`` unpacks it for binding; ``str()``
    gives ``host:port`` back (``[v6]:port`` for IPv6).
    """

    host: str
    #: 0 asks the system for a free port.
    port: int

    @property
    def is_loopback(self) -> bool:
        """Whether only this machine can connect (see :func:`is_loopback`)."""
        return is_loopback(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """Parse ``host:port`` (``[v6]:port`` for IPv6); surrounding space is ignored.

    Raises:
        ValueError: ``text`` is not ``host:port`` with a port from 0 to 65535.
    """
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # isascii: isdigit() alone takes "²" (int() then fails) and "٣" (int() reads 3).
    valid_port = port.isascii() and port.isdigit() and int(port) <= 65535
    if not sep or not host or "[" in host or "]" in host or not valid_port:
        raise ValueError(f"{LISTEN_FORMAT}, not {text!r}")
    return Listen(host, int(port))


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine, so traffic to it never leaves it.

    Loopback addresses (``127.0.0.0/8``, ``::1``) and ``localhost`` with every
    name under it: RFC 6761 (section 6.3) reserves ``*.localhost`` for loopback.
    Names compare case-insensitively, with or without the root's trailing dot.
    """
    name = host.lower().removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
