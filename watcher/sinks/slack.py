"""The Slack sink: one incoming-webhook message per event, Block Kit with a text fallback.

Completed and failed restores get a header, the facts (server, outcome, duration,
end time), the reason for a failure, the phase timeline with each phase's duration
(inferred phases marked) and the restore id in a context block. Every other event
is one concise section. The fallback ``text`` (what a phone's lock screen shows)
leads with the server and names the reason in words (``data.detail``):
``sklm-2: unreachable: connection refused``. The payload shape is stable: tests
assert it whole.

Slack answers errors with a status and a short code in the body (``invalid_payload``,
``channel_not_found``, ``channel_is_archived``, ``no_service``, ``invalid_token``,
``action_prohibited``...); they are classified like any webhook answer (400/403/404/
410 permanent, 429 honouring ``Retry-After``, 5xx transient) and the code goes into
the error message. Slack allows about one message per second per webhook, so
messages are spaced by ``min_interval`` (the configuration defaults it to 1 s for
Slack; 0 turns the spacing off).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

from watcher.clock import Clock, SystemClock
from watcher.config import SinkConfig
from watcher.errors import ConfigError, ConfigProblem
from watcher.events import Event, EventType, format_time
from watcher.sinks.base import Pacer, classify, post

# Slack's error codes are short lower-case words; anything else in a body is not
# quoted (it could echo something we should not log).
_SLACK_CODE: Final = re.compile(r"[a-z_]{1,64}")

_EMOJI: Final[Mapping[EventType, str]] = {
    EventType.RESTORE_STARTED: ":arrow_forward:",
    EventType.RESTORE_PHASE: ":small_blue_diamond:",
    EventType.RESTORE_COMPLETED: ":white_check_mark:",
    EventType.RESTORE_FAILED: ":x:",
    EventType.RESTORE_STALLED: ":hourglass:",
    EventType.SERVER_UNREACHABLE: ":warning:",
    EventType.SERVER_RECOVERED: ":large_green_circle:",
    EventType.SERVER_RESTARTED: ":arrows_counterclockwise:",
    EventType.AUTH_FAILED: ":lock:",
    EventType.AUTH_RECOVERED: ":unlock:",
    EventType.TEST: ":wave:",
}


def escape(text: object) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_duration(seconds: object) -> str:
    """Format seconds for people: ``0.4s``, ``12.0s``, ``4m 05s``, ``1h 02m``."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "unknown"
    if seconds < 60:
        return f"{max(0.0, float(seconds)):.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def _timeline_lines(timeline: object) -> list[str]:
    lines: list[str] = []
    if not isinstance(timeline, list):
        return lines
    for entry in timeline:
        if not isinstance(entry, Mapping):
            continue
        line = f"• {escape(entry.get('phase', '?'))}"
        if entry.get("duration") is not None:
            line += f" — {format_duration(entry.get('duration'))}"
        if entry.get("inferred"):
            line += " _(inferred)_"
        lines.append(line)
    return lines


def _restore_message(event: Event) -> dict[str, Any]:
    data = event.data
    completed = event.type is EventType.RESTORE_COMPLETED
    outcome = "completed" if completed else "failed"
    duration = format_duration(data.get("duration"))
    server = escape(event.server)
    text = f"Restore {outcome} on {server} after {duration}"
    if not completed and data.get("reason"):
        text += f": {escape(data['reason'])}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": f"{_EMOJI[event.type]} Restore {outcome} on {event.server}",
                "emoji": True,
            },
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Server*\n{server}"},
                {"type": "mrkdwn", "text": f"*Outcome*\n{outcome.capitalize()}"},
                {"type": "mrkdwn", "text": f"*Duration*\n{duration}"},
                {"type": "mrkdwn", "text": f"*Ended*\n{format_time(event.time)}"},
            ],
        },
    ]
    if not completed:
        reason = escape(data.get("reason") or "unknown")
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Reason*\n{reason}"},
            }
        )
    lines = _timeline_lines(data.get("timeline"))
    if lines:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Timeline*\n" + "\n".join(lines)},
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"restore_id `{escape(data.get('restore_id') or 'unknown')}`",
                }
            ],
        }
    )
    return {"text": text, "blocks": blocks}


