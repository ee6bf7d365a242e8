"""Benchmark: environment acquisition on a store holding 1,000 environment records.

100 concurrent acquisitions over 20 contexts (10 with a warm record, 10 new) against the
fake Argo CD on 127.0.0.1, served by a child process so that its request handling neither
queues on the manager's event loop nor competes for its GIL (its Progressing -> Healthy
waits run on a fake clock). Checks provisionings == new contexts and reports acquisition
overhead, i.e. latency minus the time spent inside Argo CD provisioning (``ensure_ready``),
beside the peer floor of one store read. Each round is one burst on a fresh store and fake;
log lines are off unless ``--log-info`` (JSON lines at INFO, written to /dev/null).
Usage: ``python benchmarks/bench_environments.py [--records 1000] [--runs 100] [--rounds 5]
[--log-info] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testmesh_reconciler import environments
from testmesh_reconciler.environments import EnvironmentManager
from testmesh_reconciler.log import configure_logging
from testmesh_reconciler.store import (
    EnvironmentId,
    EnvironmentInstance,
    FakeClock,
    SqliteStore,
    new_id,
)
from tests.environments.conftest import PR_VARS, load_snapshot
from tests.testing.fake_argocd import FakeArgoCD

CONTEXTS = 20
WARM = 10


class ArgoProcess:
    """The fake Argo CD served by a child process (its own interpreter, event loop and GIL):
    the benchmark's process only runs the manager, its HTTP client and the store. The warm
    apps are seeded at start; ``stop`` returns the fake's request counters."""

    def __init__(self, token: str, warm_apps: list[str]) -> None:
        self._args = [sys.executable, __file__, "--serve-argocd", token, *warm_apps]
        self._proc: asyncio.subprocess.Process | None = None
        self.base_url = ""

    async def start(self) -> str:
        self._proc = await asyncio.create_subprocess_exec(
            *self._args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self._proc.stdout is not None
        self.base_url = (await self._proc.stdout.readline()).decode().strip()
        if not self.base_url.startswith("http://"):
            raise RuntimeError(f"the fake Argo CD did not start: {self.base_url!r}")
        return self.base_url

    async def stop(self) -> dict[str, int]:
        """Ask for the counters (creates, syncs) and let the child exit."""
        assert self._proc is not None and self._proc.stdin is not None
        out, _ = await self._proc.communicate(b"stop\n")
        counters: dict[str, int] = json.loads(out)
        return counters


async def _serve_argocd(token: str, warm_apps: list[str]) -> None:
    """Child side of ``ArgoProcess``: serve until a line arrives on stdin, then print the
    counters as JSON."""
    fake = FakeArgoCD(token=token, debug=False)
    for app in warm_apps:
        fake.add_app(app, sync="Synced", health="Healthy")
    print(await fake.start(), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await fake.stop()
    print(json.dumps({"creates": sum(fake.creates.values()),
                      "syncs": sum(fake.syncs.values())}), flush=True)


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered) * 1000, 3),
            "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3)}


async def _seed(store: SqliteStore, clock: FakeClock, records: int) -> None:
    """The records, written together (one transaction: the history of a long-running store,
    not 1,000 fresh commits whose WAL checkpoint would still be running in the burst)."""
    now = clock.now()
    envs: list[EnvironmentInstance] = []
    for i in range(records):
        warm = i < WARM
        context = f"pr-{i}" if warm else f"old-{i}"
        env = EnvironmentInstance(
            id=EnvironmentId(new_id()), workspace="default", name="review", context=context,
            state="warm" if warm else "destroyed", provider="argocd",
            created_at=now - timedelta(seconds=records - i), ttl_minutes=60.0,
            provider_app_name=f"shop-{context}", namespace=f"review-{context}",
            routing={}, last_used_at=now, expires_at=now + timedelta(hours=1))
        envs.append(env)
    assert all(await asyncio.gather(*(store.insert_environment(env) for env in envs)))


