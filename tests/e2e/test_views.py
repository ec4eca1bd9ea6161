"""Operator commands against the journal of a real scripted run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .conftest import read_jsonl

pytestmark = pytest.mark.e2e

SCENARIO = """
[defaults]
password = "views-password"

[[servers]]
name = "ok-1"
[[servers.restores]]
idle_before = 5.0
phases = [[1, 0.4], [2, 0.003], [3, 0.4], [4, 0.6], [5, 0.5], [6, 0.3], [7, 0.6]]
outcome = "complete"
restart_down = 1.0
restart_starting = 0.5

[[servers]]
name = "bad-1"
[[servers.restores]]
idle_before = 5.0
phases = [[1, 0.5], [2, 0.5], [3, 1.2]]
outcome = "fail"

[[servers]]
name = "gone-1"
[[servers.restores]]
idle_before = 5.0
phases = [[1, 0.4], [4, 0.6], [7, 0.6]]
outcome = "complete"
restart_down = 60.0
restart_starting = 1.0
"""


def test_views_follow_silence_and_audit(spawn, simulated_fleet, tmp_path: Path) -> None:
    """status, restores, events, follow exit codes, a silence, audit verify."""
    scenario = tmp_path / "views.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    fleet = simulated_fleet(scenario)
    config = fleet.config
    with config.open("a", encoding="utf-8") as f:
        f.write(
            '\n[[sinks]]\nname = "log"\ntype = "log"\n'
            # gone-1 stays away for a minute: it must be reported as not back.
        )
    text = config.read_text(encoding="utf-8").replace(
        "restart_timeout = 30.0", "restart_timeout = 3.0"
    )
    config.write_text(text, encoding="utf-8")
    audit = config.parent / "state" / "events.jsonl"

    # A silence set before the daemon runs holds bad-1's notifications.
    silenced = spawn(
        "silence",
        "add",
        "bad-*",
        "--for",
        "1h",
        "--reason",
        "planned",
        "-c",
        str(config),
    )
    assert silenced.wait() == 0, silenced.stderr()
    daemon = spawn("run", "-c", str(config))
    assert silenced.stdout().startswith("silence 1: bad-* until ")

    follow_ok = spawn("follow", "ok-1", "-c", str(config), "--timeout", "40")
    follow_bad = spawn("follow", "bad-1", "-c", str(config), "--timeout", "40")
    follow_gone = spawn("follow", "gone-1", "-c", str(config), "--timeout", "40")
    assert follow_ok.wait(timeout=45) == 0, follow_ok.stdout()
    assert follow_bad.wait(timeout=45) == 1, follow_bad.stdout()
    assert follow_gone.wait(timeout=45) == 1, follow_gone.stdout()
    assert "COMPLETED" in follow_ok.stdout()

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()

    status = spawn("status", "-c", str(config), "--json")
    assert status.wait() == 0, status.stderr()
    rows = {r["server"]: r for r in json.loads(status.stdout())}
    assert set(rows) == {"ok-1", "bad-1", "gone-1"}
    assert (rows["ok-1"]["health"], rows["ok-1"]["phase"]) == ("ok", "IDLE")
    assert rows["gone-1"]["health"] == "unreachable"
    assert rows["bad-1"]["restore_active"] is False

    restores = spawn("restores", "-c", str(config), "--json")
    assert restores.wait() == 0
    outcome = {r["server"]: r["outcome"] for r in json.loads(restores.stdout())}
    assert outcome == {"ok-1": "completed", "bad-1": "failed", "gone-1": "completed"}

    events = spawn("events", "-c", str(config), "--server", "bad-1", "--json")
    assert events.wait() == 0
    lines = [json.loads(line) for line in events.stdout().splitlines()]
    assert [e["type"] for e in lines][-1] == "sklm.restore.failed"
    assert [e["id"] for e in lines] == [
        e["id"] for e in read_jsonl(audit) if e["subject"] == "bad-1"
    ]

    # Silenced: journaled and visible, but not queued for the sink.
    silences = spawn("silence", "list", "-c", str(config), "--json")
    assert silences.wait() == 0
    assert [s["server_glob"] for s in json.loads(silences.stdout())] == ["bad-*"]
    outbox = spawn("outbox", "-c", str(config), "--json")
    assert outbox.wait() == 0
    assert json.loads(outbox.stdout())["sinks"][0]["pending"] == 0

    verify = spawn("audit", "verify", "-c", str(config), "--json")
    assert verify.wait() == 0, verify.stdout()
    verdict = json.loads(verify.stdout())
    assert verdict["ok"] is True
    assert verdict["lines"] == len(read_jsonl(audit))

    # One changed byte in one line is found, with its line number.
    raw = audit.read_bytes().splitlines(keepends=True)
    target = 1 + next(i for i, line in enumerate(raw) if i >= 2 and b'"ok-1"' in line)
    raw[target - 1] = raw[target - 1].replace(b'"ok-1"', b'"ok-2"', 1)
    audit.write_bytes(b"".join(raw))
    tampered = spawn("audit", "verify", str(audit), "--json")
    assert tampered.wait() == 1
    bad = json.loads(tampered.stdout())["first_bad"]
    assert bad["line"] == target
    assert bad["file"] == str(audit)

    removed = spawn("silence", "remove", "1", "-c", str(config))
    assert removed.wait() == 0
