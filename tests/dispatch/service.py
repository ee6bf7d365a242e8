"""A service under test that counts requests per key, with a gate and an optional delay.

``GET /hit/{key}?delay=S`` counts one request for ``key``, waits while the gate is closed,
sleeps ``S`` seconds, answers 200. ``serve()`` runs it in-process; ``ThreadedService`` in a
thread of its own (for tests that block on a daemon subprocess).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class State:
    counts: Counter[str] = field(default_factory=Counter)
    gate: asyncio.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str) -> int:
        with self.lock:
            return self.counts[key]

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


STATE: web.AppKey[State] = web.AppKey("state")


async def hit(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = request.match_info["key"]
    with state.lock:
        state.counts[key] += 1
    if state.gate is not None:
        await state.gate.wait()
    delay = float(request.query.get("delay", "0") or 0)
    if delay > 0:
        await asyncio.sleep(delay)
    return web.json_response({"key": key, "count": state.count(key)})


async def counts(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


def create_app(state: State) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/hit/{key}", hit)
    app.router.add_get("/counts", counts)
    return app


@dataclass
class Service:
    url: str
    state: State


@asynccontextmanager
async def serve(*, gated: bool = False) -> AsyncIterator[Service]:
    state = State()
    if gated:
        state.gate = asyncio.Event()
        state.gate.set()
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    try:
        yield Service(url=str(server.make_url("")).rstrip("/"), state=state)
    finally:
        if state.gate is not None:
            state.gate.set()
        await server.close()


class ThreadedService:
    """The service on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.state = State()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> ThreadedService:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("service did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(create_app(self.state), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
