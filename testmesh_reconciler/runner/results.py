"""What a run produced: step, flow and suite-run results as frozen values.

``SuiteRunResult.to_json()`` is the SuiteRun resource of DESIGN.md section 4 (with flow
executions and step results); summaries in here are already redacted and truncated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from testmesh_reconciler.store.records import isoformat

StepStatus = Literal["passed", "failed", "skipped", "error"]
FlowStatus = Literal["passed", "failed", "skipped", "cancelled"]
RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
TriggerType = Literal["manual", "argocd", "webhook"]
Phase = Literal["setup", "steps", "teardown", "on_error"]

#: Step statuses that fail a flow (unless the step says ``on_error: continue``).
FAILING: frozenset[str] = frozenset({"failed", "error"})


def _empty() -> dict[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class AssertionResult:
    """One evaluated assertion; ``values`` pairs operand source text with its shown value."""

    expression: str
    passed: bool
    message: str | None = None
    values: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"expression": self.expression, "passed": self.passed,
                               "message": self.message}
        if not self.passed and self.values:
            out["values"] = dict(self.values)
        return out


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """What was sent, redacted: method, URL, headers, and the body (truncated)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=_empty)
    body: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "url": self.url,
                               "headers": dict(self.headers)}
        if self.body is not None:
            out["body"] = self.body
        return out


@dataclass(frozen=True, slots=True)
class ResponseSummary:
    """What came back, redacted: status, headers, body (JSON or text, truncated), size."""

    status: int
    headers: Mapping[str, str] = field(default_factory=_empty)
    body: Any = None
    size: int = 0
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "headers": dict(self.headers), "body": self.body,
                "size": self.size, "truncated": self.truncated}


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    """One step's outcome. ``error`` says why a step failed, was an error, or was skipped.

    ``status``: ``passed``; ``failed`` (an assertion or condition was false); ``error`` (the
    step could not be carried out: unknown variable, invalid config, network error,
    timeout); ``skipped`` (``when`` was false, or an earlier step ended the phase).
    """

    id: str | None
    name: str | None
    action: str
    phase: Phase
    status: StepStatus
    attempts: int = 0
    duration_ms: int = 0
    error: str | None = None
    assertions: tuple[AssertionResult, ...] = ()
    request: RequestSummary | None = None
    response: ResponseSummary | None = None
    message: str | None = None
    outputs: Mapping[str, str] = field(default_factory=_empty)
    continued: bool = False
    started_at: datetime | None = None
    on_error: StepResult | None = None

    @property
    def label(self) -> str:
        return self.id or self.name or self.action

    @property
    def failing(self) -> bool:
        """Whether this step fails its flow (failed or error, and not ``on_error: continue``)."""
        return self.status in FAILING and not self.continued

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "action": self.action,
            "phase": self.phase,
            "status": self.status,
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
            "started_at": isoformat(self.started_at),
            "error": self.error,
            "assertions": [a.to_json() for a in self.assertions],
            "request": self.request.to_json() if self.request is not None else None,
            "response": self.response.to_json() if self.response is not None else None,
        }
        if self.message is not None:
            out["message"] = self.message
        if self.outputs:
            out["outputs"] = dict(self.outputs)
        if self.continued:
            out["continued"] = True
        if self.on_error is not None:
            out["on_error"] = self.on_error.to_json()
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowResult:
    """One flow execution. ``internal`` marks an error of ours (it sets the run's error)."""

    flow: str
    name: str
    status: FlowStatus
    path: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int = 0
    error: str | None = None
    steps: tuple[StepResult, ...] = ()
    internal: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "name": self.name,
            "path": self.path,
            "status": self.status,
            "started_at": isoformat(self.started_at),
            "completed_at": isoformat(self.completed_at),
            "duration_ms": self.duration_ms,
            "error": self.error,
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SuiteRunResult:
    """A SuiteRun: the final record, or a progress snapshot while ``status`` is running.

    ``error`` is set only when the run could not execute as declared (environment not
    usable, an internal error, interrupted), never for a failed step: that is what turns
    the commit status into ``error`` rather than ``failure`` (DESIGN.md section 5).
    """

    id: str
    suite: str
    suite_id: str
    workspace: str
    status: RunStatus
    trigger_type: TriggerType
    trigger: Mapping[str, Any] = field(default_factory=_empty)
    environment: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    total_flows: int = 0
    passed_flows: int = 0
    failed_flows: int = 0
    trigger_ref: str | None = None
    revision: str | None = None
    error: str | None = None
    status_report: Mapping[str, Any] = field(default_factory=_empty)
    flows: tuple[FlowResult, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "completed"

    @property
    def skipped_flows(self) -> int:
        return sum(1 for f in self.flows if f.status == "skipped")

    def with_flows(self, flows: tuple[FlowResult, ...]) -> SuiteRunResult:
        """This record with ``flows`` and the counts recomputed from them."""
        return replace(self, flows=flows,
                       passed_flows=sum(1 for f in flows if f.status == "passed"),
                       failed_flows=sum(1 for f in flows if f.status == "failed"))

    def flows_json(self) -> list[dict[str, Any]]:
        """The ``flows`` field alone (what a store saves as progress)."""
        return [f.to_json() for f in self.flows]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "suite": self.suite,
            "suite_id": self.suite_id,
            "workspace": self.workspace,
            "status": self.status,
            "trigger_type": self.trigger_type,
            "trigger": dict(self.trigger),
            "environment": self.environment,
            "started_at": isoformat(self.started_at),
            "completed_at": isoformat(self.completed_at),
            "duration_ms": self.duration_ms,
            "total_flows": self.total_flows,
            "passed_flows": self.passed_flows,
            "failed_flows": self.failed_flows,
            "trigger_ref": self.trigger_ref,
            "revision": self.revision,
            "error": self.error,
            "status_report": dict(self.status_report),
            "flows": self.flows_json(),
        }
