"""``follow`` as a real subprocess, started while a restore runs under a real daemon.

The simulator's scripted timeline decides when the restore runs: the test starts
``follow`` once the daemon's audit log shows ``sklm.restore.started``, and each
follower's first look must see the restore still in progress (asserted, so a start
after the end cannot pass unnoticed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Proc, SimulatedFleet, read_jsonl, wait_for

pytestmark = pytest.mark.e2e

# long-1: one restore whose RESTORE_KEYSTORES (8 s) outlasts stall_after (2 s), then
# COMPLETED and the restart SKLM does after it. stuck-1: stuck in RESTORE_KEYSTORES.
SCENARIO = """
[watcher_defaults]
stall_after = 2.0

[defaults]
password = "follow-password"

[[servers]]
name = "long-1"
[[servers.restores]]
idle_before = 3.0
phases = [[1, 1.0], [2, 0.2], [3, 0.2], [4, 8.0], [5, 1.0], [6, 0.3], [7, 0.5]]
outcome = "complete"
restart_down = 1.5
restart_starting = 0.5

[[servers]]
name = "stuck-1"
[[servers.restores]]
idle_before = 1.0
phases = [[1, 0.5], [4]]
outcome = "stall"
"""

ORDER = {"running": 0, "stalled": 1, "completed": 2, "failed": 2}


def _audit(config: Path) -> list[dict[str, Any]]:
    return read_jsonl(config.parent / "state" / "events.jsonl")


def _has(config: Path, server: str, type_: str) -> bool:
    return any(e["subject"] == server and e["type"] == type_ for e in _audit(config))


@pytest.fixture
def fleet_and_daemon(
    spawn: Callable[..., Proc],
    simulated_fleet: Callable[..., SimulatedFleet],
    tmp_path: Path,
) -> tuple[Path, Proc]:
    """The simulated fleet and a daemon watching it; returns the config and daemon."""
    scenario = tmp_path / "follow.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    fleet = simulated_fleet(scenario)
    daemon = spawn("run", "-c", str(fleet.config))
    return fleet.config, daemon


def test_follow_started_mid_restore_ends_with_it(
    spawn: Callable[..., Proc], fleet_and_daemon: tuple[Path, Proc]
) -> None:
    """Started mid-restore, follow exits 0 once the server is back after its restart."""
    config, daemon = fleet_and_daemon
    wait_for(
        lambda: _has(config, "long-1", "sklm.restore.started"),
        timeout=30,
        what="the daemon to record long-1's restore start",
    )
    [started] = [
        e for e in _audit(config) if e["type"] == "sklm.restore.started"
        and e["subject"] == "long-1"
    ]  # fmt: skip
    restore_id = started["data"]["restore_id"]
    as_text = spawn("follow", "long-1", "-c", str(config), "--timeout", "90")
    as_json = spawn("follow", "long-1", "-c", str(config), "--json", "--timeout", "90")

    # The waits only guard against a hang (the bug: follow never ended).
    assert as_json.wait(timeout=100) == 0, as_json.stdout() + as_json.stderr()
    assert as_text.wait(timeout=100) == 0, as_text.stdout() + as_text.stderr()

    views = [json.loads(line) for line in as_json.stdout().splitlines()]
    assert views, as_json.stderr()
    # It started while the restore was running: its first look saw it in progress.
    assert views[0]["outcome"] in ("running", "stalled"), views[0]
    assert {v["restore_id"] for v in views} == {restore_id}
    outcomes = [v["outcome"] for v in views]
    # Forward only: running, stalled (the 8 s phase), completed; never back.
    assert [ORDER[o] for o in outcomes] == sorted(ORDER[o] for o in outcomes)
    assert "stalled" in outcomes
    assert (views[-1]["outcome"], views[-1]["server_back"]) == ("completed", True)
    assert views[-1]["phases"][-1]["phase"] == "COMPLETED"
    # Done as the README defines it: after the restart, which the daemon recorded.
    assert _has(config, "long-1", "sklm.server.restarted")

    text = as_text.stdout()
    assert "waiting for one to start" not in text
    assert text.rstrip().endswith("; server back"), text
    assert "(stalled)" in text  # the 8 s phase keeps its mark once it moved on

    # Now it has ended: --last reports it at once; without it, follow waits for the
    # next restore until --timeout, which has its own exit code.
    last = spawn("follow", "long-1", "-c", str(config), "--last", "--json")
    assert last.wait(timeout=30) == 0, last.stderr()
    assert json.loads(last.stdout().splitlines()[-1])["restore_id"] == restore_id
    wait_next = spawn("follow", "long-1", "-c", str(config), "--timeout", "1")
    assert wait_next.wait(timeout=30) == 124, wait_next.stdout() + wait_next.stderr()
    assert "no restore running; waiting for one to start" in wait_next.stdout()
    assert "gave up after 1 s" in wait_next.stderr()
    assert daemon.popen.poll() is None, daemon.stderr()


def test_stalled_restore_shows_its_duration_and_times_out(
    spawn: Callable[..., Proc], fleet_and_daemon: tuple[Path, Proc]
) -> None:
    """A stuck restore: 'stalled' with a duration (not 'now'); --timeout exits 124."""
    config, _ = fleet_and_daemon
    wait_for(
        lambda: _has(config, "stuck-1", "sklm.restore.stalled"),
        timeout=30,
        what="the daemon to report stuck-1 stalled",
    )
    follow = spawn("follow", "stuck-1", "-c", str(config), "--timeout", "1")
    assert follow.wait(timeout=30) == 124, follow.stdout() + follow.stderr()
    lines = follow.stdout().splitlines()
    assert "(stalled)" in lines[0], lines
    [keystores] = [line for line in lines if "4/7 RESTORE_KEYSTORES" in line]
    assert " stalled " in keystores, lines
    assert not keystores.endswith("now"), lines
    assert "gave up after 1 s" in follow.stderr()

    as_json = spawn("follow", "stuck-1", "-c", str(config), "--json", "--timeout", "1")
    assert as_json.wait(timeout=30) == 124, as_json.stderr()
    [view] = [json.loads(line) for line in as_json.stdout().splitlines()]
    assert (view["outcome"], view["current_phase"]) == ("stalled", "RESTORE_KEYSTORES")
