"""The log sink: each event as one structlog entry (``sink.event``), for demos and debugging."""

from __future__ import annotations

from typing import Any, Final

import structlog

from watcher.config import SinkConfig
from watcher.events import Event, log_level

#: The log event name of a delivered event.
SINK_EVENT: Final = "sink.event"

#: ``data`` fields copied into the log entry when the event has them, in this order.
LOGGED_FIELDS: Final = (
    "phase",
    "code",
    "previous_phase",
    "inferred",
    "restore_id",
    "duration",
    "reason",
    "stalled_for",
    "down_for",
    "late",
    "failure",
    "detail",
    "failed_for",
)

_log = structlog.get_logger(__name__)


class LogSink:
    """Writes each event to the log, at the level its type means; never fails.

    Problems (failed, stalled, unreachable, auth failed) are warnings, the rest info.
    """

    def __init__(self, config: SinkConfig) -> None:
        self._config = config

    @property
    def name(self) -> str:
        """The sink's configured name."""
        return self._config.name

    async def deliver(self, event: Event) -> None:
        """Log ``event`` as ``sink.event`` with its type, server and main fields."""
        fields: dict[str, Any] = {
            key: event.data[key] for key in LOGGED_FIELDS if key in event.data
        }
        _log.log(
            log_level(event.type),
            SINK_EVENT,
            sink=self.name,
            type=str(event.type),
            server=event.server,
            event_id=event.id,
            time=event.time.isoformat(),
            **fields,
        )
