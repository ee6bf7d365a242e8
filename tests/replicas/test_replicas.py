"""Three daemon processes on one PostgreSQL: every delivery runs exactly once, a SIGKILLed
replica's runs are finished by the others, a config push received by one reloads them all,
and two replicas racing for one environment context provision it once.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import Counter

import httpx
import pytest

from testmesh_reconciler.environments import EnvironmentManager
from testmesh_reconciler.store import FakeClock
from testmesh_reconciler.store.postgres import PostgresStore
from tests.daemon.repo import ConfigRepo
from tests.environments.conftest import PR_VARS, TOKEN, Sleeper, load_snapshot
from tests.testing.fake_argocd import FakeArgoCD

from .conftest import (
    CONFIG_HOOK,
    QUICK_REPO,
    SLOW_REPO,
    Cluster,
    Services,
    StartReplicas,
    push,
    sha_of,
    sign,
)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

DELIVERIES = 500
REDELIVERED = 50  # 10%, each to a different replica than the original


async def _post_all(urls: list[str], sends: list[tuple[int, str, bytes, dict[str, str]]],
                    concurrency: int = 24) -> list[tuple[int, int, dict[str, object]]]:
    """POST each (index, replica url, body, headers); (index, HTTP status, JSON answer)."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as client:
        async def one(i: int, url: str, body: bytes, headers: dict[str, str]
                      ) -> tuple[int, int, dict[str, object]]:
            async with limit:
                response = await client.post(f"{url}/api/v1/webhooks/gitea", content=body,
                                             headers=headers)
                return i, response.status_code, response.json()

        return list(await asyncio.gather(*(one(*s) for s in sends)))


def _wait_statuses(cluster: Cluster, services: Services, n: int, timeout: float) -> None:
    try:
        cluster.wait(lambda: len(services.finals()) == n, "every final status", timeout)
    except AssertionError as exc:
        outbox = cluster.query("SELECT outcome, state, count(*), max(attempts), max(last_error) "
                               "FROM outbox GROUP BY 1, 2")
        raise AssertionError(f"{exc}; {len(services.finals())} of {n} arrived; "
                             f"outbox {outbox}") from None


def _final_runs(cluster: Cluster) -> int:
    rows = cluster.query("SELECT count(*) FROM runs WHERE status IN "
                         "('completed', 'failed', 'cancelled')")
    return int(rows[0][0])


async def test_every_delivery_runs_once_across_three_replicas(
        start_replicas: StartReplicas, services: Services, config_repo: ConfigRepo) -> None:
    cluster = start_replicas(3, "--max-concurrent-runs", "8")
    urls = [d.url for d in cluster.daemons]
    shas = [sha_of(i, "a") for i in range(DELIVERIES)]
    sends = []
    for i, sha in enumerate(shas):  # distinct branches: no run supersedes another
        body, headers = push(QUICK_REPO, f"b{i}", sha, f"d-{i}")
        sends.append((i, urls[i % 3], body, headers))
    rng = random.Random(7)
    for i in rng.sample(range(DELIVERIES), REDELIVERED):  # Gitea "redeliver": new delivery id
        body, headers = sends[i][2], {**sends[i][3], "X-Gitea-Delivery": f"re-{i}"}
        sends.append((i, urls[(i + 1 + rng.randrange(2)) % 3], body, headers))
    rng.shuffle(sends)  # some redeliveries race their original on another replica

    answers = await _post_all(urls, sends)
    assert Counter(status for _, status, _ in answers) == {202: DELIVERIES + REDELIVERED}
    runs_by_sha: dict[int, set[str]] = {}
    duplicates = 0
    for i, _, answer in answers:
        runs_by_sha.setdefault(i, set()).update(str(r) for r in answer["runs"])  # type: ignore[attr-defined]
        duplicates += bool(answer.get("duplicate"))
    assert duplicates == REDELIVERED
    assert all(len(ids) == 1 for ids in runs_by_sha.values()), "a delivery started two runs"

    cluster.wait(lambda: _final_runs(cluster) == DELIVERIES, "every run finished", 90)
    _wait_statuses(cluster, services, DELIVERIES, 60)
    rows = cluster.query("SELECT trigger_ref, status, revision, claimed_by FROM runs")
    assert len(rows) == DELIVERIES
    assert {r[0] for r in rows} == set(shas)
    assert Counter(r[1] for r in rows) == {"completed": DELIVERIES}
    assert {r[2] for r in rows} == {config_repo.head()}  # the revision each run used
    assert {r[3] for r in rows} == set(cluster.names)  # the work was shared
    assert all(services.service.count(sha) == 1 for sha in shas), "a step ran twice"
    finals = services.finals()
    assert all(finals[sha] == ["success"] for sha in shas), "not one success per sha"


