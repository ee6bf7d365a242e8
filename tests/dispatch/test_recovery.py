"""Recovery of runs cut off while they held an environment, in-process: two replicas share
one SQLite store and one static TestEnvironment context; the environment's user count is
given back exactly once, by the recovery, never again by the executor that lost its claim."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from testmesh_reconciler.dispatcher import Dispatcher
from testmesh_reconciler.environments import EnvironmentManager
from testmesh_reconciler.state import ReloadRecord, StateHolder
from testmesh_reconciler.store import FakeClock, Run, RunId, SqliteStore, new_id
from testmesh_reconciler.store.records import INTERRUPTED_ERROR
from tests.webhooks import load_snapshot

from . import ARGOCD, GITEA, config_files
from .service import Service
from .test_webhooks_inprocess import settings_for

LEASE = 30


async def test_a_lost_claim_gives_its_environment_back_once(
        tmp_path: Path, service: Service) -> None:
    snapshot = load_snapshot(config_files(service.url, environment=True), examples=False,
                             secrets={GITEA: "g", ARGOCD: "a"})
    state = StateHolder()
    clock = FakeClock()
    await state.swap(snapshot, ReloadRecord(at=clock.now(), revision="r1", result="ok"))
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    http = httpx.AsyncClient(timeout=10)
    settings = settings_for(tmp_path, run_lease=LEASE)

    def manager(name: str) -> EnvironmentManager:
        return EnvironmentManager(store, http=http, clock=clock, sleep=asyncio.sleep,
                                  replica=name, provision_timeout=60,
                                  snapshot=lambda: snapshot)

    def replica(name: str) -> Dispatcher:
        return Dispatcher(settings=settings, store=store, state=state, clock=clock, http=http,
                          environments=manager(name), replica=name)

    def queued(sha: str) -> Run:
        return Run(id=RunId(new_id()), workspace="default", suite="smoke", suite_id="smoke",
                   rule="shop-push", trigger_type="webhook", queued_at=clock.now(),
                   environment="shared", trigger_ref=sha,
                   trigger={"repo": "acme/shop", "branch": "feature-x", "sha": sha})

    async def users() -> tuple[str, int]:
        (record,) = await store.list_environments()
        return record.state, record.users

    lost, recoverer = replica("lost"), replica("recoverer")
    holder = manager("holder")
    run = queued("1" * 40)
    try:
        assert service.state.gate is not None
        service.state.gate.clear()  # the run waits inside its first step
        assert await store.enqueue_run(run, max_queued=10)
        claimed = await store.claim_run("lost", clock.now(), LEASE)
        assert claimed is not None and claimed.id == run.id
        task = asyncio.create_task(lost.execute(claimed))
        for _ in range(500):
            if service.state.snapshot():
                break
            await asyncio.sleep(0.01)
        # A second user of the same context, so that a second release would show.
        held = await holder.acquire(snapshot=snapshot, workspace="default", name="shared",
                                    variables={"branch": "feature-x"}, run_id="held")
        assert await users() == ("running", 2)

        clock.advance(LEASE + 1)  # "lost" misses its heartbeats: its lease runs out
        await recoverer.recover(startup=False)
        assert await users() == ("running", 1)  # the recovered run's user, given back
        assert (await store.get_run(run.id)).error == INTERRUPTED_ERROR  # type: ignore[union-attr]

        service.state.gate.set()
        await task  # its executor finds its claim gone and leaves the environment alone
        assert await users() == ("running", 1)
        await holder.release(held, failed=False)
        assert await users() == ("warm", 0)
    finally:  # (leaving ``serve`` opens the gate)
        await http.aclose()
        await store.close()
