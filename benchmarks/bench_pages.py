"""Benchmark of the dashboard pages on a full store: 10,000 runs and 10,000 deliveries.

Fills a SQLite store (runs with realistic flow results, deliveries of every outcome), then
requests each page N times in process through the aiohttp test client and prints median and
p95 milliseconds per page. Usage: ``python benchmarks/bench_pages.py [--runs 10000] [--n 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testmesh_reconciler.store import (
    Delivery,
    DeliveryId,
    FakeClock,
    Run,
    RunId,
    SqliteStore,
    Store,
    new_id,
)
from testmesh_reconciler.store.records import DeliverySource
from tests.web import (
    SHA,
    WINDOW_START,
    failed_flows,
    fill_store,
    page_app,
    passed_flows,
    sample_state,
)

BASE = "http://product-service.staging.svc.cluster.local:8080"


async def bulk(store: Store, clock: FakeClock, runs: int, deliveries: int) -> None:
    """``deliveries`` deliveries (4 in 5 accepted with one run, the others ignored or
    rejected), then manual runs up to ``runs`` runs; every run finished."""
    ok_flows, bad_flows = passed_flows(BASE, 5000), failed_flows(BASE)
    start = clock.now()

    async def one(i: int) -> None:
        at = start + timedelta(seconds=30 * i)
        accepted = i % 5 != 4
        source: DeliverySource = "argocd" if i % 2 else "gitea"
        delivery = Delivery(
            id=DeliveryId(new_id()), source=source, workspace="default",
            integration="argocd-staging" if source == "argocd" else "gitea-internal",
            event="sync" if source == "argocd" else "push",
            repo="acme/shop-deploy" if source == "argocd" else f"acme/repo-{i % 40}",
            branch="main", sha=f"{i:08x}" + SHA[8:], received_at=at, payload_digest="0" * 64,
            outcome="accepted" if accepted else ("ignored" if i % 10 == 4 else "rejected"),
            reason=None if accepted else "no trigger rule matches this repository",
            http_status=202 if accepted else 200)
        batch: list[Run] = []
        if accepted:
            batch.append(_run(at, i))
        await store.record_delivery(delivery, batch, dedup_window_start=WINDOW_START,
                                    max_queued=10**9)
        for run in batch:
            await _finish(store, run, i, ok_flows, bad_flows)

    await _gather(one, range(deliveries))
    accepted = sum(1 for i in range(deliveries) if i % 5 != 4)

    async def manual(i: int) -> None:
        at = start + timedelta(seconds=30 * i + 7)
        run = replace(_run(at, i), trigger_type="manual", rule=None, trigger={},
                      report_target=None)
        await store.enqueue_run(run, max_queued=10**9)
        await _finish(store, run, i, ok_flows, bad_flows)

    await _gather(manual, range(max(0, runs - accepted)))
    clock.advance(30 * deliveries + 60)


def _run(at: datetime, i: int) -> Run:
    suite = "smoke" if i % 3 else "regression"
    return Run(id=RunId(new_id()), workspace="default", suite=suite,
               suite_id="840e8efb-91fc-5d42-95ee-db60c1745b73", rule="shop-staging-smoke",
               trigger_type="argocd", queued_at=at, trigger_ref=f"{i:08x}" + SHA[8:],
               trigger={"source": "argocd", "event": "sync", "repo": "acme/shop-deploy",
                        "branch": "main", "sha": f"{i:08x}" + SHA[8:], "app": "shop-staging"},
               environment="staging")


async def _finish(store: Store, run: Run, i: int, ok: Any, bad: Any) -> None:
    passed = i % 7 != 0
    ms = 3000 + (i * 37) % 4000
    await store.finish_run(replace(
        run, status="completed" if passed else "failed", started=True, started_at=run.queued_at,
        completed_at=run.queued_at + timedelta(milliseconds=ms), duration_ms=ms, total_flows=3,
        passed_flows=3 if passed else 1, failed_flows=0 if passed else 1,
        flows=ok if passed else bad))


async def _gather(work: Any, items: range, width: int = 64) -> None:
    for lo in range(0, len(items), width):
        await asyncio.gather(*(work(i) for i in items[lo:lo + width]))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--n", type=int, default=50, help="requests per page")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock(datetime(2025, 6, 1, tzinfo=UTC))
        store = SqliteStore(Path(tmp) / "store.sqlite3")
        await store.open()
        t0 = time.perf_counter()
        await bulk(store, clock, args.runs, args.deliveries)
        sample = await fill_store(store, clock, history=0)
        fill_s = time.perf_counter() - t0
        counts = await store.count_runs_by_status()
        state = sample_state(clock.now(), failed_reload=True)
        mid_run = (await store.list_runs(suite="smoke", limit=1000))[-1].id
        mid_delivery = (await store.list_deliveries(limit=1000))[-1].id
        pages = {
            "overview": "/",
            "run (failed)": f"/suite-runs/{sample.failed_run}",
            "run (running)": f"/suite-runs/{sample.running_run}",
            "suite": "/suites/default/smoke",
            "suite, page 21": f"/suites/default/smoke?before={mid_run}",
            "deliveries": "/deliveries",
            "deliveries, page 21": f"/deliveries?before={mid_delivery}",
            "deliveries?outcome=ignored": "/deliveries?outcome=ignored",
            "deliveries?source&repo": "/deliveries?source=gitea&repo=acme/repo-2",
            "environments": "/test-environments",
            "config": "/config",
            "run 404": "/suite-runs/nope",
        }
        results: dict[str, dict[str, float]] = {}
        async with TestClient(TestServer(page_app(store, lambda: state, clock))) as client:
            for name, path in pages.items():
                for _ in range(3):  # warm-up: template compilation, SQLite page cache
                    await (await client.get(path)).read()
                times = []
                size = 0
                for _ in range(args.n):
                    t = time.perf_counter()
                    response = await client.get(path)
                    body = await response.read()
                    times.append((time.perf_counter() - t) * 1000)
                    size = len(body)
                    assert response.status in (200, 404), (path, response.status)
                times.sort()
                results[name] = {
                    "median_ms": round(statistics.median(times), 2),
                    "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
                    "max_ms": round(times[-1], 2),
                    "kb": round(size / 1024, 1),
                }
        await store.close()

    total_runs = sum(counts.values())
    if args.json:
        print(json.dumps({"runs": total_runs, "fill_s": round(fill_s, 1), "pages": results}))
        return
    print(f"store: {total_runs} runs, {args.deliveries}+ deliveries, filled in {fill_s:.1f} s; "
          f"{args.n} requests per page (aiohttp test client, in process)")
    print(f"{'page':<28} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'KiB':>6}")
    for name, r in results.items():
        print(f"{name:<28} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f} {r['max_ms']:>8.2f} "
              f"{r['kb']:>6.1f}")


if __name__ == "__main__":
    asyncio.run(main())
