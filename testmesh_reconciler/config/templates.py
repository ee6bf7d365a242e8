"""Static view of ``${name}`` / ``{{name}}`` placeholders, for load-time checks.

The runner's interpolation renders values; this module only answers "which
variables does this template read?", so validation can reject unknown ones early.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_PLACEHOLDER = re.compile(
    r"(?<!\$)\$\{\s*([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|\{\{\s*([A-Za-z_][A-Za-z0-9_]*)[^}]*\}\}"
)


def template_names(text: str) -> tuple[str, ...]:
    """Root names read by the placeholders of ``text``, in order, without repeats."""
    if "$" not in text and "{{" not in text:
        return ()
    seen: dict[str, None] = {}
    for m in _PLACEHOLDER.finditer(text):
        seen.setdefault(m.group(1) or m.group(2), None)
    return tuple(seen)


def walk_strings(value: Any, path: tuple[str | int, ...] = ()
                 ) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string inside a JSON-like value, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict) or hasattr(value, "items"):
        for k, v in value.items():
            yield from walk_strings(v, (*path, k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from walk_strings(v, (*path, i))
