"""The JSON Lines audit log: its hash-chained line format, its writer and its verifier.

The audit log is a hash chain (tamper evidence):
    Each line is the event's CloudEvents JSON with two extension attributes added at
    the end: ``auditseq`` (the line's number since the log began: 1, 2, ... across
    rotations) and ``prevhash``, the SHA-256 (hex) of the previous line's bytes
    without its newline (:func:`line_hash`). The first line ever written chains from
    :data:`GENESIS_HASH` (64 zeros). The store remembers the last line
    (:class:`AuditPosition`), so when logrotate moves the file away the first line
    of the new file chains from the last line of the old one, whether the move
    happened while the daemon ran (noticed before each append by comparing the open
    descriptor's inode with the path's, or on SIGHUP) or while it was stopped.

The writer (:class:`AuditWriter`) owns the file: it repairs a torn last line, appends
what the store holds beyond the file's last line (:class:`AuditSource`), appends new
events and fsyncs. The store is the source of truth and decides when; this module
knows neither SQLite nor any other database. The verifier (:func:`verify_audit`)
checks a chain across rotated files, with the same :func:`line_hash`.

``OSError`` becomes :class:`~watcher.errors.JournalError` here: the audit log is part
of the journal, and the daemon reports either failure the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from watcher import schema
from watcher.errors import JournalError

log = structlog.get_logger(__name__)

#: What the first line of a brand-new audit log chains from.
GENESIS_HASH: Final = "0" * 64
#: The CloudEvents extension attributes of an audit line (lowercase alphanumeric).
PREVHASH_KEY: Final = "prevhash"
AUDITSEQ_KEY: Final = "auditseq"
#: Bytes read per step when looking for the audit log's last line from its end.
TAIL_CHUNK: Final = 64 * 1024
#: Bytes written per ``write`` when the audit log catches up with the store.
_CATCH_UP_BATCH: Final = 1 << 20

# Log event names (``journal.*``: operators' alerts match them; unchanged by the move).
AUDIT_TORN_LINE: Final = "journal.audit_torn_line"
AUDIT_REBUILT: Final = "journal.audit_rebuilt"
AUDIT_CAUGHT_UP: Final = "journal.audit_caught_up"
AUDIT_UNKNOWN_TAIL: Final = "journal.audit_unknown_tail"
AUDIT_REOPENED: Final = "journal.audit_reopened"
AUDIT_CONTINUED: Final = "journal.audit_continued"


# --- the line format ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditPosition:
    """The last line written to the audit log."""

    #: Its event's position in the store (``events.seq``; may have gaps).
    seq: int
    #: Its ``auditseq``: lines since the log began, across rotations (no gaps).
    index: int
    #: Its SHA-256 (hex), the next line's ``prevhash``.
    hash: str


def line_hash(line: bytes) -> str:
    """The SHA-256 (hex) of one audit line's bytes, without its newline."""
    return hashlib.sha256(line).hexdigest()


def chain_line(event_json: str, index: int, prevhash: str) -> str:
    """The audit line of an event: its JSON plus ``auditseq`` and ``prevhash``.

    ``index`` (``auditseq``) counts the log's lines from 1 across rotations; a gap
    or step back in it tells a removed or reordered line from a changed one.

    Spliced rather than re-serialised so the line is the stored JSON byte for byte,
    with the two extension attributes after ``data``.
    """
    if not event_json.endswith("}"):
        raise ValueError("an event's JSON must be an object")
    return f'{event_json[:-1]},"{AUDITSEQ_KEY}":{index},"{PREVHASH_KEY}":"{prevhash}"}}'


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:  # incl. UnicodeDecodeError and JSONDecodeError
        return None
    return obj if isinstance(obj, dict) else None


def _line_id(line: bytes) -> str | None:
    """The event id of one audit line, or None when it is not a whole event."""
    obj = _json_object(line)
    event_id = None if obj is None else obj.get("id")
    return event_id if isinstance(event_id, str) else None


def _line_index(line: bytes) -> int:
    """The ``auditseq`` of one audit line; 0 for a line from before the chain."""
    obj = _json_object(line)
    index = None if obj is None else obj.get(AUDITSEQ_KEY)
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


# --- the writer ---------------------------------------------------------------------


