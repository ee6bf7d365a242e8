"""Validation problems as values, and the one place that renders them.

Every check (YAML, schema, cross-document, secrets) returns ``Problem``s; nothing
raises on the first one. Text is ``file:line:col: $.path: message``; JSON is a list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from testmesh_reconciler.errors import TestmeshError

Severity = Literal["error", "warning"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong (or worth a warning) at one place of one file."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: Severity = "error"

    def render(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {prefix}{self.message}"

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }
        if self.severity != "error":
            out["severity"] = self.severity
        return out


class ConfigError(TestmeshError):
    """A set of declarations did not validate; ``problems`` holds all of them.

    Here, not in ``errors``: ``errors`` sits below ``config`` and must not know ``Problem``.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0].render() if self.problems else "no problems"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


def json_path(parts: Iterable[str | int]) -> str:
    """``('spec', 'event_types', 1)`` -> ``$.spec.event_types[1]``; odd keys bracketed."""
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENT.match(part):
            out.append(f".{part}")
        else:
            out.append("[" + json.dumps(part).replace('"', "'") + "]")
    return "".join(out)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Sorted by (file, line, column), then path and message, duplicates removed."""
    return sorted(set(problems))


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def render_text(problems: Sequence[Problem]) -> str:
    return "".join(p.render() + "\n" for p in problems)


def render_json(problems: Sequence[Problem]) -> list[dict[str, object]]:
    return [p.as_json() for p in problems]
