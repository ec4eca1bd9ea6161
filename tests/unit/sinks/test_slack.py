import json

import pytest
from aioresponses import aioresponses

from tests.clock import VirtualClock
from tests.unit.sinks.fakes import T0, completed_event, mock_post
from watcher.config import Secret, SinkConfig
from watcher.errors import DeliveryError
from watcher.events import Event, EventType
from watcher.sinks.slack import SlackSink, format_duration, render

URL = "https://hooks.slack.com/services/T000/B000/SLACKTOKEN42"


def _sink(session, clock, **kwargs) -> SlackSink:
    config = SinkConfig(name="chat", type="slack", url=Secret(URL), **kwargs)
    return SlackSink(config, session, clock)


def _failed_event() -> Event:
    return Event.create(
        EventType.RESTORE_FAILED,
        "sklm-<dr>",
        T0,
        {
            "restore_id": "r-2",
            "phase": "RESTORE_KEYSTORES",
            "reason": "went back to IDLE from RESTORE_KEYSTORES",
            "duration": 3725.0,
            "result": 1,
            "timeline": [
                {
                    "phase": "INITIALIZE",
                    "code": 1,
                    "inferred": False,
                    "entered_at": "2026-11-29T08:58:55.000Z",
                    "duration": 12.25,
                },
                {
                    "phase": "RESTORE_KEYSTORES",
                    "code": 4,
                    "inferred": True,
                    "entered_at": "2026-11-29T08:59:07.250Z",
                    "duration": None,
                },
            ],
        },
        key=("r-2",),
    )


def test_completed_restore_message() -> None:
    """A completed restore renders header, facts, timeline with inferred marks, restore id."""
    assert render(completed_event()) == {
        "text": "Restore completed on sklm-prod-1 after 4m 05s",
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": ":white_check_mark: Restore completed on sklm-prod-1",
                    "emoji": True,
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Server*\nsklm-prod-1"},
                    {"type": "mrkdwn", "text": "*Outcome*\nCompleted"},
                    {"type": "mrkdwn", "text": "*Duration*\n4m 05s"},
                    {"type": "mrkdwn", "text": "*Ended*\n2026-11-29T10:00:00.000Z"},
                ],
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*Timeline*\n"
                    "• INITIALIZE — 0.5s\n"
                    "• CREATE_TEMP_DIR — 0.0s _(inferred)_\n"
                    "• RESTORE_DATABASES — 4m 05s\n"
                    "• COMPLETED",
                },
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "restore_id `r-1`"}],
            },
        ],
    }


def test_failed_restore_message() -> None:
    """A failed restore adds the reason; mrkdwn control characters are escaped."""
    assert render(_failed_event()) == {
        "text": "Restore failed on sklm-&lt;dr&gt; after 1h 02m: "
        "went back to IDLE from RESTORE_KEYSTORES",
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": ":x: Restore failed on sklm-<dr>",
                    "emoji": True,
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Server*\nsklm-&lt;dr&gt;"},
                    {"type": "mrkdwn", "text": "*Outcome*\nFailed"},
                    {"type": "mrkdwn", "text": "*Duration*\n1h 02m"},
                    {"type": "mrkdwn", "text": "*Ended*\n2026-11-29T10:00:00.000Z"},
                ],
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*Reason*\nwent back to IDLE from RESTORE_KEYSTORES",
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*Timeline*\n"
                    "• INITIALIZE — 12.2s\n"
                    "• RESTORE_KEYSTORES _(inferred)_",
                },
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "restore_id `r-2`"}],
            },
        ],
    }


