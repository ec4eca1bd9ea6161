"""SystemdNotifier speaks sd_notify to a real unix datagram socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.notify import SystemdNotifier

pytestmark = pytest.mark.integration


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket standing in for systemd."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_messages_arrive_as_key_value_lines(notify_socket) -> None:
    """READY, STATUS, WATCHDOG, RELOADING and STOPPING arrive as systemd expects."""
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("watching 3 servers")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 3 servers"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].split("=")[1]) > 0
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    """Outside systemd the notifier is a no-op."""
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval is None


def test_watchdog_interval_is_half_the_usec_for_this_pid() -> None:
    """WATCHDOG_USEC for our pid gives a ping every half interval; another pid's is ignored."""
    mine = SystemdNotifier(
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_interval == 15.0
    other = SystemdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    """systemd going away never takes the daemon down."""
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notifier.status("x")
    notifier.close()
