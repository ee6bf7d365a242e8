"""Problems-in-waiting and document identities, shared by the loader and ``semantic``.

A ``Pending`` problem knows its file, document and JSON path; the loader gives it a
line and column at the very end, composing only the files that have problems.
"""

from __future__ import annotations

from dataclasses import dataclass

from testmesh_reconciler.config.model import Declaration, Source


@dataclass(frozen=True, slots=True)
class Pending:
    """A problem before it has a line and column (file-relative document + JSON path)."""

    file: str
    document: int
    path: tuple[str | int, ...]
    message: str
    key: bool = False
    severity: str = "error"
    line: int | None = None  # known already (YAML syntax errors)
    column: int | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One declaration document of a file: built object, or just its identity."""

    kind: str
    workspace: str
    name: str
    source: Source
    obj: Declaration | None
