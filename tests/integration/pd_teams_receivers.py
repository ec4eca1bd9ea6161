"""PagerDuty and Teams stand-ins on 127.0.0.1 that check every payload against the docs.

``PagerDutyReceiver`` checks each Events API v2 request (fields, types, summary and
dedup_key lengths, severities, the 512 KB limit), answers 202 with PagerDuty's JSON or
400 ``invalid event`` with its ``errors`` list, and keeps the alerts' state (open or
resolved, triggers per dedup_key), so a test can see triggers and resolves pair up.
``TeamsReceiver`` checks each Workflows message (``type: message``, one Adaptive Card
attachment, the card's elements and their required fields, the 28 KB limit) and
answers 202, or 400 with a Workflows-style ``{"error": {"code": ...}}``.
Both can be scripted to answer something else (429, 5xx...) for the next requests.

These are written from the vendors' documentation, not from the sinks' code: their
literals are their own.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from aiohttp import web

PD_SEVERITIES = {"critical", "error", "warning", "info"}
PD_ACTIONS = {"trigger", "acknowledge", "resolve"}
PD_TOP_KEYS = {
    "routing_key",
    "event_action",
    "dedup_key",
    "payload",
    "images",
    "links",
    "client",
    "client_url",
}
PD_PAYLOAD_KEYS = {
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
}
PD_MAX_BYTES = 512 * 1024
TEAMS_MAX_BYTES = 28 * 1024
CARD_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_ELEMENTS = {"TextBlock", "FactSet", "RichTextBlock", "Container", "ColumnSet"}


@dataclass(frozen=True, slots=True)
class Scripted:
    """One scripted answer."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def pagerduty_problems(raw: bytes) -> list[str]:
    """What is wrong with an Events API v2 request, per PagerDuty's documentation."""
    if len(raw) > PD_MAX_BYTES:
        return ["event is larger than 512 KB"]
    try:
        event = json.loads(raw)
    except ValueError:
        return ["body is not JSON"]
    if not isinstance(event, dict):
        return ["body is not an object"]
    problems = [f"unknown field {k!r}" for k in event if k not in PD_TOP_KEYS]
    key = event.get("routing_key")
    if not (isinstance(key, str) and len(key) == 32):
        problems.append("'routing_key' must be a 32 character string")
    action = event.get("event_action")
    if action not in PD_ACTIONS:
        problems.append("'event_action' is invalid")
    dedup = event.get("dedup_key")
    if dedup is not None and not (isinstance(dedup, str) and 0 < len(dedup) <= 255):
        problems.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and dedup is None:
        problems.append("'dedup_key' is required to acknowledge or resolve")
    if action == "trigger":
        problems += _payload_problems(event.get("payload"))
    return problems


def _payload_problems(payload: object) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    problems = [
        f"unknown payload field {k!r}" for k in payload if k not in PD_PAYLOAD_KEYS
    ]
    summary = payload.get("summary")
    if not (isinstance(summary, str) and summary.strip()):
        problems.append("'payload.summary' is missing or blank")
    elif len(summary) > 1024:
        problems.append("Length of 'payload.summary' is longer than 1024")
    source = payload.get("source")
    if not (isinstance(source, str) and source.strip()):
        problems.append("'payload.source' is missing or blank")
    if payload.get("severity") not in PD_SEVERITIES:
        problems.append("'payload.severity' is invalid")
    timestamp = payload.get("timestamp")
    if timestamp is not None:
        try:
            parsed = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
        except ValueError:
            problems.append("'payload.timestamp' is not ISO 8601")
        else:
            if parsed.tzinfo is None:
                problems.append("'payload.timestamp' has no offset")
    for name in ("component", "group", "class"):
        if name in payload and not isinstance(payload[name], str):
            problems.append(f"'payload.{name}' must be a string")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        problems.append("'payload.custom_details' must be an object")
    return problems


