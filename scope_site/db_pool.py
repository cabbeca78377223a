"""A request's database connection handed back to the pool before a wait that needs no database."""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections


def db_connection_release() -> None:
    """Return this request's connection to the pool before a long wait (a provider call).

    Django gives a pooled connection back only when the request ends. In a gevent worker
    (SCOPE_DB_POOL_SIZE) one request waiting on a model for seconds would keep one of the pool's few
    connections from every other request of the worker all that time; the next query takes one
    from the pool again. Without a pool (persistent connections, one per thread) and inside a
    transaction this does nothing.
    """
    db = connections[DEFAULT_DB_ALIAS]
    # the pool itself, not SCOPE_DB_POOL_SIZE: only PostgreSQL's backend has one
    if getattr(db, "pool", None) is not None and db.connection is not None and not db.in_atomic_block:
        db.close()