async def bench(records: int, runs: int, log_info: bool = False) -> dict[str, Any]:
    if log_info:
        configure_logging("json", stream=open(os.devnull, "w"))  # noqa: SIM115, ASYNC230
    else:
        configure_logging("json")
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    argo = ArgoProcess("argo-t0k3n", [f"shop-pr-{i}" for i in range(WARM)])
    base_url = await argo.start()
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    argo_time: dict[str, float] = {}
    real_ensure = environments.ensure_ready  # type: ignore[attr-defined]

    async def timed_ensure(client: Any, **kwargs: Any) -> Any:  # time inside Argo CD
        start = time.perf_counter()
        try:
            return await real_ensure(client, **kwargs)
        finally:
            argo_time[kwargs["app_name"]] = time.perf_counter() - start

    environments.ensure_ready = timed_ensure  # type: ignore[attr-defined]
    snapshot = load_snapshot(base_url)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.sqlite3")
        await store.open()
        await _seed(store, clock, records)
        async with httpx.AsyncClient(timeout=10.0) as http:
            manager = EnvironmentManager(store, http=http, clock=clock, sleep=sleep,
                                         replica="bench", provision_timeout=600.0,
                                         snapshot=lambda: snapshot)

            async def timed(make: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
                start = time.perf_counter()
                result = await make()
                return time.perf_counter() - start, result

            def acquire(i: int) -> Callable[[], Awaitable[Any]]:
                variables = {**PR_VARS, "pr_number": str(i % CONTEXTS)}
                return lambda: manager.acquire(snapshot=snapshot, workspace="default",
                                               name="review", variables=variables,
                                               run_id=f"run-{i}")

            # A daemon's HTTP stack is imported and connected long before its first burst:
            # without this, the first request's lazy imports (httpcore, anyio, h11: about
            # 20 ms) land inside the measured window.
            await http.get(f"{base_url}/api/version")
            burst_start, cpu_start = time.perf_counter(), time.process_time()
            results = await asyncio.gather(*(timed(acquire(i)) for i in range(runs)))
            burst = time.perf_counter() - burst_start
            cpu = time.process_time() - cpu_start  # this process: manager, store, HTTP client
            overhead = [elapsed - argo_time.get(f"shop-pr-{i % CONTEXTS}", 0.0)
                        for i, (elapsed, _) in enumerate(results)]
            reuse_concurrent = [elapsed for i, (elapsed, _) in enumerate(results)
                                if i % CONTEXTS < WARM]
            for _, acquired in results:
                await manager.release(acquired, failed=False)
            sequential = [(await timed(acquire(i)))[0] for i in range(CONTEXTS)]
            floor = [(await timed(lambda: store.get_environment("missing")))[0]
                     for _ in range(200)]
        await store.close()
    counters = await argo.stop()
    environments.ensure_ready = real_ensure  # type: ignore[attr-defined]
    creates = counters["creates"]
    return {
            "records": records, "runs": runs, "contexts": CONTEXTS,
            "new_contexts": CONTEXTS - WARM, "provisionings": manager.provisionings,
            "argocd_creates": creates, "argocd_syncs": counters["syncs"],
            "ok": manager.provisionings == creates == CONTEXTS - WARM,
            "overhead_concurrent": _ms(overhead),
            "overhead_new_contexts": _ms([o for i, o in enumerate(overhead)
                                          if i % CONTEXTS >= WARM]),
            "cpu_ms_per_acquisition": round(cpu / runs * 1000, 3),
            "amortized_ms_per_acquisition": round(
                (burst - max(argo_time.values(), default=0.0)) / runs * 1000, 3),
            "reuse_latency_concurrent": _ms(reuse_concurrent),
            "reuse_latency_sequential": _ms(sequential),
            "peer_store_read": _ms(floor),
    }


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several rounds: counts must hold in every round, timings are the
    median over rounds, and the headline median of each round is listed."""
    report: dict[str, Any] = dict(rounds[0])
    report["ok"] = all(r["ok"] for r in rounds)
    report["provisionings"] = [r["provisionings"] for r in rounds]
    for key, value in rounds[0].items():
        if isinstance(value, dict):
            report[key] = {k: round(statistics.median(r[key][k] for r in rounds), 3)
                           for k in value}
        elif key in ("amortized_ms_per_acquisition", "cpu_ms_per_acquisition"):
            report[key] = round(statistics.median(r[key] for r in rounds), 3)
    report["rounds"] = len(rounds)
    report["overhead_median_ms_per_round"] = [r["overhead_concurrent"]["median_ms"]
                                              for r in rounds]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5,
                        help="bursts, each on a fresh store and fake (medians are reported)")
    parser.add_argument("--log-info", action="store_true",
                        help="keep the INFO log lines (JSON, to /dev/null), as a daemon would")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-argocd", nargs="+", metavar="TOKEN_AND_APPS",
                        help=argparse.SUPPRESS)  # the child process of ArgoProcess
    args = parser.parse_args()
    if args.serve_argocd:
        asyncio.run(_serve_argocd(args.serve_argocd[0], args.serve_argocd[1:]))
        return 0
    rounds = [asyncio.run(bench(args.records, args.runs, args.log_info))
              for _ in range(args.rounds)]
    report = _combine(rounds)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:28} {value}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
