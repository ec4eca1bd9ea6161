"""The PostgreSQL store's schema, opening modes, connection loss and ``check_store``."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.store.conftest import OPS, Gate, OpenNode, event
from tests.pgserver import PostgresServer, free_port
from watcher.config import Secret, WatcherSettings
from watcher.errors import JournalError
from watcher.store import StoreState, check_store, open_store
from watcher.store.postgres import PostgresStore, schema
from watcher.store.sqlite import SqliteStore

Sql = Callable[..., list[tuple[Any, ...]]]
Logs = list[MutableMapping[str, Any]]


def _open_concurrently(pg_url: str, count: int) -> list[PostgresStore | BaseException]:
    barrier = threading.Barrier(count)
    results: list[PostgresStore | BaseException] = []

    def open_one(n: int) -> None:
        barrier.wait()
        try:
            results.append(PostgresStore.open(pg_url, [OPS], node_name=f"n{n}"))
        except Exception as exc:  # noqa: BLE001  (handed to the test thread)
            results.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_three_nodes_starting_at_once_create_the_schema_once(
    pg_url: str, sql: Sql, logs: Logs
) -> None:
    """The advisory lock queues them: one creates, the others find it current."""
    stores = _open_concurrently(pg_url, 3)
    try:
        assert all(isinstance(s, PostgresStore) for s in stores), stores
        created = [e for e in logs if e["event"] == schema.SCHEMA_CREATED]
        assert len(created) == 1
        assert sql("SELECT key, value FROM meta") == [("schema_version", "1")]
        assert sql("SELECT auditseq FROM audit_head") == [(0,)]
    finally:
        for store in stores:
            if isinstance(store, PostgresStore):
                store.close()


def test_a_migration_runs_once_when_three_nodes_start_at_once(
    pg_url: str, sql: Sql, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling upgrade's schema step is done by one node, under the advisory lock."""
    PostgresStore.open(pg_url, [OPS], node_name="old").close()
    steps: list[int] = []

    def add_notes(cur: psycopg.Cursor[Any]) -> None:
        steps.append(1)
        cur.execute("CREATE TABLE notes (id bigint PRIMARY KEY)")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(schema._MIGRATIONS, 1, add_notes)
    assert check_store(pg_url).state is StoreState.WILL_BE_MIGRATED

    stores = _open_concurrently(pg_url, 3)
    try:
        assert all(isinstance(s, PostgresStore) for s in stores), stores
        assert steps == [1]
        migrated = [e for e in logs if e["event"] == schema.SCHEMA_MIGRATED]
        assert [(e["old"], e["new"]) for e in migrated] == [(1, 2)]
        assert sql("SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
        assert check_store(pg_url).state is StoreState.CURRENT
    finally:
        for store in stores:
            if isinstance(store, PostgresStore):
                store.close()


def test_a_newer_schema_is_refused(pg_url: str, sql: Sql) -> None:
    """A downgrade must not touch a store a newer release wrote."""
    PostgresStore.open(pg_url, [OPS], node_name="a").close()
    sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'")

    for mode in ("daemon", "write", "read"):
        with pytest.raises(JournalError, match="schema version 99, newer than"):
            PostgresStore.open(pg_url, [OPS], node_name="a", mode=mode)
    check = check_store(pg_url)
    assert check.state is StoreState.TOO_NEW
    assert not check.ok
    assert check.version == 99


def test_an_old_schema_without_a_migration_is_refused(pg_url: str, sql: Sql) -> None:
    """check_store says so before run fails on it."""
    PostgresStore.open(pg_url, [OPS], node_name="a").close()
    sql("UPDATE meta SET value = '0' WHERE key = 'schema_version'")

    check = check_store(pg_url)
    assert (check.state, check.ok, check.version) == (StoreState.TOO_OLD, False, 0)
    with pytest.raises(JournalError, match="no migration from version 0"):
        PostgresStore.open(pg_url, [OPS], node_name="a")


def test_a_foreign_database_is_refused(pg_url: str, sql: Sql) -> None:
    """A database holding other tables is not taken over."""
    sql("CREATE TABLE invoices (id int)")

    with pytest.raises(JournalError, match="not an sklm-watcher store"):
        PostgresStore.open(pg_url, [OPS], node_name="a")
    check = check_store(pg_url)
    assert check.state is StoreState.FOREIGN
    assert "invoices" in check.detail


def test_check_store_says_created_then_current(pg_url: str) -> None:
    """An empty database is fine: run creates the schema; check_store creates nothing."""
    before = check_store(Secret(pg_url))
    assert (before.state, before.ok, before.version) == (
        StoreState.WILL_BE_CREATED,
        True,
        None,
    )
    assert check_store(pg_url).state is StoreState.WILL_BE_CREATED  # still empty

    PostgresStore.open(pg_url, [OPS], node_name="a").close()

    after = check_store(pg_url)
    assert (after.state, after.version) == (StoreState.CURRENT, 1)
    assert after.where.endswith(pg_url.rsplit("/", 1)[1])
    assert after.summary().startswith(f"store {after.where}: current")


def test_an_unreachable_store_is_named_without_its_password() -> None:
    """Nothing listens there: check_store and open say so, the password never shown."""
    url = f"postgresql://watcher:hunter2secret@127.0.0.1:{free_port()}/watcher"

    check = check_store(url)
    assert check.state is StoreState.UNREACHABLE
    assert not check.ok
    assert "hunter2secret" not in check.summary()
    with pytest.raises(JournalError) as error:
        PostgresStore.open(url, [OPS], node_name="a")
    assert "hunter2secret" not in str(error.value)
    assert "127.0.0.1" in str(error.value)


def test_read_mode_reads_and_refuses_writes(open_node: OpenNode, pg_url: str) -> None:
    """The views' opening: everything readable, nothing writable, no schema created."""
    with pytest.raises(JournalError, match="holds no journal yet"):
        PostgresStore.open(pg_url, [OPS], mode="read")
    a = open_node("a")
    a.take(["s1"], 1)
    a.record("s1", {"n": 1}, [event("s1", 1)])

    reader = open_node("", mode="read")

    assert reader.load_states() == {"s1": {"n": 1}}
    assert reader.events() == [event("s1", 1)]
    assert len(reader.events_since(0)) == 1
    with pytest.raises(JournalError, match="cannot record"):
        reader.record("s1", {}, [])
    with pytest.raises(JournalError, match="read-only"):
        reader.requeue(all_dead=True)
    with pytest.raises(JournalError, match="without leases"):
        reader.take(["s2"], 1)


def test_write_mode_changes_the_outbox_but_never_records(open_node: OpenNode) -> None:
    """The CLI's opening (requeue, silences) while nodes run: no leases, no record."""
    a = open_node("a")
    a.take(["s1"], 1)
    e1 = event("s1", 1)
    a.record("s1", {}, [e1])
    a.dead_letter("ops", e1.id, error="gone", at=e1.time)

    cli = open_node("", mode="write")

    assert cli.requeue(all_dead=True, at=e1.time) == 1
    assert cli.add_silence("*", e1.time, "window", e1.time) == 1
    with pytest.raises(JournalError, match="without leases"):
        cli.record("s1", {}, [])
    with pytest.raises(JournalError, match="without leases"):
        cli.take(["s2"], 1)
    row = cli.next_due("ops", e1.time)  # no sink lease taken by the CLI
    assert row is not None
    assert row.event == e1
    assert a.next_due("ops", e1.time) == row


def test_a_daemon_needs_a_node_name(pg_url: str) -> None:
    """Leases are held by name: an empty one is refused before connecting."""
    with pytest.raises(JournalError, match="node_name"):
        PostgresStore.open(pg_url, [OPS], node_name="")


def test_the_store_reconnects_after_a_postgresql_restart(
    open_node: OpenNode, postgres_server: PostgresServer, logs: Logs
) -> None:
    """A crash-restart of PostgreSQL breaks the connection; the store opens a fresh one."""
    a = open_node("a")
    a.take(["s1"], 1)
    a.record("s1", {"n": 1}, [event("s1", 1)])

    postgres_server.restart()  # waits until it accepts connections again

    # The dead connection is noticed at BEGIN (nothing sent yet) and replaced.
    assert a.load_states() == {"s1": {"n": 1}}
    assert a.record("s1", {"n": 2}, [event("s1", 2)]) == [event("s1", 2)]
    assert a.renew() == {"s1"}
    names = [e["event"] for e in logs]
    assert names.count("journal.store_connection_lost") == 1
    assert names.count("journal.store_reconnected") == 1


def test_a_connection_lost_mid_record_fails_it_and_the_next_call_reconnects(
    open_node: OpenNode, sql: Sql
) -> None:
    """Killed inside a record's transaction: JournalError, nothing stored, then it works."""
    gate = Gate()
    a = open_node("a", sinks=[gate])
    a.take(["s1"], 1)
    failures: list[BaseException] = []

    def record() -> None:
        try:
            a.record("s1", {"n": 1}, [event("s1", 1)])
        except Exception as exc:  # noqa: BLE001  (handed to the test thread)
            failures.append(exc)

    recording = threading.Thread(target=record)
    recording.start()
    assert gate.entered.wait(30)
    killed = sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'sklm-watcher' "
        "AND state = 'idle in transaction'"
    )
    gate.open.set()
    recording.join(30)

    assert killed == [(True,)]
    (failure,) = failures
    assert type(failure) is JournalError
    assert "recording events of s1" in str(failure)
    assert sql("SELECT count(*) FROM events")[0][0] == 0
    assert a.record("s1", {"n": 2}, [event("s1", 1)]) == [event("s1", 1)]
    assert a.load_state("s1") == {"n": 2}


