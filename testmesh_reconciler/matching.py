"""Which trigger rules a webhook event starts: snapshot x trigger -> matches (pure).

Rules come from the snapshot's (workspace, integration, repository) index, so matching is
O(rules on that repository), not O(all rules). ``explain_no_match`` says why nothing matched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from testmesh_reconciler.config.model import Snapshot, Suite, TriggerRule
from testmesh_reconciler.triggers import Trigger

_SHOWN_RULES = 3


@dataclass(frozen=True, slots=True)
class Match:
    """A rule the event starts, its suite, and the rule's ``variables`` for the run (the
    runner layers them: trigger variables, then these, then the suite's)."""

    rule: TriggerRule
    suite: Suite
    variables: Mapping[str, Any]

    @property
    def environment(self) -> str | None:
        return self.rule.environment


def rule_accepts(rule: TriggerRule, trigger: Trigger) -> bool:
    """Event type, pull request action and branch filter of one rule against the event."""
    return _mismatch(rule, trigger) is None


def _mismatch(rule: TriggerRule, trigger: Trigger) -> str | None:
    """Why ``rule`` does not take ``trigger`` (short, for the delivery log), or ``None``."""
    if trigger.event not in rule.event_types:
        return f"event_types {list(rule.event_types)}"
    if trigger.event == "pull_request" and trigger.action not in rule.pull_request_actions:
        return f"pull_request_actions {list(rule.pull_request_actions)}"
    if not rule.matches_branch(trigger.branch):
        return f"branch_filter {rule.branch_filter!r}"
    return None


def _suite_of(snapshot: Snapshot, rule: TriggerRule) -> Suite | None:
    suite = snapshot.suites.get((rule.workspace, rule.suite))
    if isinstance(suite, Suite):
        return suite
    by_id = snapshot.by_id.get(rule.suite_id)
    return by_id if isinstance(by_id, Suite) else None


def candidates(snapshot: Snapshot, trigger: Trigger) -> tuple[TriggerRule, ...]:
    """Enabled rules listening on the trigger's (workspace, integration, repository)."""
    return snapshot.rules_for(trigger.workspace, trigger.integration, trigger.repository)


def match(snapshot: Snapshot, trigger: Trigger) -> tuple[Match, ...]:
    """The rules ``trigger`` starts, ordered by rule name; each judged on its own."""
    rules = candidates(snapshot, trigger)
    if not rules:
        return ()
    out: list[Match] = []
    for rule in rules:
        if not rule.enabled or _mismatch(rule, trigger) is not None:
            continue
        suite = _suite_of(snapshot, rule)
        if suite is None:  # the loader guarantees it; never start a run without one
            continue
        out.append(Match(rule=rule, suite=suite, variables=rule.variables))
    if len(out) > 1:
        out.sort(key=lambda m: m.rule.name)
    return tuple(out)


def explain_no_match(snapshot: Snapshot, trigger: Trigger) -> str:
    """Why ``trigger`` starts nothing, for the delivery log (e.g. ``no rule for repository
    'acme/shop' on integration 'gitea-internal'``)."""
    what = "application" if trigger.source == "argocd" else "repository"
    key = trigger.repository
    rules = candidates(snapshot, trigger)
    where = f"on integration {trigger.integration!r}"
    if trigger.workspace != "default":
        where += f" in workspace {trigger.workspace!r}"
    if not key:
        return f"the event names no {what}, so no rule {where} can match"
    if not rules:
        return f"no rule for {what} {key!r} {where}"
    found = match(snapshot, trigger)
    if found:
        names = ", ".join(m.rule.name for m in found)
        return f"{len(found)} rule{'s' if len(found) != 1 else ''} match: {names}"
    event = f"event {trigger.event!r}"
    if trigger.event == "pull_request":
        event += f" action {trigger.action!r}"
    branch = (f"on branch {trigger.branch!r}" if trigger.branch is not None
              else "on an unknown branch (only branch_filter \"*\" matches it)")
    reasons = [f"{r.name}: {_mismatch(r, trigger) or 'its suite is missing'}"
               for r in rules[:_SHOWN_RULES]]
    more = f"; {len(rules) - _SHOWN_RULES} more" if len(rules) > _SHOWN_RULES else ""
    count = f"{len(rules)} rule{'s' if len(rules) != 1 else ''}"
    return f"{count} for {key}, none for {event} {branch} ({'; '.join(reasons)}{more})"


__all__ = ["Match", "candidates", "explain_no_match", "match", "rule_accepts"]
