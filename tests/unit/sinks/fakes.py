"""Test doubles shared by the sink and dispatcher unit tests."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import aiohttp

from watcher.events import Event, EventType

#: A fixed instant for tests that do not verify signatures against the real time.
T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def completed_event(at: datetime = T0) -> Event:
    """A completed restore with one inferred phase in its timeline."""
    return Event.create(
        EventType.RESTORE_COMPLETED,
        "sklm-prod-1",
        at,
        {
            "restore_id": "r-1",
            "phase": "COMPLETED",
            "inferred": False,
            "started_at": "2026-11-29T09:56:00.000Z",
            "duration": 245.4,
            "result": 0,
            "timeline": [
                {
                    "phase": "INITIALIZE",
                    "code": 1,
                    "inferred": False,
                    "entered_at": "2026-11-29T09:56:00.000Z",
                    "duration": 0.5,
                },
                {
                    "phase": "CREATE_TEMP_DIR",
                    "code": 2,
                    "inferred": True,
                    "entered_at": "2026-11-29T09:56:00.500Z",
                    "duration": 0.0,
                },
                {
                    "phase": "RESTORE_DATABASES",
                    "code": 5,
                    "inferred": False,
                    "entered_at": "2026-11-29T09:56:00.500Z",
                    "duration": 244.9,
                },
                {
                    "phase": "COMPLETED",
                    "code": 7,
                    "inferred": False,
                    "entered_at": "2026-11-29T10:00:05.400Z",
                    "duration": None,
                },
            ],
        },
        key=("r-1",),
    )


def phase_event(server: str, restore: str, phase: str, at: datetime = T0) -> Event:
    """A phase event for ``server`` (id unique per server, restore and phase)."""
    return Event.create(
        EventType.RESTORE_PHASE,
        server,
        at,
        {"restore_id": restore, "phase": phase, "code": 1, "inferred": False},
        key=(restore, phase),
    )


class MockResponse(aiohttp.ClientResponse):
    """A ClientResponse aioresponses 0.7.9 can build under aiohttp 3.14.

    aiohttp 3.14 added the required ``stream_writer`` argument, which aioresponses
    does not pass yet; a response that is already sent needs only ``output_size``.
    """

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


def mock_post(mocked: Any, url: str, **kwargs: Any) -> None:
    """Register a POST answer on an ``aioresponses`` mock (with :class:`MockResponse`)."""
    mocked.post(url, response_class=MockResponse, **kwargs)
