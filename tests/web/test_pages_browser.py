"""Every dashboard page in headless Chromium: served on 127.0.0.1 from a real store, its DOM
checked for the key content, and a screenshot saved under ``artifacts/screenshots/``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from testmesh_reconciler.store import FakeClock, SqliteStore
from tests import browser
from tests.web import REPO_ROOT, SECRET, SHA, Sample, fill_store, page_app, sample_state

pytestmark = pytest.mark.browser

SHOTS = REPO_ROOT / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = browser.ensure_chromium()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Sample]]:
    clock = FakeClock(datetime(2025, 6, 2, 9, 0, tzinfo=UTC))
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    sample = await fill_store(store, clock)
    state = sample_state(clock.now(), failed_reload=True)
    runner = web.AppRunner(page_app(store, lambda: state, clock))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", sample
    finally:
        await runner.cleanup()
        await store.close()


async def load(chromium: str, url: str, name: str, *, height: int = 1600) -> str:
    """The rendered DOM of ``url``, and its screenshot as ``artifacts/screenshots/name.png``."""
    dom = await asyncio.to_thread(browser.dump_dom, chromium, url)
    await asyncio.to_thread(browser.screenshot, chromium, url, SHOTS / f"{name}.png",
                            height=height)
    assert SECRET not in dom
    assert "<header" in dom and 'aria-label="Main"' in dom and "<main" in dom
    return dom


async def test_every_page_in_chromium(chromium: str, served: tuple[str, Sample]) -> None:
    base, sample = served

    dom = await load(chromium, f"{base}/", "overview")
    assert "The last config reload failed" in dom and "rules/shop.yaml:12:5" in dom
    assert "Recent runs" in dom and "Environments by state" in dom

    dom = await load(chromium, f"{base}/suite-runs/{sample.failed_run}", "run-failed",
                     height=2400)
    assert f"smoke run {sample.failed_run[:8]} — failed" in dom
    assert f"https://gitea.internal/acme/shop-deploy/commit/{SHA}" in dom
    assert "Assertion failed:" in dom and "<details>" in dom
    assert "<script>alert(1)</script>" not in dom

    dom = await load(chromium, f"{base}/suite-runs/{sample.failed_run}?details=open",
                     "run-failed-expanded", height=3200)
    assert "<details open" in dom and "Authorization: ***" in dom

    dom = await load(chromium, f"{base}/suite-runs/{sample.passed_run}", "run-passed")
    assert "https://gitea.internal/acme/shop/pulls/42" in dom and "All 3 flows passed" in dom

    dom = await load(chromium, f"{base}/suite-runs/{sample.running_run}", "run-running")
    assert 'http-equiv="refresh"' in dom and "— running" in dom

    dom = await load(chromium, f"{base}/suite-runs/unknown-run", "run-not-found", height=600)
    assert "Run not found" in dom

    dom = await load(chromium, f"{base}/suites/default/smoke", "suite")
    assert "<svg" in dom and "pass rate" in dom and "<circle" in dom

    dom = await load(chromium, f"{base}/deliveries", "deliveries")
    assert "does not match the app filter" in dom and "bad signature" in dom
    dom = await load(chromium, f"{base}/deliveries?outcome=ignored", "deliveries-ignored")
    assert "bad signature" not in dom

    dom = await load(chromium, f"{base}/test-environments", "environments")
    for state in ("cold", "provisioning", "warm", "running", "cooling", "destroyed"):
        assert f"env-{state}" in dom

    dom = await load(chromium, f"{base}/config", "config", height=2400)
    assert "Rules per repository" in dom and "configured" in dom
    assert "GITEA_TOKEN" not in dom
