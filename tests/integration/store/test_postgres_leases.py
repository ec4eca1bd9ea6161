"""Server leases on PostgreSQL: fencing, takeover, renewal, release, leave, nodes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.store.conftest import (
    Gate,
    OpenNode,
    event,
    expire,
    wait_for_lock_wait,
)
from watcher.errors import LeaseLost, NodeNameInUse
from watcher.store.base import NodeInfo, Takeover

Sql = Callable[..., list[tuple[Any, ...]]]


def info(name: str) -> NodeInfo:
    """What node ``name`` says of itself."""
    return NodeInfo(
        name=name,
        version="1.0",
        host=f"host-{name}",
        pid=100,
        started_at=datetime(2026, 11, 29, 9, 0, tzinfo=UTC),
    )


def test_record_without_the_lease_is_refused_and_writes_nothing(
    open_node: OpenNode, sql: Sql
) -> None:
    """A node records only servers it took; LeaseLost names the server, nothing stored."""
    a = open_node("a")

    with pytest.raises(LeaseLost) as lost:
        a.record("s1", {"n": 1}, [event("s1", 1)])

    assert lost.value.server == "s1"
    assert not lost.value.transient
    assert sql("SELECT count(*) FROM events")[0][0] == 0
    assert sql("SELECT count(*) FROM server_state")[0][0] == 0


def test_takeover_bumps_the_epoch_and_fences_the_old_holder(
    open_node: OpenNode, sql: Sql
) -> None:
    """After B takes an expired lease, A's write raises LeaseLost and stores nothing."""
    a, b = open_node("a"), open_node("b")
    assert a.take(["s1"], 5) == [Takeover("s1", 1, None, False)]
    a.record("s1", {"n": 1}, [event("s1", 1)])
    assert b.take(["s1"], 5) == []  # held and unexpired
    expire(sql)

    assert b.take(["s1"], 5) == [Takeover("s1", 2, "a", True)]
    with pytest.raises(LeaseLost, match="node b holds it now"):
        a.record("s1", {"n": 2}, [event("s1", 2)])

    assert a.held() == {}
    assert [e.id for e in b.events()] == [event("s1", 1).id]
    assert b.load_state("s1") == {"n": 1}
    assert b.record("s1", {"n": 3}, [event("s1", 3)]) == [event("s1", 3)]
    assert b.load_state("s1") == {"n": 3}
    assert a.renew() == set()
    assert [(x.server, x.node, x.epoch) for x in b.leases()] == [("s1", "b", 2)]


def test_a_takeover_waits_for_a_record_in_flight(open_node: OpenNode, sql: Sql) -> None:
    """A record that checked its lease first commits; the takeover then fences the next."""
    gate = Gate()
    a = open_node("a", sinks=[gate])
    b = open_node("b")
    a.take(["s1"], 1)
    expire(sql)
    results: dict[str, Any] = {}

    def record() -> None:
        results["record"] = a.record("s1", {"n": 1}, [event("s1", 1)])

    def take() -> None:
        results["take"] = b.take(["s1"], 1)

    recording = threading.Thread(target=record)
    recording.start()
    assert gate.entered.wait(30)
    taking = threading.Thread(target=take)
    taking.start()
    wait_for_lock_wait(sql)  # the takeover waits for the record's FOR SHARE lock
    gate.open.set()
    recording.join(30)
    taking.join(30)

    assert results["record"] == [event("s1", 1)]
    assert results["take"] == [Takeover("s1", 2, "a", True)]
    with pytest.raises(LeaseLost):
        a.record("s1", {"n": 2}, [event("s1", 2)])
    assert [e.id for e in b.events()] == [event("s1", 1).id]


