"""The SQLite database file: schema and migrations, connections, the lock, encodings.

Durability (why ``synchronous=FULL``):
    An event must be durable before it is dispatched. :meth:`SqliteStore.record`
    commits the events, the server state and the outbox rows in one transaction,
    then appends the events to the audit log and fsyncs it; only then does the
    daemon wake the dispatcher. In WAL mode ``synchronous=NORMAL`` survives a
    process crash (``kill -9``) but a power loss may roll back the last commits.
    Reconciliation runs one way, SQLite to audit log, so the database must be at
    least as durable as the log: with ``NORMAL`` an fsynced audit line (or a
    delivered notification) could outlive the row that produced it, and the outbox
    row that would have recorded the delivery. ``FULL`` costs one WAL fsync per
    commit; the store commits per transition and per delivery attempt, never per
    poll (``shared/performance.md``), so the fsyncs scale with what happens, not with
    the fleet's poll rate.

Times are stored as integer microseconds since the Unix epoch (UTC): exact round
trips, cheap comparisons (:func:`to_us`, :func:`from_us`).

``sqlite3.Error`` and ``OSError`` become :class:`~watcher.errors.JournalError` in
:func:`translating`, once, for the whole SQLite store.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import structlog

from watcher.errors import JournalError

log = structlog.get_logger(__name__)

#: The schema this code writes. A database at an older version is migrated on open
#: by ``_MIGRATIONS``; a newer one is refused (a downgrade must not corrupt it).
SCHEMA_VERSION: Final = 4
DB_NAME: Final = "state.sqlite3"
LOCK_NAME: Final = "lock"
#: How long a writer waits for another connection's write lock (CLI vs daemon).
BUSY_TIMEOUT_MS: Final = 5000

# Log event names.
SCHEMA_MIGRATED: Final = "journal.schema_migrated"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


# --- schema -------------------------------------------------------------------------

#: The silences table as schema version 2 created it (what migration 1 builds).
_SILENCES_TABLE_V2: Final = """CREATE TABLE silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server_glob TEXT NOT NULL,
        until INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )"""
#: Since version 3 a removed silence is kept (``silence list --all``) with when and
#: by whom it was removed; only rows with ``removed_at IS NULL`` hold.
_SILENCES_TABLE: Final = """CREATE TABLE silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server_glob TEXT NOT NULL,
        until INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        removed_at INTEGER,
        removed_by TEXT
    )"""

#: Each event's audit line (``auditseq``, ``prevhash``), so the event stream can
#: replay exact audit lines from the database (``events_since``).
_AUDITSEQ_INDEX: Final = (
    "CREATE INDEX events_auditseq ON events (auditseq) WHERE auditseq IS NOT NULL"
)

_SCHEMA: Final = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        server TEXT NOT NULL,
        type TEXT NOT NULL,
        time INTEGER NOT NULL,
        restore_id TEXT,
        json TEXT NOT NULL,
        auditseq INTEGER,
        prevhash TEXT
    )""",
    "CREATE INDEX events_server ON events (server, seq)",
    _AUDITSEQ_INDEX,
    "CREATE INDEX events_time ON events (time)",
    """CREATE TABLE server_state (
        server TEXT PRIMARY KEY,
        json TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    )""",
    """CREATE TABLE outbox (
        sink TEXT NOT NULL,
        event_id TEXT NOT NULL,
        server TEXT NOT NULL,
        seq INTEGER NOT NULL REFERENCES events (seq),
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'delivered', 'dead', 'suppressed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt_at INTEGER,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        delivered_at INTEGER,
        dead_at INTEGER,
        PRIMARY KEY (sink, event_id)
    )""",
    "CREATE UNIQUE INDEX outbox_sink_seq ON outbox (sink, seq)",
    # Per-server heads for next_due / next_due_at: small, only what is still pending.
    "CREATE INDEX outbox_pending ON outbox (sink, server, seq) WHERE status = 'pending'",
    "CREATE INDEX outbox_status ON outbox (sink, status)",
    _SILENCES_TABLE,
)


def _remember_audit_lines(conn: sqlite3.Connection) -> None:
    # Older events keep NULL: they were never streamed, and no replay reaches them.
    # Idempotent: a database marked older than its tables (tests build them so).
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    for name, kind in (("auditseq", "INTEGER"), ("prevhash", "TEXT")):
        if name not in columns:
            conn.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
    conn.execute(_AUDITSEQ_INDEX.replace("INDEX", "INDEX IF NOT EXISTS", 1))


def _add_silences(conn: sqlite3.Connection) -> None:
    conn.execute(_SILENCES_TABLE_V2)


