"""Fixtures for the PostgreSQL store tests: nodes on one fresh database, raw SQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.clock import VirtualClock
from watcher.config import SinkConfig
from watcher.events import Event, EventType
from watcher.store.postgres import PostgresStore

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
OPS = SinkConfig(name="ops", type="webhook")
#: Longest a test waits for another connection to reach a lock wait (a condition
#: polled for, not a sleep whose length decides the outcome).
LOCK_WAIT_DEADLINE = 20.0

OpenNode = Callable[..., PostgresStore]


def event(server: str, n: int, type: EventType = EventType.RESTORE_PHASE) -> Event:
    """The n-th deterministic event of ``server``, at T0 + n seconds."""
    return Event.create(
        type,
        server,
        T0 + timedelta(seconds=n),
        {"restore_id": f"r-{server}", "phase": f"P{n}", "inferred": False},
        key=(str(n),),
    )


@pytest.fixture
def clock() -> VirtualClock:
    """The stores' clock (for instants callers leave out; leases use PostgreSQL's)."""
    return VirtualClock.auto(T0)


@pytest.fixture
def open_node(pg_url: str, clock: VirtualClock) -> Iterator[OpenNode]:
    """``open_node(name, sinks=(OPS,), lease_seconds=30)``: a node on the test's database."""
    opened: list[PostgresStore] = []

    def open_one(
        name: str,
        sinks: Sequence[SinkConfig] = (OPS,),
        *,
        lease_seconds: float = 30,
        mode: str = "daemon",
    ) -> PostgresStore:
        store = PostgresStore.open(
            pg_url,
            sinks,
            mode=mode,  # type: ignore[arg-type]
            node_name=name,
            lease_seconds=lease_seconds,
            clock=clock,
        )
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def sql(pg_url: str) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """``sql(statement, *params)``: run one statement on its own connection (autocommit)."""
    conn = psycopg.connect(pg_url, autocommit=True)

    def run(statement: str, *params: Any) -> list[tuple[Any, ...]]:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []

    yield run
    conn.close()


class Gate:
    """A sink whose ``wants`` blocks until opened: holds a record in its transaction.

    ``wants`` runs inside :meth:`PostgresStore.record`'s transaction, after the
    fencing check, so a test can act while the record is in flight.
    """

    name = "gate"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()

    def wants(self, event_type: str, server: str) -> bool:
        """Say it is in the transaction, then wait to be let through."""
        self.entered.set()
        if not self.open.wait(30):
            raise AssertionError("the gate was never opened")
        return True


def expire(sql: Callable[..., Any], table: str = "leases") -> None:
    """Let every lease in ``table`` run out: PostgreSQL's clock decides expiry."""
    assert table in ("leases", "sink_leases")
    sql(f"UPDATE {table} SET expires_at = now() - interval '1 second'")  # noqa: S608


def wait_for_lock_wait(sql: Callable[..., list[tuple[Any, ...]]]) -> None:
    """Return once another connection of this database waits on a row lock."""
    deadline = time.monotonic() + LOCK_WAIT_DEADLINE
    while time.monotonic() < deadline:
        rows = sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if rows[0][0] > 0:
            return
        time.sleep(0.01)
    raise AssertionError("no connection reached the lock wait")
