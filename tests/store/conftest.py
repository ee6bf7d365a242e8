"""Fixtures for the store contract suite: one ``store`` per backend, plus a re-opener.

Every contract test runs on SQLite and on PostgreSQL (a fresh database per test on the
session's throwaway cluster from ``tests/pg.py``); ``BACKENDS`` lists them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from testmesh_reconciler.store import FakeClock, SqliteStore, Store
from testmesh_reconciler.store.postgres import PostgresStore
from tests.pg import pg_cluster, pg_dsn

__all__ = ["BACKENDS", "MakeStore", "pg_cluster", "pg_dsn"]  # fixtures for this directory

#: ``sqlite-thread``: the SQLite store with every job in its worker thread (``in_loop=False``).
BACKENDS = ["sqlite", "sqlite-thread", pytest.param("postgres", marks=pytest.mark.postgres)]

MakeStore = Callable[[], Awaitable[Store]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where the backend keeps this test's data: a SQLite file, or a fresh PostgreSQL DSN."""
    if backend.startswith("sqlite"):
        return str(tmp_path / "store.sqlite3")
    if backend == "postgres":
        return str(request.getfixturevalue("pg_dsn"))
    raise AssertionError(f"unknown backend {backend}")


def _build(backend: str, database: str) -> Store:
    if backend == "sqlite":
        return SqliteStore(database)
    if backend == "sqlite-thread":
        return SqliteStore(database, in_loop=False)
    if backend == "postgres":
        return PostgresStore(database, max_size=4)
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture
async def make_store(backend: str, database: str) -> AsyncIterator[MakeStore]:
    """Opens a store on the same database each time (for reopen/durability tests)."""
    opened: list[Store] = []

    async def factory() -> Store:
        store = _build(backend, database)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()


@pytest.fixture
def store_source(backend: str, database: str) -> str:
    """Python source of an expression building the same store, for a child process."""
    if backend == "sqlite":
        return f"SqliteStore({database!r})"
    if backend == "sqlite-thread":
        return f"SqliteStore({database!r}, in_loop=False)"
    if backend == "postgres":
        return f"PostgresStore({database!r})"
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
