"""The SQLite store (``watcher.store.sqlite``) and its audit log, on real files.

What only this implementation does: its database file, lock, schema migrations, raw
rows, and the audit file it keeps beside the database. What every store must do is
``tests/unit/store/test_contract.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.store.test_contract import OPS, at, event, outbox_row
from watcher import audit
from watcher.audit import (
    AUDIT_CAUGHT_UP,
    AUDIT_REBUILT,
    AUDIT_TORN_LINE,
    AUDIT_UNKNOWN_TAIL,
)
from watcher.config import SinkConfig
from watcher.errors import JournalError
from watcher.events import Event, EventType
from watcher.store.base import OutboxSummary, Silence
from watcher.store.sqlite import SqliteStore as Journal
from watcher.store.sqlite import schema

GENESIS = "0" * 64


class Paths:
    """Where a test's journal lives."""

    def __init__(self, root: Path) -> None:
        self.state_dir = root / "state"
        self.audit_log = root / "log" / "sklm" / "events.jsonl"
        self.db = self.state_dir / "state.sqlite3"

    def open(self, sinks: tuple[SinkConfig, ...] = (OPS,), **kw: Any) -> Journal:
        """Open the journal here."""
        return Journal.open(self.state_dir, self.audit_log, sinks, **kw)

    def lines(self) -> list[str]:
        """The audit log's lines (the file must end with a newline)."""
        text = self.audit_log.read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n")
        return text.splitlines()

    def outbox(self) -> list[tuple[Any, ...]]:
        """Every outbox row as (sink, event_id, server, status, attempts), by seq."""
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(
                "SELECT sink, event_id, server, status, attempts FROM outbox "
                "ORDER BY seq, sink"
            ).fetchall()
        finally:
            conn.close()

    def execute(self, sql: str, *params: Any) -> None:
        """Run one statement on the database with a connection of our own."""
        conn = sqlite3.connect(self.db)
        try:
            with conn:
                conn.execute(sql, params)
        finally:
            conn.close()


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    """Fresh locations for a journal and its audit log."""
    return Paths(tmp_path)


@pytest.fixture
def journal(paths: Paths) -> Iterator[Journal]:
    """A journal with one catch-all sink, ``ops``; closed on teardown."""
    opened = paths.open()
    yield opened
    opened.close()


def jsonl(
    events: list[Event], *, first_seq: int = 1, prevhash: str = GENESIS
) -> list[str]:
    """The audit lines these events should produce: a hash chain from ``prevhash``."""
    lines = []
    for n, e in enumerate(events):
        obj = e.to_dict() | {"auditseq": first_seq + n, "prevhash": prevhash}
        line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        prevhash = hashlib.sha256(line.encode("utf-8")).hexdigest()
        lines.append(line)
    return lines


# --- recording ----------------------------------------------------------------------


def test_record_stores_events_state_and_outbox(journal: Journal, paths: Paths) -> None:
    """One record stores the events, the state, one outbox row per event and the log."""
    events = [event("a", 1), event("a", 2, EventType.RESTORE_COMPLETED)]
    state = {"phase": 7, "restore": {"id": "r-a", "timeline": [1, 2]}}

    new = journal.record("a", state, events)

    assert new == events
    assert journal.events() == events
    assert journal.load_states() == {"a": state}
    assert paths.outbox() == [
        ("ops", events[0].id, "a", "pending", 0),
        ("ops", events[1].id, "a", "pending", 0),
    ]
    assert paths.lines() == jsonl(events)


def test_record_without_events_only_saves_the_state(
    journal: Journal, paths: Paths
) -> None:
    """A state change without events updates the state and writes nothing else."""
    journal.record("a", {"phase": 1}, [])
    journal.record("a", {"phase": 2}, [])

    assert journal.load_states() == {"a": {"phase": 2}}
    assert journal.events() == []
    assert paths.outbox() == []
    assert paths.lines() == []


def test_duplicate_ids_are_skipped(journal: Journal, paths: Paths) -> None:
    """Events re-derived after a crash keep their ids and are stored, queued, logged once."""
    e1, e2, e3 = event("a", 1), event("a", 2), event("a", 3)
    journal.record("a", {"n": 1}, [e1, e2])

    new = journal.record("a", {"n": 2}, [e1, e2, e3, e3])

    assert new == [e3]
    assert journal.events() == [e1, e2, e3]
    assert [row[1] for row in paths.outbox()] == [e1.id, e2.id, e3.id]
    assert paths.lines() == jsonl([e1, e2, e3])
    assert journal.load_states() == {"a": {"n": 2}}


