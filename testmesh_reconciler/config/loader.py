"""Files (path -> bytes) plus schemas in, a ``Snapshot`` or every problem out.

The ``Loader`` keeps a per-file cache keyed by content digest (a Git blob id or a
hash), so a reload re-parses only what changed; the cross-document pass is cheap and
always runs over everything. Problems get positions only at the end, and only files
that have problems are composed (see ``yamlio``).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from testmesh_reconciler.config import semantic
from testmesh_reconciler.config.build import (
    ExpressionChecker,
    Note,
    build_declaration,
    build_flow_definition,
)
from testmesh_reconciler.config.frozen import FrozenDict
from testmesh_reconciler.config.model import (
    API_GROUP,
    API_VERSIONS,
    KINDS,
    Declaration,
    FlowDefinition,
    Ignored,
    Integration,
    SecretRef,
    SecretValue,
    Snapshot,
    Source,
)
from testmesh_reconciler.config.pending import Entry, Pending
from testmesh_reconciler.config.problems import Problem, json_path, sort_problems
from testmesh_reconciler.config.schemas import SchemaSet, default_schemas
from testmesh_reconciler.config.yamlio import Document, NodeIndex, load_documents

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

#: Opens one declared secret: the value, ``None`` (checked but not opened: validate
#: without a private key), or a problem message. Injected by the shell.
SecretOpener = Callable[[SecretRef], "SecretValue | str | None"]


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file of the config tree: its digest, and how to read it if it is not cached."""

    digest: str
    read: Callable[[], bytes] = field(compare=False, repr=False)


def files_from_bytes(contents: Mapping[str, bytes]) -> dict[str, FileRef]:
    """Wrap in-memory files (path -> bytes) as ``FileRef``s keyed by a sha1 digest."""
    return {path: FileRef(hashlib.sha1(data).hexdigest(), constant(data))
            for path, data in contents.items()}


def constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def is_yaml_path(path: str) -> bool:
    return path.endswith((".yaml", ".yml"))


@dataclass(frozen=True, slots=True)
class FileResult:
    documents: tuple[Document, ...]
    entries: tuple[Entry, ...]
    ignored: tuple[Ignored, ...]
    pending: tuple[Pending, ...]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """The outcome of one load: a snapshot only when there is no error."""

    snapshot: Snapshot | None
    problems: tuple[Problem, ...]
    declarations: tuple[Declaration, ...]
    ignored: tuple[Ignored, ...]
    revision: str
    parsed_files: int = 0

    @property
    def ok(self) -> bool:
        return self.snapshot is not None

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")