def test_a_record_during_a_takeover_is_refused(
    open_node: OpenNode, sql: Sql, pg_url: str
) -> None:
    """A record that meets an uncommitted takeover waits for it, then writes nothing."""
    import psycopg

    a = open_node("a")
    a.take(["s1"], 1)
    results: dict[str, BaseException] = {}

    def record() -> None:
        try:
            a.record("s1", {"n": 1}, [event("s1", 1)])
        except Exception as exc:  # noqa: BLE001  (handed to the test thread)
            results["error"] = exc

    # The takeover from another connection, held open: its row lock is taken.
    with psycopg.connect(pg_url) as other:
        other.execute(
            "UPDATE leases SET node = 'b', epoch = epoch + 1 WHERE server = 's1'"
        )
        recording = threading.Thread(target=record)
        recording.start()
        wait_for_lock_wait(sql)
        other.commit()
    recording.join(30)

    assert isinstance(results["error"], LeaseLost)
    assert sql("SELECT count(*) FROM events")[0][0] == 0
    assert sql("SELECT count(*) FROM audit")[0][0] == 0
    assert sql("SELECT count(*) FROM server_state")[0][0] == 0


def test_renew_of_an_expired_but_untaken_lease_keeps_it(
    open_node: OpenNode, sql: Sql
) -> None:
    """Same epoch means nobody else wrote: the lease is renewed and writes go on."""
    a = open_node("a")
    a.take(["s1", "s2"], 5)
    expire(sql)

    assert a.renew() == {"s1", "s2"}

    assert a.held() == {"s1": 1, "s2": 1}
    assert sql("SELECT count(*) FROM leases WHERE expires_at > now()")[0][0] == 2
    assert a.record("s1", {}, [event("s1", 1)]) == [event("s1", 1)]


def test_renew_drops_a_lease_taken_over(open_node: OpenNode, sql: Sql) -> None:
    """A renewal keeps what is still ours and forgets what another node took."""
    a, b = open_node("a"), open_node("b")
    a.take(["s1", "s2"], 5)
    sql("UPDATE leases SET expires_at = now() - interval '1 s' WHERE server = 's2'")
    b.take(["s2"], 5)

    assert a.renew() == {"s1"}
    assert a.held() == {"s1": 1}


def test_take_respects_the_limit_and_the_order_given(open_node: OpenNode) -> None:
    """At most ``limit`` leases, first those named first; held ones are skipped."""
    a, b = open_node("a"), open_node("b")

    assert [t.server for t in a.take(["s3", "s1", "s2"], 2)] == ["s3", "s1"]
    assert [t.server for t in a.take(["s3", "s1", "s2"], 2)] == ["s2"]
    assert b.take(["s1", "s2", "s3", "s4"], 10) == [Takeover("s4", 1, None, False)]


def test_release_hands_off_at_once(open_node: OpenNode) -> None:
    """A released lease is free now; the taker bumps its epoch (a hand-off, not expiry)."""
    a, b = open_node("a"), open_node("b")
    a.take(["s1", "s2"], 5)

    a.release(["s1"])

    assert a.held() == {"s2": 1}
    assert b.take(["s1", "s2"], 5) == [Takeover("s1", 2, "a", False)]
    with pytest.raises(LeaseLost):
        a.record("s1", {}, [])


def test_leave_frees_every_lease_and_marks_the_node_left(
    open_node: OpenNode, sql: Sql
) -> None:
    """A clean stop: peers take over without waiting, and the node shows as left."""
    a, b = open_node("a"), open_node("b")
    a.heartbeat(info("a"))
    b.heartbeat(info("b"))
    a.take(["s1", "s2"], 5)
    a.next_due("ops", datetime(2026, 11, 29, tzinfo=UTC))  # takes the sink lease

    a.leave()

    assert a.held() == {}
    assert b.take(["s1", "s2"], 5) == [
        Takeover("s1", 2, "a", False),
        Takeover("s2", 2, "a", False),
    ]
    rows = {row.name: row for row in b.nodes()}
    assert rows["a"].left_at is not None
    assert not rows["a"].alive
    assert rows["b"].alive
    assert rows["b"].leases == 2
    assert b.next_due("ops", datetime(2026, 11, 29, tzinfo=UTC)) is None
    assert sql("SELECT node, epoch FROM sink_leases") == [("b", 2)]


