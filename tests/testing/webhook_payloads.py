"""Webhook deliveries exactly as Gitea and argocd-notifications send them, for tests.

Owns builders that patch the contract samples (``gitea/webhooks/*.json``,
``argocd/notification_sync_succeeded.json``) and return ``(headers, body bytes)`` or body bytes,
serialised the way the senders do (Go ``MarshalIndent``) and signed per ``headers.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any, Literal
from urllib.parse import urlsplit

from .contracts import load_json
from .fake_argocd import build_application

SAMPLE_SECRET = "testmesh-webhook-secret"
"""The secret the contract samples' signatures (headers.md) were computed with."""
SAMPLE_SHA = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b"
SAMPLE_BEFORE = "4f2b9c1d7e8a6b5c3d2e1f0a9b8c7d6e5f4a3b2c"
SAMPLE_PR_HEAD = {
    "opened": "c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2",
    "synchronized": "e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4",
}
SAMPLE_REPO = "acme/demo-services"
SAMPLE_HEAD_BRANCH = "feature/order-idempotency"
SAMPLE_REPO_URL = "https://gitea.example.com/acme/demo-services.git"
GITEA_URL = "https://gitea.example.com"
ZERO_SHA = "0" * 40
GO_USER_AGENT = "Go-http-client/1.1"

PUSH_SAMPLE = "gitea/webhooks/push.json"
PR_SAMPLES = {
    "opened": "gitea/webhooks/pull_request_opened.json",
    "synchronized": "gitea/webhooks/pull_request_synchronized.json",
}
ARGOCD_SAMPLE = "argocd/notification_sync_succeeded.json"

# Pull request action -> X-Gitea-Event-Type (modules/webhook/type.go); X-Gitea-Event is
# "pull_request" for all of them.
PR_EVENT_TYPES = {
    "opened": "pull_request",
    "closed": "pull_request",
    "reopened": "pull_request",
    "edited": "pull_request",
    "synchronized": "pull_request_sync",
    "assigned": "pull_request_assign",
    "unassigned": "pull_request_assign",
    "label_updated": "pull_request_label",
    "label_cleared": "pull_request_label",
    "milestoned": "pull_request_milestone",
    "demilestoned": "pull_request_milestone",
    "review_requested": "pull_request_review_request",
    "review_request_removed": "pull_request_review_request",
}


def go_json(payload: Any) -> bytes:
    """Serialise like Go's ``json.MarshalIndent(v, "", "  ")``: two-space indent, no trailing
    newline, raw UTF-8, and ``<``, ``>``, ``&`` escaped as ``\\u003c`` etc."""
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode()


def gitea_signature(body: bytes, secret: str) -> str:
    """``X-Gitea-Signature``: lower-case hex HMAC-SHA256 of the raw body ("" with no secret)."""
    if not secret:
        return ""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def gitea_headers(
    event: str,
    event_type: str,
    body: bytes,
    secret: str | None,
    *,
    delivery: str | None = None,
    authorization: str | None = None,
    target_type: str = "repository",
) -> dict[str, str]:
    """The headers ``deliver.go`` sets, in its order (see ``headers.md``)."""
    delivery = delivery or str(uuid.uuid4())
    signature = gitea_signature(body, secret or "")
    sha1 = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest() if secret else ""
    headers = {
        "X-Gitea-Delivery": delivery,
        "X-Gitea-Event": event,
        "X-Gitea-Event-Type": event_type,
        "X-Gitea-Signature": signature,
        "X-Gitea-Hook-Installation-Target-Type": target_type,
        "X-Gogs-Delivery": delivery,
        "X-Gogs-Event": event,
        "X-Gogs-Event-Type": event_type,
        "X-Gogs-Signature": signature,
        "X-Hub-Signature": f"sha1={sha1}",
        "X-Hub-Signature-256": f"sha256={signature}",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": event,
        "X-GitHub-Event-Type": event_type,
        "X-GitHub-Hook-Installation-Target-Type": target_type,
    }
    if authorization is not None:
        headers["Authorization"] = authorization
    headers["Content-Type"] = "application/json"
    headers["User-Agent"] = GO_USER_AGENT
    return headers


