"""The PostgreSQL store: :class:`PostgresStore`, shared by the nodes of a cluster.

``store`` (the class: connection, transactions, reconnection, the lease epochs it
holds), ``schema`` (DDL, migrations under an advisory lock, connections, error
translation, ``check_store``), ``events`` (a fenced transition: events, outbox rows,
state and audit chain in one transaction; history), ``outbox`` (claims under sink
leases, results, backlog), ``leases`` (server leases, nodes) and ``silences``. Only
this package imports :mod:`psycopg`; :func:`watcher.store.open_store` imports it
lazily, so a single-node install needs no driver.
"""

from watcher.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
