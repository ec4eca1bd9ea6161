"""SQLite's side of ``events_since``: the audit file's bytes, failures, migration."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tests.unit.store.test_contract import OPS, event
from watcher.errors import JournalError
from watcher.store.sqlite import SqliteStore
from watcher.store.sqlite import schema as sqlite_schema


def open_store(root: Path) -> SqliteStore:
    """A store in ``root`` with one sink."""
    return SqliteStore.open(root / "state", root / "events.jsonl", [OPS])


def file_lines(root: Path) -> list[str]:
    """The audit file's lines."""
    return (root / "events.jsonl").read_text(encoding="utf-8").splitlines()


def test_lines_are_the_audit_files_bytes(tmp_path: Path) -> None:
    """Each line ``events_since`` returns is the file's line, byte for byte."""
    with open_store(tmp_path) as store:
        store.record("a", {}, [event("a", n) for n in range(1, 4)])
        store.record("b", {}, [event("b", 1)])
        lines = store.events_since(0)
    assert [line.line for line in lines] == file_lines(tmp_path)
    # A read-only store (the CLI's) reads the same lines.
    with SqliteStore.open(
        tmp_path / "state", tmp_path / "events.jsonl", [OPS], read_only=True
    ) as reader:
        assert reader.events_since(0) == lines


def test_a_failed_append_leaves_no_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events whose append failed are streamed once the log caught up, in order."""
    e1, e2, e3 = event("a", 1), event("a", 2), event("a", 3)
    with open_store(tmp_path) as store:
        store.record("a", {}, [e1])
        real_fsync = os.fsync

        def failing_fsync(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(JournalError):
            store.record("a", {}, [e2])
        monkeypatch.setattr(os, "fsync", real_fsync)
        store.record("a", {}, [e3])
        lines = store.events_since(0)
    assert [line.auditseq for line in lines] == [1, 2, 3]
    assert [line.line for line in lines] == file_lines(tmp_path)


def test_a_version_3_database_is_migrated(tmp_path: Path) -> None:
    """Old events (no remembered line) are left out; new ones stream from there on."""
    with open_store(tmp_path) as store:
        store.record("a", {}, [event("a", 1)])
    db = tmp_path / "state" / sqlite_schema.DB_NAME
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DROP INDEX events_auditseq")
        conn.execute("ALTER TABLE events DROP COLUMN auditseq")
        conn.execute("ALTER TABLE events DROP COLUMN prevhash")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()

    with open_store(tmp_path) as store:
        assert store.events_since(0) == []
        store.record("a", {}, [event("a", 2)])
        (line,) = store.events_since(0)
    assert line.auditseq == 2
    assert line.line == file_lines(tmp_path)[1]
