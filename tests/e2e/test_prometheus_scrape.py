"""A real daemon's /metrics has every metric the shipped rules and dashboard query."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.request import urlopen

import pytest

from ..promql_names import exported_names, queried_names
from .conftest import wait_for

pytestmark = pytest.mark.e2e

#: The families only a cluster node (``store_url``) exports (issue 13).
CLUSTER_PREFIX = "sklm_watcher_cluster_"
#: The environment variable the cluster node reads its store URL from (a secret).
STORE_ENV = "SKLM_WATCHER_E2E_SCRAPE_STORE_URL"


def scrape_daemon(
    spawn,
    simulated_fleet,
    receiver,
    tmp_path: Path,
    *,
    watcher: str = "",
    env: dict[str, str] | None = None,
) -> set[str]:
    """Run ``sklm-watcher run`` on a simulated server with a sink; its sample names."""
    fleet = simulated_fleet("basic.toml", tls=False)
    receiver.up()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = fleet.config.read_text(encoding="utf-8").replace(
        "[watcher]\n", f'[watcher]\nlisten = "127.0.0.1:{port}"\n{watcher}'
    )
    text += f'\n[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n'
    config = tmp_path / "w.toml"
    config.write_text(text, encoding="utf-8")
    daemon = spawn("run", "-c", str(config), env=env)

    def scrape() -> str:
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body: str = response.read().decode()
            return body

    def polled() -> bool:
        # Per-server phase, last-ok and latency samples need a first answered poll
        # (the simulated server may refuse the first logins while it starts; a
        # cluster node polls only once it holds the server's lease).
        try:
            return "sklm_watcher_last_successful_poll_timestamp_seconds{" in scrape()
        except OSError:
            assert daemon.popen.poll() is None, daemon.stderr()
            return False

    wait_for(polled, timeout=30, what="/metrics after a first answered poll")
    return exported_names(scrape())


def test_a_real_daemon_exports_every_queried_metric(
    spawn, simulated_fleet, receiver, tmp_path: Path
) -> None:
    """Scrape a single ``sklm-watcher run``: all but the cluster families."""
    exported = scrape_daemon(spawn, simulated_fleet, receiver, tmp_path)
    used = {
        n: w for n, w in queried_names().items() if not n.startswith(CLUSTER_PREFIX)
    }
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, sorted(exported)
    # A single node on SQLite is no cluster: the cluster rules stay silent there.
    assert not {n for n in exported if n.startswith(CLUSTER_PREFIX)}


def test_a_real_cluster_node_exports_every_queried_metric(
    spawn, simulated_fleet, receiver, tmp_path: Path, pg_url: str
) -> None:
    """Scrape a cluster node on a real PostgreSQL store: every name, cluster ones too."""
    exported = scrape_daemon(
        spawn,
        simulated_fleet,
        receiver,
        tmp_path,
        watcher=(
            f'store_url_env = "{STORE_ENV}"\nnode_name = "scrape-node"\nlease = 2.0\n'
        ),
        env={STORE_ENV: pg_url},
    )
    used = queried_names()
    assert {n for n in used if n.startswith(CLUSTER_PREFIX)}, "no cluster rule?"
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, sorted(exported)
