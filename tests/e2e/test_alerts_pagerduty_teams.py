"""PagerDuty and Teams sinks end to end: endpoint down, daemon restarted, all delivered.

And ``sklm-watcher test-sink`` reaches each of them. The receiver is a real HTTP
server on 127.0.0.1 that answers 200; the daemon is a real subprocess.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from watcher.config import PAGERDUTY_DEFAULT_EVENTS, SLACK_DEFAULT_EVENTS
from watcher.events import Event, EventType
from watcher.sinks.text import headline

from .conftest import Receiver, read_jsonl, wait_for

pytestmark = pytest.mark.e2e

ROUTING_KEY = "e2eR0UT1NGkey0123456789abcdefAB"


def add_sink(config: Path, kind: str, url: str) -> dict[str, str]:
    """Append a pagerduty or teams sink posting to ``url``; return the daemon's env."""
    if kind == "pagerduty":
        lines = [
            'name = "pager"',
            'type = "pagerduty"',
            'routing_key_env = "E2E_PD_KEY"',
        ]
        lines.append(f'url = "{url}"')
        env = {"E2E_PD_KEY": ROUTING_KEY}
    else:
        # The Teams URL is a secret: from the environment, as the README says.
        lines = ['name = "teams"', 'type = "teams"', 'url_env = "E2E_TEAMS_URL"']
        env = {"E2E_TEAMS_URL": url}
    lines += ["allow_insecure_http = true", "max_age = 600.0"]
    with config.open("a", encoding="utf-8") as f:
        f.write("\n[[sinks]]\n" + "\n".join(lines) + "\n")
    return env


def expected(kind: str, journaled: list[dict[str, Any]]) -> set[str]:
    """What the receiver must have got: PagerDuty dedup keys or Teams summaries."""
    wanted = PAGERDUTY_DEFAULT_EVENTS if kind == "pagerduty" else SLACK_DEFAULT_EVENTS
    events = [Event.from_dict(e) for e in journaled if e["type"] in wanted]
    if kind == "teams":
        return {headline(e) for e in events}
    out = set()
    for e in events:
        condition = "restart" if e.type is EventType.SERVER_RESTARTED else "restore"
        out.add(f"sklm-watcher/{e.server}/{condition}/{e.data['restore_id']}")
    return out


def received(kind: str, receiver: Receiver) -> set[str]:
    """The PagerDuty dedup keys or Teams summaries the receiver got."""
    bodies = [json.loads(body) for _, body in receiver.posts]
    field = "dedup_key" if kind == "pagerduty" else "summary"
    return {b[field] for b in bodies}


@pytest.mark.parametrize("kind", ["pagerduty", "teams"])
def test_endpoint_down_during_a_restore_is_delivered_after_a_restart(
    kind: str, spawn, simulated_fleet, receiver: Receiver
) -> None:
    """Endpoint down + daemon restarted: every wanted event arrives once it is back."""
    fleet = simulated_fleet("basic.toml")
    env = add_sink(fleet.config, kind, receiver.url)
    audit = fleet.config.parent / "state" / "events.jsonl"

    def journaled_types() -> list[str]:
        return [e["type"] for e in read_jsonl(audit)]

    daemon = spawn("run", "-c", str(fleet.config), env=env)
    wait_for(
        lambda: str(EventType.RESTORE_COMPLETED) in journaled_types(),
        timeout=40,
        what="the completed event, journaled while the endpoint is down",
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()
    assert receiver.posts == []
    pending = spawn("outbox", "-c", str(fleet.config), "--json", env=env)
    assert pending.wait() == 0, pending.stderr()
    (row,) = json.loads(pending.stdout())["sinks"]
    assert row["pending"] >= 1

    receiver.up()
    daemon = spawn("run", "-c", str(fleet.config), env=env)

    def done() -> bool:
        journaled = read_jsonl(audit)
        if str(EventType.SERVER_RESTARTED) not in [e["type"] for e in journaled]:
            return False
        return received(kind, receiver) == expected(kind, journaled)

    wait_for(done, timeout=40, what=f"every wanted event at the {kind} receiver")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()

    journaled = read_jsonl(audit)
    want = expected(kind, journaled)
    if kind == "pagerduty":
        # The restore completed and the server came back: two resolves, no trigger.
        assert len(want) == 2
        bodies = [json.loads(body) for _, body in receiver.posts]
        assert {b["event_action"] for b in bodies} == {"resolve"}
        assert {b["routing_key"] for b in bodies} == {ROUTING_KEY}
    else:
        assert any("restore completed in" in s for s in want)
    empty = spawn("outbox", "-c", str(fleet.config), "--json", env=env)
    assert empty.wait() == 0
    (row,) = json.loads(empty.stdout())["sinks"]
    assert (row["pending"], row["dead"]) == (0, 0)
    for secret in (ROUTING_KEY, receiver.url):
        assert secret not in daemon.stderr()


@pytest.mark.parametrize("kind", ["pagerduty", "teams"])
def test_test_sink_reaches_the_sink(
    kind: str, spawn, simulated_fleet, receiver: Receiver
) -> None:
    """test-sink sends PagerDuty a trigger and its resolve, Teams one card; exit 0."""
    fleet = simulated_fleet("basic.toml")
    env = add_sink(fleet.config, kind, receiver.url)
    name = "pager" if kind == "pagerduty" else "teams"
    receiver.up()
    proc = spawn("test-sink", "-c", str(fleet.config), name, env=env)
    assert proc.wait(timeout=30) == 0, proc.stderr()
    assert proc.stdout().startswith(f"{name}: delivered test event ")
    bodies = [json.loads(body) for _, body in receiver.posts]
    if kind == "pagerduty":
        assert [b["event_action"] for b in bodies] == ["trigger", "resolve"]
        assert bodies[0]["payload"]["severity"] == "info"
        assert bodies[0]["dedup_key"] == bodies[1]["dedup_key"]
    else:
        (card,) = bodies
        assert card["summary"] == "sklm-watcher-test: test message from sklm-watcher"
    for secret in (ROUTING_KEY, receiver.url):
        assert secret not in proc.stdout() + proc.stderr()


def test_test_sink_failure_names_no_secret(
    spawn, simulated_fleet, receiver: Receiver
) -> None:
    """A refused test event exits 1 with the status, never the key or the URL."""
    fleet = simulated_fleet("basic.toml")
    url = receiver.url.replace("/hook", "/gone")  # the receiver answers 410 there
    env = add_sink(fleet.config, "pagerduty", url)
    receiver.up()
    proc = spawn("test-sink", "-c", str(fleet.config), "pager", env=env)
    assert proc.wait(timeout=30) == 1
    assert "pager: FAILED: sink pager: HTTP 410" in proc.stderr()
    for secret in (ROUTING_KEY, url):
        assert secret not in proc.stdout() + proc.stderr()
