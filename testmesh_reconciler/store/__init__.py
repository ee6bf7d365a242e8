"""The runtime store: deliveries, runs, the commit-status outbox, environments, replicas.

``Store`` (base.py) is the one interface; ``SqliteStore`` implements it on a file in the
data dir; ``create_store`` picks the implementation from ``--database-url``.
"""

from __future__ import annotations

from pathlib import Path

from testmesh_reconciler.store.base import OutboxFor, Store, StoreError
from testmesh_reconciler.store.clock import Clock, FakeClock, SystemClock
from testmesh_reconciler.store.records import (
    INTERRUPTED_ERROR,
    Delivery,
    DeliveryId,
    EnvironmentId,
    EnvironmentInstance,
    OutboxEntry,
    OutboxId,
    OutboxStats,
    RecordResult,
    RecoveryResult,
    ReplicaInfo,
    Run,
    RunId,
    new_id,
)
from testmesh_reconciler.store.sqlite import SqliteStore

SQLITE_FILE = "testmesh.sqlite3"


def create_store(database_url: str | None, *, data_dir: Path) -> Store:
    """The store for ``--database-url``: unset = SQLite in the data dir, ``sqlite:///path``."""
    if not database_url:
        return SqliteStore(data_dir / SQLITE_FILE)
    if database_url.startswith("sqlite:///"):
        return SqliteStore(Path(database_url.removeprefix("sqlite:///")))
    if database_url.startswith(("postgres://", "postgresql://")):
        from testmesh_reconciler.store.postgres import PostgresStore  # psycopg only when used

        return PostgresStore(database_url)
    raise StoreError(f"unsupported --database-url scheme: {database_url.split(':', 1)[0]!r}")


__all__ = [
    "INTERRUPTED_ERROR",
    "SQLITE_FILE",
    "Clock",
    "Delivery",
    "DeliveryId",
    "EnvironmentId",
    "EnvironmentInstance",
    "FakeClock",
    "OutboxEntry",
    "OutboxFor",
    "OutboxId",
    "OutboxStats",
    "RecordResult",
    "RecoveryResult",
    "ReplicaInfo",
    "Run",
    "RunId",
    "SqliteStore",
    "Store",
    "StoreError",
    "SystemClock",
    "create_store",
    "new_id",
]
