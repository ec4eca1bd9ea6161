"""The daemon as a systemd service: sd_notify, watchdog, SIGHUP reload."""

from __future__ import annotations

import json
import signal
import socket
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .conftest import SimulatedFleet, read_jsonl, wait_for

pytestmark = pytest.mark.e2e


def write_subset_config(
    fleet: SimulatedFleet, names: Sequence[str], path: Path
) -> Path:
    """A watcher config for some of the fleet's servers (reusing its CA and passwords)."""
    written = tomllib.loads(fleet.config.read_text(encoding="utf-8"))
    servers = {s["name"]: s for s in written["servers"]}
    lines = [
        "[watcher]",
        f'state_dir = "{written["watcher"]["state_dir"]}"',
        f'audit_log = "{written["watcher"]["audit_log"]}"',
        "[defaults]",
        f'ca_file = "{written["defaults"]["ca_file"]}"',
        "idle_interval = 0.5",
        "active_interval = 0.2",
        "timeout = 2.0",
    ]
    for name in names:
        server = servers[name]
        lines += [
            "[[servers]]",
            f'name = "{name}"',
            f'url = "{server["url"]}"',
            f'password_file = "{server["password_file"]}"',
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    yield sock, path
    sock.close()


def next_message(sock: socket.socket, *, skip: Sequence[str] = ("WATCHDOG=1",)) -> str:
    """The next datagram that is not one of ``skip`` (watchdog pings interleave)."""
    while True:
        message = sock.recv(4096).decode()
        if message not in skip and not message.startswith("STATUS="):
            return message


def poll_logs(stderr: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines."""
    entries = []
    for line in stderr.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def test_notify_protocol_and_reload(
    spawn, simulated_fleet, notify_socket, tmp_path: Path
) -> None:
    """READY, STATUS, WATCHDOG, RELOADING/READY around SIGHUP, STOPPING; reload works."""
    sock, address = notify_socket
    fleet = simulated_fleet("fleet20.toml")
    config = write_subset_config(fleet, ["fleet-05", "fleet-01"], tmp_path / "w.toml")
    daemon = spawn(
        "--debug",
        "--log-format",
        "json",
        "run",
        "-c",
        str(config),
        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"},
    )
    ready = next_message(sock)
    assert ready.startswith("READY=1"), ready
    assert "STATUS=watching 2 servers" in ready
    # The watchdog is pinged from the event loop, at half WATCHDOG_USEC.
    seen = [sock.recv(4096) for _ in range(3)]
    assert b"WATCHDOG=1" in seen

    # A broken file: every problem logged, still running on the old configuration.
    config.write_text(
        config.read_text(encoding="utf-8") + "bogus_key = 1\n", encoding="utf-8"
    )
    daemon.signal(signal.SIGHUP)
    reloading = next_message(sock)
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert next_message(sock).startswith("READY=1")
    wait_for(
        lambda: "reload.rejected" in daemon.stderr(), timeout=10, what="the rejection"
    )
    assert daemon.popen.poll() is None

    # A changed file: fleet-01 removed, fleet-10 added; fleet-05 keeps its state.
    write_subset_config(fleet, ["fleet-05", "fleet-10"], config)
    daemon.signal(signal.SIGHUP)
    assert next_message(sock).startswith("RELOADING=1")
    assert next_message(sock).startswith("READY=1")
    wait_for(lambda: "reload.applied" in daemon.stderr(), timeout=10, what="the reload")
    entries = poll_logs(daemon.stderr())
    applied = next(
        i for i, e in enumerate(entries) if e.get("event") == "reload.applied"
    )
    wait_for(
        lambda: any(
            e.get("event") == "poll.ok" and e.get("server") == "fleet-10"
            for e in poll_logs(daemon.stderr())[applied:]
        ),
        timeout=10,
        what="a poll of the added server",
    )
    rejected = [e for e in entries if e.get("event") == "reload.problem"]
    assert [e.get("key") for e in rejected] == ["servers[1].bogus_key"]

    daemon.signal(signal.SIGTERM)
    assert next_message(sock) == "STOPPING=1"
    assert daemon.wait(timeout=15) == 0, daemon.stderr()
    after = poll_logs(daemon.stderr())
    stopped_watch = next(
        i
        for i, e in enumerate(after)
        if e.get("event") == "watch.stopped" and e.get("server") == "fleet-01"
    )
    assert not any(
        e.get("event") == "poll.ok" and e.get("server") == "fleet-01"
        for e in after[stopped_watch + 1 :]
    )
    events = read_jsonl(Path(tomllib.loads(config.read_text())["watcher"]["audit_log"]))
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))


def test_health_metrics_and_status_endpoints(
    spawn, simulated_fleet, tmp_path: Path
) -> None:
    """`listen` serves /healthz, Prometheus /metrics and /status from the daemon."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    fleet = simulated_fleet("fleet20.toml")
    config = write_subset_config(fleet, ["fleet-05", "fleet-01"], tmp_path / "w.toml")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = config.read_text(encoding="utf-8").replace(
        "[watcher]\n", f'[watcher]\nlisten = "127.0.0.1:{port}"\n'
    )
    config.write_text(text, encoding="utf-8")
    daemon = spawn("run", "-c", str(config))
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        with urlopen(base + path, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()

    def answers() -> bool:
        try:
            return get("/status")[0] == 200 and bool(
                json.loads(get("/status")[1])["servers"][0]["last_poll_at"]
            )
        except (OSError, KeyError, IndexError):
            return False

    wait_for(answers, timeout=20, what="/status with a first poll")
    assert get("/healthz") == (200, "ok\n")
    status = json.loads(get("/status")[1])
    assert [s["name"] for s in status["servers"]] == ["fleet-05", "fleet-01"]
    assert status["healthy"] is True
    families = {f.name: f for f in text_string_to_metric_families(get("/metrics")[1])}
    polls = {
        (s.labels["server"], s.labels["outcome"]): s.value
        for s in families["sklm_watcher_polls"].samples
        if s.name.endswith("_total")
    }
    assert polls[("fleet-05", "ok")] >= 1
    phases = {
        s.labels["server"]: s.value for s in families["sklm_watcher_phase"].samples
    }
    assert phases["fleet-05"] == 0
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, daemon.stderr()