def test_a_restarted_node_takes_back_its_own_leases(open_node: OpenNode) -> None:
    """The same node name in a new process takes its leases at once, bumping epochs."""
    first = open_node("a")
    first.take(["s1"], 1)
    first.close()
    second = open_node("a")

    assert second.take(["s1"], 1) == [Takeover("s1", 2, "a", True)]
    assert second.record("s1", {}, [event("s1", 1)]) == [event("s1", 1)]


def test_nodes_lists_alive_left_and_dead_with_their_leases(
    open_node: OpenNode, sql: Sql
) -> None:
    """Alive means a heartbeat within one lease period; leases count unexpired ones."""
    a, b = open_node("a", lease_seconds=10), open_node("b")
    now = a.heartbeat(info("a"))
    b.heartbeat(info("b"))
    a.take(["s1", "s2"], 5)
    b.take(["s3"], 5)
    sql(
        "UPDATE nodes SET heartbeat_at = now() - interval '11 seconds' WHERE name = 'b'"
    )

    rows = a.nodes()

    assert [(r.name, r.alive, r.leases) for r in rows] == [
        ("a", True, 2),
        ("b", False, 1),
    ]
    first = rows[0]
    assert (first.version, first.host, first.pid) == ("1.0", "host-a", 100)
    assert first.started_at == info("a").started_at
    assert first.heartbeat_at == now
    assert now.tzinfo is not None
    assert first.left_at is None


def test_heartbeat_after_leaving_rejoins(open_node: OpenNode) -> None:
    """A node that left and starts again is alive again (left_at cleared)."""
    a = open_node("a")
    a.heartbeat(info("a"))
    a.leave()
    a.heartbeat(info("a"))

    (row,) = a.nodes()
    assert row.alive
    assert row.left_at is None


def test_the_state_names_the_node_that_stored_it(open_node: OpenNode) -> None:
    """``status`` in a cluster shows which node polls each server."""
    a, b = open_node("a"), open_node("b")
    a.take(["s1"], 1)
    b.take(["s2"], 1)
    a.record("s1", {"n": 1}, [])
    b.record("s2", {"n": 2}, [])

    assert a.state_nodes() == {"s1": "a", "s2": "b"}
    assert a.load_state("nope") is None


def test_a_second_live_process_under_one_node_name_is_refused(
    open_node: OpenNode, sql: Sql
) -> None:
    """Two processes named alike would steal each other's leases: the second waits."""
    first, second = open_node("a"), open_node("a")
    first.heartbeat(info("a"))
    other = NodeInfo(
        name="a",
        version="1.0",
        host="host-elsewhere",
        pid=200,
        started_at=datetime(2026, 11, 29, 9, 5, tzinfo=UTC),
    )

    with pytest.raises(NodeNameInUse) as caught:
        second.heartbeat(other)

    assert caught.value.node == "a"
    assert "pid 100 on host host-a" in caught.value.detail
    assert not caught.value.transient
    # The first one goes on; its row is its own.
    first.heartbeat(info("a"))
    assert [(r.host, r.pid) for r in first.nodes()] == [("host-a", 100)]
    # Once the first heartbeat is older than a lease (it crashed), the name is free.
    sql("UPDATE nodes SET heartbeat_at = now() - interval '1 hour'")
    second.heartbeat(other)
    assert [(r.host, r.pid) for r in first.nodes()] == [("host-elsewhere", 200)]


def test_a_node_name_left_cleanly_is_free_at_once(open_node: OpenNode) -> None:
    """After ``leave()`` the next process of that name starts without waiting."""
    first, second = open_node("a"), open_node("a")
    first.heartbeat(info("a"))
    first.leave()
    later = NodeInfo("a", "1.1", "host-a", 101, datetime(2026, 11, 29, 10, tzinfo=UTC))

    second.heartbeat(later)

    assert [(r.version, r.pid, r.alive) for r in second.nodes()] == [("1.1", 101, True)]