def test_sink_filters_decide_outbox_rows(paths: Paths) -> None:
    """Each sink gets rows only for the event types and servers its globs name."""
    sinks = (
        OPS,
        SinkConfig(name="slack", type="slack", events=("sklm.restore.completed",)),
        SinkConfig(name="prod", type="webhook", servers=("prod-*",)),
    )
    phase_prod = event("prod-1", 1)
    done_prod = event("prod-1", 2, EventType.RESTORE_COMPLETED)
    done_lab = event("lab-1", 3, EventType.RESTORE_COMPLETED)
    with paths.open(sinks) as journal:
        journal.record("prod-1", {}, [phase_prod, done_prod])
        journal.record("lab-1", {}, [done_lab])

    assert paths.outbox() == [
        ("ops", phase_prod.id, "prod-1", "pending", 0),
        ("prod", phase_prod.id, "prod-1", "pending", 0),
        ("ops", done_prod.id, "prod-1", "pending", 0),
        ("prod", done_prod.id, "prod-1", "pending", 0),
        ("slack", done_prod.id, "prod-1", "pending", 0),
        ("ops", done_lab.id, "lab-1", "pending", 0),
        ("slack", done_lab.id, "lab-1", "pending", 0),
    ]


def test_set_sinks_applies_to_later_events_only(journal: Journal, paths: Paths) -> None:
    """A sink added on reload gets later events only; a removed sink keeps its rows."""
    before = event("a", 1)
    journal.record("a", {}, [before])
    journal.set_sinks([SinkConfig(name="new", type="webhook")])
    after = event("a", 2)
    journal.record("a", {}, [after])

    assert paths.outbox() == [
        ("ops", before.id, "a", "pending", 0),
        ("new", after.id, "a", "pending", 0),
    ]
    removed = journal.next_due("ops", at(100))
    assert removed is not None
    assert removed.event == before
    assert journal.outbox_summary(at(100)) == [
        OutboxSummary(sink="new", pending=1, dead=0, oldest_pending_age=98.0)
    ]


def test_audit_log_equals_the_journal(journal: Journal, paths: Paths) -> None:
    """After interleaved records of several servers the log holds the journal's events."""
    for n in range(6):
        server = "ab"[n % 2]
        journal.record(server, {"n": n}, [event(server, n), event(server, n + 10)])

    assert len(journal.events()) == 12
    assert paths.lines() == jsonl(journal.events())


@settings(max_examples=25, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 6)), max_size=5),
        max_size=6,
    )
)
def test_any_batching_stores_each_event_once(
    batches: list[list[tuple[str, int]]],
) -> None:
    """Whatever the batching and repetition, each event is stored and logged once, in order."""
    with tempfile.TemporaryDirectory() as root:
        paths = Paths(Path(root))
        expected: list[Event] = []
        with paths.open() as journal:
            for batch in batches:
                events = [event(server, n) for server, n in batch]
                journal.record("a", {}, events)
                expected.extend(e for e in events if e not in expected)
            assert journal.events() == expected
        assert paths.lines() == jsonl(expected)


# --- audit log reconciliation -------------------------------------------------------


def _recorded(paths: Paths, count: int = 4) -> list[Event]:
    """Record ``count`` events in a journal, close it and return them."""
    events = [event("a", n) for n in range(count)]
    with paths.open() as journal:
        for e in events:
            journal.record("a", {}, [e])
    return events


def _drop_last_lines(path: Path, count: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-count]))


def test_reconcile_appends_events_missing_from_the_log(paths: Paths, logs) -> None:
    """Events committed but not appended (killed in between) are appended on open."""
    events = _recorded(paths)
    _drop_last_lines(paths.audit_log, 2)

    paths.open().close()

    assert paths.lines() == jsonl(events)
    assert logs == [
        {
            "event": AUDIT_CAUGHT_UP,
            "log_level": "warning",
            "path": str(paths.audit_log),
            "events": 2,
        }
    ]


