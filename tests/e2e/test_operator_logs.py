"""What a real ``sklm-watcher run`` says on standard error (issue 11, operator truth).

Each test runs the daemon as a subprocess against a loopback port nothing listens on
(connection refused at once), reads its standard error and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXE, wait_for

pytestmark = pytest.mark.e2e

NO_SINKS = "no [[sinks]]: events go only to the audit log"
#: sd-daemon(3) priority prefix, then one JSON object.
PREFIXED = re.compile(r"^<([0-7])>(\{.*\})$")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_config(path: Path, *, sinks: str = "") -> Path:
    """A config watching one server on a closed loopback port, polled every 0.2 s."""
    path.write_text(
        f"""
[watcher]
state_dir = "{path.parent / "state"}"
audit_log = "{path.parent / "state" / "events.jsonl"}"
jitter = 0
drain_timeout = 0

[[servers]]
name = "down-1"
url = "http://127.0.0.1:{closed_port()}"
password = "pw-for-the-test"
allow_insecure_http = true
idle_interval = 0.2
unreachable_after = 0.5
{sinks}
""",
        encoding="utf-8",
    )
    return path


class Daemon:
    """A ``sklm-watcher run`` subprocess whose standard error goes to a file."""

    def __init__(self, config: Path, *, journal_stream: bool) -> None:
        self.err_path = config.parent / "daemon.err"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("JOURNAL_STREAM", None)
        with self.err_path.open("w", encoding="utf-8") as err:
            if journal_stream:
                # What systemd sets: device and inode of the stream it connected.
                st = os.fstat(err.fileno())
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            self.popen = subprocess.Popen(
                [*EXE, "run", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=config.parent,
            )

    def text(self) -> str:
        """Standard error so far."""
        return self.err_path.read_text(encoding="utf-8")

    def entries(
        self, *, prefixed: bool = False
    ) -> list[tuple[int | None, dict[str, Any]]]:
        """Complete lines so far as (priority, JSON entry); priority None unprefixed."""
        text = self.text()
        out: list[tuple[int | None, dict[str, Any]]] = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            if prefixed:
                match = PREFIXED.match(line)
                assert match, f"line without a <N> priority prefix: {line!r}"
                out.append((int(match[1]), json.loads(match[2])))
            else:
                out.append((None, json.loads(line)))
        return out

    def wait_for_event(self, name: str, *, prefixed: bool = False) -> None:
        """Wait until a line with event ``name`` is on standard error."""
        wait_for(
            lambda: (
                any(e["event"] == name for _, e in self.entries(prefixed=prefixed))
                or self.popen.poll() is not None
            ),
            timeout=30,
            what=f"{name} on standard error",
        )
        assert self.popen.poll() is None, self.text()

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=30)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons started by a test; killed at teardown if still running."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.popen.poll() is None:
            daemon.popen.kill()
            daemon.popen.wait()


def test_under_journald_every_line_carries_its_syslog_priority(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """With JOURNAL_STREAM naming stderr, each line starts <N>: problems <4>, news <6>.

    So ``journalctl -p warning`` shows the refused connection (once, with its
    reason) and the outage, and not the start and stop lines.
    """
    daemon = Daemon(write_config(tmp_path / "w.toml"), journal_stream=True)
    daemons.append(daemon)
    daemon.wait_for_event("event", prefixed=True)  # sklm.server.unreachable
    assert daemon.stop() == 0
    entries = daemon.entries(prefixed=True)
    by_event = [(priority, e["event"]) for priority, e in entries]
    assert (4, "config.warning") in by_event
    assert (6, "daemon.started") in by_event
    assert (6, "daemon.stopped") in by_event
    failing = [(p, e) for p, e in entries if e["event"] == "poll.failing"]
    assert len(failing) == 1, entries
    priority, entry = failing[0]
    assert priority == 4
    assert entry["failure"] == "unreachable"
    assert entry["server"] == "down-1"
    assert entry["detail"]  # the reason in words (the client's detail)
    unreachable = [
        (p, e) for p, e in entries if e.get("type") == "sklm.server.unreachable"
    ]
    assert [p for p, _ in unreachable] == [4]
    assert all(p == 4 for p, e in entries if e["level"] == "warning")
    assert all(p == 6 for p, e in entries if e["level"] == "info")


def test_without_journald_lines_are_plain_json(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """No JOURNAL_STREAM: no prefix (each line parses as JSON as it is)."""
    daemon = Daemon(write_config(tmp_path / "w.toml"), journal_stream=False)
    daemons.append(daemon)
    daemon.wait_for_event("poll.failing")
    assert daemon.stop() == 0
    assert all(line.startswith("{") for line in daemon.text().splitlines())


def test_no_sinks_warning_is_logged_once_and_stop_counts_pending(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The ``no [[sinks]]`` warning appears once; daemon.stopped says 0 pending."""
    daemon = Daemon(write_config(tmp_path / "w.toml"), journal_stream=False)
    daemons.append(daemon)
    daemon.wait_for_event("daemon.started")
    assert daemon.stop() == 0
    entries = [e for _, e in daemon.entries()]
    warnings = [e for e in entries if NO_SINKS in str(e.get("detail", ""))]
    assert len(warnings) == 1, entries
    stopped = [e for e in entries if e["event"] == "daemon.stopped"]
    assert len(stopped) == 1
    assert stopped[0]["pending_notifications"] == 0
    assert stopped[0]["unjournaled_events"] == 0
    assert stopped[0]["level"] == "info"


