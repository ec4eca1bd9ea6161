"""The PagerDuty sink: Events API v2 ``trigger`` and ``resolve``, paired by ``dedup_key``.

Which event opens an alert and which closes it (``dedup_key`` is
``sklm-watcher/<server>/<condition>``; never a secret, at most 255 characters):

=================================================  ========  ===========================
event                                              action    condition (severity)
=================================================  ========  ===========================
``sklm.restore.failed``                            trigger   ``restore/<id>`` (critical)
``sklm.restore.stalled``                           trigger   ``restore/<id>`` (warning)
``sklm.restore.completed``                         resolve   ``restore/<id>``
``sklm.server.unreachable`` after a restore        trigger   ``restart/<id>`` (critical):
                                                             did not come back
``sklm.server.restarted``                          resolve   ``restart/<id>``: back
``sklm.server.unreachable``                        trigger   ``unreachable`` (error)
``sklm.server.recovered``                          resolve   the condition its
                                                             unreachable had
``sklm.auth.failed``                               trigger   ``auth`` (error)
``sklm.auth.recovered``                            resolve   ``auth``
``sklm.watcher.test`` (``test-sink``)              trigger,  ``test/<event id>`` (info),
                                                   resolve   closed at once
started, phase                                     none      not delivered to PagerDuty
=================================================  ========  ===========================

A resend (the dispatcher retries after a timeout whose request did arrive) is the
same trigger or resolve with the same ``dedup_key``: PagerDuty folds it into the
alert it already has, so it is a no-op. A failed restore stays open until a person
resolves it: nothing automatic can say it is fine.

PagerDuty answers 202 on success, 400 for an invalid event (permanent: the body is
wrong, retrying sends the same body), 429 when the integration's rate limit is hit
and 5xx on its own trouble (both transient, ``Retry-After`` honoured if sent): the
shared classification of :mod:`watcher.sinks.base`. The URL is configurable (a relay,
a test receiver) and kept as a :class:`~watcher.config.Secret` like every sink URL:
it is not secret by itself, but a relay's URL may carry a token, and one rule for
all URLs is simpler to keep. The routing key is a secret and travels only in the
body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp

from watcher.clock import Clock, SystemClock
from watcher.config import Secret, SinkConfig
from watcher.errors import ConfigError, ConfigProblem
from watcher.events import Event, EventType, format_time
from watcher.sinks.base import classify, post
from watcher.sinks.text import did_not_come_back, headline

#: PagerDuty's Events API v2 endpoint (the sink's default ``url``).
EVENTS_URL: Final = "https://events.pagerduty.com/v2/enqueue"

#: PagerDuty truncates nothing for us: a longer summary is a 400.
MAX_SUMMARY: Final = 1024
#: PagerDuty's limit on ``dedup_key``.
MAX_DEDUP_KEY: Final = 255
#: ``custom_details`` larger than this (JSON bytes) are replaced by a note; the
#: whole event must stay under PagerDuty's 512 KiB.
MAX_DETAILS_BYTES: Final = 64 * 1024

#: PagerDuty's ``client`` field: who sent the event.
CLIENT: Final = "sklm-watcher"

Action = Literal["trigger", "resolve"]

# What of PagerDuty's answer may go into an error message: short phrases of plain
# words. A word mixing letters and digits could be (part of) the routing key echoed
# back, so a phrase holding one is left out.
_SAFE_MESSAGE: Final = re.compile(r"[A-Za-z0-9 '._,:()-]{1,160}")
_WORD: Final = re.compile(r"[A-Za-z0-9]+")


def _may_hold_secret(text: str, secret: str) -> bool:
    for word in _WORD.findall(text):
        if len(word) >= 8 and any(c.isdigit() for c in word):
            return True
        if len(word) >= 6 and word in secret:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Step:
    """One Events API call an event turns into."""

    action: Action
    dedup_key: str
    #: ``critical``, ``error``, ``warning`` or ``info``; triggers only.
    severity: str | None = None
    #: The payload's ``component``: which part of the SKLM server is concerned.
    component: str | None = None


def dedup_key(server: str, condition: str) -> str:
    """Return the ``dedup_key`` pairing a trigger with its resolve."""
    return f"sklm-watcher/{server}/{condition}"[:MAX_DEDUP_KEY]


def _outage_condition(event: Event) -> tuple[str, str]:
    """The condition of an unreachable event and of the recovered that ends it.

    Both carry ``after_restore`` and ``restore_id`` from the same state (nothing
    changes them while no poll succeeds), so they name the same condition.
    """
    restore_id = event.data.get("restore_id")
    if event.data.get("after_restore") and restore_id:
        return f"restart/{restore_id}", "restart"
    return "unreachable", "availability"


def steps(event: Event) -> tuple[Step, ...]:
    """Return the Events API calls for ``event`` (none for progress events)."""
    server = event.server
    restore = f"restore/{event.data.get('restore_id') or 'unknown'}"
    match event.type:
        case EventType.RESTORE_FAILED:
            return (Step("trigger", dedup_key(server, restore), "critical", "restore"),)
        case EventType.RESTORE_STALLED:
            return (Step("trigger", dedup_key(server, restore), "warning", "restore"),)
        case EventType.RESTORE_COMPLETED:
            return (Step("resolve", dedup_key(server, restore)),)
        case EventType.SERVER_UNREACHABLE:
            condition, component = _outage_condition(event)
            severity = "critical" if did_not_come_back(event) else "error"
            return (Step("trigger", dedup_key(server, condition), severity, component),)
        case EventType.SERVER_RECOVERED:
            condition, _ = _outage_condition(event)
            return (Step("resolve", dedup_key(server, condition)),)
        case EventType.SERVER_RESTARTED:
            rid = event.data.get("restore_id") or "unknown"
            return (Step("resolve", dedup_key(server, f"restart/{rid}")),)
        case EventType.AUTH_FAILED:
            return (Step("trigger", dedup_key(server, "auth"), "error", "login"),)
        case EventType.AUTH_RECOVERED:
            return (Step("resolve", dedup_key(server, "auth")),)
        case EventType.TEST:
            key = dedup_key(server, f"test/{event.id}")
            return (Step("trigger", key, "info", "test"), Step("resolve", key))
        case _:
            return ()


def _details(event: Event) -> dict[str, Any]:
    details: dict[str, Any] = {
        "event_id": event.id,
        "type": str(event.type),
        **dict(event.data),
    }
    size = len(json.dumps(details, ensure_ascii=False, default=str).encode())
    if size > MAX_DETAILS_BYTES:
        return {
            "event_id": event.id,
            "type": str(event.type),
            "server": event.server,
            "note": f"event data of {size} bytes left out; see the audit log",
        }
    return details


def body(event: Event, step: Step, routing_key: str) -> dict[str, Any]:
    """Return the Events API v2 request body for one step of ``event``."""
    out: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": step.action,
        "dedup_key": step.dedup_key,
    }
    if step.action == "trigger":
        summary = headline(event)
        if len(summary) > MAX_SUMMARY:
            summary = summary[: MAX_SUMMARY - 1] + "…"
        out["payload"] = {
            "summary": summary,
            "source": event.server,
            "severity": step.severity or "error",
            "timestamp": format_time(event.time),
            "component": step.component or "sklm",
            "group": "sklm",
            "class": str(event.type),
            "custom_details": _details(event),
        }
        out["client"] = CLIENT
    return out


def _answer_detail(head: bytes, secret: str) -> str:
    """PagerDuty's reason from its JSON answer, if it is plainly safe to repeat."""
    try:
        answer = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(answer, Mapping):
        return ""
    parts: list[object] = [answer.get("message")]
    errors = answer.get("errors")
    if isinstance(errors, list):
        parts.extend(errors[:3])
    safe = [
        part
        for part in parts
        if isinstance(part, str)
        and _SAFE_MESSAGE.fullmatch(part)
        and not _may_hold_secret(part, secret)
    ]
    return "; ".join(safe)