class Loader:
    """Loads declaration trees, remembering per-file results between calls."""

    def __init__(self, schemas: SchemaSet | None = None, *,
                 check_expression: ExpressionChecker | None = None) -> None:
        self._schemas = schemas or default_schemas()
        self._check_expression = check_expression
        self._files: dict[tuple[str, str], FileResult] = {}
        self._flow_files: dict[tuple[str, str], tuple[FlowDefinition | None,
                                                      tuple[Pending, ...]]] = {}
        self._positions: dict[str, NodeIndex] = {}

    def load(self, files: Mapping[str, FileRef], *, revision: str = "",
             open_secret: SecretOpener | None = None) -> LoadResult:
        """Validate every YAML file of ``files`` (relative POSIX paths) into a snapshot."""
        results: dict[str, FileResult] = {}
        parsed = 0
        live: set[tuple[str, str]] = set()
        for path in sorted(p for p in files if is_yaml_path(p)):
            ref = files[path]
            key = (path, ref.digest)
            live.add(key)
            cached = self._files.get(key)
            if cached is None:
                cached = self._load_file(path, ref.read())
                self._files[key] = cached
                parsed += 1
            results[path] = cached
        for stale in set(self._files) - live:
            del self._files[stale]

        entries = [e for r in results.values() for e in r.entries]
        pending: list[Pending] = [p for r in results.values() for p in r.pending]
        flow_files, flow_file_pending, referenced = self._flow_files_for(entries, files, results)
        pending.extend(flow_file_pending)
        ignored = tuple(i for path, r in results.items() if path not in referenced
                        for i in r.ignored)

        outcome = semantic.check(entries, flow_files, set(files))
        pending.extend(outcome.pending)
        objects = list(outcome.objects)
        if open_secret is not None:
            objects, secret_pending = _open_secrets(objects, open_secret)
            pending.extend(secret_pending)

        problems = self._position(pending, files)
        error_free = not any(p.severity == "error" for p in problems)
        snapshot = None
        if error_free:
            snapshot = semantic.build_snapshot(
                objects, flow_files, revision=revision,
                warnings=tuple(p for p in problems if p.severity == "warning"), ignored=ignored)
        return LoadResult(snapshot, tuple(problems), tuple(objects), ignored, revision, parsed)

    # -- per file -------------------------------------------------------------------
    def _load_file(self, path: str, data: bytes) -> FileResult:
        docs = load_documents(data)
        if not isinstance(docs, list):
            return FileResult((), (), (), (Pending(path, 0, (), docs.message,
                                                   line=docs.line, column=docs.column),))
        entries: list[Entry] = []
        ignored: list[Ignored] = []
        pending: list[Pending] = []
        for doc in docs:
            value = doc.value
            api = value.get("apiVersion") if isinstance(value, dict) else None
            if not isinstance(api, str) or not api.startswith(API_GROUP):
                reason = ("not a mapping" if not isinstance(value, dict)
                          else f"apiVersion {api!r} is not testmesh.io/*" if api
                          else "no apiVersion")
                ignored.append(Ignored(path, doc.line, reason))
                continue
            source = Source(path, doc.line, doc.index)
            if api not in API_VERSIONS:
                pending.append(Pending(path, doc.index, ("apiVersion",),
                                       f"unknown apiVersion {api!r}; this version of "
                                       f"testmesh-reconciler reads {', '.join(API_VERSIONS)}"))
                continue
            kind = value.get("kind")
            if kind not in KINDS:
                hint = _did_you_mean(str(kind), KINDS)
                pending.append(Pending(path, doc.index, ("kind",),
                                       f"unknown kind {kind!r}; expected one of "
                                       f"{', '.join(KINDS)}{hint}"))
                continue
            meta = value.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            workspace = (meta.get("workspace") if isinstance(meta, dict) else None) or "default"
            schema = self._schemas.for_kind(kind)
            if not schema.is_valid(value):
                owner = (str(workspace), str(name))
                pending.extend(Pending(path, doc.index, n.path, n.message, n.key)
                               for n in explain(schema.errors(value), owner=owner))
                entries.append(Entry(kind, str(workspace), str(name), source, None))
                continue
            obj, notes = build_declaration(kind, value, source, self._check_expression)
            pending.extend(Pending(path, doc.index, n.path, n.message, n.key) for n in notes)
            entries.append(Entry(kind, obj.workspace, obj.name, source, obj))
        return FileResult(tuple(docs), tuple(entries), tuple(ignored), tuple(pending))

    # -- plain TestMesh flow files referenced by suites ----------------------------------
    def _flow_files_for(self, entries: Iterable[Entry], files: Mapping[str, FileRef],
                        results: Mapping[str, FileResult]
                        ) -> tuple[dict[str, FlowDefinition], list[Pending], set[str]]:
        wanted = {
            semantic.normalize_flow_path(f.path)
            for e in entries if e.kind == "Suite" and e.obj is not None
            for f in e.obj.flows if f.path is not None  # type: ignore[union-attr]
        }
        definitions: dict[str, FlowDefinition] = {}
        pending: list[Pending] = []
        referenced: set[str] = set()
        for path in sorted(p for p in wanted if p is not None and p in results):
            referenced.add(path)
            key = (path, files[path].digest)
            cached = self._flow_files.get(key)
            if cached is None:
                cached = self._load_flow_file(path, results[path])
                self._flow_files[key] = cached
            definition, problems = cached
            pending.extend(problems)
            if definition is not None:
                definitions[path] = definition
        return definitions, pending, referenced

    def _load_flow_file(self, path: str, result: FileResult
                        ) -> tuple[FlowDefinition | None, tuple[Pending, ...]]:
        if not result.documents:
            return None, ()  # the YAML error is reported with the file already
        doc = result.documents[0]
        schema = self._schemas.for_kind("FlowFile")
        if not schema.is_valid(doc.value):
            return None, tuple(Pending(path, 0, n.path, n.message, n.key)
                               for n in explain(schema.errors(doc.value)))
        wrapped = isinstance(doc.value, dict) and "flow" in doc.value
        body = doc.value["flow"] if wrapped else doc.value
        notes: list[Note] = []
        definition = build_flow_definition(body, ("flow",) if wrapped else (), notes,
                                           self._check_expression)
        return definition, tuple(Pending(path, 0, n.path, n.message, n.key) for n in notes)

    # -- positions ----------------------------------------------------------------------
    def _position(self, pending: Iterable[Pending], files: Mapping[str, FileRef]
                  ) -> list[Problem]:
        out: list[Problem] = []
        for p in pending:
            if p.line is not None:
                line, column = p.line, p.column or 1
            else:
                ref = files.get(p.file)
                index = self._positions.get(ref.digest) if ref else None
                if index is None and ref is not None:
                    index = NodeIndex(ref.read())
                    self._positions[ref.digest] = index
                line, column = index.position(p.document, p.path, key=p.key) if index else (1, 1)
            out.append(Problem(p.file, line, column, json_path(p.path), p.message,
                               "warning" if p.severity == "warning" else "error"))
        return sort_problems(out)


