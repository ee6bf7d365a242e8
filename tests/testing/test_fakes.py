"""Tests of the test doubles themselves: fake Gitea, fake Argo CD, payload builders.

Each fake is driven with a real ``httpx.AsyncClient`` over TCP and its answers are checked
against the swagger files in ``shared/contracts``, so a drifting fake fails here first.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .contracts import (
    CONTRACTS_ENV,
    ContractsNotFound,
    contracts_dir,
    load_bytes,
    operation,
    unknown_keys,
    validate_definition,
    validate_response,
)
from .fake_argocd import FakeArgoCD, build_application
from .fake_gitea import FakeGitea
from .webhook_payloads import (
    ARGOCD_SAMPLE,
    PR_SAMPLES,
    PUSH_SAMPLE,
    SAMPLE_PR_HEAD,
    SAMPLE_REPO,
    SAMPLE_SECRET,
    SAMPLE_SHA,
    ZERO_SHA,
    argocd_application,
    argocd_flat,
    argocd_flat_app,
    argocd_headers,
    gitea_pull_request,
    gitea_push,
    go_json,
)

SHA = "1" * 40
OTHER_SHA = "2" * 40
STATUS_PATH = f"/api/v1/repos/acme/shop/statuses/{SHA}"
GITEA_AUTH = {"Authorization": "token t0k3n"}
ARGO_AUTH = {"Authorization": "Bearer argo-t0k3n"}


def status_body(
    state: str = "pending", context: str = "testmesh/smoke", **extra: Any
) -> dict[str, Any]:
    return {
        "state": state,
        "target_url": "http://testmesh.local/suite-runs/1",
        "description": "TestMesh: tests running...",
        "context": context,
        **extra,
    }


@pytest.fixture
async def gitea() -> AsyncIterator[FakeGitea]:
    async with FakeGitea(token="t0k3n") as fake:
        yield fake


@pytest.fixture
async def gitea_client(gitea: FakeGitea) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gitea.base_url, headers=GITEA_AUTH) as client:
        yield client


@pytest.fixture
async def argocd() -> AsyncIterator[FakeArgoCD]:
    async with FakeArgoCD(token="argo-t0k3n") as fake:
        yield fake


@pytest.fixture
async def argo_client(argocd: FakeArgoCD) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=argocd.base_url, headers=ARGO_AUTH) as client:
        yield client


# --- contracts ---------------------------------------------------------------------


def test_contracts_dir_found_and_env_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = contracts_dir()
    assert (found / "gitea" / "swagger.v1.json").is_file()
    monkeypatch.setenv(CONTRACTS_ENV, str(found))
    assert contracts_dir().resolve() == found.resolve()  # shared/ may be a symlink
    monkeypatch.setenv(CONTRACTS_ENV, str(tmp_path))
    with pytest.raises(ContractsNotFound, match=CONTRACTS_ENV):
        contracts_dir()


def test_operation_lookup_by_template_and_concrete_path() -> None:
    op = operation("gitea", "POST", "/repos/{owner}/{repo}/statuses/{sha}")
    assert op is not None
    assert op.operation_id == "repoCreateStatus"
    concrete = operation("gitea", "post", f"/api/v1/repos/acme/shop/statuses/{SHA}")
    assert concrete == op
    by_ref = operation("gitea", "GET", f"/api/v1/repos/acme/shop/commits/{SHA}/status")
    assert by_ref is not None
    assert by_ref.operation_id == "repoGetCombinedStatusByRef"
    assert {"sort", "state", "page", "limit"} <= operation(
        "gitea", "GET", "/repos/{owner}/{repo}/commits/{ref}/statuses"
    ).parameter_names("query")  # type: ignore[union-attr]
    assert operation("gitea", "PUT", "/repos/{owner}/{repo}/statuses/{sha}") is None
    sync = operation("argocd", "POST", "/api/v1/applications/demo/sync")
    assert sync is not None
    assert sync.operation_id == "ApplicationService_Sync"


def test_validate_definition_reports_every_problem_and_unknown_keys() -> None:
    assert validate_definition("gitea", "CreateStatusOption", status_body(), strict=True) == []
    problems = validate_definition(
        "gitea", "CreateStatusOption", {"state": "done", "context": 1, "sha": SHA}, strict=True
    )
    assert len(problems) == 3
    assert any("$.state" in p and "'done'" in p for p in problems)
    assert any("$.context" in p for p in problems)
    assert any("unknown key 'sha'" in p for p in problems)
    with pytest.raises(KeyError, match="CreateStatusOptions"):
        validate_definition("gitea", "CreateStatusOptions", {})


def test_unknown_keys_walks_refs_and_arrays() -> None:
    app = build_application("demo")
    app["spec"]["source"]["repoUrl"] = "typo"
    assert unknown_keys("argocd", "v1alpha1Application", app) == [
        "$.spec.source: unknown key 'repoUrl' (allowed: chart, directory, helm, kustomize, "
        "name, path, plugin, ref, repoURL, tagPrefix, targetRevision)"
    ]


def test_validate_response_checks_declared_status_and_body() -> None:
    path = f"/api/v1/repos/acme/shop/statuses/{SHA}"
    assert validate_response("gitea", "POST", path, 201, {"id": "one"}) == [
        "repoCreateStatus 201$.id: 'one' is not of type 'integer'"
    ]
    assert validate_response("gitea", "POST", path, 200, {})[0].endswith(
        "not declared for POST /repos/{owner}/{repo}/statuses/{sha}"
    )
    assert validate_response("gitea", "DELETE", "/api/v1/nowhere", 200, {})[0].startswith("DELETE")
    # error statuses Gitea does not declare are not checked
    assert validate_response("gitea", "POST", path, 500, {"message": "x", "url": ""}) == []


# --- fake Gitea ----------------------------------------------------------------------


async def test_gitea_create_status_answers_a_valid_commit_status(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    response = await gitea_client.post(STATUS_PATH, json=status_body())
    assert response.status_code == 201
    body = response.json()
    assert validate_definition("gitea", "CommitStatus", body) == []
    assert body["status"] == "pending"
    assert body["context"] == "testmesh/smoke"
    assert body["url"] == f"{gitea.base_url}{STATUS_PATH}"
    assert body["creator"]["login"] == "testmesh-bot"
    [stored] = await gitea.wait_for_statuses(1)
    assert (stored.repo, stored.sha, stored.state, stored.context) == (
        "acme/shop",
        SHA,
        "pending",
        "testmesh/smoke",
    )
    assert stored.target_url == "http://testmesh.local/suite-runs/1"
    assert gitea.latest("acme/shop", SHA, "testmesh/smoke") == stored
    assert gitea.requests[0].json() == status_body()
    gitea.assert_no_violations()


async def test_gitea_accepts_bearer_and_rejects_bad_or_missing_token(gitea: FakeGitea) -> None:
    async with httpx.AsyncClient(base_url=gitea.base_url) as client:
        bearer = await client.post(
            STATUS_PATH, json=status_body(), headers={"Authorization": "Bearer t0k3n"}
        )
        assert bearer.status_code == 201
        missing = await client.post(STATUS_PATH, json=status_body())
        wrong = await client.post(
            STATUS_PATH, json=status_body(), headers={"Authorization": "token nope"}
        )
    for answer in (missing, wrong):
        assert answer.status_code == 401
        assert set(answer.json()) == {"message", "url"}
    assert len(gitea.statuses) == 1
    assert len(gitea.requests) == 3


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (status_body(sha=SHA), "unknown key 'sha'"),
        (status_body(state="passed"), "$.state"),
        (status_body(description=42), "$.description"),
        ({"context": "testmesh/x"}, "'state' is missing"),
    ],
)
async def test_gitea_contract_violations_are_recorded_and_rejected(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient, body: dict[str, Any], fragment: str
) -> None:
    response = await gitea_client.post(STATUS_PATH, json=body)
    assert response.status_code == 422
    assert fragment in response.json()["message"]
    assert gitea.statuses == []
    assert any(fragment in v.message for v in gitea.violations)
    with pytest.raises(AssertionError, match="contract violations"):
        gitea.assert_no_violations()


async def test_gitea_long_description_is_recorded_but_accepted(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    response = await gitea_client.post(STATUS_PATH, json=status_body(description="x" * 300))
    assert response.status_code == 201
    assert [v.message for v in gitea.violations] == ["description is 300 characters (> 255)"]


async def test_gitea_unknown_commit_is_a_500(
    gitea_client: httpx.AsyncClient, gitea: FakeGitea
) -> None:
    gitea.known_shas = {OTHER_SHA}
    unknown = await gitea_client.post(STATUS_PATH, json=status_body())
    assert unknown.status_code == 500
    assert gitea.violations == []
    short = await gitea_client.post("/api/v1/repos/acme/shop/statuses/abc123", json=status_body())
    assert short.status_code == 500
    assert "not a full commit sha" in gitea.violations[0].message
    known = await gitea_client.post(
        f"/api/v1/repos/acme/shop/statuses/{OTHER_SHA}", json=status_body()
    )
    assert known.status_code == 201


async def test_gitea_lists_statuses_newest_first_with_pagination(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    for i in range(55):
        state = "success" if i % 2 else "pending"
        await gitea_client.post(STATUS_PATH, json=status_body(state, context=f"testmesh/s{i}"))
    await gitea_client.post(f"/api/v1/repos/acme/shop/statuses/{OTHER_SHA}", json=status_body())
    gitea.refs["main"] = SHA

    first = await gitea_client.get(f"/api/v1/repos/acme/shop/commits/{SHA}/statuses")
    assert first.status_code == 200
    assert first.headers["X-Total-Count"] == "55"
    ids = [s["id"] for s in first.json()]
    assert len(ids) == 30
    assert ids == sorted(ids, reverse=True)
    assert ids[0] == 55

    second = await gitea_client.get(
        f"/api/v1/repos/acme/shop/statuses/{SHA}", params={"page": 2, "limit": 30}
    )
    assert [s["id"] for s in second.json()] == list(range(25, 0, -1))
    capped = await gitea_client.get("/api/v1/repos/acme/shop/commits/main/statuses?limit=100")
    assert len(capped.json()) == 50  # Gitea's MAX_RESPONSE_ITEMS
    oldest = await gitea_client.get(
        f"/api/v1/repos/acme/shop/commits/{SHA}/statuses", params={"sort": "oldest", "limit": 3}
    )
    assert [s["id"] for s in oldest.json()] == [1, 2, 3]
    successes = await gitea_client.get(
        f"/api/v1/repos/acme/shop/commits/{SHA}/statuses", params={"state": "success", "limit": 50}
    )
    assert successes.headers["X-Total-Count"] == "27"
    assert {s["status"] for s in successes.json()} == {"success"}
    gitea.assert_no_violations()


async def test_gitea_combined_status_uses_latest_per_context(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    await gitea_client.post(STATUS_PATH, json=status_body("pending", "testmesh/a"))
    await gitea_client.post(STATUS_PATH, json=status_body("success", "testmesh/a"))
    await gitea_client.post(STATUS_PATH, json=status_body("success", "testmesh/b"))
    combined = await gitea_client.get(f"/api/v1/repos/acme/shop/commits/{SHA}/status")
    body = combined.json()
    assert validate_definition("gitea", "CombinedStatus", body) == []
    assert body["state"] == "success"
    assert body["total_count"] == 2
    assert [s["context"] for s in body["statuses"]] == ["testmesh/b", "testmesh/a"]
    await gitea_client.post(STATUS_PATH, json=status_body("failure", "testmesh/b"))
    again = await gitea_client.get(f"/api/v1/repos/acme/shop/commits/{SHA}/status")
    assert again.json()["state"] == "failure"
    gitea.assert_no_violations()


async def test_gitea_seeded_statuses_are_listed(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    gitea.seed_status("acme/shop", SHA, "success", "testmesh/smoke", "TestMesh: all tests passed")
    listed = (await gitea_client.get(f"/api/v1/repos/acme/shop/statuses/{SHA}")).json()
    assert [(s["status"], s["context"]) for s in listed] == [("success", "testmesh/smoke")]
    assert gitea.requests_to("POST") == []
    with pytest.raises(ValueError, match="state"):
        gitea.seed_status("acme/shop", SHA, "passed", "testmesh/smoke")


async def test_gitea_fail_next_then_recovers(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    gitea.fail_next(2, status=503)
    answers = [
        (await gitea_client.post(STATUS_PATH, json=status_body())).status_code for _ in range(3)
    ]
    assert answers == [503, 503, 201]
    assert len(gitea.statuses) == 1


async def test_gitea_respond_with_until_reset_and_reads_unaffected(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    gitea.respond_with(404)
    for _ in range(2):
        answer = await gitea_client.post(STATUS_PATH, json=status_body())
        assert answer.status_code == 404
        assert answer.json()["message"] == "The target couldn't be found."
    listed = await gitea_client.get(f"/api/v1/repos/acme/shop/statuses/{SHA}")
    assert listed.status_code == 200
    gitea.reset()
    assert len(gitea.requests) == 3
    assert (await gitea_client.post(STATUS_PATH, json=status_body())).status_code == 201
    gitea.clear()
    assert (gitea.requests, gitea.statuses) == ([], [])


async def test_gitea_down_is_a_network_error(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    gitea.go_down()
    with pytest.raises(httpx.TransportError):
        await gitea_client.post(STATUS_PATH, json=status_body())
    with pytest.raises(httpx.TransportError):
        await gitea_client.get(f"/api/v1/repos/acme/shop/statuses/{SHA}")
    gitea.come_up()
    assert (await gitea_client.post(STATUS_PATH, json=status_body())).status_code == 201
    assert len(gitea.requests) == 3
    assert len(gitea.statuses) == 1


async def test_gitea_wait_for_statuses_wakes_on_post_and_times_out(
    gitea: FakeGitea, gitea_client: httpx.AsyncClient
) -> None:
    waiter = asyncio.create_task(gitea.wait_for_statuses(2, timeout=5.0))
    await gitea_client.post(STATUS_PATH, json=status_body("pending"))
    assert not waiter.done()
    await gitea_client.post(STATUS_PATH, json=status_body("success"))
    statuses = await waiter
    assert [s.state for s in statuses] == ["pending", "success"]
    with pytest.raises(TimeoutError, match="requests seen"):
        await gitea.wait_for_statuses(3, timeout=0.05)


# --- fake Argo CD --------------------------------------------------------------------


def assert_runtime_error(response: httpx.Response, status: int, code: int, message: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert validate_definition("argocd", "runtimeError", body) == []
    assert body["code"] == code
    assert message in body["message"]
    assert body["error"] == body["message"]


async def test_argocd_requires_bearer_token(argocd: FakeArgoCD) -> None:
    argocd.add_app("demo")
    async with httpx.AsyncClient(base_url=argocd.base_url) as client:
        missing = await client.get("/api/v1/applications/demo")
        wrong = await client.get(
            "/api/v1/applications/demo", headers={"Authorization": "Bearer nope"}
        )
        cookie = await client.get(
            "/api/v1/applications/demo", headers={"Cookie": "argocd.token=argo-t0k3n"}
        )
    assert_runtime_error(missing, 401, 16, "no session information")
    assert_runtime_error(wrong, 401, 16, "invalid session")
    assert cookie.status_code == 200


async def test_argocd_missing_app_is_403_unless_project_given(
    argocd: FakeArgoCD, argo_client: httpx.AsyncClient
) -> None:
    hidden = await argo_client.get("/api/v1/applications/nope")
    assert_runtime_error(hidden, 403, 7, "permission denied")
    found = await argo_client.get("/api/v1/applications/nope", params={"project": "default"})
    assert_runtime_error(found, 404, 5, 'applications.argoproj.io "nope" not found')
    other = await argo_client.get("/api/v1/applications/nope", params={"project": "secret"})
    assert_runtime_error(other, 403, 7, "permission denied")
    assert argocd.gets["nope"] == 3


async def test_argocd_create_sync_and_progress_to_healthy(
    argocd: FakeArgoCD, argo_client: httpx.AsyncClient
) -> None:
    app = build_application("env-pr-7", target_revision="feature/x", dest_namespace="pr-7")
    created = await argo_client.post("/api/v1/applications", json=app)
    assert created.status_code == 200
    assert validate_definition("argocd", "v1alpha1Application", created.json()) == []
    assert created.json()["status"]["sync"]["status"] == "OutOfSync"
    assert created.json()["status"]["health"]["status"] == "Missing"

    synced = await argo_client.post(
        "/api/v1/applications/env-pr-7/sync",
        json={"name": "env-pr-7", "revision": SHA, "prune": True},
    )
    assert synced.status_code == 200
    assert synced.json()["operation"]["sync"]["revision"] == SHA

    seen = []
    for _ in range(3):
        got = (await argo_client.get("/api/v1/applications/env-pr-7")).json()
        assert validate_definition("argocd", "v1alpha1Application", got) == []
        status = got["status"]
        seen.append(
            (
                status["sync"]["status"],
                status["health"]["status"],
                status["operationState"]["phase"],
            )
        )
        assert status["sync"]["revision"] == SHA
    assert seen == [
        ("Synced", "Progressing", "Running"),
        ("Synced", "Healthy", "Succeeded"),
        ("Synced", "Healthy", "Succeeded"),
    ]
    assert got["status"]["operationState"]["syncResult"]["revision"] == SHA
    assert "operation" not in got
    assert (argocd.creates["env-pr-7"], argocd.syncs["env-pr-7"], argocd.gets["env-pr-7"]) == (
        1,
        1,
        3,
    )
    argocd.assert_no_violations()


async def test_argocd_sync_conflict_while_operation_runs(
    argocd: FakeArgoCD, argo_client: httpx.AsyncClient
) -> None:
    argocd.add_app("demo")
    assert (await argo_client.post("/api/v1/applications/demo/sync", json={})).status_code == 200
    conflict = await argo_client.post("/api/v1/applications/demo/sync", json={})
    assert_runtime_error(conflict, 400, 9, "another operation is already in progress")
    await argo_client.get("/api/v1/applications/demo")  # Running
    still = await argo_client.post("/api/v1/applications/demo/sync", json={})
    assert still.status_code == 400
    await argo_client.get("/api/v1/applications/demo")  # Succeeded
    assert (await argo_client.post("/api/v1/applications/demo/sync", json={})).status_code == 200
    assert argocd.syncs["demo"] == 2
    await argocd.wait_for_syncs("demo", 2, timeout=1.0)


async def test_argocd_scripted_degraded_and_failed(
    argocd: FakeArgoCD, argo_client: httpx.AsyncClient
) -> None:
    argocd.script_app(
        "bad", [("Synced", "Progressing", "Running"), ("Synced", "Degraded", "Succeeded")]
    )
    argocd.add_app(
        "worse", script=[("OutOfSync", "Missing", "Failed", "one or more objects failed")]
    )
    await argo_client.post("/api/v1/applications", json=build_application("bad"))
    for name in ("bad", "worse"):
        assert (
            await argo_client.post(f"/api/v1/applications/{name}/sync", json={})
        ).status_code == 200
    await argo_client.get("/api/v1/applications/bad")
    bad = (await argo_client.get("/api/v1/applications/bad")).json()["status"]
    assert bad["health"]["status"] == "Degraded"
    worse = (await argo_client.get("/api/v1/applications/worse")).json()["status"]
    assert worse["operationState"]["phase"] == "Failed"
    assert worse["operationState"]["message"] == "one or more objects failed"
    assert argocd.state_of("worse").phase == "Failed"
    with pytest.raises(ValueError, match="health"):
        argocd.script_app("x", [("Synced", "Fine", None)])
    argocd.assert_no_violations()


async def test_argocd_create_existing_needs_upsert(
    argocd: FakeArgoCD, argo_client: httpx.AsyncClient
) -> None:
    app = build_application("demo")
    assert (await argo_client.post("/api/v1/applications", json=app)).status_code == 200
    same = await argo_client.post("/api/v1/applications", json=app)
    assert same.status_code == 200
    changed = build_application("demo", target_revision="other")
    conflict = await argo_client.post("/api/v1/applications", json=changed)
    assert_runtime_error(conflict, 400, 3, "existing application spec is different")
    upserted = await argo_client.post(
        "/api/v1/applications", params={"upsert": "true"}, json=changed
    )
    assert upserted.status_code == 200
    assert upserted.json()["spec"]["source"]["targetRevision"] == "other"
    assert argocd.creates["demo"] == 3


async def test_argocd_rejects_bodies_that_break_the_contract(
    argocd: FakeArgoCD, argo_client: httpx.AsyncClient
) -> None:
    app = build_application("demo", type_meta=True)  # apiVersion/kind are tolerated
    app["spec"]["destination"]["cluster"] = "in-cluster"
    bad_create = await argo_client.post("/api/v1/applications", json=app)
    assert_runtime_error(bad_create, 400, 3, "unknown key 'cluster'")
    no_source = build_application("demo")
    del no_source["spec"]["source"]
    invalid = await argo_client.post("/api/v1/applications", json=no_source)
    assert_runtime_error(invalid, 400, 3, "InvalidSpecError")
    argocd.add_app("demo")
    bad_sync = await argo_client.post("/api/v1/applications/demo/sync", json={"prune": "yes"})
    assert_runtime_error(bad_sync, 400, 3, "$.prune")
    assert len(argocd.violations) == 3
    assert argocd.syncs["demo"] == 0


async def test_argocd_delete_with_cascade(
    argocd: FakeArgoCD, argo_client: httpx.AsyncClient
) -> None:
    argocd.add_app("demo")
    deleted = await argo_client.delete("/api/v1/applications/demo", params={"cascade": "true"})
    assert deleted.status_code == 200
    assert deleted.json() == {}
    assert argocd.deletes["demo"] == 1
    assert argocd.deleted[0].cascade == "true"
    gone = await argo_client.get("/api/v1/applications/demo")
    assert gone.status_code == 403
    again = await argo_client.delete("/api/v1/applications/demo", params={"cascade": "true"})
    assert again.status_code == 403
    await argocd.wait_for_deletes("demo", 1, timeout=1.0)


async def test_argocd_failure_injection_and_down(
    argocd: FakeArgoCD, argo_client: httpx.AsyncClient
) -> None:
    argocd.add_app("demo")
    argocd.fail_next(1, status=503)
    assert_runtime_error(await argo_client.get("/api/v1/applications/demo"), 503, 14, "injected")
    assert (await argo_client.get("/api/v1/applications/demo")).status_code == 200
    argocd.go_down()
    with pytest.raises(httpx.TransportError):
        await argo_client.get("/api/v1/applications/demo")
    argocd.come_up()
    argocd.respond_with(500, method="POST")
    assert (await argo_client.post("/api/v1/applications/demo/sync", json={})).status_code == 500
    assert (await argo_client.get("/api/v1/applications/demo")).status_code == 200
    argocd.reset()
    assert (await argo_client.post("/api/v1/applications/demo/sync", json={})).status_code == 200


# --- payload builders ----------------------------------------------------------------


def verify_gitea(headers: dict[str, str], body: bytes, secret: str) -> bool:
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Gitea-Signature"], expected) and hmac.compare_digest(
        headers["X-Hub-Signature-256"], f"sha256={expected}"
    )


def key_shape(value: Any) -> Any:
    """The nested key structure of a JSON value (lists reduced to their first item)."""
    if isinstance(value, dict):
        return {k: key_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [key_shape(value[0])] if value else []
    return None


@pytest.mark.parametrize("sample", [PUSH_SAMPLE, *PR_SAMPLES.values()])
def test_go_json_reproduces_samples_byte_for_byte(sample: str) -> None:
    raw = load_bytes(sample)
    assert go_json(json.loads(raw)) == raw


def test_push_with_sample_values_is_the_sample_with_documented_signatures() -> None:
    headers, body = gitea_push(repo=SAMPLE_REPO, sha=SAMPLE_SHA, secret=SAMPLE_SECRET)
    assert body == load_bytes(PUSH_SAMPLE)
    # values from headers.md
    assert headers["X-Gitea-Signature"] == (
        "bcb9619f2da8d68179f0928606a1ca98836f57c3b65f9328a90ea4924fca87e9"
    )
    assert headers["X-Hub-Signature"] == "sha1=84bc5fb6b0e7d40046f52abf6984f67744e5e45a"
    headers, body = gitea_pull_request(repo=SAMPLE_REPO, secret=SAMPLE_SECRET)
    assert body == load_bytes(PR_SAMPLES["opened"])
    assert headers["X-Gitea-Signature"].startswith("5ef23f074610d407")
    headers, body = gitea_pull_request(
        repo=SAMPLE_REPO, action="synchronized", head_sha=SAMPLE_PR_HEAD["synchronized"]
    )
    assert body == load_bytes(PR_SAMPLES["synchronized"])
    assert headers["X-Gitea-Signature"].startswith("7b0ad138cd10b81f")


def test_gitea_push_builder_patches_and_validates() -> None:
    headers, body = gitea_push("acme/shop", "release/1.x", SHA, "s3cret")
    payload = json.loads(body)
    assert key_shape(payload) == key_shape(json.loads(load_bytes(PUSH_SAMPLE)))
    assert (payload["ref"], payload["after"]) == ("refs/heads/release/1.x", SHA)
    assert payload["repository"]["full_name"] == "acme/shop"
    assert payload["repository"]["name"] == "shop"
    assert payload["repository"]["clone_url"] == "https://gitea.example.com/acme/shop.git"
    assert payload["head_commit"]["id"] == SHA
    for commit in [*payload["commits"], payload["head_commit"]]:
        assert validate_definition("gitea", "PayloadCommit", commit, nullable=True) == []
    assert validate_definition("gitea", "Repository", payload["repository"], nullable=True) == []
    for user in (payload["pusher"], payload["sender"]):
        assert validate_definition("gitea", "User", user) == []
    assert verify_gitea(headers, body, "s3cret")
    assert not verify_gitea(headers, body, "other")
    assert headers["X-Gitea-Event"] == headers["X-Gitea-Event-Type"] == "push"
    assert headers["X-GitHub-Event"] == "push"
    assert headers["X-Gitea-Delivery"] == headers["X-Gogs-Delivery"] == headers["X-GitHub-Delivery"]
    assert headers["Content-Type"] == "application/json"
    assert gitea_push()[0]["X-Gitea-Delivery"] != gitea_push()[0]["X-Gitea-Delivery"]


def test_gitea_push_tags_and_deletions() -> None:
    _, tag_body = gitea_push(tag="v1.2.0", sha=SHA)
    tag = json.loads(tag_body)
    assert (tag["ref"], tag["before"], tag["after"]) == ("refs/tags/v1.2.0", ZERO_SHA, SHA)
    _, gone_body = gitea_push(tag="v1.2.0", sha=SHA, deleted=True)
    gone = json.loads(gone_body)
    assert (gone["after"], gone["commits"], gone["head_commit"]) == (ZERO_SHA, [], None)
    headers, body = gitea_push(branch="feature/x", deleted=True)
    assert headers["X-Gitea-Event"] == "delete"
    assert json.loads(body)["ref"] == "feature/x"
    assert json.loads(body)["ref_type"] == "branch"
    unsigned, _ = gitea_push(secret=None)
    assert unsigned["X-Gitea-Signature"] == ""
    assert unsigned["X-Hub-Signature-256"] == "sha256="


@pytest.mark.parametrize(
    ("action", "event_type"),
    [("opened", "pull_request"), ("synchronized", "pull_request_sync"), ("closed", "pull_request")],
)
def test_gitea_pull_request_builder(action: str, event_type: str) -> None:
    headers, body = gitea_pull_request(
        "acme/shop",
        42,
        action,
        head_branch="feature/x",
        head_sha=SHA,
        base_branch="develop",
        secret="s3cret",
    )
    payload = json.loads(body)
    sample = json.loads(load_bytes(PR_SAMPLES["opened"]))
    assert key_shape(payload) == key_shape(sample)
    assert headers["X-Gitea-Event"] == "pull_request"
    assert headers["X-Gitea-Event-Type"] == event_type
    assert verify_gitea(headers, body, "s3cret")
    pr = payload["pull_request"]
    assert (payload["action"], payload["number"], pr["number"]) == (action, 42, 42)
    assert (pr["head"]["ref"], pr["head"]["sha"], pr["base"]["ref"]) == (
        "feature/x",
        SHA,
        "develop",
    )
    assert pr["html_url"] == "https://gitea.example.com/acme/shop/pulls/42"
    assert payload["repository"]["full_name"] == "acme/shop"
    assert (
        validate_definition(
            "gitea", "PullRequest", pr, nullable=True, extra_nullable=["merge_commit_sha"]
        )
        == []
    )
    strict = validate_definition("gitea", "PullRequest", pr)
    assert any("milestone" in p for p in strict)  # why nullable=True is needed (headers.md)


def test_argocd_builders() -> None:
    assert argocd_flat() == load_bytes(ARGOCD_SAMPLE)
    flat = json.loads(
        argocd_flat("shop", SHA, "https://gitea.example.com/acme/shop.git", health="Degraded")
    )
    assert flat == {
        "app_name": "shop",
        "revision": SHA,
        "repository": "https://gitea.example.com/acme/shop.git",
        "status": "Synced",
        "health": "Degraded",
    }
    assert json.loads(argocd_flat_app("shop", SHA)) == {
        "app": "shop",
        "revision": SHA,
        "status": "Synced",
        "health": "Healthy",
    }
    wrapped = json.loads(
        argocd_application("shop", SHA, "https://gitea.example.com/acme/shop.git", "main")
    )
    app = wrapped["application"]
    assert list(wrapped) == ["application"]
    assert validate_definition("argocd", "v1alpha1Application", app) == []
    assert (
        validate_definition(
            "argocd", "v1alpha1Application", app, strict=True, ignore_keys=["apiVersion", "kind"]
        )
        == []
    )
    assert app["metadata"]["name"] == "shop"
    assert app["spec"]["source"]["targetRevision"] == "main"
    assert app["status"]["sync"] == {**app["status"]["sync"], "status": "Synced", "revision": SHA}
    assert app["status"]["health"]["status"] == "Healthy"
    assert app["status"]["operationState"]["phase"] == "Succeeded"
    assert argocd_headers("sh") == {
        "User-Agent": "Go-http-client/1.1",
        "X-TestMesh-Secret": "sh",
        "Content-Type": "application/json",
    }
    assert argocd_headers("sh", "bearer", content_type=None) == {
        "User-Agent": "Go-http-client/1.1",
        "Authorization": "Bearer sh",
    }