def _keep_removed_silences(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE silences ADD COLUMN removed_at INTEGER")
    conn.execute("ALTER TABLE silences ADD COLUMN removed_by TEXT")


#: ``version -> step`` upgrading a database from ``version`` to ``version + 1``; each
#: step runs inside the transaction that also bumps ``meta.schema_version``.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _add_silences,
    2: _keep_removed_silences,
    3: _remember_audit_lines,
}


# --- connections and encodings -----------------------------------------------------


@contextmanager
def translating(action: str) -> Iterator[None]:
    """Turn ``sqlite3.Error`` / ``OSError`` into :class:`JournalError` (once, here)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise JournalError(f"{action}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise JournalError(f"{action}: {exc}") from exc


def to_us(at: datetime) -> int:
    """Integer microseconds since the Unix epoch of an aware datetime."""
    if at.tzinfo is None:
        raise ValueError("journal times must be timezone-aware")
    return (at - _EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    """The aware UTC datetime of integer microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the database for writing: WAL, ``synchronous=FULL``, FKs on."""
    with translating(f"opening the state database {path}"):
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            _configure(conn, path)
        except BaseException:
            conn.close()
            raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(
            f"{path} could not be switched to WAL mode (it is in {mode} mode)",
            hint="is state_dir on a network file system? use a local disk",
        )
    # See the module docstring: the database must be as durable as the audit log.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


def connect_read_only(path: Path) -> sqlite3.Connection:
    """Open an existing database read-only (``mode=ro``, ``query_only``)."""
    if not path.exists():
        raise JournalError(
            f"no state database at {path}",
            hint="check state_dir; the daemon creates it on its first run",
        )
    uri = path.resolve().as_uri() + "?mode=ro"
    with translating(f"opening the state database {path} read-only"):
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA query_only = ON")
    return conn


def _stored_version(conn: sqlite3.Connection, path: Path) -> int | None:
    """The database's schema version; None for an empty database."""
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    if "meta" not in tables:
        if tables - {"sqlite_sequence"}:
            raise JournalError(
                f"{path} is not an sklm-watcher state database",
                hint="point state_dir at a directory of its own",
            )
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0])
    except (TypeError, ValueError) as exc:
        raise JournalError(
            f"{path} has no readable schema version",
            hint="point state_dir at a directory of its own",
        ) from exc


def _too_new(path: Path, version: int) -> JournalError:
    return JournalError(
        f"{path} has schema version {version}, newer than this sklm-watcher "
        f"understands ({SCHEMA_VERSION})",
        hint="run the sklm-watcher release that wrote it, or a newer one",
    )


def prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty database, migrate an older one, refuse a newer."""
    with translating(f"preparing the state database {path}"):
        conn.execute("BEGIN IMMEDIATE")
        try:
            _create_or_migrate(conn, path)
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


def _create_or_migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = _stored_version(conn, path)
    if version is None:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        return
    if version > SCHEMA_VERSION:
        raise _too_new(path, version)
    if version == SCHEMA_VERSION:
        return
    for step in range(version, SCHEMA_VERSION):
        migrate = _MIGRATIONS.get(step)
        if migrate is None:
            raise JournalError(
                f"{path} has schema version {version} and there is no migration "
                f"from version {step}",
                hint="upgrade through an intermediate sklm-watcher release",
            )
        migrate(conn)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
        (str(SCHEMA_VERSION),),
    )
    log.info(SCHEMA_MIGRATED, path=str(path), old=version, new=SCHEMA_VERSION)


def check_schema_read_only(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a database the read-only views cannot read (none yet, too old or new)."""
    with translating(f"reading the state database {path}"):
        version = _stored_version(conn, path)
    if version is None:
        raise JournalError(
            f"{path} holds no journal yet",
            hint="the daemon creates it on its first run",
        )
    if version > SCHEMA_VERSION:
        raise _too_new(path, version)
    if version == _READABLE_AS_CURRENT:
        # Right after an upgrade the running daemon may still be the old one: the
        # views must not go blind until it restarts. Version 3 only added the
        # removal columns, which :meth:`SqliteStore.silences` reads as NULL there.
        return
    if version < SCHEMA_VERSION:
        raise JournalError(
            f"{path} has schema version {version}, older than {SCHEMA_VERSION}",
            hint="start the daemon once to migrate it",
        )


#: The older schema version the read-only views still read (see above).
_READABLE_AS_CURRENT: Final = 2


def take_lock(state_dir: Path) -> int:
    """Lock ``state_dir/lock`` exclusively and write our pid in it; return the fd."""
    path = state_dir / LOCK_NAME
    with translating(f"opening the lock file {path}"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            raise JournalError(
                f"state_dir {state_dir} is in use by another sklm-watcher "
                f"(pid {holder or 'unknown'})",
                hint="stop that process first, or give this one its own state_dir",
            ) from None
        with translating(f"writing the lock file {path}"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd
