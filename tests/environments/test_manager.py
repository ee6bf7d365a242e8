"""Acceptance tests of the environment lifecycle: ``EnvironmentManager`` against the fake
Argo CD over real HTTP, a SQLite store in ``tmp_path`` and a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from testmesh_reconciler.config.frozen import FrozenDict
from testmesh_reconciler.config.model import Snapshot
from testmesh_reconciler.environments import Acquired, EnvironmentManager, EnvironmentUnavailable
from testmesh_reconciler.store import EnvironmentInstance, FakeClock

from ..testing.fake_argocd import FakeArgoCD
from .conftest import PR_VARS, MakeManager, Sleeper

APP = "shop-pr-7"


async def acquire(manager: EnvironmentManager, snapshot: Snapshot, name: str = "review",
                  run_id: str = "run-1", **variables: str) -> Acquired:
    return await manager.acquire(snapshot=snapshot, workspace="default", name=name,
                                 variables={**PR_VARS, **variables}, run_id=run_id)


async def state_and_users(manager: EnvironmentManager, acquired: Acquired
                          ) -> tuple[str, int] | None:
    """The stored (state, users) of the acquired environment; ``None`` if it has no record."""
    record = await manager.store.get_environment(acquired.instance_id or "")
    return None if record is None else (record.state, record.users)


async def test_first_sync_provisions_and_waits_through_progressing(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD,
        sleeper: Sleeper) -> None:
    acquired = await acquire(manager, snapshot)
    assert argocd.creates[APP] == 1 and argocd.syncs[APP] == 1
    assert argocd.state_of(APP).health == "Healthy"
    assert sleeper.total > 0  # polled through Progressing on the fake clock
    assert acquired.routing == {
        "user-service": "http://user-service.review-pr-7.svc.cluster.local:8080"}
    assert acquired.context == "pr-7" and acquired.name == "review"
    created = argocd.apps[APP].body
    assert created["spec"]["destination"]["namespace"] == "review-pr-7"
    assert created["spec"]["source"]["targetRevision"] == "feature-x"
    record = await manager.store.get_environment(acquired.instance_id or "")
    assert record is not None
    assert (record.state, record.users, record.context) == ("running", 1, "pr-7")
    assert record.provider_app_name == APP and record.namespace == "review-pr-7"
    await manager.release(acquired, failed=False)
    record = await manager.store.get_environment(acquired.instance_id or "")
    assert record is not None and (record.state, record.users) == ("warm", 0)
    assert record.ttl_minutes == 60.0


async def test_second_trigger_within_ttl_reuses(manager: EnvironmentManager, snapshot: Snapshot,
                                                argocd: FakeArgoCD, clock: FakeClock) -> None:
    first = await acquire(manager, snapshot)
    await manager.release(first, failed=True)
    clock.advance(59 * 60)
    second = await acquire(manager, snapshot, run_id="run-2", sha="f" * 40)
    assert second.instance_id == first.instance_id
    assert argocd.creates[APP] == 1 and argocd.syncs[APP] == 1
    assert manager.provisionings == 1
    await manager.release(second, failed=False)


async def test_after_ttl_reaped_then_provisioned_again(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD,
        clock: FakeClock) -> None:
    first = await acquire(manager, snapshot)
    await manager.release(first, failed=False)
    clock.advance(30 * 60)
    assert await manager.reap_once(clock.now()) == 0
    clock.advance(30 * 60)  # exactly at expires_at: expired
    assert await manager.reap_once(clock.now()) == 1
    assert argocd.deletes[APP] == 1 and argocd.deleted[0].cascade == "true"
    record = await manager.store.get_environment(first.instance_id or "")
    assert record is not None and record.state == "destroyed"
    again = await acquire(manager, snapshot, run_id="run-2")
    assert again.instance_id != first.instance_id
    assert argocd.creates[APP] == 2 and manager.provisionings == 2


async def test_expired_but_not_reaped_is_synced_again_in_place(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD,
        clock: FakeClock) -> None:
    first = await acquire(manager, snapshot)
    await manager.release(first, failed=False)
    clock.advance(61 * 60)
    again = await acquire(manager, snapshot, run_id="run-2")
    assert again.instance_id == first.instance_id
    assert argocd.creates[APP] == 1 and argocd.syncs[APP] == 2 and argocd.deletes[APP] == 0


async def test_concurrent_acquisitions_provision_once(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    results = await asyncio.gather(*(acquire(manager, snapshot, run_id=f"run-{i}")
                                     for i in range(5)))
    assert {r.instance_id for r in results} == {results[0].instance_id}
    assert argocd.creates[APP] == 1 and argocd.syncs[APP] == 1
    assert await state_and_users(manager, results[0]) == ("running", 5)
    for acquired in results[:-1]:
        await manager.release(acquired, failed=False)
    assert await state_and_users(manager, results[0]) == ("running", 1)
    await manager.release(results[-1], failed=False)
    assert await state_and_users(manager, results[0]) == ("warm", 0)


async def test_a_burst_for_one_key_costs_one_store_call(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of one key arriving together share one ``take_or_list``: for a new key it
    inserts the provisioning record, for a warm one it counts them all as users."""
    calls: list[int] = []
    take = manager.store.take_or_list

    async def counted(*args: Any, **kw: Any) -> Any:
        calls.append(kw["users"])
        return await take(*args, **kw)

    monkeypatch.setattr(manager.store, "take_or_list", counted)
    monkeypatch.setattr(manager.store, "insert_environment", None)  # not needed any more
    first = await asyncio.gather(*(acquire(manager, snapshot, run_id=f"run-{i}")
                                   for i in range(5)))
    assert calls == [5] and manager.provisionings == 1 and argocd.creates[APP] == 1
    assert await state_and_users(manager, first[0]) == ("running", 5)
    for acquired in first:
        await manager.release(acquired, failed=False)
    again = await asyncio.gather(*(acquire(manager, snapshot, run_id=f"again-{i}", sha=sha)
                                   for i, sha in enumerate(("a" * 40, "b" * 40, "c" * 40))))
    assert calls == [5, 3] and manager.provisionings == 1 and argocd.syncs[APP] == 1
    assert {a.instance_id for a in again} == {first[0].instance_id}
    assert await state_and_users(manager, first[0]) == ("running", 3)


