"""Scenarios: what the simulated servers do, read from TOML and validated.

A scenario names the servers, their wire variant and their scripted restores.
:func:`load_scenario` reads a file, :meth:`Scenario.from_dict` a dict; both collect
every problem before raising :class:`~watcher.errors.ScenarioError`.

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
    fault_message = "..."                    # the text of a json_500 / json_404 fault
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
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from watcher.errors import ScenarioError
from watcher.phases import Phase

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

Outcome = Literal["complete", "fail", "stall"]

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_API_BASE_RE: Final = re.compile(r"(/[A-Za-z0-9._~-]+)+")


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
    #: The ``message`` text of a JSON fault after its CTGKM id (None: the stock one);
    #: hostile text here shows how the watcher's views treat what SKLM says.
    fault_message: str | None = None
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
    here = Path(__file__).resolve().parent.parent
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
        "fault_message",
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


@dataclass(frozen=True, slots=True)
class _Table:
    """One ``[[servers]]`` table merged over ``[defaults]``, naming each key's origin."""

    prefix: str
    raw: Mapping[str, Any]
    merged: Mapping[str, Any]

    def key(self, name: str) -> str:
        """Where a problem with ``name`` is reported: the table or ``defaults``."""
        origin = self.prefix if name in self.raw else "defaults"
        return f"{origin}.{name}"

    def get(self, name: str, default: Any) -> Any:
        """The merged value of ``name``, or ``default``."""
        return self.merged.get(name, default)