@pytest.mark.parametrize(
    "torn",
    [b'{"specversion":"1.0","id":"', b"\x00\x00\x00\x00", b"not json\n"],
    ids=["half-written", "nul-filled", "garbage-line"],
)
def test_reconcile_drops_a_torn_last_line(paths: Paths, torn: bytes, logs) -> None:
    """A torn last line is cut off and the events it lost are appended, once each."""
    events = _recorded(paths)
    _drop_last_lines(paths.audit_log, 1)
    size = paths.audit_log.stat().st_size
    with paths.audit_log.open("ab") as f:
        f.write(torn)

    paths.open().close()

    assert paths.lines() == jsonl(events)
    assert [entry["event"] for entry in logs] == [AUDIT_TORN_LINE, AUDIT_CAUGHT_UP]
    assert logs[0]["offset"] == size
    assert logs[0]["dropped"] == len(torn)


def test_reconcile_ends_a_whole_line_missing_its_newline(paths: Paths, logs) -> None:
    """A complete event line without its newline is kept and terminated, not dropped."""
    events = _recorded(paths)
    paths.audit_log.write_bytes(paths.audit_log.read_bytes()[:-1])

    paths.open().close()

    assert paths.lines() == jsonl(events)
    assert logs == []


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_reconcile_rebuilds_a_lost_log(paths: Paths, damage: str, logs) -> None:
    """A missing or empty log the journal never recorded writing is rebuilt from the database."""
    events = _recorded(paths)
    # A database from before the chain (or one whose position was lost) holds none.
    paths.execute("DELETE FROM meta WHERE key LIKE 'audit_%'")
    if damage == "missing":
        paths.audit_log.unlink()
    else:
        paths.audit_log.write_bytes(b"")

    paths.open().close()

    assert paths.lines() == jsonl(events)
    assert [entry["event"] for entry in logs] == [AUDIT_REBUILT]


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_reconcile_continues_a_log_rotated_while_stopped(
    paths: Paths, damage: str, logs
) -> None:
    """A log moved away while the daemon was stopped is continued, not rebuilt."""
    events = _recorded(paths)
    old = paths.audit_log.with_suffix(".jsonl.1")
    paths.audit_log.rename(old)
    if damage == "empty":
        paths.audit_log.write_bytes(b"")
    more = [event("a", 10), event("a", 11)]

    with paths.open() as journal:
        assert paths.lines() == []
        journal.record("a", {}, more)

    old_lines = old.read_text(encoding="utf-8").splitlines()
    assert old_lines == jsonl(events)
    last = hashlib.sha256(old_lines[-1].encode()).hexdigest()
    assert paths.lines() == jsonl(more, first_seq=5, prevhash=last)
    assert logs == [
        {
            "event": audit.AUDIT_CONTINUED,
            "log_level": "info",
            "path": str(paths.audit_log),
            "after_seq": 4,
            "prevhash": last,
        }
    ]


def test_reconcile_with_an_intact_log_changes_nothing(paths: Paths, logs) -> None:
    """Reopening after a clean close leaves the log byte for byte as it was."""
    _recorded(paths)
    before = paths.audit_log.read_bytes()

    paths.open().close()

    assert paths.audit_log.read_bytes() == before
    assert logs == []


def test_reconcile_leaves_a_log_ahead_of_the_database(paths: Paths, logs) -> None:
    """A log ending with an event the database lacks gets nothing appended (no guessing)."""
    _recorded(paths)
    foreign = event("z", 99)
    with paths.audit_log.open("a", encoding="utf-8") as f:
        f.write(foreign.to_json() + "\n")
    before = paths.audit_log.read_bytes()

    paths.open().close()

    assert paths.audit_log.read_bytes() == before
    assert logs == [
        {
            "event": AUDIT_UNKNOWN_TAIL,
            "log_level": "warning",
            "path": str(paths.audit_log),
            "last_id": foreign.id,
        }
    ]


def test_reconcile_refuses_a_file_that_is_not_an_audit_log(paths: Paths) -> None:
    """A file whose last two lines are not events is refused and left untouched."""
    paths.audit_log.parent.mkdir(parents=True)
    paths.audit_log.write_bytes(b"syslog line one\nsyslog line two\nthree")

    with pytest.raises(JournalError, match="does not end with an event"):
        paths.open()

    assert paths.audit_log.read_bytes() == b"syslog line one\nsyslog line two\nthree"


