"""Argo CD webhooks (argocd-notifications): shared-secret check and sync event parsing.

Pure functions over (headers, body, snapshot); no IO. Accepts the three body shapes of
DESIGN.md section 4; see ``shared/contracts/argocd/notifications.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

from testmesh_reconciler.config.globs import GlobError, compile_glob
from testmesh_reconciler.config.model import (
    Integration,
    SecretValue,
    Snapshot,
    repo_from_url,
    url_host,
)
from testmesh_reconciler.triggers import Trigger
from testmesh_reconciler.webhooks.common import (
    NO_VALUE,
    BadRequest,
    Ignored,
    Rejected,
    Verdict,
    decode_object,
    dig,
    lower_headers,
    same_secret,
    select,
    text,
)

PROVIDER: Final = "argocd"
SECRET_HEADER: Final = "x-testmesh-secret"
_BEARER = re.compile(r"bearer[ \t]+(\S.*)", re.IGNORECASE)
_UNKNOWN_BRANCHES: Final = frozenset({"", "HEAD"})


def credentials(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The non-empty secrets a delivery offers: ``X-TestMesh-Secret``, ``Authorization:
    Bearer``."""
    h = lower_headers(headers)
    found: list[str] = []
    direct = h.get(SECRET_HEADER, "").strip()
    if direct:
        found.append(direct)
    bearer = _BEARER.fullmatch(h.get("authorization", "").strip())
    if bearer:
        found.append(bearer.group(1).strip())
    return tuple(found)


def _verify(given: tuple[str, ...], secret: SecretValue) -> bool:
    expected = secret.reveal()
    ok = False
    for candidate in given:  # every one compared, in constant time
        ok |= same_secret(expected, candidate)
    return ok


def verify(headers: Mapping[str, str], secret: SecretValue) -> bool:
    """Whether ``X-TestMesh-Secret`` or ``Authorization: Bearer`` carries ``secret``
    (constant-time; an empty secret or header never verifies)."""
    return _verify(credentials(headers), secret)


def select_integration(snapshot: Snapshot, headers: Mapping[str, str], body: bytes = b"",
                       *, workspace: str, name: str | None = None) -> Integration | Rejected:
    """The Argo CD integration the delivery comes from: the named one, or the first (by name)
    whose webhook_secret matches; one with ``require_webhook_secret: false`` and no secret
    accepts any delivery. 404 for an unknown name, 401 when nothing matches. ``body`` is
    unused (the secret is a header); it keeps the signature the same as Gitea's."""
    given = credentials(headers)
    return select(
        snapshot, PROVIDER, workspace=workspace, name=name,
        check=lambda secret: _verify(given, secret), credential_given=bool(given),
        missing="missing X-TestMesh-Secret or Authorization: Bearer header (add it to the "
                "argocd-notifications webhook service's headers)",
        mismatch="secret does not match any argocd integration's webhook_secret"
        if name is None else f"secret does not match the webhook_secret of argocd "
                             f"integration {name!r}")


@lru_cache(maxsize=256)
def _app_pattern(glob: str) -> re.Pattern[str] | GlobError | None:
    return compile_glob(glob)


def app_matches(integration: Integration, app: str) -> bool:
    """Whether ``app`` passes the integration's ``app_filter`` (empty/absent = every app)."""
    if not integration.app_filter:
        return True
    pattern = _app_pattern(integration.app_filter)
    if isinstance(pattern, GlobError):
        return False  # validation rejects these; never match rather than fail
    return pattern is None or pattern.fullmatch(app) is not None


def derive_repo(snapshot: Snapshot | None, workspace: str, repo_url: str | None) -> str:
    """Gitea ``owner/repo`` of ``repo_url`` when its host is a Gitea integration's host in
    ``workspace`` (exact host:port first, else the host name alone, since SSH and HTTPS
    often differ in port only); ``""`` otherwise."""
    if snapshot is None or not repo_url:
        return ""
    host = url_host(repo_url)
    repo = repo_from_url(repo_url)
    if host is None or repo is None:
        return ""
    hosts = [i.host for i in snapshot.integrations.values()
             if i.provider == "gitea" and i.workspace == workspace and i.host]
    if host in hosts or _hostname(host) in {_hostname(h) for h in hosts if h}:
        return repo
    return ""


