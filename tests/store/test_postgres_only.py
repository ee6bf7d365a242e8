"""PostgreSQL-only tests: several store instances (separate pools, as replicas) on one database.

Each race is run for real against the throwaway cluster of ``tests/pg.py``: dedup keys,
run claims, lease takeover, environment inserts and leases, the outbox claim, migrations.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from testmesh_reconciler.store import (
    FakeClock,
    RecordResult,
    Run,
    RunId,
    StoreError,
    create_store,
)
from testmesh_reconciler.store.postgres import MIGRATIONS_DIR, PostgresStore
from testmesh_reconciler.store.sqlite import migrations
from tests.store.test_store_contract import (
    BIG,
    make_delivery,
    make_entry,
    make_env,
    make_run,
    queue_run,
    record,
)

pytestmark = pytest.mark.postgres

REPLICAS = 3


@pytest.fixture
async def stores(pg_dsn: str) -> AsyncIterator[list[PostgresStore]]:
    """Three replicas' stores on one fresh database, opened (and migrated) at once."""
    made = [PostgresStore(pg_dsn, max_size=5) for _ in range(REPLICAS)]
    await asyncio.gather(*(s.open() for s in made))
    yield made
    for s in made:
        await s.close()


async def test_replicas_starting_at_once_migrate_once(
    stores: list[PostgresStore], pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [v for (v,) in rows] == [v for v, _, _ in migrations(MIGRATIONS_DIR)]
    assert await asyncio.gather(*(s.migrate() for s in stores)) == [[], [], []]


async def test_redeliveries_across_replicas_are_accepted_once(
    stores: list[PostgresStore], clock: FakeClock
) -> None:
    rng = random.Random(7)
    keys = [f"key-{i}" for i in range(450)]
    calls: list[tuple[str, int]] = [(key, i % REPLICAS) for i, key in enumerate(keys)]
    for key in rng.sample(keys, 50):  # 10% redelivered, through another replica
        first = keys.index(key) % REPLICAS
        calls.append((key, (first + rng.randrange(1, REPLICAS)) % REPLICAS))
    rng.shuffle(calls)

    async def deliver(key: str, replica: int) -> tuple[str, RecordResult]:
        run = make_run(clock, serial_key=f"rule|repo|{key}")
        return key, await record(stores[replica], clock, make_delivery(clock, key=key), [run])

    results = await asyncio.gather(*(deliver(key, replica) for key, replica in calls))
    by_key: dict[str, list[RecordResult]] = {}
    for key, result in results:
        by_key.setdefault(key, []).append(result)
    assert len(by_key) == 450
    for key, outcomes in by_key.items():
        winners = [r for r in outcomes if not r.duplicate]
        assert len(winners) == 1, key
        assert {r.run_ids for r in outcomes} == {winners[0].run_ids}
    assert (await stores[0].count_runs_by_status())["pending"] == 450
    delivered = await stores[1].list_deliveries(limit=1000)
    assert Counter(d.outcome for d in delivered) == {"accepted": 450, "duplicate": 50}


async def test_racing_claims_take_every_run_once(
    stores: list[PostgresStore], clock: FakeClock
) -> None:
    runs: list[Run] = []
    for i in range(60):  # independent runs: 40 with their own key, 20 without
        runs.append(make_run(clock, serial_key=f"own-{i}" if i % 3 else ""))
    for i in range(30):  # three keys shared by ten runs each: one of each may run at a time
        runs.append(make_run(clock, serial_key=f"shared-{i % 3}"))
    for run in runs:
        assert await stores[0].enqueue_run(run, max_queued=BIG)
        clock.advance(0.001)

    async def drain(store: PostgresStore, name: str) -> list[Run]:
        got: list[Run] = []
        while (run := await store.claim_run(name, clock.now(), 30)) is not None:
            got.append(run)
        return got

    claimed: list[Run] = []
    for _ in range(11):  # each round: race, check, finish what was claimed
        rounds = await asyncio.gather(*(drain(s, f"r{i}") for i, s in enumerate(stores)))
        this_round = [run for got in rounds for run in got]
        shared = Counter(r.serial_key for r in this_round if r.serial_key.startswith("shared"))
        assert all(count == 1 for count in shared.values())
        claimed += this_round
        for run in this_round:
            done = replace(run, status="completed", completed_at=clock.now())
            assert await stores[0].finish_run(done)
        clock.advance(1)

    ids = [r.id for r in claimed]
    assert len(ids) == len(set(ids)) == len(runs)
    assert {r.claimed_by for r in claimed} <= {"r0", "r1", "r2"}
    assert (await stores[2].count_runs_by_status())["completed"] == len(runs)


async def test_expired_lease_is_taken_over_by_another_replica(
    stores: list[PostgresStore], clock: FakeClock
) -> None:
    first, second, third = stores
    started = await queue_run(first, clock, serial_key="A")
    idle = await queue_run(first, clock, serial_key="B")
    assert {(await first.claim_run("r1", clock.now(), 30)).id for _ in range(2)} == {  # type: ignore[union-attr]
        started.id,
        idle.id,
    }
    await first.mark_started(started.id, clock.now())
    clock.advance(31)  # r1 stopped heart-beating

    recovered = await asyncio.gather(second.recover_expired(clock.now()),
                                     third.recover_expired(clock.now()))  # fmt: skip
    assert sorted(r.id for result in recovered for r in result.interrupted) == [started.id]
    assert sorted(i for result in recovered for i in result.requeued) == [idle.id]

    taken = await second.claim_run("r2", clock.now(), 30)
    assert taken is not None
    assert (taken.id, taken.claimed_by) == (idle.id, "r2")
    assert await first.heartbeat("r1", [idle.id, started.id], clock.now(), 30) == []
    stale = replace(taken, claimed_by="r1")
    assert not await first.save_progress(stale)
    assert not await first.finish_run(replace(stale, status="completed"))
    assert await second.heartbeat("r2", [idle.id], clock.now(), 30) == [idle.id]
    assert await second.finish_run(replace(taken, status="completed", completed_at=clock.now()))
    failed = await third.get_run(started.id)
    assert failed is not None
    assert failed.status == "failed"


async def test_environment_insert_and_lease_races_have_one_winner(
    stores: list[PostgresStore], clock: FakeClock
) -> None:
    for i in range(20):
        contenders = [make_env(clock, context=f"pr-{i}") for _ in stores]
        inserted = await asyncio.gather(
            *(s.insert_environment(env) for s, env in zip(stores, contenders, strict=True))
        )
        assert inserted.count(True) == 1
        winner = contenders[inserted.index(True)]
        found = await stores[0].find_reusable("default", "review", f"pr-{i}")
        assert found is not None
        assert found.id == winner.id

        locked = await asyncio.gather(
            *(s.lock_environment(winner.id, f"r{n}", clock.now(), 60) for n, s in enumerate(stores))
        )
        assert locked.count(True) == 1
        env = await stores[1].get_environment(winner.id)
        assert env is not None
        assert env.owner == f"r{locked.index(True)}"
    clock.advance(61)  # every lease expired: anyone may take them over
    assert await stores[2].lock_environment(winner.id, "r9", clock.now(), 60)


async def test_outbox_heads_go_to_one_replica_at_a_time(
    stores: list[PostgresStore], clock: FakeClock
) -> None:
    run = await queue_run(stores[0], clock)
    heads = [make_entry(clock, run.id, seq=0, state="pending", sha=f"sha{i}") for i in range(30)]
    finals = [make_entry(clock, run.id, seq=1, state="success", sha=f"sha{i}") for i in range(30)]
    await stores[0].add_outbox(heads + finals)

    handed = await asyncio.gather(*(s.due_statuses(clock.now()) for s in stores))
    ids = [e.id for got in handed for e in got]
    assert sorted(ids) == sorted(e.id for e in heads)  # each head to exactly one replica
    assert await stores[0].due_statuses(clock.now()) == []  # claimed, finals wait behind

    await stores[1].mark_sent(heads[0].id, clock.now())
    await stores[1].reschedule(heads[1].id, clock.now(), 1, "HTTP 502")
    due = {e.id for e in await stores[2].due_statuses(clock.now())}
    assert due == {finals[0].id, heads[1].id}
    clock.advance(61)  # the claims lapsed (a replica died mid-post): handed out again
    again = await stores[0].due_statuses(clock.now())
    assert {e.id for e in again} == {e.id for e in heads[2:]} | due


async def test_create_store_and_connection_errors(tmp_path: Path, pg_dsn: str) -> None:
    store = create_store(pg_dsn, data_dir=tmp_path)
    assert isinstance(store, PostgresStore)
    await store.open()
    assert await store.ping()
    await store.close()
    assert not await store.ping()

    unreachable = PostgresStore(
        "postgresql://testmesh:hunter2@127.0.0.1:1/nowhere", connect_timeout=0.5
    )
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as raised:
        await unreachable.open()
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in repr(unreachable)
    assert not await unreachable.ping()


async def test_superseding_is_serialised_per_key_across_replicas(
    stores: list[PostgresStore], clock: FakeClock
) -> None:
    """Runs of one key queued at once through three replicas: only the newest stays pending."""
    key = "rule|acme/shop|main"
    runs = [make_run(clock, serial_key=key, trigger_ref=f"{i:07x}") for i in range(30)]
    calls = [record(stores[i % REPLICAS], clock, make_delivery(clock), [run])
             for i, run in enumerate(runs)]  # fmt: skip
    results = await asyncio.gather(*calls)
    assert all(r.rejected is None for r in results)
    pending = await stores[0].list_runs(status="pending", limit=100)
    assert len(pending) == 1
    cancelled = await stores[0].list_runs(status="cancelled", limit=100)
    assert len(cancelled) == 29
    superseded = [i for r in results for i in r.superseded]
    assert sorted(superseded) == sorted(r.id for r in cancelled)
    assert RunId(pending[0].id) not in superseded