class AuditSource(Protocol):
    """What the writer needs from the store to continue the chain (its events)."""

    def seq_of(self, event_id: str) -> int | None:
        """Return the store position of the event with this id (None: unknown)."""
        ...

    def last_seq(self) -> int:
        """Return the newest stored event's position (0: none)."""
        ...

    def events_after(self, seq: int) -> Iterable[tuple[int, str]]:
        """Yield ``(seq, event JSON)`` of every stored event after ``seq``, in order."""
        ...


class AuditWriter:
    """Appends hash-chained lines to the audit file; repairs and catches it up.

    Not thread-safe: the store calls it under its own lock, so the log's order is
    the store's order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        #: The last line in the audit log (None until the log is opened).
        self.position: AuditPosition | None = None
        #: The file's size after our last write (a smaller one was truncated).
        self._size = 0
        #: ``(seq, auditseq, prevhash)`` of each line appended or caught up since
        #: the store last took them (it remembers them: the event stream replays
        #: them). A failed append's lines stay: the catch-up that follows writes
        #: those events with the same numbers and hashes (the chain is
        #: deterministic from the same last line), or finds them already there.
        self.written: list[tuple[int, int, str]] = []

    @property
    def is_open(self) -> bool:
        """Whether a descriptor is open (False after a failed append or a close)."""
        return self._fd is not None

    def close(self) -> None:
        """Close the file (the next :meth:`catch_up` reopens it by its path)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)

    def replaced(self) -> bool:
        """Whether the path no longer names our open file, or the file was truncated."""
        fd = self._fd
        if fd is None:
            return True
        try:
            on_disk = os.stat(self.path)
            ours = os.fstat(fd)
        except OSError:
            return True
        moved = (on_disk.st_dev, on_disk.st_ino) != (ours.st_dev, ours.st_ino)
        return moved or ours.st_size < self._size

    def append(self, new: Sequence[tuple[int, str]]) -> AuditPosition:
        """Append ``(seq, event JSON)`` pairs as chained lines, fsync; return the end.

        Raises:
            JournalError: The write or fsync failed; the descriptor is dropped so
                the next :meth:`catch_up` repairs the tail and appends the rest.
        """
        position, fd = self.position, self._fd
        if position is None or fd is None:
            raise JournalError(
                "the audit log is not open", hint="this is a bug: report it"
            )
        lines: list[str] = []
        written: list[tuple[int, int, str]] = []
        index, previous = position.index, position.hash
        for seq, text in new:
            index += 1
            written.append((seq, index, previous))
            line = chain_line(text, index, previous)
            previous = line_hash(line.encode("utf-8"))
            lines.append(line + "\n")
        data = "".join(lines).encode("utf-8")
        self.written.extend(written)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            self.close()
            raise JournalError(
                f"appending to the audit log {self.path} failed ({exc}); the "
                "events are stored and the log will catch up"
            ) from exc
        self._size += len(data)
        self.position = AuditPosition(new[-1][0], index, previous)
        return self.position

    def catch_up(
        self,
        source: AuditSource,
        known: AuditPosition | None,
        *,
        expected: int = 0,
    ) -> AuditPosition:
        """Open the log, repair its tail and append what ``source`` holds beyond it.

        A non-empty file is authoritative: the chain continues from its last line.
        An empty or missing one continues from ``known`` (the remembered position:
        logrotate moved the old file away), or from :data:`GENESIS_HASH` when no log
        was ever written (a new store, or one from before the chain), in which case
        the whole history is written. Writing more than the ``expected`` events
        just recorded is logged as a warning.

        Returns:
            The new last line (also kept in :attr:`position`).

        Raises:
            JournalError: The file cannot be opened, repaired or written.
        """
        self.close()
        path = self.path
        with _translating(f"opening the audit log {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            fd = os.open(
                path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
        try:
            with _translating(f"reconciling the audit log {path}"):
                if created:
                    _fsync_dir(path.parent)
                start, rebuild = self._start(source, _repair_tail(fd, path), known)
                position = self._write_missing(fd, source, start, rebuild, expected)
                if position != start:
                    os.fsync(fd)
                size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size, self.position = fd, size, position
        return position

    def _start(
        self, source: AuditSource, tail: bytes | None, known: AuditPosition | None
    ) -> tuple[AuditPosition, bool]:
        """Where the chain continues, and whether the whole history goes in."""
        if tail is None:
            if known is None:
                return AuditPosition(0, 0, GENESIS_HASH), True
            if known.seq > 0:
                log.info(
                    AUDIT_CONTINUED,
                    path=str(self.path),
                    after_seq=known.seq,
                    prevhash=known.hash,
                )
            return known, False
        digest = line_hash(tail)
        last_id = _line_id(tail)
        index = _line_index(tail)
        seq = None if last_id is None else source.seq_of(last_id)
        if seq is None:
            # The log is ahead of (or foreign to) this store, e.g. the database was
            # deleted or restored from a backup: never guess, never duplicate.
            log.warning(AUDIT_UNKNOWN_TAIL, path=str(self.path), last_id=last_id)
            return AuditPosition(source.last_seq(), index, digest), False
        return AuditPosition(seq, index, digest), False

    def _write_missing(
        self,
        fd: int,
        source: AuditSource,
        start: AuditPosition,
        rebuild: bool,
        expected: int,
    ) -> AuditPosition:
        """Append every stored event after ``start``; return the new last line."""
        last_seq, index, previous = start.seq, start.index, start.hash
        written = 0
        batch: list[str] = []
        size = 0
        for seq, text in source.events_after(start.seq):
            last_seq = seq
            index += 1
            self.written.append((seq, index, previous))
            line = chain_line(text, index, previous)
            previous = line_hash(line.encode("utf-8"))
            batch.append(line + "\n")
            size += len(line) + 1
            written += 1
            if size >= _CATCH_UP_BATCH:
                _write_all(fd, "".join(batch).encode("utf-8"))
                batch, size = [], 0
        if batch:
            _write_all(fd, "".join(batch).encode("utf-8"))
        if written > expected:
            name = AUDIT_REBUILT if rebuild else AUDIT_CAUGHT_UP
            log.warning(name, path=str(self.path), events=written)
        return AuditPosition(last_seq, index, previous)


@contextmanager
def _translating(action: str) -> Iterator[None]:
    """Turn ``OSError`` into :class:`JournalError` (once, here)."""
    try:
        yield
    except OSError as exc:
        raise JournalError(f"{action}: {exc}") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    """Make a newly created file's directory entry durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_line(fd: int, end: int) -> tuple[int, bytes, bool]:
    """Find the last line of the first ``end`` bytes, reading backwards from the end.

    Returns:
        ``(start, line, terminated)``: its offset, its bytes without the newline, and
        whether it ends with one.
    """
    terminated = os.pread(fd, 1, end - 1) == b"\n"
    pos = end - 1 if terminated else end
    chunks: list[bytes] = []
    start = 0
    while pos > 0:
        size = min(TAIL_CHUNK, pos)
        pos -= size
        chunk = os.pread(fd, size, pos)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            chunks.append(chunk[newline + 1 :])
            start = pos + newline + 1
            break
        chunks.append(chunk)
    return start, b"".join(reversed(chunks)), terminated


def _repair_tail(fd: int, path: Path) -> bytes | None:
    """Drop a torn last line and return the last event line's bytes (None: empty).

    Only the last line can be torn by a crash (the writer appends whole lines, then
    fsyncs), so at most one line is dropped; anything worse is refused rather than
    truncated, in case ``audit_log`` names someone else's file.
    """
    end = os.fstat(fd).st_size
    if end == 0:
        return None
    start, line, terminated = _last_line(fd, end)
    if _line_id(line) is not None:
        if not terminated:
            # Whole JSON, only the newline is missing: keep the event, end the line.
            _write_all(fd, b"\n")
        return line
    previous_line = None
    if start > 0:
        previous_start, previous, _ = _last_line(fd, start)
        previous_line = previous
        if _line_id(previous) is None:
            raise JournalError(
                f"the audit log {path} does not end with an event "
                f"(lines at bytes {previous_start} and {start})",
                hint="check that audit_log names sklm-watcher's own file; move it "
                "aside to have it rebuilt from the state database",
            )
    log.warning(AUDIT_TORN_LINE, path=str(path), offset=start, dropped=end - start)
    os.ftruncate(fd, start)
    return previous_line


# --- the verifier -------------------------------------------------------------------

NOT_JSON: Final = "not JSON"
NO_PREVHASH: Final = "no prevhash (not a chained audit line)"
CHANGED: Final = "hash does not match the next line's prevhash (this line was changed)"
REMOVED_OR_REORDERED: Final = "line removed or reordered"
ANCHOR_MISMATCH: Final = "prevhash does not match the expected anchor"
LAST_MISMATCH: Final = (
    "does not match the journal's last recorded hash "
    "(this line was changed, or lines after it removed)"
)


@dataclass(frozen=True, slots=True)
class AuditFault:
    """The first audit line that does not fit the chain."""

    file: Path
    #: 1-based line number in ``file``.
    line: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        """``{"file", "line", "reason"}`` (:func:`watcher.schema.audit_fault_json`)."""
        return schema.audit_fault_json(self)


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """The result of :func:`verify_audit`."""

    ok: bool
    #: Lines that chained before the first bad one (all of them when ``ok``).
    lines: int
    first_bad: AuditFault | None = None
    #: The first line's ``prevhash``: 64 zeros for a log verified from its start,
    #: else the hash of the last line of the file rotated away before it.
    anchor: str | None = None
    #: The SHA-256 of the last line read (what the next line must carry).
    last_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        """``audit verify --json`` (:func:`watcher.schema.audit_verdict_json`)."""
        return schema.audit_verdict_json(self)

    def summary(self) -> str:
        """One line for a terminal."""
        if self.first_bad is None:
            return f"audit log intact: {self.lines} lines chain (anchor {self.anchor})"
        bad = self.first_bad
        return (
            f"audit log NOT intact: {bad.file}:{bad.line}: {bad.reason} "
            f"({self.lines} lines chained before it)"
        )


@dataclass(frozen=True, slots=True)
class _Line:
    file: Path
    number: int
    raw: bytes
    digest: str


def verify_audit(
    paths: Sequence[Path],
    *,
    anchor: str | None = None,
    expect_last_hash: str | None = None,
) -> AuditVerdict:
    """Check the audit log's hash chain across files given oldest first.

    Each line's ``prevhash`` must be the SHA-256 of the line before it (across file
    boundaries). The first line chains from ``anchor`` if given, else from whatever
    it carries (reported as ``anchor``), so one rotated file can be checked alone.

    A break is named at the line that explains it: a line whose ``prevhash`` is the
    hash of another line, or whose ``auditseq`` does not follow the previous one,
    means lines were removed or reordered there; otherwise the line before it was
    changed. The chain alone cannot show a changed (or removed) *last* line: pass
    ``expect_last_hash`` (the store's ``audit_position()``) to check that too.

    Raises:
        OSError: A file cannot be read.
    """
    lines = _read_lines(paths)
    if not lines:
        return AuditVerdict(ok=True, lines=0, anchor=anchor)
    first_at = {line.digest: i for i, line in reversed(list(enumerate(lines)))}

    def bad(i: int, reason: str) -> AuditVerdict:
        line = lines[i]
        return AuditVerdict(
            ok=False,
            lines=i,
            first_bad=AuditFault(line.file, line.number, reason),
            anchor=found_anchor,
            last_hash=lines[i - 1].digest if i > 0 else None,
        )

    found_anchor = anchor
    previous_index: int | None = None
    for i, line in enumerate(lines):
        obj = _json_object(line.raw)
        if obj is None:
            return bad(i, NOT_JSON)
        prevhash = obj.get(PREVHASH_KEY)
        if not isinstance(prevhash, str):
            return bad(i, NO_PREVHASH)
        index = obj.get(AUDITSEQ_KEY)
        index = (
            index if isinstance(index, int) and not isinstance(index, bool) else None
        )
        if i == 0:
            if anchor is not None and prevhash != anchor:
                return bad(i, ANCHOR_MISMATCH)
            found_anchor = prevhash
        elif prevhash != lines[i - 1].digest:
            elsewhere = first_at.get(prevhash)
            if elsewhere is not None and elsewhere != i - 1:
                return bad(i, REMOVED_OR_REORDERED)
            if (
                index is not None
                and previous_index is not None
                and index != previous_index + 1
            ):
                return bad(i, REMOVED_OR_REORDERED)
            return bad(i - 1, CHANGED)
        previous_index = index
    last = len(lines) - 1
    if (
        expect_last_hash is not None
        and lines[last].digest != expect_last_hash
        and expect_last_hash not in first_at  # the daemon may have appended since
    ):
        return bad(last, LAST_MISMATCH)
    return AuditVerdict(
        ok=True, lines=len(lines), anchor=found_anchor, last_hash=lines[last].digest
    )


def _read_lines(paths: Sequence[Path]) -> list[_Line]:
    out = []
    for path in paths:
        raw_lines = path.read_bytes().split(b"\n")
        if raw_lines and raw_lines[-1] == b"":
            raw_lines.pop()
        for number, raw in enumerate(raw_lines, start=1):
            out.append(_Line(path, number, raw, line_hash(raw)))
    return out
