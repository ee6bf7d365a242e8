"""Benchmark of the SQLite runtime store: webhook-style writes with group commit, and lists.

Records N deliveries (one run each) from 32 concurrent tasks, reporting deliveries/s and
p50/p99 latency of ``record_delivery``; the peer in the same run is the same store with
group commit off (``max_batch=1``). Then times first pages of the lists at 10,000+ rows.
Usage: ``python benchmarks/bench_store.py [--n 5000] [--tasks 32] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from testmesh_reconciler.store import (
    Delivery,
    DeliveryId,
    Run,
    RunId,
    SqliteStore,
    SystemClock,
    new_id,
)

CLOCK = SystemClock()


def _pair(i: int) -> tuple[Delivery, Run]:
    now = CLOCK.now()
    sha = f"{i:040x}"
    delivery = Delivery(
        id=DeliveryId(new_id()), source="gitea" if i % 4 else "argocd", workspace="default",
        event="push", repo=f"acme/repo{i % 50}", branch="main", sha=sha, received_at=now,
        payload_digest="0" * 64, dedup_key=f"key-{i}-{new_id()}", matched_rules=("smoke",),
        integration="gitea-internal", http_status=202,
    )  # fmt: skip
    run = Run(
        id=RunId(new_id()), workspace="default", suite=f"suite{i % 10}", suite_id="x",
        rule="smoke", trigger_type="webhook", queued_at=now, serial_key=f"smoke|repo|{i}",
        trigger={"sha": sha, "repo": f"acme/repo{i % 50}", "branch": "main"},
        trigger_ref=sha, revision="rev",
    )  # fmt: skip
    return delivery, run


async def _writes(store: SqliteStore, n: int, tasks: int, offset: int = 0) -> dict[str, Any]:
    latencies: list[float] = []
    counter = iter(range(offset, offset + n))

    async def worker() -> None:
        for i in counter:
            delivery, run = _pair(i)
            start = time.perf_counter()
            await store.record_delivery(
                delivery, [run], dedup_window_start=CLOCK.now() - timedelta(hours=1),
                max_queued=10_000_000,
            )  # fmt: skip
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "deliveries": n,
        "seconds": round(elapsed, 3),
        "per_second": round(n / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
    }


async def _time(label: str, call: Any, repeat: int = 20) -> tuple[str, float]:
    await call()
    start = time.perf_counter()
    for _ in range(repeat):
        await call()
    return label, round((time.perf_counter() - start) / repeat * 1000, 3)


async def main(n: int, tasks: int, rows: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, batch in (("group_commit", 1000), ("no_group_commit", 1)):
            store = SqliteStore(Path(tmp) / f"{label}.sqlite3", max_batch=batch)
            await store.open()
            results[label] = await _writes(store, n, tasks)
            await store.close()

        store = SqliteStore(Path(tmp) / "group_commit.sqlite3")
        await store.open()
        if rows > n:
            await _writes(store, rows - n, tasks, offset=n)
        page = await store.list_runs(limit=50)
        deliveries = await store.list_deliveries(limit=50)
        lists = dict(
            [
                await _time("list_runs", lambda: store.list_runs(limit=50)),
                await _time("list_runs_suite", lambda: store.list_runs(
                    workspace="default", suite="suite3", limit=50)),
                await _time("list_runs_status", lambda: store.list_runs(
                    status="pending", limit=50)),
                await _time("list_runs_page2", lambda: store.list_runs(
                    limit=50, before=page[-1].id)),
                await _time("list_deliveries", lambda: store.list_deliveries(limit=50)),
                await _time("list_deliveries_repo", lambda: store.list_deliveries(
                    repo="acme/repo7", limit=50)),
                await _time("list_deliveries_page2", lambda: store.list_deliveries(
                    limit=50, before=deliveries[-1].id)),
                await _time("count_runs_by_status", store.count_runs_by_status),
            ]
        )  # fmt: skip
        start = time.perf_counter()
        claimed = 0
        while claimed < 1000 and await store.claim_run("bench", CLOCK.now(), 30):
            claimed += 1
        claim_s = time.perf_counter() - start
        results["lists_ms_at_rows"] = rows
        results["lists_ms"] = lists
        results["claim_run_per_second"] = round(claimed / claim_s)
        await store.close()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(main(args.n, args.tasks, args.rows))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key in ("group_commit", "no_group_commit"):
            r = out[key]
            print(f"record_delivery [{key}]: {r['per_second']}/s over {r['deliveries']} "
                  f"({r['seconds']} s), p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")  # fmt: skip
        print(f"first pages at {out['lists_ms_at_rows']} rows (ms):")
        for name, ms in out["lists_ms"].items():
            print(f"  {name}: {ms}")
        print(f"claim_run (sequential): {out['claim_run_per_second']}/s")