def _summary(event: Event) -> str:
    data = event.data
    phase = escape(data.get("phase") or "unknown")
    match event.type:
        case EventType.RESTORE_STARTED:
            return f"restore started (phase {phase})"
        case EventType.RESTORE_PHASE:
            return f"restore entered {phase}" + (
                " (inferred)" if data.get("inferred") else ""
            )
        case EventType.RESTORE_STALLED:
            stalled_for = format_duration(data.get("stalled_for"))
            return f"restore stalled in {phase} for {stalled_for}"
        case EventType.SERVER_UNREACHABLE:
            return _unreachable(event)
        case EventType.SERVER_RECOVERED:
            down_for = data.get("down_for")
            if data.get("after_restore"):
                away = (
                    "" if down_for is None else f" (away {format_duration(down_for)})"
                )
                return f"server back after the restore, later than expected{away}"
            if down_for is None:
                return "server answers again"
            return f"server answers again after {format_duration(down_for)}"
        case EventType.SERVER_RESTARTED:
            late = ", later than expected" if data.get("late") else ""
            if data.get("down_for") is None:
                # Seen only through a re-login or across the watcher's own downtime.
                return f"server back after its post-restore restart{late}"
            away = format_duration(data.get("down_for"))
            return f"server back after its post-restore restart (away {away}{late})"
        case EventType.AUTH_FAILED:
            detail = _detail(event)
            if not detail:
                return "login rejected: check the configured username and password"
            # The client's reason already starts "login rejected the credentials...".
            said = (
                detail
                if detail.startswith("login rejected")
                else f"login rejected: {detail}"
            )
            return f"{said}; check the configured username and password"
        case EventType.AUTH_RECOVERED:
            failed_for = data.get("failed_for")
            if failed_for is None:
                return "login accepted again"
            return f"login accepted again (rejected for {format_duration(failed_for)})"
        case EventType.TEST:
            return "test message from sklm-watcher"
        case _:
            return escape(event.type)


#: How each failure kind (``data.failure``) reads in a message.
_FAILURE_WORDS: Final[Mapping[str, str]] = {
    "unreachable": "unreachable",
    "tls": "TLS error",
    "protocol": "protocol error",
}


def _detail(event: Event) -> str:
    """The reason in words (``data.detail``), escaped; ``""`` when there is none."""
    detail = event.data.get("detail")
    if not isinstance(detail, str) or not detail.strip():
        return ""
    # A detail recorded by an older version starts with the server's name, which
    # the message already shows first.
    detail = detail.strip().removeprefix(f"{event.server}: ")
    return escape(detail)


def _unreachable(event: Event) -> str:
    """``unreachable: connection refused``: the kind, then the reason in words.

    The fallback ``text`` is what a phone's lock screen shows, so the reason comes
    right after the server's name rather than the kind alone.
    """
    data = event.data
    detail = _detail(event)
    if data.get("after_restore"):
        down_for = data.get("down_for")
        after = "" if down_for is None else f" {format_duration(down_for)}"
        said = f"not back{after} after the restore"
    else:
        kind = data.get("failure") or data.get("reason") or "unreachable"
        said = escape(_FAILURE_WORDS.get(str(kind), str(kind)))
    return f"{said}: {detail}" if detail else said


def render(event: Event) -> dict[str, Any]:
    """Return the Slack message (``text`` fallback and ``blocks``) for ``event``."""
    if event.type in (EventType.RESTORE_COMPLETED, EventType.RESTORE_FAILED):
        return _restore_message(event)
    summary = _summary(event)
    server = escape(event.server)
    emoji = _EMOJI.get(event.type, ":information_source:")
    return {
        "text": f"{server}: {summary}",
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"{emoji} *{server}*: {summary}"},
            }
        ],
    }


class SlackSink:
    """Posts events to a Slack incoming webhook, at most one per ``min_interval``.

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
                [ConfigProblem(f"sinks.{config.name}.url", "a Slack sink needs a URL")]
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
        """Post the message for ``event`` once, after the rate limit allows it.

        Raises:
            DeliveryError: Classified as in :mod:`watcher.sinks.base`, with Slack's
                error code in the message.
        """
        body = json.dumps(render(event), ensure_ascii=False).encode()
        async with self._pacer.turn():
            status, headers, head = await post(
                self.name,
                self._session,
                self._url.reveal(),
                body,
                {"Content-Type": "application/json; charset=utf-8"},
                seconds=self._config.timeout,
            )
        code = head.decode("ascii", "replace").strip()
        detail = code if _SLACK_CODE.fullmatch(code) else ""
        error = classify(self.name, status, headers, self._clock.now(), detail=detail)
        if error is not None:
            raise error
