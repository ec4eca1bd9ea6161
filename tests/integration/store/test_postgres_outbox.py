"""Sink leases on PostgreSQL: one node at a time delivers each sink; a dead one's row moves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from tests.integration.store.conftest import T0, OpenNode, event, expire
from watcher.store.base import OutboxStatus

Sql = Callable[..., list[tuple[Any, ...]]]
LATER = T0 + timedelta(seconds=100)


def test_only_the_sink_lease_holder_gets_rows(open_node: OpenNode, sql: Sql) -> None:
    """Two nodes on one store: the first to ask holds the sink; the other gets nothing."""
    a, b = open_node("a"), open_node("b")
    a.take(["s1"], 1)
    e1, e2 = event("s1", 1), event("s1", 2)
    a.record("s1", {}, [e1, e2])

    row = b.next_due("ops", LATER)
    assert row is not None
    assert row.event == e1
    assert a.next_due("ops", LATER) is None
    assert a.next_due_at("ops") == e1.time  # the head's due time: look again soon
    b.mark_delivered("ops", e1.id, LATER)
    again = b.next_due("ops", LATER)
    assert again is not None
    assert again.event == e2
    assert a.next_due("ops", LATER) is None
    assert sql("SELECT node, epoch FROM sink_leases") == [("b", 1)]


def test_an_expired_sink_lease_passes_the_same_row_to_another_node(
    open_node: OpenNode, sql: Sql
) -> None:
    """The holder died mid-delivery: after expiry the other node gets the same row."""
    a, b = open_node("a"), open_node("b")
    a.take(["s1"], 1)
    e1 = event("s1", 1)
    a.record("s1", {}, [e1])
    first = a.next_due("ops", LATER)
    assert first is not None
    assert b.next_due("ops", LATER) is None
    expire(sql, "sink_leases")

    second = b.next_due("ops", LATER)

    assert second == first  # same event id: the receiver's webhook-id
    assert sql("SELECT node, epoch FROM sink_leases") == [("b", 2)]
    assert a.next_due("ops", LATER) is None


def test_a_late_result_of_the_old_holder_is_dropped(
    open_node: OpenNode, sql: Sql
) -> None:
    """A paused node's late reschedule must not undo the new holder's delivery."""
    a, b = open_node("a"), open_node("b")
    a.take(["s1"], 1)
    e1 = event("s1", 1)
    a.record("s1", {}, [e1])
    assert a.next_due("ops", LATER) is not None
    expire(sql, "sink_leases")
    assert b.next_due("ops", LATER) is not None
    b.mark_delivered("ops", e1.id, LATER)

    a.reschedule(
        "ops", e1.id, attempts=1, next_attempt_at=LATER, error="HTTP 500", at=LATER
    )
    a.mark_delivered("ops", e1.id, LATER + timedelta(seconds=1))

    assert sql("SELECT status, attempts, delivered_at FROM outbox") == [
        (OutboxStatus.DELIVERED.value, 1, int(LATER.timestamp() * 1_000_000))
    ]


def test_a_renewed_sink_lease_keeps_its_epoch(open_node: OpenNode, sql: Sql) -> None:
    """Each next_due of the holder renews its sink lease, even after it expired."""
    a = open_node("a")
    a.take(["s1"], 1)
    a.record("s1", {}, [event("s1", 1)])
    a.next_due("ops", LATER)
    expire(sql, "sink_leases")

    assert a.next_due("ops", LATER) is not None

    assert sql("SELECT node, epoch, expires_at > now() FROM sink_leases") == [
        ("a", 1, True)
    ]


def test_the_sink_lease_outlasts_a_delivery_in_flight(
    open_node: OpenNode, sql: Sql
) -> None:
    """A sink lease lasts the node's lease plus the sink's timeout and pacing."""
    from watcher.config import SinkConfig

    slow = SinkConfig(name="slow", type="webhook", timeout=40.0, min_interval=5.0)
    a = open_node("a", sinks=[slow], lease_seconds=10)
    a.next_due("slow", LATER)

    (seconds,) = sql("SELECT extract(epoch FROM expires_at - now()) FROM sink_leases")[
        0
    ]
    assert 50.0 < float(seconds) <= 55.0
