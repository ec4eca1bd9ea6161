"""`sklm-watcher demo` as a newcomer runs it: Ctrl-C, no trustme, --keep, --keep-running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Proc, wait_for

pytestmark = pytest.mark.e2e

# What a plain `pip install sklm-watcher` lacks: trustme (only in the simulator and
# dev extras). A None entry in sys.modules makes `import trustme` raise ImportError,
# exactly as if the package were not installed.
_WITHOUT_TRUSTME = (
    "import sys; sys.modules['trustme'] = None; "
    "from watcher.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


@pytest.fixture
def demo_without_trustme(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``sklm-watcher ARGS`` in a subprocess that cannot import trustme."""
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        out = tmp_path / f"nt{len(procs)}.out"
        err = tmp_path / f"nt{len(procs)}.err"
        with out.open("w", encoding="utf-8") as o, err.open("w", encoding="utf-8") as e:
            popen = subprocess.Popen(
                [sys.executable, "-c", _WITHOUT_TRUSTME, *args],
                stdout=o,
                stderr=e,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                cwd=tmp_path,
            )
        proc = Proc(popen, out, err)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def test_ctrl_c_ends_the_demo_at_once_with_an_honest_summary(spawn) -> None:
    """A real SIGINT mid-demo: exit 130 promptly, no claim that the record differs."""
    demo = spawn("demo")
    wait_for(
        lambda: "restore started" in demo.stdout() or demo.popen.poll() is not None,
        timeout=30,
        what="the demo's first restore",
    )
    assert demo.popen.poll() is None, demo.stdout() + demo.stderr()
    sent = time.monotonic()
    demo.signal(signal.SIGINT)
    # Generous bound: only a guard against the old behaviour (running on to its end).
    wait_for(
        lambda: demo.popen.poll() is not None,
        timeout=20,
        what="the demo to end after Ctrl-C",
    )
    took = time.monotonic() - sent
    out, err = demo.stdout(), demo.stderr()
    assert demo.popen.returncode == 130, f"after {took:.2f} s: {out}{err}"
    assert "Interrupted" in out, f"after {took:.2f} s: {out}"
    assert "DIFFER" not in out, out
    assert "not compared with the simulator's ground truth" in out, out
    summary = out.split("Summary", 1)[1]
    for server in ("sklm-fast", "sklm-fail", "sklm-restart", "sklm-stall", "sklm-idle"):
        assert server in summary
    # The temporary state is gone: the demo must not print a path that is not there.
    assert "Audit log: /" not in out, out
    assert "--keep DIR" in out, out
    assert "Traceback" not in err, err


def test_demo_without_trustme_keeps_state_and_runs_on_until_ctrl_c(
    demo_without_trustme, tmp_path: Path
) -> None:
    """No trustme: plain HTTP on loopback (said in one line), still matches the truth.

    With ``--keep DIR --keep-running`` the printed audit log exists, the daemon keeps
    watching after the scripted fleet is done, and Ctrl-C then ends it with exit 0.
    """
    keep = tmp_path / "kept"
    demo = demo_without_trustme("demo", "--keep", str(keep), "--keep-running")
    wait_for(
        lambda: "Ctrl-C ends it" in demo.stdout() or demo.popen.poll() is not None,
        timeout=55,
        what="the demo's summary and its keep-running line",
    )
    out = demo.stdout()
    assert demo.popen.poll() is None, out + demo.stderr()
    plain = [line for line in out.splitlines() if "trustme is not installed" in line]
    assert len(plain) == 1, out
    assert "plain HTTP" in plain[0]
    assert "restore completed" in out
    assert "restore failed" in out
    assert "restore stalled" in out
    assert (
        "The recorded phases match the simulator's ground truth (5/5 servers)." in out
    )
    assert "sklm-idle: not counted: no restore ran on it" in out
    audit = keep / "state" / "events.jsonl"
    assert f"audit log:   {audit}" in out
    assert audit.is_file()
    assert (keep / "watcher.toml").is_file()
    assert "allow_insecure_http = true" in (keep / "watcher.toml").read_text()
    sent = time.monotonic()
    demo.signal(signal.SIGINT)
    wait_for(
        lambda: demo.popen.poll() is not None,
        timeout=20,
        what="the demo to end after Ctrl-C in --keep-running",
    )
    took = time.monotonic() - sent
    assert demo.popen.returncode == 0, f"after {took:.2f} s: {demo.stdout()}"
    assert demo.stderr() == ""
    assert demo.stdout().rstrip().endswith(f"Audit log: {audit}")
    assert audit.is_file()
