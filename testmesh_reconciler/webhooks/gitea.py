"""Gitea webhooks: signature check, integration choice and ``push``/``pull_request`` parsing.

Pure functions over (headers, raw body, snapshot); no IO. Follows the delivery contract in
``shared/contracts/gitea/webhooks/headers.md`` (Gitea v1.23-v1.26).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_to_bytes

from testmesh_reconciler.config.model import Integration, SecretValue, Snapshot
from testmesh_reconciler.triggers import Trigger
from testmesh_reconciler.webhooks.common import (
    BadRequest,
    Ignored,
    Rejected,
    Verdict,
    decode_object,
    dig,
    lower_headers,
    select,
    text,
)

PROVIDER: Final = "gitea"
EVENT_HEADERS: Final = ("x-gitea-event", "x-gogs-event", "x-github-event")
PULL_REQUEST_EVENTS: Final = frozenset({"pull_request", "pull_request_sync"})
"""``X-Gitea-Event`` is ``pull_request`` for every PR action (``synchronized`` included);
``pull_request_sync`` is its ``X-Gitea-Event-Type``, accepted should a proxy send that."""
ACTION_ALIASES: Final = {"synchronize": "synchronized"}  # GitHub's spelling
_ZEROS = re.compile(r"0+")
_FORM_PREFIX = b"payload="


def payload(body: bytes) -> bytes:
    """The JSON payload: the body itself, or the ``payload`` field of a form-encoded hook
    (Gitea signs the JSON, not the form encoding)."""
    if body.startswith(_FORM_PREFIX):
        value = body[len(_FORM_PREFIX):].split(b"&", 1)[0]
        return unquote_to_bytes(value.replace(b"+", b" "))
    return body


def signatures(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The non-empty HMAC-SHA256 hex digests a delivery carries (Gitea's, then the Hub one)."""
    h = lower_headers(headers)
    found: list[str] = []
    gitea = h.get("x-gitea-signature", "").strip()
    if gitea:
        found.append(gitea.lower())
    hub = h.get("x-hub-signature-256", "").strip()
    if hub[:7].lower() == "sha256=" and hub[7:].strip():
        found.append(hub[7:].strip().lower())
    return tuple(found)


def _verify(given: tuple[str, ...], body: bytes, secret: SecretValue) -> bool:
    key = secret.reveal().encode("utf-8", "replace")
    signed = (body,) if not body.startswith(_FORM_PREFIX) else (body, payload(body))
    ok = False
    for message in signed:
        expected = hmac.digest(key, message, "sha256").hex().encode()  # one-shot C HMAC
        for signature in given:  # every one compared, in constant time
            ok |= hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
    return ok and bool(key)


def verify(headers: Mapping[str, str], body: bytes, secret: SecretValue) -> bool:
    """Whether ``X-Gitea-Signature`` (hex) or ``X-Hub-Signature-256`` (``sha256=<hex>``) is
    the HMAC-SHA256 of the raw body (of a form hook: the raw body or the JSON inside it)
    under ``secret``. Empty signatures or secrets never verify."""
    return _verify(signatures(headers), body, secret)


def select_integration(snapshot: Snapshot, headers: Mapping[str, str], body: bytes = b"",
                       *, workspace: str, name: str | None = None) -> Integration | Rejected:
    """The Gitea integration the delivery comes from: the named one, or the first (by name)
    whose webhook_secret verifies; one with ``require_webhook_secret: false`` and no secret
    accepts unsigned deliveries. 404 for an unknown name, 401 when nothing verifies."""
    given = signatures(headers)
    return select(
        snapshot, PROVIDER, workspace=workspace, name=name,
        check=lambda secret: _verify(given, body, secret), credential_given=bool(given),
        missing="missing X-Gitea-Signature header (set the webhook's secret in Gitea to the "
                "integration's webhook_secret)",
        mismatch="signature does not verify with any gitea integration's webhook_secret"
        if name is None else f"signature does not verify with the webhook_secret of gitea "
                             f"integration {name!r}")


