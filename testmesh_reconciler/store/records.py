"""The runtime records the store keeps: deliveries, runs, outbox entries, environments.

Frozen dataclasses with ``NewType`` ids; timestamps are timezone-aware UTC datetimes given
by callers. ``to_json()`` gives the API resource of DESIGN.md section 4 (and a little more).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NewType

DeliveryId = NewType("DeliveryId", str)
RunId = NewType("RunId", str)
OutboxId = NewType("OutboxId", str)
EnvironmentId = NewType("EnvironmentId", str)

DeliverySource = Literal["argocd", "gitea", "config"]
DeliveryOutcome = Literal["accepted", "duplicate", "ignored", "rejected"]
RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
TriggerType = Literal["manual", "argocd", "webhook"]
OutboxOutcome = Literal["queued", "sent", "skipped", "given_up"]
EnvironmentState = Literal["cold", "provisioning", "warm", "running", "cooling", "destroyed"]

RUN_STATUSES: tuple[RunStatus, ...] = ("pending", "running", "completed", "failed", "cancelled")
FINAL_RUN_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
#: States in which an environment instance can be handed to another run.
REUSABLE_ENV_STATES: tuple[EnvironmentState, ...] = ("provisioning", "warm", "running", "cooling")

INTERRUPTED_ERROR = (
    "interrupted: the daemon stopped while this run was executing; "
    "it was not retried because HTTP steps are not idempotent"
)


_RANDOM_BYTES = 10
_ID_BATCH = 256  # ids drawn per getrandom() call
_id_pool = bytearray()
_id_lock = threading.Lock()


def _forget_pool() -> None:  # a forked child must not hand out its parent's next ids
    global _id_pool
    _id_pool = bytearray()


os.register_at_fork(after_in_child=_forget_pool)


def new_id() -> str:
    """A fresh id in UUIDv7 text (RFC 9562): 48 bits of Unix milliseconds, then 74 random.

    Time-ordered ids land at the end of every primary-key index instead of at random pages,
    so a group commit writes a few pages rather than one per row. The random bytes come
    from ``os.urandom`` in batches: each call releases the GIL, and getting it back behind
    the store's worker thread cost more than the ids themselves.
    """
    global _id_pool
    with _id_lock:
        if not _id_pool:
            _id_pool = bytearray(os.urandom(_RANDOM_BYTES * _ID_BATCH))
        rand = _id_pool[-_RANDOM_BYTES:]
        del _id_pool[-_RANDOM_BYTES:]
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big")) + rand
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def isoformat(value: datetime | None) -> str | None:
    """RFC 3339 UTC text with a ``Z`` suffix, as every API timestamp is rendered."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """A deep copy made of dicts and lists only, safe to hand to ``json.dumps`` and callers."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _empty() -> dict[str, Any]:
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One inbound webhook (or config push), whatever became of it: the audit log's row."""

    id: DeliveryId
    source: DeliverySource
    workspace: str
    event: str
    repo: str
    received_at: datetime
    payload_digest: str  # sha256 hex of the raw body
    integration: str | None = None
    action: str | None = None
    branch: str | None = None
    sha: str | None = None
    app: str | None = None
    pr_number: int | None = None
    dedup_key: str | None = None
    processed_at: datetime | None = None
    outcome: DeliveryOutcome = "accepted"
    reason: str | None = None
    matched_rules: tuple[str, ...] = ()
    runs: tuple[RunId, ...] = ()
    http_status: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The Delivery resource of ``GET /api/v1/deliveries``."""
        return {
            "id": self.id,
            "source": self.source,
            "integration": self.integration,
            "workspace": self.workspace,
            "event": self.event,
            "action": self.action,
            "repo": self.repo,
            "branch": self.branch,
            "sha": self.sha,
            "app": self.app,
            "pr_number": self.pr_number,
            "received_at": isoformat(self.received_at),
            "processed_at": isoformat(self.processed_at),
            "outcome": self.outcome,
            "reason": self.reason,
            "matched_rules": list(self.matched_rules),
            "runs": list(self.runs),
            "http_status": self.http_status,
            "dedup_key": self.dedup_key,
            "payload_digest": self.payload_digest,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A SuiteRun: queued by a delivery or by hand, claimed by one replica, then finished.

    ``serial_key`` (rule + repo + branch) serialises runs: at most one with a given key runs
    at a time, and a newer pending run supersedes an older one. ``""`` means no serialisation
    (manual runs). ``started`` turns true once the first step was sent; a started run is never
    executed again (DESIGN.md section 5). ``flows`` holds
    ``{flow, status, steps: [{id, status, attempts, duration_ms, error, ...}]}`` dicts.
    """

    id: RunId
    workspace: str
    suite: str
    suite_id: str
    trigger_type: TriggerType
    queued_at: datetime
    rule: str | None = None
    delivery_id: DeliveryId | None = None
    trigger: Mapping[str, Any] = field(default_factory=_empty)
    variables: Mapping[str, Any] = field(default_factory=_empty)
    environment: str | None = None
    status: RunStatus = "pending"
    serial_key: str = ""
    revision: str | None = None
    claimed_by: str | None = None
    lease_until: datetime | None = None
    started: bool = False
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    total_flows: int = 0
    passed_flows: int = 0
    failed_flows: int = 0
    error: str | None = None
    status_report: Mapping[str, Any] = field(default_factory=_empty)
    report_target: Mapping[str, Any] | None = None
    flows: tuple[Mapping[str, Any], ...] = ()
    environment_instance: EnvironmentId | None = None
    trigger_ref: str | None = None

    @property
    def short_sha(self) -> str:
        return (self.trigger_ref or "")[:7]

    def to_json(self) -> dict[str, Any]:
        """The SuiteRun resource of ``GET /api/v1/suite-runs/{id}``."""
        return {
            "id": self.id,
            "suite": self.suite,
            "suite_id": self.suite_id,
            "workspace": self.workspace,
            "status": self.status,
            "trigger_type": self.trigger_type,
            "trigger": plain(self.trigger),
            "trigger_ref": self.trigger_ref,
            "rule": self.rule,
            "delivery_id": self.delivery_id,
            "variables": plain(self.variables),
            "environment": self.environment,
            "environment_instance": self.environment_instance,
            "revision": self.revision,
            "queued_at": isoformat(self.queued_at),
            "started_at": isoformat(self.started_at),
            "completed_at": isoformat(self.completed_at),
            "duration_ms": self.duration_ms,
            "total_flows": self.total_flows,
            "passed_flows": self.passed_flows,
            "failed_flows": self.failed_flows,
            "error": self.error,
            "status_report": plain(self.status_report),
            "flows": plain(self.flows),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """One commit status to post; ``seq`` orders a run's statuses (pending=0, final=1)."""

    id: OutboxId
    run_id: RunId
    seq: int
    integration_workspace: str
    integration: str
    repo: str
    sha: str
    context: str
    state: str  # pending | success | failure | error
    description: str
    target_url: str
    created_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    last_error: str | None = None
    outcome: OutboxOutcome = "queued"
    finished_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "seq": self.seq,
            "integration_workspace": self.integration_workspace,
            "integration": self.integration,
            "repo": self.repo,
            "sha": self.sha,
            "context": self.context,
            "state": self.state,
            "description": self.description,
            "target_url": self.target_url,
            "created_at": isoformat(self.created_at),
            "next_attempt_at": isoformat(self.next_attempt_at),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "outcome": self.outcome,
            "finished_at": isoformat(self.finished_at),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvironmentInstance:
    """A runtime TestEnvironment, reused by (workspace, name, context) within its TTL.

    ``users`` counts runs holding it; ``owner``/``lock_until`` is a replica's lease while it
    provisions or tears down, so two replicas never drive the same instance at once.
    """

    id: EnvironmentId
    workspace: str
    name: str
    context: str
    state: EnvironmentState
    provider: str
    created_at: datetime
    ttl_minutes: float = 120.0
    provider_app_name: str | None = None
    namespace: str | None = None
    routing: Mapping[str, str] = field(default_factory=dict)
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    error: str | None = None
    users: int = 0
    teardown_requested: bool = False
    owner: str | None = None
    lock_until: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The TestEnvironment instance resource of ``GET /api/v1/test-environments``."""
        return {
            "id": self.id,
            "name": self.name,
            "workspace": self.workspace,
            "context": self.context,
            "state": self.state,
            "provider": self.provider,
            "provider_app_name": self.provider_app_name,
            "namespace": self.namespace,
            "routing": plain(self.routing),
            "ttl_minutes": self.ttl_minutes,
            "created_at": isoformat(self.created_at),
            "last_used_at": isoformat(self.last_used_at),
            "expires_at": isoformat(self.expires_at),
            "error": self.error,
            "users": self.users,
            "teardown_requested": self.teardown_requested,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaInfo:
    """A daemon replica seen recently, and the config revision it runs."""

    name: str
    revision: str | None
    seen_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "revision": self.revision, "seen_at": isoformat(self.seen_at)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordResult:
    """What ``record_delivery`` did, for the webhook answer (202 / 202 duplicate / 429)."""

    delivery: Delivery
    run_ids: tuple[RunId, ...] = ()
    duplicate: bool = False
    duplicate_of: DeliveryId | None = None
    rejected: str | None = None
    superseded: tuple[RunId, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryResult:
    """Runs whose claim was lost: ``interrupted`` ones failed, ``requeued`` ones pending again.

    The caller posts an ``error`` status for each interrupted run that has a report target
    (unless it passed ``outbox_for`` to enqueue them in the same transaction), and gives
    back each environment in ``environments`` (run id, environment instance id): the
    recovered runs held them, and their executor is gone. The transaction that recovers a
    run hands its environment over, so it is handed over once; a requeued run's
    ``environment_instance`` is cleared, since it acquires one afresh.
    """

    interrupted: tuple[Run, ...] = ()
    requeued: tuple[RunId, ...] = ()
    environments: tuple[tuple[RunId, EnvironmentId], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GiveUp:
    at: datetime
    reason: str
    run_id: RunId

    def to_json(self) -> dict[str, Any]:
        return {"at": isoformat(self.at), "reason": self.reason, "run_id": self.run_id}


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStats:
    """The ``outbox`` block of ``/api/v1/status``."""

    queued: int
    given_up: int
    last_give_up: GiveUp | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "given_up": self.given_up,
            "last_give_up": self.last_give_up.to_json() if self.last_give_up else None,
        }