class PagerDutySink:
    """Sends triggers and resolves to PagerDuty's Events API v2.

    Raises:
        ConfigError: At construction, when the routing key is missing.
    """

    def __init__(
        self,
        config: SinkConfig,
        session: aiohttp.ClientSession,
        clock: Clock | None = None,
    ) -> None:
        if config.routing_key is None or not config.routing_key:
            raise ConfigError(
                [
                    ConfigProblem(
                        f"sinks.{config.name}.routing_key",
                        "a pagerduty sink needs a routing key",
                    )
                ]
            )
        self._routing_key: Secret = config.routing_key
        self._url = config.url if config.url else Secret(EVENTS_URL)
        self._config = config
        self._session = session
        self._clock: Clock = clock if clock is not None else SystemClock()

    @property
    def name(self) -> str:
        """The sink's configured name."""
        return self._config.name

    async def deliver(self, event: Event) -> None:
        """Send the event's trigger or resolve (nothing for progress events).

        A test event sends a trigger and then its resolve: if the resolve fails, the
        retry sends both again, and the repeated trigger is a no-op.

        Raises:
            DeliveryError: Classified as in :mod:`watcher.sinks.base`, with
                PagerDuty's reason when it is safe to repeat.
        """
        headers = dict(self._config.headers)
        headers["Content-Type"] = "application/json"
        key = self._routing_key.reveal()
        for step in steps(event):
            payload = json.dumps(body(event, step, key), ensure_ascii=False)
            status, answer_headers, head = await post(
                self.name,
                self._session,
                self._url.reveal(),
                payload.encode(),
                headers,
                seconds=self._config.timeout,
            )
            error = classify(
                self.name,
                status,
                answer_headers,
                self._clock.now(),
                detail=_answer_detail(head, key),
            )
            if error is not None:
                raise error
