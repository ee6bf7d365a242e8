"""The status outbox's sending logic, independent of storage: one attempt per entry.

Owns backoff (``next_delay``: exponential, full jitter, ``Retry-After`` wins), the retry or
give-up decision (``classify``) and ``deliver``, which posts one entry and says what the
outbox must record. Time and randomness are injected; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal, Protocol

from testmesh_reconciler.errors import ProviderError
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.providers.gitea import GiteaStatusClient, StatusSpec

log = get_logger("testmesh.statuses")

DEFAULT_BASE: Final = 1.0
"""Backoff base (seconds): the first retry waits up to this long."""
DEFAULT_CAP: Final = 300.0
"""Backoff ceiling (seconds) before jitter; a larger ``Retry-After`` still wins."""
DEFAULT_GIVE_UP_AFTER: Final = 86400.0
"""Seconds of failures after which a status is given up (``--status-give-up-after``)."""

_MAX_EXPONENT: Final = 60


def next_delay(
    attempts: int,
    *,
    base: float = DEFAULT_BASE,
    cap: float = DEFAULT_CAP,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait after ``attempts`` failed attempts (1 = the first failed).

    Full jitter: uniform in ``[0, min(cap, base * 2**(attempts-1))]``. A server's
    ``retry_after`` (``ProviderError.delay``) wins when it is larger.
    """
    exponent = min(max(attempts - 1, 0), _MAX_EXPONENT)
    ceiling = min(cap, base * 2.0**exponent)
    delay = rng.uniform(0.0, ceiling) if ceiling > 0 else 0.0
    if retry_after is not None and retry_after > delay:
        return retry_after
    return delay


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again at ``at``; ``reason`` is the error that made this attempt fail."""

    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying; ``reason`` goes on the run and into ``/api/v1/status``."""

    reason: str


Decision = Retry | GiveUp


def classify(
    exc: ProviderError,
    *,
    first_attempt_at: datetime,
    now: datetime,
    give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    attempts: int = 1,
    rng: random.Random | None = None,
    base: float = DEFAULT_BASE,
    cap: float = DEFAULT_CAP,
) -> Decision:
    """Retry or give up after a failed attempt (``attempts`` failures so far, this included).

    Not retryable (401/403/404/422, a bad repo name): give up at once. Retryable (network,
    429, 5xx): give up once ``now - first_attempt_at >= give_up_after`` seconds, else retry
    after ``next_delay`` (``rng`` defaults to a fresh ``random.Random()``).
    """
    reason = str(exc)
    if not exc.retryable:
        return GiveUp(reason)
    elapsed = (now - first_attempt_at).total_seconds()
    if elapsed >= give_up_after:
        return GiveUp(f"gave up after {int(elapsed)} s of failures: {reason}")
    delay = next_delay(attempts, base=base, cap=cap, rng=rng or random.Random(),
                       retry_after=exc.delay)
    return Retry(at=now + timedelta(seconds=delay), reason=reason)


@dataclass(frozen=True, slots=True)
class IntegrationRef:
    """Which integration posts a status: its workspace and name."""

    workspace: str
    name: str

    def __str__(self) -> str:
        return f"{self.workspace}/{self.name}"


class OutboxItem(Protocol):
    """What ``deliver`` reads from an outbox entry (``store.records.OutboxEntry`` fits)."""

    @property
    def integration_workspace(self) -> str: ...
    @property
    def integration(self) -> str: ...
    @property
    def repo(self) -> str: ...
    @property
    def sha(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def context(self) -> str: ...
    @property
    def target_url(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...


OutcomeKind = Literal["sent", "skipped", "queued", "given_up"]
"""As the store's ``OutboxOutcome``: ``queued`` = try again at ``next_attempt_at``."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did, ready to write back on the entry.

    ``attempts`` is the entry's count including this attempt; ``next_attempt_at`` is set for
    ``queued``; ``error`` is the failure (``queued``: the last error; ``given_up``: the
    reason to record on the run); ``http_status`` is Gitea's answer when there was one.
    """

    kind: OutcomeKind
    attempts: int
    next_attempt_at: datetime | None = None
    error: str | None = None
    http_status: int | None = None

    @property
    def done(self) -> bool:
        """True when the entry is finished (sent, skipped or given up)."""
        return self.kind != "queued"


ClientFor = Callable[[IntegrationRef], GiteaStatusClient | None]
"""Gives the client for an integration (from the active snapshot and the shared
``httpx.AsyncClient``), or None when it no longer exists or has no url or token."""


def spec_of(entry: OutboxItem) -> StatusSpec:
    """The status an outbox entry holds."""
    return StatusSpec(state=entry.state, description=entry.description,
                      context=entry.context, target_url=entry.target_url)


async def deliver(
    entry: OutboxItem,
    client_for: ClientFor,
    now: datetime,
    *,
    give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    rng: random.Random | None = None,
    base: float = DEFAULT_BASE,
    cap: float = DEFAULT_CAP,
) -> Outcome:
    """Make one attempt to post ``entry`` and say what the outbox should record.

    The give-up window runs from ``entry.created_at`` (when the status was queued). An
    integration that is gone or lacks a url/token is given up at once (retrying cannot
    help until the config changes, and the give-up is recorded where users look).
    """
    attempts = entry.attempts + 1
    ref = IntegrationRef(entry.integration_workspace, entry.integration)
    bound = log.bind(repo=entry.repo, sha=entry.sha, context=entry.context,
                     state=entry.state, integration=str(ref), attempts=attempts)
    client = client_for(ref)
    if client is None:
        reason = (f"integration '{ref}' is not declared, or has no url or secrets.token; "
                  "declare it in the config repo")
        bound.warning("status_given_up", reason=reason)
        return Outcome("given_up", attempts, error=reason)
    try:
        result = await client.post_if_changed(entry.repo, entry.sha, spec_of(entry))
    except ProviderError as exc:
        decision = classify(exc, first_attempt_at=entry.created_at, now=now,
                            give_up_after=give_up_after, attempts=attempts, rng=rng,
                            base=base, cap=cap)
        if isinstance(decision, GiveUp):
            bound.warning("status_given_up", reason=decision.reason, http_status=exc.status)
            return Outcome("given_up", attempts, error=decision.reason, http_status=exc.status)
        bound.info("status_retry_scheduled", error=decision.reason, http_status=exc.status,
                   next_attempt_at=decision.at.isoformat())
        return Outcome("queued", attempts, next_attempt_at=decision.at, error=decision.reason,
                       http_status=exc.status)
    bound.info("status_delivered", outcome=result)
    return Outcome(result, attempts)


__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_CAP",
    "DEFAULT_GIVE_UP_AFTER",
    "ClientFor",
    "Decision",
    "GiveUp",
    "IntegrationRef",
    "OutboxItem",
    "Outcome",
    "OutcomeKind",
    "Retry",
    "classify",
    "deliver",
    "next_delay",
    "spec_of",
]
