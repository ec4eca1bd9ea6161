"""The built-in SKLM simulator: many scripted SKLM servers on loopback, one port each.

Every simulated server is an ``aiohttp.web`` low-level server on its own port
(``127.0.0.1``, HTTP or HTTPS) speaking SKLM's REST wire format as ``sklm-api.md``
describes it. The wire literals are written here, independently of ``watcher.client``,
so that a parsing bug in the client is not mirrored by the simulator.

Wire behaviour (``<base>`` is the server's ``api_base``, ``/SKLM/rest/v1`` by default):

- ``POST <base>/ckms/login`` ``{"userid", "password"}`` → 200 ``{"UserAuthId": id}``
  (``"userAuthId"`` with ``login_field``); wrong credentials → 401 CTGKM6003E; an empty
  or non-JSON body → 500 plain-text servlet exception.
- Authenticated services need ``Authorization: SKLMAuth userAuthId=<id>``: missing or
  malformed → 400 CTGKM6002E; unknown, idle longer than ``session_idle_timeout``,
  logged out or issued before a restart → 401 CTGKM6004E.
- ``GET <base>/ckms/backupRestore/progress`` and/or ``GET <base>/ckms/restore/progress``
  (``progress_paths``) → ``{"code": "4", "status": "RESTORE_KEYSTORES"}`` (``code`` an
  integer with ``code_as_int``). A progress path the server does not serve answers
  404 with ``missing_progress_answer``: ``"html"`` a servlet container's HTML page
  (the default), ``"ctgkm"`` IBM's ``{"code": "CTGKM6005E", "message": ...}``
  (as a real server was seen to), ``"json"`` JSON without a CTGKM id, ``"empty"``
  no body at all. With ``error_rate``, that fraction of progress answers is a
  fault instead (see ``faults``).
- ``GET <base>/ckms/restore/result`` → ``{"code": "-1"|"0"|"1"}``: -1 after a (re)start
  until a restore ends, 0 after a completed one, 1 after a failed one.
- ``GET <base>/ckms/versionInfo`` → ``{"tklm_version": "4.2.1.0"}``.
- ``DELETE <base>/ckms/logout`` ``{"userAuthId": id}`` → 200, the id is invalidated.
- ``POST <base>/ckms/restore`` ``{"backupFilePath": ...}`` runs the server's
  ``on_demand`` script; 409 CTGKM0630E while a restore runs, 400 CTGKM0630E without
  ``backupFilePath`` or without an ``on_demand`` script.
- A wrong method → 405 plain text; an unknown path → 404 HTML. With
  ``error_code_in_message`` every CTGKM error body has only ``message`` (the id at its
  start), no ``code``.
- A restart (after a completed restore, or :meth:`SimulatedServer.restart`): the
  listening socket is closed and open connections are aborted for ``restart_down``
  seconds; then the port listens again but answers 404 (first half) and 500 (second
  half) HTML pages for ``restart_starting`` seconds; then every old session id is
  rejected, the phase is IDLE and ``restore/result`` is -1.

The phase at any instant is computed from ``time.monotonic()`` against the planned
timeline, so millisecond phases are exact; timers only write the ground truth and
close / reopen sockets.

Scenario file (TOML)::

    description = "free text"                # optional

    [watcher_defaults]                       # optional: [defaults] for --write-config
    stall_after = 5.0                        # any of the watcher's interval keys

    [defaults]                               # optional: any server key except name/port
    password = "sim-password"

    [[servers]]
    name = "sim-1"                           # required, unique; [A-Za-z0-9._-], <= 64
    username = "SKLMAdmin"
    password = "sim-password"                # scenario files are test data
    api_base = "/SKLM/rest/v1"
    progress_paths = ["backupRestore", "restore"]  # which progress paths answer
    missing_progress_answer = "html"         # the other's 404: "ctgkm", "json", "empty"
    code_as_int = false                      # "code": 4 instead of "code": "4"
    login_field = "UserAuthId"               # or "userAuthId"
    error_code_in_message = false            # CTGKM id only at the start of "message"
    session_idle_timeout = 900.0             # seconds a session id may stay unused
    latency = 0.0                            # seconds added to every response
    error_rate = 0.0                         # fraction of progress answers that fault
    faults = ["json_500", "html_200", "html_500", "truncated"]  # also "json_404"
    seed = 1                                 # fault randomness (default: server index)
    tklm_version = "4.2.1.0"
    port = 0                                 # 0: any free port
    count = 1                                # N > 1: replicas sim-1-001 .. sim-1-00N
    stagger = 0.0                            # replica i starts its scripts i*stagger later
    watcher_password = "..."                 # what --write-config writes (a wrong one)
    watcher_progress_path = "restore"        # --write-config pins this progress path

    [[servers.restores]]                     # run one after another
    idle_before = 2.0                        # seconds of IDLE before it starts
    phases = [[1, 0.5], [2, 0.003], [3, 0.003], [4, 1.0], [5, 0.5], [6, 0.2], [7, 0.3]]
    outcome = "complete"                     # or "fail" / "stall"
    restart_down = 3.0                       # complete only: socket closed this long
    restart_starting = 2.0                   # complete only: then 404/500 this long

    [servers.on_demand]                      # optional: what POST /ckms/restore runs
    phases = [[1, 0.2], [4, 0.5], [7, 0.2]]

``phases`` lists ``[code, seconds]`` pairs (a code or a status name such as
``"RESTORE_KEYSTORES"``), codes strictly increasing. ``complete`` must end with
COMPLETED (7): after its duration the server restarts. ``fail`` must not contain
COMPLETED: after the last phase the server is IDLE again and the result is 1. ``stall``
must not contain COMPLETED: its last phase (whose duration may be left out) never ends,
and later restores never run. After the last restore the server is IDLE forever.

Ground truth (``ground_truth=PATH``): one JSON object per line, flushed per line, at the
true transition time: ``{"at", "server", "kind", "restore", ...}`` with ``kind``
``phase`` (``phase``, ``code``), ``completed`` (when COMPLETED is entered), ``failed``
(when it drops back to IDLE, or a restart interrupts it; ``phase`` is the last phase),
``stalled`` (when the phase that never ends is entered), ``restart_begin`` (``down``,
``starting``, ``manual``) and ``restart_end`` (when it answers normally again).
``restore`` counts the server's restores from 0 (null before the first).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import difflib
import enum
import hashlib
import json
import math
import os
import random
import re
import signal
import ssl
import sys
import tempfile
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, Final, Literal, Self

import anyio
import structlog
from aiohttp import web

from watcher.phases import Phase

_log = structlog.get_logger(__name__)

DEFAULT_API_BASE: Final = "/SKLM/rest/v1"
DEFAULT_PASSWORD: Final = "sim-password"  # noqa: S105 - simulator test data
PROGRESS_PATHS: Final = ("backupRestore", "restore")
LOGIN_FIELDS: Final = ("UserAuthId", "userAuthId")
FAULTS: Final = ("json_500", "json_404", "html_200", "html_500", "truncated")
#: What a progress path the server does not serve answers (always HTTP 404).
MISSING_PROGRESS_ANSWERS: Final = ("html", "ctgkm", "json", "empty")
DEFAULT_FAULTS: Final = ("json_500", "html_200", "html_500", "truncated")
OUTCOMES: Final = ("complete", "fail", "stall")
#: Keys of ``[watcher_defaults]`` (copied into the written config's ``[defaults]``).
WATCHER_SECONDS_KEYS: Final = (
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
#: What ``--write-config`` puts in ``[defaults]`` unless the scenario says otherwise.
SIMULATION_DEFAULTS: Final[Mapping[str, float | int]] = MappingProxyType(
    {
        "idle_interval": 1.0,
        "active_interval": 0.2,
        "timeout": 2.0,
        "restart_interval": 0.2,
        "restart_timeout": 30.0,
    }
)

Outcome = Literal["complete", "fail", "stall"]

# -- wire-format literals (deliberately not shared with watcher.client) -------------

_CTGKM6002E: Final = (
    "CTGKM6002E",
    "Bad Request: Invalid user authentication ID or invalid request format.",
)
_CTGKM6003E: Final = (
    "CTGKM6003E",
    "Authentication Failure: Incorrect userid or password",
)
_CTGKM6004E: Final = (
    "CTGKM6004E",
    "User is not authenticated or has already logged out",
)
_AUTH_RE: Final = re.compile(r"SKLMAuth\s+userAuthId=([^\s,]+)", re.IGNORECASE)
_SERVLET_500: Final = (
    "Error 500: javax.servlet.ServletException: com.fasterxml.jackson.databind."
    "exc.MismatchedInputException: No content to map due to end-of-input"
)
_JSON: Final = "application/json"
_HTML: Final = "text/html"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_API_BASE_RE: Final = re.compile(r"(/[A-Za-z0-9._~-]+)+")
#: Seconds ``SimulatedServer`` keeps trying to bind its port again after a restart.
_REBIND_PATIENCE: Final = 5.0


def _html_page(status: int, text: str) -> str:
    return (
        f"<!DOCTYPE html><html><head><title>Error {status}</title></head>"
        f"<body><h1>Error {status}: {text}</h1></body></html>"
    )


# -- the scenario ---------------------------------------------------------------------


class ScenarioError(Exception):
    """A scenario file or dict is unusable; ``problems`` lists every (key, reason)."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(
            f"  {key}: {reason}" if key else f"  {reason}"
            for key, reason in self.problems
        )
        super().__init__(f"invalid scenario {source}:\n{lines}")


