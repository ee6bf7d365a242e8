"""The store contract: every ``Store`` implementation must pass these tests unchanged.

They run once per backend in ``conftest.BACKENDS``, on a fresh database, with a
``FakeClock``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testmesh_reconciler.store import (
    INTERRUPTED_ERROR,
    Delivery,
    DeliveryId,
    EnvironmentId,
    EnvironmentInstance,
    FakeClock,
    OutboxEntry,
    OutboxId,
    Run,
    RunId,
    Store,
    StoreError,
    new_id,
)
from testmesh_reconciler.store.sqlite import from_us, to_us
from tests.store.conftest import MakeStore

WINDOW = timedelta(seconds=3600)
BIG = 10_000


def make_delivery(clock: FakeClock, *, key: str | None = None, **fields: Any) -> Delivery:
    values: dict[str, Any] = {
        "id": DeliveryId(new_id()),
        "source": "gitea",
        "integration": "gitea-internal",
        "workspace": "default",
        "event": "push",
        "repo": "acme/shop",
        "branch": "main",
        "sha": "abcdef1234567890",
        "received_at": clock.now(),
        "payload_digest": "0" * 64,
        "dedup_key": key,
        "matched_rules": ("shop-smoke",),
        "http_status": 202,
    }
    values.update(fields)
    return Delivery(**values)


def make_run(clock: FakeClock, *, serial_key: str = "", **fields: Any) -> Run:
    values: dict[str, Any] = {
        "id": RunId(new_id()),
        "workspace": "default",
        "suite": "smoke",
        "suite_id": "6f1c1b8e-0000-5000-8000-000000000000",
        "rule": "shop-smoke",
        "trigger_type": "webhook",
        "trigger": {"sha": "abcdef1234567890", "repo": "acme/shop", "branch": "main"},
        "queued_at": clock.now(),
        "serial_key": serial_key,
        "revision": "c0ffee",
        "trigger_ref": "abcdef1234567890",
        "report_target": {"integration": "gitea-internal", "repository": "acme/shop"},
    }
    values.update(fields)
    return Run(**values)


def make_entry(
    clock: FakeClock, run_id: RunId, *, seq: int, state: str, sha: str = "abc", **fields: Any
) -> OutboxEntry:
    values: dict[str, Any] = {
        "id": OutboxId(new_id()),
        "run_id": run_id,
        "seq": seq,
        "integration_workspace": "default",
        "integration": "gitea-internal",
        "repo": "acme/shop",
        "sha": sha,
        "context": "testmesh/smoke",
        "state": state,
        "description": f"TestMesh: {state}",
        "target_url": f"http://testmesh/suite-runs/{run_id}",
        "created_at": clock.now(),
        "next_attempt_at": clock.now(),
    }
    values.update(fields)
    return OutboxEntry(**values)


def make_env(clock: FakeClock, *, context: str = "pr-1", **fields: Any) -> EnvironmentInstance:
    values: dict[str, Any] = {
        "id": EnvironmentId(new_id()),
        "workspace": "default",
        "name": "review",
        "context": context,
        "state": "provisioning",
        "provider": "argocd",
        "created_at": clock.now(),
        "provider_app_name": f"shop-{context}",
        "namespace": f"review-{context}",
        "routing": {"user-service": "http://user-service:8080"},
        "ttl_minutes": 60,
    }
    values.update(fields)
    return EnvironmentInstance(**values)


async def record(
    store: Store, clock: FakeClock, delivery: Delivery, runs: list[Run], *, max_queued: int = BIG
) -> Any:
    return await store.record_delivery(
        delivery, runs, dedup_window_start=clock.now() - WINDOW, max_queued=max_queued
    )


async def queue_run(store: Store, clock: FakeClock, **fields: Any) -> Run:
    """Record one accepted delivery with one run, then move the clock on a millisecond."""
    run = make_run(clock, **fields)
    result = await record(store, clock, make_delivery(clock), [run])
    assert result.run_ids == (run.id,)
    clock.advance(0.001)
    return run


# -- lifecycle --------------------------------------------------------------------------


async def test_migrations_are_idempotent(make_store: MakeStore) -> None:
    first = await make_store()
    assert await first.migrate() == []
    await first.close()
    second = await make_store()
    assert await second.migrate() == []
    assert await second.ping()


async def test_closed_store_refuses_work(store: Store, clock: FakeClock) -> None:
    await store.close()
    assert not await store.ping()
    with pytest.raises(StoreError):
        await store.get_run("nope")


async def test_naive_datetimes_are_refused(store: Store, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="naive"):
        await store.claim_run("r1", datetime(2024, 1, 1), 30)


# -- deliveries -------------------------------------------------------------------------


async def test_delivery_round_trip_and_json(store: Store, clock: FakeClock) -> None:
    delivery = make_delivery(clock, key="k1", pr_number=7, action="opened")
    run = make_run(clock, serial_key="shop-smoke|acme/shop|main")
    result = await record(store, clock, delivery, [run])
    assert not result.duplicate
    assert result.rejected is None
    assert result.run_ids == (run.id,)
    assert result.delivery == replace(delivery, runs=(run.id,))

    stored = await store.get_delivery(delivery.id)
    assert stored is not None
    assert stored == result.delivery
    body = stored.to_json()
    assert {"id", "source", "event", "repo", "sha", "received_at", "outcome", "reason",
            "runs"} <= body.keys()  # fmt: skip
    assert body["received_at"] == "2024-05-01T12:00:00Z"
    assert body["runs"] == [run.id]
    assert body["outcome"] == "accepted"
    assert body["matched_rules"] == ["shop-smoke"]

    loaded = await store.get_run(run.id)
    assert loaded is not None
    assert loaded == replace(run, delivery_id=delivery.id)
    run_json = loaded.to_json()
    for field in ("id", "suite", "suite_id", "workspace", "status", "trigger_type", "trigger",
                  "environment", "started_at", "completed_at", "duration_ms", "total_flows",
                  "passed_flows", "failed_flows", "trigger_ref", "revision", "error",
                  "status_report", "flows"):  # fmt: skip
        assert field in run_json
    assert run_json["status"] == "pending"
    assert run_json["trigger"]["branch"] == "main"
    assert await store.get_delivery("missing") is None
    assert await store.get_run("missing") is None


async def test_ignored_delivery_is_stored_without_runs(store: Store, clock: FakeClock) -> None:
    ignored = make_delivery(clock, outcome="ignored", reason="no rule matched", http_status=200)
    result = await record(store, clock, ignored, [])
    assert result.delivery == ignored
    assert await store.get_delivery(ignored.id) == ignored
    with pytest.raises(ValueError, match="starts no runs"):
        await record(store, clock, make_delivery(clock, outcome="ignored"), [make_run(clock)])


async def test_dedup_within_window(store: Store, clock: FakeClock) -> None:
    first_run = make_run(clock)
    first = await record(store, clock, make_delivery(clock, key="k"), [first_run])
    clock.advance(60)
    again = make_delivery(clock, key="k")
    second = await record(store, clock, again, [make_run(clock)])
    assert second.duplicate
    assert second.run_ids == (first_run.id,)
    assert second.duplicate_of == first.delivery.id
    stored = await store.get_delivery(again.id)
    assert stored is not None
    assert stored.outcome == "duplicate"
    assert stored.runs == (first_run.id,)
    assert (await store.count_runs_by_status())["pending"] == 1

    clock.advance(3600)  # the first is now outside the window
    third_run = make_run(clock)
    third = await record(store, clock, make_delivery(clock, key="k"), [third_run])
    assert not third.duplicate
    assert third.run_ids == (third_run.id,)
    clock.advance(1)
    fourth = await record(store, clock, make_delivery(clock, key="k"), [make_run(clock)])
    assert fourth.duplicate
    assert fourth.run_ids == (third_run.id,)


async def test_concurrent_distinct_deliveries_all_commit(store: Store, clock: FakeClock) -> None:
    pairs = [(make_delivery(clock, key=f"k{i}"), make_run(clock)) for i in range(200)]
    results = await asyncio.gather(*(record(store, clock, d, [r]) for d, r in pairs))
    assert all(not r.duplicate and r.rejected is None for r in results)
    assert (await store.count_runs_by_status())["pending"] == 200
    assert len(await store.list_deliveries(limit=1000)) == 200


async def test_concurrent_same_key_yields_one_winner(store: Store, clock: FakeClock) -> None:
    pairs = [(make_delivery(clock, key="same"), make_run(clock)) for _ in range(50)]
    results = await asyncio.gather(*(record(store, clock, d, [r]) for d, r in pairs))
    winners = [r for r in results if not r.duplicate]
    assert len(winners) == 1
    assert all(r.run_ids == winners[0].run_ids for r in results)
    assert (await store.count_runs_by_status())["pending"] == 1
    outcomes = [d.outcome for d in await store.list_deliveries(limit=100)]
    assert sorted(outcomes) == ["accepted"] + ["duplicate"] * 49


async def test_a_failing_call_does_not_undo_its_neighbours(store: Store, clock: FakeClock) -> None:
    good = [(make_delivery(clock), make_run(clock)) for _ in range(10)]
    bad = record(store, clock, make_delivery(clock, outcome="ignored"), [make_run(clock)])
    calls = [record(store, clock, d, [r]) for d, r in good[:5]]
    calls += [bad] + [record(store, clock, d, [r]) for d, r in good[5:]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [type(r).__name__ for r in results].count("ValueError") == 1
    for delivery, run in good:
        assert await store.get_delivery(delivery.id) is not None
        assert await store.get_run(run.id) is not None
    assert (await store.count_runs_by_status())["pending"] == 10


async def test_two_stores_racing_on_one_key(make_store: MakeStore, clock: FakeClock) -> None:
    """Two replicas on one database: the unique dedup key still yields one winner."""
    first, second = await make_store(), await make_store()
    calls = [
        record(s, clock, make_delivery(clock, key="raced"), [make_run(clock)])
        for _ in range(10)
        for s in (first, second)
    ]
    results = await asyncio.gather(*calls)
    winners = [r for r in results if not r.duplicate]
    assert len(winners) == 1
    assert {r.run_ids for r in results} == {winners[0].run_ids}
    assert (await second.count_runs_by_status())["pending"] == 1


async def test_queue_full_rejects_and_keeps_the_delivery(store: Store, clock: FakeClock) -> None:
    for _ in range(2):
        await record(store, clock, make_delivery(clock), [make_run(clock)], max_queued=2)
    refused_run = make_run(clock)
    refused = make_delivery(clock, key="k3")
    result = await record(store, clock, refused, [refused_run], max_queued=2)
    assert result.rejected == "queue full"
    assert result.run_ids == ()
    stored = await store.get_delivery(refused.id)
    assert stored is not None
    assert (stored.outcome, stored.reason, stored.runs, stored.http_status) == (
        "rejected", "queue full", (), 429,
    )  # fmt: skip
    assert await store.get_run(refused_run.id) is None
    # A rejected delivery does not hold its dedup key: the retry is accepted later.
    assert (await store.claim_run("r1", clock.now(), 30)) is not None
    again = await record(store, clock, make_delivery(clock, key="k3"), [make_run(clock)],
                         max_queued=2)  # fmt: skip
    assert not again.duplicate
    assert again.rejected is None
    assert not await store.enqueue_run(make_run(clock, trigger_type="manual"), max_queued=2)


async def test_supersede_pending_but_not_running(store: Store, clock: FakeClock) -> None:
    key = "shop-smoke|acme/shop|main"
    old = await queue_run(store, clock, serial_key=key)
    other = await queue_run(store, clock, serial_key="shop-smoke|acme/shop|dev")
    new = make_run(clock, serial_key=key, trigger_ref="1234567deadbeef")
    result = await record(store, clock, make_delivery(clock), [new])
    assert result.superseded == (old.id,)
    cancelled = await store.get_run(old.id)
    assert cancelled is not None
    assert cancelled.status == "cancelled"
    assert cancelled.error == f"superseded by run {new.id} (sha 1234567)"
    assert (await store.get_run(other.id)).status == "pending"  # type: ignore[union-attr]
    assert await store.get_outbox(old.id) == []  # a superseded run posted nothing

    claimed = await store.claim_run("r1", clock.now(), 30)
    assert claimed is not None
    assert claimed.id == other.id
    claimed = await store.claim_run("r1", clock.now(), 30)
    assert claimed is not None
    assert claimed.id == new.id
    newest = make_run(clock, serial_key=key)
    result = await record(store, clock, make_delivery(clock), [newest])
    assert result.superseded == ()
    assert (await store.get_run(new.id)).status == "running"  # type: ignore[union-attr]


async def test_claim_respects_order_and_serial_keys(store: Store, clock: FakeClock) -> None:
    a = await queue_run(store, clock, serial_key="K")
    first = await store.claim_run("r1", clock.now(), 30)
    assert first is not None
    assert first.id == a.id
    assert (first.status, first.claimed_by, first.started) == ("running", "r1", False)
    assert first.lease_until == clock.now() + timedelta(seconds=30)
    b = await queue_run(store, clock, serial_key="K")  # waits: a with K is running
    c = await queue_run(store, clock, serial_key="L")
    manual = make_run(clock, trigger_type="manual", rule=None)
    assert await store.enqueue_run(manual, max_queued=BIG)
    got = await store.claim_run("r2", clock.now(), 30)
    assert got is not None
    assert got.id == c.id
    got = await store.claim_run("r2", clock.now(), 30)
    assert got is not None
    assert got.id == manual.id
    assert await store.claim_run("r2", clock.now(), 30) is None

    done = replace(first, status="completed", completed_at=clock.now(), duration_ms=5)
    assert await store.finish_run(done)
    got = await store.claim_run("r2", clock.now(), 30)
    assert got is not None
    assert got.id == b.id
    counts = await store.count_runs_by_status()
    assert counts == {"pending": 0, "running": 3, "completed": 1, "failed": 0, "cancelled": 0}


async def test_claims_race_to_distinct_runs(store: Store, clock: FakeClock) -> None:
    for i in range(20):
        await queue_run(store, clock, serial_key=f"key{i}")
    claims = await asyncio.gather(*(store.claim_run(f"r{i}", clock.now(), 30) for i in range(30)))
    ids = [c.id for c in claims if c is not None]
    assert len(ids) == 20 == len(set(ids))


async def test_progress_finish_and_lost_claims(store: Store, clock: FakeClock) -> None:
    run = await queue_run(store, clock)
    claimed = await store.claim_run("r1", clock.now(), 30)
    assert claimed is not None
    await store.mark_started(claimed.id, clock.now())
    flows = ({"flow": "health", "status": "running",
              "steps": [{"id": "get", "status": "passed", "attempts": 1, "duration_ms": 3,
                         "error": None}]},)  # fmt: skip
    assert await store.save_progress(replace(claimed, flows=flows, total_flows=2))
    loaded = await store.get_run(run.id)
    assert loaded is not None
    assert loaded.started
    assert loaded.flows == flows
    assert loaded.total_flows == 2
    assert not await store.save_progress(replace(claimed, claimed_by="someone-else"))

    clock.advance(2)
    final = make_entry(clock, run.id, seq=1, state="success")
    finished = replace(loaded, status="completed", completed_at=clock.now(), duration_ms=2000,
                       passed_flows=2)  # fmt: skip
    assert not await store.finish_run(replace(finished, claimed_by="someone-else"), [final])
    assert await store.get_outbox(run.id) == []
    assert await store.finish_run(finished, [final])
    assert [e.id for e in await store.get_outbox(run.id)] == [final.id]
    assert not await store.finish_run(finished, [])  # already final: not ours any more
    with pytest.raises(ValueError, match="final status"):
        await store.finish_run(replace(finished, status="running"))


# -- leases and recovery ----------------------------------------------------------------


async def test_lease_expiry_recovery(store: Store, clock: FakeClock) -> None:
    started = await queue_run(store, clock, serial_key="A")
    idle = await queue_run(store, clock, serial_key="B")
    kept = await queue_run(store, clock, serial_key="C")
    for _ in range(3):
        assert await store.claim_run("r1", clock.now(), 30) is not None
    await store.mark_started(started.id, clock.now())
    clock.advance(20)
    assert await store.heartbeat("r1", [kept.id], clock.now(), 30) == [kept.id]
    assert await store.heartbeat("other", [kept.id], clock.now(), 30) == []
    assert (await store.recover_expired(clock.now())).requeued == ()

    clock.advance(15)  # started and idle expired; kept was renewed
    result = await store.recover_expired(clock.now())
    assert [r.id for r in result.interrupted] == [started.id]
    assert result.requeued == (idle.id,)
    failed = await store.get_run(started.id)
    assert failed is not None
    assert (failed.status, failed.error) == ("failed", INTERRUPTED_ERROR)
    assert failed.completed_at == clock.now()
    assert result.interrupted[0] == failed
    again = await store.get_run(idle.id)
    assert again is not None
    assert (again.status, again.claimed_by, again.lease_until) == ("pending", None, None)
    assert (await store.get_run(kept.id)).status == "running"  # type: ignore[union-attr]
    reclaimed = await store.claim_run("r2", clock.now(), 30)
    assert reclaimed is not None
    assert reclaimed.id == idle.id


async def test_recovery_hands_over_the_environments_runs_held(
        store: Store, clock: FakeClock) -> None:
    """Each recovered run's environment is reported once, for the caller to give back; a
    requeued run forgets it (it acquires afresh), an interrupted one keeps it on record."""
    started = await queue_run(store, clock, serial_key="A")
    waiting = await queue_run(store, clock, serial_key="B")
    bare = await queue_run(store, clock, serial_key="C")
    claimed = [await store.claim_run("r1", clock.now(), 30) for _ in range(3)]
    by_id = {run.id: run for run in claimed if run is not None}
    assert set(by_id) == {started.id, waiting.id, bare.id}
    for run, instance in ((started, "env-1"), (waiting, "env-2")):
        held = replace(by_id[run.id], environment_instance=EnvironmentId(instance))
        assert await store.save_progress(held)
    await store.mark_started(started.id, clock.now())

    clock.advance(31)
    result = await store.recover_expired(clock.now())
    assert sorted(result.environments) == sorted([(started.id, "env-1"), (waiting.id, "env-2")])
    assert [r.environment_instance for r in result.interrupted] == ["env-1"]
    requeued = await store.get_run(waiting.id)
    assert requeued is not None
    assert (requeued.status, requeued.environment_instance) == ("pending", None)
    assert (await store.recover_expired(clock.now())).environments == ()  # once only


async def test_startup_recovery_of_own_claims(store: Store, clock: FakeClock) -> None:
    mine = await queue_run(store, clock, serial_key="A")
    theirs = await queue_run(store, clock, serial_key="B")
    assert (await store.claim_run("me", clock.now(), 30)).id == mine.id  # type: ignore[union-attr]
    assert (await store.claim_run("you", clock.now(), 30)).id == theirs.id  # type: ignore[union-attr]
    await store.mark_started(mine.id, clock.now())

    def outbox_for(run: Run) -> list[OutboxEntry]:
        return [make_entry(clock, run.id, seq=1, state="error")]

    result = await store.recover_expired(clock.now(), replica="me", outbox_for=outbox_for)
    assert [r.id for r in result.interrupted] == [mine.id]
    assert [e.state for e in await store.get_outbox(mine.id)] == ["error"]
    assert (await store.get_run(theirs.id)).status == "running"  # type: ignore[union-attr]


# -- outbox -----------------------------------------------------------------------------


async def test_outbox_keeps_order_per_group(store: Store, clock: FakeClock) -> None:
    run = await queue_run(store, clock)
    pending = make_entry(clock, run.id, seq=0, state="pending")
    await store.add_outbox([pending])
    clock.advance(1)
    final = make_entry(clock, run.id, seq=1, state="success")
    other = make_entry(clock, run.id, seq=0, state="pending", sha="def")
    await store.add_outbox([final, other])
    due = await store.due_statuses(clock.now())
    assert [e.id for e in due] == [pending.id, other.id]

    clock.advance(1)
    await store.reschedule(pending.id, clock.now() + timedelta(seconds=30), 1, "HTTP 502")
    await store.mark_sent(other.id, clock.now())
    assert await store.due_statuses(clock.now()) == []  # final waits behind its pending

    clock.advance(30)
    due = await store.due_statuses(clock.now())
    assert [(e.id, e.attempts, e.last_error) for e in due] == [(pending.id, 1, "HTTP 502")]
    await store.mark_sent(pending.id, clock.now())
    due = await store.due_statuses(clock.now())
    assert [e.id for e in due] == [final.id]
    await store.mark_sent(final.id, clock.now(), outcome="skipped")
    assert await store.due_statuses(clock.now()) == []
    outcomes = [(e.state, e.outcome, e.attempts) for e in await store.get_outbox(run.id)]
    assert outcomes == [("pending", "sent", 2), ("pending", "sent", 1), ("success", "skipped", 0)]
    with pytest.raises(ValueError, match="sent"):
        await store.mark_sent(final.id, clock.now(), outcome="given_up")


async def test_outbox_give_up_bookkeeping(store: Store, clock: FakeClock) -> None:
    run = await queue_run(store, clock)
    assert (await store.outbox_stats()).to_json() == {
        "queued": 0, "given_up": 0, "last_give_up": None,
    }  # fmt: skip
    pending = make_entry(clock, run.id, seq=0, state="pending")
    final = make_entry(clock, run.id, seq=1, state="failure")
    await store.add_outbox([pending, final])
    assert (await store.outbox_stats()).queued == 2
    clock.advance(5)
    await store.give_up(pending.id, clock.now(), "HTTP 404: repository not found")
    stats = await store.outbox_stats()
    assert (stats.queued, stats.given_up) == (1, 1)
    assert stats.last_give_up is not None
    assert stats.last_give_up.to_json() == {
        "at": "2024-05-01T12:00:05.001000Z",
        "reason": "HTTP 404: repository not found",
        "run_id": run.id,
    }
    # Giving up the pending lets the final go; the give-up is recorded on the run.
    assert [e.id for e in await store.due_statuses(clock.now())] == [final.id]
    loaded = await store.get_run(run.id)
    assert loaded is not None
    report = loaded.status_report
    assert report["given_up"]["reason"] == "HTTP 404: repository not found"
    assert [s["outcome"] for s in report["statuses"]] == ["given_up", "queued"]
    # A runner writing its own stale copy keeps the derived record intact.
    assert await store.claim_run("r1", clock.now(), 30) is not None
    assert await store.save_progress(replace(loaded, claimed_by="r1", status_report={"x": 1}))
    report = (await store.get_run(run.id)).status_report  # type: ignore[union-attr]
    assert report["x"] == 1
    assert "given_up" in report


# -- listing ----------------------------------------------------------------------------


async def test_list_deliveries_paging_and_filters(store: Store, clock: FakeClock) -> None:
    ids = []
    for i in range(25):
        source = "argocd" if i % 5 == 0 else "gitea"
        delivery = make_delivery(clock, source=source, repo=f"acme/r{i % 2}",
                                 outcome="ignored" if i % 3 == 0 else "accepted")  # fmt: skip
        await record(store, clock, delivery, [])
        ids.append(delivery.id)
        clock.advance(1)
    newest_first = ids[::-1]
    page1 = await store.list_deliveries(limit=10)
    assert [d.id for d in page1] == newest_first[:10]
    page2 = await store.list_deliveries(limit=10, before=page1[-1].id)
    assert [d.id for d in page2] == newest_first[10:20]
    page3 = await store.list_deliveries(limit=10, before=page2[-1].id)
    assert [d.id for d in page3] == newest_first[20:]
    assert await store.list_deliveries(before="unknown") == []

    argocd = await store.list_deliveries(source="argocd")
    assert [d.id for d in argocd] == [ids[i] for i in (20, 15, 10, 5, 0)]
    both = await store.list_deliveries(source="gitea", repo="acme/r1", outcome="ignored")
    assert [d.id for d in both] == [ids[i] for i in (21, 9, 3)]
    page = await store.list_deliveries(source="argocd", limit=2, before=ids[15])
    assert [d.id for d in page] == [ids[10], ids[5]]


async def test_list_runs_paging_and_filters(store: Store, clock: FakeClock) -> None:
    same_time = [make_run(clock, suite="smoke" if i % 2 else "full") for i in range(6)]
    await record(store, clock, make_delivery(clock), same_time)  # equal queued_at: id breaks ties
    clock.advance(1)
    later = await queue_run(store, clock, workspace="other", suite="smoke")
    expected = [later.id, *sorted((r.id for r in same_time), reverse=True)]
    assert [r.id for r in await store.list_runs()] == expected
    page1 = await store.list_runs(limit=3)
    page2 = await store.list_runs(limit=3, before=page1[-1].id)
    page3 = await store.list_runs(limit=3, before=page2[-1].id)
    assert [r.id for r in page1 + page2 + page3] == expected
    assert page3[-1].id == expected[-1]
    assert len(page3) == 1

    smoke = await store.list_runs(workspace="default", suite="smoke")
    assert {r.id for r in smoke} == {r.id for r in same_time if r.suite == "smoke"}
    assert [r.id for r in await store.list_runs(workspace="other")] == [later.id]
    await store.claim_run("r1", clock.now(), 30)
    running = await store.list_runs(status="running")
    assert len(running) == 1
    assert running[0].id in {r.id for r in same_time}


# -- environments -----------------------------------------------------------------------


async def test_environment_compare_and_set(store: Store, clock: FakeClock) -> None:
    env = make_env(clock)
    assert await store.insert_environment(env)
    assert not await store.insert_environment(make_env(clock))  # same live key: one winner
    assert await store.get_environment(env.id) == env
    assert await store.find_reusable("default", "review", "pr-1") == env
    assert await store.find_reusable("default", "review", "pr-2") is None

    warm = replace(env, state="warm", last_used_at=clock.now(),
                   expires_at=clock.now() + timedelta(minutes=60))  # fmt: skip
    assert await store.update_environment(warm, expect_state="provisioning")
    assert not await store.update_environment(replace(warm, state="destroyed"),
                                              expect_state="provisioning")  # fmt: skip
    assert (await store.get_environment(env.id)).state == "warm"  # type: ignore[union-attr]

    held = await store.adjust_environment_users(env.id, 1, clock.now())
    assert held is not None
    assert held.users == 1
    clock.advance(3601)
    assert await store.expired_environments(clock.now()) == []  # a run holds it
    released = await store.adjust_environment_users(env.id, -1, clock.now())
    assert released is not None
    assert released.users == 0
    assert released.expires_at == clock.now() + timedelta(minutes=60)
    clock.advance(3600)
    assert [e.id for e in await store.expired_environments(clock.now())] == [env.id]

    assert await store.lock_environment(env.id, "r1", clock.now(), 60)
    assert not await store.lock_environment(env.id, "r2", clock.now(), 60)
    assert await store.lock_environment(env.id, "r1", clock.now(), 60)  # renew
    clock.advance(61)
    assert await store.lock_environment(env.id, "r2", clock.now(), 60)  # expired lease

    tearing = replace(released, teardown_requested=True, owner="r2",
                      lock_until=clock.now() + timedelta(seconds=60))  # fmt: skip
    assert await store.update_environment(tearing, expect_state="warm")
    assert [e.id for e in await store.environments_to_teardown()] == [env.id]
    assert await store.find_reusable("default", "review", "pr-1") is None
    clock.advance(1)
    successor = make_env(clock)  # a new instance may start while the old one is torn down
    assert await store.insert_environment(successor)
    assert await store.update_environment(replace(tearing, state="destroyed"))
    assert await store.environments_to_teardown() == []

    listed = await store.list_environments()
    assert [e.id for e in listed] == [successor.id, env.id]  # newest first, destroyed too
    assert [e.id for e in await store.list_environments(state="destroyed")] == [env.id]
    assert [e.id for e in await store.list_environments(before=successor.id)] == [env.id]
    body = listed[1].to_json()
    assert {"id", "name", "workspace", "context", "state", "provider_app_name", "namespace",
            "routing", "last_used_at", "expires_at", "error"} <= body.keys()  # fmt: skip


async def test_take_environment_in_one_update(store: Store, clock: FakeClock) -> None:
    env = make_env(clock)
    assert await store.insert_environment(env)
    routing = {"user-service": "http://users.pr-1:8080"}
    assert await store.take_environment(env.id, routing, clock.now()) is None  # provisioning
    warm = replace(env, state="warm", last_used_at=clock.now(),
                   expires_at=clock.now() + timedelta(minutes=60))  # fmt: skip
    assert await store.update_environment(warm, expect_state="provisioning")
    clock.advance(30)
    taken = await store.take_environment(env.id, routing, clock.now())
    assert taken is not None
    assert (taken.state, taken.users, dict(taken.routing)) == ("running", 1, routing)
    assert taken.last_used_at == clock.now()
    assert taken.expires_at == clock.now() + timedelta(minutes=60)
    assert (taken.owner, taken.lock_until) == (None, None)
    assert await store.get_environment(env.id) == taken
    again = await store.take_environment(env.id, routing, clock.now())  # shared while running
    assert again is not None and again.users == 2

    assert await store.lock_environment(env.id, "other", clock.now(), 60)  # a live lease
    assert await store.take_environment(env.id, routing, clock.now()) is None
    clock.advance(61)  # the lease ran out
    assert (await store.take_environment(env.id, routing, clock.now())).users == 3  # type: ignore[union-attr]

    for blocked in (replace(again, error="provisioning failed: boom"),
                    replace(again, teardown_requested=True),
                    replace(again, state="destroyed")):  # fmt: skip
        current = await store.get_environment(env.id)
        assert current is not None
        assert await store.update_environment(replace(blocked, users=current.users))
        assert await store.take_environment(env.id, routing, clock.now()) is None
        assert (await store.get_environment(env.id)).users == 3  # type: ignore[union-attr]
    assert await store.take_environment(EnvironmentId(new_id()), routing, clock.now()) is None


async def test_take_or_list_finds_and_takes_in_one_update(store: Store,
                                                         clock: FakeClock) -> None:
    routing = {"user-service": "http://users.pr-1:8080"}
    app = {"provider": "argocd", "provider_app_name": "shop-pr-1"}

    async def take(context: str = "pr-1", **kw: Any) -> EnvironmentInstance | None:
        taken, _ = await store.take_or_list("default", "review", context, routing,
                                            clock.now(), **{**app, **kw})  # fmt: skip
        return taken

    assert await take() is None  # no record at all
    env = make_env(clock)
    assert await store.insert_environment(env)
    assert await take() is None  # provisioning
    warm = replace(env, state="warm", last_used_at=clock.now(),
                   expires_at=clock.now() + timedelta(minutes=60))  # fmt: skip
    assert await store.update_environment(warm, expect_state="provisioning")
    assert await take(context="pr-2") is None  # another key
    assert await take(provider_app_name="shop-other") is None  # the declaration changed
    assert await take(provider="static") is None
    clock.advance(30)
    taken = await take()
    assert taken is not None
    assert taken.id == env.id
    assert (taken.state, taken.users, dict(taken.routing)) == ("running", 1, routing)
    assert taken.last_used_at == clock.now()
    assert taken.expires_at == clock.now() + timedelta(minutes=60)
    assert (taken.owner, taken.lock_until) == (None, None)
    assert await store.get_environment(env.id) == taken
    clock.advance(7200)  # a running record is shared whatever its TTL
    again = await take()
    assert again is not None and again.users == 2

    assert await store.lock_environment(env.id, "other", clock.now(), 60)  # a live lease
    assert await take() is None
    clock.advance(61)
    assert (await take()).users == 3  # type: ignore[union-attr]

    # Idle again: within its TTL it is taken, at exactly last_used_at + TTL it is not.
    stored = await store.get_environment(env.id)
    assert stored is not None
    idle = replace(stored, state="warm", users=0, last_used_at=clock.now())
    assert await store.update_environment(idle)
    clock.advance(3599)
    assert (await take()).users == 1  # type: ignore[union-attr]
    cooling = replace(idle, state="cooling", last_used_at=clock.now() - timedelta(minutes=60))
    assert await store.update_environment(cooling)
    assert await take() is None  # expired: the caller provisions it again
    assert await store.update_environment(replace(cooling, last_used_at=clock.now()))
    assert (await take()).users == 1  # type: ignore[union-attr]

    for blocked in (replace(cooling, error="provisioning failed: boom"),
                    replace(cooling, teardown_requested=True),
                    replace(cooling, state="destroyed")):  # fmt: skip
        assert await store.update_environment(replace(blocked, last_used_at=clock.now()))
        before = await store.get_environment(env.id)
        assert await take() is None
        assert await store.get_environment(env.id) == before  # nothing written

    static = make_env(clock, context="pr-9", provider="static", provider_app_name=None,
                      state="warm", last_used_at=clock.now())  # fmt: skip
    assert await store.insert_environment(static)
    found = await take(context="pr-9", provider="static", provider_app_name=None)
    assert found is not None and found.id == static.id


async def test_take_or_list_takes_or_returns_the_key(store: Store, clock: FakeClock) -> None:
    routing = {"user-service": "http://users.pr-1:8080"}

    async def take_or_list(**kw: Any) -> tuple[EnvironmentInstance | None,
                                               list[EnvironmentInstance]]:
        args = {"context": "pr-1", "provider": "argocd", "provider_app_name": "shop-pr-1",
                **kw}
        return await store.take_or_list("default", "review", args.pop("context"), routing,
                                        clock.now(), **args)

    assert await take_or_list() == (None, [])  # no record at all
    gone = make_env(clock, state="destroyed")
    assert await store.insert_environment(gone)
    clock.advance(1)
    env = make_env(clock)
    assert await store.insert_environment(env)
    assert await take_or_list() == (None, [env])  # provisioning: listed, nothing written
    warm = replace(env, state="warm", last_used_at=clock.now(),
                   expires_at=clock.now() + timedelta(minutes=60))  # fmt: skip
    assert await store.update_environment(warm, expect_state="provisioning")
    assert await take_or_list(provider_app_name="shop-other") == (None, [warm])
    assert await take_or_list(context="pr-2") == (None, [])
    clock.advance(30)
    taken, records = await take_or_list()
    assert records == []
    assert taken is not None and taken.id == env.id
    assert (taken.state, taken.users, dict(taken.routing)) == ("running", 1, routing)
    assert taken.last_used_at == clock.now()
    assert await store.get_environment(env.id) == taken
    cooling = replace(taken, state="cooling", users=0,
                      last_used_at=clock.now() - timedelta(minutes=60))  # fmt: skip
    assert await store.update_environment(cooling)
    assert await take_or_list() == (None, [cooling])  # expired: the caller provisions it


async def test_take_or_list_counts_users_and_inserts_a_new_key(store: Store,
                                                              clock: FakeClock) -> None:
    """``users`` takes for several runs at once; ``provision`` is inserted only for a key
    with no record that is not destroyed, and is then the one record listed."""
    routing = {"user-service": "http://users.pr-1:8080"}

    async def take_or_list(context: str = "pr-1", **kw: Any) -> tuple[
            EnvironmentInstance | None, list[EnvironmentInstance]]:
        return await store.take_or_list("default", "review", context, routing, clock.now(),
                                        provider="argocd",
                                        provider_app_name=f"shop-{context}", **kw)

    gone = make_env(clock, state="destroyed")
    assert await store.insert_environment(gone)
    clock.advance(1)
    new = make_env(clock)
    assert await take_or_list(users=3, provision=new) == (None, [new])
    assert await store.get_environment(new.id) == new
    other = make_env(clock)
    assert await take_or_list(provision=other) == (None, [new])  # provisioning: listed
    assert await store.get_environment(other.id) is None

    warm = replace(new, state="warm", owner=None, lock_until=None, last_used_at=clock.now())
    assert await store.update_environment(warm)
    taken, records = await take_or_list(users=3, provision=other)
    assert records == [] and taken is not None and taken.id == new.id
    assert (taken.state, taken.users) == ("running", 3)
    assert await store.get_environment(other.id) is None

    for blocking in (replace(taken, teardown_requested=True), replace(taken, state="cold")):
        assert await store.update_environment(blocking)
        assert await take_or_list(provision=other) == (None, [blocking])  # not replaced
        assert await store.get_environment(other.id) is None


async def test_environments_for_key(store: Store, clock: FakeClock) -> None:
    assert await store.environments_for_key("default", "review", "pr-1") == []
    gone = make_env(clock, state="destroyed")
    assert await store.insert_environment(gone)
    clock.advance(1)
    tearing = make_env(clock, state="warm", teardown_requested=True)
    assert await store.insert_environment(tearing)
    clock.advance(1)
    live = make_env(clock)
    assert await store.insert_environment(live)
    assert await store.insert_environment(make_env(clock, context="pr-2"))
    found = await store.environments_for_key("default", "review", "pr-1")
    assert [e.id for e in found] == [live.id, tearing.id]  # not destroyed, newest first
    assert found == [live, tearing]
    assert await store.environments_for_key("other", "review", "pr-1") == []


async def test_replicas(store: Store, clock: FakeClock) -> None:
    await store.heartbeat_replica("a", "rev1", clock.now())
    clock.advance(60)
    await store.heartbeat_replica("b", "rev1", clock.now())
    await store.heartbeat_replica("a", "rev2", clock.now())
    clock.advance(10)
    await store.heartbeat_replica("c", None, clock.now() - timedelta(seconds=300))
    seen = await store.list_replicas(clock.now() - timedelta(seconds=30))
    assert [r.to_json() for r in seen] == [
        {"name": "a", "revision": "rev2", "seen_at": "2024-05-01T12:01:00Z"},
        {"name": "b", "revision": "rev1", "seen_at": "2024-05-01T12:01:00Z"},
    ]


# -- durability -------------------------------------------------------------------------


async def test_committed_data_survives_reopen(make_store: MakeStore, clock: FakeClock) -> None:
    store = await make_store()
    delivery = make_delivery(clock, key="durable")
    run = make_run(clock)
    await record(store, clock, delivery, [run])
    tasks = [asyncio.create_task(record(store, clock, make_delivery(clock), [make_run(clock)]))
             for _ in range(20)]  # fmt: skip
    await asyncio.sleep(0)  # let the tasks hand their work over, then close at once
    await store.close()
    assert all(t.done() and t.result().rejected is None for t in tasks)

    reopened = await make_store()
    assert (await reopened.get_delivery(delivery.id)) is not None
    assert (await reopened.get_run(run.id)) is not None
    assert (await reopened.count_runs_by_status())["pending"] == 21
    dup = await record(reopened, clock, make_delivery(clock, key="durable"), [make_run(clock)])
    assert dup.duplicate
    assert dup.run_ids == (run.id,)


KILL_CHILD = """
import asyncio, sys
from datetime import datetime, timedelta, timezone
from testmesh_reconciler.store import Delivery, Run, SqliteStore  # noqa: F401
from testmesh_reconciler.store.postgres import PostgresStore  # noqa: F401

