"""The outbox sender against a real SQLite store and ``FakeGitea`` on 127.0.0.1, on a fake
clock: order within a group, retries with backoff, outages, give-ups, duplicate suppression,
restart, the shutdown flush and the app extension (status block, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from testmesh_reconciler.config.model import Snapshot
from testmesh_reconciler.metrics import Metrics
from testmesh_reconciler.outbox import OutboxMetrics, client_factory, flush, outbox_loop
from testmesh_reconciler.reporting import (
    ReportTarget,
    final_entries,
    mark_pending_queued,
    pending_entries,
)
from testmesh_reconciler.services import Services
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.state import ReloadRecord, StateHolder
from testmesh_reconciler.store import FakeClock, Store, create_store
from testmesh_reconciler.store.records import OutboxEntry, Run, RunId, new_id
from testmesh_reconciler.web.app import create_app
from testmesh_reconciler.web.outbox_ext import OUTBOX, extension
from tests.testing.fake_gitea import FakeGitea
from tests.webhooks import HEAD, load_snapshot

TOKEN = "outbox-test-token-0123456789"
REPO = "acme/shop"
SHA = "0123456789abcdef0123456789abcdef01234567"
POLL = 10 * 86400.0  # the idle poll: the fake sleep parks there instead of advancing


class FakeSleep:
    """Advances the fake clock instead of sleeping; an idle wait (``>= POLL``) parks until
    the loop is woken (it cancels the sleep) and flags ``idle`` for the test."""

    def __init__(self, clock: FakeClock, on_sleep: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.on_sleep = on_sleep
        self.slept: list[float] = []
        self.idle = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        if seconds >= POLL:
            self.idle.set()
            await asyncio.Event().wait()
        self.idle.clear()
        self.slept.append(seconds)
        self.clock.advance(seconds)
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)


@pytest.fixture
async def gitea() -> AsyncIterator[FakeGitea]:
    async with FakeGitea(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def snapshot(gitea: FakeGitea) -> Snapshot:
    doc = (HEAD + "kind: Integration\nmetadata: {name: gitea-fake}\nspec:\n  type: git\n"
           f"  provider: gitea\n  config: {{url: \"{gitea.base_url}\"}}\n"
           "  secrets:\n    token: {env: T}\n    webhook_secret: {env: W}\n")
    return load_snapshot({"integrations/fake.yaml": doc}, secrets={"gitea-fake": TOKEN})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = create_store(None, data_dir=tmp_path)
    await opened.open()
    yield opened
    await opened.close()


SETTINGS = Settings(config_repo="/tmp/config", public_url="https://testmesh.example.com",
                    status_give_up_after=86400.0)
TARGET = ReportTarget("default", "gitea-fake", REPO, SHA, "testmesh/smoke")


async def queue_run(store: Store, clock: FakeClock, *, status: str = "completed",
                    target: ReportTarget = TARGET, final: bool = True,
                    **fields: Any) -> Run:
    """A run in the store with its pending (and, ``final``, its final) entries queued."""
    run = Run(id=RunId(new_id()), workspace="default", suite="smoke", suite_id="s",
              trigger_type="webhook", queued_at=clock.now(), report_target=target.to_json(),
              total_flows=2, passed_flows=2 if status == "completed" else 1,
              failed_flows=0 if status == "completed" else 1)
    assert await store.enqueue_run(run, max_queued=100)
    await store.add_outbox(pending_entries(run, None, SETTINGS, clock.now()))
    run = mark_pending_queued(replace(run, status=status, **fields))  # type: ignore[arg-type]
    if final:
        await store.add_outbox(final_entries(run, None, SETTINGS, clock.now()))
    return run


@contextlib.asynccontextmanager
async def sending(store: Store, clock: FakeClock, snapshot: Snapshot, http: httpx.AsyncClient,
                  *, sleep: FakeSleep | None = None, give_up_after: float = 86400.0,
                  metrics: OutboxMetrics | None = None,
                  ) -> AsyncIterator[tuple[FakeSleep, asyncio.Event]]:
    sleeper = sleep or FakeSleep(clock)
    wake = asyncio.Event()
    task = asyncio.create_task(outbox_loop(
        store, client_for=client_factory(lambda: snapshot, http), clock=clock, sleep=sleeper,
        give_up_after=give_up_after, rng=random.Random(7), wake=wake, metrics=metrics,
        poll_interval=POLL))
    try:
        yield sleeper, wake
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until_idle(store: Store, sleeper: FakeSleep, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    """Wait until the loop parks with nothing queued."""
    async with asyncio.timeout(timeout):
        while True:
            await sleeper.idle.wait()
            if (await store.outbox_stats()).queued == 0:
                return
            await asyncio.sleep(0.01)


def states(gitea: FakeGitea) -> list[str]:
    return [s.state for s in gitea.statuses]


async def test_pending_then_success_in_order(store: Store, clock: FakeClock, snapshot: Snapshot,
                                             http: httpx.AsyncClient, gitea: FakeGitea) -> None:
    metrics = OutboxMetrics(Metrics().registry)
    run = await queue_run(store, clock)
    async with sending(store, clock, snapshot, http, metrics=metrics) as (sleeper, _):
        await until_idle(store, sleeper)
    assert states(gitea) == ["pending", "success"]
    final = gitea.statuses[-1]
    assert final.description == "TestMesh: all tests passed (2/2 flows)"
    assert final.target_url == f"https://testmesh.example.com/suite-runs/{run.id}"
    assert final.context == "testmesh/smoke"
    gitea.assert_no_violations()
    stored = await store.get_run(run.id)
    assert stored is not None
    assert [s["outcome"] for s in stored.status_report["statuses"]] == ["sent", "sent"]
    assert metrics.statuses.labels("sent")._value.get() == 2


@pytest.mark.parametrize(("status", "fields", "state"), [
    ("failed", {}, "failure"),
    ("failed", {"error": "environment not acquired"}, "error"),
])
async def test_failure_and_error(store: Store, clock: FakeClock, snapshot: Snapshot,
                                 http: httpx.AsyncClient, gitea: FakeGitea, status: str,
                                 fields: dict[str, Any], state: str) -> None:
    await queue_run(store, clock, status=status, **fields)
    async with sending(store, clock, snapshot, http) as (sleeper, _):
        await until_idle(store, sleeper)
    assert states(gitea) == ["pending", state]
    gitea.assert_no_violations()


async def test_503s_are_retried_with_backoff(store: Store, clock: FakeClock, snapshot: Snapshot,
                                             http: httpx.AsyncClient, gitea: FakeGitea) -> None:
    gitea.fail_next(3, 503)
    run = await queue_run(store, clock)
    async with sending(store, clock, snapshot, http) as (sleeper, _):
        await until_idle(store, sleeper)
    assert states(gitea) == ["pending", "success"]
    assert len(sleeper.slept) >= 3  # waited between the failed attempts
    assert sum(sleeper.slept) > 0
    (pending, _) = await store.get_outbox(run.id)
    assert pending.attempts == 4 and pending.outcome == "sent"


async def test_final_never_overtakes_its_pending(store: Store, clock: FakeClock,
                                                 snapshot: Snapshot, http: httpx.AsyncClient,
                                                 gitea: FakeGitea) -> None:
    gitea.fail_next(5, 502)
    await queue_run(store, clock)
    async with sending(store, clock, snapshot, http) as (sleeper, _):
        await until_idle(store, sleeper)
    posts = [r.json()["state"] for r in gitea.requests_to("POST", f"/statuses/{SHA}")]
    assert posts == ["pending"] * 6 + ["success"]
    assert states(gitea) == ["pending", "success"]


async def test_long_outage_delays_but_never_drops(store: Store, clock: FakeClock,
                                                  snapshot: Snapshot, http: httpx.AsyncClient,
                                                  gitea: FakeGitea) -> None:
    start = clock.now()
    gitea.go_down()

    def maybe_come_up() -> None:
        if clock.now() - start > timedelta(hours=6):
            gitea.come_up()

    await queue_run(store, clock)
    sleeper = FakeSleep(clock, on_sleep=maybe_come_up)
    async with sending(store, clock, snapshot, http, sleep=sleeper) as _:
        await until_idle(store, sleeper, timeout=60)
    assert states(gitea) == ["pending", "success"]
    assert clock.now() - start > timedelta(hours=6)
    assert max(sleeper.slept) <= 300.0  # the backoff cap
    assert (await store.outbox_stats()).given_up == 0


@pytest.mark.parametrize("status", [401, 403, 404, 422])
async def test_hopeless_answers_are_given_up_at_once(store: Store, clock: FakeClock,
                                                     snapshot: Snapshot, http: httpx.AsyncClient,
                                                     gitea: FakeGitea, status: int) -> None:
    metrics = OutboxMetrics(Metrics().registry)
    gitea.respond_with(status)
    run = await queue_run(store, clock, final=False)
    async with sending(store, clock, snapshot, http, metrics=metrics) as (sleeper, _):
        await until_idle(store, sleeper)
    assert sleeper.slept == []  # no retry
    (entry,) = await store.get_outbox(run.id)
    assert entry.outcome == "given_up" and entry.attempts == 0
    stats = await store.outbox_stats()
    assert stats.given_up == 1 and stats.queued == 0
    assert stats.last_give_up is not None and str(status) in stats.last_give_up.reason
    stored = await store.get_run(run.id)
    assert stored is not None
    assert str(status) in stored.status_report["given_up"]["reason"]
    assert metrics.statuses.labels("given_up")._value.get() == 1


async def test_bad_token_is_given_up_with_a_hint(store: Store, clock: FakeClock,
                                                 http: httpx.AsyncClient, gitea: FakeGitea
                                                 ) -> None:
    doc = (HEAD + "kind: Integration\nmetadata: {name: gitea-fake}\nspec:\n  type: git\n"
           f"  provider: gitea\n  config: {{url: \"{gitea.base_url}\"}}\n"
           "  secrets:\n    token: {env: T}\n    webhook_secret: {env: W}\n")
    wrong = load_snapshot({"integrations/fake.yaml": doc}, secrets={"gitea-fake": "nope"})
    run = await queue_run(store, clock, final=False)
    async with sending(store, clock, wrong, http) as (sleeper, _):
        await until_idle(store, sleeper)
    stored = await store.get_run(run.id)
    assert stored is not None
    assert "token was rejected" in stored.status_report["given_up"]["reason"]
    assert gitea.statuses == []


async def test_5xx_past_give_up_after_is_given_up(store: Store, clock: FakeClock,
                                                  snapshot: Snapshot, http: httpx.AsyncClient,
                                                  gitea: FakeGitea) -> None:
    gitea.respond_with(500)
    run = await queue_run(store, clock, final=False)
    async with sending(store, clock, snapshot, http, give_up_after=600) as (sleeper, _):
        await until_idle(store, sleeper)
    (entry,) = await store.get_outbox(run.id)
    assert entry.outcome == "given_up"
    assert entry.last_error is not None and entry.last_error.startswith("gave up after")
    assert sum(sleeper.slept) >= 600
    stats = await store.outbox_stats()
    assert stats.last_give_up is not None and stats.last_give_up.run_id == run.id


async def test_unknown_integration_is_given_up(store: Store, clock: FakeClock,
                                               snapshot: Snapshot, http: httpx.AsyncClient,
                                               gitea: FakeGitea) -> None:
    target = replace(TARGET, integration="gone")
    run = await queue_run(store, clock, final=False, target=target)
    async with sending(store, clock, snapshot, http) as (sleeper, _):
        await until_idle(store, sleeper)
    stored = await store.get_run(run.id)
    assert stored is not None and "'default/gone'" in stored.status_report["given_up"]["reason"]


async def test_identical_latest_status_is_skipped(store: Store, clock: FakeClock,
                                                  snapshot: Snapshot, http: httpx.AsyncClient,
                                                  gitea: FakeGitea) -> None:
    metrics = OutboxMetrics(Metrics().registry)
    gitea.seed_status(REPO, SHA, "pending", "testmesh/smoke", "TestMesh: tests running...")
    run = await queue_run(store, clock)
    async with sending(store, clock, snapshot, http, metrics=metrics) as (sleeper, _):
        await until_idle(store, sleeper)
    assert states(gitea) == ["pending", "success"]  # the seeded one, then ours
    assert [e.outcome for e in await store.get_outbox(run.id)] == ["skipped", "sent"]
    assert metrics.statuses.labels("skipped")._value.get() == 1


async def test_groups_go_in_parallel_and_in_order(store: Store, clock: FakeClock,
                                                  snapshot: Snapshot, http: httpx.AsyncClient,
                                                  gitea: FakeGitea) -> None:
    shas = [f"{i:040x}" for i in range(1, 6)]
    for sha in shas:
        await queue_run(store, clock, target=replace(TARGET, sha=sha))
    async with sending(store, clock, snapshot, http) as (sleeper, _):
        await until_idle(store, sleeper)
    for sha in shas:
        assert [s.state for s in gitea.statuses_for(REPO, sha)] == ["pending", "success"]


async def test_wake_starts_a_new_entry_at_once(store: Store, clock: FakeClock,
                                               snapshot: Snapshot, http: httpx.AsyncClient,
                                               gitea: FakeGitea) -> None:
    async with sending(store, clock, snapshot, http) as (sleeper, wake):
        await sleeper.idle.wait()
        await queue_run(store, clock)
        sleeper.idle.clear()
        wake.set()
        await gitea.wait_for_statuses(2)
        await until_idle(store, sleeper)
    assert states(gitea) == ["pending", "success"]
    assert sleeper.slept == []


async def test_restart_delivers_what_was_queued(tmp_path: Path, clock: FakeClock,
                                                snapshot: Snapshot, http: httpx.AsyncClient,
                                                gitea: FakeGitea) -> None:
    first = create_store(None, data_dir=tmp_path)
    await first.open()
    run = await queue_run(first, clock)
    await first.close()
    second = create_store(None, data_dir=tmp_path)
    await second.open()
    try:
        async with sending(second, clock, snapshot, http) as (sleeper, _):
            await until_idle(second, sleeper)
        assert states(gitea) == ["pending", "success"]
        assert [e.outcome for e in await second.get_outbox(run.id)] == ["sent", "sent"]
    finally:
        await second.close()


async def test_store_errors_do_not_kill_the_loop(store: Store, clock: FakeClock,
                                                 snapshot: Snapshot, http: httpx.AsyncClient,
                                                 gitea: FakeGitea) -> None:
    class Flaky:
        """The store, but its first two ``due_statuses`` calls fail."""

        def __init__(self, inner: Store) -> None:
            self.inner, self.failures = inner, 2

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def due_statuses(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("database is locked")
            return await self.inner.due_statuses(now, limit)

    await queue_run(store, clock)
    flaky: Any = Flaky(store)
    async with sending(flaky, clock, snapshot, http) as (sleeper, _):
        await until_idle(store, sleeper)
    assert states(gitea) == ["pending", "success"]
    assert sleeper.slept[:2] == [1.0, 2.0]  # the error pause doubles


async def test_flush_tries_the_due_ones_once(store: Store, clock: FakeClock, snapshot: Snapshot,
                                             http: httpx.AsyncClient, gitea: FakeGitea) -> None:
    await queue_run(store, clock)
    other = await queue_run(store, clock, target=replace(TARGET, sha="f" * 40))
    gitea.fail_next(1, 503)  # the first POST: one group's pending stays queued
    result = await flush(store, client_for=client_factory(lambda: snapshot, http), clock=clock,
                         deadline=10)
    assert result.timed_out is False
    assert result.attempted == 3 and result.finished == 2  # a pending, its final, the other
    stats = await store.outbox_stats()
    assert stats.queued == 2 and stats.given_up == 0  # the 503'd group waits for its retry
    assert len(gitea.statuses) == 2 and other.id


async def test_extension_status_metrics_and_shutdown_flush(tmp_path: Path, clock: FakeClock,
                                                           snapshot: Snapshot,
                                                           gitea: FakeGitea) -> None:
    state = StateHolder()
    await state.swap(snapshot, ReloadRecord(at=clock.now(), revision="r1", result="ok"))
    store = create_store(None, data_dir=tmp_path)
    services = Services(state=state, metrics=Metrics(), clock=clock, store=store,
                        http=httpx.AsyncClient())
    app = create_app(SETTINGS, services, extensions=[extension])
    sender = app[OUTBOX]

    async def parked(seconds: float) -> None:  # the loop only runs when woken
        await asyncio.Event().wait()

    sender.sleep = parked
    async with TestClient(TestServer(app)) as client:
        await queue_run(store, clock)
        sender.wake_up()
        await gitea.wait_for_statuses(2, timeout=10)
        body = await (await client.get("/api/v1/status")).json()
        assert body["outbox"] == {"queued": 0, "given_up": 0, "last_give_up": None}
        text = await (await client.get("/metrics")).text()
        assert 'testmesh_commit_statuses_total{outcome="sent"} 2.0' in text
        assert "testmesh_commit_status_latency_seconds_count 2.0" in text
        run = await queue_run(store, clock, target=replace(TARGET, sha="e" * 40))  # no wake-up
        await asyncio.sleep(0.05)
        assert len(gitea.statuses) == 2
    # closing the app cancelled the loop, flushed the outbox, then closed the store
    assert [s.state for s in gitea.statuses_for(REPO, "e" * 40)] == ["pending", "success"]
    reopened = create_store(None, data_dir=tmp_path)
    await reopened.open()
    try:
        assert [e.outcome for e in await reopened.get_outbox(run.id)] == ["sent", "sent"]
    finally:
        await reopened.close()


async def test_no_attempt_before_a_snapshot_is_loaded(tmp_path: Path, clock: FakeClock,
                                                      gitea: FakeGitea) -> None:
    store = create_store(None, data_dir=tmp_path)
    services = Services(state=StateHolder(), metrics=Metrics(), clock=clock, store=store,
                        http=httpx.AsyncClient())
    app = create_app(SETTINGS, services, extensions=[extension])
    async with TestClient(TestServer(app)):
        run = await queue_run(store, clock, final=False)
        app[OUTBOX].wake_up()
        await asyncio.sleep(0.1)
        assert [e.outcome for e in await store.get_outbox(run.id)] == ["queued"]
    assert gitea.requests == []
