"""Events: CloudEvents 1.0 objects with the contract's types, ids and JSON form."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Final

SPEC_VERSION: Final = "1.0"
SOURCE_PREFIX: Final = "sklm-watcher/"
CONTENT_TYPE: Final = "application/json"

# Fixed forever: changing it would change every event id and re-alert after an upgrade.
_ID_NAMESPACE: Final = uuid.UUID("6f1d7a52-3c1e-5b8e-9a43-5d1c2b7e0a11")


class EventType(StrEnum):
    """The contract's event types (design.md); extend, never rename."""

    RESTORE_STARTED = "sklm.restore.started"
    RESTORE_PHASE = "sklm.restore.phase"
    RESTORE_COMPLETED = "sklm.restore.completed"
    RESTORE_FAILED = "sklm.restore.failed"
    RESTORE_STALLED = "sklm.restore.stalled"
    SERVER_UNREACHABLE = "sklm.server.unreachable"
    SERVER_RECOVERED = "sklm.server.recovered"
    SERVER_RESTARTED = "sklm.server.restarted"
    AUTH_FAILED = "sklm.auth.failed"
    #: Credentials accepted again after ``sklm.auth.failed`` (SIGHUP or a fix on SKLM).
    AUTH_RECOVERED = "sklm.auth.recovered"
    #: Sent only by ``sklm-watcher test-sink``; never produced by watching.
    TEST = "sklm.watcher.test"


#: Event types whose log lines are warnings: each says something is wrong. The rest
#: (progress, completion, recovery) are info (issue 11: ``journalctl -p warning``
#: shows exactly the problems).
_WARNING_TYPES: Final = frozenset(
    {
        EventType.RESTORE_FAILED,
        EventType.RESTORE_STALLED,
        EventType.SERVER_UNREACHABLE,
        EventType.AUTH_FAILED,
    }
)


def log_level(type: EventType) -> int:
    """Return the ``logging`` level of a log line reporting an event of ``type``."""
    return logging.WARNING if type in _WARNING_TYPES else logging.INFO


def format_time(at: datetime) -> str:
    """Format an aware datetime as the contract's UTC time, e.g. ``...T10:00:01.250Z``."""
    if at.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    utc = at.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """Parse a time written by :func:`format_time` (or any ISO 8601 with offset)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"time without offset: {text!r}")
    return parsed.astimezone(UTC)


def stable_id(*parts: str) -> str:
    """Return a UUID derived only from ``parts``: the same parts, the same id.

    Event ids and restore ids are built this way so that an event re-derived after a
    crash gets the id it had before, and a receiver can deduplicate on it.
    """
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(parts)))


@dataclass(frozen=True, slots=True)
class Event:
    """One CloudEvents 1.0 event about one server.

    ``data`` always holds ``server``; phase events also ``phase``, ``code`` and
    ``inferred``. Build events with :meth:`create` so ids stay deterministic.
    """

    id: str
    type: EventType
    server: str
    time: datetime
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A read-only view: events are values and are shared between journal and sinks.
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    @classmethod
    def create(
        cls,
        type: EventType,
        server: str,
        at: datetime,
        data: Mapping[str, Any] | None = None,
        *,
        key: Iterable[str] = (),
    ) -> Event:
        """Build an event whose id is derived from (server, type, *key).

        Args:
            type: The event type.
            server: The server's configured name (``subject`` and ``data.server``).
            at: When it happened (aware).
            data: Further ``data`` fields; ``server`` is added.
            key: What makes this event unique for this server and type, e.g.
                ``(restore_id, phase name)``; must be stable across restarts.
        """
        payload: dict[str, Any] = {"server": server}
        if data:
            payload.update(data)
        event_id = stable_id(server, str(type), *key)
        return cls(id=event_id, type=type, server=server, time=at, data=payload)

    @property
    def source(self) -> str:
        """The CloudEvents ``source``: ``sklm-watcher/<server>``."""
        return SOURCE_PREFIX + self.server

    def to_dict(self) -> dict[str, Any]:
        """Return the CloudEvents JSON object (contract field order)."""
        return {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": str(self.type),
            "time": format_time(self.time),
            "subject": self.server,
            "datacontenttype": CONTENT_TYPE,
            "data": dict(self.data),
        }

    def to_json(self) -> str:
        """Return the event as one line of compact JSON (the audit log's line)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Event:
        """Rebuild an event from :meth:`to_dict` output (journal, audit log)."""
        return cls(
            id=str(obj["id"]),
            type=EventType(obj["type"]),
            server=str(obj["subject"]),
            time=parse_time(str(obj["time"])),
            data=dict(obj.get("data") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> Event:
        """Rebuild an event from one JSON line."""
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise TypeError("an event must be a JSON object")
        return cls.from_dict(obj)


def matches_any(patterns: Iterable[str], value: str) -> bool:
    """Whether ``value`` matches at least one shell-style glob in ``patterns``.

    Case-sensitive, so ``sklm.restore.*`` matches event types exactly as written.
    """
    return any(fnmatchcase(value, pattern) for pattern in patterns)
