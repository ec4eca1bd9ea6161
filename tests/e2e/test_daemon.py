"""The daemon as a real subprocess against the simulator as a real subprocess."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from watcher.demo import compare_with_truth
from watcher.events import Event, EventType
from watcher.simulator import load_scenario

from .conftest import SCENARIOS, Proc, SimulatedFleet, read_jsonl, wait_for

pytestmark = pytest.mark.e2e

#: What ends each scripted restore in the audit log, by the scenario's outcome.
OUTCOME_EVENT = {
    "complete": EventType.SERVER_RESTARTED,
    "fail": EventType.RESTORE_FAILED,
    "stall": EventType.RESTORE_STALLED,
}


def audit_events(fleet: SimulatedFleet) -> list[Event]:
    """Every event in the daemon's audit log, in order."""
    return [Event.from_dict(obj) for obj in read_jsonl(audit_path(fleet))]


def audit_path(fleet: SimulatedFleet) -> Path:
    """Where the written config puts the audit log."""
    return fleet.config.parent / "state" / "events.jsonl"


def expected_outcomes(
    scenario: str, *, skip: Iterable[str] = ()
) -> dict[str, list[EventType]]:
    """The terminal event of every scripted restore, per server."""
    spec = load_scenario(SCENARIOS / scenario)
    skipped = set(skip)
    return {
        s.name: [OUTCOME_EVENT[r.outcome] for r in s.restores]
        for s in spec.servers
        if s.name not in skipped
    }


def outcomes_reached(
    events: Sequence[Event], expected: Mapping[str, Sequence[EventType]]
) -> bool:
    """Whether every server's expected terminal events are in the audit log."""
    for server, wanted in expected.items():
        have = Counter(e.type for e in events if e.server == server)
        if any(have[t] < n for t, n in Counter(wanted).items()):
            return False
    return True


def run_daemon(spawn: Callable[..., Proc], fleet: SimulatedFleet) -> Proc:
    """Start ``sklm-watcher run`` on the fleet's written config."""
    return spawn("--log-format", "json", "run", "-c", str(fleet.config))


def assert_matches_truth(
    events: Sequence[Event], truth: Sequence[Mapping[str, Any]], *, skip: Iterable[str]
) -> None:
    """Each server's recorded phases equal the simulator's, in order, each once."""
    skipped = set(skip)
    checks = compare_with_truth(
        events, [t for t in truth if t.get("server") not in skipped]
    )
    mismatches = {s: c for s, c in checks.items() if not c.ok and s not in skipped}
    assert mismatches == {}


