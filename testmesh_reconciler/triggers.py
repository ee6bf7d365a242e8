"""The event a webhook delivers, reduced to what matching and runs need.

Webhook parsers (``webhooks/gitea.py``, ``webhooks/argocd.py``) produce a ``Trigger``;
matching reads it against the snapshot; runs carry its variables (DESIGN.md section 4).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Source = Literal["argocd", "gitea"]
Event = Literal["sync", "push", "pull_request"]


@dataclass(frozen=True, slots=True)
class Trigger:
    """One event from one integration; ``repository`` is what rules match on."""

    source: Source
    event: Event
    integration: str  # the integration (by name) whose secret verified the delivery
    workspace: str
    repo: str  # Gitea "owner/repo"; for Argo CD derived from the repoURL, else ""
    sha: str
    app: str | None = None  # Argo CD Application name
    branch: str | None = None  # pushed branch / PR head branch / Argo CD targetRevision
    base_branch: str | None = None
    pr_number: int | None = None
    action: str | None = None  # pull_request action ("opened", "synchronized", ...)
    repo_url: str | None = None  # Argo CD spec.source.repoURL, when known

    @property
    def repository(self) -> str:
        """The key rules name in ``spec.repository``: the app for Argo CD, else the repo."""
        return (self.app or "") if self.source == "argocd" else self.repo

    @property
    def trigger_type(self) -> str:
        """SuiteRun.trigger_type: ``argocd``, or ``webhook`` for Gitea (as in TestMesh)."""
        return "argocd" if self.source == "argocd" else "webhook"

    @property
    def short_sha(self) -> str:
        return self.sha[:7]

    def variables(self) -> dict[str, str]:
        """Trigger variables for templates and flows; absent ones are left out."""
        out: dict[str, str] = {"source": self.source, "event": self.event, "repo": self.repo,
                               "sha": self.sha, "short_sha": self.short_sha}
        optional = {"branch": self.branch, "base_branch": self.base_branch,
                    "action": self.action, "app": self.app,
                    "pr_number": str(self.pr_number) if self.pr_number is not None else None}
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    def dedup_key(self) -> str:
        """Identity of the event (not of the HTTP delivery): a redelivery has the same key."""
        parts = (self.source, self.workspace, self.integration, self.repo, self.app or "",
                 self.event, self.action or "", self.branch or "", str(self.pr_number or ""),
                 self.sha)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
