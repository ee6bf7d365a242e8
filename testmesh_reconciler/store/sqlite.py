"""The SQLite runtime store, with group commit.

Async methods queue a job; at the end of the next turn of the event loop, every job queued
in the two turns runs in one transaction and each caller is answered only after the commit
(should a job fail, the others are replayed without it). Under load a commit so carries
twice the jobs: a commit's WAL write is most of a small group's cost (+18% webhook
deliveries per second in ``benchmarks/bench_webhooks.py``); a quiet store runs a lone job
at once instead. The jobs run on the loop's own connection: a
write on a local SQLite file in WAL mode costs microseconds, less than handing it to a
thread and taking the GIL back (on one core, each hand-off is a wait behind the other
thread). A worker thread with its own connection runs what may block: migrations, WAL
checkpoints, and any turn whose lock another process holds (the loop's connection never
waits for a lock). Migrations are numbered SQL files in ``migrations/sqlite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from testmesh_reconciler.log import get_logger
from testmesh_reconciler.store import tables
from testmesh_reconciler.store.base import OutboxFor, StoreError
from testmesh_reconciler.store.records import (
    FINAL_RUN_STATUSES,
    INTERRUPTED_ERROR,
    REUSABLE_ENV_STATES,
    RUN_STATUSES,
    Delivery,
    EnvironmentId,
    EnvironmentInstance,
    EnvironmentState,
    GiveUp,
    OutboxEntry,
    OutboxId,
    OutboxStats,
    RecordResult,
    RecoveryResult,
    ReplicaInfo,
    Run,
    RunId,
)
from testmesh_reconciler.store.tables import (
    Kind,
    Table,
    json_dumps,
    page_sql,
    run_values,
    strip_report,
    update_sql,
    with_reports,
)

T = TypeVar("T")
R = TypeVar("R")

MIGRATIONS_DIR = Path(__file__).parent / "migrations" / "sqlite"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


# -- value codecs -----------------------------------------------------------------------


def to_us(value: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are refused (all times are UTC-aware)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC times")
    return (value - _EPOCH) // _ONE_US


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _encode(kind: Kind, value: Any) -> Any:
    if kind == "v":
        return value
    if kind == "ts":
        return None if value is None else to_us(value)
    if kind == "bool":
        return 1 if value else 0
    if kind == "optjson" and value is None:
        return None
    return json_dumps(value)  # json, and both tuple kinds as a JSON array


def _decode(kind: Kind, value: Any) -> Any:
    if kind == "v" or value is None:
        return value
    if kind == "ts":
        return from_us(value)
    if kind == "bool":
        return bool(value)
    if kind in ("array", "jsontuple"):
        return tuple(json.loads(value))
    return json.loads(value)


DELIVERIES = Table(tables.DELIVERIES, "?", _encode, _decode)
RUNS = Table(tables.RUNS, "?", _encode, _decode)
OUTBOX = Table(tables.OUTBOX, "?", _encode, _decode)
ENVIRONMENTS = Table(tables.ENVIRONMENTS, "?", _encode, _decode)


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit on its own)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.strip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise StoreError(f"migration ends inside a statement: {buffer.strip()[:80]!r}")
    return statements


def migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration file, in version order."""
    found: list[tuple[int, str, str]] = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path.read_text("utf-8")))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"duplicate migration versions in {directory}")
    return found


log = get_logger("testmesh.store.sqlite")

# -- the worker -------------------------------------------------------------------------

Mode = Literal["read", "write", "own"]


class _Tx:
    """Scratch state shared by the jobs of one transaction (a cached pending-run count)."""

    __slots__ = ("queued",)

    def __init__(self) -> None:
        self.queued: int | None = None

    def pending(self, conn: sqlite3.Connection) -> int:
        if self.queued is None:
            row = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'pending'").fetchone()
            self.queued = int(row[0])
        return self.queued


Work = Callable[[sqlite3.Connection, _Tx], Any]


@dataclass(slots=True)
class _Job:
    work: Work
    mode: Mode
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Stop:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


Outcome = tuple[asyncio.Future[Any], bool, Any]

#: In-loop transactions between two WAL checkpoints (run by the worker thread, PASSIVE:
#: they never block the loop's writes).
CHECKPOINT_EVERY = 500
#: WAL bytes past which a checkpoint also starts the WAL over (``_wal_checkpoint``), the
#: loop asks for one early (it looks every ``WAL_SIZE_EVERY`` commits, a ``stat``), and to
#: which the file is cut back once it starts over (``journal_size_limit``; SQLite keeps it
#: all). Under steady writes a PASSIVE checkpoint never leaves the WAL fully copied, and
#: SQLite starts it over only after one has: the file grew without bound, 770 MiB after
#: 47,000 webhook deliveries, and every read and write slowed down with it.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
WAL_SIZE_EVERY = 64
#: Bytes of the WAL file's header and of each frame's header (SQLite's file format).
_WAL_HEADER, _FRAME_HEADER = 32, 24


class _Busy(Exception):
    """The loop's connection found the database locked by another process: nothing of the
    turn was committed, and the worker thread runs it again, waiting for the lock."""


