"""The storage boundary: the :class:`~watcher.store.base.Store` protocol and its implementations.

``base`` holds the protocol and the values it speaks in (outbox rows, silences,
summaries, leases); ``sqlite/`` is the embedded SQLite implementation (one node,
``state_dir``), ``postgres/`` the store shared by the nodes of a cluster
(``store_url``). The daemon, dispatcher, views and CLI know only the protocol and
open a store through :func:`open_store`, which picks the implementation from the
settings. psycopg is imported only when a ``store_url`` is set, so a single-node
install needs no driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from watcher.clock import Clock
from watcher.config import Secret, SinkConfig, WatcherSettings
from watcher.errors import JournalError

if TYPE_CHECKING:
    from watcher.store.base import Store

#: What to install for a PostgreSQL store (named by every "no driver" message).
DRIVER_HINT = "install the PostgreSQL driver: pip install 'sklm-watcher[postgresql]'"


def open_store(
    settings: WatcherSettings,
    sinks: Sequence[SinkConfig],
    *,
    mode: Literal["daemon", "read", "write"] = "daemon",
    clock: Clock | None = None,
) -> Store:
    """Open the store the settings name: SQLite in ``state_dir``, or PostgreSQL.

    Args:
        settings: ``[watcher]``: ``store_url`` None keeps SQLite (exactly as before);
            else a :class:`~watcher.store.postgres.PostgresStore` for node
            ``node_name`` with leases of ``lease`` seconds.
        sinks: The configured sinks (one outbox row per sink that wants an event).
        mode: ``daemon`` (SQLite: the lock and the audit log; PostgreSQL: leases
            and fenced writes), ``read`` (the views: read-only), ``write`` (CLI
            changes while a daemon runs: no lock / no leases, no record).
        clock: The store's clock for instants a caller leaves out.

    Raises:
        JournalError: The store cannot be opened (see each implementation), or a
            ``store_url`` is set and psycopg is not installed.
    """
    if settings.store_url is None:
        from watcher.store.sqlite import SqliteStore

        return SqliteStore.open(
            settings.state_dir,
            settings.audit_log,
            sinks,
            read_only=mode == "read",
            lock=mode == "daemon",
            clock=clock,
        )
    _require_driver()
    from watcher.store.postgres import PostgresStore

    return PostgresStore.open(
        settings.store_url.reveal(),
        sinks,
        mode=mode,
        node_name=settings.node_name,
        lease_seconds=settings.lease,
        clock=clock,
    )


class StoreState(StrEnum):
    """What ``check-config`` found at a ``store_url``."""

    #: The schema is this release's.
    CURRENT = "current"
    #: An empty database: ``run`` creates the schema.
    WILL_BE_CREATED = "will be created"
    #: An older schema: ``run`` migrates it (once, by one node).
    WILL_BE_MIGRATED = "will be migrated"
    #: A newer schema than this release understands: refused.
    TOO_NEW = "too new"
    #: An older schema this release has no migration from: refused.
    TOO_OLD = "too old to migrate"
    #: The database holds other tables: not ours.
    FOREIGN = "not an sklm-watcher store"
    #: No connection (the detail says why).
    UNREACHABLE = "unreachable"
    #: psycopg is not installed.
    NO_DRIVER = "no driver"


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """The answer of :func:`check_store`: can ``run`` use this store, and what it finds."""

    #: ``host:port/dbname`` (never the password).
    where: str
    state: StoreState
    #: The schema version found (None: none, or not reachable).
    version: int | None
    #: What is wrong or what will happen, in words (no secret).
    detail: str

    @property
    def ok(self) -> bool:
        """Whether ``run`` can start on this store (current, or it creates/migrates it)."""
        return self.state in (
            StoreState.CURRENT,
            StoreState.WILL_BE_CREATED,
            StoreState.WILL_BE_MIGRATED,
        )

    def summary(self) -> str:
        """One line for ``check-config``: ``store 127.0.0.1:5432/watcher: current (v1)``."""
        version = "" if self.version is None else f" (schema version {self.version})"
        return f"store {self.where}: {self.state.value}{version}; {self.detail}"


def check_store(url: Secret | str) -> StoreCheck:
    """Connect to a PostgreSQL store and say whether ``run`` can use it (``check-config``).

    Reads only: creates nothing, migrates nothing. Never raises for a store
    problem; the answer names it (without the URL's password).
    """
    text = url.reveal() if isinstance(url, Secret) else url
    try:
        _require_driver()
    except JournalError as exc:
        return StoreCheck("the PostgreSQL store", StoreState.NO_DRIVER, None, str(exc))
    from watcher.store.postgres import schema

    return schema.check_store(text)


def _require_driver() -> None:
    """Import the PostgreSQL store, or raise a JournalError naming the extra to install."""
    try:
        import watcher.store.postgres  # noqa: F401  (imports psycopg)
    except ImportError as exc:
        if not (exc.name or "").startswith("psycopg"):
            raise
        raise JournalError(
            "store_url names a PostgreSQL store but its driver (psycopg) is not "
            "installed",
            hint=DRIVER_HINT,
        ) from exc
