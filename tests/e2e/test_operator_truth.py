"""``status`` over a real daemon (issue 11): the reason, whether it runs, how old.

A simulated server and one nothing listens on; the daemon serves ``/status``. The
operator's ``status`` is a real subprocess each time: while the daemon runs (also
with a half-edited configuration file), and after it stopped.
"""

from __future__ import annotations

import json
import re
import signal
import socket
from pathlib import Path
from urllib.request import urlopen

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.e2e

Z_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_status_tells_the_reason_the_daemon_and_the_age(
    spawn, simulated_fleet, tmp_path: Path
) -> None:
    """Live: daemon_running, as_of and down-1's reason; stopped: said, not ``ok``."""
    fleet = simulated_fleet("basic.toml")
    config = fleet.config
    port = free_port()
    text = config.read_text(encoding="utf-8")
    password_file = re.search(r"^password_file = .*$", text, re.M)
    assert password_file is not None
    text = text.replace("[watcher]\n", f'[watcher]\nlisten = "127.0.0.1:{port}"\n')
    text += (
        f'\n[[servers]]\nname = "down-1"\nurl = "https://127.0.0.1:{free_port()}"\n'
        f"{password_file[0]}\n"
    )
    config.write_text(text, encoding="utf-8")
    daemon = spawn("run", "-c", str(config))

    def down_reason() -> str | None:
        try:
            with urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
                servers = json.loads(answer.read())["servers"]
        except OSError:
            return None
        reason = {s["name"]: s for s in servers}["down-1"]["last_error"]
        return None if reason is None else str(reason)

    wait_for(lambda: down_reason() is not None, timeout=30, what="down-1's reason")

    live = spawn("status", "-c", str(config), "--json")
    assert live.wait() == 0, live.stderr()
    assert live.stderr() == ""
    rows = {r["server"]: r for r in json.loads(live.stdout())}
    assert {r["daemon_running"] for r in rows.values()} == {True}
    assert Z_TIME.fullmatch(rows["sklm-1"]["as_of"])
    assert rows["down-1"]["last_failure"] == "unreachable"
    assert rows["down-1"]["last_error"]
    assert rows["sklm-1"]["last_error"] is None

    table = spawn("status", "-c", str(config), env={"NO_COLOR": "1"})
    assert table.wait() == 0
    header, *lines = table.stdout().splitlines()
    assert header.split()[-1] == "REASON"
    down = next(line for line in lines if line.startswith("down-1 "))
    assert rows["down-1"]["last_error"][:20] in down

    # Mid-incident edit: the daemon keeps its configuration, status still answers.
    config.write_text(
        text + '\n[[servers]]\nname = "new-1"\nurl = "sklm-new.example.com"\n',
        encoding="utf-8",
    )
    edited = spawn("status", "-c", str(config), "--json")
    assert edited.wait() == 0, edited.stderr()
    assert edited.stderr().startswith(
        f"warning: {config}: 2 configuration problems (the daemon keeps its last "
        "good configuration); showing what is stored:\n"
    )
    assert {r["server"] for r in json.loads(edited.stdout())} >= {"sklm-1", "down-1"}

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()

    stopped = spawn("status", "-c", str(config), "--json")
    assert stopped.wait() == 0, stopped.stderr()
    said = stopped.stderr().splitlines()[-1]
    assert re.fullmatch(
        rf"no daemon running; data as of {Z_TIME.pattern} \(.+ ago\)", said
    )
    rows = {r["server"]: r for r in json.loads(stopped.stdout())}
    assert {r["daemon_running"] for r in rows.values()} == {False}
    assert rows["down-1"]["last_failure"] == "unreachable"
    as_of = said.split("data as of ")[1].split(" ")[0]
    assert {r["as_of"] for r in rows.values()} == {as_of}