def test_open_store_picks_the_implementation(pg_url: str, tmp_path: Path) -> None:
    """No store_url: SQLite exactly as before (per mode); a store_url: PostgreSQL."""
    local = WatcherSettings(
        state_dir=tmp_path / "state", audit_log=tmp_path / "a.jsonl"
    )
    with open_store(local, [OPS]) as store:
        assert isinstance(store, SqliteStore)
        with pytest.raises(JournalError, match="in use by another sklm-watcher"):
            open_store(local, [OPS])  # daemon mode takes the state_dir lock
        with open_store(local, [OPS], mode="write") as writer:
            with pytest.raises(JournalError, match="without the state_dir lock"):
                writer.record("s1", {}, [])
            assert writer.requeue(all_dead=True) == 0
        with open_store(local, [OPS], mode="read") as reader:
            assert isinstance(reader, SqliteStore)
            with pytest.raises(JournalError, match="read-only"):
                reader.requeue(all_dead=True)
    cluster = WatcherSettings(store_url=Secret(pg_url), node_name="n1", lease=5.0)
    with open_store(cluster, [OPS]) as store:
        assert isinstance(store, PostgresStore)
        assert (store.node_name, store.lease_seconds, store.mode) == (
            "n1",
            5.0,
            "daemon",
        )
    with open_store(cluster, [OPS], mode="write") as store:
        assert isinstance(store, PostgresStore)
        assert store.mode == "write"


def test_without_the_driver_the_extra_is_named(pg_url: str) -> None:
    """A single-node install has no psycopg: a store_url says what to install."""
    code = f"""
import sys
sys.modules["psycopg"] = None  # import psycopg now fails, as without the extra
from watcher.config import Secret, WatcherSettings
from watcher.errors import JournalError
from watcher.store import check_store, open_store
settings = WatcherSettings(store_url=Secret({pg_url!r}), node_name="n1")
try:
    open_store(settings, [])
except JournalError as exc:
    print(exc)
print(check_store({pg_url!r}).state.value)
print("watcher.store.postgres.store" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    refused, state, imported = done.stdout.strip().splitlines()
    assert "pip install 'sklm-watcher[postgresql]'" in refused
    assert state == StoreState.NO_DRIVER.value
    assert imported == "False"