def test_reconcile_reads_only_the_tail(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a large log reads a bounded tail, not the whole file."""
    events = _recorded(paths)
    body = paths.audit_log.read_bytes()
    filler = (event("old", 0).to_json() + "\n").encode() * 20_000  # several MB
    paths.audit_log.write_bytes(filler + body)
    read: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, size: int, offset: int) -> bytes:
        read.append(size)
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", counting_pread)

    paths.open().close()

    assert len(filler) > 20 * audit.TAIL_CHUNK
    assert sum(read) <= 2 * audit.TAIL_CHUNK
    assert paths.lines()[-len(events) :] == jsonl(events)


def test_failed_audit_append_is_caught_up_by_the_next_record(
    journal: Journal, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the append fails the events stay stored and the next record catches the log up."""
    e1, e2, e3 = event("a", 1), event("a", 2), event("a", 3)
    journal.record("a", {}, [e1])
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(JournalError, match="No space left on device"):
        journal.record("a", {"n": 2}, [e2])
    monkeypatch.setattr(os, "fsync", real_fsync)

    assert journal.events() == [e1, e2]
    assert journal.load_states() == {"a": {"n": 2}}
    assert journal.record("a", {}, [e2, e3]) == [e3]
    assert paths.lines() == jsonl([e1, e2, e3])


# --- outbox -------------------------------------------------------------------------


def test_mark_delivered_records_the_attempt(journal: Journal, paths: Paths) -> None:
    """A delivery counts one attempt and stamps first attempt and delivery times."""
    e = event("a", 1)
    journal.record("a", {}, [e])
    journal.mark_delivered("ops", e.id, at(5))

    assert paths.outbox() == [("ops", e.id, "a", "delivered", 1)]
    assert journal.next_due("ops", at(5)) is None


def test_prune_outbox_drops_only_old_delivered_and_suppressed_rows(
    journal: Journal, paths: Paths
) -> None:
    """Delivered rows go by delivery time, suppressed by event time; the rest stay."""
    old_done, new_done, old_quiet, new_quiet, waiting, dead = (
        event("a", n) for n in range(1, 7)
    )
    journal.record("a", {}, [old_done, new_done, old_quiet, new_quiet, waiting, dead])
    journal.mark_delivered("ops", old_done.id, at(50))
    journal.mark_delivered("ops", new_done.id, at(100))
    journal.suppress("ops", old_quiet.id, reason="superseded")
    journal.dead_letter("ops", dead.id, error="HTTP 410 Gone", at=at(7))

    assert journal.prune_outbox(at(60)) == 2
    assert [(row[1], row[3]) for row in paths.outbox()] == [
        (new_done.id, "delivered"),
        (new_quiet.id, "pending"),
        (waiting.id, "pending"),
        (dead.id, "dead"),
    ]
    # Suppressed now, its event (T0 + 4 s) is already older than the cut-off.
    journal.suppress("ops", new_quiet.id, reason="superseded")
    assert journal.prune_outbox(at(60)) == 1
    assert journal.prune_outbox(at(101)) == 1
    assert [(row[1], row[3]) for row in paths.outbox()] == [
        (waiting.id, "pending"),
        (dead.id, "dead"),
    ]
    assert len(journal.events()) == 6
    assert journal.next_due("ops", at(10)) == outbox_row(waiting, seq=5)


# --- history and state --------------------------------------------------------------


# --- opening, locking, schema -------------------------------------------------------


def test_second_open_names_the_lock_holder(journal: Journal, paths: Paths) -> None:
    """A second daemon on the same state_dir fails with the holder's pid."""
    with pytest.raises(JournalError, match=rf"in use .*\(pid {os.getpid()}\)"):
        paths.open()


def test_lock_is_released_on_close(paths: Paths) -> None:
    """After close another journal can take the state_dir."""
    paths.open().close()
    paths.open().close()


def test_read_only_open_works_while_locked(journal: Journal, paths: Paths) -> None:
    """A read-only journal reads what the daemon wrote and refuses to write."""
    e = event("a", 1)
    journal.record("a", {"phase": 1}, [e])

    with paths.open(read_only=True) as view:
        assert view.events() == [e]
        assert view.load_states() == {"a": {"phase": 1}}
        assert view.outbox_summary(at(1)) == [
            OutboxSummary(sink="ops", pending=1, dead=0, oldest_pending_age=0.0)
        ]
        with pytest.raises(JournalError, match="read-only"):
            view.record("a", {}, [event("a", 2)])
        with pytest.raises(JournalError, match="read-only"):
            view.requeue(all_dead=True)
    assert paths.lines() == jsonl([e])


def test_read_only_open_needs_a_database(paths: Paths) -> None:
    """A read-only open of a state_dir the daemon never used says so."""
    with pytest.raises(JournalError, match="no state database"):
        paths.open(read_only=True)


def test_unlocked_open_may_requeue_but_not_record(
    journal: Journal, paths: Paths
) -> None:
    """Without the lock a CLI can requeue dead rows while the daemon runs, not record."""
    e = event("a", 1)
    journal.record("a", {}, [e])
    journal.dead_letter("ops", e.id, error="gone", at=at(2))

    with paths.open(lock=False) as admin:
        assert admin.requeue(all_dead=True, at=at(3)) == 1
        with pytest.raises(JournalError, match="without the state_dir lock"):
            admin.record("a", {}, [event("a", 2)])

    assert journal.next_due("ops", at(3)) == outbox_row(
        e, seq=1, attempts=0, next_attempt_at=at(3), last_error="gone"
    )


@pytest.mark.parametrize("read_only", [False, True])
def test_newer_schema_is_refused(paths: Paths, read_only: bool) -> None:
    """A database written by a newer release is refused, naming its version."""
    paths.open().close()
    paths.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")

    with pytest.raises(JournalError, match="schema version 99, newer"):
        paths.open(read_only=read_only)


def test_older_schema_is_migrated(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each migration step runs once, in order, and the new version is stored."""
    e = event("a", 1)
    with paths.open() as journal:
        journal.record("a", {}, [e])
    steps: list[int] = []

    def step(version: int):
        def migrate(conn: sqlite3.Connection) -> None:
            steps.append(version)
            conn.execute(f"ALTER TABLE events ADD COLUMN extra{version} TEXT")

        return migrate

    current = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 2)
    monkeypatch.setattr(
        schema,
        "_MIGRATIONS",
        {current: step(current), current + 1: step(current + 1)},
    )

    with paths.open() as journal:
        assert journal.events() == [e]
    with paths.open() as journal:
        pass

    assert steps == [current, current + 1]
    conn = sqlite3.connect(paths.db)
    try:
        assert conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchall() == [(str(current + 2),)]
    finally:
        conn.close()


def test_missing_migration_is_an_error(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older database with no migration path is refused, and the lock released."""
    paths.open().close()
    current = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setattr(schema, "_MIGRATIONS", {})

    with pytest.raises(JournalError, match=f"no migration from version {current}"):
        paths.open()
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current)
    paths.open().close()


def test_foreign_database_is_refused(paths: Paths) -> None:
    """A SQLite file that is not ours is refused rather than written into."""
    paths.state_dir.mkdir(parents=True)
    paths.execute("CREATE TABLE something_else (x)")

    with pytest.raises(JournalError, match="not an sklm-watcher state database"):
        paths.open()


def test_unusable_state_dir_becomes_a_journal_error(tmp_path: Path) -> None:
    """An OSError at open is translated into a JournalError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")

    with pytest.raises(JournalError, match="creating state_dir") as caught:
        Journal.open(blocker / "state", tmp_path / "events.jsonl", [OPS])
    assert isinstance(caught.value.__cause__, OSError)


def test_open_creates_directories_and_wal_database(paths: Paths) -> None:
    """Open creates state_dir, the log's parents and a WAL database at FULL sync."""
    with paths.open():
        assert paths.audit_log.exists()
        assert (paths.state_dir / "lock").read_text() == f"{os.getpid()}\n"
        conn = sqlite3.connect(paths.db)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()


def test_closed_journal_refuses_calls(paths: Paths) -> None:
    """Close is idempotent and a closed journal raises JournalError."""
    journal = paths.open()
    journal.close()
    journal.close()

    with pytest.raises(JournalError, match="closed"):
        journal.events()


# --- async access -------------------------------------------------------------------


async def test_call_serialises(journal: Journal) -> None:
    """A second call waits for the first one's thread to finish."""
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        order.append("first started")
        entered.set()
        release.wait(timeout=30)
        order.append("first done")

    def second() -> None:
        order.append("second")

    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.call, first)
        await anyio.to_thread.run_sync(entered.wait)
        tg.start_soon(journal.call, second)
        # Every task is now blocked: the first on its thread, the second on the limiter.
        await anyio.wait_all_tasks_blocked()
        assert journal._limiter.statistics().tasks_waiting == 1
        assert order == ["first started"]
        release.set()

    assert order == ["first started", "first done", "second"]


