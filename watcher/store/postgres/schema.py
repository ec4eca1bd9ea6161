"""The PostgreSQL schema: DDL, migrations under an advisory lock, connections, ``check_store``.

Every node of a cluster opens the same database; the first to find it empty creates
the schema and an older schema is migrated once, by one node: creation and each
migration run in one transaction that holds ``pg_advisory_xact_lock`` (a
transaction-scoped lock, released by the commit), so three nodes starting at once
wait for each other and only the first does the work; the others then find the
schema current. A newer schema than this code writes is refused (a downgrade must
not corrupt it).

Event and outbox instants are integer microseconds since the Unix epoch (as in the
SQLite store: exact round trips, the caller's clock); lease and heartbeat instants
are ``timestamptz`` from PostgreSQL's own clock (``now()``), so nodes whose clocks
disagree still agree on who holds what.

``psycopg.Error`` becomes :class:`~watcher.errors.JournalError` in
:func:`translating`, once, for the whole PostgreSQL store; no message names the
URL's password (:func:`describe` gives ``host:port/dbname``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
import structlog
from psycopg import conninfo

from watcher.audit import GENESIS_HASH
from watcher.errors import JournalError, one_line
from watcher.store import StoreCheck, StoreState

log = structlog.get_logger(__name__)

#: The schema this code writes. An older database is migrated on open by
#: ``_MIGRATIONS``; a newer one is refused.
SCHEMA_VERSION: Final = 1
#: The key of the advisory lock every schema change holds ("sklmwtch" in ASCII).
ADVISORY_LOCK: Final = 0x736B6C6D77746368
#: Seconds to wait for the server to accept a connection.
CONNECT_TIMEOUT: Final = 5
#: Milliseconds one statement (lock waits included) may take before it fails:
#: a store call never hangs forever.
STATEMENT_TIMEOUT_MS: Final = 10_000
#: Milliseconds sent data may stay unacknowledged before the connection is dropped.
TCP_USER_TIMEOUT_MS: Final = 15_000
#: Longest error detail kept (a reason in words, not the server's transcript).
MAX_DETAIL: Final = 300

# Log event names.
SCHEMA_CREATED: Final = "journal.schema_created"
SCHEMA_MIGRATED: Final = "journal.schema_migrated"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

# Which tables make a database ours (``meta`` with a schema version).
_SCHEMA: Final = (
    """CREATE TABLE meta (
        key text PRIMARY KEY,
        value text NOT NULL
    )""",
    """CREATE TABLE events (
        seq bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        server text NOT NULL,
        type text NOT NULL,
        time bigint NOT NULL,
        restore_id text,
        json text NOT NULL
    )""",
    "CREATE INDEX events_server ON events (server, seq)",
    "CREATE INDEX events_time ON events (time)",
    """CREATE TABLE server_state (
        server text PRIMARY KEY,
        json text NOT NULL,
        updated_at bigint NOT NULL,
        node text
    )""",
    """CREATE TABLE outbox (
        sink text NOT NULL,
        event_id text NOT NULL,
        server text NOT NULL,
        seq bigint NOT NULL REFERENCES events (seq),
        status text NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'delivered', 'dead', 'suppressed')),
        attempts integer NOT NULL DEFAULT 0,
        first_attempt_at bigint,
        next_attempt_at bigint NOT NULL,
        last_error text,
        delivered_at bigint,
        dead_at bigint,
        PRIMARY KEY (sink, event_id)
    )""",
    "CREATE UNIQUE INDEX outbox_sink_seq ON outbox (sink, seq)",
    # Per-server heads for next_due / next_due_at: only what is still pending.
    "CREATE INDEX outbox_pending ON outbox (sink, server, seq) WHERE status = 'pending'",
    "CREATE INDEX outbox_status ON outbox (sink, status)",
    """CREATE TABLE silences (
        id bigserial PRIMARY KEY,
        server_glob text NOT NULL,
        until bigint NOT NULL,
        reason text NOT NULL,
        created_at bigint NOT NULL,
        removed_at bigint,
        removed_by text
    )""",
    # One chain for the cluster: each line with its hash, in commit order (the
    # head row's lock serialises the appends).
    """CREATE TABLE audit (
        auditseq bigint PRIMARY KEY,
        event_id text NOT NULL UNIQUE,
        seq bigint NOT NULL,
        line text NOT NULL,
        hash text NOT NULL
    )""",
    """CREATE TABLE audit_head (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        auditseq bigint NOT NULL,
        seq bigint NOT NULL,
        hash text NOT NULL
    )""",
    """CREATE TABLE leases (
        server text PRIMARY KEY,
        node text NOT NULL,
        epoch bigint NOT NULL,
        expires_at timestamptz NOT NULL,
        released boolean NOT NULL DEFAULT false
    )""",
    """CREATE TABLE sink_leases (
        sink text PRIMARY KEY,
        node text NOT NULL,
        epoch bigint NOT NULL,
        expires_at timestamptz NOT NULL
    )""",
    """CREATE TABLE nodes (
        name text PRIMARY KEY,
        version text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL,
        left_at timestamptz
    )""",
)

#: ``version -> step`` upgrading a database from ``version`` to ``version + 1``; each
#: step runs in the transaction (and under the advisory lock) that bumps the version.
_MIGRATIONS: dict[int, Callable[[psycopg.Cursor[Any]], None]] = {}


# --- encodings and errors -----------------------------------------------------------


def to_us(at: datetime) -> int:
    """Integer microseconds since the Unix epoch of an aware datetime."""
    if at.tzinfo is None:
        raise ValueError("journal times must be timezone-aware")
    return (at - _EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    """The aware UTC datetime of integer microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def describe(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL: what messages name (no password)."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the PostgreSQL store (its URL does not parse)"
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    port = parts.get("port") or "5432"
    dbname = parts.get("dbname") or parts.get("user") or "?"
    return f"{host}:{port}/{dbname}"


def scrub(text: str, url: str) -> str:
    """``text`` with the URL and its password blanked, as one short line."""
    with_secret = [url]
    try:
        password = conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if password:
        with_secret.append(str(password))
    for secret in with_secret:
        text = text.replace(secret, "***")
    return one_line(text, MAX_DETAIL)


def returned(cur: psycopg.Cursor[Any]) -> Any:
    """The first column of the row an ``INSERT ... RETURNING`` returned."""
    row = cur.fetchone()
    if row is None:
        raise JournalError(
            "the store returned no row where it must", hint="this is a bug: report it"
        )
    return row[0]


@contextmanager
def translating(action: str, url: str) -> Iterator[None]:
    """Turn ``psycopg.Error`` into :class:`JournalError` (once, here; no password)."""
    try:
        yield
    except psycopg.Error as exc:
        reason = scrub(str(exc) or type(exc).__name__, url)
        raise JournalError(
            f"{action}: {type(exc).__name__}: {reason}",
            hint=f"check that PostgreSQL at {describe(url)} is up and reachable",
        ) from exc


def connect(url: str, *, read_only: bool = False) -> psycopg.Connection[Any]:
    """A new connection: autocommit (we open transactions), UTC, bounded waits.

    Raises:
        psycopg.Error: It cannot be opened (the caller translates).
    """
    # synchronous_commit=on whatever the server's default: an event must be durable
    # before it is dispatched (a server set to "off" loses the last commits in a
    # crash, and a notification could outlive the event it announced).
    options = (
        f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c timezone=UTC "
        "-c synchronous_commit=on"
    )
    if read_only:
        options += " -c default_transaction_read_only=on"
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        options=options,
        application_name="sklm-watcher",
        # statement_timeout is enforced by the server: a network cut (a partition,
        # a vanished host) would leave a call waiting for an answer that never
        # comes. These make the client give up on its own within ~15 s.
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        tcp_user_timeout=TCP_USER_TIMEOUT_MS,
    )


