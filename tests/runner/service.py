"""A small aiohttp service under test for the runner: health, products, and endpoints that
fail N times, answer slowly, echo the request, redirect, or wait for concurrent callers.

``serve()`` runs it on 127.0.0.1 (a free port) for one test; ``Service.calls`` counts hits.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class State:
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    calls: Counter[str] = field(default_factory=Counter)
    inside: int = 0
    peak: int = 0
    arrived: dict[str, int] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


STATE = web.AppKey("state", State)


def _state(request: web.Request) -> State:
    return request.app[STATE]


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def create_product(request: web.Request) -> web.Response:
    state = _state(request)
    data = await request.json()
    if not isinstance(data, dict) or "name" not in data:
        return web.json_response({"error": "name is required"}, status=400)
    pid = f"p{next(state.ids)}"
    product = {"id": pid, "inventory": 0, **data}
    product["id"] = pid
    state.products[pid] = product
    return web.json_response(product, status=201)


async def list_products(request: web.Request) -> web.Response:
    items = list(_state(request).products.values())
    limit = int(request.query.get("limit", "100"))
    return web.json_response({"items": items[:limit], "total": len(items)})


async def get_product(request: web.Request) -> web.Response:
    product = _state(request).products.get(request.match_info["id"])
    if product is None:
        return web.json_response({"error": "not found"}, status=404)
    return web.json_response(product)


async def update_product(request: web.Request) -> web.Response:
    product = _state(request).products.get(request.match_info["id"])
    if product is None:
        return web.json_response({"error": "not found"}, status=404)
    product.update(await request.json())
    return web.json_response(product)


async def delete_product(request: web.Request) -> web.Response:
    state = _state(request)
    pid = request.match_info["id"]
    state.deleted.append(pid)
    if state.products.pop(pid, None) is None:
        return web.json_response({"error": "not found"}, status=404)
    return web.Response(status=204)


async def flaky(request: web.Request) -> web.Response:
    """``/flaky/{key}?fail=N``: 503 for the first N calls of ``key``, then 200."""
    state = _state(request)
    key = request.match_info["key"]
    state.calls[f"flaky:{key}"] += 1
    attempt = state.calls[f"flaky:{key}"]
    if attempt <= int(request.query.get("fail", "2")):
        return web.json_response({"error": "try again", "attempt": attempt}, status=503)
    return web.json_response({"ok": True, "attempt": attempt})


async def eventually(request: web.Request) -> web.Response:
    """``/eventually/{key}?after=N``: ``pending`` for N calls, then ``ready``."""
    state = _state(request)
    key = request.match_info["key"]
    state.calls[f"eventually:{key}"] += 1
    ready = state.calls[f"eventually:{key}"] > int(request.query.get("after", "2"))
    return web.json_response({"status": "ready" if ready else "pending"})


async def slow(request: web.Request) -> web.Response:
    """``/slow?seconds=S``: answers after S seconds (real time)."""
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.json_response({"slow": True})


async def echo(request: web.Request) -> web.Response:
    """Any method: the request back as JSON (method, path, query, headers, body)."""
    raw = await request.read()
    body: Any = raw.decode("utf-8", errors="replace")
    if request.content_type == "application/json" and raw:
        body = await request.json()
    return web.json_response({
        "method": request.method, "path": request.path, "query": dict(request.query),
        "headers": dict(request.headers), "body": body, "content_type": request.content_type,
        "peer": list(request.transport.get_extra_info("peername") or ()) if request.transport
        else [],
    }, headers={"X-Echo": "yes", "Set-Cookie": "session=abc123"})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.Response(status=code, text=f"status {code}")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/echo?redirected=1")


async def text(request: web.Request) -> web.Response:
    return web.Response(text="plain words", content_type="text/plain")


async def big(request: web.Request) -> web.Response:
    return web.json_response({"data": "x" * 10_000})


async def barrier(request: web.Request) -> web.Response:
    """``/barrier/{key}?n=N``: waits until N callers with ``key`` are inside at once (200),
    or 5 s (504): proves that requests really run concurrently, without timing guesses."""
    state = _state(request)
    key = request.match_info["key"]
    n = int(request.query.get("n", "2"))
    gate = state.gates.setdefault(key, asyncio.Event())
    state.arrived[key] = state.arrived.get(key, 0) + 1
    state.inside += 1
    state.peak = max(state.peak, state.inside)
    try:
        if state.arrived[key] >= n:
            gate.set()
        try:
            await asyncio.wait_for(gate.wait(), 5)
        except TimeoutError:
            return web.json_response({"together": False}, status=504)
        return web.json_response({"together": True, "arrived": state.arrived[key]})
    finally:
        state.inside -= 1


def create_app(state: State | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = state or State()
    for prefix in ("", "/api/v1"):
        app.router.add_post(f"{prefix}/products", create_product)
        app.router.add_get(f"{prefix}/products", list_products)
        app.router.add_get(f"{prefix}/products/{{id}}", get_product)
        app.router.add_put(f"{prefix}/products/{{id}}", update_product)
        app.router.add_delete(f"{prefix}/products/{{id}}", delete_product)
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", health)
    app.router.add_get("/flaky/{key}", flaky)
    app.router.add_get("/eventually/{key}", eventually)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/text", text)
    app.router.add_get("/big", big)
    app.router.add_get("/barrier/{key}", barrier)
    return app


@dataclass
class Service:
    url: str
    state: State


@asynccontextmanager
async def serve() -> AsyncIterator[Service]:
    """The service on 127.0.0.1 and a free port, for the duration of the block."""
    state = State()
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    try:
        yield Service(url=str(server.make_url("")).rstrip("/"), state=state)
    finally:
        await server.close()
