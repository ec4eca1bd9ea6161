"""Reading the configuration file into :mod:`watcher.config`'s frozen types.

:func:`load_config` parses the TOML, merges ``[defaults]``, resolves ``*_env`` and
``*_file`` (``$CREDENTIALS_DIRECTORY``) into :class:`~watcher.config.Secret`
values, checks CA files with ``ssl``, and collects *every* problem before raising
one :class:`~watcher.errors.ConfigError`; :func:`load_config_lenient` keeps what is
valid for the read-only commands. All of configuration's I/O lives here, so that
importing the types (as the tracker does) stays cheap and free of side effects.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import math
import os
import re
import socket
import ssl
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from watcher.config import (
    LISTEN_FORMAT,
    MIN_SIGNING_KEY_BYTES,
    PAGERDUTY_DEFAULT_EVENTS,
    SIGNING_SECRET_PREFIX,
    SINK_TRANSPORTS,
    SINK_TYPES,
    SLACK_DEFAULT_EVENTS,
    SLACK_MIN_INTERVAL,
    SYSLOG_FACILITIES,
    TEAMS_MIN_INTERVAL,
    Config,
    Listen,
    Secret,
    ServerConfig,
    SinkConfig,
    WatcherSettings,
    is_loopback,
    parse_listen,
)
from watcher.errors import ConfigError, ConfigProblem
from watcher.events import EventType, matches_any

_SINK_TYPE_LIST: Final = ", ".join(SINK_TYPES[:-1]) + f" or {SINK_TYPES[-1]}"

#: Credential files (passwords, URLs, secrets) larger than this are a mistake.
MAX_SECRET_FILE_BYTES: Final = 64 * 1024

_SECONDS_KEYS: Final = (
    "idle_interval",
    "active_interval",
    "burst_interval",
    "restart_interval",
    "max_backoff",
    "timeout",
    "stall_after",
    "restart_timeout",
    "unreachable_after",
    "auth_retry_interval",
)
_PASSWORD_KEYS: Final = ("password", "password_env", "password_file")
_URL_KEYS: Final = ("url", "url_env", "url_file")
_SIGNING_KEYS: Final = ("secret", "secret_env", "secret_file")
_ROUTING_KEY_KEYS: Final = ("routing_key", "routing_key_env", "routing_key_file")
#: How the inline-secret warning names each secret (the SMTP password otherwise).
_INLINE_SECRET_NAMES: Final = {
    "routing_key": "routing key",
    "listen_token": "listen token",
    "listen_password": "listen password",
    "store_url": "store URL",
}
_LISTEN_TOKEN_KEYS: Final = ("listen_token", "listen_token_env", "listen_token_file")
_LISTEN_PASSWORD_KEYS: Final = (
    "listen_password",
    "listen_password_env",
    "listen_password_file",
)
_LISTEN_AUTH_KEYS: Final = (
    *_LISTEN_TOKEN_KEYS,
    *_LISTEN_PASSWORD_KEYS,
    "listen_username",
)
#: The cluster store's URL (issue 13), a secret: it may carry the password.
_STORE_URL_KEYS: Final = ("store_url", "store_url_env", "store_url_file")
#: ``[watcher]`` keys resolved by :meth:`_Loader.cluster` rather than copied.
_CLUSTER_KEYS: Final = (*_STORE_URL_KEYS, "node_name", "lease")
#: URL schemes libpq (and psycopg) take for a PostgreSQL connection URI.
_STORE_URL_SCHEMES: Final = ("postgresql://", "postgres://")
#: Longest node name: it is shown in ``status`` and ``cluster`` and in logs, and a
#: DNS label (what a host name's first part is) has at most 63 characters.
MAX_NODE_NAME: Final = 63
#: Shortest ``lease``: renewal runs every min(lease / 3, 1 s), so a shorter lease
#: would leave no margin for one late renewal.
MIN_LEASE: Final = 1.0
#: Keys every sink type takes.
_SINK_COMMON_KEYS: Final = frozenset(
    {"name", "type", "events", "servers", "timeout", "max_age", "min_interval"}
)
_SINK_HTTP_KEYS: Final = (*_URL_KEYS, "headers", "allow_insecure_http")
_SINK_TLS_KEYS: Final = ("ca_file", "verify_tls")
_SINK_HOST_KEYS: Final = ("host", "port", "transport", *_SINK_TLS_KEYS)
_SINK_SMTP_KEYS: Final = ("username", *_PASSWORD_KEYS, "from", "to")
_SINK_SYSLOG_KEYS: Final = ("facility", "app_name")
#: The keys each sink type takes beyond the common ones; others are refused.
_SINK_TYPE_KEYS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "webhook": frozenset({*_SINK_HTTP_KEYS, *_SIGNING_KEYS}),
        "slack": frozenset(_SINK_HTTP_KEYS),
        "teams": frozenset(_SINK_HTTP_KEYS),
        "pagerduty": frozenset({*_SINK_HTTP_KEYS, *_ROUTING_KEY_KEYS}),
        "log": frozenset(),
        "email": frozenset({*_SINK_HOST_KEYS, *_SINK_SMTP_KEYS}),
        "syslog": frozenset({*_SINK_HOST_KEYS, *_SINK_SYSLOG_KEYS}),
    }
)
#: Sink types whose URL must be https:// unless ``allow_insecure_http``, and how
#: the refusal names them.
_HTTPS_SINKS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "slack": "a Slack webhook URL must use https://",
        "teams": "a Teams webhook URL must use https://",
        "pagerduty": "a PagerDuty URL must use https:// (the routing key is in "
        "the body)",
    }
)
#: Server keys copied as they are (after their type check) into ServerConfig.
_PLAIN_SERVER_KEYS: Final = (
    "username",
    "tls_fingerprint",
    "verify_tls",
    "allow_insecure_http",
    "api_base",
    "progress_path",
    *_SECONDS_KEYS,
    "burst_polls",
)
#: Headers the sinks set themselves; a configured value would break signing or HTTP.
_RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_API_PATH_RE: Final = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_WORD_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: An address as SMTP takes it (no display name, no list): local@domain.
_EMAIL_RE: Final = re.compile(r"[^\s@<>,;:\"()\[\]\\]+@[A-Za-z0-9.-]+")
#: RFC 5424 APP-NAME: 1 to 48 printable US-ASCII characters, no space.
_APP_NAME_RE: Final = re.compile(r"[!-~]{1,48}")
#: Broad patterns offered as suggestions for an ``events`` glob that matches nothing.
_EVENT_PATTERNS: Final = (
    *(str(t) for t in EventType),
    "sklm.restore.*",
    "sklm.server.*",
    "sklm.auth.*",
    "sklm.*",
)
#: Where a problem's table sorts in the report: the file's order of sections.
_SECTION_ORDER: Final = {"": 0, "watcher": 2, "defaults": 3, "servers": 4, "sinks": 5}
_SECTION_RE: Final = re.compile(r"(servers|sinks)(?:\[(\d+)\])?")


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the TOML file at ``path``.

    ``[defaults]`` is merged into each ``[[servers]]`` table (server keys win; a
    server that sets any password key, or any of ``ca_file`` / ``tls_fingerprint`` /
    ``verify_tls = false``, takes none of that group from ``[defaults]``). Relative
    ``password_file`` / ``url_file`` / ``secret_file`` paths resolve under
    ``$CREDENTIALS_DIRECTORY`` when it is set, else beside the configuration file;
    relative ``state_dir`` / ``audit_log`` / ``ca_file`` always beside the file.

    Args:
        path: The configuration file.
        environ: Environment for ``*_env`` keys and ``CREDENTIALS_DIRECTORY``;
            ``os.environ`` when None.

    Raises:
        ConfigError: With every problem found, each with its key path and reason;
            no reason or warning ever holds a password, URL or signing secret.
    """
    loader = _Loader(path, os.environ if environ is None else environ)
    config = loader.load()
    if config is None or loader.problems:
        problems = sorted(loader.problems, key=_section_rank)
        raise ConfigError(problems, source=str(path))
    return config


