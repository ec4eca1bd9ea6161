from datetime import UTC, datetime

import pytest

from watcher.events import Event, EventType, format_time, matches_any, stable_id


def test_event_json_matches_the_contract_shape() -> None:
    """An event serialises to the contract's CloudEvents object, field for field."""
    at = datetime(2026, 11, 29, 10, 0, 1, 250_000, tzinfo=UTC)
    event = Event.create(
        EventType.RESTORE_PHASE,
        "sklm-prod-1",
        at,
        {"phase": "RESTORE_KEYSTORES", "code": 4, "inferred": False},
        key=("r1", "RESTORE_KEYSTORES"),
    )
    assert event.to_dict() == {
        "specversion": "1.0",
        # A literal, not event.id: an id that changed would re-alert every receiver.
        "id": "5270dcfa-254c-560a-b29e-fc4d4b307def",
        "source": "sklm-watcher/sklm-prod-1",
        "type": "sklm.restore.phase",
        "time": "2026-11-29T10:00:01.250Z",
        "subject": "sklm-prod-1",
        "datacontenttype": "application/json",
        "data": {
            "server": "sklm-prod-1",
            "phase": "RESTORE_KEYSTORES",
            "code": 4,
            "inferred": False,
        },
    }
    assert Event.from_json(event.to_json()) == event


def test_ids_are_stable_and_distinct() -> None:
    """The same key gives the same id; a different key a different one."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    a = Event.create(EventType.RESTORE_STARTED, "s", at, key=("r1",))
    b = Event.create(EventType.RESTORE_STARTED, "s", at, key=("r1",))
    c = Event.create(EventType.RESTORE_STARTED, "s", at, key=("r2",))
    assert a.id == b.id != c.id
    assert (a.id, c.id) == (
        "06ea46ee-fb4b-553b-8402-3f415cda0d6d",
        "c1aa38a2-fead-5b4a-9c22-c90775e63881",
    )
    assert stable_id("x", "y") != stable_id("xy")


def test_naive_times_are_refused() -> None:
    """A naive datetime cannot become an event time."""
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2026, 1, 1))  # noqa: DTZ001


def test_globs_match_types() -> None:
    """Sink filters are shell globs on the type string."""
    assert matches_any(["sklm.restore.*"], "sklm.restore.completed")
    assert not matches_any(["sklm.restore.*"], "sklm.server.unreachable")
    assert not matches_any([], "sklm.restore.completed")
