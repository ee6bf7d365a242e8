"""Fixtures of the dispatch tests: the daemon subprocess of ``tests/daemon`` (e2e tests),
and the service under test, in-process with a gate (``test_e2e`` uses a threaded one)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.daemon.conftest import start_daemon

from .service import Service, serve

__all__ = ["service", "start_daemon"]


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    async with serve(gated=True) as svc:
        yield svc
