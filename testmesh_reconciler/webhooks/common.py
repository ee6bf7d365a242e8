"""Value types and pure helpers shared by the webhook receivers (``gitea``, ``argocd``).

What a receiver answers is data, never an exception: ``Rejected`` (401/404), ``Ignored``
(200), ``BadRequest`` (400), or a ``Trigger``. The web layer maps them to HTTP answers.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

from testmesh_reconciler.config.model import Integration, SecretValue, Snapshot
from testmesh_reconciler.errors import WebhookRejected
from testmesh_reconciler.triggers import Trigger

WEBHOOK_SECRET: Final = "webhook_secret"
NO_VALUE: Final = "<no value>"
"""What a Go text/template renders for a missing field (argocd-notifications bodies)."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid delivery that starts nothing (answer 200 ``outcome: ignored``)."""

    reason: str
    event: str | None = None  # for the delivery log, when known
    repo: str = ""
    sha: str = ""
    app: str | None = None


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A malformed body or missing/mistyped field (answer 400 with ``reason``)."""

    reason: str
    status: int = 400

    def error(self) -> WebhookRejected:
        return WebhookRejected(self.status, self.reason)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Authentication or routing failed: 401 (signature/secret) or 404 (unknown name)."""

    status: int
    reason: str

    def error(self) -> WebhookRejected:
        return WebhookRejected(self.status, self.reason)


Verdict: TypeAlias = Trigger | Ignored | BadRequest
"""What ``parse`` returns: a trigger to match, or why not."""


class Receiver(Protocol):
    """What the web layer calls on ``RECEIVERS[source]``, whatever the source."""

    def select_integration(self, snapshot: Snapshot, headers: Mapping[str, str],
                           body: bytes = b"", *, workspace: str, name: str | None = None
                           ) -> Integration | Rejected: ...

    def parse(self, headers: Mapping[str, str], body: bytes, integration: Integration,
              snapshot: Snapshot | None = None) -> Verdict: ...


# -- headers ------------------------------------------------------------------------------
class LowerHeaders(dict[str, str]):
    """Headers already lower-cased by ``lower_headers`` (passed on as they are)."""

    __slots__ = ()


def lower_headers(headers: Mapping[str, str]) -> LowerHeaders:
    """Header names lower-cased (first value wins); non-string entries are dropped.

    The web layer lowers a request's headers once and hands the result to the receivers,
    whose own calls then return it unchanged."""
    if type(headers) is LowerHeaders:
        return headers
    out = LowerHeaders()
    for key, value in headers.items():
        if isinstance(key, str) and isinstance(value, str):
            out.setdefault(key.lower(), value)
    return out


def same_secret(expected: str, given: str) -> bool:
    """Constant-time comparison of two strings (any characters); empty never matches."""
    a = expected.encode("utf-8", "replace")
    b = given.encode("utf-8", "replace")
    equal = hmac.compare_digest(a, b)
    return equal and bool(a) and bool(b)


def secret_text(integration: Integration) -> str | None:
    """The opened webhook secret, or ``None`` when none is declared or opened."""
    value: SecretValue | None = integration.secret(WEBHOOK_SECRET)
    return value.reveal() if value is not None else None


# -- integration selection ----------------------------------------------------------------
def select(snapshot: Snapshot, provider: str, *, workspace: str, name: str | None,
           check: Callable[[SecretValue], bool], credential_given: bool,
           missing: str, mismatch: str) -> Integration | Rejected:
    """The integration a delivery comes from (DESIGN.md section 4).

    With ``name``: that integration of ``workspace`` (404 when it is not a ``provider`` one).
    Without: every ``provider`` integration of the workspace is checked (all of them, in name
    order, no early exit); the first whose secret verifies wins, else the first that accepts
    unsigned deliveries (``require_webhook_secret: false`` and no secret), else 401.
    """
    if name is not None:
        integration = snapshot.integrations.get((workspace, name))
        if not isinstance(integration, Integration) or integration.provider != provider:
            return Rejected(404, f"no {provider} integration named {name!r} "
                                 f"in workspace {workspace!r}")
        candidates: list[Integration] = [integration]
    else:
        candidates = sorted((i for i in snapshot.integrations.values()
                             if i.provider == provider and i.workspace == workspace),
                            key=lambda i: i.name)
        if not candidates:
            return Rejected(401, f"no {provider} integration in workspace {workspace!r} "
                                 "to verify the delivery with")
    verified: Integration | None = None
    unsigned: Integration | None = None
    for integration in candidates:
        secret = integration.secret(WEBHOOK_SECRET)
        if secret is None:
            if not integration.require_webhook_secret and unsigned is None:
                unsigned = integration
            continue
        ok = check(secret)  # evaluated for every candidate: no early exit
        if ok and verified is None:
            verified = integration
    chosen = verified or unsigned
    if chosen is not None:
        return chosen
    if not credential_given:
        return Rejected(401, missing)
    return Rejected(401, mismatch)


# -- bodies -------------------------------------------------------------------------------
def decode_object(body: bytes) -> dict[str, Any] | BadRequest:
    """The body as a JSON object, whatever the Content-Type said; ``BadRequest`` otherwise."""
    if not body.strip():
        return BadRequest("empty body: expected a JSON object")
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        return BadRequest("body is not UTF-8 encoded JSON")
    except ValueError as exc:
        return BadRequest(f"body is not valid JSON: {exc}")
    except RecursionError:
        return BadRequest("body is not valid JSON: nested too deeply")
    if not isinstance(data, dict):
        return BadRequest(f"body is JSON {type(data).__name__ if data is not None else 'null'}"
                          ", expected an object")
    return data


def dig(data: Any, *path: str) -> Any:
    """``data[p0][p1]...``, or ``None`` when a step is missing or not an object."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def text(data: Any, *path: str, required: bool = True,
         allow_empty: bool = False) -> str | BadRequest | None:
    """The string at ``path``: ``None`` if absent and optional, ``BadRequest`` if mistyped
    (or absent/empty while required). Go's ``<no value>`` counts as absent."""
    value = dig(data, *path)
    where = ".".join(path)
    if value is None or value == NO_VALUE:
        return BadRequest(f"missing field {where!r}") if required else None
    if not isinstance(value, str):
        return BadRequest(f"field {where!r} must be a string, got {_json_type(value)}")
    if not value and not allow_empty:
        return BadRequest(f"field {where!r} is empty") if required else None
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


__all__ = ["NO_VALUE", "WEBHOOK_SECRET", "BadRequest", "Ignored", "LowerHeaders", "Receiver",
           "Rejected", "Verdict", "decode_object", "dig", "lower_headers", "same_secret",
           "secret_text", "select", "text"]