# --- the schema -----------------------------------------------------------------------


def stored_version(cur: psycopg.Cursor[Any]) -> int | None:
    """The database's schema version; None for a database with none of our tables.

    Raises:
        JournalError: The database holds other tables, or no readable version.
    """
    cur.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    )
    tables = {row[0] for row in cur.fetchall()}
    if "meta" not in tables:
        if tables:
            raise JournalError(
                "the database is not an sklm-watcher store "
                f"(it holds other tables: {', '.join(sorted(tables)[:5])})",
                hint="point store_url at a database of its own",
            )
        return None
    cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    row = cur.fetchone()
    try:
        return int(row[0]) if row is not None else int("")
    except (TypeError, ValueError) as exc:
        raise JournalError(
            "the database has no readable sklm-watcher schema version",
            hint="point store_url at a database of its own",
        ) from exc


def too_new(version: int) -> JournalError:
    """The error for a schema newer than this code writes."""
    return JournalError(
        f"the store has schema version {version}, newer than this sklm-watcher "
        f"understands ({SCHEMA_VERSION})",
        hint="run the sklm-watcher release that wrote it, or a newer one "
        "(in a rolling upgrade, upgrade this node too)",
    )


def prepare(conn: psycopg.Connection[Any], where: str) -> None:
    """Create the schema in an empty database, migrate an older one, refuse a newer.

    The advisory lock makes concurrent openers queue: the first creates or migrates,
    the others find the schema current once it is released (at the commit).
    """
    with conn.transaction(), conn.cursor() as cur:
        # Cheap look first: the common case (current schema) takes no lock.
        version = stored_version(cur)
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise too_new(version)
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        # Another node may have done it while we waited for the lock.
        version = stored_version(cur)
        if version is None:
            # One round trip for the whole DDL (no parameters: a simple query).
            cur.execute(";\n".join(_SCHEMA))
            cur.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s)",
                (str(SCHEMA_VERSION),),
            )
            cur.execute(
                "INSERT INTO audit_head (auditseq, seq, hash) VALUES (0, 0, %s)",
                (GENESIS_HASH,),
            )
            log.info(SCHEMA_CREATED, store=where, version=SCHEMA_VERSION)
            return
        if version > SCHEMA_VERSION:
            raise too_new(version)
        if version == SCHEMA_VERSION:
            return
        for step in range(version, SCHEMA_VERSION):
            migrate = _MIGRATIONS.get(step)
            if migrate is None:
                raise JournalError(
                    f"the store has schema version {version} and there is no "
                    f"migration from version {step}",
                    hint="upgrade through an intermediate sklm-watcher release",
                )
            migrate(cur)
        cur.execute(
            "UPDATE meta SET value = %s WHERE key = 'schema_version'",
            (str(SCHEMA_VERSION),),
        )
        log.info(SCHEMA_MIGRATED, store=where, old=version, new=SCHEMA_VERSION)


