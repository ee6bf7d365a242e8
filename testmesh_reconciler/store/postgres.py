"""The PostgreSQL runtime store: several replicas share one database, each through its own pool.

Every method is one transaction on a pooled connection (no group commit: the pool gives the
concurrency). Races between replicas are settled by the database itself: unique dedup keys,
a unique index on running serial keys, ``FOR UPDATE SKIP LOCKED`` and conditional updates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from testmesh_reconciler.store import tables
from testmesh_reconciler.store.base import OutboxFor, StoreError
from testmesh_reconciler.store.records import (
    FINAL_RUN_STATUSES,
    INTERRUPTED_ERROR,
    REUSABLE_ENV_STATES,
    RUN_STATUSES,
    Delivery,
    DeliveryId,
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
from testmesh_reconciler.store.sqlite import migrations
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

R = TypeVar("R")
Conn = AsyncConnection[TupleRow]

MIGRATIONS_DIR = Path(__file__).parent / "migrations" / "postgres"
#: ``pg_advisory_xact_lock`` key taken by every migration transaction ("testmesh" in ASCII),
#: so replicas starting at once apply each migration exactly once.
MIGRATION_LOCK = 0x74657374_6D657368
#: First half of the two-key advisory lock that serialises deliveries per serial key.
SERIAL_KEY_LOCK_CLASS = 0x544D
#: ``LISTEN``/``NOTIFY`` channel of config broadcasts (a webhook received by one replica).
CONFIG_CHANNEL = "testmesh_config"
_ONE_MS = timedelta(milliseconds=1)


# -- value codecs -----------------------------------------------------------------------


def _ts(value: datetime | None) -> datetime | None:
    """A timestamp parameter; naive datetimes are refused (all times are UTC-aware)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC times")
    return value


def _now(value: datetime) -> datetime:
    checked = _ts(value)
    assert checked is not None
    return checked


def _json(value: Any) -> Json:
    return Json(value, dumps=json_dumps)


def _encode(kind: Kind, value: Any) -> Any:
    if kind == "v":
        return value
    if kind == "ts":
        return _ts(value)
    if kind == "bool":
        return bool(value)
    if kind == "array":
        return list(value)
    if kind == "optjson" and value is None:
        return None
    return _json(value)


def _decode(kind: Kind, value: Any) -> Any:
    if kind == "v" or value is None:
        return value
    if kind == "ts":
        return value.astimezone(UTC)
    if kind in ("array", "jsontuple"):
        return tuple(value)
    return value  # json and bool arrive decoded


DELIVERIES = Table(tables.DELIVERIES, "%s", _encode, _decode)
RUNS = Table(tables.RUNS, "%s", _encode, _decode)
OUTBOX = Table(tables.OUTBOX, "%s", _encode, _decode)
ENVIRONMENTS = Table(tables.ENVIRONMENTS, "%s", _encode, _decode)


def _run_values(run: Run, **overrides: Any) -> list[Any]:
    return run_values(RUNS, run, **overrides)


def _redacted(conninfo: str) -> str:
    """host:port/dbname of a connection string, never its password."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<invalid connection string>"
    host = parts.get("host") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


# -- SQL --------------------------------------------------------------------------------

_DUPLICATE_OF_SQL = (
    "SELECT d.id, d.runs FROM dedup_keys AS k JOIN deliveries AS d ON d.id = k.delivery_id "
    "WHERE k.key = %s AND k.received_at >= %s"
)
# Holding the key: taking over a row older than the window, or inserting a new one. Against a
# concurrent (uncommitted) holder this waits for it, then yields no row when it committed.
_CLAIM_KEY_SQL = (
    "INSERT INTO dedup_keys (key, delivery_id, received_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET delivery_id = excluded.delivery_id, "
    "received_at = excluded.received_at WHERE dedup_keys.received_at < %s RETURNING 1"
)
_SERIAL_LOCKS_SQL = (
    "SELECT pg_advisory_xact_lock(%s, h) FROM "
    "(SELECT DISTINCT hashtext(k) AS h FROM unnest(%s::text[]) AS k ORDER BY 1) AS keys"
)
_SUPERSEDE_SQL = (
    "SELECT id FROM runs WHERE serial_key = %s AND serial_key <> '' AND status = 'pending' "
    "AND claimed_by IS NULL AND queued_at <= %s ORDER BY queued_at, id FOR UPDATE"
)
# Pending runs, counted only as far as the cap needs (the queue can be long).
_COUNT_PENDING_SQL = (
    "SELECT count(*) FROM (SELECT 1 FROM runs WHERE status = 'pending' LIMIT %s) AS p"
)
# The same, leaving out the runs this delivery supersedes (its (serial_key, queued_at) pairs).
_COUNT_STAYING_SQL = """
SELECT count(*) FROM (
    SELECT 1 FROM runs AS r WHERE r.status = 'pending' AND NOT EXISTS (
        SELECT 1 FROM unnest(%s::text[], %s::timestamptz[]) AS n(key, at)
        WHERE r.serial_key = n.key AND r.claimed_by IS NULL AND r.queued_at <= n.at)
    LIMIT %s) AS p