@pytest.mark.parametrize(
    ("type_", "data", "summary"),
    [
        (EventType.RESTORE_STARTED, {"phase": "INITIALIZE"}, "restore started (phase INITIALIZE)"),
        (EventType.RESTORE_PHASE, {"phase": "CLEANUP", "inferred": True}, "restore entered CLEANUP (inferred)"),
        (EventType.RESTORE_STALLED, {"phase": "CLEANUP", "stalled_for": 1830.0}, "restore stalled in CLEANUP for 30m 30s"),
        (EventType.SERVER_UNREACHABLE, {"reason": "the server did not come back within restart_timeout (900 s) after the restore", "failure": "unreachable", "detail": "connection refused", "down_for": 905.0, "after_restore": True}, "not back 15m 05s after the restore: connection refused"),
        (EventType.SERVER_RECOVERED, {"down_for": 75.0}, "server answers again after 1m 15s"),
        (EventType.SERVER_RESTARTED, {"down_for": 42.0, "late": True}, "server back after its post-restore restart (away 42.0s, later than expected)"),
        (EventType.AUTH_FAILED, {"detail": "CTGKM6003E"}, "login rejected: CTGKM6003E; check the configured username and password"),
        (EventType.TEST, {}, "test message from sklm-watcher"),
    ],
)  # fmt: skip
def test_other_events_are_one_section(type_, data, summary) -> None:
    """Every other event type is one concise mrkdwn section plus the same text."""
    message = render(Event.create(type_, "s1", T0, data))
    assert message["text"] == f"s1: {summary}"
    [block] = message["blocks"]
    assert block["type"] == "section"
    assert block["text"]["type"] == "mrkdwn"
    assert block["text"]["text"].endswith(f" *s1*: {summary}")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "unknown"), (0.44, "0.4s"), (59.94, "59.9s"), (60, "1m 00s"),
     (3599.4, "59m 59s"), (3600, "1h 00m"), (90061, "25h 01m")],
)  # fmt: skip
def test_durations_are_human(seconds, text) -> None:
    """Durations read as seconds, minutes and seconds, or hours and minutes."""
    assert format_duration(seconds) == text


async def test_posts_the_rendered_message(session) -> None:
    """The POST body is exactly the rendered message, as JSON."""
    event = completed_event()
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=200, body="ok")
        await _sink(session, VirtualClock.auto()).deliver(event)
    [[call]] = mocked.requests.values()
    assert json.loads(call.kwargs["data"]) == render(event)
    assert call.kwargs["allow_redirects"] is False


@pytest.mark.parametrize(
    ("status", "body", "headers", "permanent", "retry_after"),
    [
        (400, "invalid_payload", {}, True, None),
        (400, "no_text", {}, True, None),
        (403, "action_prohibited", {}, True, None),
        (403, "invalid_token", {}, True, None),
        (404, "channel_not_found", {}, True, None),
        (404, "no_service", {}, True, None),
        (410, "channel_is_archived", {}, True, None),
        (429, "rate_limited", {"Retry-After": "30"}, False, 30.0),
        (500, "rollup_error", {}, False, None),
        (503, "", {}, False, None),
    ],
)
async def test_slack_errors_are_classified(
    session, status, body, headers, permanent, retry_after
) -> None:
    """Slack's documented errors are permanent, 429 waits as asked, 5xx is retried."""
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=status, body=body, headers=headers)
        with pytest.raises(DeliveryError) as caught:
            await _sink(session, VirtualClock.auto()).deliver(completed_event())
    error = caught.value
    assert (error.permanent, error.retry_after) == (permanent, retry_after)
    assert error.detail == f"HTTP {status} {body}".strip()
    assert "SLACKTOKEN42" not in str(error)


async def test_unexpected_body_is_not_quoted(session) -> None:
    """A body that is not a Slack error code stays out of the error message."""
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=404, body=f"no route for {URL}")
        with pytest.raises(DeliveryError) as caught:
            await _sink(session, VirtualClock.auto()).deliver(completed_event())
    assert caught.value.detail == "HTTP 404"


async def test_rate_limit_spaces_messages(session) -> None:
    """Messages are at least min_interval apart; time already passed counts."""
    clock = VirtualClock.auto()
    sink = _sink(session, clock, min_interval=2.0)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=200, repeat=True)
        await sink.deliver(completed_event())
        assert clock.sleeps == []
        await sink.deliver(completed_event())
        assert clock.sleeps == [2.0]
        clock.advance(1.5)
        await sink.deliver(completed_event())
        assert clock.sleeps == [2.0, 0.5]
        clock.advance(5.0)
        await sink.deliver(completed_event())
        assert clock.sleeps == [2.0, 0.5]


async def test_failed_posts_count_against_the_rate_limit(session) -> None:
    """A rejected POST still spaces the next one (Slack counts every request)."""
    clock = VirtualClock.auto()
    sink = _sink(session, clock, min_interval=1.0)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=500)
        mock_post(mocked, URL, status=200)
        with pytest.raises(DeliveryError):
            await sink.deliver(completed_event())
        await sink.deliver(completed_event())
    assert clock.sleeps == [1.0]


async def test_zero_min_interval_sends_at_once(session) -> None:
    """With min_interval 0 (set explicitly) messages are not spaced."""
    clock = VirtualClock.auto()
    sink = _sink(session, clock, min_interval=0.0)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=200, repeat=True)
        for _ in range(3):
            await sink.deliver(completed_event())
    assert clock.sleeps == []
