"""The store contract: what every ``Store`` implementation must do, run against each.

Only the public protocol (:class:`watcher.store.base.Store`) is used here, so a new
implementation joins by adding one opener to ``IMPLEMENTATIONS``; what only SQLite
does (its file, lock, schema, audit-file repair) is in ``tests/unit/test_journal.py``,
what only PostgreSQL does (leases, fencing, the shared chain) in
``tests/integration/store/``.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.clock import VirtualClock
from watcher.config import SinkConfig
from watcher.errors import JournalError
from watcher.events import Event, EventType
from watcher.store.base import OutboxRow, OutboxStatus, OutboxSummary, Silence, Store
from watcher.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
OPS = SinkConfig(name="ops", type="webhook")

#: Opens a store on fresh (per-test) storage with these sinks; opening again after
#: a close reaches the same data. The storage is the value of the fixture that
#: ``STORAGE`` names for the implementation (a directory, a database URL).
Opener = Callable[[Any, VirtualClock, Sequence[SinkConfig]], Store]

#: Every server the tests below record: the PostgreSQL store records only servers
#: whose lease it holds (fencing), so its opener takes these first.
SERVERS = ("a", "b", "prod-1", "lab-1")


def _sqlite(root: Path, clock: VirtualClock, sinks: Sequence[SinkConfig]) -> Store:
    return SqliteStore.open(root / "state", root / "events.jsonl", sinks, clock=clock)


def _postgresql(url: str, clock: VirtualClock, sinks: Sequence[SinkConfig]) -> Store:
    from watcher.store.postgres import PostgresStore

    store = PostgresStore.open(
        url, sinks, node_name="contract", lease_seconds=600, clock=clock
    )
    # A reopened store takes them back from its earlier self (same node name).
    assert len(store.take(SERVERS, len(SERVERS))) == len(SERVERS)
    return store


#: name -> opener.
IMPLEMENTATIONS: dict[str, Opener] = {"sqlite": _sqlite, "postgresql": _postgresql}
#: name -> the fixture giving the opener its fresh storage.
STORAGE: dict[str, str] = {"sqlite": "tmp_path", "postgresql": "pg_url"}


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def event(
    server: str,
    n: int,
    type: EventType = EventType.RESTORE_PHASE,
    *,
    when: datetime | None = None,
) -> Event:
    """A deterministic event: the n-th of ``server``, at T0 + n seconds by default."""
    return Event.create(
        type,
        server,
        when or at(n),
        {"restore_id": f"r-{server}", "phase": f"P{n}", "inferred": False},
        key=(str(n),),
    )


def outbox_row(
    e: Event,
    *,
    seq: int,
    sink: str = "ops",
    attempts: int = 0,
    first_attempt_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
    last_error: str | None = None,
    status: OutboxStatus = OutboxStatus.PENDING,
    delivered_at: datetime | None = None,
    dead_at: datetime | None = None,
) -> OutboxRow:
    """The row ``e`` should have (defaults: fresh, pending, due at the event's time)."""
    return OutboxRow(
        sink=sink,
        event=e,
        attempts=attempts,
        first_attempt_at=first_attempt_at,
        next_attempt_at=next_attempt_at or e.time,
        last_error=last_error,
        status=status,
        delivered_at=delivered_at,
        dead_at=dead_at,
        seq=seq,
    )


@pytest.fixture
def clock() -> VirtualClock:
    """The stores' clock, at T0 until advanced."""
    return VirtualClock.auto(T0)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def open_store(
    request: pytest.FixtureRequest, clock: VirtualClock
) -> Iterator[Callable[..., Store]]:
    """``open_store(sinks=(OPS,))`` for one implementation; every store closed after."""
    opener = IMPLEMENTATIONS[request.param]
    storage = request.getfixturevalue(STORAGE[request.param])
    opened: list[Store] = []

    def open_one(sinks: Sequence[SinkConfig] = (OPS,)) -> Store:
        store = opener(storage, clock, sinks)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., Store]) -> Store:
    """A fresh store with one catch-all sink, ``ops``."""
    return open_store()


# --- states and events --------------------------------------------------------------