def _hostname(host: str) -> str:
    """``host`` without a ``:port`` (IPv6 literals keep their brackets)."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name
    return host


def branch_of(target_revision: str | None) -> str | None:
    """The branch a targetRevision names: as given (``refs/heads/`` dropped); ``HEAD`` and
    empty mean unknown (``None``), so only ``branch_filter: "*"`` matches them. A tag or a
    sha is kept as given, as DESIGN.md says."""
    if target_revision is None:
        return None
    value = target_revision.strip()
    value = value.removeprefix("refs/heads/")
    return None if value in _UNKNOWN_BRANCHES else value


def parse(headers: Mapping[str, str], body: bytes, integration: Integration,
          snapshot: Snapshot | None = None) -> Verdict:
    """A ``sync`` ``Trigger``; ``Ignored`` for a filtered app or a status other than Synced
    (and Healthy, when health is sent); ``BadRequest`` for a malformed body. Never raises."""
    data = decode_object(body)
    if isinstance(data, BadRequest):
        return data
    fields = _fields(data)
    if isinstance(fields, BadRequest):
        return fields
    app, revision, repo_url, target, status, health = fields
    repo = derive_repo(snapshot, integration.workspace, repo_url)
    if not app_matches(integration, app):
        return Ignored(f"application {app!r} does not match app_filter "
                       f"{integration.app_filter!r}", event="sync", repo=repo, sha=revision,
                       app=app)
    if status != "Synced" or (health is not None and health != "Healthy"):
        shown = f"status={status or '(none)'}" + (f" health={health}" if health else "")
        return Ignored(f"not Synced/Healthy: {shown}", event="sync", repo=repo, sha=revision,
                       app=app)
    return Trigger(source="argocd", event="sync", integration=integration.name,
                   workspace=integration.workspace, repo=repo, sha=revision, app=app,
                   branch=branch_of(target), repo_url=repo_url)


_Fields = tuple[str, str, str | None, str | None, str | None, str | None]


def _fields(data: dict[str, Any]) -> _Fields | BadRequest:
    """(app, revision, repoURL, targetRevision, sync status, health) of any accepted shape."""
    if "application" in data:
        app_json = data["application"]
        if not isinstance(app_json, dict):
            return BadRequest("field 'application' must be an Application object")
        return _application(app_json)
    if "app_name" in data:
        name_key = "app_name"
    elif "app" in data:
        name_key = "app"
    else:
        return BadRequest("expected {app_name, revision, repository, status, health}, "
                          "{app, revision, status, health} or {application: <Application>}")
    values = [text(data, name_key), text(data, "revision"),
              text(data, "repository", required=False),
              text(data, "target_revision", required=False, allow_empty=True),
              text(data, "status", required=False), text(data, "health", required=False)]
    for value in values:
        if isinstance(value, BadRequest):
            return value
    app, revision, repo_url, target, status, health = values
    return (str(app), str(revision), _s(repo_url), _s(target), _s(status), _s(health))


def _application(app: dict[str, Any]) -> _Fields | BadRequest:
    name = text(app, "metadata", "name")
    if isinstance(name, BadRequest):
        return BadRequest(f"application: {name.reason}")
    revision: str | None = None
    for path in (("status", "sync", "revision"),
                 ("status", "operationState", "syncResult", "revision")):
        found = dig(app, *path)
        if isinstance(found, str) and found and found != NO_VALUE:
            revision = found
            break
    if revision is None:
        revision = _first(dig(app, "status", "sync", "revisions")) or _first(
            dig(app, "status", "operationState", "syncResult", "revisions"))
    if revision is None:
        return BadRequest("application: missing field 'status.sync.revision' (nor "
                          "'status.operationState.syncResult.revision')")
    source = dig(app, "spec", "source")
    if not isinstance(source, dict):
        sources = dig(app, "spec", "sources")
        source = sources[0] if isinstance(sources, list) and sources else None
    repo_url = text(source, "repoURL", required=False)
    target = text(source, "targetRevision", required=False, allow_empty=True)
    status = text(app, "status", "sync", "status", required=False)
    health = text(app, "status", "health", "status", required=False)
    for value in (repo_url, target, status, health):
        if isinstance(value, BadRequest):
            return BadRequest(f"application: {value.reason}")
    return (name or "", revision, _s(repo_url), _s(target), _s(status), _s(health))


def _first(values: Any) -> str | None:
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0]:
        return values[0]
    return None


def _s(value: str | BadRequest | None) -> str | None:
    return value if isinstance(value, str) else None


__all__ = ["PROVIDER", "app_matches", "branch_of", "credentials", "derive_repo", "parse",
           "select_integration", "verify"]
