"""End-to-end fixtures: real ``sklm-watcher`` subprocesses (simulator and daemon)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "watcher" / "scenarios"
EXE = [sys.executable, "-m", "watcher"]


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, what: str, every: float = 0.05
) -> None:
    """Wait until ``predicate()`` holds (checked every ``every`` s) or fail naming ``what``.

    A bounded wait on an observable condition (a file's content, a process's exit), not
    a sleep-and-hope: the timeout only guards against hangs.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read the complete lines of a JSON Lines file another process is writing.

    A last line without its newline is still being written: it is left for later.
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


@dataclass
class Proc:
    """A running ``sklm-watcher`` subprocess and its output files."""

    popen: subprocess.Popen[str]
    stdout_path: Path
    stderr_path: Path
    lines: list[str] = field(default_factory=list)

    def stdout(self) -> str:
        """Everything it printed on standard output so far."""
        return self.stdout_path.read_text(encoding="utf-8")

    def stderr(self) -> str:
        """Everything it printed on standard error so far."""
        return self.stderr_path.read_text(encoding="utf-8")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for exit and return the exit code."""
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        """Terminate (then kill) if still running."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``python -m watcher ARGS`` subprocesses; all are stopped at teardown."""
    procs: list[Proc] = []
    counter = iter(range(1000))

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        n = next(counter)
        out = tmp_path / f"proc{n}.out"
        err = tmp_path / f"proc{n}.err"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with out.open("w", encoding="utf-8") as o, err.open("w", encoding="utf-8") as e:
            popen = subprocess.Popen(
                [*EXE, *args],
                stdout=o,
                stderr=e,
                stdin=subprocess.DEVNULL,
                text=True,
                env=full_env,
                cwd=tmp_path,
            )
        proc = Proc(popen, out, err)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@dataclass
class SimulatedFleet:
    """A simulator subprocess with the watcher config it wrote for its fleet."""

    proc: Proc
    config: Path
    ground_truth: Path
    urls: dict[str, str]


@pytest.fixture
def simulated_fleet(
    spawn: Callable[..., Proc], tmp_path: Path
) -> Callable[..., SimulatedFleet]:
    """Start ``sklm-watcher simulate SCENARIO --write-config`` and wait for ``ready``."""

    def start(scenario: str | Path, *, tls: bool = True) -> SimulatedFleet:
        config = tmp_path / "watcher.toml"
        truth = tmp_path / "truth.jsonl"
        args = [
            "simulate",
            str(scenario if isinstance(scenario, Path) else SCENARIOS / scenario),
            "--write-config",
            str(config),
            "--state-dir",
            str(tmp_path / "state"),
            "--ground-truth",
            str(truth),
        ]
        if tls:
            args += ["--tls", "--ca-out", str(tmp_path / "ca.pem")]
        proc = spawn(*args)
        wait_for(
            lambda: (
                "ready" in proc.stdout().splitlines() or proc.popen.poll() is not None
            ),
            timeout=30,
            what="the simulator to print ready",
        )
        assert proc.popen.poll() is None, proc.stderr()
        urls: dict[str, str] = {}
        for line in proc.stdout().splitlines():
            if line.startswith("listening on "):
                url, _, name = line[len("listening on ") :].partition(" name=")
                urls[name.strip()] = url.strip()
        return SimulatedFleet(proc, config, truth, urls)

    return start


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every POST; can be down."""

    port: int
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where the sink posts."""
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        """Start answering 200 on the port."""
        posts = self.posts
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                paths.append(self.path)
                # A path containing /gone answers 410: a permanently broken sink.
                self.send_response(410 if "/gone" in self.path else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def down(self) -> None:
        """Stop listening (connections are refused)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver on a free loopback port, initially down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    recv = Receiver(port)
    yield recv
    recv.down()
