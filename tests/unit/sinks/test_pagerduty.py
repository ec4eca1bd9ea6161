"""PagerDuty: which events trigger and resolve, paired by dedup_key, from the real tracker."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from tests.unit.test_tracker import (
    DONE,
    IDLE,
    INIT,
    KEYS,
    SERVER,
    down,
    feed,
    ok,
    seq,
)
from watcher.config import ServerConfig
from watcher.events import Event, EventType
from watcher.sinks.pagerduty import (
    MAX_DEDUP_KEY,
    MAX_SUMMARY,
    _answer_detail,
    body,
    dedup_key,
    steps,
)
from watcher.tracker import Failure

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
T0 = datetime(2026, 11, 29, 10, tzinfo=UTC)


def open_alerts(events: Iterable[Event]) -> dict[str, str]:
    """Play events into a PagerDuty stand-in: open alerts by dedup_key -> summary."""
    alerts: dict[str, str] = {}
    for event in events:
        for step in steps(event):
            if step.action == "trigger":
                alerts[step.dedup_key] = body(event, step, KEY)["payload"]["summary"]
            else:
                alerts.pop(step.dedup_key, None)
    return alerts


def actions(events: Iterable[Event]) -> list[tuple[str, str, str, str | None]]:
    """Each call as (event type, action, dedup_key, severity)."""
    return [
        (str(e.type), s.action, s.dedup_key, s.severity)
        for e in events
        for s in steps(e)
    ]


def test_server_that_did_not_come_back_is_triggered_then_resolved() -> None:
    """Past restart_timeout: a critical trigger; the server back resolves it."""
    obs = [
        *seq(IDLE, DONE),
        down(20),
        down(200),
        down(321),
        down(400),
        ok(500, IDLE, relogin=True),
    ]
    _, events, _ = feed(obs)
    (rid,) = {e.data["restore_id"] for e in events if "restore_id" in e.data}
    restart = f"sklm-watcher/{SERVER}/restart/{rid}"
    assert actions(events)[-4:] == [
        (
            "sklm.restore.completed",
            "resolve",
            f"sklm-watcher/{SERVER}/restore/{rid}",
            None,
        ),
        ("sklm.server.unreachable", "trigger", restart, "critical"),
        ("sklm.server.recovered", "resolve", restart, None),
        ("sklm.server.restarted", "resolve", restart, None),
    ]
    assert open_alerts(events) == {}


def test_did_not_come_back_is_resolved_by_restarted_alone() -> None:
    """A sink filtering out recovered still closes the alert on server back."""
    obs = [*seq(IDLE, DONE), down(20), down(321), ok(500, IDLE, relogin=True)]
    _, events, _ = feed(obs)
    kept = [e for e in events if e.type is not EventType.SERVER_RECOVERED]
    assert any(e.type is EventType.SERVER_UNREACHABLE for e in kept)
    assert open_alerts(kept) == {}


def test_outage_is_triggered_then_resolved_and_a_second_one_opens_again() -> None:
    """Unreachable and recovered share the server's outage key, each outage anew."""
    obs = [ok(0, IDLE), down(10), down(45), ok(60, IDLE)]
    obs += [down(100), down(140), ok(150, IDLE)]
    _, events, _ = feed(obs)
    key = f"sklm-watcher/{SERVER}/unreachable"
    assert (
        actions(events)
        == [
            ("sklm.server.unreachable", "trigger", key, "error"),
            ("sklm.server.recovered", "resolve", key, None),
        ]
        * 2
    )
    assert open_alerts(events[:1]) == {
        key: f"{SERVER}: server unreachable (unreachable)"
    }
    assert open_alerts(events) == {}


def test_auth_failed_is_resolved_by_auth_recovered() -> None:
    """Rejected credentials open an alert; the next accepted login closes it."""
    obs = [ok(0, IDLE), down(10, Failure.AUTH, "rejected"), ok(400, IDLE)]
    _, events, _ = feed(obs)
    key = f"sklm-watcher/{SERVER}/auth"
    assert actions(events) == [
        ("sklm.auth.failed", "trigger", key, "error"),
        ("sklm.auth.recovered", "resolve", key, None),
    ]


def test_stall_is_resolved_by_completion_but_a_failure_stays_open() -> None:
    """A stalled restore closes when it completes; a failed one waits for a person."""
    config = ServerConfig(name=SERVER, url="https://s:9443", stall_after=60.0)
    _, completed, _ = feed(
        [ok(0, IDLE), ok(10, INIT), ok(20, KEYS), ok(100, KEYS), ok(110, DONE)],
        config=config,
    )
    assert [a[:2] for a in actions(completed)] == [
        ("sklm.restore.stalled", "trigger"),
        ("sklm.restore.completed", "resolve"),
    ]
    assert open_alerts(completed) == {}

    _, failed, _ = feed(
        [ok(0, IDLE), ok(10, INIT), ok(20, KEYS), ok(100, KEYS), ok(110, IDLE)],
        config=config,
    )
    (rid,) = {e.data["restore_id"] for e in failed if "restore_id" in e.data}
    assert [a[1:] for a in actions(failed)] == [
        ("trigger", f"sklm-watcher/{SERVER}/restore/{rid}", "warning"),
        ("trigger", f"sklm-watcher/{SERVER}/restore/{rid}", "critical"),
    ]
    (summary,) = open_alerts(failed).values()
    assert summary.startswith(f"{SERVER}: restore failed after 1m 40s")


