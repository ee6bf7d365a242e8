"""The pages of a real daemon in headless Chromium, after real runs (pass, fail, error).

The failed run's page is opened through the ``target_url`` the daemon posted to FakeGitea,
as someone clicking the commit status would; the overview, deliveries, config,
environments and suite pages show the same runs. Screenshots go to
``artifacts/screenshots/real-*.png``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests import browser
from tests.statuses_e2e.conftest import E2E, ERROR, FAIL, PASS, REPO, sha_of

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = browser.ensure_chromium()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return path


async def load(chromium: str, url: str, name: str, *, height: int = 1600) -> str:
    """The rendered DOM of ``url``; its screenshot saved as ``SHOTS/<name>.png``."""
    dom = await asyncio.to_thread(browser.dump_dom, chromium, url)
    await asyncio.to_thread(browser.screenshot, chromium, url, SHOTS / f"{name}.png",
                            height=height)
    assert "<header" in dom and "<main" in dom
    return dom


async def test_real_failed_run_and_pages_in_chromium(chromium: str, e2e: E2E) -> None:
    runs: dict[str, str] = {}
    for branch in (PASS, FAIL, ERROR):
        sha = sha_of(f"browser-{branch}")
        runs[branch] = await e2e.push_run(branch, sha)
        await e2e.wait_run(runs[branch])
        await e2e.wait_statuses(sha, 2)
    await e2e.wait_outbox_idle()
    failed = runs[FAIL]
    final = e2e.gitea.statuses_for(REPO, sha_of(f"browser-{FAIL}"))[-1]
    assert final.state == "failure"
    assert final.target_url == e2e.target_url(failed)

    dom = await load(chromium, final.target_url, "real-run-failed", height=2000)
    assert f"e2e-fail run {failed[:8]}" in dom and "failed" in dom
    for flow in ("e2e-ok", "e2e-answer", "e2e-after"):
        assert flow in dom
    assert "Assertion failed:" in dom and "body.answer == 42" in dom
    assert "<code>body.answer</code>" in dom and "<code>41</code>" in dom
    assert "TestMesh: tests failed" in dom  # the statuses posted for the run
    for secret in ("e2e-gitea-token", "e2e-gitea-hook", "e2e-api-token"):
        assert secret not in dom

    dom = await load(chromium, f"{e2e.url}/", "real-overview")
    assert "Recent runs" in dom
    for run_id in runs.values():
        assert run_id[:8] in dom

    dom = await load(chromium, f"{e2e.url}/deliveries", "real-deliveries")
    assert "acme/shop" in dom
    for branch in (PASS, FAIL, ERROR):
        assert branch in dom

    dom = await load(chromium, f"{e2e.url}/config", "real-config", height=2400)
    assert "Rules per repository" in dom
    for name in ("e2e-pass", "e2e-fail", "e2e-error", "argocd-closed", "e2e-unreachable"):
        assert name in dom
    assert "e2e-gitea-token" not in dom

    dom = await load(chromium, f"{e2e.url}/test-environments", "real-environments")
    assert "e2e-unreachable" in dom and "provisioning failed" in dom

    dom = await load(chromium, f"{e2e.url}/suites/default/e2e-fail", "real-suite")
    assert "<svg" in dom and failed[:8] in dom and "e2e-fail" in dom
    e2e.gitea.assert_no_violations()
