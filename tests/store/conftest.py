"""Fixtures for the store contract suite: one ``store`` per backend, plus a re-opener.

To run the suite against another backend (PostgreSQL), add its name to ``BACKENDS`` and a
branch to ``_build`` and ``store_source``; every contract test then runs on it too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from testmesh_reconciler.store import FakeClock, SqliteStore, Store

BACKENDS = ["sqlite"]

MakeStore = Callable[[], Awaitable[Store]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _build(backend: str, tmp_path: Path) -> Store:
    if backend == "sqlite":
        return SqliteStore(tmp_path / "store.sqlite3")
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture
async def make_store(backend: str, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Opens a store on the same database each time (for reopen/durability tests)."""
    opened: list[Store] = []

    async def factory() -> Store:
        store = _build(backend, tmp_path)
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
def store_source(backend: str, tmp_path: Path) -> str:
    """Python source of an expression building the same store, for a child process."""
    if backend == "sqlite":
        return f"SqliteStore({str(tmp_path / 'store.sqlite3')!r})"
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