def event_name(headers: Mapping[str, str]) -> str | None:
    """``X-Gitea-Event`` (else the Gogs / GitHub copies), or ``None``."""
    h = lower_headers(headers)
    for key in EVENT_HEADERS:
        value = h.get(key, "").strip()
        if value:
            return value
    return None


def parse(headers: Mapping[str, str], body: bytes, integration: Integration,
          snapshot: Snapshot | None = None) -> Verdict:
    """A ``Trigger`` for a branch push or a pull request event; ``Ignored`` for tags, branch
    deletions and other events; ``BadRequest`` for a malformed body. Never raises."""
    event = event_name(headers)
    if event is None:
        return BadRequest("missing X-Gitea-Event header: is this a Gitea webhook?")
    if event == "push":
        return _push(payload(body), integration)
    if event in PULL_REQUEST_EVENTS:
        return _pull_request(payload(body), integration)
    if event == "delete":
        data = decode_object(payload(body))
        kind = dig(data, "ref_type") if isinstance(data, dict) else None
        if kind in ("branch", "tag"):
            return Ignored(f"{kind} deletion", event=event,
                           repo=_opt(dig(data, "repository", "full_name")))
    return Ignored(f"unsupported event {event!r}", event=event)


def _push(body: bytes, integration: Integration) -> Verdict:
    data = decode_object(body)
    if isinstance(data, BadRequest):
        return data
    values = _required(data, repo=("repository", "full_name"), ref=("ref",), after=("after",))
    if isinstance(values, BadRequest):
        return values
    repo, ref, after = values["repo"], values["ref"], values["after"]
    if ref.startswith("refs/tags/"):
        return Ignored("tag push", event="push", repo=repo, sha=after)
    if not ref.startswith("refs/heads/") or ref == "refs/heads/":
        return Ignored(f"push to {ref!r}, which is not a branch", event="push", repo=repo,
                       sha=after)
    if dig(data, "deleted") is True or _ZEROS.fullmatch(after):
        return Ignored("branch deletion", event="push", repo=repo)
    return Trigger(source="gitea", event="push", integration=integration.name,
                   workspace=integration.workspace, repo=repo, sha=after,
                   branch=ref[len("refs/heads/"):])


def _pull_request(body: bytes, integration: Integration) -> Verdict:
    data = decode_object(body)
    if isinstance(data, BadRequest):
        return data
    if not isinstance(data.get("pull_request"), dict):
        return BadRequest("missing object 'pull_request'")
    values = _required(data, repo=("repository", "full_name"), action=("action",),
                       branch=("pull_request", "head", "ref"),
                       sha=("pull_request", "head", "sha"), base=("pull_request", "base", "ref"))
    if isinstance(values, BadRequest):
        return values
    number = data.get("number")
    if number is None:
        number = dig(data, "pull_request", "number")
    if isinstance(number, bool) or not isinstance(number, int):
        return BadRequest("field 'number' must be an integer" if number is not None
                          else "missing field 'number'")
    if number < 0:
        return BadRequest("field 'number' must not be negative")
    action = ACTION_ALIASES.get(values["action"], values["action"])
    return Trigger(source="gitea", event="pull_request", integration=integration.name,
                   workspace=integration.workspace, repo=values["repo"], sha=values["sha"],
                   branch=values["branch"], base_branch=values["base"], pr_number=number,
                   action=action)


def _required(data: dict[str, object], **paths: tuple[str, ...]
              ) -> dict[str, str] | BadRequest:
    """Non-empty strings at ``paths`` (by key), or the first problem."""
    out: dict[str, str] = {}
    for key, path in paths.items():
        value = text(data, *path)
        if isinstance(value, BadRequest):
            return value
        out[key] = value or ""
    return out


def _opt(value: object) -> str:
    return value if isinstance(value, str) else ""


__all__ = ["PROVIDER", "event_name", "parse", "payload", "select_integration", "signatures",
           "verify"]
