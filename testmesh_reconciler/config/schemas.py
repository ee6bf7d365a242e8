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
from typing import Any

import jsonschema
import jsonschema_rs
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

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


@dataclass(frozen=True, slots=True)
class KindSchema:
    name: str
    schema: Mapping[str, Any]
    fast: Any  # jsonschema_rs validator
    slow: jsonschema.protocols.Validator

    def is_valid(self, document: Any) -> bool:
        try:
            return bool(self.fast.is_valid(document))
        except (ValueError, TypeError, OverflowError):  # not JSON-like (dates, huge ints)
            return not any(True for _ in self.slow.iter_errors(document))

    def errors(self, document: Any) -> Iterator[ValidationError]:
        yield from self.slow.iter_errors(document)


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
    py_registry: Registry[Any] = Registry().with_resources(
        (uri, Resource.from_contents(doc)) for uri, doc in resources
    )
    rs_registry = jsonschema_rs.Registry(resources)
    kinds: dict[str, KindSchema] = {}
    for kind, file_name in SCHEMA_FILES.items():
        schema = dict(documents[file_name])
        cls = jsonschema.validators.validator_for(schema)
        slow = cls(schema, registry=py_registry)
        fast = jsonschema_rs.validator_for(schema, registry=rs_registry)
        kinds[kind] = KindSchema(kind, schema, fast, slow)
    return SchemaSet(kinds)


@lru_cache(maxsize=1)
def default_schemas() -> SchemaSet:
    """The package's schemas, compiled once per process."""
    return build_schema_set(load_schema_documents())