@dataclass(frozen=True, slots=True)
class PartialConfig:
    """What :func:`load_config_lenient` could build, and the problems it found."""

    #: ``[watcher]`` and every server and sink that is valid on its own.
    config: Config
    #: Every problem :func:`load_config` would raise, in its order (empty: valid).
    problems: tuple[ConfigProblem, ...] = ()


def load_config_lenient(
    path: Path, environ: Mapping[str, str] | None = None
) -> PartialConfig:
    """Load what can be loaded, for the read-only commands (``status``, ``events``...).

    A file half-way through an edit must not lock the operator out of the stored
    state while the daemon goes on with its last good configuration: these commands
    need only ``[watcher]`` (where the state is). Servers and sinks that are valid
    on their own are kept, the others left out; ``problems`` names all of them,
    exactly as :func:`load_config` would. When the file is not even valid TOML, its
    ``[watcher]`` section is read on its own.

    Raises:
        ConfigError: Not even ``[watcher]`` can be read (every problem named).
    """
    env = os.environ if environ is None else environ
    strict = _Loader(path, env)
    config = strict.load()
    problems = tuple(sorted(strict.problems, key=_section_rank))
    if config is not None and not problems:
        return PartialConfig(config)
    document = _lenient_document(path)
    partial = _Loader(path, env)
    settings = (
        None if document is None else partial.watcher(document.get("watcher", {}))
    )
    if document is None or settings is None:
        raise ConfigError(list(problems), source=str(path))
    defaults = partial.defaults(document.get("defaults", {}))
    servers: list[ServerConfig] = []
    seen: dict[str, str] = {}
    for index, table in _tables_of(document.get("servers")):
        server = partial.server(index, table, defaults, seen)
        if server is not None:
            servers.append(server)
    sinks: list[SinkConfig] = []
    seen_sinks: dict[str, str] = {}
    names = _server_names(document)
    for index, table in _tables_of(document.get("sinks")):
        sink = partial.sink(index, table, names, seen_sinks)
        if sink is not None:
            sinks.append(sink)
    built = Config(
        watcher=settings,
        servers=tuple(servers),
        sinks=tuple(sinks),
        source=path.absolute(),
        warnings=tuple(partial.warnings),
    )
    return PartialConfig(built, problems)


#: A table header line (``[watcher]``, ``[[servers]]``), for reading one section alone.
_HEADER_LINE_RE: Final = re.compile(r"\s*\[")
_WATCHER_HEADER_RE: Final = re.compile(r"\s*\[\s*watcher\s*\]\s*(?:#.*)?")


def _lenient_document(path: Path) -> dict[str, Any] | None:
    """The parsed file; if it is not TOML, just its ``[watcher]`` section; or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        pass
    section: list[str] = []
    inside = False
    for line in text.splitlines():
        if _WATCHER_HEADER_RE.fullmatch(line):
            inside = True
        elif inside and _HEADER_LINE_RE.match(line):
            break
        if inside:
            section.append(line)
    try:
        return tomllib.loads("\n".join(section))
    except tomllib.TOMLDecodeError:
        return None


def _tables_of(raw: object) -> list[tuple[int, dict[str, Any]]]:
    """The tables of an array of tables with their indices (anything else: none)."""
    if not isinstance(raw, list):
        return []
    return [(i, t) for i, t in enumerate(raw) if isinstance(t, dict)]


def _section_rank(problem: ConfigProblem) -> tuple[int, int]:
    """Sort key grouping problems by table in file order, stable within a table."""
    head = problem.key.split(".", 1)[0]
    match = _SECTION_RE.fullmatch(head)
    if match:
        return _SECTION_ORDER[match[1]], int(match[2]) if match[2] else -1
    return _SECTION_ORDER.get(head, 1), 0


class _Bad:
    """A value whose problem has already been recorded."""

    def __repr__(self) -> str:
        return "<bad>"


_BAD: Final = _Bad()

#: Parsed keys of one table: key -> (key path where it was written, value or _BAD).
_Entries = dict[str, tuple[str, Any]]
_Check = Callable[["_Loader", str, object], object]


def _type_name(raw: object) -> str:
    """The TOML name of a parsed value's type, for "got ..." in reasons."""
    if isinstance(raw, bool):
        return "boolean"
    if isinstance(raw, datetime):
        return "datetime"
    names: tuple[tuple[type, str], ...] = (
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (date, "date"),
        (time, "time"),
    )
    for kind, name in names:
        if isinstance(raw, kind):
            return name
    return type(raw).__name__


def _unknown(key: str, valid: Iterable[str]) -> str:
    """Reason for an unknown key, with the closest valid key when there is one."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{hint}"


def _strip_newline(text: str) -> str:
    """Drop one trailing newline (``\\n`` or ``\\r\\n``), as editors and echo add."""
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _split_url(raw: str) -> SplitResult | str:
    """Split an http(s) URL, or return why it is unusable (never echoing it)."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in raw):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(raw)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must start with https:// (or http://)"
    if "@" in parts.netloc:
        return "must not contain a user name or password before the host"
    if not parts.hostname:
        return "has no host name"
    try:
        port = parts.port
    except ValueError:
        return "has an invalid port (expected 1 to 65535)"
    if port == 0:
        return "has an invalid port (expected 1 to 65535)"
    return parts