def test_progress_events_send_nothing() -> None:
    """Started and phase events are not PagerDuty's business."""
    _, events, _ = feed(seq(IDLE, INIT, KEYS))
    assert {e.type for e in events} == {
        EventType.RESTORE_STARTED,
        EventType.RESTORE_PHASE,
    }
    assert actions(events) == []


def test_test_event_triggers_and_resolves_at_once() -> None:
    """test-sink opens an info alert and closes it in the same delivery."""
    event = Event.create(EventType.TEST, "sklm-watcher-test", T0, key=("t",))
    key = f"sklm-watcher/sklm-watcher-test/test/{event.id}"
    assert actions([event]) == [
        ("sklm.watcher.test", "trigger", key, "info"),
        ("sklm.watcher.test", "resolve", key, None),
    ]
    assert open_alerts([event]) == {}


def test_trigger_body_is_the_documented_shape_and_stable() -> None:
    """A trigger carries routing_key, dedup_key and the payload fields, byte-stable."""
    event = Event.create(
        EventType.RESTORE_FAILED,
        "sklm-prod-1",
        T0,
        {"restore_id": "r1", "reason": "back to IDLE", "duration": 62.0},
        key=("r1",),
    )
    (step,) = steps(event)
    assert body(event, step, KEY) == {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "sklm-watcher/sklm-prod-1/restore/r1",
        "payload": {
            "summary": "sklm-prod-1: restore failed after 1m 02s: back to IDLE",
            "source": "sklm-prod-1",
            "severity": "critical",
            "timestamp": "2026-11-29T10:00:00.000Z",
            "component": "restore",
            "group": "sklm",
            "class": "sklm.restore.failed",
            "custom_details": {
                "event_id": event.id,
                "type": "sklm.restore.failed",
                "server": "sklm-prod-1",
                "restore_id": "r1",
                "reason": "back to IDLE",
                "duration": 62.0,
            },
        },
        "client": "sklm-watcher",
    }
    # A resend is the same request: PagerDuty folds it into the alert it has.
    assert json.dumps(body(event, step, KEY)) == json.dumps(body(event, step, KEY))


def test_resolve_body_has_no_payload() -> None:
    """A resolve is the routing key, the action and the dedup_key only."""
    event = Event.create(
        EventType.RESTORE_COMPLETED, "s", T0, {"restore_id": "r1"}, key=("r1",)
    )
    (step,) = steps(event)
    assert body(event, step, KEY) == {
        "routing_key": KEY,
        "event_action": "resolve",
        "dedup_key": "sklm-watcher/s/restore/r1",
    }


def test_summary_and_dedup_key_respect_pagerduty_limits() -> None:
    """A huge reason is cut to 1024 characters; a dedup_key never exceeds 255."""
    event = Event.create(
        EventType.RESTORE_FAILED,
        "s" * 64,
        T0,
        {"restore_id": "r" * 300, "reason": "x" * 5000},
        key=("r1",),
    )
    (step,) = steps(event)
    request = body(event, step, KEY)
    assert len(request["payload"]["summary"]) == MAX_SUMMARY
    assert len(request["dedup_key"]) <= MAX_DEDUP_KEY
    assert len(dedup_key("s" * 64, "restart/" + "r" * 300)) == MAX_DEDUP_KEY


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (
            b'{"status":"invalid event","message":"Event object is invalid",'
            b'"errors":["\'payload.summary\' is missing or blank"]}',
            "Event object is invalid; 'payload.summary' is missing or blank",
        ),
        (
            b'{"status":"invalid event","message":"Event object is invalid",'
            b'"errors":["routing_key R0UT1NGKEY0123456789abcdefABCDEF is invalid"]}',
            "Event object is invalid",
        ),
        (
            b'{"message":"invalid key R0UT1NGKEY0123"}',
            "",
        ),
        (b"<html>oops</html>", ""),
        (b'["not", "an", "object"]', ""),
        (b'{"message": "' + b"x" * 300 + b'"}', ""),
    ],
)
def test_pagerduty_reason_is_repeated_only_when_safe(
    answer: bytes, detail: str
) -> None:
    """PagerDuty's message is quoted; anything looking like a key or too long is not."""
    assert _answer_detail(answer, KEY) == detail
    assert KEY not in _answer_detail(answer, KEY)
