"""Benchmark: the flow runner's overhead per ``http_request`` step, against its peer.

N requests (default 1,000) against a local aiohttp server in its own process, made once as a
flow of N ``http_request`` steps (interpolated URL, ``status == 200`` asserted, summaries
recorded) and once directly with one ``httpx.AsyncClient``; same client settings, both in one
run, alternating, several rounds. Target: runner / direct <= 1.3 (median). Run:
``python benchmarks/bench_runner.py [N] [ROUNDS]``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import statistics
import sys
import time

import httpx

from testmesh_reconciler.config.frozen import FrozenDict
from testmesh_reconciler.config.model import FlowDefinition, Step
from testmesh_reconciler.runner.flows import run_flow

TARGET = 1.3


def _serve(port: int) -> None:
    from aiohttp import web

    async def item(request: web.Request) -> web.Response:
        n = request.match_info["n"]
        return web.json_response({"id": n, "name": f"item {n}", "price": 9.99, "tags": ["a"]})

    app = web.Application()
    app.router.add_get("/items/{n}", item)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _wait_up(base: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                await client.get(f"{base}/items/0")
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    raise RuntimeError("benchmark server did not start")


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=10))


async def direct(base: str, count: int) -> float:
    """The peer: the same requests with one client, JSON parsed, status checked."""
    async with _client() as client:
        start = time.perf_counter()
        for i in range(count):
            response = await client.get(f"{base}/items/{i}")
            response.json()
            assert response.status_code == 200
        return time.perf_counter() - start


def flow_of(count: int) -> FlowDefinition:
    return FlowDefinition(name="bench", steps=tuple(
        Step(action="http_request", id=f"get_{i}",
             config=FrozenDict({"method": "GET", "url": f"${{BASE_URL}}/items/{i}"}),
             asserts=("status == 200",))
        for i in range(count)))


async def runner(base: str, definition: FlowDefinition) -> float:
    async with _client() as client:
        start = time.perf_counter()
        result = await run_flow(definition, client=client, variables={"BASE_URL": base})
        elapsed = time.perf_counter() - start
    assert result.status == "passed", result.error
    assert len(result.steps) == len(definition.steps)
    return elapsed


async def measure(base: str, count: int, rounds: int) -> tuple[list[float], list[float]]:
    await _wait_up(base)
    definition = flow_of(count)
    await direct(base, min(count, 200))  # warm-up: imports, caches, server
    await runner(base, flow_of(min(count, 200)))
    directs: list[float] = []
    runners: list[float] = []
    for r in range(rounds):
        if r % 2:
            runners.append(await runner(base, definition))
            directs.append(await direct(base, count))
        else:
            directs.append(await direct(base, count))
            runners.append(await runner(base, definition))
    return directs, runners


def main(count: int = 1000, rounds: int = 11) -> int:
    port = _free_port()
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        directs, runners = asyncio.run(measure(f"http://127.0.0.1:{port}", count, rounds))
    finally:
        server.terminate()
        server.join(5)
    d, r = statistics.median(directs), statistics.median(runners)
    # Each round's runner and direct timings are taken back to back, so their ratio cancels
    # most of the load drift of a shared machine; the median of those ratios is the figure.
    ratios = sorted(rr / dd for rr, dd in zip(runners, directs, strict=True))
    ratio = statistics.median(ratios)
    print(f"{count} http_request steps vs {count} direct httpx requests, {rounds} rounds:")
    print(f"  direct httpx: median {d * 1000:7.1f} ms ({d * 1e6 / count:6.1f} us/request), "
          f"best {min(directs) * 1000:7.1f} ms")
    print(f"  runner:       median {r * 1000:7.1f} ms ({r * 1e6 / count:6.1f} us/step), "
          f"best {min(runners) * 1000:7.1f} ms")
    print(f"  runner/direct: median of per-round ratios {ratio:.2f} "
          f"(range {ratios[0]:.2f}..{ratios[-1]:.2f}); best/best "
          f"{min(runners) / min(directs):.2f}; target <= {TARGET}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:3])))