def _retarget(sample: Any, repo: str, gitea_url: str) -> Any:
    """The sample with its repository (``acme/demo-services``) and host replaced."""
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"repo must be 'owner/name', got {repo!r}")
    base = gitea_url.rstrip("/")
    host = urlsplit(base).hostname or "gitea.example.com"
    text = json.dumps(sample)
    text = text.replace(SAMPLE_REPO, repo).replace("https://gitea.example.com", base)
    text = text.replace("gitea.example.com", host)
    data = json.loads(text)
    for node in _repositories(data):
        node["name"] = name
        owner_node = node["owner"]
        if owner_node["login"] != owner:
            owner_node.update(
                login=owner, username=owner, full_name=owner, html_url=f"{base}/{owner}"
            )
    return data


def _repositories(data: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(data, dict):
        if "full_name" in data and "owner" in data and "clone_url" in data:
            found.append(data)
        for value in data.values():
            found += _repositories(value)
    elif isinstance(data, list):
        for value in data:
            found += _repositories(value)
    return found


def gitea_push(
    repo: str = "acme/shop",
    branch: str = "main",
    sha: str = SAMPLE_SHA,
    secret: str | None = SAMPLE_SECRET,
    *,
    deleted: bool = False,
    tag: str | None = None,
    before: str = SAMPLE_BEFORE,
    gitea_url: str = GITEA_URL,
    delivery: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """A ``push`` delivery. ``tag`` pushes ``refs/tags/<tag>`` (a new tag: ``before`` is all
    zeros, ``compare_url`` is the bare app URL). ``deleted`` deletes the ref: for a tag Gitea
    sends a push with ``after`` all zeros and no commits; for a branch Gitea v1.26 sends no
    push at all but a ``delete`` event, which is what this then returns (see
    ``services/repository/push.go``)."""
    if deleted and tag is None:
        return gitea_delete(repo, branch, secret, gitea_url=gitea_url, delivery=delivery)
    payload = _retarget(load_json(PUSH_SAMPLE), repo, gitea_url)
    base = gitea_url.rstrip("/")
    ref = f"refs/tags/{tag}" if tag is not None else f"refs/heads/{branch}"
    if tag is not None:
        before = ZERO_SHA if not deleted else sha
        after = ZERO_SHA if deleted else sha
    else:
        after = sha
    payload["ref"] = ref
    payload["before"] = before
    payload["after"] = after
    for commit in [*payload["commits"], payload["head_commit"]]:
        commit["id"] = sha
        commit["url"] = f"{base}/{repo}/commit/{sha}"
    if after == ZERO_SHA:
        payload.update(commits=[], total_commits=0, head_commit=None)
    if before == ZERO_SHA or after == ZERO_SHA:
        payload["compare_url"] = f"{base}/"
    else:
        payload["compare_url"] = f"{base}/{repo}/compare/{before}...{after}"
    body = go_json(payload)
    return gitea_headers("push", "push", body, secret, delivery=delivery), body


def gitea_delete(
    repo: str = "acme/shop",
    ref: str = "main",
    secret: str | None = SAMPLE_SECRET,
    *,
    ref_type: Literal["branch", "tag"] = "branch",
    gitea_url: str = GITEA_URL,
    delivery: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """A ``delete`` delivery (``DeletePayload``: ref short name, ref_type, pusher_type,
    repository, sender), as Gitea sends when a branch or tag is deleted."""
    sample = _retarget(load_json(PUSH_SAMPLE), repo, gitea_url)
    payload = {
        "ref": ref,
        "ref_type": ref_type,
        "pusher_type": "user",
        "repository": sample["repository"],
        "sender": sample["sender"],
    }
    body = go_json(payload)
    return gitea_headers("delete", "delete", body, secret, delivery=delivery), body


def gitea_pull_request(
    repo: str = "acme/shop",
    number: int = 7,
    action: str = "opened",
    head_branch: str = SAMPLE_HEAD_BRANCH,
    head_sha: str = SAMPLE_PR_HEAD["opened"],
    base_branch: str = "main",
    secret: str | None = SAMPLE_SECRET,
    *,
    base_sha: str = SAMPLE_SHA,
    title: str | None = None,
    gitea_url: str = GITEA_URL,
    delivery: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """A ``pull_request`` delivery for ``action`` (``opened``, ``synchronized`` (event type
    ``pull_request_sync``), ``closed``, ``reopened``, ``edited``, ...)."""
    if action not in PR_EVENT_TYPES:
        raise ValueError(f"unknown pull request action {action!r}; one of {sorted(PR_EVENT_TYPES)}")
    sample_name = "synchronized" if action == "synchronized" else "opened"
    sample = load_json(PR_SAMPLES[sample_name])
    payload = _retarget(sample, repo, gitea_url)
    base = gitea_url.rstrip("/")
    payload["action"] = action
    payload["number"] = number
    pr = payload["pull_request"]
    pr["number"] = number
    pr["url"] = pr["html_url"] = f"{base}/{repo}/pulls/{number}"
    pr["diff_url"] = f"{base}/{repo}/pulls/{number}.diff"
    pr["patch_url"] = f"{base}/{repo}/pulls/{number}.patch"
    if title is not None:
        pr["title"] = title
    pr["head"].update(label=head_branch, ref=head_branch, sha=head_sha)
    pr["base"].update(label=base_branch, ref=base_branch, sha=base_sha)
    pr["merge_base"] = base_sha
    if action == "closed":
        pr["state"] = "closed"
        pr["closed_at"] = pr["updated_at"]
    body = go_json(payload)
    headers = gitea_headers("pull_request", PR_EVENT_TYPES[action], body, secret, delivery=delivery)
    return headers, body


def _template_json(payload: dict[str, Any]) -> bytes:
    """Body as the TestMesh notification template renders it (the sample's layout)."""
    return (json.dumps(payload, indent=2) + "\n").encode()


def argocd_flat(
    app_name: str = "testmesh-demo",
    revision: str = SAMPLE_SHA,
    repository: str = SAMPLE_REPO_URL,
    status: str = "Synced",
    health: str = "Healthy",
) -> bytes:
    """The flat seed-template body ``{app_name, revision, repository, status, health}``
    (defaults reproduce ``notification_sync_succeeded.json`` byte for byte)."""
    payload = load_json(ARGOCD_SAMPLE)
    payload.update(
        app_name=app_name, revision=revision, repository=repository, status=status, health=health
    )
    return _template_json(payload)


def argocd_flat_app(
    app: str = "testmesh-demo",
    revision: str = SAMPLE_SHA,
    status: str = "Synced",
    health: str = "Healthy",
) -> bytes:
    """The other flat template body: ``{app, revision, status, health}``."""
    return _template_json({"app": app, "revision": revision, "status": status, "health": health})


def argocd_application_json(
    app_name: str = "testmesh-demo",
    revision: str = SAMPLE_SHA,
    repo_url: str = SAMPLE_REPO_URL,
    target_revision: str = "main",
    sync: str = "Synced",
    health: str = "Healthy",
    *,
    phase: str = "Succeeded",
    project: str = "default",
) -> dict[str, Any]:
    """The ``.app`` object a ``{"application": {{toJson .app}}}`` template sends."""
    return build_application(
        app_name,
        project=project,
        repo_url=repo_url,
        target_revision=target_revision,
        sync=sync,
        health=health,
        revision=revision,
        phase=phase,
        message="successfully synced (all tasks run)" if phase == "Succeeded" else "",
        annotations={"notifications.argoproj.io/subscribe.on-sync-succeeded.testmesh": ""},
        type_meta=True,
    )


def argocd_application(
    app_name: str = "testmesh-demo",
    revision: str = SAMPLE_SHA,
    repo_url: str = SAMPLE_REPO_URL,
    target_revision: str = "main",
    sync: str = "Synced",
    health: str = "Healthy",
    *,
    phase: str = "Succeeded",
    project: str = "default",
) -> bytes:
    """``{"application": <Application JSON>}`` (valid against ``v1alpha1Application``)."""
    app = argocd_application_json(
        app_name,
        revision,
        repo_url,
        target_revision,
        sync,
        health,
        phase=phase,
        project=project,
    )
    return json.dumps({"application": app}).encode()


def argocd_headers(
    secret: str,
    style: Literal["x-testmesh", "bearer"] = "x-testmesh",
    *,
    content_type: str | None = "application/json",
) -> dict[str, str]:
    """Headers of an argocd-notifications webhook service: only what the service config
    lists (``X-TestMesh-Secret`` or ``Authorization: Bearer``; a Content-Type only when
    configured, so pass ``content_type=None`` for none) plus Go's User-Agent."""
    headers = {"User-Agent": GO_USER_AGENT}
    if style == "x-testmesh":
        headers["X-TestMesh-Secret"] = secret
    elif style == "bearer":
        headers["Authorization"] = f"Bearer {secret}"
    else:
        raise ValueError(f"unknown style {style!r}: 'x-testmesh' or 'bearer'")
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers
