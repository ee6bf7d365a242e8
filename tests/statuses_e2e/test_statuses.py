"""Commit statuses end to end: the real daemon process, signed Gitea pushes, ``FakeGitea``.

Each test gets its own daemon, config repo, service under test and FakeGitea (which checks
every request against Gitea's swagger), and ends with no contract violation. The states,
contexts, target URLs and descriptions are the fixed contract of DESIGN.md section 5.
"""

from __future__ import annotations

from tests.statuses_e2e.conftest import (
    API_TOKEN,
    E2E,
    ERROR,
    FAIL,
    PASS,
    REPO,
    SLOW,
    poll,
    sha_of,
)
from tests.testing.fake_gitea import GiteaStatus

PENDING_TEXT = "TestMesh: tests running..."
DESCRIPTION_LIMIT = 140


def states(statuses: list[GiteaStatus]) -> list[str]:
    return [s.state for s in statuses]


def check_shape(e2e: E2E, statuses: list[GiteaStatus], run_id: str, context: str) -> None:
    """Every status: the rule's context, the run page as target_url, a short description."""
    for status in statuses:
        assert status.context == context
        assert status.target_url == e2e.target_url(run_id)
        assert 0 < len(status.description) <= DESCRIPTION_LIMIT


async def test_passing_run_posts_pending_then_success(e2e: E2E) -> None:
    sha = sha_of("pass")
    run_id = await e2e.push_run(PASS, sha)
    run = await e2e.wait_run(run_id)
    assert run["status"] == "completed" and not run.get("error"), run
    await e2e.wait_statuses(sha, 2)
    await e2e.wait_outbox_idle()
    statuses = e2e.gitea.statuses_for(REPO, sha)
    assert states(statuses) == ["pending", "success"]
    check_shape(e2e, statuses, run_id, "testmesh/e2e-pass")
    assert statuses[0].description == PENDING_TEXT
    assert statuses[1].description.startswith("TestMesh: all tests passed")
    assert e2e.gitea.statuses == statuses  # nothing on any other commit
    e2e.gitea.assert_no_violations()


async def test_failed_assertion_posts_failure(e2e: E2E) -> None:
    sha = sha_of("fail")
    run_id = await e2e.push_run(FAIL, sha)
    run = await e2e.wait_run(run_id)
    assert run["status"] == "failed" and not run.get("error"), run
    flows = {f["flow"]: f["status"] for f in run["flows"]}
    assert flows == {"e2e-ok": "passed", "e2e-answer": "failed", "e2e-after": "skipped"}
    await e2e.wait_statuses(sha, 2)
    await e2e.wait_outbox_idle()
    statuses = e2e.gitea.statuses_for(REPO, sha)
    assert states(statuses) == ["pending", "failure"]
    check_shape(e2e, statuses, run_id, "testmesh/e2e-fail")
    assert statuses[1].description.startswith("TestMesh: tests failed")
    e2e.gitea.assert_no_violations()


async def test_environment_not_acquired_posts_error(e2e: E2E) -> None:
    sha = sha_of("error")
    run_id = await e2e.push_run(ERROR, sha)
    run = await e2e.wait_run(run_id)
    assert run["status"] == "failed", run
    assert run["error"] and "e2e-unreachable" in run["error"], run
    await e2e.wait_statuses(sha, 2)
    await e2e.wait_outbox_idle()
    statuses = e2e.gitea.statuses_for(REPO, sha)
    assert states(statuses) == ["pending", "error"]
    check_shape(e2e, statuses, run_id, "testmesh/e2e-error")  # the rule's report.context
    assert statuses[1].description.startswith("TestMesh: execution error")
    assert e2e.service.hits == {}  # no flow ran
    e2e.gitea.assert_no_violations()


async def test_gitea_failing_first_posts_then_recovering(e2e: E2E) -> None:
    e2e.gitea.fail_next(3, 503)
    sha = sha_of("flaky")
    run_id = await e2e.push_run(PASS, sha)
    await e2e.wait_run(run_id)
    statuses = await e2e.wait_statuses(sha, 2, timeout=30)
    await e2e.wait_outbox_idle()
    assert states(e2e.gitea.statuses_for(REPO, sha)) == ["pending", "success"]
    check_shape(e2e, statuses, run_id, "testmesh/e2e-pass")
    assert len(e2e.gitea.requests_to("POST", f"/statuses/{sha}")) == 3 + 2
    e2e.gitea.assert_no_violations()


async def test_gitea_down_during_the_run_then_up(e2e: E2E) -> None:
    e2e.gitea.go_down()
    sha = sha_of("outage")
    run_id = await e2e.push_run(PASS, sha)
    run = await e2e.wait_run(run_id)
    assert run["status"] == "completed"
    # at least one attempt hit the outage, and nothing got through
    await e2e.gitea.wait_for(lambda: len(e2e.gitea.requests) >= 1, 10)
    assert (await e2e.status())["outbox"]["queued"] >= 1
    assert e2e.gitea.statuses == []
    e2e.gitea.come_up()
    statuses = await e2e.wait_statuses(sha, 2, timeout=30)
    await e2e.wait_outbox_idle()
    assert states(e2e.gitea.statuses_for(REPO, sha)) == ["pending", "success"]
    check_shape(e2e, statuses, run_id, "testmesh/e2e-pass")
    e2e.gitea.assert_no_violations()


