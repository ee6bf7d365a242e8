"""Where a run's commit statuses go, and the outbox entries that carry them (pure).

``report_target`` resolves (integration, repo, sha, context) for a rule and trigger, or says
why no status will be posted; ``pending_entries`` / ``final_entries`` build the ``pending``
and final outbox entries of a run (DESIGN.md section 5). No IO, no clock: callers pass ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from testmesh_reconciler.config.model import (
    Integration,
    Snapshot,
    Suite,
    TriggerRule,
    repo_from_url,
    url_host,
)
from testmesh_reconciler.providers.gitea import context_for, needs_final_status, status_for_run
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.store.records import OutboxEntry, OutboxId, Run, new_id
from testmesh_reconciler.triggers import Trigger

PENDING_SEQ: Final = 0
FINAL_SEQ: Final = 1
PENDING_QUEUED: Final = "pending_queued"
"""``Run.status_report`` key set (``mark_pending_queued``) once the run's ``pending`` is queued."""
REASON: Final = "reason"
"""``Run.status_report`` key holding why no status is posted (``no_report_reason``)."""


@dataclass(frozen=True, slots=True)
class ReportTarget:
    """Where a run's statuses go: a Gitea integration (workspace, name), repo, sha, context."""

    integration_workspace: str
    integration: str
    repository: str  # Gitea "owner/name"
    sha: str
    context: str

    def to_json(self) -> dict[str, str]:
        """The JSON object stored in ``Run.report_target``."""
        return {
            "integration_workspace": self.integration_workspace,
            "integration": self.integration,
            "repository": self.repository,
            "sha": self.sha,
            "context": self.context,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ReportTarget | None:
        """The target stored by ``to_json``; ``None`` for none or an incomplete object."""
        if not data:
            return None
        keys = ("integration_workspace", "integration", "repository", "sha", "context")
        values = [data.get(k) for k in keys]
        if not all(isinstance(v, str) and v for v in values):
            return None
        return cls(*(str(v) for v in values))


def report_target_json(target: ReportTarget | str | None) -> dict[str, str] | None:
    """What to store in ``Run.report_target``: the target's JSON, ``None`` for a reason."""
    return target.to_json() if isinstance(target, ReportTarget) else None


def no_report_reason(target: ReportTarget | str | None) -> dict[str, str]:
    """What to merge into ``Run.status_report`` (and a delivery's reason) when no status
    will be posted: ``{"reason": ...}``; empty for a real target."""
    return {REASON: target} if isinstance(target, str) else {}


def _hostname(host: str) -> str:
    """``host`` without a ``:port`` (IPv6 literals keep their brackets)."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name
    return host


def _gitea_integrations(snapshot: Snapshot, workspace: str) -> list[Integration]:
    found = [i for i in snapshot.integrations.values()
             if i.provider == "gitea" and i.workspace == workspace]
    return sorted(found, key=lambda i: i.name)


def gitea_for_repo_url(snapshot: Snapshot, workspace: str, repo_url: str) -> Integration | None:
    """The Gitea integration of ``workspace`` whose url host is ``repo_url``'s: exact
    ``host:port`` first, else the host name alone (SSH and HTTPS often differ in port only);
    the first by name when several match."""
    host = url_host(repo_url)
    if host is None:
        return None
    candidates = [i for i in _gitea_integrations(snapshot, workspace) if i.host]
    exact = [i for i in candidates if i.host == host]
    loose = [i for i in candidates if _hostname(i.host or "") == _hostname(host)]
    found = exact or loose
    return found[0] if found else None


def _host_matches(integration: Integration, repo_url: str) -> bool:
    host, own = url_host(repo_url), integration.host
    return bool(host and own and (host == own or _hostname(host) == _hostname(own)))


def suite_name(snapshot: Snapshot | None, rule: TriggerRule) -> str:
    """The rule's suite name (resolved through ``suite_id`` when the rule names only that)."""
    if rule.suite:
        return rule.suite
    if snapshot is not None:
        suite = snapshot.by_id.get(rule.suite_id)
        if isinstance(suite, Suite):
            return suite.name
    return str(rule.suite_id)


def _valid_repo(repo: str) -> bool:
    owner, sep, name = repo.partition("/")
    return bool(sep and owner and name and "/" not in name)


def report_target(snapshot: Snapshot, rule: TriggerRule, trigger: Trigger) -> ReportTarget | str:
    """Where the statuses of a run of ``rule`` for ``trigger`` go, or why none will be posted.

    Gitea events: ``spec.report.integration`` or the event's integration, and
    ``spec.report.repository`` or the event's repo. Argo CD events: ``spec.report.integration``
    or the Gitea integration (same workspace) whose url host is the repoURL's host, and
    ``spec.report.repository`` or the repo the parser derived from the repoURL. Context:
    ``spec.report.context`` or ``testmesh/<suite>``; sha: the event's.
    """
    workspace = rule.workspace
    report = rule.report
    fix = f"set spec.report.repository and spec.report.integration on rule '{rule.name}'"
    integration: Integration | None
    if trigger.source == "gitea":
        name = report.integration or trigger.integration
        integration = snapshot.integrations.get((workspace, name))
        repo = report.repository or trigger.repo
        if integration is None or integration.provider != "gitea":
            return (f"no commit status: integration '{name}' is not a gitea integration in "
                    f"workspace '{workspace}'; fix spec.report.integration on rule '{rule.name}'")
    else:
        app = trigger.app or trigger.repository or "?"
        repo_url = trigger.repo_url or ""
        if report.integration:
            integration = snapshot.integrations.get((workspace, report.integration))
            if integration is None or integration.provider != "gitea":
                return (f"no commit status: integration '{report.integration}' is not a gitea "
                        f"integration in workspace '{workspace}'; fix spec.report.integration "
                        f"on rule '{rule.name}'")
        else:
            integration = gitea_for_repo_url(snapshot, workspace, repo_url) if repo_url else None
            if integration is None:
                if not repo_url:
                    why = "the notification carries no repoURL"
                else:
                    host = url_host(repo_url) or repo_url
                    why = f"its repoURL host '{host}' matches no gitea integration"
                return f"no Gitea repository for Argo CD application '{app}': {why}; {fix}"
        repo = report.repository or trigger.repo
        if not repo and repo_url and _host_matches(integration, repo_url):
            repo = repo_from_url(repo_url) or ""
        if not repo:
            return (f"no Gitea repository for Argo CD application '{app}': its repoURL "
                    f"'{repo_url}' names no repository on '{integration.name}'; {fix}")
    if not _valid_repo(repo):
        return (f"no commit status: repository '{repo}' is not 'owner/name'; "
                f"fix spec.report.repository on rule '{rule.name}'")
    if not trigger.sha:
        return (f"no commit status: the {trigger.source} event carries no commit sha "
                f"to post it on (rule '{rule.name}')")
    return ReportTarget(
        integration_workspace=integration.workspace,
        integration=integration.name,
        repository=repo,
        sha=trigger.sha,
        context=context_for(suite_name(snapshot, rule), report.context),
    )


# --- outbox entries ------------------------------------------------------------------------


def mark_pending_queued(run: Run) -> Run:
    """``run`` with ``status_report["pending_queued"] = True``: keep using (and save) this
    copy after enqueuing the pending entries, so ``final_entries`` knows a final is owed."""
    return replace(run, status_report={**run.status_report, PENDING_QUEUED: True})


def pending_was_queued(run: Run) -> bool:
    """Whether the run's ``pending`` status was queued: it left the queue (a replica claimed
    it: ``claimed_by``; or it sent a step: ``started``), the ``mark_pending_queued`` marker
    is set, or the store's derived ``status_report["statuses"]`` holds a ``pending``. A run
    superseded or cancelled while queued has none of these, so it posts nothing."""
    report = run.status_report
    if run.claimed_by is not None or run.started or report.get(PENDING_QUEUED) is True:
        return True
    statuses = report.get("statuses")
    if isinstance(statuses, list | tuple):
        return any(isinstance(s, Mapping) and s.get("state") == "pending" for s in statuses)
    return False


def _entry(run: Run, target: ReportTarget, *, seq: int, state: str, description: str,
           target_url: str, now: datetime) -> OutboxEntry:
    return OutboxEntry(
        id=OutboxId(new_id()), run_id=run.id, seq=seq,
        integration_workspace=target.integration_workspace, integration=target.integration,
        repo=target.repository, sha=target.sha, context=target.context, state=state,
        description=description, target_url=target_url, created_at=now, next_attempt_at=now,
    )


def _target_of(run: Run) -> ReportTarget | None:
    if run.trigger_type == "manual":
        return None
    return ReportTarget.from_json(run.report_target)


def pending_entries(run: Run, snapshot: Snapshot | None, settings: Settings,
                    now: datetime) -> list[OutboxEntry]:
    """The ``pending`` entry (seq 0) for a run leaving the queue; empty for a manual run or
    a run without a ``report_target``. ``snapshot`` is not needed (the target was resolved
    when the run was queued) and may be ``None``."""
    target = _target_of(run)
    if target is None:
        return []
    spec = status_for_run(suite=run.suite, run_id=run.id, public_url=settings.public_url,
                          run_status=run.status, run_error=run.error, final=False,
                          context=target.context)
    return [_entry(run, target, seq=PENDING_SEQ, state=spec.state,
                   description=spec.description, target_url=spec.target_url, now=now)]


def final_entries(run: Run, snapshot: Snapshot | None, settings: Settings,
                  now: datetime) -> list[OutboxEntry]:
    """Exactly one final entry (seq 1) for a finished run whose pending was queued
    (``pending_was_queued``); empty for a manual run, a run without a target, a run still
    active, or one that never left the queue (superseded or cancelled while queued)."""
    target = _target_of(run)
    if target is None or not needs_final_status(run.status,
                                                pending_posted=pending_was_queued(run)):
        return []
    spec = status_for_run(suite=run.suite, run_id=run.id, public_url=settings.public_url,
                          run_status=run.status, run_error=run.error, final=True,
                          passed=run.passed_flows, failed=run.failed_flows,
                          total=run.total_flows, context=target.context)
    return [_entry(run, target, seq=FINAL_SEQ, state=spec.state,
                   description=spec.description, target_url=spec.target_url, now=now)]


def recovery_outbox(settings: Settings, now: datetime) -> Callable[[Run], list[OutboxEntry]]:
    """The ``outbox_for`` of ``Store.recover_expired``: the ``error`` status of each run the
    recovery finished as interrupted (a started run, so its pending was queued)."""

    def outbox_for(run: Run) -> list[OutboxEntry]:
        return final_entries(run, None, settings, now)

    return outbox_for


__all__ = [
    "FINAL_SEQ",
    "PENDING_QUEUED",
    "PENDING_SEQ",
    "REASON",
    "ReportTarget",
    "final_entries",
    "gitea_for_repo_url",
    "mark_pending_queued",
    "no_report_reason",
    "pending_entries",
    "pending_was_queued",
    "recovery_outbox",
    "report_target",
    "report_target_json",
    "suite_name",
]