@dataclass(frozen=True, slots=True)
class _Placement:
    """Where a server's replicas go: seeds, ports and start offsets from these."""

    seed: int
    port: int
    count: int
    stagger: float


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
        """Read ``servers[index]`` over ``defaults``: one spec, or its replicas.

        Every helper below reports its own problems, in the order the keys were
        always checked, so the problem list of a bad file does not change.
        """
        prefix = f"servers[{index}]"
        self.unknown_keys(prefix, raw, _SERVER_KEYS)
        inherited = {k: v for k, v in defaults.items() if k not in ("name", "port")}
        table = _Table(prefix, raw, {**inherited, **raw})
        name = self.server_name(table)
        fields: dict[str, Any] = {}
        self.texts(table, fields)
        self.wire(table, fields)
        traffic_ok = self.traffic(table, fields)
        placement = self.placement(table, index)
        restores, on_demand = self.scripts(table)
        if name is None or not traffic_ok or placement is None:
            return []
        base = ServerSpec(
            name=name,
            seed=placement.seed,
            port=placement.port,
            restores=restores,
            on_demand=on_demand,
            **fields,
        )
        return self.replicas(table, base, placement)

    def server_name(self, table: _Table) -> str | None:
        """The server's ``name``, or None (reported) when missing or malformed."""
        name = table.merged.get("name")
        if name is None:
            self.problem(
                f"{table.prefix}.name", "missing: every server needs a unique name"
            )
            return None
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            self.problem(
                f"{table.prefix}.name",
                "expected 1 to 64 letters, digits, '.', '_' or '-' (not first)",
            )
            return None
        return name

    def texts(self, table: _Table, fields: dict[str, Any]) -> None:
        """Credentials and the version string: non-empty strings when given."""
        for text_key in ("username", "password", "tklm_version"):
            value = table.get(text_key, _MISSING)
            if value is not _MISSING:
                if isinstance(value, str) and value:
                    fields[text_key] = value
                else:
                    self.problem(table.key(text_key), "expected a non-empty string")
        value = table.get("fault_message", None)
        if value is not None:
            if isinstance(value, str) and value:
                fields["fault_message"] = value
            else:
                self.problem(table.key("fault_message"), "expected a non-empty string")
        value = table.get("watcher_password", None)
        if value is not None:
            if isinstance(value, str) and value:
                fields["watcher_password"] = value
            else:
                self.problem(
                    table.key("watcher_password"), "expected a non-empty string"
                )

    def wire(self, table: _Table, fields: dict[str, Any]) -> None:
        """The wire variant: base path, progress paths, field names, code types."""
        api_base = table.get("api_base", DEFAULT_API_BASE)
        if isinstance(api_base, str) and _API_BASE_RE.fullmatch(api_base.rstrip("/")):
            fields["api_base"] = api_base.rstrip("/")
        else:
            self.problem(
                table.key("api_base"), "expected an absolute path such as /SKLM/rest/v1"
            )
        paths = table.get("progress_paths", list(PROGRESS_PATHS))
        if (
            not isinstance(paths, list)
            or not paths
            or not all(p in PROGRESS_PATHS for p in paths)
            or len(set(paths)) != len(paths)
        ):
            self.problem(
                table.key("progress_paths"),
                'expected a non-empty list of distinct "backupRestore" / "restore"',
            )
        else:
            fields["progress_paths"] = tuple(paths)
        missing = table.get("missing_progress_answer", "html")
        if missing in MISSING_PROGRESS_ANSWERS:
            fields["missing_progress_answer"] = missing
        else:
            self.problem(
                table.key("missing_progress_answer"),
                f"expected one of {', '.join(map(repr, MISSING_PROGRESS_ANSWERS))}",
            )
        self.pinned_path(table, paths, fields)
        for flag in ("code_as_int", "error_code_in_message"):
            value = table.get(flag, False)
            if isinstance(value, bool):
                fields[flag] = value
            else:
                self.problem(table.key(flag), "expected true or false")
        login_field = table.get("login_field", "UserAuthId")
        if login_field in LOGIN_FIELDS:
            fields["login_field"] = login_field
        else:
            self.problem(
                table.key("login_field"), 'expected "UserAuthId" or "userAuthId"'
            )

    def pinned_path(self, table: _Table, paths: object, fields: dict[str, Any]) -> None:
        """``watcher_progress_path``: one of the paths this server serves."""
        pinned = table.get("watcher_progress_path", None)
        if pinned is None:
            return
        if pinned not in PROGRESS_PATHS:
            self.problem(
                table.key("watcher_progress_path"),
                'expected "backupRestore" or "restore"',
            )
        elif isinstance(paths, list) and pinned not in paths:
            self.problem(
                table.key("watcher_progress_path"),
                f"{pinned!r} is not in progress_paths, so the watcher would get 404",
            )
        else:
            fields["watcher_progress_path"] = pinned

    def traffic(self, table: _Table, fields: dict[str, Any]) -> bool:
        """Session timeout, latency and injected faults; False if a number is bad."""
        timeout = self.seconds(
            table.key("session_idle_timeout"),
            table.get("session_idle_timeout", 900.0),
            positive=True,
        )
        latency = self.seconds(table.key("latency"), table.get("latency", 0.0))
        rate = self.seconds(table.key("error_rate"), table.get("error_rate", 0.0))
        if rate is not None and rate > 1:
            self.problem(table.key("error_rate"), "expected a fraction between 0 and 1")
        faults = table.get("faults", list(DEFAULT_FAULTS))
        if (
            not isinstance(faults, list)
            or not faults
            or not all(f in FAULTS for f in faults)
        ):
            self.problem(
                table.key("faults"), f"expected a non-empty list of {', '.join(FAULTS)}"
            )
        else:
            fields["faults"] = tuple(faults)
        if timeout is None or latency is None or rate is None:
            return False
        fields.update(session_idle_timeout=timeout, latency=latency, error_rate=rate)
        return True

    def placement(self, table: _Table, index: int) -> _Placement | None:
        """Seed, port and replica layout; None if any of them is bad."""
        seed = self.integer(table.key("seed"), table.get("seed", index))
        port = self.integer(
            table.key("port"), table.get("port", 0), minimum=0, maximum=65535
        )
        count = self.integer(
            table.key("count"), table.get("count", 1), minimum=1, maximum=9999
        )
        stagger = self.seconds(table.key("stagger"), table.get("stagger", 0.0))
        if seed is None or port is None or count is None or stagger is None:
            return None
        return _Placement(seed=seed, port=port, count=count, stagger=stagger)

    def scripts(
        self, table: _Table
    ) -> tuple[tuple[RestoreScript, ...], RestoreScript | None]:
        """The scripted restores and the ``on_demand`` one (bad ones reported)."""
        restores_raw = table.get("restores", [])
        restores: list[RestoreScript] = []
        if not isinstance(restores_raw, list):
            self.problem(
                table.key("restores"),
                "expected an array of tables ([[servers.restores]])",
            )
        else:
            for i, raw in enumerate(restores_raw):
                script = self.restore(f"{table.key('restores')}[{i}]", raw)
                if script is not None:
                    restores.append(script)
        on_demand = None
        if "on_demand" in table.merged:
            on_demand = self.restore(
                table.key("on_demand"), table.merged["on_demand"], on_demand=True
            )
        return tuple(restores), on_demand

    def replicas(
        self, table: _Table, base: ServerSpec, placement: _Placement
    ) -> list[ServerSpec]:
        """``base`` alone, or ``count`` replicas named ``<name>-001`` and on."""
        count = placement.count
        if count == 1:
            return [base]
        width = max(3, len(str(count)))
        replicas = []
        for i in range(count):
            replica_name = f"{base.name}-{i + 1:0{width}d}"
            if not _NAME_RE.fullmatch(replica_name):
                self.problem(
                    table.key("name"), f"too long for {count} replicas ({replica_name})"
                )
                return []
            replicas.append(
                replace(
                    base,
                    name=replica_name,
                    seed=placement.seed + i,
                    port=placement.port + i if placement.port else 0,
                    offset=i * placement.stagger,
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