def test_record_stores_events_state_and_queues_them(store: Store) -> None:
    """One record stores the events and the state and queues each event for the sink."""
    events = [event("a", 1), event("a", 2, EventType.RESTORE_COMPLETED)]
    state = {"phase": 7, "restore": {"id": "r-a", "timeline": [1, 2]}}

    assert store.record("a", state, events) == events

    assert store.events() == events
    assert store.load_states() == {"a": state}
    assert store.next_due("ops", at(10)) == outbox_row(events[0], seq=1)
    assert store.outbox_summary(at(10)) == [
        OutboxSummary(sink="ops", pending=2, dead=0, oldest_pending_age=9.0)
    ]


def test_duplicate_ids_are_stored_and_queued_once(store: Store) -> None:
    """Events re-derived after a crash keep their ids: stored and queued once."""
    e1, e2, e3 = event("a", 1), event("a", 2), event("a", 3)
    store.record("a", {"n": 1}, [e1, e2])

    assert store.record("a", {"n": 2}, [e1, e2, e3, e3]) == [e3]

    assert store.events() == [e1, e2, e3]
    assert store.load_states() == {"a": {"n": 2}}
    assert store.outbox_summary(at(10))[0].pending == 3


def test_a_failed_record_stores_nothing(store: Store) -> None:
    """Events, outbox rows and state are one transaction: a failure keeps none of them."""

    class Broken(Exception):
        pass

    class BrokenSink:
        name = "broken"

        def wants(self, event_type: str, server: str) -> bool:
            raise Broken

    store.record("a", {"n": 1}, [event("a", 1)])
    store.set_sinks([OPS, BrokenSink()])  # type: ignore[list-item]

    with pytest.raises(Broken):
        store.record("a", {"n": 2}, [event("a", 2)])

    store.set_sinks([OPS])
    assert store.events() == [event("a", 1)]
    assert store.load_states() == {"a": {"n": 1}}
    assert store.outbox_summary(at(10))[0].pending == 1


def test_sink_filters_decide_what_is_queued(open_store: Callable[..., Store]) -> None:
    """Each sink is queued only the event types and servers its globs name."""
    slack = SinkConfig(name="slack", type="slack", events=("sklm.restore.completed",))
    prod = SinkConfig(name="prod", type="webhook", servers=("prod-*",))
    store = open_store((OPS, slack, prod))
    phase_prod = event("prod-1", 1)
    done_prod = event("prod-1", 2, EventType.RESTORE_COMPLETED)
    done_lab = event("lab-1", 3, EventType.RESTORE_COMPLETED)
    store.record("prod-1", {}, [phase_prod, done_prod])
    store.record("lab-1", {}, [done_lab])

    assert [s.pending for s in store.outbox_summary(at(10))] == [3, 2, 2]
    assert store.next_due("slack", at(10)) == outbox_row(done_prod, seq=2, sink="slack")
    assert store.next_due("prod", at(10)) == outbox_row(phase_prod, seq=1, sink="prod")


def test_state_update_time_comes_from_the_clock(
    store: Store, clock: VirtualClock
) -> None:
    """``last_state_update`` is the store clock's time of the last record."""
    assert store.last_state_update() is None
    clock.advance(42)
    store.record("a", {"phase": 1}, [])

    assert store.last_state_update() == at(42)


def test_load_states_round_trip(open_store: Callable[..., Store]) -> None:
    """States survive a reopen unchanged, the latest per server."""
    states: dict[str, dict[str, Any]] = {
        "a": {"phase": 3, "restore_id": "r", "flags": [True, None], "at": "2026-11-29"},
        "b": {"phase": None, "nested": {"x": 1.5}},
    }
    with open_store() as store:
        store.record("a", {"phase": 1}, [])
        for server, state in states.items():
            store.record(server, state, [])
    with open_store() as store:
        assert store.load_states() == states


def test_events_filters(store: Store) -> None:
    """events() filters by server, type glob and time, in store order."""
    a1 = event("a", 1)
    b2 = event("b", 2, EventType.SERVER_UNREACHABLE)
    a3 = event("a", 3, EventType.RESTORE_COMPLETED)
    store.record("a", {}, [a1])
    store.record("b", {}, [b2])
    store.record("a", {}, [a3])

    assert store.events() == [a1, b2, a3]
    assert store.events(server="a") == [a1, a3]
    assert store.events(type_glob="sklm.restore.*") == [a1, a3]
    assert store.events(type_glob="sklm.server.*") == [b2]
    assert store.events(since=at(2)) == [b2, a3]
    assert store.events(server="a", type_glob="*.phase", since=at(0)) == [a1]


