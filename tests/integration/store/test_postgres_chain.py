"""The cluster's one audit chain on PostgreSQL: concurrent writers, no gaps, verifiable."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.store.conftest import OpenNode, event
from watcher.audit import line_hash, verify_audit

Sql = Callable[..., list[tuple[Any, ...]]]


def test_two_nodes_recording_at_once_make_one_gap_free_chain(
    open_node: OpenNode, tmp_path: Path
) -> None:
    """Threads of two nodes record at once; the export verifies as one chain."""
    a, b = open_node("a"), open_node("b")
    a.take(["a1", "a2"], 2)
    b.take(["b1", "b2"], 2)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def write(store: Any, server: str) -> None:
        barrier.wait()
        try:
            for n in range(1, 26):
                store.record(server, {"n": n}, [event(server, n)])
        except Exception as exc:  # noqa: BLE001  (handed to the test thread)
            errors.append(exc)

    # One thread per server; the two threads of a node share its connection (the
    # store serialises them), the two nodes race each other.
    threads = [
        threading.Thread(target=write, args=(store, server))
        for store, server in ((a, "a1"), (a, "a2"), (b, "b1"), (b, "b2"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    lines = a.export_audit()
    assert [line.auditseq for line in lines] == list(range(1, 101))
    path = tmp_path / "export.jsonl"
    path.write_text("".join(line.line + "\n" for line in lines), encoding="utf-8")
    position = b.audit_position()
    assert position is not None
    assert position.index == 100
    assert position.hash == line_hash(lines[-1].line.encode())
    verdict = verify_audit([path], expect_last_hash=position.hash)
    assert verdict.ok, verdict.summary()
    assert verdict.lines == 100
    assert b.events_since(98) == lines[98:]
    assert a.export_audit(after=97) == lines[97:]


def test_a_repeated_record_is_a_no_op(open_node: OpenNode, sql: Sql) -> None:
    """The same events again (re-derived after a takeover): no event, row or line twice."""
    a = open_node("a")
    a.take(["s1"], 1)
    events = [event("s1", 1), event("s1", 2)]
    assert a.record("s1", {"n": 1}, events) == events
    position = a.audit_position()

    assert a.record("s1", {"n": 2}, events) == []

    assert a.audit_position() == position
    assert sql("SELECT count(*) FROM events")[0][0] == 2
    assert sql("SELECT count(*) FROM outbox")[0][0] == 2
    assert sql("SELECT count(*) FROM audit")[0][0] == 2
    assert a.load_state("s1") == {"n": 2}


def test_audit_position_is_none_before_the_first_event(open_node: OpenNode) -> None:
    """An empty chain has no head to check against; state-only writes add no line."""
    a = open_node("a")
    a.take(["s1"], 1)
    a.record("s1", {"n": 1}, [])

    assert a.audit_position() is None
    assert a.export_audit() == []
    a.reopen_audit_log()  # a no-op: the chain lives in the store
