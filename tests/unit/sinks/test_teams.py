"""Teams: the Adaptive Card for each event, whole, and the 28 KB limit kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from watcher.events import Event, EventType
from watcher.sinks.teams import ADAPTIVE_CARD, MAX_BODY_BYTES, render

T0 = datetime(2026, 11, 29, 10, 4, 12, tzinfo=UTC)


def card(event: Event) -> dict[str, Any]:
    """The rendered message, parsed."""
    message: dict[str, Any] = json.loads(render(event))
    return message


def failed(
    reason: str = "back to IDLE from RESTORE_KEYSTORES", phases: int = 2
) -> Event:
    """A failed restore with ``phases`` timeline entries."""
    timeline = [
        {"phase": f"PHASE_{i}", "duration": 12.0 + i, "inferred": i == 1}
        for i in range(phases)
    ]
    return Event.create(
        EventType.RESTORE_FAILED,
        "sklm-prod-1",
        T0,
        {"restore_id": "r1", "reason": reason, "duration": 252.0, "timeline": timeline},
        key=("r1",),
    )


def test_failed_restore_card_is_the_slack_content_whole() -> None:
    """Title, facts, reason, timeline (inferred marked) and restore id, as Slack has."""
    summary = (
        "sklm-prod-1: restore failed after 4m 12s: back to IDLE from RESTORE_KEYSTORES"
    )
    assert card(failed()) == {
        "type": "message",
        "summary": summary,
        "attachments": [
            {
                "contentType": ADAPTIVE_CARD,
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "fallbackText": summary,
                    "msteams": {"width": "Full"},
                    "body": [
                        {
                            "type": "TextBlock",
                            "text": "Restore failed on sklm-prod-1",
                            "wrap": True,
                            "weight": "Bolder",
                            "size": "Medium",
                            "color": "Attention",
                        },
                        {
                            "type": "FactSet",
                            "facts": [
                                {"title": "Server", "value": "sklm-prod-1"},
                                {"title": "Outcome", "value": "Failed"},
                                {"title": "Duration", "value": "4m 12s"},
                                {"title": "Ended", "value": "2026-11-29T10:04:12.000Z"},
                            ],
                        },
                        {
                            "type": "TextBlock",
                            "text": "Reason",
                            "wrap": True,
                            "weight": "Bolder",
                        },
                        {
                            "type": "TextBlock",
                            "text": "back to IDLE from RESTORE_KEYSTORES",
                            "wrap": True,
                        },
                        {
                            "type": "TextBlock",
                            "text": "Timeline",
                            "wrap": True,
                            "weight": "Bolder",
                        },
                        {
                            "type": "FactSet",
                            "facts": [
                                {"title": "PHASE_0", "value": "12.0s"},
                                {"title": "PHASE_1", "value": "13.0s (inferred)"},
                            ],
                        },
                        {
                            "type": "TextBlock",
                            "text": "restore_id r1",
                            "wrap": True,
                            "isSubtle": True,
                            "size": "Small",
                        },
                    ],
                },
            }
        ],
    }


def test_completed_restore_has_no_reason_block() -> None:
    """A completed restore: green title, no reason, the subject line inboxes match."""
    event = Event.create(
        EventType.RESTORE_COMPLETED,
        "sklm-prod-1",
        T0,
        {"restore_id": "r1", "duration": 252.0, "timeline": []},
        key=("r1",),
    )
    message = card(event)
    body = message["attachments"][0]["content"]["body"]
    assert message["summary"] == "sklm-prod-1: restore completed in 4m 12s"
    assert body[0]["color"] == "Good"
    assert [b.get("text") for b in body if b["type"] == "TextBlock"] == [
        "Restore completed on sklm-prod-1",
        "restore_id r1",
    ]


@pytest.mark.parametrize(
    ("type_", "data", "text", "color"),
    [
        (
            EventType.RESTORE_STARTED,
            {"phase": "INITIALIZE"},
            "restore started (phase INITIALIZE)",
            None,
        ),
        (
            EventType.SERVER_UNREACHABLE,
            {"after_restore": True, "reason": "the server did not come back"},
            "server did not come back after the restore (the server did not come back)",
            "Attention",
        ),
        (
            EventType.SERVER_RESTARTED,
            {"down_for": 65.0},
            "server back after its post-restore restart (away 1m 05s)",
            "Good",
        ),
        (EventType.AUTH_RECOVERED, {}, "login accepted again", "Good"),
        (EventType.TEST, {}, "test message from sklm-watcher", None),
    ],
)
def test_other_events_are_one_headline(type_, data, text, color) -> None:
    """Every other event is its headline, in bold, coloured by outcome."""
    message = card(Event.create(type_, "s1", T0, data, key=("k",)))
    (block,) = message["attachments"][0]["content"]["body"]
    assert message["summary"] == f"s1: {text}"
    assert block["text"] == f"s1: {text}"
    assert block.get("color") == color


def test_gigantic_failure_stays_under_the_teams_limit() -> None:
    """A huge reason and timeline are cut, so Teams never refuses the card for size."""
    encoded = render(failed(reason="x" * 200_000, phases=5000))
    assert len(encoded) <= MAX_BODY_BYTES < 28 * 1024
    body = json.loads(encoded)["attachments"][0]["content"]["body"]
    reason = body[3]["text"]
    assert reason.endswith("…")
    assert len(reason) <= 2000
    facts = body[5]["facts"]
    assert facts[-1] == {"title": "…", "value": f"{5000 - len(facts) + 1} more phases"}