@dataclass(frozen=True, slots=True)
class RestoreScript:
    """One scripted restore: IDLE for ``idle_before`` s, then ``phases`` in order.

    ``phases`` holds ``(phase, seconds)``; for ``stall`` the last duration is ignored.
    """

    phases: tuple[tuple[Phase, float], ...]
    outcome: Outcome = "complete"
    idle_before: float = 0.0
    restart_down: float = 3.0
    restart_starting: float = 2.0


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One simulated server as the scenario describes it (replicas already expanded)."""

    name: str
    username: str = "SKLMAdmin"
    password: str = field(default=DEFAULT_PASSWORD, repr=False)
    api_base: str = DEFAULT_API_BASE
    progress_paths: tuple[str, ...] = PROGRESS_PATHS
    #: The 404 body of a progress path not in ``progress_paths``.
    missing_progress_answer: str = "html"
    code_as_int: bool = False
    login_field: str = "UserAuthId"
    error_code_in_message: bool = False
    session_idle_timeout: float = 900.0
    latency: float = 0.0
    error_rate: float = 0.0
    faults: tuple[str, ...] = DEFAULT_FAULTS
    seed: int = 0
    tklm_version: str = "4.2.1.0"
    port: int = 0
    #: Seconds by which the first restore's ``idle_before`` is lengthened (replicas).
    offset: float = 0.0
    restores: tuple[RestoreScript, ...] = ()
    on_demand: RestoreScript | None = None
    #: The password ``--write-config`` gives the watcher (None: ``password``).
    watcher_password: str | None = field(default=None, repr=False)
    #: ``"restore"`` or ``"backupRestore"``: pin the watcher's progress path.
    watcher_progress_path: str | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole scenario: the servers and hints for the watcher config."""

    servers: tuple[ServerSpec, ...]
    watcher_defaults: Mapping[str, float | int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    description: str = ""
    source: Path | None = None

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: Path | None = None
    ) -> Scenario:
        """Build a scenario from parsed TOML (or a dict written in a test).

        Raises:
            ScenarioError: naming every bad key and why.
        """
        return _ScenarioReader(str(source) if source else "<dict>").scenario(
            data, source
        )


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario TOML file.

    Raises:
        ScenarioError: the file cannot be read or parsed, or has bad keys (all named).
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(
            str(path), [("", f"cannot read: {exc.strerror or exc}")]
        ) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), [("", f"not valid TOML: {exc}")]) from exc
    return Scenario.from_dict(data, source=path)


def scenario_path(name: str) -> Path:
    """Return the path of a shipped scenario (``demo``, ``fleet20``, ``basic``).

    Raises:
        FileNotFoundError: no shipped scenario has this name.
    """
    filename = name if name.endswith(".toml") else f"{name}.toml"
    here = Path(__file__).resolve().parent
    for directory in (here / "scenarios",):
        if (directory / filename).is_file():
            return directory / filename
    raise FileNotFoundError(f"no shipped scenario named {name!r}")


_SERVER_KEYS: Final = frozenset(
    {
        "name",
        "username",
        "password",
        "api_base",
        "progress_paths",
        "missing_progress_answer",
        "code_as_int",
        "login_field",
        "error_code_in_message",
        "session_idle_timeout",
        "latency",
        "error_rate",
        "faults",
        "seed",
        "tklm_version",
        "port",
        "count",
        "stagger",
        "restores",
        "on_demand",
        "watcher_password",
        "watcher_progress_path",
    }
)
_RESTORE_KEYS: Final = frozenset(
    {"idle_before", "phases", "outcome", "restart_down", "restart_starting"}
)
_TOP_KEYS: Final = frozenset({"description", "watcher_defaults", "defaults", "servers"})
_MISSING: Final = object()