def _settle(outcomes: list[Outcome]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller gave up waiting; the work is committed regardless
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _post(loop: asyncio.AbstractEventLoop, outcomes: list[Outcome]) -> None:
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
        loop.call_soon_threadsafe(_settle, outcomes)


class SqliteStore:
    """The ``Store`` on a SQLite file (WAL, ``synchronous=NORMAL``, foreign keys on).

    ``synchronous=NORMAL`` in WAL mode survives a killed process; ``"FULL"`` also survives
    a power cut at some cost in commit latency. ``max_batch`` caps jobs per transaction.
    ``in_loop=False`` runs every job in the worker thread instead (see the module doc).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        max_batch: int = 1000,
        in_loop: bool = True,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[list[_Job] | _Stop] = queue.SimpleQueue()
        self._pending: list[_Job] = []  # jobs of this group (two turns), not handed over yet
        self._thread: threading.Thread | None = None
        self._closing = False
        self._in_loop = in_loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that opened it
        self._loop_conn: sqlite3.Connection | None = None  # that loop's connection
        self._loop_commits = 0
        self._checkpointing = False  # a WAL checkpoint is queued or running in the worker
        #: Jobs in the last group, and whether this turn already ran one at once (a job
        #: runs at once only on a quiet store: bursts are served better by group commit).
        self._last_group = 0
        self._turn_used = False

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Start the worker thread, connect, and apply pending migrations."""
        if self._thread is not None:
            raise StoreError("the store is already open")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._closing = False
        self._loop = loop
        self._thread = threading.Thread(
            target=self._worker, args=(loop, ready), name=f"store:{self.path.name}", daemon=True
        )
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        try:
            await self.migrate()
            if self._in_loop:
                # busy_timeout 0: a lock held elsewhere sends the turn to the worker thread;
                # checkpoints are the worker's too, so no commit here ever waits on a fsync.
                self._loop_conn = self._connect(busy_timeout_ms=0, autocheckpoint=False)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Commit every job already handed over, then close the connection."""
        thread = self._thread
        if thread is None or self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._hand_over()  # jobs of this turn first: the worker stops after them
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        self._queue.put(_Stop(loop, done))
        await done
        thread.join()
        self._thread = None

    async def ping(self) -> bool:
        try:
            return bool(await self._call(_ping, "read"))
        except (StoreError, sqlite3.Error):
            return False

    async def migrate(self) -> list[int]:
        return await self._call(_migrate, "own")

    async def _call(self, work: Callable[[sqlite3.Connection, _Tx], T], mode: Mode) -> T:
        if self._thread is None or self._closing:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(work, mode, loop, future)
        if loop is not self._loop:  # another loop (another thread): the worker serializes
            self._queue.put([job])
            return await future
        self._pending.append(job)
        if len(self._pending) == 1:
            if not self._turn_used and self._last_group <= 1 and mode != "own" \
                    and self._loop_conn is not None:
                # A quiet store (its last group was one job) runs the first job of a turn
                # at once instead of at the turn's end: two loop iterations less, long ones
                # when the loop is busy with IO. The rest of the turn is grouped as usual.
                self._turn_used = True
                loop.call_soon(self._new_turn)
                self._hand_over()
            else:  # at the end of the next turn: its jobs join this group
                loop.call_soon(loop.call_soon, self._hand_over)
        return await future

    def _new_turn(self) -> None:
        self._turn_used = False

    def _hand_over(self) -> None:
        """Run every job of the group (two turns of the event loop) at once: here, on the loop's
        connection, or in the worker (``own`` jobs, a lock held elsewhere, ``in_loop``
        off), handed over at once so that it runs while the loop waits for IO."""
        jobs, self._pending = self._pending, []
        if not jobs:
            return
        self._last_group = len(jobs)
        conn = self._loop_conn
        if conn is None or any(job.mode == "own" for job in jobs):
            self._queue.put(jobs)
            return
        for start in range(0, len(jobs), self._max_batch):
            chunk = jobs[start:start + self._max_batch]
            try:
                self._run(conn, chunk)
            except _Busy:
                self._queue.put(jobs[start:])
                return
            except Exception as exc:  # a bug here must not leave callers waiting
                error = StoreError(f"store failed: {exc!r}")
                _settle([(job.future, False, error) for job in chunk])
                continue
            self._loop_commits += 1
            if self._loop_commits % CHECKPOINT_EVERY == 0 or (
                    self._loop_commits % WAL_SIZE_EVERY == 0 and self._wal_too_big()):
                self._checkpoint(chunk[0].loop)

    def _wal_too_big(self) -> bool:
        """Whether the WAL file has grown past ``WAL_SIZE_LIMIT`` (large groups fill it in
        fewer than ``CHECKPOINT_EVERY`` commits)."""
        try:
            return os.stat(f"{self.path}-wal").st_size > WAL_SIZE_LIMIT
        except OSError:
            return False

    def _checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        """Copy the WAL back into the database in the worker (PASSIVE: never blocks).

        One at a time: while the worker is still copying (or waiting behind a lock held
        elsewhere), another would only compete with the loop for the CPU."""
        if self._checkpointing:
            return
        self._checkpointing = True
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(self._checkpoint_done)
        self._queue.put([_Job(_wal_checkpoint, "own", loop, future)])

    def _checkpoint_done(self, future: asyncio.Future[Any]) -> None:
        self._checkpointing = False
        error = None if future.cancelled() else future.exception()
        if error is not None:  # the WAL only grows until one succeeds: say so
            log.warning("wal_checkpoint_failed", path=f"{self.path}-wal", error=str(error),
                        hint=f"the file grows until a checkpoint succeeds; the next try "
                             f"comes within {CHECKPOINT_EVERY} more commits")

    def _connect(self, *, busy_timeout_ms: int | None = None,
                 autocheckpoint: bool = True) -> sqlite3.Connection:
        busy = self._busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=busy / 1000,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            cached_statements=256,
            check_same_thread=False,  # the loop's: opened in open(), used by the loop only
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout = {int(busy)}")
            conn.execute("PRAGMA foreign_keys = ON")
            # 32 MiB of page cache (default 2 MiB): a busy store's hot index pages stay in it.
            conn.execute("PRAGMA cache_size = -32768")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            if not autocheckpoint:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            conn.close()
            raise
        return conn

    def _worker(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:
            _post(loop, [(ready, False, StoreError(f"cannot open {self.path}: {exc}"))])
            return
        _post(loop, [(ready, True, None)])
        stop: _Stop | None = None
        try:
            while stop is None:
                item = self._queue.get()
                batch: list[_Job] = []
                while True:
                    if isinstance(item, _Stop):
                        stop = item
                        break
                    batch.extend(item)
                    if len(batch) >= self._max_batch:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                for start in range(0, len(batch), self._max_batch):
                    chunk = batch[start:start + self._max_batch]
                    try:
                        self._run(conn, chunk)
                    except Exception as exc:  # a bug here must not leave callers waiting
                        error = StoreError(f"store worker failed: {exc!r}")
                        for job in chunk:
                            _post(job.loop, [(job.future, False, error)])
        finally:
            conn.close()
            if stop is not None:
                _post(stop.loop, [(stop.future, True, None)])

    def _run(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        """Run consecutive read/write jobs as one group commit; ``own`` jobs alone."""
        group: list[_Job] = []
        for job in batch:
            if job.mode == "own":
                self._group(conn, group)
                group = []
                self._group(conn, [job], own=True)
            else:
                group.append(job)
        self._group(conn, group)

    def _group(self, conn: sqlite3.Connection, jobs: list[_Job], *, own: bool = False) -> None:
        if not jobs:
            return
        tx = _Tx()
        results: list[tuple[_Job, bool, Any]] = []
        if own:
            for job in jobs:
                try:
                    results.append((job, True, job.work(conn, tx)))
                except Exception as exc:
                    if conn.in_transaction:
                        conn.rollback()
                    results.append((job, False, exc))
        else:
            # Reads alone share one snapshot (BEGIN); any write takes the lock up front.
            reads_only = all(job.mode == "read" for job in jobs)
            results = self._transaction(
                conn, jobs, tx, "BEGIN" if reads_only else "BEGIN IMMEDIATE"
            )
        if conn is self._loop_conn:  # on the loop's thread: answer directly
            _settle([(job.future, ok, value) for job, ok, value in results])
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for job, ok, value in results:
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, outcomes in by_loop.items():
            _post(loop, outcomes)

    def _transaction(
        self, conn: sqlite3.Connection, jobs: list[_Job], tx: _Tx, begin: str
    ) -> list[tuple[_Job, bool, Any]]:
        """All ``jobs`` in one transaction; commit once, then answer.

        Optimistic: the jobs run back to back; should one fail, the whole transaction is
        rolled back and replayed with each job in its own savepoint, so that the failing job
        is the only one undone. (A savepoint per job costs statements and a copy of every
        page a job touches again: on the webhook path, a third of the store's time.)
        """
        if begin == "BEGIN":  # reads only: nothing to undo, a failing read is its own answer
            return self._attempt(conn, jobs, tx, begin, savepoints=False) or []
        results = self._attempt(conn, jobs, tx, begin, savepoints=False, replay=True)
        if results is None:
            results = self._attempt(conn, jobs, _Tx(), begin, savepoints=True) or []
        return results

    def _attempt(
        self,
        conn: sqlite3.Connection,
        jobs: list[_Job],
        tx: _Tx,
        begin: str,
        *,
        savepoints: bool,
        replay: bool = False,
    ) -> list[tuple[_Job, bool, Any]] | None:
        """Run ``jobs`` in one transaction and commit. With ``replay``, the first failing
        job rolls everything back and the answer is ``None`` (run them again)."""
        results: list[tuple[_Job, bool, Any]] = []
        try:
            conn.execute(begin)
            for job in jobs:
                if savepoints:
                    conn.execute("SAVEPOINT job")
                try:
                    value = job.work(conn, tx)
                except Exception as exc:
                    if replay:
                        conn.execute("ROLLBACK")
                        return None
                    if savepoints:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    tx.queued = None
                    results.append((job, False, exc))
                else:
                    if savepoints:
                        conn.execute("RELEASE job")
                    results.append((job, True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if conn is self._loop_conn and _is_busy(exc):
                raise _Busy from exc
            error = StoreError(f"transaction failed: {exc}")
            error.__cause__ = exc
            return [(job, False, error) for job in jobs]
        return results

    # -- deliveries ---------------------------------------------------------------------

    async def record_delivery(
        self,
        delivery: Delivery,
        runs: Sequence[Run],
        *,
        dedup_window_start: datetime,
        max_queued: int,
    ) -> RecordResult:
        work = partial(
            _record_delivery, delivery, tuple(runs), to_us(dedup_window_start), max_queued
        )
        return await self._call(work, "write")

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        return await self._call(partial(_get, DELIVERIES, delivery_id), "read")

    async def list_deliveries(
        self,
        *,
        source: str | None = None,
        repo: str | None = None,
        outcome: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Delivery]:
        filters = (("source", source), ("repo", repo), ("outcome", outcome))
        sql, params = page_sql(DELIVERIES, "received_at", filters, before, limit)
        return await self._call(partial(_select, DELIVERIES, sql, params), "read")

    # -- runs ---------------------------------------------------------------------------

    async def enqueue_run(self, run: Run, *, max_queued: int) -> bool:
        return await self._call(partial(_enqueue_run, run, max_queued), "write")

    async def claim_run(self, replica: str, now: datetime, lease_seconds: float) -> Run | None:
        work = partial(_claim_run, replica, to_us(now), _lease_us(now, lease_seconds))
        return await self._call(work, "write")

    async def heartbeat(
        self, replica: str, run_ids: Sequence[RunId], now: datetime, lease_seconds: float
    ) -> list[RunId]:
        if not run_ids:
            return []
        work = partial(_heartbeat, replica, tuple(run_ids), _lease_us(now, lease_seconds))
        return await self._call(work, "write")

    async def mark_started(self, run_id: RunId, now: datetime) -> None:
        sql = "UPDATE runs SET started = 1, started_at = COALESCE(started_at, ?) WHERE id = ?"
        await self._call(partial(_execute, sql, (to_us(now), run_id)), "write")

    async def save_progress(self, run: Run) -> bool:
        return await self._call(partial(_save_progress, run), "write")

    async def finish_run(self, run: Run, outbox: Sequence[OutboxEntry] = ()) -> bool:
        if run.status not in FINAL_RUN_STATUSES:
            raise ValueError(f"finish_run needs a final status, not {run.status!r}")
        return await self._call(partial(_finish_run, run, tuple(outbox)), "write")

    async def add_outbox(self, entries: Sequence[OutboxEntry]) -> None:
        if entries:
            await self._call(partial(_insert_many, OUTBOX, tuple(entries)), "write")

    async def get_run(self, run_id: str) -> Run | None:
        return await self._call(partial(_get_run, run_id), "read")

    async def list_runs(
        self,
        *,
        workspace: str | None = None,
        suite: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Run]:
        filters = (("workspace", workspace), ("suite", suite), ("status", status))
        sql, params = page_sql(RUNS, "queued_at", filters, before, limit)
        return await self._call(partial(_select_runs, sql, params), "read")

    async def count_runs_by_status(self) -> dict[str, int]:
        return await self._call(_count_runs_by_status, "read")

    async def recover_expired(
        self, now: datetime, *, replica: str | None = None, outbox_for: OutboxFor | None = None
    ) -> RecoveryResult:
        return await self._call(partial(_recover_expired, now, replica, outbox_for), "write")

    # -- outbox -------------------------------------------------------------------------

    async def due_statuses(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        return await self._call(partial(_select, OUTBOX, _DUE_SQL, [to_us(now), limit]), "read")

    async def mark_sent(self, entry_id: OutboxId, now: datetime, outcome: str = "sent") -> None:
        if outcome not in ("sent", "skipped"):
            raise ValueError(f"mark_sent outcome must be 'sent' or 'skipped', not {outcome!r}")
        bump = 1 if outcome == "sent" else 0
        sql = (
            "UPDATE outbox SET outcome = ?, finished_at = ?, attempts = attempts + ? "
            "WHERE id = ? AND outcome = 'queued'"
        )
        await self._call(partial(_execute, sql, (outcome, to_us(now), bump, entry_id)), "write")

    async def reschedule(
        self, entry_id: OutboxId, next_attempt_at: datetime, attempts: int, last_error: str
    ) -> None:
        sql = (
            "UPDATE outbox SET next_attempt_at = ?, attempts = ?, last_error = ? "
            "WHERE id = ? AND outcome = 'queued'"
        )
        params = (to_us(next_attempt_at), attempts, last_error, entry_id)
        await self._call(partial(_execute, sql, params), "write")

    async def give_up(self, entry_id: OutboxId, now: datetime, reason: str) -> None:
        sql = (
            "UPDATE outbox SET outcome = 'given_up', finished_at = ?, last_error = ? "
            "WHERE id = ? AND outcome = 'queued'"
        )
        await self._call(partial(_execute, sql, (to_us(now), reason, entry_id)), "write")

    async def outbox_stats(self) -> OutboxStats:
        return await self._call(_outbox_stats, "read")

    async def get_outbox(self, run_id: RunId) -> list[OutboxEntry]:
        sql = f"SELECT {OUTBOX.select} FROM outbox WHERE run_id = ? ORDER BY created_at, seq, rowid"
        return await self._call(partial(_select, OUTBOX, sql, [run_id]), "read")

    # -- environments -------------------------------------------------------------------

    async def get_environment(self, env_id: str) -> EnvironmentInstance | None:
        return await self._call(partial(_get, ENVIRONMENTS, env_id), "read")

    async def list_environments(
        self, *, state: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[EnvironmentInstance]:
        sql, params = page_sql(ENVIRONMENTS, "created_at", (("state", state),), before, limit)
        return await self._call(partial(_select, ENVIRONMENTS, sql, params), "read")

    async def find_reusable(
        self, workspace: str, name: str, context: str
    ) -> EnvironmentInstance | None:
        marks = ", ".join("?" for _ in REUSABLE_ENV_STATES)
        sql = (
            f"SELECT {ENVIRONMENTS.select} FROM environments WHERE workspace = ? AND name = ? "
            f"AND context = ? AND state IN ({marks}) AND teardown_requested = 0 "
            "ORDER BY created_at DESC LIMIT 1"
        )
        params = [workspace, name, context, *REUSABLE_ENV_STATES]
        found = await self._call(partial(_select, ENVIRONMENTS, sql, params), "read")
        return found[0] if found else None

    async def insert_environment(self, env: EnvironmentInstance) -> bool:
        return await self._call(partial(_insert_environment, env), "write")

    async def update_environment(
        self, env: EnvironmentInstance, *, expect_state: EnvironmentState | None = None
    ) -> bool:
        return await self._call(partial(_update_environment, env, expect_state), "write")

    async def adjust_environment_users(
        self, env_id: EnvironmentId, delta: int, now: datetime
    ) -> EnvironmentInstance | None:
        sql = (
            "UPDATE environments SET users = MAX(0, users + ?), last_used_at = ?, "
            "expires_at = ? + CAST(ttl_minutes * 60000000 AS INTEGER) WHERE id = ? "
            f"RETURNING {ENVIRONMENTS.select}"
        )
        now_us = to_us(now)
        found = await self._call(
            partial(_select, ENVIRONMENTS, sql, [delta, now_us, now_us, env_id]), "write"
        )
        return found[0] if found else None

    async def lock_environment(
        self, env_id: EnvironmentId, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        sql = (
            "UPDATE environments SET owner = ?, lock_until = ? WHERE id = ? AND "
            "(owner IS NULL OR owner = ? OR lock_until IS NULL OR lock_until < ?)"
        )
        params = (owner, _lease_us(now, lease_seconds), env_id, owner, to_us(now))
        return bool(await self._call(partial(_execute, sql, params), "write"))

    async def take_environment(
        self, env_id: EnvironmentId, routing: Mapping[str, str], now: datetime
    ) -> EnvironmentInstance | None:
        now_us = to_us(now)
        params = [now_us, now_us, json_dumps(dict(routing)), env_id, now_us]
        found = await self._call(partial(_select, ENVIRONMENTS, _TAKE_SQL, params), "write")
        return found[0] if found else None

    async def take_or_list(
        self,
        workspace: str,
        name: str,
        context: str,
        routing: Mapping[str, str],
        now: datetime,
        *,
        provider: str,
        provider_app_name: str | None,
        users: int = 1,
        provision: EnvironmentInstance | None = None,
    ) -> tuple[EnvironmentInstance | None, list[EnvironmentInstance]]:
        now_us = to_us(now)
        take = [users, now_us, now_us, json_dumps(dict(routing)), workspace, name, context,
                provider, provider_app_name, now_us, now_us]  # fmt: skip
        work = partial(_take_or_list, take, [workspace, name, context], provision)
        return await self._call(work, "write")

    async def environments_for_key(
        self, workspace: str, name: str, context: str
    ) -> list[EnvironmentInstance]:
        params = [workspace, name, context]
        return await self._call(partial(_select, ENVIRONMENTS, _FOR_KEY_SQL, params), "read")

    async def expired_environments(self, now: datetime) -> list[EnvironmentInstance]:
        sql = (
            f"SELECT {ENVIRONMENTS.select} FROM environments WHERE state IN ('warm', 'cooling') "
            "AND expires_at <= ? AND users = 0 ORDER BY expires_at, id"
        )
        return await self._call(partial(_select, ENVIRONMENTS, sql, [to_us(now)]), "read")

    async def environments_to_teardown(self) -> list[EnvironmentInstance]:
        sql = (
            f"SELECT {ENVIRONMENTS.select} FROM environments WHERE teardown_requested = 1 "
            "AND state <> 'destroyed' ORDER BY created_at, id"
        )
        return await self._call(partial(_select, ENVIRONMENTS, sql, []), "read")

    # -- replicas -----------------------------------------------------------------------

    async def heartbeat_replica(self, name: str, revision: str | None, now: datetime) -> None:
        sql = (
            "INSERT INTO replicas (name, revision, seen_at) VALUES (?, ?, ?) ON CONFLICT (name) "
            "DO UPDATE SET revision = excluded.revision, seen_at = excluded.seen_at"
        )
        await self._call(partial(_execute, sql, (name, revision, to_us(now))), "write")

    async def list_replicas(self, since: datetime) -> list[ReplicaInfo]:
        return await self._call(partial(_list_replicas, to_us(since)), "read")


# -- jobs (run in the worker thread) ----------------------------------------------------


def _lease_us(now: datetime, lease_seconds: float) -> int:
    return to_us(now + timedelta(seconds=lease_seconds))


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (
        code is None and "locked" in str(exc))


def _wal_checkpoint(conn: sqlite3.Connection, tx: _Tx) -> None:
    """Copy the WAL into the database without blocking writers; once the WAL is past
    ``WAL_SIZE_LIMIT``, also copy what the loop appended meanwhile and start it over.

    The passive pass copies up to where the WAL ended when it began, so with writes going on
    it never leaves the WAL fully copied, which SQLite needs to start it over. The restart
    waits for the write in progress and holds new ones off while it copies the rest (the
    loop's writes wait in this worker meanwhile): a short pause, against a WAL that would
    grow for as long as the writes go on."""
    _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    (page,) = conn.execute("PRAGMA page_size").fetchone()
    if _WAL_HEADER + frames * (_FRAME_HEADER + page) > WAL_SIZE_LIMIT:  # the file's size
        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def _ping(conn: sqlite3.Connection, tx: _Tx) -> bool:
    return bool(conn.execute("SELECT 1").fetchone() == (1,))


def _execute(sql: str, params: Sequence[Any], conn: sqlite3.Connection, tx: _Tx) -> int:
    """Run one statement; the number of rows it changed."""
    return conn.execute(sql, params).rowcount


def _select(
    table: Table[R], sql: str, params: Sequence[Any], conn: sqlite3.Connection, tx: _Tx
) -> list[R]:
    return [table.load(row) for row in conn.execute(sql, params).fetchall()]


def _get(table: Table[R], record_id: str, conn: sqlite3.Connection, tx: _Tx) -> R | None:
    row = conn.execute(
        f"SELECT {table.select} FROM {table.name} WHERE id = ?", (record_id,)
    ).fetchone()
    return None if row is None else table.load(row)


def _insert_many(table: Table[R], records: Sequence[R], conn: sqlite3.Connection, tx: _Tx) -> None:
    conn.executemany(table.insert, [table.values(r) for r in records])


def _migrate(conn: sqlite3.Connection, tx: _Tx) -> list[int]:
    """Apply each missing migration in its own ``BEGIN IMMEDIATE`` transaction."""
    applied: list[int] = []
    for version, name, sql in migrations():
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TEXT NOT NULL "
                "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
            )
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
            ).fetchone()
            if done is None:
                for statement in _split_statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name)
                )
                applied.append(version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied


def _run_values(run: Run, **overrides: Any) -> list[Any]:
    return run_values(RUNS, run, **overrides)


def _attach_reports(conn: sqlite3.Connection, runs: list[Run]) -> list[Run]:
    """Add what the outbox did to each run's ``status_report`` (derived, never stored)."""
    if not runs:
        return runs
    marks = ", ".join("?" for _ in runs)
    sql = (
        f"SELECT {OUTBOX.select} FROM outbox WHERE run_id IN ({marks}) "
        "ORDER BY created_at, seq, rowid"
    )
    entries = [OUTBOX.load(row) for row in conn.execute(sql, [r.id for r in runs]).fetchall()]
    return with_reports(runs, entries)


_DEDUP_SQL = (
    "SELECT d.id, d.runs FROM dedup_keys k JOIN deliveries d ON d.id = k.delivery_id "
    "WHERE k.key = ? AND k.received_at >= ?"
)
_CLAIM_KEY_SQL = (
    "INSERT INTO dedup_keys (key, delivery_id, received_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET delivery_id = excluded.delivery_id, "
    "received_at = excluded.received_at WHERE dedup_keys.received_at < ?"
)
_SUPERSEDABLE = (
    "serial_key = ? AND serial_key <> '' AND status = 'pending' AND claimed_by IS NULL "
    "AND queued_at <= ?"
)
_SUPERSEDABLE_SQL = (
    f"SELECT id FROM runs INDEXED BY runs_by_serial_key WHERE {_SUPERSEDABLE} "
    "ORDER BY queued_at, id"
)
_SUPERSEDE_SQL = (
    "UPDATE runs SET status = 'cancelled', error = ?, completed_at = ? "
    "WHERE id = ? AND status = 'pending'"
)


def _superseded_reason(new: Run) -> str:
    return f"superseded by run {new.id} (sha {new.short_sha})"


def _record_delivery(
    delivery: Delivery,
    runs: tuple[Run, ...],
    window_start_us: int,
    max_queued: int,
    conn: sqlite3.Connection,
    tx: _Tx,
) -> RecordResult:
    if delivery.outcome != "accepted":
        if runs:
            raise ValueError(f"a delivery with outcome {delivery.outcome!r} starts no runs")
        conn.execute(DELIVERIES.insert, DELIVERIES.values(delivery))
        return RecordResult(delivery=delivery)

    key = delivery.dedup_key
    if key:
        row = conn.execute(_DEDUP_SQL, (key, window_start_us)).fetchone()
        if row is not None:
            original_runs: tuple[RunId, ...] = tuple(json.loads(row[1]))
            stored = replace(
                delivery,
                outcome="duplicate",
                reason=f"duplicate of delivery {row[0]}",
                runs=original_runs,
            )
            conn.execute(DELIVERIES.insert, DELIVERIES.values(stored))
            return RecordResult(
                delivery=stored, run_ids=original_runs, duplicate=True, duplicate_of=row[0]
            )

    queued = tx.pending(conn)
    run_ids = tuple(r.id for r in runs)
    # Queued runs each new one supersedes, found before the new runs are inserted (they must
    # not cancel themselves): whether the delivery fits under the cap depends on them. A
    # SELECT then an UPDATE by id costs less than one UPDATE ... RETURNING over the index
    # whose columns it changes (SQLite then collects the rows in a temporary table first).
    pairs: list[tuple[RunId, Run]] = []
    for run in runs:
        if run.serial_key:
            params = (run.serial_key, to_us(run.queued_at))
            for (old_id,) in conn.execute(_SUPERSEDABLE_SQL, params).fetchall():
                pairs.append((old_id, run))
    if queued - len(pairs) + len(runs) > max_queued:
        stored = replace(
            delivery, outcome="rejected", reason="queue full", runs=(), http_status=429
        )
        conn.execute(DELIVERIES.insert, DELIVERIES.values(stored))
        return RecordResult(delivery=stored, rejected="queue full")
    stored = _insert_accepted(delivery, run_ids, window_start_us, conn)
    superseded = [old_id for old_id, _ in pairs]
    for old_id, new in pairs:
        conn.execute(_SUPERSEDE_SQL, (_superseded_reason(new), to_us(new.queued_at), old_id))
    values = [
        _run_values(
            r, status="pending", claimed_by=None, lease_until=None, delivery_id=delivery.id
        )
        for r in runs
    ]
    if len(values) == 1:
        conn.execute(RUNS.insert, values[0])
    elif values:
        conn.executemany(RUNS.insert, values)
    tx.queued = queued - len(superseded) + len(runs)
    return RecordResult(delivery=stored, run_ids=run_ids, superseded=tuple(superseded))


def _insert_accepted(
    delivery: Delivery, run_ids: tuple[RunId, ...], window_start_us: int,
    conn: sqlite3.Connection,
) -> Delivery:
    """Insert an accepted delivery (with ``run_ids``) and claim its dedup key."""
    stored = delivery if delivery.runs == run_ids else replace(delivery, runs=run_ids)
    conn.execute(DELIVERIES.insert, DELIVERIES.values(stored))
    key = delivery.dedup_key
    if key:
        params = (key, delivery.id, to_us(delivery.received_at), window_start_us)
        if conn.execute(_CLAIM_KEY_SQL, params).rowcount != 1:
            # cannot happen with one writer; PostgreSQL relies on it
            raise StoreError(f"dedup key {key!r} was taken concurrently")
    return stored


def _enqueue_run(run: Run, max_queued: int, conn: sqlite3.Connection, tx: _Tx) -> bool:
    queued = tx.pending(conn)
    if queued + 1 > max_queued:
        return False
    conn.execute(RUNS.insert, _run_values(run, status="pending", claimed_by=None, lease_until=None))
    tx.queued = queued + 1
    return True


_CLAIM_SQL = f"""
SELECT {RUNS.select} FROM runs AS r
WHERE r.status = 'pending'
  AND (r.serial_key = '' OR NOT EXISTS (
        SELECT 1 FROM runs AS x
        WHERE x.serial_key <> '' AND x.serial_key = r.serial_key AND x.status = 'running'))
ORDER BY r.queued_at, r.id
LIMIT 1
"""


def _claim_run(
    replica: str, now_us: int, lease_us: int, conn: sqlite3.Connection, tx: _Tx
) -> Run | None:
    row = conn.execute(_CLAIM_SQL).fetchone()
    if row is None:
        return None
    run = RUNS.load(row)
    conn.execute(
        "UPDATE runs SET status = 'running', claimed_by = ?, lease_until = ?, "
        "started_at = COALESCE(started_at, ?) WHERE id = ? AND status = 'pending'",
        (replica, lease_us, now_us, run.id),
    )
    if tx.queued is not None:
        tx.queued -= 1
    claimed = replace(
        run,
        status="running",
        claimed_by=replica,
        lease_until=from_us(lease_us),
        started_at=run.started_at or from_us(now_us),
    )
    return _attach_reports(conn, [claimed])[0]


def _heartbeat(
    replica: str, run_ids: tuple[RunId, ...], lease_us: int, conn: sqlite3.Connection, tx: _Tx
) -> list[RunId]:
    marks = ", ".join("?" for _ in run_ids)
    rows = conn.execute(
        f"UPDATE runs SET lease_until = ? WHERE claimed_by = ? AND status = 'running' "
        f"AND id IN ({marks}) RETURNING id",
        (lease_us, replica, *run_ids),
    ).fetchall()
    return [RunId(r[0]) for r in rows]


def _save_progress(run: Run, conn: sqlite3.Connection, tx: _Tx) -> bool:
    values = (
        json_dumps(run.flows),
        run.total_flows,
        run.passed_flows,
        run.failed_flows,
        run.environment,
        run.environment_instance,
        json_dumps(strip_report(run.status_report)),
        _encode("optjson", run.report_target),
        run.id,
        run.claimed_by,
    )
    changed = conn.execute(
        "UPDATE runs SET flows = ?, total_flows = ?, passed_flows = ?, failed_flows = ?, "
        "environment = ?, environment_instance = ?, status_report = ?, report_target = ? "
        "WHERE id = ? AND status = 'running' AND claimed_by IS ?",
        values,
    ).rowcount
    return changed == 1


def _finish_run(
    run: Run, outbox: tuple[OutboxEntry, ...], conn: sqlite3.Connection, tx: _Tx
) -> bool:
    values = (
        run.status,
        _encode("ts", run.completed_at),
        run.duration_ms,
        run.total_flows,
        run.passed_flows,
        run.failed_flows,
        run.error,
        json_dumps(strip_report(run.status_report)),
        _encode("optjson", run.report_target),
        json_dumps(run.flows),
        run.environment,
        run.environment_instance,
        1 if run.started else 0,
        _encode("ts", run.started_at),
        run.revision,
        run.id,
        run.claimed_by,
    )
    changed = conn.execute(
        "UPDATE runs SET status = ?, completed_at = ?, duration_ms = ?, total_flows = ?, "
        "passed_flows = ?, failed_flows = ?, error = ?, status_report = ?, report_target = ?, "
        "flows = ?, environment = ?, environment_instance = ?, started = MAX(started, ?), "
        "started_at = COALESCE(started_at, ?), revision = COALESCE(?, revision), "
        "lease_until = NULL WHERE id = ? AND status IN ('pending', 'running') AND claimed_by IS ?",
        values,
    ).rowcount
    tx.queued = None
    if changed != 1:
        return False
    if outbox:
        conn.executemany(OUTBOX.insert, [OUTBOX.values(e) for e in outbox])
    return True


def _get_run(run_id: str, conn: sqlite3.Connection, tx: _Tx) -> Run | None:
    run = _get(RUNS, run_id, conn, tx)
    return None if run is None else _attach_reports(conn, [run])[0]


def _select_runs(sql: str, params: Sequence[Any], conn: sqlite3.Connection, tx: _Tx) -> list[Run]:
    return _attach_reports(conn, _select(RUNS, sql, params, conn, tx))


def _count_runs_by_status(conn: sqlite3.Connection, tx: _Tx) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(RUN_STATUSES, 0)
    for status, count in conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"):
        counts[status] = count
    return counts


def _recover_expired(
    now: datetime,
    replica: str | None,
    outbox_for: OutboxFor | None,
    conn: sqlite3.Connection,
    tx: _Tx,
) -> RecoveryResult:
    now_us = to_us(now)
    rows = conn.execute(
        f"SELECT {RUNS.select} FROM runs WHERE status = 'running' "
        "AND (lease_until < ? OR claimed_by = ?) ORDER BY queued_at, id",
        (now_us, replica),
    ).fetchall()
    interrupted: list[Run] = []
    requeued: list[RunId] = []
    environments: list[tuple[RunId, EnvironmentId]] = []
    for row in rows:
        run = RUNS.load(row)
        if run.environment_instance:
            environments.append((run.id, run.environment_instance))
        if run.started:
            duration = None if run.started_at is None else (now - run.started_at) // _ONE_US // 1000
            conn.execute(
                "UPDATE runs SET status = 'failed', error = ?, completed_at = ?, "
                "duration_ms = ?, lease_until = NULL WHERE id = ?",
                (INTERRUPTED_ERROR, now_us, duration, run.id),
            )
            failed = replace(
                run,
                status="failed",
                error=INTERRUPTED_ERROR,
                completed_at=now,
                duration_ms=duration,
                lease_until=None,
            )
            if outbox_for is not None:
                entries = list(outbox_for(failed))
                if entries:
                    conn.executemany(OUTBOX.insert, [OUTBOX.values(e) for e in entries])
            interrupted.append(failed)
        else:
            conn.execute(
                "UPDATE runs SET status = 'pending', claimed_by = NULL, lease_until = NULL, "
                "started_at = NULL, environment_instance = NULL WHERE id = ?",
                (run.id,),
            )
            requeued.append(run.id)
    tx.queued = None
    return RecoveryResult(
        interrupted=tuple(_attach_reports(conn, interrupted)), requeued=tuple(requeued),
        environments=tuple(environments),
    )


_TAKE_SQL = (
    "UPDATE environments SET state = 'running', users = users + 1, last_used_at = ?, "
    "expires_at = ? + CAST(ttl_minutes * 60000000 AS INTEGER), routing = ?, owner = NULL, "
    "lock_until = NULL WHERE id = ? AND teardown_requested = 0 AND error IS NULL "
    "AND state IN ('warm', 'cooling', 'running') "
    "AND (owner IS NULL OR lock_until IS NULL OR lock_until < ?) "
    f"RETURNING {ENVIRONMENTS.select}"
)

# The live record of a key (the terms of the environments_live_key partial index, so that
# it is used), taken as _TAKE_SQL takes one, when it is usable as it is: same provider and
# app, and a warm/cooling one within its TTL (environments.reusable, in SQL).
_TAKE_REUSABLE_SQL = (
    "UPDATE environments SET state = 'running', users = users + ?, last_used_at = ?, "
    "expires_at = ? + CAST(ttl_minutes * 60000000 AS INTEGER), routing = ?, owner = NULL, "
    "lock_until = NULL WHERE workspace = ? AND name = ? AND context = ? "
    "AND state NOT IN ('cold', 'destroyed') AND teardown_requested = 0 "
    "AND error IS NULL AND provider = ? AND provider_app_name IS ? "
    "AND (owner IS NULL OR lock_until IS NULL OR lock_until < ?) "
    "AND (state = 'running' OR (state IN ('warm', 'cooling') AND COALESCE(last_used_at, "
    "created_at) + CAST(ROUND(ttl_minutes * 60000000) AS INTEGER) > ?)) "
    f"RETURNING {ENVIRONMENTS.select}"
)

_INSERT_NEW_SQL = f"{ENVIRONMENTS.insert} ON CONFLICT DO NOTHING"

# Every record of a key that is not destroyed, newest first (environments_for_key).
_FOR_KEY_SQL = (
    f"SELECT {ENVIRONMENTS.select} FROM environments WHERE workspace = ? AND name = ? "
    "AND context = ? AND state <> 'destroyed' ORDER BY created_at DESC, id DESC"
)


def _take_or_list(
    take: Sequence[Any],
    key: Sequence[Any],
    provision: EnvironmentInstance | None,
    conn: sqlite3.Connection,
    tx: _Tx,
) -> tuple[EnvironmentInstance | None, list[EnvironmentInstance]]:
    """Take the key's usable record, else list the key's records, or insert ``provision``
    when it has none; in the caller's transaction."""
    taken = _select(ENVIRONMENTS, _TAKE_REUSABLE_SQL, take, conn, tx)
    if taken:
        return taken[0], []
    records = _select(ENVIRONMENTS, _FOR_KEY_SQL, key, conn, tx)
    if records or provision is None:
        return None, records
    if conn.execute(_INSERT_NEW_SQL, ENVIRONMENTS.values(provision)).rowcount:
        return None, [provision]
    return None, _select(ENVIRONMENTS, _FOR_KEY_SQL, key, conn, tx)


# The oldest queued entry of each (repo, sha, context) group, and only once it is due: a
# final state never overtakes the pending one of the same commit and context.
_DUE_SQL = f"""
SELECT {OUTBOX.select} FROM outbox AS o
WHERE o.outcome = 'queued' AND o.next_attempt_at <= ?
  AND NOT EXISTS (
        SELECT 1 FROM outbox AS p
        WHERE p.outcome = 'queued' AND p.repo = o.repo AND p.sha = o.sha
          AND p.context = o.context
          AND (p.created_at, p.seq, p.rowid) < (o.created_at, o.seq, o.rowid))
ORDER BY o.next_attempt_at, o.created_at, o.seq
LIMIT ?
"""


def _outbox_stats(conn: sqlite3.Connection, tx: _Tx) -> OutboxStats:
    # Two counts over the two partial indexes: the outbox keeps every sent entry.
    (queued,) = conn.execute("SELECT COUNT(*) FROM outbox WHERE outcome = 'queued'").fetchone()
    (given_up,) = conn.execute("SELECT COUNT(*) FROM outbox WHERE outcome = 'given_up'").fetchone()
    row = conn.execute(
        "SELECT finished_at, last_error, run_id FROM outbox WHERE outcome = 'given_up' "
        "ORDER BY finished_at DESC LIMIT 1"
    ).fetchone()
    last = None
    if row is not None:
        last = GiveUp(at=from_us(row[0]), reason=row[1] or "", run_id=RunId(row[2]))
    return OutboxStats(queued=int(queued), given_up=int(given_up), last_give_up=last)


def _insert_environment(env: EnvironmentInstance, conn: sqlite3.Connection, tx: _Tx) -> bool:
    try:
        conn.execute(ENVIRONMENTS.insert, ENVIRONMENTS.values(env))
    except sqlite3.IntegrityError:
        return False
    return True


def _update_environment(
    env: EnvironmentInstance,
    expect_state: EnvironmentState | None,
    conn: sqlite3.Connection,
    tx: _Tx,
) -> bool:
    sql, values = update_sql(ENVIRONMENTS, env, expect_state)
    try:
        return conn.execute(sql, values).rowcount == 1
    except sqlite3.IntegrityError:  # another live instance holds the reuse key
        return False


def _list_replicas(since_us: int, conn: sqlite3.Connection, tx: _Tx) -> list[ReplicaInfo]:
    rows = conn.execute(
        "SELECT name, revision, seen_at FROM replicas WHERE seen_at >= ? ORDER BY name",
        (since_us,),
    ).fetchall()
    return [ReplicaInfo(name=n, revision=r, seen_at=from_us(s)) for n, r, s in rows]