async def test_a_run_cancelled_in_a_shared_take_keeps_no_user(
        manager: EnvironmentManager, snapshot: Snapshot) -> None:
    """Cancelled while the shared ``take_or_list`` is under way: counted as a user by the
    store, then given back."""
    warm = await acquire(manager, snapshot)
    await manager.release(warm, failed=False)
    tasks = [asyncio.create_task(acquire(manager, snapshot, run_id=f"run-{i}"))
             for i in range(3)]
    for _ in range(3):  # the take is in the store's hands now
        await asyncio.sleep(0)
    tasks[1].cancel()
    kept = await asyncio.gather(tasks[0], tasks[2])
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    await manager.drain()
    assert await state_and_users(manager, warm) == ("running", 2)
    for acquired in kept:
        await manager.release(acquired, failed=False)
    assert await state_and_users(manager, warm) == ("warm", 0)


@pytest.mark.parametrize("when", ["before", "during", "after"])
async def test_a_cancelled_waiter_keeps_no_user(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD,
        monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """The provisioning's final write counts the runs waiting for it; one cancelled before,
    during or just after that write leaves no user behind."""
    tasks = [asyncio.create_task(acquire(manager, snapshot, run_id=f"run-{i}"))
             for i in range(3)]
    take, update = manager.store.take_or_list, manager.store.update_environment

    async def take_and_cancel(*args: Any, **kw: Any) -> Any:
        taken = await take(*args, **kw)  # inserts the provisioning record
        if when == "before":  # the provisioning starts now
            tasks[1].cancel()
        return taken

    async def update_and_cancel(env: EnvironmentInstance, **kw: Any) -> bool:
        if when == "during" and env.state == "running":
            tasks[1].cancel()
        stored = await update(env, **kw)
        if when == "after" and env.state == "running":
            tasks[1].cancel()
        return stored

    monkeypatch.setattr(manager.store, "take_or_list", take_and_cancel)
    monkeypatch.setattr(manager.store, "update_environment", update_and_cancel)
    kept = await asyncio.gather(tasks[0], tasks[2])
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    await manager.drain()
    assert await state_and_users(manager, kept[0]) == ("running", 2)
    for acquired in kept:
        await manager.release(acquired, failed=False)
    assert await state_and_users(manager, kept[0]) == ("warm", 0)
    assert argocd.creates[APP] == 1


async def test_two_replicas_provision_once(make_manager: MakeManager, snapshot: Snapshot,
                                           argocd: FakeArgoCD) -> None:
    one, two = await make_manager(replica="a"), await make_manager(replica="b")
    first, second = await asyncio.gather(acquire(one, snapshot, run_id="run-1"),
                                         acquire(two, snapshot, run_id="run-2"))
    assert first.instance_id == second.instance_id
    assert argocd.creates[APP] == 1 and argocd.syncs[APP] == 1
    assert one.provisionings + two.provisionings == 1


async def test_degraded_is_an_acquisition_error(manager: EnvironmentManager, snapshot: Snapshot,
                                                argocd: FakeArgoCD, clock: FakeClock) -> None:
    argocd.script_app(APP, [("Synced", "Progressing", "Running"),
                            ("Synced", "Degraded", "Succeeded", "pod crash-looping")])
    with pytest.raises(EnvironmentUnavailable, match="Degraded"):
        await acquire(manager, snapshot)
    [record] = await manager.store.list_environments()
    assert record.state == "cooling" and record.users == 0
    assert record.error is not None and "Degraded" in record.error
    # the next trigger syncs the failed one again (in place), and it can now recover
    argocd.script_app(APP, [("Synced", "Healthy", "Succeeded")])
    acquired = await acquire(manager, snapshot, run_id="run-2")
    assert acquired.instance_id == record.id and argocd.creates[APP] == 1
    fixed = await manager.store.get_environment(record.id)
    assert fixed is not None and fixed.error is None and fixed.state == "running"


async def test_missing_app_without_template_fails(manager: EnvironmentManager,
                                                  snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    with pytest.raises(EnvironmentUnavailable, match="declares no `application` template"):
        await acquire(manager, snapshot, name="existing")
    assert argocd.creates["legacy-pr-7"] == 0


async def test_existing_app_without_template_is_synced(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    argocd.add_app("legacy-pr-7", sync="OutOfSync", health="Missing")
    acquired = await acquire(manager, snapshot, name="existing")
    assert argocd.creates["legacy-pr-7"] == 0 and argocd.syncs["legacy-pr-7"] == 1
    assert acquired.routing == {}


async def test_provision_timeout(make_manager: MakeManager, snapshot: Snapshot,
                                 argocd: FakeArgoCD) -> None:
    manager = await make_manager(provision_timeout=30.0)
    argocd.script_app(APP, [("Synced", "Progressing", "Running")])
    with pytest.raises(EnvironmentUnavailable, match="not Healthy after 30 s"):
        await acquire(manager, snapshot)


async def test_render_and_declaration_errors(manager: EnvironmentManager,
                                             snapshot: Snapshot) -> None:
    variables = {k: v for k, v in PR_VARS.items() if k != "pr_number"}
    with pytest.raises(EnvironmentUnavailable, match=r"\$\{pr_number\}"):
        await manager.acquire(snapshot=snapshot, workspace="default", name="review",
                              variables=variables, run_id="run-1")
    with pytest.raises(EnvironmentUnavailable, match="no TestEnvironment 'nope'"):
        await acquire(manager, snapshot, name="nope")
    assert await manager.store.list_environments() == []


async def test_renderings_follow_a_changed_declaration(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    """Renderings are kept per declaration: a reloaded snapshot whose declaration changed
    is rendered afresh for the same trigger variables."""
    first = await acquire(manager, snapshot)
    await manager.release(first, failed=False)
    declared = snapshot.environments[("default", "review")]
    changed = replace(declared, routing_policy=FrozenDict(
        {"user-service": "http://new-${pr_number}"}))
    reloaded = replace(snapshot, environments=FrozenDict(
        {**snapshot.environments, ("default", "review"): changed}))
    second = await acquire(manager, reloaded, run_id="run-2")
    assert second.instance_id == first.instance_id
    assert second.routing == {"user-service": "http://new-7"}
    await manager.release(second, failed=False)


async def test_without_context_each_run_gets_its_own(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD,
        clock: FakeClock) -> None:
    first = await acquire(manager, snapshot, name="adhoc", run_id="run-1")
    await manager.release(first, failed=False)
    record = await manager.store.get_environment(first.instance_id or "")
    assert record is not None and record.state == "cooling" and record.context == "run:run-1"
    assert first.context is None
    second = await acquire(manager, snapshot, name="adhoc", run_id="run-2")
    assert second.instance_id != first.instance_id
    clock.advance(10 * 60)
    assert await manager.reap_once(clock.now()) == 1  # the first; the second is running
    assert argocd.deletes["adhoc-0123456"] == 1


async def test_a_recovered_run_gives_back_as_its_own_release_would(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    """``release_recovered`` (the run's executor is gone) leaves a per-run environment
    ``cooling`` and a context's ``warm``, as ``release`` does."""
    own = await acquire(manager, snapshot, name="adhoc", run_id="run-1")
    shared = await acquire(manager, snapshot, run_id="run-1")
    for acquired in (own, shared):
        assert await state_and_users(manager, acquired) == ("running", 1)
        await manager.release_recovered(acquired.instance_id or "", run_id="run-1")
    assert await state_and_users(manager, own) == ("cooling", 0)
    assert await state_and_users(manager, shared) == ("warm", 0)


async def test_static_needs_no_provisioning(manager: EnvironmentManager, snapshot: Snapshot,
                                            argocd: FakeArgoCD, clock: FakeClock) -> None:
    acquired = await acquire(manager, snapshot, name="staging")
    assert acquired.routing == {"api": "http://api.staging.svc:8080/feature-x"}
    assert not argocd.requests
    await manager.release(acquired, failed=False)
    again = await acquire(manager, snapshot, name="staging", run_id="run-2")
    assert again.instance_id == acquired.instance_id
    await manager.release(again, failed=False)
    clock.advance(120 * 60)
    assert await manager.reap_once(clock.now()) == 1
    assert not argocd.requests


async def test_an_insert_racing_a_retry_is_still_provisioned(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD,
        sleeper: Sleeper, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared take inserts the key's record while another call for the key (a retry that
    read it empty) is already in flight: that call waits for the record, so the record is
    provisioned anyway, at once, not after its lease runs out."""
    target = manager._target(snapshot, "default", "review", PR_VARS, "run-0")
    take = manager.store.take_or_list

    async def racing_take(*args: Any, **kw: Any) -> Any:
        manager._flight.start(target.key, lambda: manager._obtain(target, None))
        return await take(*args, **kw)

    monkeypatch.setattr(manager.store, "take_or_list", racing_take)
    acquired = await acquire(manager, snapshot)
    assert argocd.creates[APP] == 1 and manager.provisionings == 1
    assert sleeper.total < 120  # polls while it provisions, not the 720 s lease
    assert await state_and_users(manager, acquired) == ("running", 1)
    await manager.drain()


async def test_a_burst_on_a_new_static_key_counts_every_run_once(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    """A static record is written at once: the runs sharing its take are registered before
    that write, which counts them all (no run takes it a second time)."""
    results = await asyncio.gather(*(acquire(manager, snapshot, name="staging",
                                             run_id=f"run-{i}") for i in range(4)))
    assert {r.instance_id for r in results} == {results[0].instance_id}
    assert manager.provisionings == 1 and not argocd.requests
    assert await state_and_users(manager, results[0]) == ("running", 4)
    for acquired in results:
        await manager.release(acquired, failed=False)
    assert await state_and_users(manager, results[0]) == ("warm", 0)


async def test_teardown_of_running_env_waits_for_its_run(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    acquired = await acquire(manager, snapshot)
    marked = await manager.teardown(acquired.instance_id or "")
    assert marked is not None and marked.teardown_requested and marked.state == "running"
    assert argocd.deletes[APP] == 0
    with pytest.raises(EnvironmentUnavailable, match="DELETE requested"):
        await acquire(manager, snapshot, run_id="run-2")
    await manager.release(acquired, failed=False)
    assert argocd.deletes[APP] == 1
    record = await manager.store.get_environment(acquired.instance_id or "")
    assert record is not None and record.state == "destroyed"


async def test_failed_delete_is_retried(manager: EnvironmentManager, snapshot: Snapshot,
                                        argocd: FakeArgoCD, clock: FakeClock) -> None:
    acquired = await acquire(manager, snapshot)
    await manager.release(acquired, failed=False)
    clock.advance(60 * 60)
    argocd.fail_next(1, 503, method="DELETE")
    assert await manager.reap_once(clock.now()) == 0
    record = await manager.store.get_environment(acquired.instance_id or "")
    assert record is not None and record.teardown_requested and record.state == "warm"
    assert record.error is not None and record.error.startswith("teardown failed")
    clock.advance(30)
    assert await manager.reap_once(clock.now()) == 1
    record = await manager.store.get_environment(acquired.instance_id or "")
    assert record is not None and record.state == "destroyed" and record.error is None
    assert argocd.deletes[APP] == 1


async def test_restart_keeps_records_and_reaper_resumes(
        make_manager: MakeManager, snapshot: Snapshot, argocd: FakeArgoCD,
        clock: FakeClock) -> None:
    before = await make_manager(replica="old")
    acquired = await acquire(before, snapshot)
    await before.release(acquired, failed=False)
    await before.store.close()
    after = await make_manager(replica="new")
    [record] = await after.store.list_environments(state="warm")
    assert record.id == acquired.instance_id
    clock.advance(60 * 60)
    assert await after.reap_once(clock.now()) == 1
    assert argocd.deletes[APP] == 1


async def test_abandoned_provisioning_is_recovered(
        manager: EnvironmentManager, snapshot: Snapshot, argocd: FakeArgoCD,
        clock: FakeClock) -> None:
    acquired = await acquire(manager, snapshot)
    await manager.release(acquired, failed=False)
    record = await manager.store.get_environment(acquired.instance_id or "")
    assert record is not None
    # a replica died mid-provisioning: its lease runs out, the next trigger takes over
    stale = replace(record, state="provisioning", owner="dead/1",
                    lock_until=clock.now())
    assert await manager.store.update_environment(stale)
    clock.advance(1)
    again = await acquire(manager, snapshot, run_id="run-2")
    assert again.instance_id == record.id and argocd.syncs[APP] == 2