class _ScenarioReader:
    """Validates a scenario dict, collecting every problem before raising."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[tuple[str, str]] = []

    def problem(self, key: str, reason: str) -> None:
        if (key, reason) not in self.problems:
            self.problems.append((key, reason))

    def scenario(self, data: Mapping[str, Any], source: Path | None) -> Scenario:
        self.unknown_keys("", data, _TOP_KEYS)
        description = data.get("description", "")
        if not isinstance(description, str):
            self.problem("description", "expected a string")
            description = ""
        hints = self.watcher_defaults(data.get("watcher_defaults", {}))
        defaults = data.get("defaults", {})
        if not isinstance(defaults, Mapping):
            self.problem("defaults", "expected a table")
            defaults = {}
        for key in ("name", "port"):
            if key in defaults:
                self.problem(f"defaults.{key}", "is per server; set it in [[servers]]")
        self.unknown_keys("defaults", defaults, _SERVER_KEYS)
        raw_servers = data.get("servers", _MISSING)
        servers: list[ServerSpec] = []
        if raw_servers is _MISSING:
            self.problem("servers", "missing: add at least one [[servers]] table")
        elif not isinstance(raw_servers, list) or not all(
            isinstance(s, Mapping) for s in raw_servers
        ):
            self.problem("servers", "expected an array of tables ([[servers]])")
        else:
            if not raw_servers:
                self.problem("servers", "empty: add at least one [[servers]] table")
            for index, raw in enumerate(raw_servers):
                servers.extend(self.server(index, defaults, raw))
        seen: set[str] = set()
        for spec in servers:
            if spec.name in seen:
                self.problem("servers", f"server name {spec.name!r} is used twice")
            seen.add(spec.name)
        if self.problems:
            raise ScenarioError(self.source, self.problems)
        return Scenario(
            servers=tuple(servers),
            watcher_defaults=MappingProxyType(hints),
            description=description,
            source=source,
        )

    def unknown_keys(
        self, prefix: str, table: Mapping[str, Any], allowed: Iterable[str]
    ) -> None:
        allowed = sorted(allowed)
        for key in table:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if key not in allowed:
                self.problem(_join(prefix, str(key)), f"unknown key{hint}")

    def watcher_defaults(self, raw: object) -> dict[str, float | int]:
        if not isinstance(raw, Mapping):
            self.problem("watcher_defaults", "expected a table")
            return {}
        self.unknown_keys(
            "watcher_defaults", raw, (*WATCHER_SECONDS_KEYS, "burst_polls")
        )
        out: dict[str, float | int] = {}
        for key, value in raw.items():
            path = f"watcher_defaults.{key}"
            if key == "burst_polls":
                count = self.integer(path, value, minimum=0)
                if count is not None:
                    out[key] = count
            elif key in WATCHER_SECONDS_KEYS:
                seconds = self.seconds(path, value, positive=True)
                if seconds is not None:
                    out[key] = seconds
        return out

    def server(
        self, index: int, defaults: Mapping[str, Any], raw: Mapping[str, Any]
    ) -> list[ServerSpec]:
        prefix = f"servers[{index}]"
        self.unknown_keys(prefix, raw, _SERVER_KEYS)
        inherited = {k: v for k, v in defaults.items() if k not in ("name", "port")}
        merged = {**inherited, **raw}

        def key(name: str) -> str:
            origin = prefix if name in raw else "defaults"
            return f"{origin}.{name}"

        def get(name: str, default: Any) -> Any:
            return merged.get(name, default)

        name = merged.get("name")
        if name is None:
            self.problem(f"{prefix}.name", "missing: every server needs a unique name")
        elif not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            self.problem(
                f"{prefix}.name",
                "expected 1 to 64 letters, digits, '.', '_' or '-' (not first)",
            )
            name = None
        fields: dict[str, Any] = {}
        for text_key in ("username", "password", "tklm_version"):
            value = get(text_key, _MISSING)
            if value is not _MISSING:
                if isinstance(value, str) and value:
                    fields[text_key] = value
                else:
                    self.problem(key(text_key), "expected a non-empty string")
        for optional_text in ("watcher_password",):
            value = get(optional_text, None)
            if value is not None:
                if isinstance(value, str) and value:
                    fields[optional_text] = value
                else:
                    self.problem(key(optional_text), "expected a non-empty string")
        api_base = get("api_base", DEFAULT_API_BASE)
        if isinstance(api_base, str) and _API_BASE_RE.fullmatch(api_base.rstrip("/")):
            fields["api_base"] = api_base.rstrip("/")
        else:
            self.problem(
                key("api_base"), "expected an absolute path such as /SKLM/rest/v1"
            )
        paths = get("progress_paths", list(PROGRESS_PATHS))
        if (
            not isinstance(paths, list)
            or not paths
            or not all(p in PROGRESS_PATHS for p in paths)
            or len(set(paths)) != len(paths)
        ):
            self.problem(
                key("progress_paths"),
                'expected a non-empty list of distinct "backupRestore" / "restore"',
            )
        else:
            fields["progress_paths"] = tuple(paths)
        missing = get("missing_progress_answer", "html")
        if missing in MISSING_PROGRESS_ANSWERS:
            fields["missing_progress_answer"] = missing
        else:
            self.problem(
                key("missing_progress_answer"),
                f"expected one of {', '.join(map(repr, MISSING_PROGRESS_ANSWERS))}",
            )
        pinned = get("watcher_progress_path", None)
        if pinned is not None:
            if pinned not in PROGRESS_PATHS:
                self.problem(
                    key("watcher_progress_path"),
                    'expected "backupRestore" or "restore"',
                )
            elif isinstance(paths, list) and pinned not in paths:
                self.problem(
                    key("watcher_progress_path"),
                    f"{pinned!r} is not in progress_paths, so the watcher would get 404",
                )
            else:
                fields["watcher_progress_path"] = pinned
        for flag in ("code_as_int", "error_code_in_message"):
            value = get(flag, False)
            if isinstance(value, bool):
                fields[flag] = value
            else:
                self.problem(key(flag), "expected true or false")
        login_field = get("login_field", "UserAuthId")
        if login_field in LOGIN_FIELDS:
            fields["login_field"] = login_field
        else:
            self.problem(key("login_field"), 'expected "UserAuthId" or "userAuthId"')
        timeout = self.seconds(
            key("session_idle_timeout"),
            get("session_idle_timeout", 900.0),
            positive=True,
        )
        latency = self.seconds(key("latency"), get("latency", 0.0))
        rate = self.seconds(key("error_rate"), get("error_rate", 0.0))
        if rate is not None and rate > 1:
            self.problem(key("error_rate"), "expected a fraction between 0 and 1")
        faults = get("faults", list(DEFAULT_FAULTS))
        if (
            not isinstance(faults, list)
            or not faults
            or not all(f in FAULTS for f in faults)
        ):
            self.problem(
                key("faults"), f"expected a non-empty list of {', '.join(FAULTS)}"
            )
        else:
            fields["faults"] = tuple(faults)
        seed = self.integer(key("seed"), get("seed", index))
        port = self.integer(key("port"), get("port", 0), minimum=0, maximum=65535)
        count = self.integer(key("count"), get("count", 1), minimum=1, maximum=9999)
        stagger = self.seconds(key("stagger"), get("stagger", 0.0))
        restores_raw = get("restores", [])
        restores: list[RestoreScript] = []
        if not isinstance(restores_raw, list):
            self.problem(
                key("restores"), "expected an array of tables ([[servers.restores]])"
            )
        else:
            for i, table in enumerate(restores_raw):
                script = self.restore(f"{key('restores')}[{i}]", table)
                if script is not None:
                    restores.append(script)
        on_demand = None
        if "on_demand" in merged:
            on_demand = self.restore(
                key("on_demand"), merged["on_demand"], on_demand=True
            )
        if (
            name is None
            or timeout is None
            or latency is None
            or rate is None
            or seed is None
            or port is None
            or count is None
            or stagger is None
        ):
            return []
        base = ServerSpec(
            name=name,
            session_idle_timeout=timeout,
            latency=latency,
            error_rate=rate,
            seed=seed,
            port=port,
            restores=tuple(restores),
            on_demand=on_demand,
            **fields,
        )
        if count == 1:
            return [base]
        width = max(3, len(str(count)))
        replicas = []
        for i in range(count):
            replica_name = f"{name}-{i + 1:0{width}d}"
            if not _NAME_RE.fullmatch(replica_name):
                self.problem(
                    key("name"), f"too long for {count} replicas ({replica_name})"
                )
                return []
            replicas.append(
                replace(
                    base,
                    name=replica_name,
                    seed=seed + i,
                    port=port + i if port else 0,
                    offset=i * stagger,
                )
            )
        return replicas

    def restore(
        self, prefix: str, raw: object, *, on_demand: bool = False
    ) -> RestoreScript | None:
        if not isinstance(raw, Mapping):
            self.problem(prefix, "expected a table")
            return None
        self.unknown_keys(prefix, raw, _RESTORE_KEYS)
        outcome = raw.get("outcome", "complete")
        if outcome not in OUTCOMES:
            self.problem(f"{prefix}.outcome", 'expected "complete", "fail" or "stall"')
            return None
        idle_before = self.seconds(f"{prefix}.idle_before", raw.get("idle_before", 0.0))
        if on_demand and "idle_before" in raw:
            self.problem(f"{prefix}.idle_before", "an on_demand restore starts at once")
        down = self.seconds(f"{prefix}.restart_down", raw.get("restart_down", 3.0))
        starting = self.seconds(
            f"{prefix}.restart_starting", raw.get("restart_starting", 2.0)
        )
        if outcome != "complete":
            for k in ("restart_down", "restart_starting"):
                if k in raw:
                    self.problem(f"{prefix}.{k}", "applies only to outcome = complete")
        phases = self.phases(f"{prefix}.phases", raw.get("phases", _MISSING), outcome)
        if phases is None or idle_before is None or down is None or starting is None:
            return None
        return RestoreScript(
            phases=phases,
            outcome=outcome,
            idle_before=idle_before,
            restart_down=down,
            restart_starting=starting,
        )

    def phases(
        self, key: str, raw: object, outcome: str
    ) -> tuple[tuple[Phase, float], ...] | None:
        if raw is _MISSING:
            self.problem(key, "missing: list the phases as [[code, seconds], ...]")
            return None
        if not isinstance(raw, list) or not raw:
            self.problem(key, "expected a non-empty list of [code, seconds] pairs")
            return None
        out: list[tuple[Phase, float]] = []
        ok = True
        for i, item in enumerate(raw):
            item_key = f"{key}[{i}]"
            last = i == len(raw) - 1
            may_omit = last and outcome == "stall"
            if (
                not isinstance(item, list)
                or not (1 if may_omit else 2) <= len(item) <= 2
            ):
                self.problem(item_key, "expected [code, seconds]")
                ok = False
                continue
            phase = _phase_of(item[0])
            if phase is None or phase is Phase.IDLE:
                self.problem(item_key, "expected a phase code 1..7 or a status name")
                ok = False
                continue
            seconds = self.seconds(item_key, item[1]) if len(item) == 2 else math.inf
            if seconds is None:
                ok = False
                continue
            if out and phase <= out[-1][0]:
                self.problem(
                    item_key, f"{phase.name} does not come after {out[-1][0].name}"
                )
                ok = False
            out.append((phase, math.inf if may_omit else seconds))
        if not ok:
            return None
        has_completed = any(p is Phase.COMPLETED for p, _ in out)
        if outcome == "complete" and out[-1][0] is not Phase.COMPLETED:
            self.problem(key, "outcome = complete must end with COMPLETED (7)")
            return None
        if outcome != "complete" and has_completed:
            self.problem(key, f"outcome = {outcome} must not reach COMPLETED (7)")
            return None
        return tuple(out)

    def seconds(self, key: str, raw: object, *, positive: bool = False) -> float | None:
        if (
            isinstance(raw, bool)
            or not isinstance(raw, int | float)
            or not math.isfinite(raw)
        ):
            self.problem(key, "expected a number of seconds")
            return None
        if raw < 0 or (positive and raw == 0):
            self.problem(
                key, "must be greater than 0" if positive else "must not be negative"
            )
            return None
        return float(raw)

    def integer(
        self,
        key: str,
        raw: object,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.problem(key, "expected an integer")
            return None
        if (minimum is not None and raw < minimum) or (
            maximum is not None and raw > maximum
        ):
            self.problem(key, f"expected an integer from {minimum} to {maximum}")
            return None
        return raw


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _phase_of(raw: object) -> Phase | None:
    if isinstance(raw, str):
        return Phase.from_status(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return Phase.from_code(raw)
    return None


# -- the timeline -----------------------------------------------------------------------


class Mode(enum.Enum):
    """What a simulated server is doing at some instant."""

    IDLE = "idle"
    RESTORING = "restoring"
    DOWN = "down"
    STARTING = "starting"


@dataclass(frozen=True, slots=True)
class _Segment:
    """A stretch of monotonic time with one answer to "what is the server doing?"."""

    start: float
    end: float
    mode: Mode
    phase: Phase
    #: Ordinal of the restore this belongs to (for IDLE: the last one), None before any.
    restore: int | None
    #: How many restores had begun by this segment.
    started: int
    #: ``restore/result`` during this segment.
    result: int
    #: Scripted restores that have not begun yet.
    remaining: tuple[RestoreScript, ...]


@dataclass(frozen=True, slots=True)
class _Action:
    """Something the driver does at ``at``: a ground-truth line and/or a socket change."""

    at: float
    truth: Mapping[str, Any] | None = None
    socket: Literal["close", "listen"] | None = None


class _Planner:
    """Lays out segments and actions from ``start`` on; pure apart from its own lists."""

    def __init__(
        self, start: float, *, started: int, result: int, restore: int | None
    ) -> None:
        self.t = start
        self.started = started
        self.result = result
        self.restore_ordinal = restore
        self.segments: list[_Segment] = []
        self.actions: list[_Action] = []

    def segment(
        self,
        mode: Mode,
        duration: float,
        remaining: tuple[RestoreScript, ...],
        phase: Phase = Phase.IDLE,
    ) -> None:
        end = self.t + duration
        self.segments.append(
            _Segment(
                self.t,
                end,
                mode,
                phase,
                self.restore_ordinal,
                self.started,
                self.result,
                remaining,
            )
        )
        self.t = end

    def truth(self, kind: str, **fields: Any) -> None:
        self.actions.append(
            _Action(self.t, {"kind": kind, "restore": self.restore_ordinal, **fields})
        )

    def restart(
        self,
        down: float,
        starting: float,
        remaining: tuple[RestoreScript, ...],
        *,
        manual: bool,
    ) -> None:
        self.actions.append(
            _Action(
                self.t,
                {
                    "kind": "restart_begin",
                    "restore": self.restore_ordinal,
                    "down": down,
                    "starting": starting,
                    "manual": manual,
                },
                socket="close",
            )
        )
        self.result = -1
        self.segment(Mode.DOWN, down, remaining)
        self.actions.append(_Action(self.t, socket="listen"))
        self.segment(Mode.STARTING, starting, remaining)
        self.truth("restart_end")

    def run(
        self, script: RestoreScript, remaining: tuple[RestoreScript, ...], *, wait: bool
    ) -> bool:
        """Plan one restore; False if it stalls (nothing after it ever happens)."""
        if wait:
            self.segment(Mode.IDLE, script.idle_before, (script, *remaining))
        self.restore_ordinal = self.started
        self.started += 1
        for i, (phase, seconds) in enumerate(script.phases):
            last = i == len(script.phases) - 1
            stalls = last and script.outcome == "stall"
            self.truth("phase", phase=phase.name, code=int(phase))
            if phase is Phase.COMPLETED:
                self.result = 0
                self.truth("completed", phase=phase.name, code=int(phase))
            if stalls:
                self.truth("stalled", phase=phase.name, code=int(phase))
            self.segment(
                Mode.RESTORING,
                math.inf if stalls else seconds,
                remaining,
                phase,
            )
        if script.outcome == "stall":
            return False
        if script.outcome == "fail":
            self.result = 1
            last_phase = script.phases[-1][0]
            self.truth("failed", phase=last_phase.name, code=int(last_phase))
        else:
            self.restart(
                script.restart_down, script.restart_starting, remaining, manual=False
            )
        return True

    def run_all(
        self, scripts: tuple[RestoreScript, ...], *, offset: float = 0.0
    ) -> None:
        for i, script in enumerate(scripts):
            if i == 0 and offset:
                script = replace(script, idle_before=script.idle_before + offset)
            if not self.run(script, scripts[i + 1 :], wait=True):
                return
        self.segment(Mode.IDLE, math.inf, ())


# -- one simulated server ------------------------------------------------------------------

Handler = Callable[[web.BaseRequest, float, _Segment], Awaitable[web.StreamResponse]]


class RestoreRunning(RuntimeError):
    """A restore was asked for while one runs (SKLM runs one at a time)."""


class SimulatedServer:
    """One simulated SKLM server: its HTTP listener, timeline, sessions and counters.

    Counters (for tests): ``requests`` counts ``"METHOD /path"`` (the path relative to
    ``api_base``) of every request that reached the server; ``logins``,
    ``failed_logins``, ``logouts``, ``rejected`` (401 CTGKM6004E answers), ``bad_auth``
    (400 CTGKM6002E answers) and ``faults`` (injected, by kind).
    """

    def __init__(
        self,
        spec: ServerSpec,
        *,
        host: str,
        ssl_context: ssl.SSLContext | None,
        record: Callable[[str, float, Mapping[str, Any]], None],
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.host = host
        self.port = spec.port
        self._ssl = ssl_context
        self._record = record
        self._rng = random.Random(spec.seed)  # noqa: S311 - fault injection, not crypto
        self._sessions: dict[str, float] = {}
        self._runner: web.ServerRunner | None = None
        self._web: web.Server | None = None
        # Until start(): IDLE, as a server whose scripts have not begun.
        self._segments = [
            _Segment(-math.inf, math.inf, Mode.IDLE, Phase.IDLE, None, 0, -1, ())
        ]
        self._starts = [-math.inf]
        self._teardowns: set[asyncio.Task[None]] = set()
        self._actions: list[_Action] = []
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._closed_count = 0
        self._closed = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.logins = 0
        self.failed_logins = 0
        self.logouts = 0
        self.rejected = 0
        self.bad_auth = 0
        base = spec.api_base
        routes: dict[str, dict[str, Handler]] = {
            "/ckms/login": {"POST": self._login},
            "/ckms/logout": {"DELETE": self._logout},
            "/ckms/restore/result": {"GET": self._result},
            "/ckms/versionInfo": {"GET": self._version},
            "/ckms/restore": {"POST": self._restore},
        }
        for path in PROGRESS_PATHS:
            if path in spec.progress_paths:
                routes[f"/ckms/{path}/progress"] = {"GET": self._progress}
            elif spec.missing_progress_answer != "html":
                # Answered by the REST application (any method, no session
                # needed), not by the servlet container's file-not-found page.
                routes[f"/ckms/{path}/progress"] = dict.fromkeys(
                    ("GET", "POST", "PUT", "DELETE"), self._missing_progress
                )
        self._routes = {base + suffix: methods for suffix, methods in routes.items()}

    # -- public ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Scheme, host and port, e.g. ``http://127.0.0.1:41234``."""
        scheme = "https" if self._ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The REST base URL, e.g. ``http://127.0.0.1:41234/SKLM/rest/v1``."""
        return self.url + self.spec.api_base

    @property
    def listening(self) -> bool:
        """Whether the port accepts connections right now."""
        return self._runner is not None

    @property
    def sessions(self) -> int:
        """How many session ids the server holds (expired ones included until used)."""
        return len(self._sessions)

    def mode(self, now: float | None = None) -> Mode:
        """What the server is doing now (or at monotonic ``now``)."""
        return self._segment_at(time.monotonic() if now is None else now).mode

    def phase(self, now: float | None = None) -> Phase | None:
        """The true phase now (or at monotonic ``now``); None while down or starting."""
        segment = self._segment_at(time.monotonic() if now is None else now)
        if segment.mode in (Mode.DOWN, Mode.STARTING):
            return None
        return segment.phase

    def restore_result(self, now: float | None = None) -> int:
        """What ``restore/result`` answers now: -1, 0 or 1."""
        return self._segment_at(time.monotonic() if now is None else now).result

    def expire_sessions(self) -> None:
        """Forget every session id: the next authenticated request gets CTGKM6004E."""
        self._sessions.clear()

    def start_restore(self, script: RestoreScript | None = None) -> None:
        """Start ``script`` (default: the scenario's ``on_demand``) now.

        Scripted restores not begun yet follow it (their ``idle_before`` counts afresh).

        Raises:
            RestoreRunning: a restore is running, or the server is restarting.
            ValueError: no script given and the scenario has no ``on_demand``.
        """
        script = script or self.spec.on_demand
        if script is None:
            raise ValueError(f"{self.name} has no on_demand restore script")
        now = time.monotonic()
        current = self._segment_at(now)
        if current.mode is not Mode.IDLE:
            raise RestoreRunning(f"{self.name} is {current.mode.value}")
        planner = _Planner(
            now, started=current.started, result=current.result, restore=current.restore
        )
        if planner.run(script, current.remaining, wait=False):
            planner.run_all(current.remaining)
        self._replan(now, planner)

    async def restart(self, down: float = 0.5, starting: float = 0.5) -> None:
        """Restart now: closed for ``down`` s, then 404/500 for ``starting`` s, then IDLE.

        A running restore is abandoned (ground truth ``failed``); scripted restores not
        begun yet follow the restart. Returns once the listening socket is closed and
        every connection dropped.
        """
        now = time.monotonic()
        current = self._segment_at(now)
        planner = _Planner(
            now, started=current.started, result=current.result, restore=current.restore
        )
        if current.mode is Mode.RESTORING and current.phase is not Phase.COMPLETED:
            planner.truth("failed", phase=current.phase.name, code=int(current.phase))
        planner.restart(down, starting, current.remaining, manual=True)
        planner.run_all(current.remaining)
        closed = self._closed_count
        self._replan(now, planner)
        while self._closed_count == closed:
            await self._closed.wait()

    async def wait_settled(self) -> None:
        """Wait until nothing more is scheduled: IDLE forever or stalled forever."""
        while not self._settled.is_set():
            await self._settled.wait()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, t0: float) -> None:
        """Plan the scripted restores from monotonic ``t0`` (after :meth:`listen`)."""
        planner = _Planner(t0, started=0, result=-1, restore=None)
        planner.run_all(self.spec.restores, offset=self.spec.offset)
        self._replan(t0, planner)

    async def listen(self) -> None:
        """Bind the port (the same one again after a restart)."""
        if self._runner is not None:
            return
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=0.01)
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self.port, ssl_context=self._ssl, reuse_address=True
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner, self._web = runner, server

    async def close(self) -> None:
        """Stop the driver and the listener."""
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        await self._unlisten()
        for task in list(self._teardowns):
            await task

    async def _unlisten(self) -> None:
        runner, server = self._runner, self._web
        self._runner = self._web = None
        if runner is None or server is None:
            return
        # A restarting process drops its connections at once, no graceful close.
        for connection in list(server.connections):
            transport = connection.transport
            if transport is not None:
                transport.abort()
        # Shielded, so that close() cancelling the driver cannot leave a socket open;
        # close() awaits what is still running.
        task = asyncio.ensure_future(runner.cleanup())
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)
        await asyncio.shield(task)

    # -- timeline and driver --------------------------------------------------------------

    def _segment_at(self, now: float) -> _Segment:
        index = bisect.bisect_right(self._starts, now) - 1
        return self._segments[max(index, 0)]

    def _replan(self, now: float, planner: _Planner) -> None:
        keep = [s for s in self._segments if s.start < now]
        if keep:
            last = keep[-1]
            keep[-1] = replace(last, end=min(last.end, now))
        self._segments = keep + planner.segments
        self._starts = [s.start for s in self._segments]
        # Actions due before the new plan's start but not yet performed still happen.
        self._actions = [a for a in self._actions if a.at < now] + planner.actions
        self._settled.clear()
        self._wake.set()
        if self._driver is None:
            self._driver = asyncio.create_task(
                self._drive(), name=f"simulate {self.name}"
            )

    async def _drive(self) -> None:
        while True:
            if not self._actions:
                self._settled.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            action = self._actions[0]
            delay = action.at - time.monotonic()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            self._actions.pop(0)
            if action.truth is not None:
                self._record(self.name, action.at, action.truth)
            if action.socket == "close":
                self._sessions.clear()
                await self._unlisten()
                self._closed_count += 1
                self._closed.set()
                self._closed = asyncio.Event()
            elif action.socket == "listen":
                await self._relisten()

    async def _relisten(self) -> None:
        deadline = time.monotonic() + _REBIND_PATIENCE
        while True:
            try:
                await self.listen()
            except OSError as exc:
                if time.monotonic() > deadline:
                    _log.error(
                        "simulator.rebind_failed", server=self.name, error=str(exc)
                    )
                    return
                await asyncio.sleep(0.02)
            else:
                return

    # -- HTTP -------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        base = self.spec.api_base
        shown = path[len(base) :] if path.startswith(base + "/") else path
        self.requests[f"{request.method} {shown}"] += 1
        if self.spec.latency:
            await asyncio.sleep(self.spec.latency)
        now = time.monotonic()
        segment = self._segment_at(now)
        if segment.mode is Mode.DOWN:
            # The process is gone: the connection dies without an answer.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if segment.mode is Mode.STARTING:
            return self._starting_page(path, now, segment)
        methods = self._routes.get(path)
        if methods is None:
            return web.Response(
                status=404,
                text=_html_page(404, f"SRVE0190E: File not found: {path}"),
                content_type=_HTML,
            )
        handler = methods.get(request.method)
        if handler is None:
            return web.Response(
                status=405,
                text="Error 405: Method Not Allowed",
                content_type="text/plain",
                headers={"Allow": ", ".join(methods)},
            )
        return await handler(request, now, segment)

    def _starting_page(self, path: str, now: float, segment: _Segment) -> web.Response:
        if now < (segment.start + segment.end) / 2:
            text = f"SRVE0255E: A WebGroup/Virtual Host to handle {path} has not been defined."
            return web.Response(
                status=404, text=_html_page(404, text), content_type=_HTML
            )
        text = "SRVE0207E: Uncaught initialization exception created by servlet"
        return web.Response(status=500, text=_html_page(500, text), content_type=_HTML)

    def _json(self, status: int, body: Mapping[str, Any]) -> web.Response:
        return web.Response(
            status=status,
            text=json.dumps(body, separators=(",", ":")),
            content_type=_JSON,
        )

    def _error(self, status: int, error: tuple[str, str]) -> web.Response:
        code, text = error
        body: dict[str, str] = {} if self.spec.error_code_in_message else {"code": code}
        body["message"] = f"{code} {text}"
        return self._json(status, body)

    def _code(self, value: int) -> int | str:
        return value if self.spec.code_as_int else str(value)

    def _authenticate(
        self, request: web.BaseRequest, now: float
    ) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        match = _AUTH_RE.fullmatch(header.strip())
        if match is None:
            self.bad_auth += 1
            return self._error(400, _CTGKM6002E)
        session = match[1]
        last_used = self._sessions.get(session)
        if last_used is None or now - last_used > self.spec.session_idle_timeout:
            self._sessions.pop(session, None)
            self.rejected += 1
            return self._error(401, _CTGKM6004E)
        self._sessions[session] = now
        return None

    async def _json_body(self, request: web.BaseRequest) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    async def _login(
        self, request: web.BaseRequest, now: float, segment: _Segment
    ) -> web.StreamResponse:
        body = await self._json_body(request)
        if body is None:
            return web.Response(
                status=500, text=_SERVLET_500, content_type="text/plain"
            )
        if (
            body.get("userid") != self.spec.username
            or body.get("password") != self.spec.password
        ):
            self.failed_logins += 1
            return self._error(401, _CTGKM6003E)
        session = str(uuid.uuid4())
        self._sessions[session] = now
        self.logins += 1
        return self._json(200, {self.spec.login_field: session})

    async def _logout(
        self, request: web.BaseRequest, now: float, segment: _Segment
    ) -> web.StreamResponse:
        body = await self._json_body(request) or {}
        session = next(
            (
                v
                for k, v in body.items()
                if k.lower() == "userauthid" and isinstance(v, str)
            ),
            None,
        )
        if session is None:
            match = _AUTH_RE.fullmatch(request.headers.get("Authorization", "").strip())
            session = match[1] if match else None
        if session is None:
            self.bad_auth += 1
            return self._error(400, _CTGKM6002E)
        if self._sessions.pop(session, None) is None:
            self.rejected += 1
            return self._error(401, _CTGKM6004E)
        self.logouts += 1
        return self._json(200, {"message": "User logged out"})

    async def _progress(
        self, request: web.BaseRequest, now: float, segment: _Segment
    ) -> web.StreamResponse:
        rejected = self._authenticate(request, now)
        if rejected is not None:
            return rejected
        if self.spec.error_rate and self._rng.random() < self.spec.error_rate:
            return self._fault(segment)
        return self._json(
            200, {"code": self._code(int(segment.phase)), "status": segment.phase.name}
        )

    async def _missing_progress(
        self, request: web.BaseRequest, now: float, segment: _Segment
    ) -> web.StreamResponse:
        kind = self.spec.missing_progress_answer
        if kind == "ctgkm":
            return self._error(
                404, ("CTGKM6005E", "The requested resource was not found (simulated).")
            )
        if kind == "json":
            return self._json(404, {"error": "Not Found", "status": 404})
        return web.Response(status=404)

    def _fault(self, segment: _Segment) -> web.Response:
        kind = self._rng.choice(self.spec.faults)
        self.faults[kind] += 1
        if kind == "json_500":
            return self._error(
                500, ("CTGKM0999E", "An internal error occurred (simulated).")
            )
        if kind == "json_404":
            return self._error(404, ("CTGKM0998E", "The request failed (simulated)."))
        if kind in ("html_200", "html_500"):
            status = 200 if kind == "html_200" else 500
            page = "<!DOCTYPE html><html><head><title>IBM Security Key Lifecycle Manager</title>"
            page += "</head><body>Session expired. Please log in again.</body></html>"
            return web.Response(status=status, text=page, content_type=_HTML)
        whole = json.dumps(
            {"code": self._code(int(segment.phase)), "status": segment.phase.name},
            separators=(",", ":"),
        )
        cut = self._rng.randrange(1, len(whole) - 1)
        return web.Response(status=200, text=whole[:cut], content_type=_JSON)

    async def _result(
        self, request: web.BaseRequest, now: float, segment: _Segment
    ) -> web.StreamResponse:
        rejected = self._authenticate(request, now)
        if rejected is not None:
            return rejected
        return self._json(200, {"code": self._code(segment.result)})

    async def _version(
        self, request: web.BaseRequest, now: float, segment: _Segment
    ) -> web.StreamResponse:
        rejected = self._authenticate(request, now)
        if rejected is not None:
            return rejected
        return self._json(200, {"tklm_version": self.spec.tklm_version})

    async def _restore(
        self, request: web.BaseRequest, now: float, segment: _Segment
    ) -> web.StreamResponse:
        rejected = self._authenticate(request, now)
        if rejected is not None:
            return rejected
        body = await self._json_body(request)
        if body is None:
            return web.Response(
                status=500, text=_SERVLET_500, content_type="text/plain"
            )
        if (
            not isinstance(body.get("backupFilePath"), str)
            or not body["backupFilePath"]
        ):
            return self._error(
                400, ("CTGKM0630E", "Validation error: backupFilePath is required.")
            )
        if self.spec.on_demand is None:
            return self._error(
                400,
                (
                    "CTGKM0630E",
                    "Validation error: this simulated server has no on_demand restore.",
                ),
            )
        try:
            self.start_restore(self.spec.on_demand)
        except RestoreRunning:
            return self._error(
                409,
                (
                    "CTGKM0630E",
                    "Validation error: a backup or restore is already running.",
                ),
            )
        return self._json(200, {"code": self._code(0), "message": "Restore started"})


