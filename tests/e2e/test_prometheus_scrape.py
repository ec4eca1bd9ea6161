"""A real daemon's /metrics has every metric the shipped rules and dashboard query."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.request import urlopen

import pytest

from ..promql_names import exported_names, queried_names
from .conftest import wait_for

pytestmark = pytest.mark.e2e


def test_a_real_daemon_exports_every_queried_metric(
    spawn, simulated_fleet, receiver, tmp_path: Path
) -> None:
    """Scrape ``sklm-watcher run`` watching a simulated server, with a sink."""
    fleet = simulated_fleet("basic.toml", tls=False)
    receiver.up()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = fleet.config.read_text(encoding="utf-8").replace(
        "[watcher]\n", f'[watcher]\nlisten = "127.0.0.1:{port}"\n'
    )
    text += f'\n[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n'
    config = tmp_path / "w.toml"
    config.write_text(text, encoding="utf-8")
    daemon = spawn("run", "-c", str(config))

    def scrape() -> str:
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body: str = response.read().decode()
            return body

    def polled() -> bool:
        # Per-server phase, last-ok and latency samples need a first answered poll
        # (the simulated server may refuse the first logins while it starts).
        try:
            return "sklm_watcher_last_successful_poll_timestamp_seconds{" in scrape()
        except OSError:
            assert daemon.popen.poll() is None, daemon.stderr()
            return False

    wait_for(polled, timeout=30, what="/metrics after a first answered poll")
    exported = exported_names(scrape())
    used = queried_names()
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, sorted(exported)
