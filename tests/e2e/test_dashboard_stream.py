"""The dashboard's API and event stream from a real daemon watching the simulator.

A real ``sklm-watcher run`` with ``listen`` and HTTP Basic; the stream is read over
a raw HTTP connection on 127.0.0.1, as a browser's EventSource would: live events
while the restore runs, then, after the daemon restarted, a reconnect with
``Last-Event-ID`` that replays exactly the audit lines the client missed.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXE, read_jsonl, wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "dash-pw-5b1f"
USER = "operator"
AUTH = {
    "Authorization": "Basic "
    + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode("ascii")
}
#: Hang guards only: every wait is for an observable condition.
GUARD = 60.0


def free_port() -> int:
    """A port nothing listens on right now (the daemon binds it next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_listen(config: Path, port: int, tmp_path: Path) -> None:
    """Add ``listen`` and HTTP Basic (password from a file) to ``[watcher]``."""
    secret = tmp_path / "listen-password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    text = config.read_text(encoding="utf-8").replace(
        "[watcher]\n",
        f'[watcher]\nlisten = "127.0.0.1:{port}"\nlisten_username = "{USER}"\n'
        f'listen_password_file = "{secret}"\n',
        1,
    )
    config.write_text(text, encoding="utf-8")


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of one GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        conn.close()


def answers(port: int) -> bool:
    """Whether /healthz answers 200."""
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


def messages(port: int, last_event_id: int | None) -> Iterator[dict[str, str]]:
    """The stream's messages with an id, as {"id", "data"}, until it ends."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD)
    headers = dict(AUTH)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    conn.request("GET", "/api/events/stream", headers=headers)
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    fields: dict[str, str] = {}
    try:
        while True:
            raw = response.fp.readline()
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\n")
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "id" in fields:
                yield fields
            fields = {}
    finally:
        conn.close()


def audit_lines(path: Path) -> list[str]:
    """The audit log's complete lines."""
    text = path.read_text(encoding="utf-8")
    return text[: text.rfind("\n") + 1].splitlines()


def test_a_restore_streams_live_and_a_restarted_daemon_replays(
    spawn, simulated_fleet, tmp_path: Path
) -> None:
    """Every event reaches the open stream as its audit line; a reconnect misses none."""
    fleet = simulated_fleet("basic.toml")
    port = free_port()
    with_listen(fleet.config, port, tmp_path)
    audit = tmp_path / "state" / "events.jsonl"
    daemon = spawn("run", "-c", str(fleet.config))
    wait_for(lambda: answers(port), timeout=GUARD, what="the daemon to listen")
    assert get(port, "/api/status")[0] == 401

    seen: list[dict[str, str]] = []
    for message in messages(port, last_event_id=0):
        seen.append(message)
        if json.loads(message["data"])["type"] == "sklm.server.restarted":
            break
    types = [json.loads(m["data"])["type"] for m in seen]
    assert types[0] == "sklm.restore.started"
    assert "sklm.restore.completed" in types
    lines = audit_lines(audit)
    assert [m["id"] for m in seen] == [str(i) for i in range(1, len(seen) + 1)]
    assert [m["data"] for m in seen] == lines[: len(seen)]

    # /api/status is status --json's rows (the CLI reads the same daemon's state).
    status, body = get(port, "/api/status", AUTH)
    assert status == 200
    api: list[dict[str, Any]] = json.loads(body)
    done = subprocess.run(
        [*EXE, "status", "--json", "-c", str(fleet.config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    cli: list[dict[str, Any]] = json.loads(done.stdout)
    moving = {"in_phase_for", "as_of", "last_ok_at"}  # polls go on between the two
    assert [{k: v for k, v in row.items() if k not in moving} for row in api] == [
        {k: v for k, v in row.items() if k not in moving} for row in cli
    ]
    assert api[0]["server"] == "sklm-1"
    assert api[0]["stalled"] is False

    # Restart the daemon; a client that had seen only the first two events
    # reconnects with Last-Event-ID and gets exactly the rest, from the store.
    daemon.stop()
    daemon = spawn("run", "-c", str(fleet.config))
    wait_for(lambda: answers(port), timeout=GUARD, what="the daemon to listen again")
    total = len(audit_lines(audit))
    replayed = []
    for message in messages(port, last_event_id=2):
        replayed.append(message)
        if int(message["id"]) >= total:
            break
    lines = audit_lines(audit)
    assert [m["id"] for m in replayed] == [str(i) for i in range(3, total + 1)]
    assert [m["data"] for m in replayed] == lines[2:total]
    assert read_jsonl(audit)[0]["auditseq"] == 1
