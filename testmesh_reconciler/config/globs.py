"""Branch and application globs, compiled once at load into anchored regexes.

``*`` and ``?`` stay within one path segment, ``**`` crosses ``/``, ``[abc]`` and
``[a-z]`` (``[!x]`` / ``[^x]`` negated) are classes. A lone ``*`` matches everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GlobError:
    message: str


def compile_glob(pattern: str) -> re.Pattern[str] | GlobError | None:
    """Regex for ``pattern``; ``None`` for a lone ``*`` (match all); ``GlobError`` if invalid."""
    if pattern == "":
        return GlobError("an empty glob matches nothing; use \"*\" to match every branch")
    if pattern == "*":
        return None
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                # "**/" also matches zero directories: "a/**/b" matches "a/b".
                if i + 2 < n and pattern[i + 2] == "/":
                    out.append("(?:.*/)?")
                    i += 3
                else:
                    out.append(".*")
                    i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = _class_end(pattern, i)
            if end < 0:
                return GlobError(
                    f"unclosed '[' at position {i + 1} in glob {pattern!r}; "
                    "close the character class with ']' or escape it as '[[]'"
                )
            body = pattern[i + 1 : end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out))
    except re.error as exc:  # e.g. a reversed range [z-a]
        return GlobError(f"invalid glob {pattern!r}: {exc}")


def _class_end(pattern: str, start: int) -> int:
    """Index of the ']' closing the class opened at ``start``, or -1."""
    j = start + 1
    if j < len(pattern) and pattern[j] in "!^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":  # a leading ']' is literal
        j += 1
    end = pattern.find("]", j)
    return end


def glob_matches(pattern: re.Pattern[str] | None, value: str) -> bool:
    return pattern is None or pattern.fullmatch(value) is not None
