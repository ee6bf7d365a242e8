"""SQLite-only tests: the event loop's connection never waits, the worker thread does.

A write lock held by another connection (as another process would hold it) sends the turn
to the worker thread, which waits for it while the loop keeps serving; WAL checkpoints run
in the worker too.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from testmesh_reconciler.store import FakeClock, SqliteStore
from testmesh_reconciler.store import sqlite as sqlite_store
from tests.store.test_store_contract import make_env


async def test_a_lock_held_elsewhere_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(path, busy_timeout_ms=10_000)
    await store.open()
    clock = FakeClock()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        env = make_env(clock)
        write = asyncio.create_task(store.insert_environment(env))
        ticks = 0
        for _ in range(20):  # the loop keeps turning while the write waits
            await asyncio.sleep(0.005)
            ticks += 1
        assert ticks == 20 and not write.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 10) is True
        assert await store.get_environment(env.id) == env
        assert await store.ping()
    finally:
        other.close()
        await store.close()


Checkpoint = Callable[[sqlite3.Connection, sqlite_store._Tx], None]


async def open_with_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               checkpoint: Checkpoint, *, every: int) -> SqliteStore:
    """An open store whose loop queues ``checkpoint`` after every ``every`` commits."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", every)
    monkeypatch.setattr(sqlite_store, "_wal_checkpoint", checkpoint)
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    return store