async def main():
    store = {store_source}
    await store.open()
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    delivery = Delivery(id="killed-delivery", source="gitea", workspace="default",
                        event="push", repo="acme/shop", received_at=now,
                        payload_digest="0" * 64, dedup_key="kill")
    run = Run(id="killed-run", workspace="default", suite="smoke", suite_id="x",
              trigger_type="webhook", queued_at=now)
    await store.record_delivery(delivery, [run], dedup_window_start=now - timedelta(hours=1),
                                max_queued=10)
    print("committed", flush=True)
    sys.stdin.read()  # wait to be killed; never closes the store

asyncio.run(main())
"""


def _write_then_kill(store_source: str) -> str:
    code = textwrap.dedent(KILL_CHILD).format(store_source=store_source)
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        line = child.stdout.readline()
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    return line.strip()


async def test_commit_survives_sigkill(
    make_store: MakeStore, store_source: str, clock: FakeClock
) -> None:
    assert await asyncio.to_thread(_write_then_kill, store_source) == "committed"
    store = await make_store()
    delivery = await store.get_delivery("killed-delivery")
    assert delivery is not None
    assert delivery.runs == ("killed-run",)
    assert (await store.get_run("killed-run")).status == "pending"  # type: ignore[union-attr]


# -- codec ------------------------------------------------------------------------------


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                    timezones=st.just(UTC)))  # fmt: skip
def test_timestamps_round_trip_exactly(value: datetime) -> None:
    assert from_us(to_us(value)) == value
