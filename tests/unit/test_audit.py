"""The audit chain on its own: line format, writer and verifier, with no database.

The writer reads the store only through ``AuditSource``; here that is a list, so any
store (SQLite today, PostgreSQL next) gets the same chain. The chain written by the
SQLite store is verified end to end in ``test_views.py`` and ``test_journal.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.audit import (
    AUDIT_CAUGHT_UP,
    AUDIT_REBUILT,
    AUDIT_TORN_LINE,
    GENESIS_HASH,
    AuditPosition,
    AuditVerdict,
    AuditWriter,
    chain_line,
    line_hash,
    verify_audit,
)
from watcher.errors import JournalError


class ListSource:
    """Stored events as a list of ``(seq, json)``, as a store would hand them over."""

    def __init__(self, events: list[tuple[int, str]]) -> None:
        self.events = events

    def seq_of(self, event_id: str) -> int | None:
        """The seq of the event with this id."""
        return next(
            (seq for seq, text in self.events if json.loads(text)["id"] == event_id),
            None,
        )

    def last_seq(self) -> int:
        """The newest seq (0: none)."""
        return self.events[-1][0] if self.events else 0

    def events_after(self, seq: int) -> Iterator[tuple[int, str]]:
        """Every event after ``seq``, in order."""
        return iter([(s, text) for s, text in self.events if s > seq])


def stored(n: int, *, first: int = 1) -> list[tuple[int, str]]:
    """``n`` tiny stored events with seqs from ``first`` (gaps allowed in real stores)."""
    return [(s, f'{{"id":"e{s}","n":{s}}}') for s in range(first, first + n)]


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[AuditWriter]:
    """A writer for ``tmp_path/log/events.jsonl``; closed on teardown."""
    opened = AuditWriter(tmp_path / "log" / "events.jsonl")
    yield opened
    opened.close()


def test_line_format_is_the_event_json_plus_auditseq_and_prevhash() -> None:
    """The line is the stored JSON byte for byte, then the two extension attributes."""
    line = chain_line('{"id":"e1","data":{"a":1}}', 7, GENESIS_HASH)

    assert line == (
        '{"id":"e1","data":{"a":1},"auditseq":7,"prevhash":"' + GENESIS_HASH + '"}'
    )
    assert line_hash(line.encode()) == hashlib.sha256(line.encode()).hexdigest()
    with pytest.raises(ValueError, match="object"):
        chain_line("[1]", 1, GENESIS_HASH)


def test_catch_up_writes_the_whole_history_from_genesis(writer: AuditWriter) -> None:
    """A new log gets every stored event, chained from 64 zeros, and verifies."""
    position = writer.catch_up(ListSource(stored(3)), None)

    lines = writer.path.read_bytes().splitlines()
    assert [json.loads(line)["auditseq"] for line in lines] == [1, 2, 3]
    assert position == AuditPosition(3, 3, line_hash(lines[-1]))
    assert verify_audit([writer.path], expect_last_hash=position.hash) == AuditVerdict(
        ok=True, lines=3, anchor=GENESIS_HASH, last_hash=position.hash
    )


def test_append_continues_the_chain(writer: AuditWriter) -> None:
    """Appended events chain from the last line and fsync; the result verifies."""
    source = ListSource(stored(2))
    writer.catch_up(source, None)

    position = writer.append(stored(2, first=10))

    assert position.seq == 11
    assert position.index == 4
    verdict = verify_audit([writer.path], expect_last_hash=position.hash)
    assert verdict.ok
    assert verdict.lines == 4


def test_catch_up_drops_a_torn_line_and_appends_what_is_missing(
    writer: AuditWriter, logs
) -> None:
    """A crash mid-append leaves a torn line: it goes, and the events it lost come back."""
    source = ListSource(stored(3))
    writer.catch_up(source, None)
    writer.close()
    whole = writer.path.read_bytes()
    writer.path.write_bytes(whole[: whole.rindex(b"\n", 0, -1) + 1] + b'{"id":"e3"')

    writer.catch_up(source, None)

    assert writer.path.read_bytes() == whole
    assert [e["event"] for e in logs] == [
        AUDIT_REBUILT,  # the first catch-up: a new log
        AUDIT_TORN_LINE,
        AUDIT_CAUGHT_UP,
    ]


def test_rotated_log_continues_from_the_remembered_position(
    writer: AuditWriter,
) -> None:
    """An empty file after rotation chains from the position the store remembered."""
    source = ListSource(stored(2))
    known = writer.catch_up(source, None)
    rotated = writer.path.with_name("events.jsonl.1")
    writer.path.rename(rotated)
    assert writer.replaced()

    source.events += stored(1, first=3)
    writer.catch_up(source, known)

    assert verify_audit([writer.path]).anchor == known.hash
    assert verify_audit([rotated, writer.path]).ok


def test_a_foreign_file_is_refused(writer: AuditWriter) -> None:
    """A file whose last two lines are not events is not truncated: it is refused."""
    writer.path.parent.mkdir(parents=True)
    writer.path.write_bytes(b"syslog one\nsyslog two\nthree")

    with pytest.raises(JournalError, match="does not end with an event"):
        writer.catch_up(ListSource([]), None)
    assert writer.path.read_bytes() == b"syslog one\nsyslog two\nthree"
