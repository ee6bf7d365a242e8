"""The one interface every runtime store implements (SQLite now, PostgreSQL later).

Methods are async and each is one transaction. The store never reads the clock: callers
pass ``now``. Contract tests in ``tests/store/test_store_contract.py`` pin the behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from testmesh_reconciler.errors import TestmeshError
from testmesh_reconciler.store.records import (
    Delivery,
    EnvironmentId,
    EnvironmentInstance,
    EnvironmentState,
    OutboxEntry,
    OutboxId,
    OutboxStats,
    RecordResult,
    RecoveryResult,
    ReplicaInfo,
    Run,
    RunId,
)

#: Builds the outbox entries (the ``error`` status) for a run that recovery interrupted.
OutboxFor = Callable[[Run], Sequence[OutboxEntry]]


@runtime_checkable
class Store(Protocol):
    """Deliveries, runs, the commit-status outbox, environment instances and replicas."""

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and apply pending migrations; safe to call on an existing database."""

    async def close(self) -> None:
        """Commit whatever is queued (group commits) and disconnect."""

    async def ping(self) -> bool:
        """True when the database answers (readiness probe)."""

    async def migrate(self) -> list[int]:
        """Apply the migrations not applied yet, each in its own transaction; their versions."""

    # -- deliveries -----------------------------------------------------------------------
    async def record_delivery(
        self,
        delivery: Delivery,
        runs: Sequence[Run],
        *,
        dedup_window_start: datetime,
        max_queued: int,
    ) -> RecordResult:
        """Store a delivery and its runs in one transaction: dedup, queue cap, supersede.

        Only an ``accepted`` delivery is checked: a key already accepted at/after
        ``dedup_window_start`` makes it a ``duplicate`` (the original's runs); a queue that
        would exceed ``max_queued`` pending runs makes it ``rejected`` ("queue full"). Else
        the runs are queued ``pending`` and older pending, unclaimed runs with the same
        ``serial_key`` are cancelled as superseded. Returns after the data is committed.
        """

    async def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    async def list_deliveries(
        self,
        *,
        source: str | None = None,
        repo: str | None = None,
        outcome: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Delivery]:
        """Newest first; ``before`` is the id of the last delivery of the previous page."""

    # -- runs -----------------------------------------------------------------------------
    async def enqueue_run(self, run: Run, *, max_queued: int) -> bool:
        """Queue a manual run (no delivery, no supersede); False when the queue is full."""

    async def claim_run(self, replica: str, now: datetime, lease_seconds: float) -> Run | None:
        """Atomically take the oldest pending run whose ``serial_key`` has none running."""

    async def heartbeat(
        self, replica: str, run_ids: Sequence[RunId], now: datetime, lease_seconds: float
    ) -> list[RunId]:
        """Extend this replica's leases; returns the ids it still holds."""

    async def mark_started(self, run_id: RunId, now: datetime) -> None:
        """Record that the first step was sent: from now on the run is never re-executed."""

    async def save_progress(self, run: Run) -> bool:
        """Save flows/steps and counts so far; False when the claim was lost."""

    async def finish_run(self, run: Run, outbox: Sequence[OutboxEntry] = ()) -> bool:
        """Write the final fields and enqueue the final status together; False if not ours."""

    async def add_outbox(self, entries: Sequence[OutboxEntry]) -> None:
        """Enqueue statuses (the ``pending`` one when a run leaves the queue)."""

    async def get_run(self, run_id: str) -> Run | None: ...

    async def list_runs(
        self,
        *,
        workspace: str | None = None,
        suite: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Run]:
        """Newest first by (queued_at, id); ``before`` is the last run id of the previous page."""

    async def count_runs_by_status(self) -> dict[str, int]: ...

    async def recover_expired(
        self, now: datetime, *, replica: str | None = None, outbox_for: OutboxFor | None = None
    ) -> RecoveryResult:
        """Release runs whose lease expired (or, at start-up, claimed by ``replica``).

        Started ones become ``failed`` (interrupted), the others ``pending`` again; the
        environments either held are in the result's ``environments``, to give back.
        ``outbox_for``, when given, runs inside the transaction for each interrupted run.
        """

    # -- outbox ---------------------------------------------------------------------------
    async def due_statuses(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        """The oldest queued entry of each (repo, sha, context) group, when it is due."""

    async def mark_sent(self, entry_id: OutboxId, now: datetime, outcome: str = "sent") -> None:
        """Finish an entry as ``sent`` or ``skipped`` (Gitea already held that status)."""

    async def reschedule(
        self, entry_id: OutboxId, next_attempt_at: datetime, attempts: int, last_error: str
    ) -> None: ...

    async def give_up(self, entry_id: OutboxId, now: datetime, reason: str) -> None:
        """Stop retrying; recorded on the entry, on the run's status_report and in stats."""

    async def outbox_stats(self) -> OutboxStats: ...

    async def get_outbox(self, run_id: RunId) -> list[OutboxEntry]:
        """A run's statuses in posting order (for its page and for tests)."""

    # -- environments ---------------------------------------------------------------------
    async def get_environment(self, env_id: str) -> EnvironmentInstance | None: ...

    async def list_environments(
        self, *, state: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[EnvironmentInstance]:
        """Newest first, destroyed ones included."""

    async def find_reusable(
        self, workspace: str, name: str, context: str
    ) -> EnvironmentInstance | None:
        """The live instance for this key (not destroyed, no teardown requested), if any."""

    async def insert_environment(self, env: EnvironmentInstance) -> bool:
        """False when a live instance with the same (workspace, name, context) exists."""

    async def update_environment(
        self, env: EnvironmentInstance, *, expect_state: EnvironmentState | None = None
    ) -> bool:
        """Write every field; with ``expect_state``, only if the stored state still is that."""

    async def adjust_environment_users(
        self, env_id: EnvironmentId, delta: int, now: datetime
    ) -> EnvironmentInstance | None:
        """Atomically add ``delta`` to ``users``, touch ``last_used_at`` and ``expires_at``."""

    async def lock_environment(
        self, env_id: EnvironmentId, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        """Take or renew the provisioning lease; False while another live owner holds it."""

    async def take_environment(
        self, env_id: EnvironmentId, routing: Mapping[str, str], now: datetime
    ) -> EnvironmentInstance | None:
        """One more run on a live record, in one atomic update: only when no teardown is
        requested, it has no error, its state is ``warm``, ``cooling`` or ``running`` and no
        live lease is held on it. It becomes ``running`` with ``users + 1``, ``routing``,
        ``last_used_at = now``, ``expires_at = now + TTL`` and no lease. Returns the stored
        record, or ``None`` when a condition failed (nothing was written).
        """

    async def take_or_list(
        self,
        workspace: str,
        name: str,
        context: str,
        routing: Mapping[str, str],
        now: datetime,
        *,
        provider: str,
        provider_app_name: str | None,
        users: int = 1,
        provision: EnvironmentInstance | None = None,
    ) -> tuple[EnvironmentInstance | None, list[EnvironmentInstance]]:
        """Find and take the live record for (workspace, name, context) for ``users`` runs
        in one atomic update, when a run may use it as it is: the conditions of
        ``take_environment``, plus the same ``provider`` and ``provider_app_name`` (else the
        declaration changed) and, for a ``warm`` / ``cooling`` record, a TTL not elapsed at
        ``now`` (``now < COALESCE(last_used_at, created_at) + TTL``). The record is written
        as by ``take_environment``, with ``users + users``. When that takes nothing,
        ``environments_for_key`` in the same transaction: ``(taken, [])`` or ``(None,
        records of the key)``, so a miss costs one call instead of two.

        ``provision`` (a ``provisioning`` record of this key): inserted in the same
        transaction when nothing was taken and the key has no record that is not
        ``destroyed``; it is then the one record listed, and the caller provisions it.
        """

    async def environments_for_key(
        self, workspace: str, name: str, context: str
    ) -> list[EnvironmentInstance]:
        """Every record of (workspace, name, context) that is not destroyed, newest first:
        the live one (as ``take_or_list`` takes it) and those with a teardown requested,
        in one read."""

    async def expired_environments(self, now: datetime) -> list[EnvironmentInstance]:
        """Warm/cooling instances past ``expires_at`` that no run holds."""

    async def environments_to_teardown(self) -> list[EnvironmentInstance]:
        """Instances with a teardown requested that are not destroyed yet."""

    # -- replicas -------------------------------------------------------------------------
    async def heartbeat_replica(self, name: str, revision: str | None, now: datetime) -> None: ...

    async def list_replicas(self, since: datetime) -> list[ReplicaInfo]:
        """Replicas seen at/after ``since``, by name."""


class StoreError(TestmeshError):
    """The store could not do what was asked (closed, not opened, database error)."""


__all__ = ["OutboxFor", "Store", "StoreError"]
