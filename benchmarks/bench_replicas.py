"""Benchmark: accepted ``record_delivery`` per second with 1, 2 and 3 PostgreSQL store replicas.

Each replica is its own process with its own pool (as separate daemons would), all on one
PostgreSQL (a throwaway cluster from ``tests/pg.py`` unless ``--dsn``); the peer in the same
run is one SQLite store. Usage: ``python benchmarks/bench_replicas.py [--n 6000] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg

from testmesh_reconciler.store import (
    Delivery,
    DeliveryId,
    Run,
    RunId,
    SqliteStore,
    Store,
    SystemClock,
    new_id,
)
from testmesh_reconciler.store.postgres import PostgresStore

CLOCK = SystemClock()
MAX_QUEUED = 1000  # the daemon's default --max-queued-runs


def _pair(i: int, keys: int) -> tuple[Delivery, Run]:
    """One push delivery and its run; ``keys`` serial keys, so newer runs supersede older."""
    now = CLOCK.now()
    sha = f"{i:040x}"
    delivery = Delivery(
        id=DeliveryId(new_id()), source="gitea", workspace="default", event="push",
        repo=f"acme/repo{i % 50}", branch="main", sha=sha, received_at=now,
        payload_digest="0" * 64, dedup_key=f"key-{i}-{new_id()}", matched_rules=("smoke",),
        integration="gitea-internal", http_status=202,
    )  # fmt: skip
    run = Run(
        id=RunId(new_id()), workspace="default", suite=f"suite{i % 10}", suite_id="x",
        rule="smoke", trigger_type="webhook", queued_at=now, serial_key=f"smoke|{i % keys}",
        trigger={"sha": sha, "repo": f"acme/repo{i % 50}", "branch": "main"},
        trigger_ref=sha, revision="rev",
    )  # fmt: skip
    return delivery, run


async def _replica(
    kind: str, target: str, n: int, offset: int, tasks: int, keys: int, pool: int,
    start: Barrier, end: Barrier,
) -> dict[str, Any]:  # fmt: skip
    store: Store = (
        PostgresStore(target, min_size=pool, max_size=pool)
        if kind == "postgres"
        else SqliteStore(target)
    )
    await store.open()
    latencies: list[float] = []
    counter = iter(range(offset, offset + n))
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        for i in counter:
            delivery, run = _pair(i, keys)
            began = time.perf_counter()
            result = await store.record_delivery(
                delivery, [run], dedup_window_start=CLOCK.now() - timedelta(hours=1),
                max_queued=MAX_QUEUED,
            )  # fmt: skip
            latencies.append(time.perf_counter() - began)
            accepted += result.rejected is None and not result.duplicate

    await asyncio.to_thread(start.wait)
    wall, cpu = time.time(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    out = {
        "began": wall,
        "ended": time.time(),
        "client_cpu_s": time.process_time() - cpu,
        "accepted": accepted,
        "latencies": latencies,
    }
    await asyncio.to_thread(end.wait)  # the server's CPU is read while backends still live
    await store.close()
    return out


def _replica_process(args: tuple[Any, ...], results: Any) -> None:
    results.put(asyncio.run(_replica(*args)))


def _server_cpu(postmaster: int | None) -> float | None:
    """CPU seconds of the postmaster and its children (the backends), from /proc."""
    if postmaster is None or not Path("/proc").is_dir():
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _run(
    kind: str, target: str, replicas: int, n: int, tasks: int, keys: int, pool: int,
    postmaster: int | None,
) -> dict[str, Any]:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    start, end = ctx.Barrier(replicas + 1), ctx.Barrier(replicas + 1)
    results = ctx.Queue()
    share = n // replicas
    procs = [
        ctx.Process(
            target=_replica_process,
            args=((kind, target, share, r * share, tasks, keys, pool, start, end), results),
        )
        for r in range(replicas)
    ]
    for proc in procs:
        proc.start()
    start.wait()
    server0 = _server_cpu(postmaster)
    end.wait()
    server1 = _server_cpu(postmaster)
    outs = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    elapsed = max(o["ended"] for o in outs) - min(o["began"] for o in outs)
    latencies = sorted(x for o in outs for x in o["latencies"])
    accepted = sum(o["accepted"] for o in outs)
    return {
        "store": kind,
        "replicas": replicas,
        "accepted": accepted,
        "per_second": round(accepted / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "client_cpu_s": round(sum(o["client_cpu_s"] for o in outs), 2),
        "server_cpu_s": None if server0 is None or server1 is None else round(server1 - server0, 2),
        "wall_s": round(elapsed, 2),
    }


def _fresh_database(admin_dsn: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    cluster = None
    if args.dsn:
        admin, postmaster = args.dsn, None
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.pg import find_bindir, start_cluster

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("no PostgreSQL binaries: run scripts/pg-ensure.sh or pass --dsn")
        cluster = start_cluster(bindir)
        admin, postmaster = cluster.dsn(), cluster.process.pid
    rows: list[dict[str, Any]] = []
    try:
        common = (args.n, args.tasks, args.keys, args.pool)
        with tempfile.TemporaryDirectory() as tmp:
            target = str(Path(tmp) / "bench.sqlite3")
            rows.append(_run("sqlite", target, 1, *common, None))
        for replicas in (1, 2, 3):
            rows.append(_run("postgres", _fresh_database(admin), replicas, *common, postmaster))
    finally:
        if cluster is not None:
            from tests.pg import stop_cluster

            stop_cluster(cluster)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=6000, help="deliveries per configuration")
    parser.add_argument("--tasks", type=int, default=16, help="concurrent callers per replica")
    parser.add_argument("--pool", type=int, default=8, help="connections per PostgreSQL replica")
    parser.add_argument("--keys", type=int, default=100, help="distinct serial keys")
    parser.add_argument("--dsn", help="an existing PostgreSQL (admin database) instead")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = main(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{os.cpu_count()} CPUs; {args.n} deliveries each, {args.tasks} tasks per replica")
        header = ("store", "replicas", "per_second", "p50_ms", "p99_ms", "client_cpu_s",
                  "server_cpu_s", "wall_s")  # fmt: skip
        print("  ".join(f"{h:>12}" for h in header))
        for row in rows:
            print("  ".join(f"{row[h]!s:>12}" for h in header))
