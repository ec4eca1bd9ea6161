"""The SQLite store: :class:`SqliteStore`, its SQL split by concern.

``store`` (the class: connection, transactions, locks, audit writer), ``schema``
(DDL, migrations, connections, the lock file, time encoding), ``events`` (a
transition's events, outbox rows and state in one transaction; history), ``outbox``
(claims and results, backlog, pruning) and ``silences``. Only this package imports
:mod:`sqlite3`.
"""

from watcher.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