def test_event_times_round_trip_exactly(store: Store) -> None:
    """Sub-millisecond event times come back exactly, though the JSON shows milliseconds."""
    e = event("a", 1, when=T0 + timedelta(microseconds=123_456))
    store.record("a", {}, [e])

    assert store.events() == [e]
    assert store.events()[0].to_json() == e.to_json()


async def test_call_runs_in_a_worker_thread(store: Store) -> None:
    """call() runs the function off the event loop's thread and returns its result."""
    e = event("a", 1)

    assert await store.call(threading.get_ident) != threading.get_ident()
    assert await store.call(store.record, "a", {}, [e]) == [e]
    assert await store.call(store.events) == [e]


# --- outbox claims and results ------------------------------------------------------


def test_next_due_keeps_per_server_order(store: Store) -> None:
    """A retrying head holds back later rows of its server but not other servers'."""
    a1, a2, b1 = event("a", 1), event("a", 2), event("b", 3)
    store.record("a", {}, [a1, a2])
    store.record("b", {}, [b1])
    now = at(10)

    assert store.next_due("ops", now) == outbox_row(a1, seq=1)
    store.reschedule(
        "ops", a1.id, attempts=1, next_attempt_at=at(60), error="HTTP 500", at=now
    )
    assert store.next_due("ops", now) == outbox_row(b1, seq=3)
    store.mark_delivered("ops", b1.id, now)
    assert store.next_due("ops", now) is None
    assert store.next_due_at("ops") == at(60)

    assert store.next_due("ops", at(60)) == outbox_row(
        a1,
        seq=1,
        attempts=1,
        first_attempt_at=now,
        next_attempt_at=at(60),
        last_error="HTTP 500",
    )
    store.mark_delivered("ops", a1.id, at(60))
    assert store.next_due("ops", at(60)) == outbox_row(a2, seq=2)
    store.mark_delivered("ops", a2.id, at(61))
    assert store.next_due("ops", at(1000)) is None
    assert store.next_due_at("ops") is None


def test_next_due_waits_for_the_due_time(store: Store) -> None:
    """A row is not due before its next_attempt_at, and next_due_at says when it is."""
    later = event("a", 30)
    store.record("a", {}, [later])

    assert store.next_due("ops", at(29)) is None
    assert store.next_due_at("ops") == at(30)
    assert store.next_due("ops", at(30)) == outbox_row(later, seq=1)
    assert store.next_due("other", at(30)) is None
    assert store.next_due_at("other") is None


def test_next_due_at_looks_only_at_heads(store: Store) -> None:
    """A due row behind a rescheduled head does not make the sink due earlier."""
    a1, a2 = event("a", 1), event("a", 2)
    store.record("a", {}, [a1, a2])
    store.reschedule("ops", a1.id, attempts=1, next_attempt_at=at(90), error="x")

    assert store.next_due_at("ops") == at(90)


def test_reschedule_without_a_time_uses_the_clock(
    store: Store, clock: VirtualClock
) -> None:
    """A first attempt recorded without ``at`` is stamped with the store's clock."""
    e = event("a", 1)
    store.record("a", {}, [e])
    clock.advance(5)
    store.reschedule("ops", e.id, attempts=1, next_attempt_at=at(60), error="x")

    assert store.next_due("ops", at(60)) == outbox_row(
        e,
        seq=1,
        attempts=1,
        first_attempt_at=at(5),
        next_attempt_at=at(60),
        last_error="x",
    )


def test_dead_letter_and_requeue(store: Store) -> None:
    """A dead row stops blocking its server, is listed, and requeue makes it pending anew."""
    a1, a2 = event("a", 1), event("a", 2)
    store.record("a", {}, [a1, a2])
    store.reschedule(
        "ops", a1.id, attempts=3, next_attempt_at=at(20), error="HTTP 503", at=at(2)
    )
    store.dead_letter("ops", a1.id, error="HTTP 410 Gone", at=at(20))

    dead = outbox_row(
        a1,
        seq=1,
        attempts=4,
        first_attempt_at=at(2),
        next_attempt_at=at(20),
        last_error="HTTP 410 Gone",
        status=OutboxStatus.DEAD,
        dead_at=at(20),
    )
    assert store.dead_rows() == [dead]
    assert store.dead_rows("ops") == [dead]
    assert store.dead_rows("other") == []
    assert store.next_due("ops", at(20)) == outbox_row(a2, seq=2)
    assert store.outbox_summary(at(22)) == [
        OutboxSummary(sink="ops", pending=1, dead=1, oldest_pending_age=20.0)
    ]

    assert store.requeue(all_dead=True, at=at(30)) == 1

    assert store.dead_rows() == []
    assert store.next_due("ops", at(30)) == outbox_row(
        a1, seq=1, next_attempt_at=at(30), last_error="HTTP 410 Gone"
    )
    assert store.outbox_summary(at(32)) == [
        OutboxSummary(sink="ops", pending=2, dead=0, oldest_pending_age=31.0)
    ]


