"""The JSON Schemas of the declaration kinds, compiled once per process.

Schemas are package data (``schemas/`` in the repo, ``_schemas`` in a wheel), not
user input. Two validators per kind: ``jsonschema_rs`` answers "valid?" fast for the
common case; Python ``jsonschema`` explains an invalid document with full detail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema_rs

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

SCHEMA_FILES: Mapping[str, str] = {
    "Integration": "integration.json",
    "TriggerRule": "trigger-rule.json",
    "Suite": "suite.json",
    "Flow": "flow.json",
    "TestEnvironment": "test-environment.json",
    "FlowFile": "flow-file.json",
}


def schema_dir() -> Path:
    """Where the schema files are: inside an installed wheel, else the source checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_schemas", here.parent / "schemas"):
        if (candidate / "definitions.json").is_file():
            return candidate
    raise FileNotFoundError(f"schemas not found next to {here}")


class KindSchema:
    """One kind's schema: a fast yes/no check, and a detailed explainer built on demand
    (importing and compiling Python jsonschema costs ~50 ms a valid load never needs)."""

    __slots__ = ("_documents", "_slow", "fast", "name", "schema")

    def __init__(self, name: str, schema: dict[str, Any], fast: Any,
                 documents: Mapping[str, Mapping[str, Any]]) -> None:
        self.name = name
        self.schema = schema
        self.fast = fast  # jsonschema_rs validator
        self._documents = documents
        self._slow: Any = None

    def is_valid(self, document: Any) -> bool:
        try:
            return bool(self.fast.is_valid(document))
        except (ValueError, TypeError, OverflowError):  # not JSON-like (dates, huge ints)
            return not any(True for _ in self.errors(document))

    def errors(self, document: Any) -> Iterator[ValidationError]:
        if self._slow is None:
            self._slow = _python_validator(self.schema, self._documents)
        yield from self._slow.iter_errors(document)


@dataclass(frozen=True, slots=True)
class SchemaSet:
    kinds: Mapping[str, KindSchema]

    def for_kind(self, kind: str) -> KindSchema:
        return self.kinds[kind]


def load_schema_documents(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """All ``*.json`` schemas of a directory, by file name."""
    directory = directory or schema_dir()
    return {p.name: json.loads(p.read_text("utf-8")) for p in sorted(directory.glob("*.json"))}


def build_schema_set(documents: Mapping[str, Mapping[str, Any]]) -> SchemaSet:
    """Compile every kind's schema with all files registered by ``$id`` (cross-file refs)."""
    resources: list[tuple[str, dict[str, Any]]] = [
        (str(doc["$id"]), dict(doc)) for doc in documents.values()]
    rs_registry = jsonschema_rs.Registry(resources)
    kinds: dict[str, KindSchema] = {}
    for kind, file_name in SCHEMA_FILES.items():
        schema = dict(documents[file_name])
        fast = jsonschema_rs.validator_for(schema, registry=rs_registry)
        kinds[kind] = KindSchema(kind, schema, fast, documents)
    return SchemaSet(kinds)


def _python_validator(schema: dict[str, Any], documents: Mapping[str, Mapping[str, Any]]
                      ) -> Any:
    import jsonschema
    from referencing import Registry, Resource

    registry: Registry[Any] = Registry().with_resources(
        (str(doc["$id"]), Resource.from_contents(dict(doc))) for doc in documents.values())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=registry)


@lru_cache(maxsize=1)
def default_schemas() -> SchemaSet:
    """The package's schemas, compiled once per process."""
    return build_schema_set(load_schema_documents())