def teams_problems(raw: bytes) -> list[str]:
    """What is wrong with a Workflows message carrying an Adaptive Card."""
    if len(raw) > TEAMS_MAX_BYTES:
        return [f"message of {len(raw)} bytes is over 28 KB"]
    try:
        message = json.loads(raw)
    except ValueError:
        return ["body is not JSON"]
    if not isinstance(message, dict) or message.get("type") != "message":
        return ["'type' must be 'message'"]
    problems: list[str] = []
    if "summary" in message and not isinstance(message["summary"], str):
        problems.append("'summary' must be a string")
    attachments = message.get("attachments")
    if not (isinstance(attachments, list) and attachments):
        return [*problems, "'attachments' must be a non-empty list"]
    for attachment in attachments:
        if not isinstance(attachment, dict):
            problems.append("an attachment is not an object")
            continue
        if attachment.get("contentType") != CARD_TYPE:
            problems.append("attachment 'contentType' is not an Adaptive Card")
        problems += _card_problems(attachment.get("content"))
    return problems


def _card_problems(card: object) -> list[str]:
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
        return ["content is not an AdaptiveCard"]
    problems: list[str] = []
    if card.get("version") not in {"1.0", "1.1", "1.2", "1.3", "1.4", "1.5"}:
        problems.append("card 'version' is not one Teams renders")
    body = card.get("body")
    if not (isinstance(body, list) and body):
        return [*problems, "card 'body' must be a non-empty list"]
    for element in body:
        if not isinstance(element, dict) or element.get("type") not in CARD_ELEMENTS:
            problems.append("unknown card element")
        elif element["type"] == "TextBlock" and not isinstance(
            element.get("text"), str
        ):
            problems.append("TextBlock without 'text'")
        elif element["type"] == "FactSet":
            facts = element.get("facts")
            if not isinstance(facts, list) or not all(
                isinstance(f, dict)
                and isinstance(f.get("title"), str)
                and isinstance(f.get("value"), str)
                for f in facts
            ):
                problems.append("FactSet facts must be {title, value} strings")
    return problems


class _Base:
    """An aiohttp.web server on 127.0.0.1 recording bodies, with scripted answers."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.script: deque[Scripted] = deque()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where a sink posts; the path stands for a secret token."""
        return f"http://127.0.0.1:{self.port}/hook/S3CR3T-path-token"

    async def __aenter__(self) -> Any:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.bodies.append(raw)
        if self.script:
            answer = self.script.popleft()
            return web.Response(
                status=answer.status, text=answer.body, headers=answer.headers
            )
        return self.answer(raw)

    def answer(self, raw: bytes) -> web.Response:  # pragma: no cover - overridden
        """The documented answer to a request nobody scripted."""
        raise NotImplementedError


class PagerDutyReceiver(_Base):
    """Events API v2 as documented: 202 for a valid event, 400 for an invalid one."""

    def __init__(self) -> None:
        super().__init__()
        #: dedup_key -> "triggered" | "resolved".
        self.alerts: dict[str, str] = {}
        #: dedup_key -> how many triggers it got (a resend adds to the same alert).
        self.triggers: dict[str, int] = {}
        self.invalid: list[list[str]] = []

    def answer(self, raw: bytes) -> web.Response:
        """202 with PagerDuty's JSON, or 400 with its errors list."""
        problems = pagerduty_problems(raw)
        if problems:
            self.invalid.append(problems)
            return web.json_response(
                {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": problems,
                },
                status=400,
            )
        event = json.loads(raw)
        key = event.get("dedup_key") or f"generated-{len(self.bodies)}"
        if event["event_action"] == "trigger":
            self.alerts[key] = "triggered"
            self.triggers[key] = self.triggers.get(key, 0) + 1
        elif event["event_action"] == "resolve" and key in self.alerts:
            self.alerts[key] = "resolved"
        return web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": key},
            status=202,
        )

    def open_alerts(self) -> list[str]:
        """The dedup_keys of alerts triggered and not resolved."""
        return sorted(k for k, v in self.alerts.items() if v == "triggered")


class TeamsReceiver(_Base):
    """A Workflows webhook: 202 for a valid card message, 400 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.invalid: list[list[str]] = []

    def answer(self, raw: bytes) -> web.Response:
        """202 Accepted with no body, or 400 with a Workflows error code."""
        problems = teams_problems(raw)
        if problems:
            self.invalid.append(problems)
            return web.json_response(
                {
                    "error": {
                        "code": "InvalidRequestContent",
                        "message": "; ".join(problems),
                    }
                },
                status=400,
            )
        return web.Response(status=202)

    def cards(self) -> list[dict[str, Any]]:
        """The Adaptive Cards received, parsed."""
        return [json.loads(b)["attachments"][0]["content"] for b in self.bodies]