async def test_daemon_killed_between_pending_and_final(e2e: E2E) -> None:
    sha = sha_of("killed")
    run_id = await e2e.push_run(SLOW, sha)
    await e2e.wait_statuses(sha, 1)
    await poll(lambda: _is_set(e2e), "the slow step was sent", 10)
    e2e.daemon.kill()
    assert states(e2e.gitea.statuses_for(REPO, sha)) == ["pending"]
    await e2e.restart()
    run = await e2e.wait_run(run_id, timeout=20)
    assert run["status"] == "failed", run
    assert "interrupted" in (run.get("error") or ""), run
    statuses = await e2e.wait_statuses(sha, 2, timeout=20)
    await e2e.wait_outbox_idle()
    statuses = e2e.gitea.statuses_for(REPO, sha)
    assert states(statuses) == ["pending", "error"]
    check_shape(e2e, statuses, run_id, "testmesh/e2e-slow")
    assert statuses[1].description.startswith("TestMesh: execution error")
    assert e2e.service.hits.get("/slow") == 1  # never executed again
    e2e.gitea.assert_no_violations()


async def _is_set(e2e: E2E) -> bool:
    return e2e.service.slow_hit.is_set()


async def test_redelivered_push_starts_nothing_and_posts_nothing(e2e: E2E) -> None:
    sha = sha_of("redeliver")
    first = await e2e.push(PASS, sha, delivery="delivery-1")
    assert first.status_code == 202
    run_ids = first.json()["runs"]
    await e2e.wait_run(run_ids[0])
    await e2e.wait_statuses(sha, 2)
    await e2e.wait_outbox_idle()
    again = await e2e.push(PASS, sha, delivery="delivery-2")  # Gitea's "redeliver"
    assert again.status_code == 202, again.text
    assert again.json().get("duplicate") is True
    assert again.json()["runs"] == run_ids
    await e2e.wait_outbox_idle()
    runs = (await e2e.client.get("/api/v1/workspaces/default/suites/e2e-pass/runs")).json()
    items = runs["items"] if isinstance(runs, dict) else runs
    assert [r["id"] for r in items] == run_ids
    assert states(e2e.gitea.statuses_for(REPO, sha)) == ["pending", "success"]
    assert len(e2e.gitea.requests_to("POST")) == 2
    e2e.gitea.assert_no_violations()


async def test_status_identical_to_the_latest_is_not_posted(e2e: E2E) -> None:
    sha = sha_of("identical")
    e2e.gitea.seed_status(REPO, sha, "pending", "testmesh/e2e-pass", PENDING_TEXT)
    run_id = await e2e.push_run(PASS, sha)
    await e2e.wait_run(run_id)
    await e2e.wait_statuses(sha, 2)
    await e2e.wait_outbox_idle()
    assert states(e2e.gitea.statuses_for(REPO, sha)) == ["pending", "success"]
    posts = e2e.gitea.requests_to("POST")
    assert [p.json()["state"] for p in posts] == ["success"]  # the pending was skipped
    e2e.gitea.assert_no_violations()


async def test_manual_run_posts_nothing(e2e: E2E) -> None:
    response = await e2e.client.post(
        "/api/v1/workspaces/default/suites/e2e-pass/run", json={},
        headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    run = await e2e.wait_run(run_id)
    assert run["status"] == "completed" and run["trigger_type"] == "manual"
    await e2e.wait_outbox_idle()
    assert e2e.gitea.requests == []
    assert e2e.gitea.statuses == []
    assert "statuses" not in run["status_report"]
    e2e.gitea.assert_no_violations()


async def test_gitea_4xx_gives_up_at_once_and_is_visible(e2e: E2E) -> None:
    e2e.gitea.respond_with(422)
    sha = sha_of("refused")
    run_id = await e2e.push_run(PASS, sha)
    await e2e.wait_run(run_id)

    async def given_up_twice() -> dict[str, object] | None:
        status = await e2e.status()
        return status if status["outbox"]["given_up"] >= 2 else None

    status = await poll(given_up_twice, "both statuses given up", 15)
    outbox = status["outbox"]
    assert outbox["queued"] == 0 and outbox["given_up"] == 2
    assert "422" in outbox["last_give_up"]["reason"]
    # one attempt each: given up at once, never retried
    assert [p.json()["state"] for p in e2e.gitea.requests_to("POST")] == ["pending", "success"]
    report = (await e2e.run(run_id))["status_report"]
    assert "422" in report["given_up"]["reason"], report
    assert e2e.gitea.statuses == []
    e2e.gitea.assert_no_violations()
