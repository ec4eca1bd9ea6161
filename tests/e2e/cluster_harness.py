"""Real processes for the cluster's fault runs and benchmark (issue 13).

No pytest in here: ``tests/e2e/test_cluster.py`` and ``tests/benchmark/bench_cluster.py``
both use it. It starts a simulator process (``sklm-watcher simulate``, or the
benchmark's instrumented ``tests.benchmark.simproc``) on a scenario it writes, one
``sklm-watcher run`` process per node with a configuration it writes (same servers,
same store, a distinct ``node_name``, its own ``state_dir``, ``listen`` on a free port,
a webhook and a Slack sink pointing at :class:`Recorder`), reads the store's history
back with the CLI (``events --json``) and compares it with the simulator's ground
truth (:func:`history_problems`).

Every wait is on an observable condition (:func:`wait_for`); the timeouts only guard
against hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

REPO = Path(__file__).resolve().parents[2]
EXE = [sys.executable, "-m", "watcher"]
T = TypeVar("T")
#: The environment variable every node reads its store URL from (``store_url_env``).
STORE_ENV = "SKLM_WATCHER_E2E_STORE_URL"
#: The Slack incoming-webhook URL (a secret: ``url_env``).
SLACK_ENV = "SKLM_WATCHER_E2E_SLACK_URL"
PASSWORD = "cluster-password"
#: Event types that end a scripted restore, by the scenario's outcome.
OUTCOME_TYPE = {"complete": "sklm.restore.completed", "fail": "sklm.restore.failed"}
#: What the Slack sink is given: one message per restore outcome (the Slack body has
#: no event id; a restore id and the outcome identify each message).
SLACK_EVENTS = ("sklm.restore.completed", "sklm.restore.failed")


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, what: str, every: float = 0.1
) -> None:
    """Wait until ``predicate()`` holds or fail naming ``what`` (a hang guard only)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def wait_value(
    produce: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.1
) -> T:
    """Wait until ``produce()`` returns something other than None; return it."""
    found: list[T] = []

    def ready() -> bool:
        value = produce()
        if value is None:
            return False
        found.append(value)
        return True

    wait_for(ready, timeout=timeout, what=what, every=every)
    return found[-1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as the events and the ground truth write it (``...Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- scenario -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScriptedServer:
    """One simulated server of :func:`scenario_text`: when its restore starts, how it ends."""

    name: str
    #: Seconds after the simulator starts; None = idle throughout.
    starts: float | None
    outcome: str = "complete"
    #: The phases as a TOML array of ``[code, seconds]`` (None: the standard ones).
    phases: str | None = None


#: Phase durations: CREATE_TEMP_DIR lasts 2 ms, so it can only be inferred.
_COMPLETE = "[[1, 0.6], [2, 0.002], [3, 0.6], [4, 1.6], [5, 1.6], [6, 0.4], [7, 1.0]]"
_FAIL = "[[1, 0.6], [2, 0.4], [3, 0.6], [4, 1.8]]"


def staggered_fleet(
    count: int,
    *,
    first: float,
    every: float,
    idle: Iterable[int] = (),
    fail_every: int = 5,
) -> list[ScriptedServer]:
    """``count`` servers ``cl-01``...; restore ``i`` starts at ``first + i * every``.

    Indexes in ``idle`` stay idle; every ``fail_every``-th restore fails in
    RESTORE_KEYSTORES, the others complete and restart.
    """
    quiet = set(idle)
    servers = []
    for i in range(count):
        name = f"cl-{i + 1:02d}"
        if i in quiet:
            servers.append(ScriptedServer(name, None))
            continue
        outcome = (
            "fail" if fail_every and i % fail_every == fail_every - 1 else "complete"
        )
        servers.append(ScriptedServer(name, first + i * every, outcome))
    return servers


def scenario_text(servers: Sequence[ScriptedServer], *, description: str) -> str:
    """The simulator's scenario TOML for ``servers`` (one restore each at most)."""
    lines = [
        f"description = {json.dumps(description)}",
        "",
        "[defaults]",
        'username = "SKLMAdmin"',
        f'password = "{PASSWORD}"           # test data',
    ]
    for server in servers:
        lines += ["", "[[servers]]", f'name = "{server.name}"']
        if server.starts is None:
            continue
        lines += ["[[servers.restores]]", f"idle_before = {server.starts:.3f}"]
        if server.outcome == "fail":
            lines += [f"phases = {server.phases or _FAIL}", 'outcome = "fail"']
        else:
            lines += [
                f"phases = {server.phases or _COMPLETE}",
                'outcome = "complete"',
                "restart_down = 1.0",
                "restart_starting = 0.8",
            ]
    return "\n".join(lines) + "\n"


# -- processes ------------------------------------------------------------------------


@dataclass
class Process:
    """A subprocess with its standard output and error in files."""

    popen: subprocess.Popen[str]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    def stdout(self) -> str:
        """Everything it printed on standard output so far."""
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        """Everything it printed on standard error so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        """Whether it has not exited (a stopped process is alive)."""
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum``."""
        self.popen.send_signal(signum)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, from ``/proc`` (0 once it is gone)."""
        try:
            fields = (
                Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            )
        except OSError:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGCONT (it may be stopped), SIGTERM, then SIGKILL; the exit code."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGCONT)
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        return self.popen.returncode


def start_process(
    args: Sequence[str],
    workdir: Path,
    label: str,
    env: Mapping[str, str] | None = None,
    *,
    commands: bool = False,
) -> Process:
    """Start ``args`` with output in ``workdir/label.out`` / ``.err``."""
    out = workdir / f"{label}.out"
    err = workdir / f"{label}.err"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with out.open("w", encoding="utf-8") as o, err.open("w", encoding="utf-8") as e:
        popen = subprocess.Popen(
            list(args),
            stdout=o,
            stderr=e,
            stdin=subprocess.PIPE if commands else subprocess.DEVNULL,
            text=True,
            env=full_env,
            cwd=workdir,
        )
    return Process(popen, out, err)


@dataclass
class Simulation:
    """The simulator process, its servers' URLs and its ground truth."""

    process: Process
    urls: dict[str, str]
    truth_path: Path
    started: float

    def truth(self) -> list[dict[str, Any]]:
        """Every complete ground-truth line so far."""
        return read_jsonl(self.truth_path)

    def command(self, line: str) -> None:
        """Send a command line (``tests.benchmark.simproc`` only)."""
        stdin = self.process.popen.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()


def start_simulation(
    workdir: Path,
    servers: Sequence[ScriptedServer],
    *,
    label: str = "simulator",
    instrumented: bool = False,
    host: str | None = None,
) -> Simulation:
    """Write the scenario and start the simulator on it; wait for ``ready``.

    ``instrumented`` runs ``tests.benchmark.simproc`` (records every progress GET's
    arrival; ``dump PATH`` on its standard input) instead of ``sklm-watcher simulate``.
    ``host``: the address its servers listen on (``sklm-watcher simulate`` only).
    """
    scenario = workdir / f"{label}.toml"
    scenario.write_text(scenario_text(servers, description=label), encoding="utf-8")
    truth = workdir / f"{label}.truth.jsonl"
    if instrumented:
        args = [sys.executable, "-m", "tests.benchmark.simproc", str(scenario)]
        args += ["--ground-truth", str(truth)]
    else:
        args = [*EXE, "simulate", str(scenario), "--out", str(workdir)]
        args += ["--ground-truth", str(truth)]
        if host is not None:
            args += ["--host", host]
    env = {"PYTHONPATH": str(REPO)}
    process = start_process(args, workdir, label, env, commands=instrumented)
    wait_for(
        lambda: "ready" in process.stdout().splitlines() or not process.alive(),
        timeout=60,
        what="the simulator to print ready",
    )
    started = time.monotonic()
    assert process.alive(), process.stderr()
    urls: dict[str, str] = {}
    for line in process.stdout().splitlines():
        if line.startswith("listening on "):
            url, _, name = line[len("listening on ") :].partition(" name=")
            urls[name.strip()] = url.strip()
    return Simulation(process, urls, truth, started)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON Lines file another process is writing."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


# -- receivers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Post:
    """One POST a :class:`Recorder` received."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    #: ``time.monotonic()`` at arrival (the same clock for every process here).
    at: float

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class Recorder:
    """A loopback HTTP server that answers 200 to every POST and records it."""

    posts: list[Post] = field(default_factory=list)
    port: int = 0
    #: The address it listens on (loopback but in the partition run).
    host: str = "127.0.0.1"
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        """The URL of ``path`` on this recorder."""
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> Recorder:
        """Listen on a free port of :attr:`host`."""
        record = self._record

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                record(self.path, dict(self.headers.items()), body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self.posts.append(Post(path, lowered, body, time.monotonic()))

    def received(self, prefix: str) -> list[Post]:
        """The POSTs to paths starting with ``prefix`` so far, in arrival order."""
        with self._lock:
            return [p for p in self.posts if p.path.startswith(prefix)]

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- nodes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Intervals:
    """The polling settings every node is given."""

    idle: float = 1.0
    active: float = 0.2
    timeout: float = 2.0
    restart: float = 0.2
    jitter: float = 0.1


def write_config(
    path: Path,
    *,
    urls: Mapping[str, str],
    state_dir: Path,
    listen: int | None,
    intervals: Intervals,
    node_name: str | None = None,
    lease: float | None = None,
    webhook: str | None = None,
    slack: bool = False,
    extra_watcher: str = "",
) -> None:
    """Write one node's configuration: the fleet, the store, the sinks.

    With ``node_name`` it is a cluster node (``store_url_env``); without, the
    single-node daemon on SQLite in ``state_dir``.
    """
    password_file = path.with_suffix(".password")
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    watcher = [
        "[watcher]",
        f'state_dir = "{state_dir}"',
        f'audit_log = "{state_dir / "events.jsonl"}"',
        f"jitter = {intervals.jitter}",
        "drain_timeout = 2.0",
    ]
    if listen is not None:
        watcher.append(f'listen = "127.0.0.1:{listen}"')
    if node_name is not None:
        watcher += [
            f'store_url_env = "{STORE_ENV}"',
            f'node_name = "{node_name}"',
            f"lease = {lease if lease is not None else 2.0}",
        ]
    if extra_watcher:
        watcher.append(extra_watcher)
    lines = [
        *watcher,
        "",
        "[defaults]",
        'username = "SKLMAdmin"',
        f'password_file = "{password_file}"',
        f"idle_interval = {intervals.idle}",
        f"active_interval = {intervals.active}",
        f"timeout = {intervals.timeout}",
        f"restart_interval = {intervals.restart}",
        "restart_timeout = 30.0",
        "stall_after = 60.0",
        "allow_insecure_http = true",
    ]
    for name, url in urls.items():
        lines += ["", "[[servers]]", f'name = "{name}"', f'url = "{url}"']
    if webhook is not None:
        lines += [
            "",
            "[[sinks]]",
            'name = "hook"',
            'type = "webhook"',
            f'url = "{webhook}"',
            "max_age = 600.0",
            "allow_insecure_http = true",
        ]
    if slack:
        lines += [
            "",
            "[[sinks]]",
            'name = "chat"',
            'type = "slack"',
            f'url_env = "{SLACK_ENV}"',
            f"events = {json.dumps(list(SLACK_EVENTS))}",
            "min_interval = 0.05",
            "max_age = 600.0",
            "allow_insecure_http = true",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass
class Node:
    """One ``sklm-watcher run`` process and how to reach it."""

    name: str
    config: Path
    process: Process
    env: dict[str, str]
    _port: int = 0

    @property
    def port(self) -> int:
        """The port it listens on (``listen`` is ``127.0.0.1:0``: from its
        ``service.listening`` log line, a free port chosen by the kernel, so that
        the thousands of outgoing connections here cannot take it first); 0 before."""
        if not self._port:
            for entry in self.logs():
                if entry.get("event") == "service.listening":
                    self._port = int(entry["port"])
                    break
        return self._port

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET ``path`` on its ``listen`` port: (status, body); (0, reason) if none."""
        if not self.port:
            return 0, "not listening yet"
        try:
            with urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return int(r.status), r.read().decode("utf-8", "replace")
        except HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")
        except (URLError, OSError) as exc:
            return 0, str(exc)

    def metrics(self) -> dict[str, float]:
        """Its ``/metrics`` samples, ``name{labels}`` -> value (empty if unreachable)."""
        status, body = self.get("/metrics")
        if status != 200:
            return {}
        samples: dict[str, float] = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                samples[key] = float(value)
            except ValueError:
                continue
        return samples

    def logs(self) -> list[dict[str, Any]]:
        """Its JSON log lines so far (others skipped)."""
        entries = []
        for line in self.process.stderr().splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
        return entries


def start_node(
    workdir: Path,
    name: str,
    *,
    urls: Mapping[str, str],
    store_url: str | None,
    intervals: Intervals,
    lease: float = 2.0,
    webhook: str | None = None,
    slack: str | None = None,
    launcher: Sequence[str] = (),
) -> Node:
    """Write ``name``'s configuration and start ``sklm-watcher run`` on it.

    ``store_url`` None: the single-node daemon (SQLite). ``launcher`` replaces
    ``python -m watcher`` (the benchmark's ``tests.benchmark.launch ... --``).
    """
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "watcher.toml"
    write_config(
        config,
        urls=urls,
        state_dir=home / "state",
        listen=0,
        intervals=intervals,
        node_name=None if store_url is None else name,
        lease=lease,
        webhook=webhook,
        slack=slack is not None,
    )
    env = {"PYTHONPATH": str(REPO)}
    if store_url is not None:
        env[STORE_ENV] = store_url
    if slack is not None:
        env[SLACK_ENV] = slack
    exe = list(launcher) if launcher else EXE
    process = start_process(
        [*exe, "--log-format", "json", "run", "-c", str(config)], home, "node", env
    )
    return Node(name, config, process, env)


def cli(
    node: Node, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``sklm-watcher ARGS -c <node's config>`` with the node's environment."""
    return subprocess.run(
        [*EXE, *args, "-c", str(node.config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **node.env},
        cwd=node.config.parent,
        check=False,
    )


def store_events(node: Node, *, required: bool = True) -> list[dict[str, Any]]:
    """The store's whole history (``events --json`` with ``node``'s configuration).

    Not ``required``: empty while the command fails (no store yet, store restarting).

    Raises:
        AssertionError: The command failed (its standard error included).
    """
    done = cli(node, "events", "--json")
    if done.returncode != 0 and not required:
        return []
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


# -- the store's leases -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One server's lease as the store holds it."""

    server: str
    node: str
    epoch: int
    live: bool


def leases(store_url: str) -> dict[str, LeaseRow]:
    """Every server lease in the store (``live``: not expired by the store's clock).

    Empty when the store is unreachable or has no lease table yet.
    """
    import psycopg

    try:
        with psycopg.connect(store_url, connect_timeout=3, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT server, node, epoch, expires_at > now() FROM leases"
            ).fetchall()
    except psycopg.Error:
        return {}
    return {str(s): LeaseRow(str(s), str(n), int(e), bool(v)) for s, n, e, v in rows}


def sink_lease_holders(store_url: str) -> dict[str, str]:
    """Which node holds each sink's delivery lease right now (empty if unknown)."""
    import psycopg

    try:
        with psycopg.connect(store_url, connect_timeout=3, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT sink, node FROM sink_leases WHERE expires_at > now()"
            ).fetchall()
    except psycopg.Error:
        return {}
    return {str(s): str(n) for s, n in rows}


def shares(store_url: str) -> dict[str, int]:
    """node -> how many live server leases it holds (for the report)."""
    return {n: len(s) for n, s in sorted(held_by(store_url).items())}


def held_by(store_url: str) -> dict[str, set[str]]:
    """node -> the servers it holds a live lease on."""
    out: defaultdict[str, set[str]] = defaultdict(set)
    for row in leases(store_url).values():
        if row.live:
            out[row.node].add(row.server)
    return dict(out)


# -- the comparison with the ground truth -------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrueRestore:
    """One scripted restore as the simulator ran it."""

    server: str
    ordinal: int
    #: (phase, entered, left) in order; ``left`` None for the last.
    phases: tuple[tuple[str, datetime, datetime | None], ...]
    #: ``completed`` or ``failed``; None while it runs.
    outcome: str | None
    ended: datetime | None


def true_restores(truth: Iterable[Mapping[str, Any]]) -> list[TrueRestore]:
    """The restores in the ground truth, per server in order."""
    phases: defaultdict[tuple[str, int], list[tuple[str, datetime]]] = defaultdict(list)
    outcome: dict[tuple[str, int], tuple[str, datetime]] = {}
    after: dict[tuple[str, int], datetime] = {}
    for line in truth:
        if line.get("restore") is None:
            continue
        key = (str(line["server"]), int(line["restore"]))
        at = parse_time(str(line["at"]))
        kind = line["kind"]
        if kind == "phase" and line.get("phase") != "IDLE":
            phases[key].append((str(line["phase"]), at))
        elif kind in ("completed", "failed") and key not in outcome:
            outcome[key] = (str(kind), at)
        if kind in ("failed", "restart_begin") and key not in after:
            after[key] = at
    restores = []
    for key, seen in sorted(phases.items()):
        windows = []
        for i, (phase, entered) in enumerate(seen):
            left = seen[i + 1][1] if i + 1 < len(seen) else after.get(key)
            windows.append((phase, entered, left))
        done = outcome.get(key)
        restores.append(
            TrueRestore(
                key[0],
                key[1],
                tuple(windows),
                None if done is None else done[0],
                None if done is None else done[1],
            )
        )
    return restores


#: How far an observed phase's event time may lie outside the phase's true window:
#: the poll's answer is stamped when it arrives.
OBSERVED_SLACK = timedelta(seconds=0.3)


def history_problems(
    events: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Everything in which the store's history differs from the ground truth.

    Per scripted restore (restores in order per server): one ``restore.started``,
    the phase events equal the true phases in order, a phase marked observed
    (``inferred: false``) was stamped inside its true window (give or take
    :data:`OBSERVED_SLACK`), the outcome event once and of the right kind, one
    ``server.restarted`` after a completed one; no event id twice; nothing about a
    server that never restored but ``server.*`` health events.
    """
    problems: list[str] = []
    ids = Counter(str(e["id"]) for e in events)
    problems += [
        f"event id {i} is in the store {n} times" for i, n in ids.items() if n > 1
    ]
    by_server: defaultdict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        by_server[str(event["data"]["server"])].append(event)
    restores: defaultdict[str, list[TrueRestore]] = defaultdict(list)
    for restore in true_restores(truth):
        restores[restore.server].append(restore)
    for server in sorted(set(by_server) | set(restores)):
        problems += _server_problems(server, by_server[server], restores[server])
    return problems


def _server_problems(
    server: str, events: Sequence[Mapping[str, Any]], restores: Sequence[TrueRestore]
) -> list[str]:
    problems: list[str] = []
    kinds = Counter(str(e["type"]) for e in events)
    if kinds["sklm.server.unreachable"] or kinds["sklm.auth.failed"]:
        problems.append(f"{server}: unexpected health events {dict(kinds)}")
    started = [e for e in events if e["type"] == "sklm.restore.started"]
    if len(started) != len(restores):
        problems.append(
            f"{server}: {len(started)} restore.started for {len(restores)} restores"
        )
    restore_ids = [str(e["data"].get("restore_id")) for e in started]
    for ordinal, restore in enumerate(restores):
        rid = restore_ids[ordinal] if ordinal < len(restore_ids) else None
        mine = [e for e in events if str(e["data"].get("restore_id")) == rid]
        phases = [e for e in mine if e["type"] == "sklm.restore.phase"]
        recorded = [str(e["data"]["phase"]) for e in phases]
        expected = [p for p, _, _ in restore.phases]
        if recorded != expected:
            problems.append(
                f"{server} #{ordinal}: phases {recorded} != truth {expected}"
            )
        windows = {phase: (entered, left) for phase, entered, left in restore.phases}
        for event in phases:
            phase = str(event["data"]["phase"])
            if event["data"].get("inferred") is not False or phase not in windows:
                continue
            entered, left = windows[phase]
            at = parse_time(str(event["time"]))
            late = left is None or at <= left + OBSERVED_SLACK
            if not (entered - OBSERVED_SLACK <= at and late):
                problems.append(
                    f"{server} #{ordinal}: {phase} marked observed at {event['time']}, "
                    f"outside its true window {entered.isoformat()}..{left}"
                )
        wanted = {
            "completed": "sklm.restore.completed",
            "failed": "sklm.restore.failed",
        }
        outcomes = Counter(
            str(e["type"])
            for e in mine
            if e["type"] in ("sklm.restore.completed", "sklm.restore.failed")
        )
        if restore.outcome is None:
            problems.append(f"{server} #{ordinal}: the simulator's restore never ended")
        elif outcomes != Counter([wanted[restore.outcome]]):
            problems.append(
                f"{server} #{ordinal}: outcome events {dict(outcomes)}, truth "
                f"{restore.outcome}"
            )
    restarted = kinds["sklm.server.restarted"]
    completed = sum(1 for r in restores if r.outcome == "completed")
    if restarted != completed:
        problems.append(
            f"{server}: {restarted} server.restarted for {completed} completed"
        )
    return problems


def outcomes_recorded(
    events: Sequence[Mapping[str, Any]], servers: Sequence[ScriptedServer]
) -> bool:
    """Whether every scripted restore's end (restart after a completion) is recorded."""
    have = Counter((str(e["data"]["server"]), str(e["type"])) for e in events)
    for server in servers:
        if server.starts is None:
            continue
        last = (
            "sklm.server.restarted"
            if server.outcome == "complete"
            else OUTCOME_TYPE["fail"]
        )
        if have[(server.name, last)] < 1:
            return False
    return True


def slack_keys(posts: Iterable[Post]) -> list[str]:
    """One key per Slack message: its fallback text plus the restore id in its context."""
    keys = []
    for post in posts:
        body = post.json()
        context = [
            element.get("text", "")
            for block in body.get("blocks", [])
            if block.get("type") == "context"
            for element in block.get("elements", [])
        ]
        keys.append(f"{body.get('text', '')} | {' '.join(context)}")
    return keys


def now_utc() -> datetime:
    """The wall clock, aware (for comparing with event and truth times)."""
    return datetime.now(UTC)


def lost_and_duplicated(
    events: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]]
) -> tuple[int, int]:
    """(lost, duplicated) events in the store against the ground truth.

    Expected per scripted restore: its start, each true phase, its outcome, and a
    restart after a completion. Lost: expected and not in the store. Duplicated: an
    id twice, or more of one expected thing than happened (a second start, a phase
    twice, ...).
    """
    expected: Counter[tuple[str, ...]] = Counter()
    restores: defaultdict[str, list[TrueRestore]] = defaultdict(list)
    for restore in true_restores(truth):
        restores[restore.server].append(restore)
    for server, mine in restores.items():
        for n, restore in enumerate(mine):
            expected[(server, str(n), "sklm.restore.started")] += 1
            for phase, _, _ in restore.phases:
                expected[(server, str(n), "sklm.restore.phase", phase)] += 1
            if restore.outcome is not None:
                expected[(server, str(n), f"sklm.restore.{restore.outcome}")] += 1
            if restore.outcome == "completed":
                expected[(server, "-", "sklm.server.restarted")] += 1
    ordinal: dict[str, str] = {}
    per_server: Counter[str] = Counter()
    for event in events:
        if event["type"] == "sklm.restore.started":
            server = str(event["data"]["server"])
            ordinal[str(event["data"].get("restore_id"))] = str(per_server[server])
            per_server[server] += 1
    recorded: Counter[tuple[str, ...]] = Counter()
    for event in events:
        data = event["data"]
        server, kind = str(data["server"]), str(event["type"])
        if kind == "sklm.server.restarted":
            recorded[(server, "-", kind)] += 1
        elif kind.startswith("sklm.restore.") and kind != "sklm.restore.stalled":
            which = ordinal.get(str(data.get("restore_id")), "?")
            key: tuple[str, ...] = (server, which, kind)
            if kind.endswith(".phase"):
                key = (*key, str(data["phase"]))
            recorded[key] += 1
    ids = Counter(str(e["id"]) for e in events)
    lost = sum((expected - recorded).values())
    duplicated = sum((recorded - expected).values()) + sum(c - 1 for c in ids.values())
    return lost, duplicated


# -- a network partition (network namespaces) ---------------------------------------------


#: ``ip`` (iproute2) by its full path.
IP = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, text=True)