def test_requeue_selects_by_sink_and_event(open_store: Callable[..., Store]) -> None:
    """Requeue touches only dead rows of the named sink and/or event."""
    store = open_store((OPS, SinkConfig(name="slack", type="slack")))
    e1, e2 = event("a", 1), event("b", 2)
    store.record("a", {}, [e1])
    store.record("b", {}, [e2])
    for sink in ("ops", "slack"):
        for e in (e1, e2):
            store.dead_letter(sink, e.id, error="gone", at=at(9))

    assert store.requeue(sink="slack", event_id=e2.id, at=at(10)) == 1
    assert store.requeue(event_id=e1.id, at=at(10)) == 2
    assert store.requeue(sink="ops", at=at(10)) == 1
    assert store.requeue(all_dead=True) == 0
    with pytest.raises(ValueError, match="all_dead"):
        store.requeue()
    assert [(s.pending, s.dead) for s in store.outbox_summary(at(10))] == [
        (2, 0),
        (2, 0),
    ]


def test_outbox_summary_lists_every_configured_sink(
    open_store: Callable[..., Store],
) -> None:
    """A configured sink with an empty outbox shows zeros and no age."""
    quiet = SinkConfig(name="quiet", type="webhook", events=("nothing",))
    store = open_store((OPS, quiet))
    store.record("a", {}, [event("a", 1)])

    assert store.outbox_summary(at(11)) == [
        OutboxSummary(sink="ops", pending=1, dead=0, oldest_pending_age=10.0),
        OutboxSummary(sink="quiet", pending=0, dead=0, oldest_pending_age=None),
    ]


def test_suppress_takes_a_row_out_of_the_queue(store: Store) -> None:
    """A suppressed row is never due and does not block its server."""
    a1, a2 = event("a", 1), event("a", 2)
    store.record("a", {}, [a1, a2])

    assert store.suppress("ops", a1.id, reason="superseded") is True
    assert store.suppress("ops", a1.id, reason="again") is False
    assert store.next_due("ops", at(5)) == outbox_row(a2, seq=2)


def test_updating_a_missing_row_is_an_error(store: Store) -> None:
    """Marking a row that does not exist raises instead of passing silently."""
    with pytest.raises(JournalError, match="no outbox row for sink ops"):
        store.mark_delivered("ops", "no-such-event", at(1))


def test_set_sinks_applies_to_later_events_only(store: Store) -> None:
    """A sink added on reload is queued later events only; the old rows stay."""
    first, second = event("a", 1), event("a", 2)
    store.record("a", {}, [first])
    store.set_sinks([OPS, SinkConfig(name="new", type="log")])
    store.record("a", {}, [second])

    assert store.next_due("new", at(10)) == outbox_row(second, seq=2, sink="new")
    assert store.next_due("ops", at(10)) == outbox_row(first, seq=1)


# --- silences -----------------------------------------------------------------------


def test_silence_suppresses_delivery_but_not_recording(store: Store) -> None:
    """A matching event is stored but never due; other servers' events are."""
    store.add_silence("prod-*", at(100), "maintenance window", at(0))
    silenced, other = event("prod-1", 50), event("lab-1", 51)

    assert store.record("prod-1", {}, [silenced]) == [silenced]
    store.record("lab-1", {}, [other])

    assert store.events() == [silenced, other]
    assert store.next_due("ops", at(60)) == outbox_row(other, seq=2)
    assert store.outbox_summary(at(60)) == [
        OutboxSummary(sink="ops", pending=1, dead=0, oldest_pending_age=9.0)
    ]


def test_silence_expires_by_itself(store: Store) -> None:
    """An event at or after ``until`` is due again, and not held back by the silenced one."""
    store.add_silence("*", at(100), "upgrade", at(0))
    during, after = event("a", 99), event("a", 100)
    store.record("a", {}, [during])
    store.record("a", {}, [after])

    assert store.next_due("ops", at(99)) is None
    assert store.next_due("ops", at(100)) == outbox_row(after, seq=2)