# -- the fleet ---------------------------------------------------------------------------


class Simulator:
    """Every server of a scenario, listening on loopback; an async context manager.

    ``urls`` maps each server name to its ``scheme://host:port``; ``truth`` holds the
    ground-truth lines written so far (also appended to ``ground_truth`` if given).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        ground_truth: Path | None = None,
    ) -> None:
        self.scenario = scenario
        self.host = host
        self.ssl_context = ssl_context
        self.ground_truth = ground_truth
        self.truth: list[dict[str, Any]] = []
        self.urls: dict[str, str] = {}
        self.started_at = 0.0
        self._wall0 = datetime.now(UTC)
        self._truth_file: IO[str] | None = None
        self._truth_added = asyncio.Event()
        self._servers = {
            spec.name: SimulatedServer(
                spec, host=host, ssl_context=ssl_context, record=self._record
            )
            for spec in scenario.servers
        }

    @property
    def servers(self) -> Mapping[str, SimulatedServer]:
        """Every simulated server by name."""
        return MappingProxyType(self._servers)

    def server(self, name: str) -> SimulatedServer:
        """The simulated server called ``name``."""
        return self._servers[name]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind every port, then start every script at the same instant."""
        if self.ground_truth is not None:
            self._truth_file = _open_append(self.ground_truth)
        try:
            for server in self._servers.values():
                await server.listen()
        except BaseException:
            await self.close()
            raise
        self.urls = {name: server.url for name, server in self._servers.items()}
        self.started_at = time.monotonic()
        self._wall0 = datetime.now(UTC)
        for server in self._servers.values():
            await server.start(self.started_at)

    async def close(self) -> None:
        """Stop every server and close the ground-truth file."""
        for server in self._servers.values():
            await server.close()
        if self._truth_file is not None:
            self._truth_file.close()
            self._truth_file = None

    def wall(self, monotonic: float) -> datetime:
        """The UTC instant of a monotonic reading (this process's clock pairing)."""
        return self._wall0 + timedelta(seconds=monotonic - self.started_at)

    async def wait_settled(self) -> None:
        """Wait until every server is IDLE forever or stalled forever."""
        for server in self._servers.values():
            await server.wait_settled()

    async def wait_truth(
        self,
        kind: str,
        *,
        server: str | None = None,
        restore: int | None = None,
        phase: str | None = None,
    ) -> dict[str, Any]:
        """Wait for (or find) the first ground-truth line matching every given field.

        Unbounded: wrap it in a timeout (``asyncio.timeout`` / ``anyio.fail_after``).
        """
        wanted = {"kind": kind, "server": server, "restore": restore, "phase": phase}
        seen = 0
        while True:
            for line in self.truth[seen:]:
                if all(v is None or line.get(k) == v for k, v in wanted.items()):
                    return line
            seen = len(self.truth)
            self._truth_added.clear()
            await self._truth_added.wait()

    def _record(self, server: str, at: float, fields: Mapping[str, Any]) -> None:
        line: dict[str, Any] = {
            "at": _iso_ms(self.wall(at)),
            "server": server,
            **fields,
        }
        self.truth.append(line)
        if self._truth_file is not None:
            self._truth_file.write(json.dumps(line) + "\n")
            self._truth_file.flush()
        self._truth_added.set()


