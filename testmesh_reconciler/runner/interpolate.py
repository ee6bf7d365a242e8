"""``${NAME}`` / ``{{NAME}}`` placeholders: the layered ``Scope`` they resolve in, the
built-ins (clock and randomness injected), and ``interpolate`` over nested request data.
Unresolved names are collected, never raised, so the runner fails the step naming them.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar, Final, NamedTuple

from testmesh_reconciler.runner.expressions import MISSING, descend

# One pass finds the escape ``$${``, ``${name}`` / ``${name:-default}`` and ``{{name}}`` /
# ``{{name:-default}}``. A name starts with a letter or "_" and runs to ``}`` or ``:``; the
# surrounding whitespace is stripped in code (greedy classes, so no regex backtracking).
_PLACEHOLDER: Final = re.compile(
    r"(?P<escape>\$\$\{)"
    r"|\$\{(?P<dname>\s*[A-Za-z_][^{}:]*)(?::-(?P<ddefault>[^{}]*))?\}"
    r"|\{\{(?P<bname>\s*[A-Za-z_][^{}:]*)(?::-(?P<bdefault>[^{}]*))?\}\}"
)
_ROOT_END: Final = re.compile(r"[.\[]")
_INTEGER: Final = re.compile(r"-?[0-9]{1,18}")
#: Templates up to this length are parsed once and cached; longer ones (bodies) each time.
_CACHED_LENGTH: Final = 4096
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Placeholder:
    name: str
    default: str | None
    source: str  # the placeholder as written, kept in the output when it does not resolve


_Parts = tuple[str | _Placeholder, ...]


def _parse(text: str) -> _Parts:
    parts: list[str | _Placeholder] = []
    literal: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        literal.append(text[pos:m.start()])
        pos = m.end()
        if m["escape"] is not None:
            literal.append("${")
            continue
        if chunk := "".join(literal):
            parts.append(chunk)
        literal = []
        if m["dname"] is not None:
            name, default = m["dname"], m["ddefault"]
        else:
            name, default = m["bname"], m["bdefault"]
        parts.append(_Placeholder(name.strip(), None if default is None else default.strip(),
                                  m[0]))
    literal.append(text[pos:])
    if chunk := "".join(literal):
        parts.append(chunk)
    return tuple(parts)


_parse_cached: Final = lru_cache(maxsize=4096)(_parse)


def _parts(text: str) -> _Parts:
    return _parse_cached(text) if len(text) <= _CACHED_LENGTH else _parse(text)


def template_names(text: str) -> tuple[str, ...]:
    """Root names the placeholders of ``text`` read, in order, without repeats: ``${a.b}`` and
    ``${a[0]}`` give ``a``. Built-ins and names with a ``:-default`` are included as is."""
    if "$" not in text and "{{" not in text:
        return ()
    seen: dict[str, None] = {}
    for part in _parts(text):
        if isinstance(part, _Placeholder):
            seen.setdefault(_ROOT_END.split(part.name, maxsplit=1)[0], None)
    return tuple(seen)


# --------------------------------------------------------------------------------------------
# Scope


def _cuts(path: str, start: int) -> list[int]:
    """Ends of the candidate keys in ``path[start:]``, longest first."""
    cuts = [i for i in range(start + 1, len(path)) if path[i] in ".["]
    cuts.append(len(path))
    cuts.reverse()
    return cuts


def _bracket(path: str, pos: int) -> tuple[Any, int] | None:
    """The key of the ``[...]`` opening at ``pos`` and the index after it; None if malformed."""
    inner = pos + 1
    while inner < len(path) and path[inner] == " ":
        inner += 1
    if inner < len(path) and path[inner] in "'\"":
        close_quote = path.find(path[inner], inner + 1)
        if close_quote < 0:
            return None
        close = path.find("]", close_quote + 1)
        if close < 0 or path[close_quote + 1:close].strip():
            return None
        return path[inner + 1:close_quote], close + 1
    close = path.find("]", inner)
    if close < 0:
        return None
    raw = path[inner:close].strip()
    return (int(raw) if _INTEGER.fullmatch(raw) else raw), close + 1


class Scope(Mapping[str, Any]):
    """Variables in layers, the first layer that has a name wins. Holds references, copies
    nothing: a layer updated in place (say, step outputs) is seen at once."""

    __slots__ = ("_layers",)

    def __init__(self, layers: Sequence[Mapping[str, Any]] = ()) -> None:
        self._layers: tuple[Mapping[str, Any], ...] = tuple(layers)

    @classmethod
    def layered(cls, *mappings: Mapping[str, Any]) -> Scope:
        """A scope over ``mappings``; where several define a name, the first wins."""
        return cls(mappings)

    @property
    def layers(self) -> tuple[Mapping[str, Any], ...]:
        return self._layers

    def __getitem__(self, key: str) -> Any:
        for layer in self._layers:
            if key in layer:
                return layer[key]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return any(key in layer for layer in self._layers)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for layer in self._layers:
            for key in layer:
                if key not in seen:
                    seen.add(key)
                    yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"Scope({len(self._layers)} layers)"

    def _get(self, key: str) -> Any:
        for layer in self._layers:
            if key in layer:
                return layer[key]
        return MISSING

    def lookup(self, dotted: str) -> Any:
        """Resolve ``a.b.c``, ``a[0]``, ``a.b[2].c``, ``a["x.y"]``; ``MISSING`` if it does not.

        At each level the longest key that exists wins, whole name first: a variable named
        ``service.user-service``, else key ``user-service`` of ``service``.
        """
        path = dotted.strip()
        if not path:
            return MISSING
        for cut in _cuts(path, 0):
            value = self._get(path[:cut])
            if value is not MISSING:
                return _walk(value, path, cut)
        return MISSING


def _walk(value: Any, path: str, pos: int) -> Any:
    while pos < len(path):
        if path[pos] == "[":
            found = _bracket(path, pos)
            if found is None:
                return MISSING
            key, pos = found
            value = descend(value, key)
        elif path[pos] == ".":
            pos += 1
            cuts = _cuts(path, pos)
            if isinstance(value, Mapping):
                for cut in cuts:
                    if path[pos:cut] in value:
                        value, pos = value[path[pos:cut]], cut
                        break
                else:
                    return MISSING
            else:
                value, pos = descend(value, path[pos:cuts[-1]]), cuts[-1]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


# --------------------------------------------------------------------------------------------
# Built-ins


@dataclass(frozen=True, slots=True)
class Builtins:
    """Values computed per placeholder occurrence: each ``${UUID}`` in a request differs,
    and two ``${TIMESTAMP}`` may too. A scope variable of the same name shadows a built-in."""

    clock: Callable[[], datetime]
    rng: random.Random

    NAMES: ClassVar[frozenset[str]] = frozenset({
        "UUID", "RANDOM_ID", "RANDOM_INT", "TIMESTAMP", "TIMESTAMP_MS", "ISO_TIMESTAMP",
        "DATE", "TIME",
    })
    #: ``RANDOM_INT`` is uniform in ``[0, RANDOM_INT_LIMIT)``.
    RANDOM_INT_LIMIT: ClassVar[int] = 1_000_000

    @classmethod
    def system(cls) -> Builtins:
        """Wall clock (UTC) and an OS-seeded generator, for the daemon."""
        return cls(clock=lambda: datetime.now(UTC), rng=random.Random())

    def _now(self) -> datetime:
        now = self.clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    def resolve(self, name: str) -> Any:
        """The built-in's value now, or ``MISSING`` when ``name`` is not a built-in."""
        if name == "UUID":
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        if name == "RANDOM_ID":
            return f"{self.rng.getrandbits(32):08x}"
        if name == "RANDOM_INT":
            return self.rng.randrange(self.RANDOM_INT_LIMIT)
        if name not in self.NAMES:
            return MISSING
        now = self._now()
        if name == "TIMESTAMP":
            return (now - _EPOCH) // timedelta(seconds=1)
        if name == "TIMESTAMP_MS":
            return (now - _EPOCH) // timedelta(milliseconds=1)
        if name == "ISO_TIMESTAMP":
            return now.strftime("%Y-%m-%dT%H:%M:%SZ")
        if name == "DATE":
            return now.strftime("%Y-%m-%d")
        return now.strftime("%H:%M:%S")