"""
_CLAIM_SQL = f"""
SELECT {RUNS.qualified("r")} FROM runs AS r
WHERE r.status = 'pending'
  AND (r.serial_key = '' OR NOT EXISTS (
        SELECT 1 FROM runs AS x
        WHERE x.serial_key <> '' AND x.serial_key = r.serial_key AND x.status = 'running'))
  AND r.serial_key <> ALL (%s::text[])
ORDER BY r.queued_at, r.id
LIMIT 1
FOR UPDATE OF r SKIP LOCKED
"""

# The live record of a key, taken when a run may use it as it is (take_or_list): one
# conditional UPDATE (at most one row: the unique index) whose row lock orders it against
# racing replicas, which re-check the conditions.
_TAKE_REUSABLE_SQL = (
    "UPDATE environments SET state = 'running', users = users + %s, last_used_at = %s, "
    "expires_at = %s + make_interval(secs => ttl_minutes * 60), routing = %s, "
    "owner = NULL, lock_until = NULL WHERE workspace = %s AND name = %s "
    "AND context = %s AND state NOT IN ('cold', 'destroyed') "
    "AND NOT teardown_requested AND error IS NULL AND provider = %s "
    "AND provider_app_name IS NOT DISTINCT FROM %s "
    "AND (owner IS NULL OR lock_until IS NULL OR lock_until < %s) "
    "AND (state = 'running' OR (state IN ('warm', 'cooling') AND "
    "COALESCE(last_used_at, created_at) + make_interval(secs => ttl_minutes * 60) > %s)) "
    f"RETURNING {ENVIRONMENTS.select}"
)

# Every record of a key that is not destroyed, newest first (environments_for_key).
_FOR_KEY_SQL = (
    f"SELECT {ENVIRONMENTS.select} FROM environments WHERE workspace = %s AND name = %s "
    "AND context = %s AND state <> 'destroyed' ORDER BY created_at DESC, id DESC"
)


# The oldest queued entry of each (repo, sha, context) group, once it is due and nobody holds
# it: a final state never overtakes the pending one of the same commit and context. Claiming
# it (``claimed_until``) keeps another replica from posting the same entry meanwhile.
_DUE_SQL = f"""
WITH heads AS (
    SELECT DISTINCT ON (repo, sha, context) id FROM outbox
    WHERE outcome = 'queued'
    ORDER BY repo, sha, context, created_at, seq, pos
), picked AS (
    SELECT o.id FROM outbox AS o JOIN heads AS h ON h.id = o.id
    WHERE o.outcome = 'queued' AND o.next_attempt_at <= %(now)s
      AND (o.claimed_until IS NULL OR o.claimed_until <= %(now)s)
    ORDER BY o.next_attempt_at, o.created_at, o.seq, o.pos
    LIMIT %(limit)s
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE outbox SET claimed_until = %(until)s FROM picked WHERE outbox.id = picked.id
RETURNING {OUTBOX.qualified("outbox")}, outbox.pos
"""


class PostgresStore:
    """The ``Store`` on PostgreSQL, for several replicas sharing the work.

    ``conninfo`` is a libpq URL or key=value string. Each instance owns one
    ``AsyncConnectionPool`` (``min_size``..``max_size`` connections). ``outbox_claim_seconds``
    is how long an entry handed out by ``due_statuses`` stays hidden from other replicas
    unless it is marked sent, rescheduled or given up first.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 30.0,
        outbox_claim_seconds: float = 60.0,
    ) -> None:
        self.conninfo = conninfo
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._outbox_claim = timedelta(seconds=outbox_claim_seconds)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._closing = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"PostgresStore({_redacted(self.conninfo)!r})"

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool (failing fast when the server does not answer) and migrate."""
        if self._pool is not None:
            raise StoreError("the store is already open")
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.conninfo,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"autocommit": True},
            open=False,
            name="testmesh-store",
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {_redacted(self.conninfo)} within "
                f"{self._connect_timeout:g}s; check --database-url and that the server is up"
            ) from exc
        self._pool = pool
        self._closing = False
        try:
            await self.migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Let the calls already under way finish, then close the pool."""
        pool = self._pool
        if pool is None or self._closing:
            return
        self._closing = True
        await self._idle.wait()
        await pool.close()
        self._pool = None

    async def ping(self) -> bool:
        try:
            async with self._tx() as conn:
                cur = await conn.execute("SELECT 1")
                return await cur.fetchone() == (1,)
        except StoreError:
            return False

    async def migrate(self) -> list[int]:
        """Apply each missing migration in its own transaction, under an advisory lock."""
        applied: list[int] = []
        for version, name, sql in migrations(MIGRATIONS_DIR):
            async with self._tx() as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                )
                if await cur.fetchone() is None:
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
                    applied.append(version)
        return applied

    @contextlib.asynccontextmanager
    async def _tx(self, *, pipeline: bool = False) -> AsyncIterator[Conn]:
        """One transaction on a pooled connection; database errors become ``StoreError``.

        With ``pipeline``, statements are sent without waiting for each answer (BEGIN
        included); a ``fetch*`` waits for what it needs, so a call costs fewer round trips.
        """
        pool = self._pool
        if pool is None or self._closing:
            raise StoreError("the store is not open")
        self._inflight += 1  # before any await: close() waits for this call
        self._idle.clear()
        try:
            async with contextlib.AsyncExitStack() as stack:
                conn = await stack.enter_async_context(pool.connection())
                if pipeline:
                    await stack.enter_async_context(conn.pipeline())
                await stack.enter_async_context(conn.transaction())
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _select(self, table: Table[R], sql: str, params: Sequence[Any] = ()) -> list[R]:
        async with self._tx() as conn:
            cur = await conn.execute(sql, params)
            return [table.load(row) for row in await cur.fetchall()]

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        async with self._tx() as conn:
            return (await conn.execute(sql, params)).rowcount

    # -- deliveries ---------------------------------------------------------------------

    async def record_delivery(
        self,
        delivery: Delivery,
        runs: Sequence[Run],
        *,
        dedup_window_start: datetime,
        max_queued: int,
    ) -> RecordResult:
        runs = tuple(runs)
        if delivery.outcome != "accepted":
            if runs:
                raise ValueError(f"a delivery with outcome {delivery.outcome!r} starts no runs")
            row = DELIVERIES.values(delivery)
            async with self._tx() as conn:
                await conn.execute(DELIVERIES.insert, row)
            return RecordResult(delivery=delivery)
        window = _now(dedup_window_start)
        received = _now(delivery.received_at)
        for run in runs:
            _now(run.queued_at)
        for _ in range(3):
            try:
                async with self._tx(pipeline=True) as conn:
                    return await _record_accepted(
                        conn, delivery, runs, window, received, max_queued
                    )
            except _LostKeyRace:  # rolled back; the next attempt answers ``duplicate``
                continue
        raise StoreError(f"dedup key {delivery.dedup_key!r} kept changing hands; retry")

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        sql = f"SELECT {DELIVERIES.select} FROM deliveries WHERE id = %s"
        found = await self._select(DELIVERIES, sql, (delivery_id,))
        return found[0] if found else None

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
        return await self._select(DELIVERIES, sql, params)

    # -- runs ---------------------------------------------------------------------------

    async def enqueue_run(self, run: Run, *, max_queued: int) -> bool:
        row = _run_values(run, status="pending", claimed_by=None, lease_until=None)
        async with self._tx() as conn:
            if await _count_pending(conn, max_queued) + 1 > max_queued:
                return False
            await conn.execute(RUNS.insert, row)
        return True

    async def claim_run(self, replica: str, now: datetime, lease_seconds: float) -> Run | None:
        """Take the oldest claimable pending run (see ``_claim`` for how races are settled)."""
        lease_until = _now(now) + timedelta(seconds=lease_seconds)
        async with self._tx() as conn:
            run = await _claim(conn, replica, now, lease_until)
            return None if run is None else (await _attach_reports(conn, [run]))[0]

    async def heartbeat(
        self, replica: str, run_ids: Sequence[RunId], now: datetime, lease_seconds: float
    ) -> list[RunId]:
        if not run_ids:
            return []
        lease_until = _now(now) + timedelta(seconds=lease_seconds)
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE runs SET lease_until = %s WHERE claimed_by = %s AND status = 'running' "
                "AND id = ANY(%s::text[]) RETURNING id",
                (lease_until, replica, list(run_ids)),
            )
            held = {row[0] for row in await cur.fetchall()}
        return [run_id for run_id in dict.fromkeys(run_ids) if run_id in held]

    async def mark_started(self, run_id: RunId, now: datetime) -> None:
        sql = "UPDATE runs SET started = true, started_at = COALESCE(started_at, %s) WHERE id = %s"
        await self._execute(sql, (_now(now), run_id))

    async def save_progress(self, run: Run) -> bool:
        values = (
            _json(run.flows),
            run.total_flows,
            run.passed_flows,
            run.failed_flows,
            run.environment,
            run.environment_instance,
            _json(strip_report(run.status_report)),
            _encode("optjson", run.report_target),
            run.id,
            run.claimed_by,
        )
        changed = await self._execute(
            "UPDATE runs SET flows = %s, total_flows = %s, passed_flows = %s, failed_flows = %s, "
            "environment = %s, environment_instance = %s, status_report = %s, "
            "report_target = %s WHERE id = %s AND status = 'running' "
            "AND claimed_by IS NOT DISTINCT FROM %s",
            values,
        )
        return changed == 1

    async def finish_run(self, run: Run, outbox: Sequence[OutboxEntry] = ()) -> bool:
        if run.status not in FINAL_RUN_STATUSES:
            raise ValueError(f"finish_run needs a final status, not {run.status!r}")
        values = (
            run.status,
            _ts(run.completed_at),
            run.duration_ms,
            run.total_flows,
            run.passed_flows,
            run.failed_flows,
            run.error,
            _json(strip_report(run.status_report)),
            _encode("optjson", run.report_target),
            _json(run.flows),
            run.environment,
            run.environment_instance,
            run.started,
            _ts(run.started_at),
            run.revision,
            run.id,
            run.claimed_by,
        )
        rows = [OUTBOX.values(e) for e in outbox]
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE runs SET status = %s, completed_at = %s, duration_ms = %s, "
                "total_flows = %s, passed_flows = %s, failed_flows = %s, error = %s, "
                "status_report = %s, report_target = %s, flows = %s, environment = %s, "
                "environment_instance = %s, started = started OR %s, "
                "started_at = COALESCE(started_at, %s), revision = COALESCE(%s, revision), "
                "lease_until = NULL WHERE id = %s AND status IN ('pending', 'running') "
                "AND claimed_by IS NOT DISTINCT FROM %s",
                values,
            )
            if cur.rowcount != 1:
                return False
            if rows:
                await cur.executemany(OUTBOX.insert, rows)
        return True

    async def add_outbox(self, entries: Sequence[OutboxEntry]) -> None:
        if not entries:
            return
        rows = [OUTBOX.values(e) for e in entries]
        async with self._tx() as conn:
            await conn.cursor().executemany(OUTBOX.insert, rows)

    async def get_run(self, run_id: str) -> Run | None:
        async with self._tx() as conn:
            cur = await conn.execute(f"SELECT {RUNS.select} FROM runs WHERE id = %s", (run_id,))
            row = await cur.fetchone()
            return None if row is None else (await _attach_reports(conn, [RUNS.load(row)]))[0]

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
        async with self._tx() as conn:
            cur = await conn.execute(sql, params)
            return await _attach_reports(conn, [RUNS.load(row) for row in await cur.fetchall()])

    async def count_runs_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(RUN_STATUSES, 0)
        async with self._tx() as conn:
            cur = await conn.execute("SELECT status, count(*) FROM runs GROUP BY status")
            for status, count in await cur.fetchall():
                counts[status] = int(count)
        return counts

    async def recover_expired(
        self, now: datetime, *, replica: str | None = None, outbox_for: OutboxFor | None = None
    ) -> RecoveryResult:
        """Runs another replica is recovering right now (row locked) are left to it."""
        now = _now(now)
        async with self._tx() as conn:
            cur = await conn.execute(
                f"SELECT {RUNS.select} FROM runs WHERE status = 'running' "
                "AND (lease_until < %s OR claimed_by = %s) ORDER BY queued_at, id "
                "FOR UPDATE SKIP LOCKED",
                (now, replica),
            )
            interrupted: list[Run] = []
            requeued: list[RunId] = []
            environments: list[tuple[RunId, EnvironmentId]] = []
            for row in await cur.fetchall():
                run = RUNS.load(row)
                if run.environment_instance:
                    environments.append((run.id, run.environment_instance))
                if run.started:
                    failed = await _interrupt(conn, run, now, outbox_for)
                    interrupted.append(failed)
                else:
                    await conn.execute(
                        "UPDATE runs SET status = 'pending', claimed_by = NULL, "
                        "lease_until = NULL, started_at = NULL, environment_instance = NULL "
                        "WHERE id = %s",
                        (run.id,),
                    )
                    requeued.append(run.id)
            reported = await _attach_reports(conn, interrupted)
        return RecoveryResult(interrupted=tuple(reported), requeued=tuple(requeued),
                              environments=tuple(environments))

    # -- outbox -------------------------------------------------------------------------

    async def due_statuses(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        """Due group heads, each claimed for ``outbox_claim_seconds`` by this call."""
        now = _now(now)
        params = {"now": now, "limit": limit, "until": now + self._outbox_claim}
        async with self._tx() as conn:
            cur = await conn.execute(_DUE_SQL, params)
            rows = await cur.fetchall()
        entries = [(OUTBOX.load(row[:-1]), row[-1]) for row in rows]
        entries.sort(key=lambda e: (e[0].next_attempt_at, e[0].created_at, e[0].seq, e[1]))
        return [entry for entry, _ in entries]

    async def mark_sent(self, entry_id: OutboxId, now: datetime, outcome: str = "sent") -> None:
        if outcome not in ("sent", "skipped"):
            raise ValueError(f"mark_sent outcome must be 'sent' or 'skipped', not {outcome!r}")
        bump = 1 if outcome == "sent" else 0
        sql = (
            "UPDATE outbox SET outcome = %s, finished_at = %s, attempts = attempts + %s, "
            "claimed_until = NULL WHERE id = %s AND outcome = 'queued'"
        )
        await self._execute(sql, (outcome, _now(now), bump, entry_id))

    async def reschedule(
        self, entry_id: OutboxId, next_attempt_at: datetime, attempts: int, last_error: str
    ) -> None:
        sql = (
            "UPDATE outbox SET next_attempt_at = %s, attempts = %s, last_error = %s, "
            "claimed_until = NULL WHERE id = %s AND outcome = 'queued'"
        )
        await self._execute(sql, (_now(next_attempt_at), attempts, last_error, entry_id))

    async def give_up(self, entry_id: OutboxId, now: datetime, reason: str) -> None:
        sql = (
            "UPDATE outbox SET outcome = 'given_up', finished_at = %s, last_error = %s, "
            "claimed_until = NULL WHERE id = %s AND outcome = 'queued'"
        )
        await self._execute(sql, (_now(now), reason, entry_id))

    async def outbox_stats(self) -> OutboxStats:
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM outbox WHERE outcome = 'queued'), "
                "(SELECT count(*) FROM outbox WHERE outcome = 'given_up')"
            )
            counts = await cur.fetchone()
            assert counts is not None
            cur = await conn.execute(
                "SELECT finished_at, last_error, run_id FROM outbox WHERE outcome = 'given_up' "
                "ORDER BY finished_at DESC LIMIT 1"
            )
            row = await cur.fetchone()
        last = None
        if row is not None:
            last = GiveUp(at=row[0].astimezone(UTC), reason=row[1] or "", run_id=RunId(row[2]))
        return OutboxStats(queued=int(counts[0]), given_up=int(counts[1]), last_give_up=last)

    async def get_outbox(self, run_id: RunId) -> list[OutboxEntry]:
        sql = f"SELECT {OUTBOX.select} FROM outbox WHERE run_id = %s ORDER BY created_at, seq, pos"
        return await self._select(OUTBOX, sql, (run_id,))

    # -- environments -------------------------------------------------------------------

    async def get_environment(self, env_id: str) -> EnvironmentInstance | None:
        sql = f"SELECT {ENVIRONMENTS.select} FROM environments WHERE id = %s"
        found = await self._select(ENVIRONMENTS, sql, (env_id,))
        return found[0] if found else None

    async def list_environments(
        self, *, state: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[EnvironmentInstance]:
        sql, params = page_sql(ENVIRONMENTS, "created_at", (("state", state),), before, limit)
        return await self._select(ENVIRONMENTS, sql, params)

    async def find_reusable(
        self, workspace: str, name: str, context: str
    ) -> EnvironmentInstance | None:
        sql = (
            f"SELECT {ENVIRONMENTS.select} FROM environments WHERE workspace = %s AND name = %s "
            "AND context = %s AND state = ANY(%s::text[]) AND NOT teardown_requested "
            "ORDER BY created_at DESC LIMIT 1"
        )
        params = (workspace, name, context, list(REUSABLE_ENV_STATES))
        found = await self._select(ENVIRONMENTS, sql, params)
        return found[0] if found else None

    async def insert_environment(self, env: EnvironmentInstance) -> bool:
        """The live-key unique index settles two replicas inserting at once: one wins."""
        sql = f"{ENVIRONMENTS.insert} ON CONFLICT DO NOTHING"
        return await self._execute(sql, ENVIRONMENTS.values(env)) == 1

    async def update_environment(
        self, env: EnvironmentInstance, *, expect_state: EnvironmentState | None = None
    ) -> bool:
        sql, values = update_sql(ENVIRONMENTS, env, expect_state)
        async with self._tx() as conn:
            try:
                async with conn.transaction():  # a savepoint: a conflict is an answer here
                    return (await conn.execute(sql, values)).rowcount == 1
            except psycopg.errors.UniqueViolation:  # another live instance holds the key
                return False

    async def adjust_environment_users(
        self, env_id: EnvironmentId, delta: int, now: datetime
    ) -> EnvironmentInstance | None:
        now = _now(now)
        sql = (
            "UPDATE environments SET users = GREATEST(0, users + %s), last_used_at = %s, "
            "expires_at = %s + make_interval(secs => ttl_minutes * 60) WHERE id = %s "
            f"RETURNING {ENVIRONMENTS.select}"
        )
        found = await self._select(ENVIRONMENTS, sql, (delta, now, now, env_id))
        return found[0] if found else None

    async def lock_environment(
        self, env_id: EnvironmentId, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        """A conditional UPDATE: its row lock makes a racing replica re-check and lose."""
        now = _now(now)
        sql = (
            "UPDATE environments SET owner = %s, lock_until = %s WHERE id = %s AND "
            "(owner IS NULL OR owner = %s OR lock_until IS NULL OR lock_until < %s)"
        )
        params = (owner, now + timedelta(seconds=lease_seconds), env_id, owner, now)
        return await self._execute(sql, params) == 1

    async def take_environment(
        self, env_id: EnvironmentId, routing: Mapping[str, str], now: datetime
    ) -> EnvironmentInstance | None:
        """A conditional UPDATE: its row lock orders it against racing replicas."""
        now = _now(now)
        sql = (
            "UPDATE environments SET state = 'running', users = users + 1, last_used_at = %s, "
            "expires_at = %s + make_interval(secs => ttl_minutes * 60), routing = %s, "
            "owner = NULL, lock_until = NULL WHERE id = %s AND NOT teardown_requested "
            "AND error IS NULL AND state IN ('warm', 'cooling', 'running') "
            "AND (owner IS NULL OR lock_until IS NULL OR lock_until < %s) "
            f"RETURNING {ENVIRONMENTS.select}"
        )
        params = (now, now, _json(dict(routing)), env_id, now)
        found = await self._select(ENVIRONMENTS, sql, params)
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
        """The take (one conditional UPDATE on the live key, at most one row: the unique
        index; its row lock orders it against racing replicas, which re-check the
        conditions) and the key's read, pipelined in one transaction (one
        exchange with the server); the read is answered only when the UPDATE took nothing.
        A key with no record at all then gets ``provision`` (a second exchange); should
        another replica insert first (the live key's unique index), its record is listed."""
        at = _now(now)
        params = (users, at, at, _json(dict(routing)), workspace, name, context, provider,
                  provider_app_name, at, at)  # fmt: skip
        key = (workspace, name, context)
        async with self._tx(pipeline=True) as conn:
            taken = await conn.execute(_TAKE_REUSABLE_SQL, params)
            listed = await conn.execute(_FOR_KEY_SQL, key)
            row = await taken.fetchone()
            if row is not None:
                return ENVIRONMENTS.load(row), []
            records = [ENVIRONMENTS.load(r) for r in await listed.fetchall()]
            if records or provision is None:
                return None, records
            inserted = await conn.execute(
                f"{ENVIRONMENTS.insert} ON CONFLICT DO NOTHING RETURNING id",
                ENVIRONMENTS.values(provision))
            if await inserted.fetchone() is not None:
                return None, [provision]
            again = await conn.execute(_FOR_KEY_SQL, key)
            return None, [ENVIRONMENTS.load(r) for r in await again.fetchall()]

    async def environments_for_key(
        self, workspace: str, name: str, context: str
    ) -> list[EnvironmentInstance]:
        return await self._select(ENVIRONMENTS, _FOR_KEY_SQL, (workspace, name, context))

    async def expired_environments(self, now: datetime) -> list[EnvironmentInstance]:
        sql = (
            f"SELECT {ENVIRONMENTS.select} FROM environments WHERE state IN ('warm', 'cooling') "
            "AND expires_at <= %s AND users = 0 ORDER BY expires_at, id"
        )
        return await self._select(ENVIRONMENTS, sql, (_now(now),))

    async def environments_to_teardown(self) -> list[EnvironmentInstance]:
        sql = (
            f"SELECT {ENVIRONMENTS.select} FROM environments WHERE teardown_requested "
            "AND state <> 'destroyed' ORDER BY created_at, id"
        )
        return await self._select(ENVIRONMENTS, sql)

    # -- replicas -----------------------------------------------------------------------

    async def heartbeat_replica(self, name: str, revision: str | None, now: datetime) -> None:
        sql = (
            "INSERT INTO replicas (name, revision, seen_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET revision = excluded.revision, "
            "seen_at = excluded.seen_at"
        )
        await self._execute(sql, (name, revision, _now(now)))

    async def list_replicas(self, since: datetime) -> list[ReplicaInfo]:
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT name, revision, seen_at FROM replicas WHERE seen_at >= %s ORDER BY name",
                (_now(since),),
            )
            rows = await cur.fetchall()
        return [ReplicaInfo(name=n, revision=r, seen_at=s.astimezone(UTC)) for n, r, s in rows]

    # -- config broadcast (optional: only this store has it) -----------------------------

    async def notify_config(self, payload: str) -> None:
        """``NOTIFY testmesh_config, payload``: every listening replica gets it (sender too)."""
        await self._execute("SELECT pg_notify(%s, %s)", (CONFIG_CHANNEL, payload))

    async def listen_config(
        self, on_listening: Callable[[], None] | None = None
    ) -> AsyncIterator[str]:
        """Payloads of ``testmesh_config`` notifications, as they arrive, on a dedicated
        autocommit connection (a ``LISTEN`` belongs to its session, so not a pooled one).
        ``on_listening`` is called once the ``LISTEN`` is in place. Raises ``StoreError``
        when the connection fails or drops; cancelling the consumer closes it."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL LISTEN {CONFIG_CHANNEL}: {exc}") from exc
        try:
            async with conn:
                await conn.execute(f"LISTEN {CONFIG_CHANNEL}")
                if on_listening is not None:
                    on_listening()
                async for note in conn.notifies():
                    yield note.payload
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL LISTEN {CONFIG_CHANNEL}: {exc}") from exc


# -- transaction bodies -----------------------------------------------------------------


async def _count_pending(conn: Conn, cap: int) -> int:
    """Pending runs, counted up to ``cap + 1`` (enough to tell whether the cap is reached)."""
    cur = await conn.execute(_COUNT_PENDING_SQL, (max(cap, 0) + 1,))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _duplicate(
    conn: Conn, delivery: Delivery, original: str, original_runs: Sequence[str]
) -> RecordResult:
    runs = tuple(RunId(r) for r in original_runs)
    stored = replace(
        delivery, outcome="duplicate", reason=f"duplicate of delivery {original}", runs=runs
    )
    await conn.execute(DELIVERIES.insert, DELIVERIES.values(stored))
    return RecordResult(
        delivery=stored, run_ids=runs, duplicate=True, duplicate_of=DeliveryId(original)
    )


class _LostKeyRace(Exception):
    """Another replica committed the dedup key after this transaction looked: start over."""


async def _record_accepted(
    conn: Conn,
    delivery: Delivery,
    runs: tuple[Run, ...],
    window: datetime,
    received: datetime,
    max_queued: int,
) -> RecordResult:
    """Dedup, supersede, queue cap and insert, as ``SqliteStore`` does, safe across replicas.

    Pipelined in two batches (look, then write). Deliveries touching the same serial keys
    are serialised by an advisory lock taken first, so a new run supersedes a pending one
    another replica has just committed. The dedup key is claimed by an upsert on its primary
    key; when another replica committed it meanwhile, ``_LostKeyRace`` rolls back.
    """
    keyed = [r for r in runs if r.serial_key]
    if keyed:
        keys = sorted({r.serial_key for r in keyed})
        await conn.execute(_SERIAL_LOCKS_SQL, (SERIAL_KEY_LOCK_CLASS, keys))
    key = delivery.dedup_key
    peek = await conn.execute(_DUPLICATE_OF_SQL, (key, window)) if key else None
    candidates = [await conn.execute(_SUPERSEDE_SQL, (r.serial_key, r.queued_at)) for r in keyed]
    staying = max_queued - len(runs)  # pending runs that may stay besides the superseded
    pairs = ([r.serial_key for r in keyed], [r.queued_at for r in keyed])
    count = await conn.execute(_COUNT_STAYING_SQL, (*pairs, max(staying, 0) + 1))

    if peek is not None and (row := await peek.fetchone()) is not None:
        return await _duplicate(conn, delivery, row[0], row[1])
    superseded: list[tuple[RunId, Run]] = []
    for run, cur in zip(keyed, candidates, strict=True):
        superseded += [(RunId(old_id), run) for (old_id,) in await cur.fetchall()]
    counted = await count.fetchone()
    assert counted is not None
    if staying < 0 or int(counted[0]) > staying:
        stored = replace(
            delivery, outcome="rejected", reason="queue full", runs=(), http_status=429
        )
        await conn.execute(DELIVERIES.insert, DELIVERIES.values(stored))
        return RecordResult(delivery=stored, rejected="queue full")

    claim = (
        await conn.execute(_CLAIM_KEY_SQL, (key, delivery.id, received, window)) if key else None
    )
    run_ids = tuple(r.id for r in runs)
    stored = replace(delivery, runs=run_ids)
    cur = conn.cursor()
    await cur.execute(DELIVERIES.insert, DELIVERIES.values(stored))
    if runs:
        rows = [
            _run_values(
                r, status="pending", claimed_by=None, lease_until=None, delivery_id=delivery.id
            )
            for r in runs
        ]
        await cur.executemany(RUNS.insert, rows)
    for old_id, new in superseded:
        await cur.execute(
            "UPDATE runs SET status = 'cancelled', error = %s, completed_at = %s "
            "WHERE id = %s AND status = 'pending'",
            (f"superseded by run {new.id} (sha {new.short_sha})", new.queued_at, old_id),
        )
    if claim is not None and await claim.fetchone() is None:
        raise _LostKeyRace(key)
    return RecordResult(
        delivery=stored, run_ids=run_ids, superseded=tuple(old for old, _ in superseded)
    )


async def _claim(conn: Conn, replica: str, now: datetime, lease_until: datetime) -> Run | None:
    """Lock the oldest claimable pending run (skipping rows other replicas hold) and take it.

    Two replicas may lock different pending runs of one serial key at once; the unique
    index ``runs_one_running_per_key`` then fails the second UPDATE (in a savepoint), and
    that replica moves on to runs of other keys.
    """
    busy_keys: list[str] = []
    while True:
        cur = await conn.execute(_CLAIM_SQL, (busy_keys,))
        row = await cur.fetchone()
        if row is None:
            return None
        run = RUNS.load(row)
        update = (
            "UPDATE runs SET status = 'running', claimed_by = %s, lease_until = %s, "
            "started_at = COALESCE(started_at, %s) WHERE id = %s AND status = 'pending'"
        )
        params = (replica, lease_until, now, run.id)
        if not run.serial_key:
            await conn.execute(update, params)
        else:
            try:
                async with conn.transaction():
                    await conn.execute(update, params)
            except psycopg.errors.UniqueViolation:
                busy_keys.append(run.serial_key)
                continue
        return replace(
            run,
            status="running",
            claimed_by=replica,
            lease_until=lease_until,
            started_at=run.started_at or now,
        )


async def _interrupt(conn: Conn, run: Run, now: datetime, outbox_for: OutboxFor | None) -> Run:
    duration = None if run.started_at is None else (now - run.started_at) // _ONE_MS
    await conn.execute(
        "UPDATE runs SET status = 'failed', error = %s, completed_at = %s, duration_ms = %s, "
        "lease_until = NULL WHERE id = %s",
        (INTERRUPTED_ERROR, now, duration, run.id),
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
            await conn.cursor().executemany(OUTBOX.insert, [OUTBOX.values(e) for e in entries])
    return failed


async def _attach_reports(conn: Conn, runs: list[Run]) -> list[Run]:
    """Add what the outbox did to each run's ``status_report`` (derived, never stored)."""
    if not runs:
        return runs
    cur = await conn.execute(
        f"SELECT {OUTBOX.select} FROM outbox WHERE run_id = ANY(%s::text[]) "
        "ORDER BY created_at, seq, pos",
        ([r.id for r in runs],),
    )
    entries = [OUTBOX.load(row) for row in await cur.fetchall()]
    return with_reports(runs, entries)


__all__ = ["CONFIG_CHANNEL", "MIGRATIONS_DIR", "PostgresStore"]
