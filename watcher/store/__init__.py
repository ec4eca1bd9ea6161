"""The storage boundary: the :class:`~watcher.store.base.Store` protocol and its implementations.

``base`` holds the protocol and the values it speaks in (outbox rows, silences,
summaries); ``sqlite/`` is the SQLite implementation (the only one today; the
PostgreSQL store will be the second). The daemon, dispatcher, views and CLI know
only the protocol, except where they open a store.
"""
