"""Shared plumbing of the benchmarks: subprocesses, /proc sampling, files, statistics.

Everything here runs in the benchmark's own process; the measured programs
(simulator slices, the daemon, the bare aiohttp floor) are subprocesses started with
:class:`Child` and always killed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
PASSWORD = "bench-password"  # simulator test data
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script takes: pinning, work files, daemon flags."""
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--keep", type=Path, help="keep work files in this directory")
    parser.add_argument(
        "--daemon-flag",
        action="append",
        default=[],
        help="flag for tests/benchmark/launch.py (e.g. --uvloop, --stock-runtime), "
        "repeatable",
    )


def say(line: str = "") -> None:
    """Print one line of the benchmark's report, flushed."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- /proc -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a process: CPU seconds (user + system), RSS bytes, open fds."""

    at: float
    cpu: float
    rss: int
    fds: int


def sample(pid: int) -> Sample:
    """Read a process's CPU time, resident memory and open descriptors from /proc."""
    at = time.monotonic()
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    with open(f"/proc/{pid}/statm", encoding="ascii") as file:
        rss = int(file.read().split()[1]) * _PAGE
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return Sample(at, cpu, rss, fds)


def pin(pid: int, cpus: set[int] | None) -> None:
    """Restrict a process (all its threads) to ``cpus``; None leaves it free."""
    if cpus is None:
        return
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(task), cpus)


# -- subprocesses --------------------------------------------------------------------