@dataclass
class Partitionable:
    """A network namespace joined to this one by a veth pair, on this machine only.

    The host side has :attr:`host` (simulator, receivers: reachable from both sides)
    and :attr:`store_address` (where a :class:`Forwarder` relays to the loopback
    PostgreSQL). :meth:`cut` removes :attr:`store_address`: packets to it from the
    namespace are dropped without an answer, a real black hole for TCP (no RST, no
    ACK), while :attr:`host` stays reachable; :meth:`heal` puts it back.
    """

    name: str
    host: str
    inside: str
    store_address: str
    _host_link: str
    _ns_link: str

    @classmethod
    def create(cls, tag: int) -> Partitionable:
        """Create it (``tag`` picks the names and the 10.213.<tag % 250>.0/24 subnet).

        Raises:
            subprocess.CalledProcessError: ``ip`` refused (not root, no netns support).
        """
        net = f"10.213.{tag % 250}"
        self = cls(
            f"h13d{tag}", f"{net}.1", f"{net}.2", f"{net}.3", f"h13h{tag}", f"h13n{tag}"
        )
        _ip("netns", "add", self.name)
        try:
            _ip(
                "link",
                "add",
                self._host_link,
                "type",
                "veth",
                "peer",
                "name",
                self._ns_link,
            )
            _ip("link", "set", self._ns_link, "netns", self.name)
            _ip("addr", "add", f"{self.host}/24", "dev", self._host_link)
            _ip("addr", "add", f"{self.store_address}/24", "dev", self._host_link)
            _ip("link", "set", self._host_link, "up")
            inside = ["netns", "exec", self.name, "ip"]
            _ip(*inside, "addr", "add", f"{self.inside}/24", "dev", self._ns_link)
            _ip(*inside, "link", "set", self._ns_link, "up")
            _ip(*inside, "link", "set", "lo", "up")
        except subprocess.CalledProcessError:
            self.remove()
            raise
        return self

    @property
    def launcher(self) -> list[str]:
        """``python -m watcher`` inside the namespace."""
        return [IP, "netns", "exec", self.name, *EXE]

    def cut(self) -> None:
        """Partition the namespace from the store (only)."""
        _ip("addr", "del", f"{self.store_address}/24", "dev", self._host_link)

    def heal(self) -> None:
        """End the partition."""
        _ip("addr", "add", f"{self.store_address}/24", "dev", self._host_link)

    def remove(self) -> None:
        """Delete the veth pair and the namespace (idempotent)."""
        subprocess.run(
            [IP, "link", "del", self._host_link], capture_output=True, check=False
        )
        subprocess.run(
            [IP, "netns", "del", self.name], capture_output=True, check=False
        )


class Forwarder:
    """Relays TCP connections from ``listen`` to ``target`` (threads, for the tests)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self._target = target
        self._server = socket.create_server(listen)
        self.port = int(self._server.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and close every relayed connection."""
        self._closed = True
        self._server.close()
        for sock in self._sockets:
            sock.close()