def test_run_follows_a_restore_and_stops_on_sigterm(spawn, simulated_fleet) -> None:
    """`run` records a full restore with its restart and exits 0 on SIGTERM."""
    fleet = simulated_fleet("basic.toml")
    daemon = run_daemon(spawn, fleet)
    expected = expected_outcomes("basic.toml")
    wait_for(
        lambda: (
            outcomes_reached(audit_events(fleet), expected)
            or daemon.popen.poll() is not None
        ),
        timeout=40,
        what="the restart event in the audit log",
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, daemon.stderr()
    events = audit_events(fleet)
    assert [(e.type, e.data.get("phase")) for e in events] == [
        (EventType.RESTORE_STARTED, "INITIALIZE"),
        (EventType.RESTORE_PHASE, "INITIALIZE"),
        (EventType.RESTORE_PHASE, "CREATE_TEMP_DIR"),
        (EventType.RESTORE_PHASE, "RESTORE_CONFIG_FILES"),
        (EventType.RESTORE_PHASE, "RESTORE_KEYSTORES"),
        (EventType.RESTORE_PHASE, "RESTORE_DATABASES"),
        (EventType.RESTORE_PHASE, "CLEANUP"),
        (EventType.RESTORE_PHASE, "COMPLETED"),
        (EventType.RESTORE_COMPLETED, "COMPLETED"),
        (EventType.SERVER_RESTARTED, "IDLE"),
    ]
    assert_matches_truth(events, read_jsonl(fleet.ground_truth), skip=())
    logs = [json.loads(line) for line in daemon.stderr().splitlines() if line]
    assert {"daemon.started", "daemon.stopping", "daemon.stopped"} <= {
        entry["event"] for entry in logs
    }
    # The password file's content never shows in logs or the audit log.
    password = "basic-password"
    assert password not in daemon.stderr()
    assert password not in audit_path(fleet).read_text(encoding="utf-8")


def test_a_fleet_of_twenty_is_recorded_exactly(spawn, simulated_fleet) -> None:
    """Twenty servers with every quirk: the audit log equals the ground truth."""
    fleet = simulated_fleet("fleet20.toml")
    daemon = run_daemon(spawn, fleet)
    expected = expected_outcomes("fleet20.toml", skip=["fleet-08"])
    expected["fleet-08"] = [EventType.AUTH_FAILED]
    wait_for(
        lambda: (
            outcomes_reached(audit_events(fleet), expected)
            or daemon.popen.poll() is not None
        ),
        timeout=50,
        what="every server's outcome in the audit log",
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, daemon.stderr()
    events = audit_events(fleet)
    assert len({e.id for e in events}) == len(events), "duplicate event ids"
    # fleet-08's credentials are wrong: it is reported once and nothing is invented.
    assert [e.type for e in events if e.server == "fleet-08"] == [EventType.AUTH_FAILED]
    assert_matches_truth(events, read_jsonl(fleet.ground_truth), skip=["fleet-08"])
    for server, wanted in expected.items():
        mine = [e for e in events if e.server == server]
        started = sum(1 for e in mine if e.type is EventType.RESTORE_STARTED)
        assert started == len(wanted) - wanted.count(EventType.AUTH_FAILED), server
        assert not {EventType.SERVER_UNREACHABLE} & {e.type for e in mine}, server


def test_sigkill_at_random_moments_loses_and_repeats_nothing(
    spawn, simulated_fleet
) -> None:
    """Killed with SIGKILL mid-restore and restarted, the audit log still equals truth."""
    fleet = simulated_fleet("basic.toml")
    expected = expected_outcomes("basic.toml")
    rng = random.Random(20261129)
    kills = 0
    while True:
        daemon = run_daemon(spawn, fleet)
        if outcomes_reached(audit_events(fleet), expected) or kills >= 6:
            break
        # Let it run a random while, then kill it without warning.
        target = len(read_jsonl(audit_path(fleet))) + rng.randint(1, 3)

        def some_progress(target: int = target) -> bool:
            return len(read_jsonl(audit_path(fleet))) >= target or outcomes_reached(
                audit_events(fleet), expected
            )

        # Each daemon is killed after it journaled 1-3 more events, at a random
        # point of the poll cycle after that. A kill on a timer alone could land
        # before every first poll, six times over, while the whole restore went
        # by unseen: then there is nothing to recover and the test proved nothing.
        wait_for(some_progress, timeout=30, what="progress before the kill")
        time.sleep(rng.uniform(0.0, 0.3))
        daemon.signal(signal.SIGKILL)
        daemon.wait(timeout=10)
        kills += 1
    wait_for(
        lambda: (
            outcomes_reached(audit_events(fleet), expected)
            or daemon.popen.poll() is not None
        ),
        timeout=40,
        what="the restore's outcome after the restarts",
    )
    # The last one may have been started just now: SIGTERM is its to handle.
    wait_for(
        lambda: "daemon.started" in daemon.stderr(), timeout=20, what="the last daemon"
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, daemon.stderr()
    events = audit_events(fleet)
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids), "an event was written twice"
    assert kills >= 2
    assert_matches_truth(events, read_jsonl(fleet.ground_truth), skip=())
    types = [e.type for e in events]
    assert types.count(EventType.RESTORE_STARTED) == 1
    assert types.count(EventType.RESTORE_COMPLETED) == 1
    assert types.count(EventType.SERVER_RESTARTED) == 1
    assert EventType.RESTORE_FAILED not in types


def test_check_config_exit_codes(spawn, tmp_path: Path) -> None:
    """check-config: 0 and a summary for a valid file, 2 and every problem otherwise."""
    good = tmp_path / "good.toml"
    good.write_text(
        '[watcher]\nstate_dir = "state"\naudit_log = "events.jsonl"\n'
        '[[servers]]\nname = "a"\nurl = "https://sklm.example:9443"\n'
        'password_env = "E2E_PW"\n',
        encoding="utf-8",
    )
    ok = spawn("check-config", "-c", str(good), env={"E2E_PW": "s3cret-e2e"})
    assert ok.wait() == 0, ok.stderr()
    assert "OK" in ok.stdout()
    assert "s3cret-e2e" not in ok.stdout() + ok.stderr()
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[servers]]\nname = "a"\nurl = "http://sklm.example"\nidle_intervall = 3\n',
        encoding="utf-8",
    )
    refused = spawn("check-config", "-c", str(bad))
    assert refused.wait() == 2
    err = refused.stderr()
    assert "servers[0].idle_intervall" in err
    assert "idle_interval" in err
    assert "servers[0].url" in err
    missing = spawn("check-config", "-c", str(tmp_path / "nope.toml"))
    assert missing.wait() == 2
    usage = spawn("check-config")
    assert usage.wait() == 2


def test_once_json_reports_every_server(spawn, simulated_fleet) -> None:
    """`once --json` prints each server's phase over verified TLS; exit 1 on a failure."""
    fleet = simulated_fleet("fleet20.toml")
    once = spawn("once", "-c", str(fleet.config), "--json")
    assert once.wait(timeout=30) == 1  # fleet-08's credentials are wrong
    rows = {row["server"]: row for row in json.loads(once.stdout())}
    assert len(rows) == 20
    assert rows["fleet-05"]["phase"] == "IDLE"
    assert rows["fleet-05"]["code"] == 0
    assert rows["fleet-05"]["error"] is None
    assert rows["fleet-08"]["error_kind"] == "SklmAuthError"
    assert rows["fleet-08"]["phase"] is None
    assert "fleet-password" not in once.stdout() + once.stderr()


def test_a_second_daemon_on_the_same_state_dir_refuses(spawn, simulated_fleet) -> None:
    """Two daemons on one state directory: the second exits 1 naming the first's pid."""
    fleet = simulated_fleet("basic.toml")
    first = run_daemon(spawn, fleet)
    wait_for(
        lambda: "daemon.started" in first.stderr(), timeout=20, what="the first daemon"
    )
    second = spawn("run", "-c", str(fleet.config))
    assert second.wait(timeout=20) == 1
    assert str(first.popen.pid) in second.stderr()
    assert first.popen.poll() is None
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