async def test_checkpoints_run_in_the_worker(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = sqlite_store._wal_checkpoint

    def checkpoint(conn: sqlite3.Connection, tx: sqlite_store._Tx) -> None:
        threads.append(threading.current_thread().name)
        real(conn, tx)

    store = await open_with_checkpoint(tmp_path, monkeypatch, checkpoint, every=2)
    clock = FakeClock()
    try:
        for i in range(4):  # four turns, four transactions on the loop's connection
            assert await store.insert_environment(make_env(clock, context=f"pr-{i}"))
            if i % 2:  # runs in the worker after the checkpoint queued before it
                await store.migrate()
        assert threads == ["store:store.sqlite3"] * 2
        assert threading.current_thread().name not in threads
    finally:
        await store.close()


async def test_jobs_of_one_turn_share_one_transaction(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    clock = FakeClock()
    groups: list[int] = []
    real = store._run

    def run(conn: sqlite3.Connection, jobs: list[sqlite_store._Job]) -> None:
        groups.append(len(jobs))
        real(conn, jobs)

    monkeypatch.setattr(store, "_run", run)
    try:
        # Quiet store: the first job of the turn runs at once, the other nine together.
        envs = [make_env(clock, context=f"pr-{i}") for i in range(10)]
        assert all(await asyncio.gather(*(store.insert_environment(e) for e in envs)))
        assert groups == [1, 9]
        # After a group, a burst is grouped whole; a lone job then waits for its turn's
        # end once (the last group was a burst), and runs at once after that.
        envs = [make_env(clock, context=f"pr-{i}") for i in range(10, 20)]
        assert all(await asyncio.gather(*(store.insert_environment(e) for e in envs)))
        assert not await store.insert_environment(make_env(clock, context="pr-0"))
        assert not await store.insert_environment(make_env(clock, context="pr-1"))
        assert groups == [1, 9, 10, 1, 1]
        assert [e.context for e in await store.environments_for_key(
            "default", "review", "pr-19")] == ["pr-19"]
    finally:
        await store.close()


async def test_another_loop_is_served_by_the_worker(tmp_path: Path) -> None:
    """A coroutine on another thread's loop never touches the opening loop's connection."""
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    clock = FakeClock()
    try:
        env = make_env(clock)
        stored = await asyncio.to_thread(asyncio.run, store.insert_environment(env))
        assert stored is True
        assert await store.get_environment(env.id) == env
    finally:
        await store.close()


async def test_a_failed_checkpoint_is_logged_and_the_next_one_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def checkpoint(conn: sqlite3.Connection, tx: sqlite_store._Tx) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")

    store = await open_with_checkpoint(tmp_path, monkeypatch, checkpoint, every=2)
    clock = FakeClock()
    try:
        with capture_logs() as logs:
            for i in range(4):
                assert await store.insert_environment(make_env(clock, context=f"pr-{i}"))
                await store.migrate()  # the worker has run the checkpoint queued before
        assert len(calls) == 2
        failed = [e for e in logs if e["event"] == "wal_checkpoint_failed"]
        assert len(failed) == 1 and failed[0]["log_level"] == "warning"
        assert failed[0]["error"] == "disk I/O error"
        assert failed[0]["path"] == f"{tmp_path / 'store.sqlite3'}-wal"
        assert "within 2 more commits" in failed[0]["hint"]
    finally:
        await store.close()


async def test_one_checkpoint_at_a_time(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow_checkpoint(conn: sqlite3.Connection, tx: sqlite_store._Tx) -> None:
        calls.append(1)
        release.wait(10)

    store = await open_with_checkpoint(tmp_path, monkeypatch, slow_checkpoint, every=1)
    clock = FakeClock()
    try:
        for i in range(5):  # five commits on the loop; the first checkpoint is still running
            assert await store.insert_environment(make_env(clock, context=f"pr-{i}"))
        release.set()
        await store.migrate()  # behind the checkpoint in the worker's queue
        assert calls == [1]
        assert await store.insert_environment(make_env(clock, context="after"))
        await store.migrate()
        assert calls == [1, 1]  # the next commit queued the next one
    finally:
        release.set()
        await store.close()


def _wal_frames(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def test_a_checkpoint_past_the_limit_starts_the_wal_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While writes go on, a passive checkpoint never leaves the WAL fully copied, so SQLite
    never starts it over and it grows for good. A reader holding an old snapshot stands in
    for those writes here: it pins the passive pass, then lets go while the restart waits."""
    monkeypatch.setattr(sqlite_store, "WAL_SIZE_LIMIT", 32 * 1024)  # 8 frames of 4 KiB
    path = tmp_path / "wal.sqlite3"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    writer, reader, checkpointer = connect(), connect(), connect()
    try:
        writer.execute("CREATE TABLE t (x TEXT)")
        writer.executemany("INSERT INTO t VALUES (?)", [("a" * 3000,)] * 10)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM t").fetchone() == (10,)  # pins it here
        writer.executemany("INSERT INTO t VALUES (?)", [("b" * 3000,)] * 10)
        threading.Timer(0.2, reader.commit).start()  # lets go while the restart waits
        sqlite_store._wal_checkpoint(checkpointer, sqlite_store._Tx())
        writer.execute("INSERT INTO t VALUES ('c')")
        assert _wal_frames(checkpointer) <= 2  # the last write started the WAL over
        assert writer.execute("SELECT COUNT(*) FROM t").fetchone() == (21,)
    finally:
        for conn in (writer, reader, checkpointer):
            conn.close()


async def test_a_wal_past_its_size_limit_asks_for_a_checkpoint_and_is_cut_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 64 * 1024
    monkeypatch.setattr(sqlite_store, "WAL_SIZE_LIMIT", limit)
    monkeypatch.setattr(sqlite_store, "WAL_SIZE_EVERY", 4)
    calls: list[int] = []
    real = sqlite_store._wal_checkpoint

    def checkpoint(conn: sqlite3.Connection, tx: sqlite_store._Tx) -> None:
        calls.append(1)
        real(conn, tx)

    store = await open_with_checkpoint(tmp_path, monkeypatch, checkpoint, every=10**9)
    clock = FakeClock()
    wal = tmp_path / "store.sqlite3-wal"
    sizes: list[int] = []
    try:
        for i in range(64):
            assert await store.insert_environment(make_env(clock, context=f"pr-{i:02}" * 40))
            await store.migrate()  # the worker has run the checkpoint asked for, if any
            sizes.append(wal.stat().st_size)
        assert len(calls) >= 2, "no checkpoint was asked for"
        # Cut back to the limit at least once every WAL_SIZE_EVERY commits (it grows by a
        # few pages per commit in between).
        cuts = [i for i, size in enumerate(sizes) if size <= limit]
        assert cuts and cuts[0] < 8, sizes
        assert all(b - a <= 4 for a, b in zip(cuts, [*cuts[1:], len(sizes)], strict=True)), sizes
        assert len(await store.list_environments()) == 64
    finally:
        await store.close()