class _Loader:
    """One load: the problems and warnings found so far and what is resolved."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.source = path
        self.base_dir = path.absolute().parent
        credentials = environ.get("CREDENTIALS_DIRECTORY")
        self.credentials_dir = Path(credentials) if credentials else None
        self.environ = environ
        self.problems: list[ConfigProblem] = []
        self.warnings: list[str] = []
        # Values inherited from [defaults] are resolved (and reported) once.
        self._resolved: dict[str, Any] = {}

    def problem(self, key: str, reason: str) -> _Bad:
        """Record a problem and return the marker for the bad value."""
        self.problems.append(ConfigProblem(key, reason))
        return _BAD

    # -- the file ----------------------------------------------------------------

    def load(self) -> Config | None:
        """Parse the whole file; None when it cannot even be parsed."""
        try:
            with self.source.open("rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            self.problem("", f"cannot read {self.source}: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError:
            self.problem("", "not valid TOML: the file is not UTF-8 text")
            return None
        except tomllib.TOMLDecodeError as exc:
            self.problem("", f"not valid TOML: {exc}")
            return None

        for key in document:
            if key not in _SECTION_ORDER or not key:
                self.problem(
                    key, _unknown(key, ("watcher", "defaults", "servers", "sinks"))
                )
        settings = self.watcher(document.get("watcher", {}))
        defaults = self.defaults(document.get("defaults", {}))
        servers = self.servers(document.get("servers"), defaults)
        sinks = self.sinks(document.get("sinks", []), _server_names(document))
        if not self.problems and not sinks:
            where = (
                "the cluster store's audit chain"
                if settings is not None and settings.is_cluster
                else "the audit log"
            )
            self.warnings.append(
                f"no [[sinks]]: events go only to {where}; add a webhook or "
                "slack sink to be told about restores"
            )
        if settings is None or servers is None or sinks is None:
            return None
        return Config(
            watcher=settings,
            servers=tuple(servers),
            sinks=tuple(sinks),
            source=self.source.absolute(),
            warnings=tuple(self.warnings),
        )

    def table(self, key: str, raw: object) -> dict[str, Any] | None:
        """A TOML table, or None after recording that it is not one."""
        if isinstance(raw, dict):
            return raw
        self.problem(key, f"expected a table, got {_type_name(raw)}")
        return None

    def tables(self, key: str, raw: object) -> list[tuple[int, dict[str, Any]]] | None:
        """An array of tables (``[[key]]``) with indices, skipping non-tables."""
        if not isinstance(raw, list):
            self.problem(
                key, f"expected an array of tables ([[{key}]]), got {_type_name(raw)}"
            )
            return None
        out: list[tuple[int, dict[str, Any]]] = []
        for index, item in enumerate(raw):
            table = self.table(f"{key}[{index}]", item)
            if table is not None:
                out.append((index, table))
        return out

    def fields(
        self,
        prefix: str,
        table: Mapping[str, object],
        checks: Mapping[str, _Check],
        refused: Mapping[str, str] | None = None,
    ) -> _Entries:
        """Type-check every key of a table (file order); unknown keys are problems."""
        entries: _Entries = {}
        for key, raw in table.items():
            path = f"{prefix}.{key}"
            check = checks.get(key)
            if refused and key in refused:
                self.problem(path, refused[key])
            elif check is None:
                self.problem(path, _unknown(key, checks))
            else:
                entries[key] = (path, check(self, path, raw))
        return entries

    # -- scalar checks (each returns the parsed value or _BAD) ---------------------

    def text(self, key: str, raw: object) -> object:
        """A non-empty string."""
        if not isinstance(raw, str):
            return self.problem(key, f"expected a string, got {_type_name(raw)}")
        if not raw.strip():
            return self.problem(key, "must not be empty")
        return raw

    def name(self, key: str, raw: object) -> object:
        """A server or sink name: it appears in events, logs and globs."""
        value = self.text(key, raw)
        if isinstance(value, str) and not _NAME_RE.fullmatch(value):
            return self.problem(
                key,
                "must start with a letter or digit and hold only letters, digits, "
                "'.', '_' and '-' (at most 64 characters)",
            )
        return value

    def seconds(self, key: str, raw: object, *, allow_zero: bool = False) -> object:
        """A finite duration in seconds: positive, or also 0 when ``allow_zero``."""
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return self.problem(
                key, f"expected a number of seconds, got {_type_name(raw)}"
            )
        try:
            value = float(raw)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            return self.problem(key, "must be a finite number of seconds")
        if value < 0 or (value == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "more than 0"
            return self.problem(key, f"must be {bound} seconds, got {raw}")
        return value

    def seconds_or_zero(self, key: str, raw: object) -> object:
        """A finite duration in seconds, 0 allowed."""
        return self.seconds(key, raw, allow_zero=True)

    def count(self, key: str, raw: object) -> object:
        """A whole number, 0 or more."""
        if isinstance(raw, bool) or not isinstance(raw, int):
            return self.problem(key, f"expected a whole number, got {_type_name(raw)}")
        if raw < 0:
            return self.problem(key, f"must be 0 or more, got {raw}")
        return raw

    def fraction(self, key: str, raw: object) -> object:
        """A number in [0, 1)."""
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return self.problem(
                key, f"expected a fraction such as 0.1, got {_type_name(raw)}"
            )
        if not 0 <= raw < 1:
            return self.problem(key, f"must be at least 0 and less than 1, got {raw}")
        return float(raw)

    def node_name(self, key: str, raw: object) -> object:
        """This node's name in the cluster: operators read it in ``status``."""
        value = self.text(key, raw)
        if isinstance(value, str):
            reason = _node_name_problem(value)
            if reason is not None:
                return self.problem(key, reason)
        return value

    def lease(self, key: str, raw: object) -> object:
        """A server lease's length in seconds: a number, at least :data:`MIN_LEASE`."""
        if (
            isinstance(raw, int | float)
            and not isinstance(raw, bool)
            and raw < MIN_LEASE
        ):
            # Said here rather than "more than 0": 0.5 is as wrong as 0 or -1.
            return self.problem(
                key,
                f"must be at least {MIN_LEASE:g} second, got {raw}: a node renews "
                "its leases every lease / 3 seconds (at most every second), and a "
                "dead node's servers are taken over within one lease",
            )
        return self.seconds(key, raw)

    def flag(self, key: str, raw: object) -> object:
        """A boolean."""
        if not isinstance(raw, bool):
            return self.problem(key, f"expected true or false, got {_type_name(raw)}")
        return raw

    def file_path(self, key: str, raw: object) -> object:
        """A file system path as written (resolved later, by kind)."""
        value = self.text(key, raw)
        if not isinstance(value, str):
            return value
        if value.startswith("~"):
            return self.problem(key, "'~' is not expanded here; write the full path")
        if "\0" in value:
            return self.problem(key, "must not contain a NUL character")
        return Path(value)

    def env_name(self, key: str, raw: object) -> object:
        """The name of an environment variable (never its value)."""
        value = self.text(key, raw)
        if isinstance(value, str) and not _ENV_NAME_RE.fullmatch(value):
            # Not echoed: a value that is not a name may be the secret itself.
            return self.problem(
                key,
                "is not an environment variable name (letters, digits and '_', "
                "not starting with a digit); give the variable's name, not its value",
            )
        return value

    def inline_secret(self, key: str, raw: object) -> object:
        """A secret written in the file itself."""
        value = self.text(key, raw)
        return Secret(value) if isinstance(value, str) else value

    def fingerprint(self, key: str, raw: object) -> object:
        """``sha256:`` + 64 hex digits, colons optional; lowercase hex without colons."""
        value = self.text(key, raw)
        if not isinstance(value, str):
            return value
        algorithm, _, digest = value.strip().lower().partition(":")
        digest = digest.replace(":", "")
        if algorithm != "sha256" or not _HEX64_RE.fullmatch(digest):
            return self.problem(
                key,
                "expected 'sha256:' followed by 64 hex digits (colons allowed), "
                "as printed by: openssl x509 -noout -fingerprint -sha256 -in cert.pem",
            )
        return digest

    def api_path(self, key: str, raw: object) -> object:
        """An absolute URL path such as ``/SKLM/rest/v1``."""
        value = self.text(key, raw)
        if isinstance(value, str) and not (
            _API_PATH_RE.fullmatch(value) and value.rstrip("/")
        ):
            return self.problem(
                key,
                "expected an absolute URL path such as /SKLM/rest/v1 "
                "(no scheme, host, query or spaces)",
            )
        return value

    def api_base(self, key: str, raw: object) -> object:
        """The REST base path, without a trailing slash."""
        value = self.api_path(key, raw)
        return value.rstrip("/") if isinstance(value, str) else value

    def listen(self, key: str, raw: object) -> object:
        """``host:port`` (``[v6]:port`` for IPv6) for the status endpoint."""
        value = self.text(key, raw)
        if not isinstance(value, str):
            return value
        try:
            return parse_listen(value)
        except ValueError:
            # LISTEN_FORMAT alone: a problem's reason never echoes the value.
            return self.problem(key, LISTEN_FORMAT)

    def host(self, key: str, raw: object) -> object:
        """A host name or IP address alone: no scheme, port or path."""
        value = self.text(key, raw)
        if not isinstance(value, str):
            return value
        if any(c.isspace() or ord(c) < 32 or c in "/@?#" for c in value):
            return self.problem(
                key,
                "expected a host name or IP address only (e.g. smtp.example.com), "
                "without scheme, user, path or spaces",
            )
        if ":" in value:
            try:
                ipaddress.IPv6Address(value.removeprefix("[").removesuffix("]"))
            except ValueError:
                return self.problem(
                    key, "write the host name only; the port goes in the port key"
                )
            return value.removeprefix("[").removesuffix("]")
        return value

    def port(self, key: str, raw: object) -> object:
        """A TCP/UDP port number, 1 to 65535."""
        if isinstance(raw, bool) or not isinstance(raw, int):
            return self.problem(key, f"expected a port number, got {_type_name(raw)}")
        if not 1 <= raw <= 65535:
            return self.problem(key, f"must be a port from 1 to 65535, got {raw}")
        return raw

    def email_address(self, key: str, raw: object) -> object:
        """One bare e-mail address (``ops@example.com``)."""
        value = self.text(key, raw)
        if isinstance(value, str) and not _EMAIL_RE.fullmatch(value.strip()):
            return self.problem(
                key,
                "is not an e-mail address: write the bare address, e.g. "
                "ops@example.com (no display name, one address per item)",
            )
        return value.strip() if isinstance(value, str) else value

    def email_addresses(self, key: str, raw: object) -> object:
        """``to``: one address or a list of them."""
        return self.one_or_more(key, raw, _Loader.email_address)

    def app_name(self, key: str, raw: object) -> object:
        """An RFC 5424 APP-NAME."""
        value = self.text(key, raw)
        if isinstance(value, str) and not _APP_NAME_RE.fullmatch(value):
            return self.problem(
                key,
                "must be 1 to 48 printable ASCII characters without spaces "
                "(RFC 5424 APP-NAME)",
            )
        return value

    def strings(self, key: str, raw: object, *, item: _Check | None = None) -> object:
        """A non-empty list of non-empty strings (each checked by ``item``)."""
        if not isinstance(raw, list):
            return self.problem(
                key, f"expected a list of strings, got {_type_name(raw)}"
            )
        if not raw:
            return self.problem(
                key, "must not be an empty list; leave the key out instead"
            )
        values = [
            (item or _Loader.text)(self, f"{key}[{i}]", v) for i, v in enumerate(raw)
        ]
        return _BAD if _BAD in values else tuple(values)

    def globs(self, key: str, raw: object) -> object:
        """A filter: a non-empty list of shell-style patterns."""
        return self.strings(key, raw)

    def one_or_more(self, key: str, raw: object, item: _Check) -> object:
        """One value or a list of them (secret rotation), as a tuple."""
        if isinstance(raw, list):
            return self.strings(key, raw, item=item)
        if not isinstance(raw, str):
            return self.problem(
                key, f"expected a string or a list of strings, got {_type_name(raw)}"
            )
        value = item(self, key, raw)
        return value if value is _BAD else (value,)

    def secrets(self, key: str, raw: object) -> object:
        """``secret``: one or more signing secrets written in the file."""
        return self.one_or_more(key, raw, _Loader.inline_secret)

    def env_names(self, key: str, raw: object) -> object:
        """``secret_env``: one or more variable names."""
        return self.one_or_more(key, raw, _Loader.env_name)

    def paths(self, key: str, raw: object) -> object:
        """``secret_file``: one or more file paths."""
        return self.one_or_more(key, raw, _Loader.file_path)

    def headers(self, key: str, raw: object) -> object:
        """Extra HTTP headers: a table of names to string values."""
        if not isinstance(raw, dict):
            return self.problem(
                key,
                f"expected a table of header names to values, got {_type_name(raw)}",
            )
        out: dict[str, str] = {}
        bad = False
        for header, value in raw.items():
            path = f"{key}.{header}"
            if not _HEADER_NAME_RE.fullmatch(header):
                bad = self.problem(path, "is not a valid HTTP header name") is _BAD
            elif header.lower() in _RESERVED_HEADERS:
                bad = (
                    self.problem(path, "is set by sklm-watcher itself; remove it")
                    is _BAD
                )
            elif not isinstance(value, str):
                bad = (
                    self.problem(path, f"expected a string, got {_type_name(value)}")
                    is _BAD
                )
            elif any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
                bad = (
                    self.problem(path, "contains a line break or control character")
                    is _BAD
                )
            else:
                out[header] = value
        return _BAD if bad else MappingProxyType(out)

    # -- files and the environment ----------------------------------------------

    def config_path(self, path: Path) -> Path:
        """A path relative to the configuration file's directory."""
        return path if path.is_absolute() else self.base_dir / path

    def credential_path(self, path: Path) -> Path:
        """A ``*_file`` path: relative ones live in ``$CREDENTIALS_DIRECTORY``."""
        if path.is_absolute():
            return path
        return (self.credentials_dir or self.base_dir) / path

    def read_file(self, key: str, path: Path) -> str | _Bad:
        """A small UTF-8 file's text, one trailing newline dropped."""
        try:
            with path.open("rb") as file:
                data = file.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            return self.problem(key, f"cannot read {path}: {exc.strerror or exc}")
        if len(data) > MAX_SECRET_FILE_BYTES:
            return self.problem(
                key,
                f"{path} is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB; "
                "is it the right file?",
            )
        try:
            text = _strip_newline(data.decode("utf-8"))
        except UnicodeDecodeError:
            return self.problem(key, f"{path} is not UTF-8 text")
        if not text:
            return self.problem(key, f"{path} is empty")
        return text

    def from_env(self, key: str, name: str) -> Secret | _Bad:
        """A secret from an environment variable (exactly as set)."""
        value = self.environ.get(name)
        if value is None:
            return self.problem(key, f"environment variable {name} is not set")
        if not value:
            return self.problem(key, f"environment variable {name} is empty")
        return Secret(value)

    def from_file(self, key: str, path: Path) -> Secret | _Bad:
        """A secret from a credential file."""
        text = self.read_file(key, self.credential_path(path))
        return text if isinstance(text, _Bad) else Secret(text)

    def secret_from(self, source: str, key: str, value: object) -> Secret | _Bad:
        """Resolve one ``x`` / ``x_env`` / ``x_file`` value into a Secret."""
        if isinstance(value, Secret):
            return value
        if source.endswith("_env") and isinstance(value, str):
            return self.from_env(key, value)
        if isinstance(value, Path):
            return self.from_file(key, value)
        return _BAD

    @staticmethod
    def origin(source: str, key: str, value: object) -> str:
        """How a reason names where a secret came from, without showing it."""
        if source.endswith("_env"):
            return f"the value of environment variable {value}"
        if source.endswith("_file"):
            return "the file's content"
        return "the value"

    def exclusive(self, entries: _Entries, group: tuple[str, ...]) -> None:
        """At most one key of ``group`` per table; the rest are problems (and bad)."""
        present = [key for key in entries if key in group]
        if len(present) < 2:
            return
        names = ", ".join(group[:-1]) + f" and {group[-1]}"
        for key in present[1:]:
            self.problem(
                entries[key][0], f"conflicts with {present[0]}: set only one of {names}"
            )
        for key in present:
            entries[key] = (entries[key][0], _BAD)

    # -- [watcher] -------------------------------------------------------------

    def watcher(self, raw: object) -> WatcherSettings | None:
        """The ``[watcher]`` table."""
        table = self.table("watcher", raw)
        if table is None:
            return None
        entries = self.fields("watcher", table, _WATCHER_CHECKS)
        self.exclusive(entries, _LISTEN_TOKEN_KEYS)
        self.exclusive(entries, _LISTEN_PASSWORD_KEYS)
        self.exclusive(entries, _STORE_URL_KEYS)
        auth = self.listen_auth(entries)
        cluster = self.cluster(entries)
        values = {
            key: value
            for key, (_, value) in entries.items()
            if key not in _LISTEN_AUTH_KEYS and key not in _CLUSTER_KEYS
        }
        if _BAD in values.values() or auth is None or cluster is None:
            return None
        for key in ("state_dir", "audit_log"):
            if key in values:
                values[key] = self.config_path(values[key])
        return WatcherSettings(**values, **auth, **cluster)

    def cluster(self, entries: _Entries) -> dict[str, Any] | None:
        """``store_url`` (a secret: checked, never shown), ``node_name``, ``lease``.

        The host name becomes the node name only in a cluster: without a store
        URL the watcher has no peers to tell apart, and its settings stay the
        defaults (``node_name`` and ``lease`` set anyway load, with a warning).
        """
        url = self.sink_secret("watcher", entries, _STORE_URL_KEYS, "")
        node = entries.get("node_name", ("", None))[1]
        lease = entries.get("lease", ("", None))[1]
        if url is _BAD or node is _BAD or lease is _BAD:
            return None
        out: dict[str, Any] = {}
        if isinstance(url, Secret):
            reason = _store_url_problem(url.reveal())
            if reason is not None:
                source = next(key for key in _STORE_URL_KEYS if key in entries)
                path, raw = entries[source]
                self.problem(path, f"{self.origin(source, path, raw)} {reason}")
                return None
            out["store_url"] = url
            if _store_tls_unverified(url.reveal(), self.environ):
                source = next(key for key in _STORE_URL_KEYS if key in entries)
                self.warnings.append(
                    f"{entries[source][0]}: the store is on another host and its TLS "
                    "certificate is not verified (sslmode is not verify-full or "
                    "verify-ca): anyone on the network path can pose as the database "
                    "and read the URL's password and every event; add "
                    "sslmode=verify-full (and sslrootcert) to the URL"
                )
            if node is None:
                node = self.default_node_name()
                if node is None:
                    return None
        else:
            for key in ("node_name", "lease"):
                if key in entries:
                    self.warnings.append(
                        f"{entries[key][0]}: has no effect without store_url: this "
                        "watcher runs alone, on its SQLite store in state_dir"
                    )
        if node is not None:
            out["node_name"] = node
        if lease is not None:
            out["lease"] = lease
        return out

    def default_node_name(self) -> str | None:
        """The host name as the node's name, or None after saying why it cannot be."""
        host = socket.gethostname()
        if _node_name_problem(host) is None:
            return host
        self.problem(
            "watcher.node_name",
            "missing: this host's name is not usable as a node name (it must be "
            f"printable, without spaces, at most {MAX_NODE_NAME} characters); set "
            'node_name, e.g. node_name = "watcher-1"',
        )
        return None

    def listen_auth(self, entries: _Entries) -> dict[str, Any] | None:
        """``listen``'s credentials (None: a problem was found).

        A non-loopback ``listen`` without any is a problem: the dashboard shows
        server names and restore state to whoever can connect.
        """
        token = self.sink_secret("watcher", entries, _LISTEN_TOKEN_KEYS, "")
        password = self.sink_secret("watcher", entries, _LISTEN_PASSWORD_KEYS, "")
        username = entries.get("listen_username", ("", None))[1]
        if token is _BAD or password is _BAD or username is _BAD:
            return None
        ok = True
        if password is not None and username is None:
            self.problem(
                "watcher.listen_username",
                "missing: listen_password needs listen_username (HTTP Basic)",
            )
            ok = False
        if username is not None and password is None:
            self.problem(
                "watcher.listen_password",
                "missing: listen_username needs listen_password_env, "
                "listen_password_file or listen_password (HTTP Basic)",
            )
            ok = False
        listen = entries.get("listen", ("", None))[1]
        if (
            isinstance(listen, Listen)
            and not listen.is_loopback
            and token is None
            and password is None
            and username is None
        ):
            self.problem(
                "watcher.listen",
                f"{listen} is not a loopback address: the dashboard and API would "
                "show the fleet to anyone who can connect; set listen_token_env or "
                "listen_token_file (a bearer token), or listen_username with "
                "listen_password_env or listen_password_file (HTTP Basic), or "
                "listen on 127.0.0.1",
            )
            ok = False
        if not ok:
            return None
        return {
            "listen_token": token,
            "listen_username": username,
            "listen_password": password,
        }

    # -- [defaults] and [[servers]] ---------------------------------------------

    def defaults(self, raw: object) -> _Entries:
        """The ``[defaults]`` table: server keys, checked once."""
        table = self.table("defaults", raw)
        if table is None:
            return {}
        refused = {
            key: f"{key!r} cannot be a default: set it in each [[servers]] table"
            for key in ("name", "url")
        }
        entries = self.fields("defaults", table, _SERVER_CHECKS, refused)
        self.exclusive(entries, _PASSWORD_KEYS)
        self.trust_conflicts(entries)
        return entries

    def trust_conflicts(self, entries: _Entries) -> None:
        """ca_file, tls_fingerprint and verify_tls = false exclude one another."""
        if "ca_file" in entries and "tls_fingerprint" in entries:
            path, _ = entries["tls_fingerprint"]
            self.problem(
                path,
                "conflicts with ca_file: set ca_file (trust a CA) or tls_fingerprint "
                "(pin one certificate), not both",
            )
            entries["tls_fingerprint"] = (path, _BAD)
        if entries.get("verify_tls", ("", True))[1] is False:
            for other, why in (
                ("ca_file", "ca_file makes verification work with a self-signed chain"),
                ("tls_fingerprint", "the pin is the verification"),
            ):
                if other in entries:
                    path, _ = entries["verify_tls"]
                    self.problem(
                        path,
                        f"verify_tls = false conflicts with {other}: {why}; "
                        "remove verify_tls = false",
                    )
                    entries["verify_tls"] = (path, _BAD)
                    break

    def servers(self, raw: object, defaults: _Entries) -> list[ServerConfig] | None:
        """Every ``[[servers]]`` table, with ``[defaults]`` merged in."""
        if raw is None or raw == []:
            self.problem(
                "servers",
                "no servers: add at least one [[servers]] table with name and url",
            )
            return None
        tables = self.tables("servers", raw)
        if tables is None:
            return None
        seen: dict[str, str] = {}
        servers = [self.server(i, table, defaults, seen) for i, table in tables]
        if len(tables) != len(servers) or None in servers:
            return None
        return [s for s in servers if s is not None]

    def server(
        self,
        index: int,
        table: dict[str, Any],
        defaults: _Entries,
        seen: dict[str, str],
    ) -> ServerConfig | None:
        """One ``[[servers]]`` table."""
        prefix = f"servers[{index}]"
        own = self.fields(prefix, table, _SERVER_TABLE_CHECKS)
        self.exclusive(own, _PASSWORD_KEYS)
        self.trust_conflicts(own)
        merged = _merge(defaults, own)
        ok = _BAD not in (value for _, value in own.values())

        name = self.unique_name(prefix, own, seen, "server")
        url = self.server_url(prefix, merged)
        password = self.password(prefix, merged)
        ca_file = self.ca_file(merged)
        if name is None or url is None or password is None or ca_file is _BAD:
            return None
        values: dict[str, Any] = {}
        for key in _PLAIN_SERVER_KEYS:
            if key in merged:
                value = merged[key][1]
                ok = ok and value is not _BAD
                values[key] = value
        if not ok:
            return None
        server = ServerConfig(
            name=name,
            url=url,
            password=password,
            ca_file=ca_file if isinstance(ca_file, Path) else None,
            **values,
        )
        self.server_warnings(prefix, server)
        return server

    def unique_name(
        self, prefix: str, entries: _Entries, seen: dict[str, str], kind: str
    ) -> str | None:
        """The table's ``name``: present, valid and not used by an earlier table."""
        if "name" not in entries:
            example = "sklm-prod-1" if kind == "server" else "ops"
            self.problem(
                f"{prefix}.name",
                f"missing required key 'name' (a unique {kind} name, "
                f'e.g. name = "{example}")',
            )
            return None
        path, name = entries["name"]
        if not isinstance(name, str):
            return None
        if name in seen:
            self.problem(path, f"duplicate {kind} name {name!r} (also {seen[name]})")
            return None
        seen[name] = prefix
        return name

    def server_url(self, prefix: str, merged: _Entries) -> str | None:
        """The server's URL: http(s)://host[:port] and nothing else."""
        if "url" not in merged:
            self.problem(
                f"{prefix}.url",
                "missing required key 'url' "
                '(e.g. url = "https://sklm.example.com:9443")',
            )
            return None
        key, raw = merged["url"]
        if not isinstance(raw, str):
            return None
        parts = _split_url(raw)
        if isinstance(parts, str):
            self.problem(key, parts)
            return None
        if parts.path not in ("", "/"):
            reason = (
                "must not have a path: write scheme, host and port only, e.g. "
                "https://sklm.example.com:9443 (api_base sets the REST path)"
            )
            self.problem(key, reason)
            return None
        if parts.query or parts.fragment:
            self.problem(
                key,
                "must not have a query or fragment: write scheme, host and port only",
            )
            return None
        scheme = parts.scheme.lower()
        allow_http = merged.get("allow_insecure_http", ("", False))[1]
        if scheme == "http" and allow_http is not True:
            if allow_http is False:
                self.problem(
                    key,
                    "http:// would send the SKLM password unencrypted: use https://, "
                    "or set allow_insecure_http = true (labs and simulators only)",
                )
            return None
        return f"{scheme}://{parts.netloc}"

    def password(self, prefix: str, merged: _Entries) -> Secret | None:
        """The server's password, from whichever of the three keys is set."""
        source = next((key for key in _PASSWORD_KEYS if key in merged), None)
        if source is None:
            self.problem(
                f"{prefix}.password",
                "missing: SKLM needs a password to log in; set password_env, "
                "password_file or password (here or in [defaults])",
            )
            return None
        key, value = merged[source]
        if key not in self._resolved:
            secret = self.secret_from(source, key, value)
            if source == "password" and isinstance(secret, Secret):
                self.warnings.append(
                    f"{key}: the password is written in the configuration file; "
                    "prefer password_env or password_file (a systemd credential)"
                )
            self._resolved[key] = secret
        resolved = self._resolved[key]
        return resolved if isinstance(resolved, Secret) else None

    def ca_file(self, merged: _Entries) -> Path | _Bad | None:
        """The server's CA file, checked to hold at least one PEM certificate."""
        if "ca_file" not in merged:
            return None
        key, value = merged["ca_file"]
        if not isinstance(value, Path):
            return _BAD
        if key not in self._resolved:
            self._resolved[key] = self.check_ca_file(key, self.config_path(value))
        resolved: Path | _Bad = self._resolved[key]
        return resolved

    def check_ca_file(self, key: str, path: Path) -> Path | _Bad:
        """Load the CA file the way the client will, to fail here rather than there."""
        try:
            pem = path.read_text(encoding="utf-8")
        except OSError as exc:
            return self.problem(key, f"cannot read {path}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            return self.problem(key, f"{path} is not a PEM file (not text)")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError):
            return self.problem(
                key,
                f"{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            )
        return path

    def server_warnings(self, prefix: str, server: ServerConfig) -> None:
        """Allowed but dangerous settings, said loudly at start-up."""
        label = f"{prefix} ({server.name})"
        parts = urlsplit(server.url)
        if parts.scheme == "http":
            if not is_loopback(parts.hostname or ""):
                self.warnings.append(
                    f"{label}: http:// to a non-loopback host: the SKLM password "
                    "and session id cross the network unencrypted"
                )
        elif not server.verify_tls:
            self.warnings.append(
                f"{label}: verify_tls = false: TLS CERTIFICATE VERIFICATION IS OFF; "
                "anyone on the network path can impersonate the server and take the "
                "SKLM password; set ca_file or tls_fingerprint instead"
            )

    # -- [[sinks]] -----------------------------------------------------------------

    def sinks(self, raw: object, servers: list[str] | None) -> list[SinkConfig] | None:
        """Every ``[[sinks]]`` table."""
        tables = self.tables("sinks", raw)
        if tables is None:
            return None
        seen: dict[str, str] = {}
        sinks = [self.sink(i, table, servers, seen) for i, table in tables]
        if len(tables) != len(sinks) or None in sinks:
            return None
        return [s for s in sinks if s is not None]

    def sink(
        self,
        index: int,
        table: dict[str, Any],
        servers: list[str] | None,
        seen: dict[str, str],
    ) -> SinkConfig | None:
        """One ``[[sinks]]`` table."""
        prefix = f"sinks[{index}]"
        entries = self.fields(prefix, table, _SINK_CHECKS)
        name = self.unique_name(prefix, entries, seen, "sink")
        kind = self.sink_type(prefix, entries)
        self.drop_inapplicable(kind, entries)
        self.exclusive(entries, _URL_KEYS)
        self.exclusive(entries, _SIGNING_KEYS)
        self.exclusive(entries, _ROUTING_KEY_KEYS)
        self.exclusive(entries, _PASSWORD_KEYS)
        ok = _BAD not in (value for _, value in entries.values())

        url = self.sink_url(prefix, kind, entries)
        secrets = self.signing_secrets(entries)
        extra = self.sink_extras(prefix, kind, entries)
        self.check_event_globs(entries)
        self.check_server_globs(entries, servers)
        if (
            not ok
            or name is None
            or kind is None
            or url is _BAD
            or secrets is None
            or extra is None
        ):
            return None
        values: dict[str, Any] = {
            key: entries[key][1]
            for key in ("events", "servers", "headers", "timeout", "max_age")
            if key in entries
        }
        values.setdefault("events", _SINK_DEFAULT_EVENTS.get(kind, ()))
        if "min_interval" in entries:
            values["min_interval"] = entries["min_interval"][1]
        elif kind in _SINK_MIN_INTERVALS:
            values["min_interval"] = _SINK_MIN_INTERVALS[kind]
        if extra.get("verify_tls") is False and extra.get("transport") in (
            "starttls",
            "tls",
        ):
            self.warnings.append(
                f"{prefix} ({name}): verify_tls = false: TLS CERTIFICATE "
                f"VERIFICATION IS OFF; anyone on the network path can impersonate "
                f"the {kind} server and read what is sent; set ca_file instead"
            )
        return SinkConfig(
            name=name,
            type=kind,
            url=url if isinstance(url, Secret) else None,
            secrets=secrets,
            allow_insecure_http=entries.get("allow_insecure_http", ("", False))[1],
            **values,
            **extra,
        )

    def sink_type(self, prefix: str, entries: _Entries) -> str | None:
        """The sink's ``type``: one of :data:`SINK_TYPES`."""
        if "type" not in entries:
            self.problem(
                f"{prefix}.type", f"missing required key 'type' ({_SINK_TYPE_LIST})"
            )
            return None
        key, kind = entries["type"]
        if not isinstance(kind, str):
            return None
        if kind in SINK_TYPES:
            return kind
        # Echo only what looks like a word: a pasted URL here may be a secret.
        shown = f" {kind!r}" if _WORD_RE.fullmatch(kind) else ""
        close = difflib.get_close_matches(kind, SINK_TYPES, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        self.problem(key, f"unknown sink type{shown}: expected {_SINK_TYPE_LIST}{hint}")
        return None

    def drop_inapplicable(self, kind: str | None, entries: _Entries) -> None:
        """Keys that mean nothing for this sink type are problems, not silence."""
        if kind is None:
            return
        allowed = _SINK_TYPE_KEYS[kind]
        for key in [k for k in entries if k not in _SINK_COMMON_KEYS]:
            if key in allowed:
                continue
            path, _ = entries.pop(key)
            self.problem(
                path,
                f"does not apply to {_a(kind)} sink ({_inapplicable(kind, key)}); "
                "remove it",
            )

    def sink_url(
        self, prefix: str, kind: str | None, entries: _Entries
    ) -> Secret | _Bad | None:
        """The sink's URL (a secret): checked, never shown."""
        source = next((key for key in _URL_KEYS if key in entries), None)
        if source is None:
            if kind in ("webhook", "slack", "teams"):
                return self.problem(
                    f"{prefix}.url",
                    f"missing: a {kind} sink needs url, url_env or url_file",
                )
            return None
        key, value = entries[source]
        secret = self.secret_from(source, key, value)
        if isinstance(secret, _Bad):
            return secret
        parts = _split_url(secret.reveal())
        if isinstance(parts, str):
            origin = self.origin(source, key, value)
            return self.problem(key, f"{origin} is not a usable URL: it {parts}")
        allow_http = entries.get("allow_insecure_http", ("", False))[1] is True
        if parts.scheme.lower() == "http":
            if kind is not None and kind in _HTTPS_SINKS and not allow_http:
                return self.problem(
                    key,
                    f"{_HTTPS_SINKS[kind]} (allow_insecure_http = true only for a "
                    "local test receiver)",
                )
            if not is_loopback(parts.hostname or ""):
                self.warnings.append(
                    f"{key}: the URL uses http:// to a non-loopback host: events "
                    "cross the network unencrypted"
                )
        return secret

    def sink_secret(
        self, prefix: str, entries: _Entries, group: tuple[str, ...], missing: str
    ) -> Secret | _Bad | None:
        """One ``x`` / ``x_env`` / ``x_file`` secret of a sink; ``missing`` if required."""
        source = next((key for key in group if key in entries), None)
        if source is None:
            return self.problem(f"{prefix}.{group[0]}", missing) if missing else None
        key, value = entries[source]
        secret = self.secret_from(source, key, value)
        if source == group[0] and isinstance(secret, Secret):
            # As for an inline SKLM password (issue 11): the file is read by more
            # people and tools than a credential is, and ends up in backups.
            what = _INLINE_SECRET_NAMES.get(source, "SMTP password")
            self.warnings.append(
                f"{key}: the {what} is written in the configuration file; prefer "
                f"{source}_env or {source}_file (a systemd credential)"
            )
        return secret

    def sink_extras(
        self, prefix: str, kind: str | None, entries: _Entries
    ) -> dict[str, Any] | None:
        """The type-specific fields (pagerduty, email, syslog); None if any is bad."""
        if kind == "pagerduty":
            return self.pagerduty_fields(prefix, entries)
        if kind in ("email", "syslog"):
            return self.host_fields(prefix, kind, entries)
        return {}

    def pagerduty_fields(self, prefix: str, entries: _Entries) -> dict[str, Any] | None:
        """``routing_key`` (required, a secret)."""
        key = self.sink_secret(
            prefix,
            entries,
            _ROUTING_KEY_KEYS,
            "missing: a pagerduty sink needs routing_key_env, routing_key_file or "
            "routing_key (the integration key of the service's Events API v2 "
            "integration)",
        )
        if not isinstance(key, Secret):
            return None
        value = key.reveal()
        if any(c.isspace() or ord(c) < 32 or c in "/:@?" for c in value):
            source = next(k for k in _ROUTING_KEY_KEYS if k in entries)
            path, raw = entries[source]
            origin = self.origin(source, path, raw)
            self.problem(
                path,
                f"{origin} is not an integration key (letters and digits, e.g. "
                "32 characters; not a URL)",
            )
            return None
        return {"routing_key": key}

    def host_fields(
        self, prefix: str, kind: str, entries: _Entries
    ) -> dict[str, Any] | None:
        """host, port, transport and TLS for email and syslog, then their own keys."""
        out: dict[str, Any] = {}
        bad = False
        if "host" not in entries:
            what = "SMTP server" if kind == "email" else "syslog relay or SIEM"
            self.problem(
                f"{prefix}.host", f"missing: {_a(kind)} sink needs the {what} host"
            )
            bad = True
        else:
            out["host"] = entries["host"][1]
        if "port" in entries:
            out["port"] = entries["port"][1]
        transports = SINK_TRANSPORTS[kind]
        transport = transports[0]
        if "transport" in entries:
            key, value = entries["transport"]
            if isinstance(value, str) and value not in transports:
                names = ", ".join(transports[:-1]) + f" or {transports[-1]}"
                shown = f" {value!r}" if _WORD_RE.fullmatch(value) else ""
                self.problem(key, f"unknown transport{shown}: expected {names}")
                bad = True
            elif isinstance(value, str):
                transport = value
        out["transport"] = transport
        tls = transport in ("starttls", "tls")
        for name in _SINK_TLS_KEYS:
            if name in entries and not tls:
                self.problem(
                    entries[name][0],
                    f"applies only with TLS; transport = {transport!r} sends in "
                    "the clear",
                )
                bad = True
        if "verify_tls" in entries:
            out["verify_tls"] = entries["verify_tls"][1]
        if "ca_file" in entries and tls:
            key, value = entries["ca_file"]
            if isinstance(value, Path):
                checked = self.check_ca_file(key, self.config_path(value))
                bad = bad or isinstance(checked, _Bad)
                out["ca_file"] = checked
        extra = (
            self.email_fields(prefix, entries, transport, out.get("host"))
            if kind == "email"
            else self.syslog_fields(entries)
        )
        if extra is None or bad:
            return None
        host = out.get("host")
        if not tls and isinstance(host, str) and not is_loopback(host):
            self.warnings.append(
                f"{prefix}.transport: transport = {transport!r} to a "
                "non-loopback host: events cross the network unencrypted"
            )
        return {**out, **extra}

    def email_fields(
        self, prefix: str, entries: _Entries, transport: str, host: object
    ) -> dict[str, Any] | None:
        """from, to, and the SMTP credentials (both or neither)."""
        out: dict[str, Any] = {}
        bad = False
        for key, field_name in (("from", "sender"), ("to", "recipients")):
            if key in entries:
                out[field_name] = entries[key][1]
            else:
                self.problem(f"{prefix}.{key}", _EMAIL_MISSING[key])
                bad = True
        password = self.sink_secret(prefix, entries, _PASSWORD_KEYS, "")
        has_password = any(key in entries for key in _PASSWORD_KEYS)
        if isinstance(password, _Bad):
            bad = True
        elif isinstance(password, Secret):
            out["password"] = password
        if "username" in entries:
            out["username"] = entries["username"][1]
            if not has_password:
                self.problem(
                    f"{prefix}.password",
                    "missing: a username needs password_env, password_file or "
                    "password (SMTP AUTH takes both)",
                )
                bad = True
        elif has_password:
            path = next(entries[k][0] for k in _PASSWORD_KEYS if k in entries)
            self.problem(path, "a password needs a username (SMTP AUTH takes both)")
            bad = True
        if (
            has_password
            and transport == "none"
            and not (isinstance(host, str) and is_loopback(host))
        ):
            path = entries["transport"][0] if "transport" in entries else prefix
            self.problem(
                path,
                "transport = 'none' would send the SMTP password unencrypted to a "
                "non-loopback host; use starttls or tls",
            )
            bad = True
        return None if bad else out

    def syslog_fields(self, entries: _Entries) -> dict[str, Any] | None:
        """facility (a name from RFC 5424) and app_name."""
        out: dict[str, Any] = {}
        if "facility" in entries:
            key, value = entries["facility"]
            if not isinstance(value, str):
                return None
            if value not in SYSLOG_FACILITIES:
                shown = f" {value!r}" if _WORD_RE.fullmatch(value) else ""
                close = difflib.get_close_matches(value, SYSLOG_FACILITIES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(
                    key,
                    f"unknown facility{shown}: expected an RFC 5424 name such as "
                    f"local0 .. local7, auth, daemon or user{hint}",
                )
                return None
            out["facility"] = value
        if "app_name" in entries:
            out["app_name"] = entries["app_name"][1]
        return out

    def signing_secrets(self, entries: _Entries) -> tuple[Secret, ...] | None:
        """Standard Webhooks secrets, first the one to sign with; None if any is bad."""
        source = next((key for key in _SIGNING_KEYS if key in entries), None)
        if source is None:
            return ()
        key, values = entries[source]
        if not isinstance(values, tuple):
            return None
        out: list[Secret] = []
        for i, value in enumerate(values):
            item_key = f"{key}[{i}]" if len(values) > 1 else key
            secret = self.secret_from(source, item_key, value)
            if isinstance(secret, Secret):
                reason = _signing_secret_problem(secret)
                if reason:
                    origin = self.origin(source, item_key, value)
                    secret = self.problem(item_key, f"{origin} {reason}")
            if isinstance(secret, Secret):
                out.append(secret)
        if source == "secret" and out and len(out) == len(values):
            # As for an inline password (issue 11): the file is read by more
            # people and tools than a credential is, and ends up in backups.
            self.warnings.append(
                f"{key}: the signing secret is written in the configuration file; "
                "prefer secret_env or secret_file (a systemd credential)"
            )
        return tuple(out) if len(out) == len(values) else None

    def check_event_globs(self, entries: _Entries) -> None:
        """Each ``events`` pattern must match some event type: a typo means silence."""
        key, patterns = entries.get("events", ("", None))
        if not isinstance(patterns, tuple):
            return
        for i, pattern in enumerate(patterns):
            if not any(matches_any((pattern,), str(t)) for t in EventType):
                close = difflib.get_close_matches(pattern, _EVENT_PATTERNS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(
                    f"{key}[{i}]", f"pattern {pattern!r} matches no event type{hint}"
                )

    def check_server_globs(self, entries: _Entries, servers: list[str] | None) -> None:
        """Each ``servers`` pattern must match a configured server."""
        key, patterns = entries.get("servers", ("", None))
        if not isinstance(patterns, tuple) or servers is None:
            return
        for i, pattern in enumerate(patterns):
            if not any(matches_any((pattern,), name) for name in servers):
                close = difflib.get_close_matches(pattern, servers, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(
                    f"{key}[{i}]",
                    f"pattern {pattern!r} matches no configured server{hint}",
                )


#: Each sink type's ``events`` when the key is not set (others: every event).
_SINK_DEFAULT_EVENTS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "slack": SLACK_DEFAULT_EVENTS,
        "teams": SLACK_DEFAULT_EVENTS,
        "email": SLACK_DEFAULT_EVENTS,
        "pagerduty": PAGERDUTY_DEFAULT_EVENTS,
    }
)
#: Each sink type's ``min_interval`` when the key is not set (others: 0).
_SINK_MIN_INTERVALS: Final[Mapping[str, float]] = MappingProxyType(
    {"slack": SLACK_MIN_INTERVAL, "teams": TEAMS_MIN_INTERVAL}
)
_EMAIL_MISSING: Final = {
    "from": "missing: an email sink needs from (the sender, e.g. from = "
    '"sklm-watcher@example.com")',
    "to": "missing: an email sink needs to (one address or a list, e.g. "
    'to = ["ops@example.com"])',
}


def _a(kind: str) -> str:
    """``a`` or ``an`` before a sink type."""
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _inapplicable(kind: str, key: str) -> str:
    """Why ``key`` means nothing for a ``kind`` sink (no value is ever shown)."""
    if kind == "log":
        return "a log sink sends nothing over the network"
    if key in _SIGNING_KEYS:
        return "only webhook sinks are signed"
    if key in _ROUTING_KEY_KEYS:
        return "only pagerduty sinks take a routing key"
    if key in _SINK_HTTP_KEYS:
        return f"{_a(kind)} sink connects to host and port, not to a URL"
    if key in _SINK_HOST_KEYS:
        return (
            f"{_a(kind)} sink posts to its URL; host, port, transport and TLS keys "
            "are for email and syslog sinks"
        )
    if key in _SINK_SMTP_KEYS:
        return "only email sinks take SMTP credentials and addresses"
    return "only syslog sinks take facility and app_name"


def _server_names(document: Mapping[str, Any]) -> list[str] | None:
    """Every server's name, for checking sink filters; None unless all are valid."""
    tables = document.get("servers")
    if not isinstance(tables, list):
        return None
    names = [t.get("name") if isinstance(t, dict) else None for t in tables]
    if names and all(isinstance(n, str) and _NAME_RE.fullmatch(n) for n in names):
        return [str(n) for n in names]
    return None


def _store_url_problem(url: str) -> str | None:
    """Why a store URL is not a PostgreSQL connection URI, or None (never echoing it)."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return (
            "is not a usable store URL: it must not contain spaces or control "
            "characters (percent-encode them, e.g. %20)"
        )
    if not url.startswith(_STORE_URL_SCHEMES):
        return (
            "is not a PostgreSQL URL: it must start with postgresql:// (or "
            "postgres://), e.g. postgresql://watcher@db.example.com/sklm_watcher"
        )
    return None


#: libpq ``sslmode`` values that check the server's certificate.
_VERIFYING_SSLMODES: Final = ("verify-ca", "verify-full")


def _store_tls_unverified(url: str, environ: Mapping[str, str]) -> bool:
    """Whether libpq would reach a non-loopback host without verifying its certificate.

    libpq's default ``sslmode`` (``prefer``) encrypts when the server offers TLS
    but checks nothing, and falls back to plain text: fine on loopback or a Unix
    socket, a risk across a network. ``PGSSLMODE`` counts, as libpq reads it too.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    query = parse_qs(parts.query)
    modes = query.get("sslmode") or [environ.get("PGSSLMODE", "prefer")]
    if modes[-1] in _VERIFYING_SSLMODES:
        return False
    # In the authority, hosts carry their ports; in the query, ports are apart.
    hosts = [
        _without_port(unquote(h))
        for h in parts.netloc.rpartition("@")[2].split(",")
        if h
    ]
    hosts += [
        h
        for key in ("host", "hostaddr")
        for value in query.get(key, [])
        for h in value.split(",")
    ]
    # No host at all: libpq uses PGHOST or the local Unix socket.
    return any(h and not h.startswith("/") and not is_loopback(h) for h in hosts)


def _without_port(host: str) -> str:
    """``host`` of ``host:port`` (``[v6]:port`` for IPv6)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if ":" in host else host


def _node_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a node's name, or None (never echoing it)."""
    if len(name) > MAX_NODE_NAME:
        return f"must be at most {MAX_NODE_NAME} characters, got {len(name)}"
    if not name.isprintable() or any(c.isspace() for c in name):
        return (
            "must be printable characters without spaces (it is shown in status, "
            "cluster and the logs), e.g. watcher-1"
        )
    return None


def _signing_secret_problem(secret: Secret) -> str | None:
    """Why a signing secret is not Standard Webhooks' ``whsec_<base64>``, or None."""
    value = secret.reveal()
    if not value.startswith(SIGNING_SECRET_PREFIX):
        return "is not a Standard Webhooks secret: it must start with 'whsec_'"
    try:
        key = base64.b64decode(value.removeprefix(SIGNING_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return (
            "is not a Standard Webhooks secret: the part after 'whsec_' is not base64"
        )
    if len(key) < MIN_SIGNING_KEY_BYTES:
        return (
            f"is too short: {len(key)} bytes after base64 decoding; use at least "
            f"{MIN_SIGNING_KEY_BYTES} random bytes (24 to 64 recommended)"
        )
    return None


def _merge(defaults: _Entries, own: _Entries) -> _Entries:
    """``[defaults]`` under a server's own keys; a group set by the server wins whole."""
    inherited = dict(defaults)
    if any(key in own for key in _PASSWORD_KEYS):
        for key in _PASSWORD_KEYS:
            inherited.pop(key, None)
    if (
        "ca_file" in own
        or "tls_fingerprint" in own
        or own.get("verify_tls", ("", True))[1] is False
    ):
        for key in ("ca_file", "tls_fingerprint", "verify_tls"):
            inherited.pop(key, None)
    return {**inherited, **own}


# The key tables: every key each section accepts, with its check. The reference
# test reads them, so config/reference.toml cannot miss a key.
_WATCHER_CHECKS: Final[dict[str, _Check]] = {
    "state_dir": _Loader.file_path,
    "audit_log": _Loader.file_path,
    "listen": _Loader.listen,
    "drain_timeout": _Loader.seconds_or_zero,
    "jitter": _Loader.fraction,
    "outbox_retention": _Loader.seconds_or_zero,
    "listen_token": _Loader.inline_secret,
    "listen_token_env": _Loader.env_name,
    "listen_token_file": _Loader.file_path,
    "listen_username": _Loader.text,
    "listen_password": _Loader.inline_secret,
    "listen_password_env": _Loader.env_name,
    "listen_password_file": _Loader.file_path,
    "store_url": _Loader.inline_secret,
    "store_url_env": _Loader.env_name,
    "store_url_file": _Loader.file_path,
    "node_name": _Loader.node_name,
    "lease": _Loader.lease,
}
_SERVER_CHECKS: Final[dict[str, _Check]] = {
    "username": _Loader.text,
    "password": _Loader.inline_secret,
    "password_env": _Loader.env_name,
    "password_file": _Loader.file_path,
    "ca_file": _Loader.file_path,
    "tls_fingerprint": _Loader.fingerprint,
    "verify_tls": _Loader.flag,
    "allow_insecure_http": _Loader.flag,
    "api_base": _Loader.api_base,
    "progress_path": _Loader.api_path,
    **dict.fromkeys(_SECONDS_KEYS, _Loader.seconds),
    "burst_polls": _Loader.count,
}
_SERVER_TABLE_CHECKS: Final[dict[str, _Check]] = {
    "name": _Loader.name,
    "url": _Loader.text,
    **_SERVER_CHECKS,
}
_SINK_CHECKS: Final[dict[str, _Check]] = {
    "name": _Loader.name,
    "type": _Loader.text,
    "url": _Loader.inline_secret,
    "url_env": _Loader.env_name,
    "url_file": _Loader.file_path,
    "secret": _Loader.secrets,
    "secret_env": _Loader.env_names,
    "secret_file": _Loader.paths,
    "events": _Loader.globs,
    "servers": _Loader.globs,
    "headers": _Loader.headers,
    "timeout": _Loader.seconds,
    "max_age": _Loader.seconds,
    "min_interval": _Loader.seconds_or_zero,
    "allow_insecure_http": _Loader.flag,
    # pagerduty
    "routing_key": _Loader.inline_secret,
    "routing_key_env": _Loader.env_name,
    "routing_key_file": _Loader.file_path,
    # email and syslog
    "host": _Loader.host,
    "port": _Loader.port,
    "transport": _Loader.text,
    "ca_file": _Loader.file_path,
    "verify_tls": _Loader.flag,
    # email
    "username": _Loader.text,
    "password": _Loader.inline_secret,
    "password_env": _Loader.env_name,
    "password_file": _Loader.file_path,
    "from": _Loader.email_address,
    "to": _Loader.email_addresses,
    # syslog
    "facility": _Loader.text,
    "app_name": _Loader.app_name,
}