def _iso_ms(at: datetime) -> str:
    """``2026-11-29T10:00:01.250Z``."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _open_append(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")


# -- TLS --------------------------------------------------------------------------------


class TlsUnavailableError(RuntimeError):
    """trustme, which makes the simulator's throw-away CA, is not installed.

    It is in the ``simulator`` and ``dev`` extras only: a plain ``pip install`` lacks
    it. (A RuntimeError, as before, for callers that caught that.)
    """


def make_tls(
    hostnames: Sequence[str] = ("127.0.0.1", "localhost"),
) -> tuple[bytes, ssl.SSLContext, str]:
    """Make a throw-away CA and a server certificate for ``hostnames``.

    Returns:
        The CA certificate (PEM), a server ``SSLContext`` presenting the leaf, and the
        leaf's SHA-256 fingerprint as lowercase hex (for ``tls_fingerprint``).

    Raises:
        TlsUnavailableError: trustme is not installed.
    """
    try:
        import trustme
    except ImportError as exc:
        raise TlsUnavailableError(
            "the simulator's --tls needs trustme: pip install 'sklm-watcher[simulator]'"
        ) from exc
    ca = trustme.CA(organization_name="sklm-watcher simulator")
    leaf = ca.issue_cert(*hostnames)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    leaf_pem = leaf.cert_chain_pems[0].bytes().decode("ascii")
    fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf_pem)).hexdigest()
    ca_pem: bytes = ca.cert_pem.bytes()
    return ca_pem, context, fingerprint


# -- the watcher configuration for a simulated fleet ------------------------------------


def write_watcher_config(
    simulator: Simulator, path: Path, *, state_dir: Path, ca_file: Path | None = None
) -> None:
    """Write a watcher TOML for the running fleet, and its password files (mode 0600).

    Passwords go to ``<config stem>.password-N`` files beside the config, one per
    distinct password; the config names them in ``password_file``.
    """
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir.resolve()
    password_files: dict[str, Path] = {}
    for spec in simulator.scenario.servers:
        password = spec.watcher_password or spec.password
        if password not in password_files:
            target = path.with_name(f"{path.stem}.password-{len(password_files) + 1}")
            _write_private(target, password + "\n")
            password_files[password] = target
    defaults: dict[str, float | int] = {
        **SIMULATION_DEFAULTS,
        **simulator.scenario.watcher_defaults,
    }
    source = simulator.scenario.source
    lines = [
        "# Watcher configuration for a simulated SKLM fleet, written by",
        f"# `sklm-watcher simulate {source or ''}`. The servers exist while it runs.",
        "",
        "[watcher]",
        f"state_dir = {_toml(str(state_dir))}",
        f"audit_log = {_toml(str(state_dir / 'events.jsonl'))}",
        "",
        "[defaults]",
        *(f"{key} = {value!r}" for key, value in defaults.items()),
    ]
    if ca_file is not None:
        lines.append(f"ca_file = {_toml(str(ca_file.resolve()))}")
    else:
        lines.append("allow_insecure_http = true")
    for spec in simulator.scenario.servers:
        server = simulator.server(spec.name)
        password = spec.watcher_password or spec.password
        lines += [
            "",
            "[[servers]]",
            f"name = {_toml(spec.name)}",
            f"url = {_toml(server.url)}",
            f"username = {_toml(spec.username)}",
            f"password_file = {_toml(str(password_files[password]))}",
        ]
        if spec.api_base != DEFAULT_API_BASE:
            lines.append(f"api_base = {_toml(spec.api_base)}")
        if spec.watcher_progress_path:
            progress = f"{spec.api_base}/ckms/{spec.watcher_progress_path}/progress"
            lines.append(f"progress_path = {_toml(progress)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _toml(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, given non-ASCII kept literal)."""
    return json.dumps(text, ensure_ascii=False)


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)