def check_readable(conn: psycopg.Connection[Any]) -> None:
    """Refuse a database the read-only views cannot read (none yet, too old or new)."""
    with conn.transaction(), conn.cursor() as cur:
        version = stored_version(cur)
    if version is None:
        raise JournalError(
            "the store holds no journal yet",
            hint="`sklm-watcher run` creates it on its first start",
        )
    if version > SCHEMA_VERSION:
        raise too_new(version)
    if version < SCHEMA_VERSION:
        raise JournalError(
            f"the store has schema version {version}, older than {SCHEMA_VERSION}",
            hint="start `sklm-watcher run` once to migrate it",
        )


# --- check-config -----------------------------------------------------------------------


def check_store(url: str) -> StoreCheck:
    """What ``run`` would find at ``url`` (reads only; see :func:`watcher.store.check_store`)."""
    where = describe(url)
    try:
        conn = connect(url, read_only=True)
    except psycopg.Error as exc:
        reason = scrub(str(exc) or type(exc).__name__, url)
        return StoreCheck(where, StoreState.UNREACHABLE, None, reason)
    try:
        with conn.transaction(), conn.cursor() as cur:
            version = stored_version(cur)
    except JournalError as exc:
        return StoreCheck(where, StoreState.FOREIGN, None, exc.detail)
    except psycopg.Error as exc:
        reason = scrub(str(exc) or type(exc).__name__, url)
        return StoreCheck(where, StoreState.UNREACHABLE, None, reason)
    finally:
        with suppress(psycopg.Error):
            conn.close()
    if version is None:
        return StoreCheck(
            where, StoreState.WILL_BE_CREATED, None, "empty: run creates the schema"
        )
    if version > SCHEMA_VERSION:
        return StoreCheck(
            where,
            StoreState.TOO_NEW,
            version,
            f"this release understands schema version {SCHEMA_VERSION}; "
            "run the release that wrote it, or a newer one",
        )
    missing = [
        step for step in range(version, SCHEMA_VERSION) if step not in _MIGRATIONS
    ]
    if missing:
        return StoreCheck(
            where,
            StoreState.TOO_OLD,
            version,
            f"no migration from schema version {missing[0]}; upgrade through an "
            "intermediate sklm-watcher release",
        )
    if version < SCHEMA_VERSION:
        return StoreCheck(
            where,
            StoreState.WILL_BE_MIGRATED,
            version,
            f"run migrates it to schema version {SCHEMA_VERSION} (once, by one node)",
        )
    return StoreCheck(where, StoreState.CURRENT, version, "ready")