# --- silences -----------------------------------------------------------------------


def _outbox_notes(paths: Paths) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(paths.db)
    try:
        return conn.execute(
            "SELECT event_id, status, last_error FROM outbox ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def test_silence_suppresses_delivery_but_not_journaling(
    journal: Journal, paths: Paths
) -> None:
    """A matching event is journaled and logged, its row suppressed; others stay pending."""
    sid = journal.add_silence("prod-*", at(100), "maintenance window", at(0))
    silenced = event("prod-1", 50)
    other = event("lab-1", 51)

    assert journal.record("prod-1", {}, [silenced]) == [silenced]
    journal.record("lab-1", {}, [other])

    assert journal.events() == [silenced, other]
    assert paths.lines() == jsonl([silenced, other])
    assert _outbox_notes(paths) == [
        (silenced.id, "suppressed", f"silenced (silence {sid}: maintenance window)"),
        (other.id, "pending", None),
    ]
    assert journal.next_due("ops", at(60)) == outbox_row(other, seq=2)
    assert journal.outbox_summary(at(60)) == [
        OutboxSummary(sink="ops", pending=1, dead=0, oldest_pending_age=9.0)
    ]


def test_silence_expires_by_itself(journal: Journal, paths: Paths) -> None:
    """An event at or after ``until`` is pending again, and not held back by the silenced one."""
    journal.add_silence("*", at(100), "upgrade", at(0))
    during, after = event("a", 99), event("a", 100)
    journal.record("a", {}, [during])
    journal.record("a", {}, [after])

    assert [row[3] for row in paths.outbox()] == ["suppressed", "pending"]
    assert journal.next_due("ops", at(100)) == outbox_row(after, seq=2)
    assert journal.next_due("ops", at(99)) is None