# -- the `simulate` command -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sklm-watcher simulate`` arguments to ``parser``."""
    parser.add_argument("scenario", type=Path, help="the scenario TOML file")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write every file here, created if missing (default: a new temporary "
        "directory, printed as `out DIR`); relative FILE / DIR arguments below are "
        "inside it, absolute ones are used as given",
    )
    parser.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a throw-away CA"
    )
    parser.add_argument(
        "--ca-out",
        type=Path,
        metavar="FILE",
        help="with --tls: write the CA certificate here (default: ca.pem)",
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        metavar="FILE",
        help="append every true transition to this JSON Lines file",
    )
    parser.add_argument(
        "--write-config",
        type=Path,
        metavar="FILE",
        help="write a watcher configuration for the simulated fleet (and its "
        "password files beside it)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the state_dir written by --write-config (default: state)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )


async def run_from_args(args: argparse.Namespace) -> int:
    """Run ``sklm-watcher simulate`` until SIGTERM or SIGINT; return the exit code.

    Prints ``listening on URL name=NAME`` per server, ``out DIR`` (the output
    folder), ``ca-file PATH`` (with --tls), ``config PATH`` (with --write-config),
    then ``ready``. Every file goes into the output folder (``--out``, else a new
    temporary directory, left in place for the watcher to use) unless given as an
    absolute path: run from a checkout, it leaves nothing in the checkout.
    """
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        _say(str(exc), error=True)
        return 2
    if args.ca_out is not None and not args.tls:
        _say("--ca-out needs --tls", error=True)
        return 2
    ssl_context: ssl.SSLContext | None = None
    ca_pem = b""
    if args.tls:
        try:
            ca_pem, ssl_context, _ = make_tls(
                tuple(dict.fromkeys((args.host, "localhost")))
            )
        except TlsUnavailableError as exc:
            _say(str(exc), error=True)
            return 2
    try:
        out = output_folder(args.out)
    except OSError as exc:
        _say(f"cannot create the output folder {args.out}: {exc.strerror}", error=True)
        return 1
    ca_file: Path | None = None
    if args.tls:
        ca_file = out / (args.ca_out or Path("ca.pem"))
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca_file.write_bytes(ca_pem)
    ground_truth = None if args.ground_truth is None else out / args.ground_truth
    simulator = Simulator(
        scenario,
        host=args.host,
        ssl_context=ssl_context,
        ground_truth=ground_truth,
    )
    try:
        await simulator.start()
    except OSError as exc:
        _say(f"cannot listen on {args.host}: {exc.strerror or exc}", error=True)
        return 1
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            for name, url in simulator.urls.items():
                _say(f"listening on {url} name={name}")
            _say(f"out {out}")
            if ca_file is not None:
                _say(f"ca-file {ca_file}")
            if args.write_config is not None:
                config_file = out / args.write_config
                write_watcher_config(
                    simulator,
                    config_file,
                    state_dir=out / (args.state_dir or Path("state")),
                    ca_file=ca_file,
                )
                _say(f"config {config_file}")
            _say("ready")
            async for _ in signals:
                break
    finally:
        with anyio.CancelScope(shield=True):
            await simulator.close()
    return 0


def output_folder(out: Path | None) -> Path:
    """The absolute output folder of ``simulate``: ``out`` (created if missing) or new.

    Raises:
        OSError: the folder cannot be created.
    """
    if out is None:
        return Path(tempfile.mkdtemp(prefix="sklm-sim-"))
    folder = out.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _say(line: str, *, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    stream.write(line + "\n")
    stream.flush()
