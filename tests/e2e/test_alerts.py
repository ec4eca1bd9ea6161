"""Alerts survive a dead endpoint and a daemon restart, signed and in order."""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from watcher.events import EventType

from .conftest import Receiver, SimulatedFleet, read_jsonl, wait_for

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"e2e-signing-key-0123456789abcdef").decode()


def add_webhook_sink(config: Path, url: str) -> None:
    """Append a signed webhook sink to a config written by the simulator."""
    with config.open("a", encoding="utf-8") as f:
        f.write(
            "\n[[sinks]]\n"
            'name = "ops"\n'
            'type = "webhook"\n'
            f'url = "{url}"\n'
            'secret_env = "E2E_WEBHOOK_SECRET"\n'
            "max_age = 600.0\n"
        )


def webhook_fleet(
    simulated_fleet, receiver: Receiver
) -> tuple[SimulatedFleet, dict[str, str], Path]:
    """basic.toml with a signed webhook sink: the fleet, the daemon's env, the audit log."""
    fleet = simulated_fleet("basic.toml")
    add_webhook_sink(fleet.config, receiver.url)
    env = {"E2E_WEBHOOK_SECRET": SECRET}
    return fleet, env, fleet.config.parent / "state" / "events.jsonl"


def wait_until_all_delivered(audit: Path, receiver: Receiver) -> None:
    """Wait until the restore ended with the restart and the receiver has every event."""

    def done() -> bool:
        journaled = read_jsonl(audit)
        posted = {json.loads(body)["id"] for _, body in receiver.posts}
        return str(EventType.SERVER_RESTARTED) in [
            e["type"] for e in journaled
        ] and posted == {e["id"] for e in journaled}

    wait_for(done, timeout=40, what="every journaled event at the receiver")


def test_restore_completed_while_endpoint_down_is_delivered_after_restart(
    spawn, simulated_fleet, receiver: Receiver
) -> None:
    """Endpoint down + daemon restart: everything arrives later, signed, outbox empty."""
    fleet, env, audit = webhook_fleet(simulated_fleet, receiver)

    def audit_types() -> list[str]:
        return [e["type"] for e in read_jsonl(audit)]

    daemon = spawn("run", "-c", str(fleet.config), env=env)
    wait_for(
        lambda: str(EventType.RESTORE_COMPLETED) in audit_types(),
        timeout=40,
        what="the completed event, journaled while the endpoint is down",
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()
    assert receiver.posts == []

    pending = spawn("outbox", "-c", str(fleet.config), "--json", env=env)
    assert pending.wait() == 0, pending.stderr()
    (ops,) = json.loads(pending.stdout())["sinks"]
    assert ops["sink"] == "ops"
    assert ops["pending"] >= 9  # started, 7 phases, completed

    receiver.up()
    daemon = spawn("run", "-c", str(fleet.config), env=env)
    wait_until_all_delivered(audit, receiver)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()

    journaled = [e["id"] for e in read_jsonl(audit)]
    delivered: list[str] = []
    verifier = Webhook(SECRET)
    for headers, body in receiver.posts:
        payload = verifier.verify(body, headers)  # raises on a bad signature
        assert headers["webhook-id"] == payload["id"]
        assert "prevhash" not in payload
        if payload["id"] not in delivered:
            delivered.append(payload["id"])
    # Every event, once per id, in the order it happened (one server).
    assert delivered == journaled

    empty = spawn("outbox", "-c", str(fleet.config), "--json", env=env)
    assert empty.wait() == 0
    (ops,) = json.loads(empty.stdout())["sinks"]
    assert (ops["pending"], ops["dead"]) == (0, 0)
    assert SECRET not in daemon.stderr()
    assert receiver.url not in daemon.stderr()


def test_delivered_outbox_rows_are_pruned_after_the_retention(
    spawn, simulated_fleet, receiver: Receiver
) -> None:
    """Delivered rows past outbox_retention leave the outbox; the history stays."""
    fleet, env, audit = webhook_fleet(simulated_fleet, receiver)
    db = fleet.config.parent / "state" / "state.sqlite3"
    receiver.up()

    daemon = spawn("run", "-c", str(fleet.config), env=env)
    wait_until_all_delivered(audit, receiver)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()
    journaled = len(read_jsonl(audit))

    def outbox_statuses() -> list[str]:
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute("SELECT status FROM outbox").fetchall()
        finally:
            conn.close()
        return [status for (status,) in rows]

    assert outbox_statuses() == ["delivered"] * journaled

    text = fleet.config.read_text(encoding="utf-8")
    fleet.config.write_text(
        text.replace("[watcher]\n", "[watcher]\noutbox_retention = 0.001\n", 1),
        encoding="utf-8",
    )
    daemon = spawn("run", "-c", str(fleet.config), env=env)
    wait_for(
        lambda: "outbox.pruned" in daemon.stderr(),
        timeout=20,
        what="the start-up pruning",
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()
    (pruned,) = [
        json.loads(line)
        for line in daemon.stderr().splitlines()
        if '"outbox.pruned"' in line
    ]
    assert pruned["rows"] == journaled
    assert outbox_statuses() == []
    history = spawn("events", "-c", str(fleet.config), "--json", env=env)
    assert history.wait() == 0, history.stderr()
    # One JSON object per line, one line per event: the history is untouched.
    assert len(history.stdout().splitlines()) == journaled