async def test_sigkilled_replica_runs_are_finished_by_the_others(
        start_replicas: StartReplicas, services: Services) -> None:
    services.service.slow_seconds = 5.0
    cluster = start_replicas(3, "--max-concurrent-runs", "2")
    urls = [d.url for d in cluster.daemons]
    shas = [sha_of(i, "k") for i in range(9)]
    sends = []
    for i, sha in enumerate(shas):
        body, headers = push(SLOW_REPO, f"k{i}", sha, f"k-{i}")
        sends.append((i, urls[i % 3], body, headers))
    answers = await _post_all(urls, sends)
    assert {status for _, status, _ in answers} == {202}

    def r1_in_flight() -> list[str]:
        rows = cluster.query("SELECT trigger_ref FROM runs WHERE claimed_by = 'r1' "
                             "AND status = 'running' AND started")
        return [r[0] for r in rows]

    cluster.wait(lambda: len(r1_in_flight()) == 2, "r1 running two started runs", 15)
    killed = r1_in_flight()
    # its pending statuses arrived: nothing of r1's is left half-posted in the outbox
    cluster.wait(lambda: all(any(s.sha == sha for s in services.sink.statuses)
                             for sha in killed), "r1's pending statuses", 10)
    victim = cluster.daemons[0]
    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL

    cluster.wait(lambda: _final_runs(cluster) == len(shas), "every run finished", 60)
    _wait_statuses(cluster, services, len(shas), 60)
    rows = {r[0]: r[1:] for r in cluster.query(
        "SELECT trigger_ref, status, error, claimed_by FROM runs")}
    assert set(rows) == set(shas)
    for sha in killed:  # started on r1: never executed again, finished as interrupted
        status, error, _ = rows[sha]
        assert status == "failed" and "interrupted" in (error or ""), rows[sha]
        assert services.finals()[sha] == ["error"]
    for sha in set(shas) - set(killed):
        assert rows[sha][0] == "completed", rows[sha]
        assert services.finals()[sha] == ["success"]
    assert all(services.service.count(sha) == 1 for sha in shas), "a run executed twice"


async def test_config_push_on_one_replica_reloads_all(
        start_replicas: StartReplicas, config_repo: ConfigRepo, services: Services) -> None:
    cluster = start_replicas(3)
    first = config_repo.head()
    for daemon in cluster.daemons:
        status = daemon.status()
        assert status["revision"] == first
        assert status["replica"] == f"r{cluster.daemons.index(daemon) + 1}"
    # presence: every replica lists all three (heartbeats through the shared store)
    cluster.wait(lambda: {r["name"] for r in cluster.daemons[1].status()["replicas"]}
                 == set(cluster.names), "three replicas listed", 10)

    config_repo.write("extra.yaml", "# a comment-only file\n")
    second = config_repo.commit("second")
    body = json.dumps({"ref": "refs/heads/main", "after": second}).encode()
    answer = cluster.daemons[0].http.post(
        "/api/v1/webhooks/config", content=body,
        headers={"X-Gitea-Signature": sign(body, CONFIG_HOOK), "Content-Type": "application/json"})
    assert answer.status_code == 202

    def all_on_second() -> bool:
        for daemon in cluster.daemons[1:]:
            replicas = daemon.status()["replicas"]
            if {r["name"]: r["revision"] for r in replicas} != dict.fromkeys(cluster.names,
                                                                              second):
                return False
        return True

    took = cluster.wait(all_on_second, "every replica on the new revision", 10)
    assert took < 3.0, f"the broadcast took {took:.1f}s"
    events = [e.get("event") for e in cluster.daemons[1].events()]
    assert "config_broadcast_received" in events


async def test_two_replicas_racing_for_one_environment_provision_once(pg_dsn: str) -> None:
    argocd = FakeArgoCD(token=TOKEN)
    await argocd.start()
    stores = [PostgresStore(pg_dsn, max_size=4), PostgresStore(pg_dsn, max_size=4)]
    try:
        snapshot = load_snapshot(argocd.base_url)
        clock = FakeClock()
        async with httpx.AsyncClient(timeout=5) as http:
            managers = []
            for i, store in enumerate(stores):
                await store.open()
                managers.append(EnvironmentManager(
                    store, http=http, clock=clock, sleep=Sleeper(clock), replica=f"r{i + 1}",
                    provision_timeout=600.0, snapshot=lambda: snapshot))
            results = await asyncio.gather(*(
                m.acquire(snapshot=snapshot, workspace="default", name="review",
                          variables=PR_VARS, run_id=f"run-{i}")
                for i, m in enumerate(managers * 3)))
            assert len({r.instance_id for r in results}) == 1
            assert argocd.creates["shop-pr-7"] == 1 and argocd.syncs["shop-pr-7"] == 1
            assert sum(m.provisionings for m in managers) == 1
            for manager in managers:
                await manager.aclose()
    finally:
        for store in stores:
            await store.close()
        await argocd.stop()
    argocd.assert_no_violations()