@dataclass
class Child:
    """A subprocess whose standard output is read line by line in a thread."""

    name: str
    popen: subprocess.Popen[str]
    started: float
    lines: queue.Queue[tuple[float, str]] = field(default_factory=queue.Queue)
    history: list[tuple[float, str]] = field(default_factory=list)
    stderr_path: Path | None = None

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def wait_line(
        self, predicate: Callable[[str], bool], *, timeout: float
    ) -> tuple[float, str]:
        """Return (monotonic time, line) of the next stdout line matching, or raise."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no matching line in {timeout} s")
            try:
                at, line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited ({self.popen.returncode}): {self.tail()}"
                    ) from None
                continue
            if predicate(line):
                return at, line

    def send(self, line: str) -> None:
        """Write one line to the child's standard input."""
        stdin = self.popen.stdin
        if stdin is None:
            raise RuntimeError(f"{self.name} has no stdin pipe")
        stdin.write(line + "\n")
        stdin.flush()

    def tail(self) -> str:
        """The end of the child's standard error (for failure messages)."""
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-2000:]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; never raises."""
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    self.popen.kill()
                self.popen.wait()
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()


class Children:
    """Every subprocess the benchmark started; :meth:`stop_all` ends them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Child] = []
        self._count = 0

    def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        stdin: bool = False,
        env: Mapping[str, str] | None = None,
        stderr: Path | None = None,
        cpus: set[int] | None = None,
    ) -> Child:
        """Start ``args`` with stdout piped (and stdin piped when asked).

        With ``cpus``, the process (and every thread it starts) runs only there.
        """
        self._count += 1
        err_path = stderr or self.workdir / f"{self._count:02d}-{name}.err"
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        for leaky in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
            full_env.pop(leaky, None)
        err: IO[str]
        with err_path.open("a", encoding="utf-8") as err:
            popen = subprocess.Popen(
                list(args),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=REPO,
                env=full_env,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        child = Child(name, popen, time.monotonic(), stderr_path=err_path)
        threading.Thread(target=_pump, args=(child,), daemon=True).start()
        self.running.append(child)
        return child

    def stop(self, child: Child) -> None:
        """Stop one child and forget it."""
        child.stop()
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        """Stop every child still running (in reverse start order)."""
        for child in reversed(self.running):
            child.stop(timeout=5.0)
        self.running.clear()


def wait_file(path: Path, needle: str, *, timeout: float, child: Child) -> str:
    """Wait until a line of ``path`` contains ``needle``; return that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if needle in line:
                    return line
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited: {child.tail()}")
        time.sleep(0.02)
    raise TimeoutError(f"{child.name}: no {needle!r} in {path} after {timeout} s")


def _pump(child: Child) -> None:
    stdout = child.popen.stdout
    if stdout is None:
        return
    for line in stdout:
        item = (time.monotonic(), line.rstrip("\n"))
        child.lines.put(item)
        child.history.append(item)


# -- TLS and files ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tls:
    """A throw-away CA (the watcher's ``ca_file``) and the servers' certificate."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(directory: Path) -> Tls:
    """Write a trustme CA and a leaf for 127.0.0.1 into ``directory``."""
    import trustme

    ca = trustme.CA(organization_name="sklm-watcher benchmark")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    tls = Tls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(tls.ca_file))
    leaf.private_key_pem.write_to_path(str(tls.key_file))
    with tls.cert_file.open("wb") as file:
        for blob in leaf.cert_chain_pems:
            file.write(blob.bytes())
    return tls


def toml_value(value: object) -> str:
    """A TOML literal for a str, bool, number or (nested) list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


@dataclass
class ServerGroup:
    """``[[servers]]`` of a scenario: ``count`` replicas sharing keys and restores."""

    name: str
    count: int = 1
    keys: dict[str, object] = field(default_factory=dict)
    restores: list[dict[str, object]] = field(default_factory=list)

    def names(self) -> list[str]:
        """The server names the simulator gives the replicas."""
        if self.count == 1:
            return [self.name]
        width = max(3, len(str(self.count)))
        return [f"{self.name}-{i + 1:0{width}d}" for i in range(self.count)]


def write_scenario(
    path: Path, groups: Iterable[ServerGroup], description: str = "benchmark"
) -> None:
    """Write a simulator scenario TOML."""
    lines = [
        f"description = {toml_value(description)}",
        "",
        "[defaults]",
        'username = "SKLMAdmin"',
        f"password = {toml_value(PASSWORD)}",
    ]
    for group in groups:
        lines += ["", "[[servers]]", f"name = {toml_value(group.name)}"]
        if group.count != 1:
            lines.append(f"count = {group.count}")
        lines += [f"{k} = {toml_value(v)}" for k, v in group.keys.items()]
        for restore in group.restores:
            lines.append("[[servers.restores]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in restore.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_config(
    path: Path,
    urls: Mapping[str, str],
    *,
    state_dir: Path,
    tls: Tls,
    defaults: Mapping[str, object],
    watcher: Mapping[str, object] | None = None,
    sinks: Sequence[Mapping[str, object]] = (),
    per_server: Mapping[str, Mapping[str, object]] | None = None,
) -> None:
    """Write a watcher configuration for ``urls`` (name -> URL), password in a file."""
    password_file = path.with_name(path.stem + ".password")
    descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(PASSWORD + "\n")
    lines = [
        "[watcher]",
        f"state_dir = {toml_value(str(state_dir))}",
        f"audit_log = {toml_value(str(state_dir / 'events.jsonl'))}",
        *(f"{k} = {toml_value(v)}" for k, v in (watcher or {}).items()),
        "",
        "[defaults]",
        'username = "SKLMAdmin"',
        f"password_file = {toml_value(str(password_file))}",
        f"ca_file = {toml_value(str(tls.ca_file))}",
        *(f"{k} = {toml_value(v)}" for k, v in defaults.items()),
    ]
    for name, url in urls.items():
        lines += [
            "",
            "[[servers]]",
            f"name = {toml_value(name)}",
            f"url = {toml_value(url)}",
            *(
                f"{k} = {toml_value(v)}"
                for k, v in (per_server or {}).get(name, {}).items()
            ),
        ]
    for sink in sinks:
        lines += ["", "[[sinks]]", *(f"{k} = {toml_value(v)}" for k, v in sink.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a file (none if it does not exist)."""
    if not path.exists():
        return []
    out = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            if line.endswith("\n") and line.strip():
                out.append(json.loads(line))
    return out


# -- the simulator slices ------------------------------------------------------------


@dataclass
class SimFleet:
    """One or more simulator processes serving one fleet."""

    children: list[Child]
    urls: dict[str, str]
    truth_files: list[Path]

    def arrivals(self, workdir: Path) -> dict[str, list[float]]:
        """Progress-GET arrival times per server since the last call (all slices)."""
        out: dict[str, list[float]] = {}
        for i, child in enumerate(self.children):
            path = workdir / f"arrivals-{i}.json"
            child.send(f"dump {path}")
            done = f"dumped {path}"
            child.wait_line(done.__eq__, timeout=60)
            out.update(json.loads(path.read_text(encoding="utf-8")))
            path.unlink()
        return out

    def truth(self) -> list[dict[str, Any]]:
        """Every ground-truth line written so far, all slices."""
        lines: list[dict[str, Any]] = []
        for path in self.truth_files:
            lines.extend(read_jsonl(path))
        return lines

    def send_all(self, line: str) -> None:
        """Send a command to every slice."""
        for child in self.children:
            child.send(line)


def start_fleet(
    children: Children,
    scenarios: Sequence[Path],
    tls: Tls,
    *,
    truth: bool = False,
    cpus: set[int] | None = None,
    uvloop: bool = False,
    progress_latency: bool = False,
    timeout: float = 300.0,
) -> SimFleet:
    """Start one simulator process per scenario file and wait until all are ready."""
    started: list[Child] = []
    truth_files: list[Path] = []
    for i, scenario in enumerate(scenarios):
        args = [
            PY,
            "-m",
            "tests.benchmark.simproc",
            str(scenario),
            "--cert",
            str(tls.cert_file),
            "--key",
            str(tls.key_file),
        ]
        if truth:
            path = scenario.with_name(f"{scenario.stem}.truth.jsonl")
            path.unlink(missing_ok=True)
            truth_files.append(path)
            args += ["--ground-truth", str(path)]
        if uvloop:
            args.append("--uvloop")
        if progress_latency:
            args.append("--progress-latency")
        started.append(children.start(f"sim{i}", args, stdin=True))
    urls: dict[str, str] = {}
    for child in started:
        child.wait_line(lambda line: line == "ready", timeout=timeout)
        pin(child.pid, cpus)
        for _, line in child.history:
            if line.startswith("listening on "):
                url, _, name = line[len("listening on ") :].partition(" name=")
                urls[name] = url
    return SimFleet(started, urls, truth_files)


# -- statistics ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of several runs and their range."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        """Summarise ``values`` (NaNs dropped)."""
        kept = [v for v in values if not math.isnan(v)]
        if not kept:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(kept), min(kept), max(kept), len(kept))

    def show(self, fmt: str = "{:.2f}", unit: str = "") -> str:
        """``median unit (low-high, n runs)``."""
        if self.runs == 0:
            return "n/a"
        middle = fmt.format(self.median) + unit
        if self.runs == 1:
            return middle
        return (
            f"{middle} ({fmt.format(self.low)} to {fmt.format(self.high)}, "
            f"{self.runs} runs)"
        )


@contextlib.contextmanager
def sampling(
    pids: Mapping[str, int], every: float
) -> Iterator[dict[str, list[Sample]]]:
    """Sample the given processes every ``every`` s in a thread while inside."""
    samples: dict[str, list[Sample]] = {name: [] for name in pids}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for name, pid in pids.items():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    samples[name].append(sample(pid))
            stop.wait(every)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points; 0 with fewer than two."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den
