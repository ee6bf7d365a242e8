"""The one place YAML is read: fast C loader for values, composed nodes for positions.

Composing node trees costs about twice a plain load, so it happens only for a file
that has a problem, to map the problem's JSON path onto a line and column.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:  # the C loader is several times faster; PyYAML wheels ship it
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # pragma: no cover - only without libyaml
    from yaml import SafeLoader  # type: ignore[assignment]

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class FastSafeLoader(SafeLoader):
    """The safe C loader with a direct constructor for plain maps, lists and strings.

    PyYAML's generic constructor spends most of a load in bookkeeping per node; this
    builds the common nodes directly and hands everything else (ints, bools, nulls,
    timestamps, merge keys, explicit tags) to the safe constructor, so the result is
    identical to ``yaml.safe_load`` (a test checks that) at about 30% less time.
    """

    def construct_document(self, node: Node) -> Any:
        try:
            return self._build(node, {})
        finally:
            self.constructed_objects = {}
            self.recursive_objects = {}
            self.state_generators = []

    def _build(self, node: Node, memo: dict[int, Any]) -> Any:
        cls = node.__class__
        if cls is ScalarNode:
            return node.value if node.tag == _STR else self.construct_object(node, deep=True)
        nid = id(node)
        if nid in memo:  # an alias of a node built already
            return memo[nid]
        if cls is MappingNode and node.tag == _MAP:
            out: dict[Any, Any] = {}
            memo[nid] = out
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    return self.construct_object(node, deep=True)
                key = self._build(key_node, memo)
                try:
                    out[key] = self._build(value_node, memo)
                except TypeError as exc:  # an unhashable key, e.g. "? [a, b]"
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        "found an unhashable key", key_node.start_mark) from exc
            return out
        if cls is SequenceNode and node.tag == _SEQ:
            items: list[Any] = []
            memo[nid] = items
            items.extend(self._build(v, memo) for v in node.value)
            return items
        return self.construct_object(node, deep=True)

_DOC_START = re.compile(rb"^---(?:[ \t]|$)", re.MULTILINE)
_CONTENT = re.compile(rb"^[ \t]*[^\s#]", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class YamlSyntaxError:
    """A file that does not parse: message plus 1-based position."""

    message: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a file: its value and the 1-based line it starts at."""

    index: int
    line: int
    value: Any


def load_documents(data: bytes) -> list[Document] | YamlSyntaxError:
    """Every document of a multi-document YAML file, or the syntax error that stops it."""
    try:
        values = list(yaml.load_all(data, Loader=FastSafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        col = mark.column + 1 if mark else 1
        what = exc.problem or "invalid YAML"
        ctx = f" ({exc.context})" if exc.context else ""
        return YamlSyntaxError(f"YAML syntax error: {what}{ctx}", line, col)
    except yaml.YAMLError as exc:
        return YamlSyntaxError(f"YAML error: {exc}", 1, 1)
    except RecursionError:
        return YamlSyntaxError("YAML nesting is too deep to read", 1, 1)
    except (UnicodeDecodeError, ValueError) as exc:
        return YamlSyntaxError(f"not a UTF-8 text file ({exc.__class__.__name__})", 1, 1)
    starts = _document_lines(data, len(values))
    return [Document(i, starts[i], v) for i, v in enumerate(values)]


def _document_lines(data: bytes, count: int) -> list[int]:
    """1-based first content line of each document, found by scanning for ``---``."""
    if count == 0:
        return []
    bounds = [m.start() for m in _DOC_START.finditer(data)]
    # A leading '---' opens the first document; otherwise the first starts at 0.
    first_content = _CONTENT.search(data)
    if not bounds or (first_content is not None and first_content.start() < bounds[0]):
        bounds.insert(0, 0)
    lines: list[int] = []
    for pos in bounds[:count]:
        nl = data.find(b"\n", pos) if data.startswith(b"---", pos) else pos - 1
        m = _CONTENT.search(data, nl + 1 if nl >= 0 else 0)
        at = m.start() if m else pos
        lines.append(data.count(b"\n", 0, at) + 1)
    while len(lines) < count:
        lines.append(lines[-1] if lines else 1)
    return lines


class NodeIndex:
    """Maps JSON paths of one file's documents to 1-based (line, column)."""

    def __init__(self, data: bytes) -> None:
        try:
            self._docs: list[yaml.Node] = list(yaml.compose_all(data, Loader=SafeLoader))
        except yaml.YAMLError:
            self._docs = []

    def position(self, document: int, path: Sequence[str | int], *, key: bool = False
                 ) -> tuple[int, int]:
        """Position of the value at ``path`` (or of its key when ``key``); the deepest
        existing ancestor when the path does not exist (e.g. a missing field)."""
        if document >= len(self._docs):
            return (1, 1)
        node: yaml.Node = self._docs[document]
        key_node: yaml.Node | None = None
        for part in path:
            nxt, nxt_key = _child(node, part)
            if nxt is None:
                break
            node, key_node = nxt, nxt_key
        else:
            if key and key_node is not None:
                return _mark(key_node)
            return _mark(node)
        # Stopped early: point at the key of the deepest node found, else the node.
        return _mark(key_node) if key_node is not None else _mark(node)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node | None, yaml.Node | None]:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and (k.value == part or k.value == str(part)):
                return v, k
        return None, None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
            and 0 <= part < len(node.value):
        return node.value[part], None
    return None, None


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1
