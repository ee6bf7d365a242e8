"""Cross-document rules and the snapshot's lookup indexes.

Everything a single document's schema cannot know: duplicates, dangling references,
event types a provider cannot send, template variables a rule's events do not carry,
webhook integrations without a secret. Emits the same ``Pending`` problems as the
schema pass; the first declaration of a name wins, later duplicates are reported.
"""

from __future__ import annotations

import difflib
import posixpath
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from testmesh_reconciler.config.frozen import FrozenDict
from testmesh_reconciler.config.model import (
    ALL_TRIGGER_VARIABLES,
    EVENT_VARIABLES,
    PROVIDER_EVENTS,
    Declaration,
    Flow,
    FlowDefinition,
    Ignored,
    Integration,
    Key,
    Snapshot,
    Suite,
    TestEnvironment,
    TriggerRule,
)
from testmesh_reconciler.config.pending import Entry, Pending
from testmesh_reconciler.config.templates import template_names, walk_strings

_PROVIDER_NAMES = {"argocd": "Argo CD", "gitea": "Gitea"}
#: Reports a dangling reference: (object, path, kind, name).
_Missing = Callable[[Declaration, tuple[str | int, ...], str, str], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    objects: tuple[Declaration, ...]
    pending: tuple[Pending, ...]


def normalize_flow_path(path: str | None) -> str | None:
    """A suite's flow ``path`` as a key under the root; ``None`` if it leaves the root."""
    if path is None or path.startswith("/"):
        return None
    norm = posixpath.normpath(path)
    return None if norm.startswith("../") or norm == ".." else norm


def check(entries: Sequence[Entry], flow_files: Mapping[str, FlowDefinition],
          paths: set[str]) -> Outcome:
    pending: list[Pending] = []
    first: dict[tuple[str, str, str], Entry] = {}
    # The loader hands entries over in (file, line) order already: files sorted by path,
    # documents in order; so the first of two duplicates is the one kept.
    for e in entries:
        ident = (e.kind, e.workspace, e.name)
        if ident in first:
            was = first[ident].source
            pending.append(Pending(e.source.file, e.source.document, ("metadata", "name"),
                                   f"duplicate {e.kind} {e.name!r} in workspace "
                                   f"{e.workspace!r}: already declared at {was.file}:"
                                   f"{was.line}; rename one of them"))
        else:
            first[ident] = e
    declared = {k: e for k, e in first.items()}  # includes documents that failed schema
    objects: dict[tuple[str, str, str], Declaration] = {
        k: e.obj for k, e in first.items() if e.obj is not None
    }
    suites_by_id = _LazySuites(objects)
    gitea_receivers: set[tuple[str, str]] = set()

    def names(kind: str, workspace: str) -> list[str]:
        return [n for (k, w, n) in declared if k == kind and w == workspace]

    def missing(obj: Declaration, path: tuple[str | int, ...], kind: str, name: str) -> None:
        close = difflib.get_close_matches(name, names(kind, obj.workspace), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        pending.append(_at(obj, path, f"no {kind} named {name!r} in workspace "
                                      f"{obj.workspace!r}{hint}"))

    out: list[Declaration] = []
    for key, obj in objects.items():
        ws = obj.workspace
        if isinstance(obj, TriggerRule):
            obj = _check_rule(obj, declared, objects, suites_by_id, missing, pending)
            integ = objects.get(("Integration", ws, obj.integration))
            if isinstance(integ, Integration) and integ.provider == "gitea":
                gitea_receivers.add((ws, integ.name))
        elif isinstance(obj, Suite):
            for i, f in enumerate(obj.flows):
                if f.flow is not None and ("Flow", ws, f.flow) not in declared:
                    missing(obj, ("spec", "flows", i, "flow"), "Flow", f.flow)
                elif f.path is not None:
                    norm = normalize_flow_path(f.path)
                    if norm is None:
                        pending.append(_at(obj, ("spec", "flows", i, "path"),
                                           f"flow path {f.path!r} leaves the declarations "
                                           "root; paths are relative to the root"))
                    elif norm not in paths:
                        pending.append(_at(obj, ("spec", "flows", i, "path"),
                                           f"no file {norm!r} under the declarations root"))
                    elif norm != f.path:
                        obj = replace(obj, flows=tuple(
                            replace(g, path=norm) if g is f else g for g in obj.flows))
        elif isinstance(obj, TestEnvironment):
            _check_environment(obj, declared, objects, missing, pending)
        out.append(obj)
        objects[key] = obj

    for obj in out:
        if isinstance(obj, Integration):
            receives = obj.provider == "argocd" or (obj.workspace, obj.name) in gitea_receivers
            if receives and "webhook_secret" not in obj.secrets:
                if obj.require_webhook_secret:
                    pending.append(_at(obj, ("spec", "secrets"), (
                        f"{_PROVIDER_NAMES.get(obj.provider, obj.provider)} integration "
                        f"{obj.name!r} receives webhooks but has no webhook_secret: add "
                        "secrets.webhook_secret ({sealed: ...}, {env: NAME} or {file: PATH}), "
                        "or set config.require_webhook_secret: false to accept unsigned "
                        "deliveries"), key=True))
                else:
                    pending.append(_at(obj, ("spec", "config", "require_webhook_secret"), (
                        f"integration {obj.name!r} accepts unsigned webhook deliveries "
                        "(require_webhook_secret: false); anyone who can reach the daemon "
                        "can start runs"), severity="warning"))
    return Outcome(tuple(out), tuple(pending))


class _LazySuites:
    """Suites by id, indexed only if a rule names its suite by ``suite_id``."""

    def __init__(self, objects: Mapping[tuple[str, str, str], Declaration]) -> None:
        self._objects = objects
        self._index: dict[uuid.UUID, Suite] | None = None

    def get(self, key: uuid.UUID) -> Suite | None:
        if self._index is None:
            self._index = {o.id: o for o in self._objects.values() if isinstance(o, Suite)}
        return self._index.get(key)


def _check_rule(rule: TriggerRule, declared: Mapping[tuple[str, str, str], Entry],
                objects: Mapping[tuple[str, str, str], Declaration],
                suites_by_id: _LazySuites, missing: _Missing,
                pending: list[Pending]) -> TriggerRule:
    ws = rule.workspace
    integ = objects.get(("Integration", ws, rule.integration))
    if ("Integration", ws, rule.integration) not in declared:
        missing(rule, ("spec", "integration"), "Integration", rule.integration)
    elif isinstance(integ, Integration):
        can_send = PROVIDER_EVENTS.get(integ.provider, frozenset())
        for i, event in enumerate(rule.event_types):
            if event not in can_send:
                who = _PROVIDER_NAMES.get(integ.provider, integ.provider)
                sends = ", ".join(repr(e) for e in sorted(can_send))
                pending.append(_at(rule, ("spec", "event_types", i), (
                    f"{who} integration {integ.name!r} cannot send {event!r} events (it sends "
                    f"{sends}); point the rule at an integration that does")))
    if rule.suite:
        if ("Suite", ws, rule.suite) not in declared:
            missing(rule, ("spec", "suite"), "Suite", rule.suite)
    else:
        suite = suites_by_id.get(rule.suite_id)
        if suite is None or suite.workspace != ws:
            pending.append(_at(rule, ("spec", "suite_id"),
                               f"no Suite with id '{rule.suite_id}' in workspace {ws!r}"))
        else:
            rule = replace(rule, suite=suite.name)
    if rule.environment is not None:
        env = objects.get(("TestEnvironment", ws, rule.environment))
        if ("TestEnvironment", ws, rule.environment) not in declared:
            missing(rule, ("spec", "environment"), "TestEnvironment", rule.environment)
        elif isinstance(env, TestEnvironment):
            used = _environment_variables(env)
            for event in rule.event_types:
                lacking = [v for v in used if v in ALL_TRIGGER_VARIABLES
                           and v not in EVENT_VARIABLES.get(event, frozenset())]
                if lacking:
                    listed = ", ".join("${" + v + "}" for v in lacking)
                    pending.append(_at(rule, ("spec", "environment"), (
                        f"TestEnvironment {env.name!r} uses {listed}, which {event!r} events "
                        "do not carry; use an environment without it for this rule, or "
                        "limit event_types")))
    if rule.report.integration is not None:
        target = objects.get(("Integration", ws, rule.report.integration))
        if ("Integration", ws, rule.report.integration) not in declared:
            missing(rule, ("spec", "report", "integration"), "Integration",
                    rule.report.integration)
        elif isinstance(target, Integration) and target.provider != "gitea":
            pending.append(_at(rule, ("spec", "report", "integration"), (
                f"commit statuses go to Gitea, but integration {target.name!r} is "
                f"{target.provider!r}; name a gitea integration")))
    return rule


def _check_environment(env: TestEnvironment, declared: Mapping[tuple[str, str, str], Entry],
                       objects: Mapping[tuple[str, str, str], Declaration], missing: _Missing,
                       pending: list[Pending]) -> None:
    if env.integration is not None:
        integ = objects.get(("Integration", env.workspace, env.integration))
        if ("Integration", env.workspace, env.integration) not in declared:
            missing(env, ("spec", "integration"), "Integration", env.integration)
        elif isinstance(integ, Integration) and env.provider == "argocd" \
                and integ.provider != "argocd":
            pending.append(_at(env, ("spec", "integration"), (
                f"an argocd environment provisions through Argo CD, but integration "
                f"{integ.name!r} is {integ.provider!r}")))
    known = ", ".join(sorted(ALL_TRIGGER_VARIABLES))
    for path, text in _template_fields(env):
        for name in template_names(text):
            if name not in ALL_TRIGGER_VARIABLES:
                pending.append(_at(env, path, (
                    f"unknown trigger variable ${{{name}}}; templates may use {known}")))


def _template_fields(env: TestEnvironment) -> list[tuple[tuple[str | int, ...], str]]:
    fields: list[tuple[tuple[str | int, ...], str]] = []
    for name in ("context", "provider_app_name", "namespace"):
        value = getattr(env, name)
        if value is not None:
            fields.append((("spec", name), value))
    for service, target in env.routing_policy.items():
        fields.append((("spec", "routing_policy", service), target))
    for i, entry in enumerate(env.services):
        fields.extend((("spec", "services", i, *p), s) for p, s in walk_strings(entry))
    if env.application is not None:
        fields.extend((("spec", "application", *p), s)
                      for p, s in walk_strings(env.application))
    return fields


def _environment_variables(env: TestEnvironment) -> list[str]:
    seen: dict[str, None] = {}
    for _, text in _template_fields(env):
        for name in template_names(text):
            seen.setdefault(name, None)
    return list(seen)


def _at(obj: Declaration, path: tuple[str | int, ...], message: str, *, key: bool = False,
        severity: str = "error") -> Pending:
    return Pending(obj.source.file, obj.source.document, path, message, key, severity)


def build_snapshot(objects: Iterable[Declaration], flow_files: Mapping[str, FlowDefinition],
                   *, revision: str, warnings: tuple[object, ...] = (),
                   ignored: tuple[Ignored, ...] = ()) -> Snapshot:
    """Freeze valid declarations into a snapshot with its lookup indexes."""
    by_kind: dict[str, dict[Key, Declaration]] = {
        k: {} for k in ("Integration", "TriggerRule", "Suite", "Flow", "TestEnvironment")}
    rules_by_source: dict[tuple[str, str, str], list[TriggerRule]] = {}
    for obj in objects:
        by_kind[obj.kind][(obj.workspace, obj.name)] = obj
        if isinstance(obj, TriggerRule) and obj.enabled:
            rules_by_source.setdefault((obj.workspace, obj.integration, obj.repository),
                                       []).append(obj)
    return Snapshot(
        revision=revision,
        integrations=FrozenDict(by_kind["Integration"]),
        trigger_rules=FrozenDict(by_kind["TriggerRule"]),
        suites=FrozenDict(by_kind["Suite"]),
        flows=FrozenDict(by_kind["Flow"]),
        environments=FrozenDict(by_kind["TestEnvironment"]),
        flow_files=FrozenDict(flow_files),
        rules_by_source=FrozenDict({
            k: (v[0],) if len(v) == 1 else tuple(sorted(v, key=lambda r: r.name))
            for k, v in rules_by_source.items()}),
        warnings=warnings,
        ignored=ignored,
    )


__all__ = ["Flow", "Outcome", "build_snapshot", "check", "normalize_flow_path"]
