"""Schema-valid documents to frozen declaration objects, one document at a time.

Runs only on documents the kind's schema accepted, so shapes are trusted here; what
the schema cannot say (globs, expressions, durations, step ids) comes back as notes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from testmesh_reconciler.config.durations import parse_duration
from testmesh_reconciler.config.frozen import EMPTY, FrozenDict, freeze
from testmesh_reconciler.config.globs import GlobError, compile_glob
from testmesh_reconciler.config.model import (
    DEFAULT_PR_ACTIONS,
    DEFAULT_WORKSPACE,
    Declaration,
    Flow,
    FlowDefinition,
    Integration,
    Metadata,
    OnError,
    ReportTarget,
    Retry,
    SecretBinding,
    SecretRef,
    Source,
    Step,
    Suite,
    SuiteFlow,
    TestEnvironment,
    TriggerRule,
    object_id,
)

Path = tuple[str | int, ...]
#: Returns a problem message for an invalid expression, else None (injected: the
#: expression grammar lives with the runner, above this layer).
ExpressionChecker = Callable[[str], str | None]
_NEVER = re.compile(r"(?!)")  # a rule whose glob is invalid matches nothing


@dataclass(frozen=True, slots=True)
class Note:
    """A problem found while building, relative to the document."""

    path: Path
    message: str
    key: bool = False


def metadata_of(doc: Mapping[str, Any]) -> Metadata:
    meta = doc.get("metadata") or {}
    return Metadata(
        name=str(meta.get("name", "")),
        workspace=str(meta.get("workspace") or DEFAULT_WORKSPACE),
        labels=freeze(meta.get("labels") or {}),
    )


def build_declaration(kind: str, doc: dict[str, Any], source: Source,
                      check_expression: ExpressionChecker | None) -> tuple[Declaration, list[Note]]:
    meta = metadata_of(doc)
    oid = object_id(kind, meta.workspace, meta.name)
    spec: dict[str, Any] = doc["spec"]
    # Read-only view of the parsed document (for plans and the config API); the typed
    # fields below are the frozen copies everything else reads.
    frozen_doc: Mapping[str, Any] = MappingProxyType(doc)
    notes: list[Note] = []
    obj: Declaration
    if kind == "Integration":
        obj = _integration(oid, meta, source, spec, frozen_doc, notes)
    elif kind == "TriggerRule":
        obj = _rule(oid, meta, source, spec, frozen_doc, notes)
    elif kind == "Suite":
        obj = _suite(oid, meta, source, spec, frozen_doc)
    elif kind == "Flow":
        definition = build_flow_definition(spec, ("spec",), notes, check_expression)
        obj = Flow(oid, meta, source, definition, frozen_doc)
    else:
        obj = _environment(oid, meta, source, spec, frozen_doc)
    return obj, notes


def _integration(oid: uuid.UUID, meta: Metadata, source: Source, spec: dict[str, Any],
                 doc: Mapping[str, Any], notes: list[Note]) -> Integration:
    config = spec.get("config") or {}
    app_filter = str(config.get("app_filter") or "")
    if app_filter:
        compiled = compile_glob(app_filter)
        if isinstance(compiled, GlobError):
            notes.append(Note(("spec", "config", "app_filter"), compiled.message))
    secrets: dict[str, SecretRef] = {}
    for key, value in (spec.get("secrets") or {}).items():
        ((source_kind, reference),) = value.items()
        binding = SecretBinding(meta.workspace, meta.name, key)
        secrets[key] = SecretRef(source_kind, str(reference), binding)
    return Integration(
        id=oid, metadata=meta, source=source,
        type=str(spec.get("type", "git")), provider=str(spec["provider"]),
        url=config.get("url"), app_filter=app_filter,
        require_webhook_secret=bool(config.get("require_webhook_secret", True)),
        config=freeze(config), secrets=FrozenDict(secrets), document=doc,
    )


def _rule(oid: uuid.UUID, meta: Metadata, source: Source, spec: dict[str, Any],
          doc: Mapping[str, Any], notes: list[Note]) -> TriggerRule:
    branch_filter = spec.get("branch_filter", "*")
    compiled = compile_glob(branch_filter)
    if isinstance(compiled, GlobError):
        notes.append(Note(("spec", "branch_filter"), compiled.message))
        compiled = _NEVER
    suite = spec.get("suite")
    suite_id = (uuid.UUID(spec["suite_id"]) if spec.get("suite_id")
                else object_id("Suite", meta.workspace, str(suite)))
    report = spec.get("report") or {}
    return TriggerRule(
        id=oid, metadata=meta, source=source,
        integration=str(spec["integration"]), repository=str(spec["repository"]),
        branch_filter=branch_filter, branch_pattern=compiled,
        event_types=tuple(spec["event_types"]),
        pull_request_actions=tuple(spec.get("pull_request_actions") or DEFAULT_PR_ACTIONS),
        suite=str(suite or ""), suite_id=suite_id,
        environment=spec.get("environment"),
        variables=freeze(spec.get("variables") or {}),
        report=ReportTarget(report.get("integration"), report.get("repository"),
                            report.get("context")),
        enabled=bool(spec.get("enabled", True)), document=doc,
    )


def _suite(oid: uuid.UUID, meta: Metadata, source: Source, spec: dict[str, Any],
           doc: Mapping[str, Any]) -> Suite:
    flows = tuple(
        SuiteFlow(order=int(f.get("order", 0)), parallel=bool(f.get("parallel", False)),
                  flow=f.get("flow"), path=f.get("path"))
        for f in spec["flows"]
    )
    return Suite(
        id=oid, metadata=meta, source=source, description=str(spec.get("description") or ""),
        tags=tuple(spec.get("tags") or ()), variables=freeze(spec.get("variables") or {}),
        flows=flows, document=doc,
    )


def _environment(oid: uuid.UUID, meta: Metadata, source: Source, spec: dict[str, Any],
                 doc: Mapping[str, Any]) -> TestEnvironment:
    application = spec.get("application")
    return TestEnvironment(
        id=oid, metadata=meta, source=source, provider=str(spec["provider"]),
        integration=spec.get("integration"), context=spec.get("context"),
        provider_app_name=spec.get("provider_app_name"), namespace=spec.get("namespace"),
        ttl_minutes=float(spec.get("ttl_minutes", 120)),
        application=freeze(application) if application is not None else None,
        services=tuple(freeze(s) for s in spec.get("services") or ()),
        routing_policy=freeze({k: str(v) for k, v in (spec.get("routing_policy") or {}).items()}),
        document=doc,
    )


def build_flow_definition(spec: Mapping[str, Any], at: Path, notes: list[Note],
                          check_expression: ExpressionChecker | None) -> FlowDefinition:
    """A TestMesh flow definition (a Flow's spec or a plain flow file's body)."""
    seen_ids: dict[str, Path] = {}
    phases: dict[str, tuple[Step, ...]] = {}
    for phase in ("setup", "steps", "teardown"):
        steps = []
        for i, raw in enumerate(spec.get(phase) or ()):
            here = (*at, phase, i)
            step_id = raw.get("id")
            if step_id is not None:
                if step_id in seen_ids:
                    notes.append(Note((*here, "id"), f"duplicate step id {step_id!r}: step ids "
                                      "must be unique within a flow, since later steps read "
                                      "results by id"))
                seen_ids.setdefault(step_id, here)
            steps.append(_step(raw, here, notes, check_expression))
        phases[phase] = tuple(steps)
    return FlowDefinition(
        name=str(spec.get("name", "")), description=str(spec.get("description") or ""),
        tags=tuple(spec.get("tags") or ()), env=freeze(spec.get("env") or {}),
        setup=phases["setup"], steps=phases["steps"], teardown=phases["teardown"],
    )


def _step(raw: Mapping[str, Any], at: Path, notes: list[Note],
          check_expression: ExpressionChecker | None) -> Step:
    config = raw.get("config") or {}
    asserts = tuple(str(a) for a in raw.get("assert") or ())
    when = raw.get("when")
    if check_expression is not None:
        exprs: list[tuple[Path, str]] = [((*at, "assert", i), a) for i, a in enumerate(asserts)]
        if when is not None:
            exprs.append(((*at, "when"), str(when)))
        if raw.get("action") == "wait_until" and "condition" in config:
            exprs.append(((*at, "config", "condition"), str(config["condition"])))
        for path, text in exprs:
            problem = check_expression(text)
            if problem:
                notes.append(Note(path, problem))
    retry_raw = raw.get("retry") or {}
    retry = Retry(
        max_attempts=int(retry_raw.get("max_attempts", 1)),
        delay_seconds=parse_duration(retry_raw.get("delay", "1s")) or 0.0,
        backoff=str(retry_raw.get("backoff", "fixed")),
    )
    timeout = raw.get("timeout")
    on_error_raw = raw.get("on_error", "fail")
    if isinstance(on_error_raw, Mapping):
        on_error = OnError("action", _step(on_error_raw, (*at, "on_error"), notes,
                                           check_expression))
    else:
        on_error = OnError("continue" if on_error_raw == "continue" else "fail")
    return Step(
        action=str(raw["action"]), config=freeze(config), id=raw.get("id"),
        name=raw.get("name"), asserts=asserts,
        output=freeze({str(k): str(v) for k, v in (raw.get("output") or {}).items()}),
        retry=retry,
        timeout_seconds=parse_duration(timeout) if timeout is not None else None,
        when=str(when) if when is not None else None, on_error=on_error,
    )


__all__ = ["EMPTY", "ExpressionChecker", "Note", "build_declaration", "build_flow_definition",
           "metadata_of"]
