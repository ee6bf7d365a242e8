"""What a change to the config repo does: declarations added, changed (which fields), removed.

Pure: compares two sets of built declarations by (kind, workspace, name), the way a
reviewer reads a pull request, so ``validate --base`` can print it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from testmesh_reconciler.config.frozen import thaw
from testmesh_reconciler.config.model import KINDS, Declaration


@dataclass(frozen=True, slots=True)
class PlanEntry:
    kind: str
    workspace: str
    name: str
    fields: tuple[str, ...] = ()

    def as_json(self, *, with_fields: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "workspace": self.workspace, "name": self.name}
        if with_fields:
            out["fields"] = list(self.fields)
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    added: tuple[PlanEntry, ...]
    changed: tuple[PlanEntry, ...]
    removed: tuple[PlanEntry, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "added": [e.as_json(with_fields=False) for e in self.added],
            "changed": [e.as_json(with_fields=True) for e in self.changed],
            "removed": [e.as_json(with_fields=False) for e in self.removed],
        }

    def render(self) -> str:
        lines = [f"  + {e.kind} {e.workspace}/{e.name}" for e in self.added]
        lines += [f"  ~ {e.kind} {e.workspace}/{e.name}: {', '.join(e.fields)}"
                  for e in self.changed]
        lines += [f"  - {e.kind} {e.workspace}/{e.name}" for e in self.removed]
        summary = (f"{len(self.added)} to add, {len(self.changed)} to change, "
                   f"{len(self.removed)} to remove.")
        return "\n".join([*lines, summary]) + "\n"


def _order(entry: PlanEntry) -> tuple[int, str, str]:
    return (KINDS.index(entry.kind) if entry.kind in KINDS else 99, entry.workspace, entry.name)


def diff(base: Iterable[Declaration], head: Iterable[Declaration]) -> Plan:
    """Plan from ``base`` to ``head``; a changed entry lists the fields that differ."""
    before = {(d.kind, d.workspace, d.name): d for d in base}
    after = {(d.kind, d.workspace, d.name): d for d in head}
    added = [PlanEntry(*k) for k in after.keys() - before.keys()]
    removed = [PlanEntry(*k) for k in before.keys() - after.keys()]
    changed = []
    for k in after.keys() & before.keys():
        fields = changed_fields(thaw(before[k].document), thaw(after[k].document))
        if fields:
            changed.append(PlanEntry(*k, fields=tuple(fields)))
    return Plan(tuple(sorted(added, key=_order)), tuple(sorted(changed, key=_order)),
                tuple(sorted(removed, key=_order)))


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of the fields under ``spec`` (and ``metadata.labels``) that differ."""
    out = []
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    for key in sorted(set(old_spec) | set(new_spec)):
        if old_spec.get(key) != new_spec.get(key):
            out.append(f"spec.{key}")
    if (old.get("metadata") or {}).get("labels") != (new.get("metadata") or {}).get("labels"):
        out.append("metadata.labels")
    return out
