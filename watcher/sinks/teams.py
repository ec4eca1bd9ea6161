"""The Microsoft Teams sink: an Adaptive Card per event, POSTed to a Workflows webhook.

The URL is a Workflows ("When a Teams webhook request is received") or Power
Automate HTTP trigger; its ``sig`` parameter is what authorises the post, so the URL
is a secret. The body is the message Workflows expects::

    {"type": "message", "summary": "<plain text>",
     "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                      "contentUrl": null, "content": {<AdaptiveCard 1.4>}}]}

Completed and failed restores get a title, the facts (server, outcome, duration,
end time), the reason of a failure, the phase timeline (each phase's duration,
inferred phases marked) and the restore id: the content of the Slack message. Every
other event is its one-line headline. ``summary`` and the card's ``fallbackText``
carry the plain headline (notifications, clients that cannot render cards).

Limits respected: Teams refuses messages over about 28 KB, so the body is kept
under :data:`MAX_BODY_BYTES` (a long reason is cut, a long timeline shortened, and
as a last resort the card is reduced to its headline); Teams throttles bursts, so
posts are spaced by ``min_interval`` (default 1 s, like Slack; 0 turns it off) and a
429's ``Retry-After`` is honoured by the dispatcher. Answers are classified as in
:mod:`watcher.sinks.base` (202/200 delivered, 400/401/403/404 permanent, 429/5xx
transient); the error code of a Workflows JSON error goes into the message, nothing
else of the answer does (it could echo the URL).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import aiohttp

from watcher.clock import Clock, SystemClock
from watcher.config import SinkConfig
from watcher.errors import ConfigError, ConfigProblem
from watcher.events import Event, EventType, format_time
from watcher.sinks.base import Pacer, classify, post
from watcher.sinks.slack import format_duration
from watcher.sinks.text import TimelineRow, headline, timeline

#: Teams' message size limit is about 28 KB; stay a little under it.
MAX_BODY_BYTES: Final = 27 * 1024
#: A failure's reason is cut to this many characters on the card.
MAX_REASON: Final = 2000
#: At most this many timeline rows; the rest are counted in one more row.
MAX_TIMELINE_ROWS: Final = 30
#: The headline alone, when even the shortened card is too large.
MAX_HEADLINE: Final = 1000

ADAPTIVE_CARD: Final = "application/vnd.microsoft.card.adaptive"
CARD_VERSION: Final = "1.4"
CARD_SCHEMA: Final = "http://adaptivecards.io/schemas/adaptive-card.json"

# Workflows error codes are identifiers (``TriggerInputSchemaMismatch``).
_ERROR_CODE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")

_COLOR: Final = {
    EventType.RESTORE_COMPLETED: "Good",
    EventType.RESTORE_FAILED: "Attention",
    EventType.RESTORE_STALLED: "Warning",
    EventType.SERVER_UNREACHABLE: "Attention",
    EventType.SERVER_RECOVERED: "Good",
    EventType.SERVER_RESTARTED: "Good",
    EventType.AUTH_FAILED: "Attention",
    EventType.AUTH_RECOVERED: "Good",
}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def _timeline_facts(rows: list[TimelineRow], limit: int) -> list[dict[str, str]]:
    facts = [
        {
            "title": row.phase,
            "value": (row.duration or "—") + (" (inferred)" if row.inferred else ""),
        }
        for row in rows[:limit]
    ]
    if len(rows) > limit:
        facts.append({"title": "…", "value": f"{len(rows) - limit} more phases"})
    return facts


def _restore_body(event: Event, *, reason_limit: int, rows: int) -> list[Any]:
    data = event.data
    completed = event.type is EventType.RESTORE_COMPLETED
    outcome = "completed" if completed else "failed"
    body: list[Any] = [
        _text(
            f"Restore {outcome} on {event.server}",
            weight="Bolder",
            size="Medium",
            color=_COLOR[event.type],
        ),
        {
            "type": "FactSet",
            "facts": [
                {"title": "Server", "value": event.server},
                {"title": "Outcome", "value": outcome.capitalize()},
                {"title": "Duration", "value": format_duration(data.get("duration"))},
                {"title": "Ended", "value": format_time(event.time)},
            ],
        },
    ]
    if not completed:
        reason = str(data.get("reason") or "unknown")
        body += [
            _text("Reason", weight="Bolder"),
            _text(_cut(reason, reason_limit)),
        ]
    facts = _timeline_facts(timeline(event), rows)
    if facts:
        body += [
            _text("Timeline", weight="Bolder"),
            {"type": "FactSet", "facts": facts},
        ]
    body.append(
        _text(
            f"restore_id {data.get('restore_id') or 'unknown'}",
            isSubtle=True,
            size="Small",
        )
    )
    return body


def _message(event: Event, summary: str, body: list[Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "summary": summary,
        "attachments": [
            {
                "contentType": ADAPTIVE_CARD,
                "contentUrl": None,
                "content": {
                    "$schema": CARD_SCHEMA,
                    "type": "AdaptiveCard",
                    "version": CARD_VERSION,
                    "fallbackText": summary,
                    "msteams": {"width": "Full"},
                    "body": body,
                },
            }
        ],
    }


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode()


def render(event: Event) -> bytes:
    """Return the JSON body for ``event``, never larger than :data:`MAX_BODY_BYTES`."""
    summary = _cut(headline(event), MAX_HEADLINE)
    if event.type in (EventType.RESTORE_COMPLETED, EventType.RESTORE_FAILED):
        attempts = ((MAX_REASON, MAX_TIMELINE_ROWS), (500, 10))
        for reason_limit, rows in attempts:
            encoded = _encode(
                _message(
                    event,
                    summary,
                    _restore_body(event, reason_limit=reason_limit, rows=rows),
                )
            )
            if len(encoded) <= MAX_BODY_BYTES:
                return encoded
    else:
        style: dict[str, Any] = {"weight": "Bolder"}
        if event.type in _COLOR:
            style["color"] = _COLOR[event.type]
        encoded = _encode(_message(event, summary, [_text(summary, **style)]))
        if len(encoded) <= MAX_BODY_BYTES:
            return encoded
    # Unreachable with the tracker's events (names are short, reasons bounded); a
    # guard so no event can make a message Teams refuses for good.
    short = _cut(summary, 200)
    return _encode(_message(event, short, [_text(short, weight="Bolder")]))


def _error_code(head: bytes) -> str:
    try:
        answer = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        return ""
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""


class TeamsSink:
    """Posts an Adaptive Card per event to a Teams Workflows webhook.

    At most one post per ``min_interval``.

    Raises:
        ConfigError: At construction, when the URL is missing.
    """

    def __init__(
        self,
        config: SinkConfig,
        session: aiohttp.ClientSession,
        clock: Clock | None = None,
    ) -> None:
        if config.url is None or not config.url:
            raise ConfigError(
                [ConfigProblem(f"sinks.{config.name}.url", "a Teams sink needs a URL")]
            )
        self._url = config.url
        self._config = config
        self._session = session
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._pacer = Pacer(config.min_interval, self._clock)

    @property
    def name(self) -> str:
        """The sink's configured name."""
        return self._config.name

    async def deliver(self, event: Event) -> None:
        """Post the card for ``event`` once, after the rate limit allows it.

        Raises:
            DeliveryError: Classified as in :mod:`watcher.sinks.base`, with the
                Workflows error code in the message.
        """
        body = render(event)
        headers = dict(self._config.headers)
        headers["Content-Type"] = "application/json; charset=utf-8"
        async with self._pacer.turn():
            status, answer_headers, head = await post(
                self.name,
                self._session,
                self._url.reveal(),
                body,
                headers,
                seconds=self._config.timeout,
            )
        error = classify(
            self.name,
            status,
            answer_headers,
            self._clock.now(),
            detail=_error_code(head),
        )
        if error is not None:
            raise error