def test_silence_list_and_remove(journal: Journal, paths: Paths) -> None:
    """Silences are listed while active (all with include_expired) and can be removed."""
    first = journal.add_silence("prod-*", at(100), "window", at(0))
    second = journal.add_silence("lab-1", at(10), "short", at(1))
    expected_first = Silence(
        id=first, server_glob="prod-*", until=at(100), reason="window", created_at=at(0)
    )
    expected_second = Silence(
        id=second, server_glob="lab-1", until=at(10), reason="short", created_at=at(1)
    )

    assert journal.silences(at(5)) == [expected_first, expected_second]
    assert journal.silences(at(10)) == [expected_first]
    assert journal.silences(at(10), include_expired=True) == [
        expected_first,
        expected_second,
    ]
    assert expected_first.to_json() == {
        "id": first,
        "server_glob": "prod-*",
        "until": "2026-11-29T10:01:40.000Z",
        "reason": "window",
        "created_at": "2026-11-29T10:00:00.000Z",
        "removed_at": None,
        "removed_by": None,
    }
    assert journal.remove_silence(first) is True
    assert journal.remove_silence(first) is False
    journal.record("prod-1", {}, [event("prod-1", 2)])
    assert [row[3] for row in paths.outbox()] == ["pending"]


def test_cli_can_silence_while_the_daemon_runs(journal: Journal, paths: Paths) -> None:
    """A silence added through an unlocked journal applies to the daemon's next record."""
    with paths.open(lock=False) as admin:
        admin.add_silence("a", at(60), "planned", at(0))
    with paths.open(read_only=True) as view:
        assert [s.reason for s in view.silences(at(1))] == ["planned"]
        with pytest.raises(JournalError, match="read-only"):
            view.add_silence("a", at(60), "x", at(0))

    journal.record("a", {}, [event("a", 1)])

    assert [row[3] for row in paths.outbox()] == ["suppressed"]