# --------------------------------------------------------------------------------------------
# Interpolation


class Interpolated(NamedTuple):
    """The interpolated value and every name that did not resolve (in order, no repeats)."""

    value: Any
    missing: tuple[str, ...]


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, str):
        return list(value)
    return str(value)


def render_text(value: Any) -> str:
    """How a value reads inside a string: strings as they are, nil as ``null``, bools as
    ``true``/``false``, maps and lists as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None or value is MISSING:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Mapping) or (
            isinstance(value, Sequence) and not isinstance(value, bytes | bytearray)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          default=_json_default)
    return str(value)


def _plain(value: Any) -> Any:
    """A resolved map or list as fresh plain dicts and lists: JSON-ready (no ``FrozenDict``)
    and never aliasing the scope's data."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class _Interpolator:
    __slots__ = ("builtins", "missing", "scope")

    def __init__(self, scope: Scope, builtins: Builtins) -> None:
        self.scope = scope
        self.builtins = builtins
        self.missing: dict[str, None] = {}

    def resolve(self, placeholder: _Placeholder) -> Any:
        value = self.scope.lookup(placeholder.name)
        if value is MISSING and placeholder.name in Builtins.NAMES:
            value = self.builtins.resolve(placeholder.name)
        if placeholder.default is not None and (value is MISSING or value is None or value == ""):
            return placeholder.default
        if value is MISSING:
            self.missing.setdefault(placeholder.name, None)
        return value

    def string(self, text: str, *, keep_type: bool) -> Any:
        if "$" not in text and "{{" not in text:
            return text
        parts = _parts(text)
        if len(parts) == 1:
            part = parts[0]
            if isinstance(part, str):
                return part
            value = self.resolve(part)
            if value is MISSING:
                return part.source
            return _plain(value) if keep_type else render_text(value)
        out: list[str] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = self.resolve(part)
                out.append(part.source if value is MISSING else render_text(value))
        return "".join(out)

    def walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.string(value, keep_type=True)
        if isinstance(value, Mapping):
            return {(self.string(k, keep_type=False) if isinstance(k, str) else k): self.walk(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.walk(item) for item in value]
        return value


def interpolate(value: Any, scope: Scope, builtins: Builtins) -> Interpolated:
    """Replace placeholders in every string of ``value`` (map keys too), returning plain
    dicts and lists. A string that is exactly one placeholder keeps the value's type.

    Resolution: scope (``Scope.lookup``), then built-ins, then the ``:-default`` (also used
    for nil and ""). An unresolved placeholder stays in the text as written and its name is
    reported in ``missing``. ``$${x}`` gives a literal ``${x}``; an unterminated ``${`` stays
    literal; resolved values are never interpolated again.
    """
    interpolator = _Interpolator(scope, builtins)
    result = interpolator.walk(value)
    return Interpolated(result, tuple(interpolator.missing))