# -- schema errors to readable notes ------------------------------------------------------
def explain(errors: Iterable[ValidationError], *, owner: tuple[str, str] = ("W", "NAME")
            ) -> list[Note]:
    """Turn jsonschema errors into notes: best match inside oneOf/anyOf, one note per
    unknown or missing field, secret values never echoed."""
    notes: list[Note] = []
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for err in errors:
        for note in _explain_one(err, owner):
            if (note.path, note.message) not in seen:
                seen.add((note.path, note.message))
                notes.append(note)
    return notes


def _explain_one(err: ValidationError, owner: tuple[str, str]) -> list[Note]:
    path = tuple(err.absolute_path)
    if _is_secret_path(path):
        return [_secret_note(path, err.instance, owner)]
    if err.validator in ("oneOf", "anyOf") and err.context:
        from jsonschema.exceptions import best_match

        best = best_match(err.context)
        if best is not None:
            return _explain_one(best, owner)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list((err.schema or {}).get("properties", {}))
        patterns = (err.schema or {}).get("patternProperties", {})
        notes = []
        for key in err.instance:
            if key in allowed or any(_re_search(p, key) for p in patterns):
                continue
            hint = _did_you_mean(str(key), allowed)
            if not hint and allowed:
                hint = f"; allowed here: {', '.join(allowed)}"
            notes.append(Note((*path, key), f"unknown field {key!r}{hint}", key=True))
        if notes:
            return notes
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [r for r in err.validator_value if r not in err.instance]
        return [Note(path, f"missing required field {name!r}", key=True) for name in missing]
    if err.validator == "enum":
        hint = _did_you_mean(str(err.instance), [str(v) for v in err.validator_value])
        return [Note(path, err.message + hint)]
    if err.validator == "not" and isinstance(err.validator_value, dict) \
            and "description" in err.validator_value:
        return [Note(path, str(err.validator_value["description"]))]
    if err.validator == "pattern" and isinstance(err.validator_value, str):
        for marker, message in _PATTERN_MESSAGES.items():
            if marker in err.validator_value:
                return [Note(path, f"{err.instance!r} {message}")]
    extra = err.schema.get("x-hint") if isinstance(err.schema, dict) else None
    return [Note(path, err.message + (f"; {extra}" if extra else ""))]


#: Readable explanations of the schemas' common patterns, keyed by a fragment of each.
_PATTERN_MESSAGES = {
    "(ns|us|µs|ms|s|m|h)": "is not a Go duration; write e.g. 500ms, 1s, 2m or 1h30m",
    "^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$": (
        "is not a valid name: use lowercase letters, digits, '-', '_' and '.', starting "
        "and ending with a letter or digit"),
}


def _is_secret_path(path: tuple[str | int, ...]) -> bool:
    return len(path) >= 3 and path[0] == "spec" and path[1] == "secrets"


def _secret_note(path: tuple[str | int, ...], instance: Any, owner: tuple[str, str]) -> Note:
    key = str(path[2])
    workspace, integration = owner
    if len(path) == 3 and isinstance(instance, str | int | float | bool):
        return Note(path[:3], (
            "plaintext secret in Git: a secret must be {sealed: ...}, {env: NAME} or "
            "{file: PATH}; seal it with 'testmesh-reconciler secrets seal --public-key "
            f".testmesh/public-key --workspace {workspace} --integration {integration} "
            f"--key {key}'"))
    return Note(path[:3], (
        "a secret must be exactly one of {sealed: <value from 'testmesh-reconciler secrets "
        "seal'>}, {env: NAME} or {file: PATH}"))


def _re_search(pattern: str, value: str) -> bool:
    return re.search(pattern, value) is not None


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- secrets ------------------------------------------------------------------------------
def _open_secrets(objects: list[Declaration], open_secret: SecretOpener
                  ) -> tuple[list[Declaration], list[Pending]]:
    out: list[Declaration] = []
    pending: list[Pending] = []
    for obj in objects:
        if isinstance(obj, Integration) and obj.secrets:
            opened: dict[str, SecretRef] = {}
            for key, ref in obj.secrets.items():
                result = open_secret(ref)
                if isinstance(result, str):
                    pending.append(Pending(obj.source.file, obj.source.document,
                                           ("spec", "secrets", key, ref.source), result))
                    opened[key] = ref
                else:
                    opened[key] = replace(ref, value=result)
            obj = replace(obj, secrets=FrozenDict(opened))
        out.append(obj)
    return out, pending


__all__ = ["FileRef", "LoadResult", "Loader", "Pending", "SecretOpener", "explain",
           "files_from_bytes", "is_yaml_path"]