def test_version_1_database_gets_silences(paths: Paths, logs) -> None:
    """A database from schema version 1 is migrated: silences work and nothing is lost."""
    e = event("a", 1)
    with paths.open() as journal:
        journal.record("a", {"n": 1}, [e])
    paths.execute("DROP TABLE silences")
    paths.execute("DELETE FROM meta WHERE key LIKE 'audit_%'")
    paths.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match=f"older than {schema.SCHEMA_VERSION}"):
        paths.open(read_only=True)
    logs.clear()

    with paths.open() as journal:
        assert journal.events() == [e]
        assert journal.load_states() == {"a": {"n": 1}}
        journal.add_silence("a", at(90), "after upgrade", at(0))
        journal.record("a", {}, [event("a", 2)])

    assert [row[3] for row in paths.outbox()] == ["pending", "suppressed"]
    assert paths.lines() == jsonl([e, event("a", 2)])
    assert logs[0] == {
        "event": schema.SCHEMA_MIGRATED,
        "log_level": "info",
        "path": str(paths.db),
        "old": 1,
        "new": schema.SCHEMA_VERSION,
    }


# --- audit chain and rotation ---------------------------------------------------


def test_audit_lines_keep_the_plain_event_for_sinks(
    journal: Journal, paths: Paths
) -> None:
    """Only the audit line carries the chain; the stored event (what sinks get) does not."""
    e = event("a", 1)
    journal.record("a", {}, [e])

    (line,) = paths.lines()
    assert json.loads(line) == e.to_dict() | {"auditseq": 1, "prevhash": GENESIS}
    row = journal.next_due("ops", at(1))
    assert row is not None
    assert row.event.to_json() == e.to_json()
    assert "prevhash" not in row.event.to_json()


def test_rename_while_running_starts_a_chained_file(
    journal: Journal, paths: Paths, logs
) -> None:
    """After a rename the next record reopens the path and chains from the old last line."""
    first = [event("a", 1), event("a", 2)]
    journal.record("a", {}, first)
    rotated = paths.audit_log.with_name("events.jsonl.1")
    paths.audit_log.rename(rotated)
    second = [event("a", 3)]

    journal.record("a", {}, second)

    old = rotated.read_text(encoding="utf-8").splitlines()
    assert old == jsonl(first)
    last = hashlib.sha256(old[-1].encode()).hexdigest()
    assert paths.lines() == jsonl(second, first_seq=3, prevhash=last)
    assert journal.audit_position() == audit.AuditPosition(
        seq=3, index=3, hash=hashlib.sha256(paths.lines()[-1].encode()).hexdigest()
    )
    assert [entry["event"] for entry in logs] == [
        audit.AUDIT_REOPENED,
        audit.AUDIT_CONTINUED,
    ]


def test_reopen_audit_log_creates_the_file(journal: Journal, paths: Paths) -> None:
    """reopen_audit_log (SIGHUP) opens a fresh file at the path at once."""
    journal.record("a", {}, [event("a", 1)])
    paths.audit_log.rename(paths.audit_log.with_name("old"))

    journal.reopen_audit_log()

    assert paths.audit_log.read_bytes() == b""


def test_audit_position_survives_a_restart(paths: Paths) -> None:
    """The last line's position is kept in the database for a read-only reader."""
    events = _recorded(paths)

    with paths.open(read_only=True) as view:
        position = view.audit_position()
        view.reopen_audit_log()  # not the daemon: nothing to do

    last = jsonl(events)[-1]
    assert position == audit.AuditPosition(
        seq=4, index=4, hash=hashlib.sha256(last.encode()).hexdigest()
    )


def test_corrupt_database_is_a_clear_error_and_is_left_alone(paths: Paths) -> None:
    """Garbage where the database should be: a JournalError, and the file untouched."""
    paths.state_dir.mkdir(parents=True)
    garbage = b"this is not SQLite at all\x00" * 200
    paths.db.write_bytes(garbage)

    with pytest.raises(JournalError) as caught:
        paths.open()
    assert str(paths.db) in str(caught.value)
    assert "file is not a database" in str(caught.value)
    assert paths.db.read_bytes() == garbage


def test_database_locked_by_another_process_is_a_clear_error(paths: Paths) -> None:
    """Another process holding a write lock on the database: an error, no data lost."""
    with paths.open() as first:
        first.record("s1", {}, [event("s1", 1)])
    blocker = sqlite3.connect(paths.db, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")

    def open_and_record() -> None:
        with paths.open() as j:
            j.record("s1", {}, [event("s1", 2)])

    try:
        with pytest.raises(JournalError, match="locked"):
            open_and_record()
    finally:
        blocker.rollback()
        blocker.close()
    with paths.open() as again:
        assert [e.id for e in again.events()] == [event("s1", 1).id]