def test_silence_list_and_remove(store: Store, clock: VirtualClock) -> None:
    """Silences are listed while active, all with include_expired; removal is kept."""
    first = store.add_silence("prod-*", at(100), "window", at(0))
    second = store.add_silence("lab-1", at(10), "short", at(1))
    expected_first = Silence(
        id=first, server_glob="prod-*", until=at(100), reason="window", created_at=at(0)
    )
    expected_second = Silence(
        id=second, server_glob="lab-1", until=at(10), reason="short", created_at=at(1)
    )

    assert store.silences(at(5)) == [expected_first, expected_second]
    assert store.silences(at(10)) == [expected_first]
    assert store.silences(at(10), include_expired=True) == [
        expected_first,
        expected_second,
    ]
    clock.advance(3)
    assert store.remove_silence(first, by="alice") is True
    assert store.remove_silence(first) is False
    assert store.silences(at(5)) == [expected_second]
    assert store.silences(at(5), include_expired=True)[0] == Silence(
        id=first,
        server_glob="prod-*",
        until=at(100),
        reason="window",
        created_at=at(0),
        removed_at=at(3),
        removed_by="alice",
    )
    store.record("prod-1", {}, [event("prod-1", 4)])
    assert store.next_due("ops", at(4)) == outbox_row(event("prod-1", 4), seq=1)


# --- pruning ------------------------------------------------------------------------


def test_prune_outbox_drops_only_old_delivered_and_suppressed_rows(
    store: Store,
) -> None:
    """Delivered rows go by delivery time, suppressed by event time; the rest stay."""
    old_done, new_done, old_quiet, waiting, dead = (event("a", n) for n in range(1, 6))
    store.record("a", {}, [old_done, new_done, old_quiet, waiting, dead])
    store.mark_delivered("ops", old_done.id, at(50))
    store.mark_delivered("ops", new_done.id, at(100))
    store.suppress("ops", old_quiet.id, reason="superseded")
    store.dead_letter("ops", dead.id, error="HTTP 410 Gone", at=at(7))

    assert store.prune_outbox(at(60)) == 2
    assert store.prune_outbox(at(60)) == 0
    assert store.prune_outbox(at(101)) == 1
    assert store.prune_outbox(at(1000)) == 0
    assert len(store.events()) == 5
    assert store.next_due("ops", at(10)) == outbox_row(waiting, seq=4)
    assert [row.event for row in store.dead_rows()] == [dead]


def test_prune_outbox_works_in_batches(store: Store) -> None:
    """At most ``limit`` rows go per call; calling again takes the rest."""
    events = [event("a", n) for n in range(1, 6)]
    store.record("a", {}, events)
    for e in events:
        store.mark_delivered("ops", e.id, at(10))

    assert store.prune_outbox(at(11), limit=2) == 2
    assert store.prune_outbox(at(11), limit=2) == 2
    assert store.prune_outbox(at(11), limit=2) == 1
    assert store.prune_outbox(at(11), limit=2) == 0


# --- the audit lines (the dashboard's event stream replays them) ----------------------


def test_events_since_returns_chained_audit_lines_after_a_position(
    open_store: Callable[..., Store],
) -> None:
    """Every recorded event comes back as its audit line, in order, chained, paged."""
    from watcher.audit import line_hash

    events = [event("a", n) for n in range(1, 6)]
    store = open_store()
    store.record("a", {}, events[:3])
    store.record("b", {}, [])
    store.record("a", {}, events[3:])

    lines = store.events_since(0)
    assert [line.auditseq for line in lines] == [1, 2, 3, 4, 5]
    for line, e in zip(lines, events, strict=True):
        body = json.loads(line.line)
        assert body.pop("auditseq") == line.auditseq
        body.pop("prevhash")
        assert body == e.to_dict()
    for before, after in itertools.pairwise(lines):
        assert json.loads(after.line)["prevhash"] == line_hash(before.line.encode())
    assert store.events_since(3) == lines[3:]
    assert store.events_since(1, limit=2) == lines[1:3]
    assert store.events_since(5) == []

    # Re-derived (duplicate) events add no line; a reopened store continues.
    store.record("a", {}, events[:1])
    store.close()
    reopened = open_store()
    later = event("a", 6)
    reopened.record("a", {}, [later])
    assert reopened.events_since(0)[:5] == lines
    (last,) = reopened.events_since(5)
    assert last.auditseq == 6
    assert json.loads(last.line)["prevhash"] == line_hash(lines[-1].line.encode())
