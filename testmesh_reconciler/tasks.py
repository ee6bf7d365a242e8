"""Guarded, named background tasks: a crash is logged with the loop's name, not lost.

``guard`` runs a coroutine factory; when it raises, the crash is logged and (for
restartable loops) it is started again after a growing delay; an eternal loop that
returns is reported as a warning. ``start_guarded`` wraps it in a named ``asyncio.Task``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from testmesh_reconciler.log import get_logger

CoroFactory = Callable[[], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]

log = get_logger("testmesh.tasks")


async def guard(name: str, factory: CoroFactory, *, restart: bool = True,
                eternal: bool = True, backoff: tuple[float, float] = (1.0, 60.0),
                sleep: Sleep = asyncio.sleep) -> None:
    """Run ``factory()`` under a guard; restart it with exponential backoff on a crash."""
    delay = backoff[0]
    while True:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_task_crashed", task=name, restart_in=delay if restart
                          else None)
            if not restart:
                return
            await sleep(delay)
            delay = min(delay * 2, backoff[1])
            continue
        if eternal:
            log.warning("background_task_returned", task=name)
        return


def start_guarded(name: str, factory: CoroFactory, *, restart: bool = True,
                  eternal: bool = True, sleep: Sleep = asyncio.sleep) -> asyncio.Task[None]:
    """Start ``guard(name, factory)`` as a task named ``name``."""
    return asyncio.create_task(
        guard(name, factory, restart=restart, eternal=eternal, sleep=sleep), name=name)


async def cancel_all(tasks: Iterable[asyncio.Task[None]], *, grace: float = 5.0) -> None:
    """Cancel ``tasks`` and wait (bounded) until they have ended."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), grace)


__all__ = ["CoroFactory", "cancel_all", "guard", "start_guarded"]