def test_reload_names_changed_sinks_and_stop_counts_undelivered(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """SIGHUP logs which sinks were added, removed and changed; stop counts the backlog.

    The webhook points at a closed port, so the outage's event stays pending.
    """
    dead = f"http://127.0.0.1:{closed_port()}/hook"
    sink = f'[[sinks]]\nname = "ops"\ntype = "webhook"\nurl = "{dead}"\n'
    config = write_config(
        tmp_path / "w.toml", sinks=sink + '[[sinks]]\nname = "gone"\ntype = "log"\n'
    )
    daemon = Daemon(config, journal_stream=False)
    daemons.append(daemon)
    daemon.wait_for_event("event")  # sklm.server.unreachable, pending for ops
    write_config(
        config,
        sinks=sink.replace("/hook", "/other")
        + '[[sinks]]\nname = "new"\ntype = "log"\n',
    )
    daemon.popen.send_signal(signal.SIGHUP)
    daemon.wait_for_event("reload.applied")
    assert daemon.stop() == 0
    entries = [e for _, e in daemon.entries()]
    applied = [e for e in entries if e["event"] == "reload.applied"]
    assert len(applied) == 1
    assert {k: v for k, v in applied[0].items() if k.startswith("sinks")} == {
        "sinks": 2,
        "sinks_added": ["new"],
        "sinks_removed": ["gone"],
        "sinks_changed": ["ops"],
    }
    # The server's address changed too: the rewritten file picked a new closed port.
    assert applied[0]["servers_changed"] == ["down-1"]
    stopped = [e for e in entries if e["event"] == "daemon.stopped"]
    assert stopped[0]["pending_notifications"] >= 1
    assert dead not in daemon.text()


def test_under_journald_a_refused_configuration_is_filed_as_an_error(
    tmp_path: Path,
) -> None:
    """`run` on a broken file prints its problems itself: each line is <3> for journald.

    Otherwise ``journalctl -p warning`` would show nothing of why the service failed.
    """
    config = tmp_path / "watcher.toml"
    config.write_text('[[servers]]\nname = "a"\nurl = "ftp://x"\n', encoding="utf-8")
    daemon = Daemon(config, journal_stream=True)
    assert daemon.popen.wait(timeout=30) == 2
    lines = daemon.text().splitlines()
    assert lines[0].startswith("<3>sklm-watcher: ")
    assert "configuration problem" in lines[0]
    assert any("servers[0].url" in line for line in lines[1:])
    assert all(line.startswith("<3>") for line in lines), lines
