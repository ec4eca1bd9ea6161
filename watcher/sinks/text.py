"""Plain-text wording of events, for sinks that are not Slack (PagerDuty, Teams, ...).

Slack's own texts (``watcher.sinks.slack``) are mrkdwn with escaping; these are plain
strings with the same facts, so a sink that renders its own markup (an Adaptive Card,
a PagerDuty summary, an e-mail subject) does not inherit Slack's escapes. Durations
are formatted by Slack's :func:`~watcher.sinks.slack.format_duration`, so every sink
says ``4m 12s`` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import assert_never

from watcher.events import Event, EventType
from watcher.sinks.slack import format_duration


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One phase of a restore's timeline, as people read it."""

    phase: str
    #: ``12.0s``, ``4m 05s`` or ``""`` when the phase's duration is unknown.
    duration: str
    inferred: bool


def did_not_come_back(event: Event) -> bool:
    """Whether ``event`` is the unreachable event for a server missing after a restore.

    The tracker reports a server that stays away longer than ``restart_timeout``
    after COMPLETED as ``sklm.server.unreachable`` with ``after_restore: true``.
    """
    return event.type is EventType.SERVER_UNREACHABLE and bool(
        event.data.get("after_restore")
    )


def headline(event: Event) -> str:
    """One line saying what happened, led by the server's name.

    E.g. ``sklm-prod-1: restore completed in 4m 12s`` or ``sklm-prod-1: restore
    failed after 1m 02s: back to IDLE from RESTORE_KEYSTORES``.
    """
    return f"{event.server}: {_what(event)}"


def _what(event: Event) -> str:
    data = event.data
    phase = str(data.get("phase") or "unknown")
    match event.type:
        case EventType.RESTORE_COMPLETED:
            return f"restore completed in {format_duration(data.get('duration'))}"
        case EventType.RESTORE_FAILED:
            text = f"restore failed after {format_duration(data.get('duration'))}"
            return text + (f": {data['reason']}" if data.get("reason") else "")
        case EventType.RESTORE_STARTED:
            return f"restore started (phase {phase})"
        case EventType.RESTORE_PHASE:
            inferred = " (inferred)" if data.get("inferred") else ""
            return f"restore entered {phase}{inferred}"
        case EventType.RESTORE_STALLED:
            stalled_for = format_duration(data.get("stalled_for"))
            return f"restore stalled in {phase} for {stalled_for}"
        case EventType.SERVER_UNREACHABLE if did_not_come_back(event):
            return "server did not come back after the restore " + (
                f"({data.get('reason') or 'no answer'})"
            )
        case EventType.SERVER_UNREACHABLE:
            return f"server unreachable ({data.get('reason') or 'no answer'})"
        case EventType.SERVER_RECOVERED:
            return f"server answers again after {format_duration(data.get('down_for'))}"
        case EventType.SERVER_RESTARTED:
            late = ", later than expected" if data.get("late") else ""
            if data.get("down_for") is None:
                return f"server back after its post-restore restart{late}"
            away = format_duration(data.get("down_for"))
            return f"server back after its post-restore restart (away {away}{late})"
        case EventType.AUTH_FAILED:
            return "login rejected: check the configured username and password"
        case EventType.AUTH_RECOVERED:
            return "login accepted again"
        case EventType.TEST:
            return "test message from sklm-watcher"
        case _:  # pragma: no cover - mypy checks every EventType has a case
            assert_never(event.type)


def timeline(event: Event) -> list[TimelineRow]:
    """The phases of a completed or failed restore (``data.timeline``), in order."""
    rows: list[TimelineRow] = []
    entries = event.data.get("timeline")
    if not isinstance(entries, list):
        return rows
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        duration = entry.get("duration")
        rows.append(
            TimelineRow(
                phase=str(entry.get("phase", "?")),
                duration="" if duration is None else format_duration(duration),
                inferred=bool(entry.get("inferred")),
            )
        )
    return rows
