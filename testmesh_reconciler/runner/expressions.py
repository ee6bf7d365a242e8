"""TestMesh's expr-style assertion language: lexer, recursive-descent parser, frozen AST.

Owns the grammar (never ``eval``), the ``MISSING`` value of paths that resolve to nothing,
evaluation against a scope, and the ``AssertionOutcome`` that names the operands' values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import string
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from testmesh_reconciler.errors import TestmeshError

#: Longest expression ``parse`` accepts, in characters.
MAX_LENGTH: Final = 4096
#: Deepest nesting (parentheses, brackets, calls, unary operators) ``parse`` accepts; keeps
#: the recursive parser and evaluator far from Python's recursion limit.
MAX_DEPTH: Final = 64
#: Width of one rendered value in a failure message, in characters.
VALUE_WIDTH: Final = 200


class _Missing:
    """Type of ``MISSING``: a path that resolves to nothing. Falsy, compares equal to nil."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"  # copies and pickles stay the singleton


MISSING: Final = _Missing()


class ExpressionError(TestmeshError):
    """An expression that cannot be parsed (``position`` set, 0-based) or evaluated."""

    def __init__(self, message: str, expression: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        self.position = position


class _Failure(Exception):
    """Raised inside evaluation; ``evaluate`` turns it into an ``ExpressionError``."""


# --------------------------------------------------------------------------------------------
# AST: frozen, slotted; spans (0-based, end exclusive) are left out of equality.


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Name:
    """A root identifier; ``$`` is the whole scope."""

    name: str
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Member:
    """``.name`` after an operand (a digit run indexes a list: ``items.0``)."""

    name: str
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Index:
    """``[expr]`` after an operand."""

    key: Node
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Access:
    """An operand followed by members and indexes, kept flat so long paths stay shallow."""

    base: Node
    keys: tuple[Member | Index, ...]
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Array:
    items: tuple[Node, ...]
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Call:
    function: str
    argument: Node
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "not" or "-"
    operand: Node
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Logical:
    """``a || b || c`` as one node with all operands (no deep left-leaning trees)."""

    op: str  # "and" or "or"
    operands: tuple[Node, ...]
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """``first op x op y ...`` evaluated left to right, flat for the same reason."""

    first: Node
    rest: tuple[tuple[str, Node], ...]
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != < <= > >= contains in "not in" matches startsWith endsWith
    left: Node
    right: Node
    start: int = field(compare=False)
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Exists:
    operand: Node
    negated: bool
    start: int = field(compare=False)
    end: int = field(compare=False)


Node: TypeAlias = (
    Literal | Name | Access | Array | Call | Unary | Logical | Arithmetic | Compare | Exists
)


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression: the source text and its AST root."""

    text: str
    node: Node

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class AssertionOutcome:
    """Result of one assertion; ``values`` pairs operand source text with its rendered value."""

    expression: str
    passed: bool
    message: str | None
    values: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------------------
# Lexer


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "num", "str", "word", "op", "end"
    text: str
    value: Any
    start: int
    end: int


_DIGITS: Final = frozenset(string.digits)
_WORD_START: Final = frozenset(string.ascii_letters + "_")
_WORD_CHARS: Final = _WORD_START | _DIGITS
_HEX: Final = frozenset(string.hexdigits)
_SPACE: Final = frozenset(" \t\r\n")
_TWO_CHAR_OPS: Final = frozenset({"||", "&&", "==", "!=", "<=", ">="})
_ONE_CHAR_OPS: Final = frozenset("<>!+-*/%()[],.$")
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0",
                   "\\": "\\", "'": "'", '"': '"', "/": "/"}
_HINTS: Final = {"=": "==", "&": "&&", "|": "||"}


def _syntax(text: str, message: str, position: int) -> ExpressionError:
    return ExpressionError(message, text, position)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            continue
        start = i
        if c in _DIGITS:
            after_dot = bool(tokens) and tokens[-1].kind == "op" and tokens[-1].text == "."
            i = _scan_number(text, i, fraction=not after_dot)
            raw = text[start:i]
            try:
                number: int | float = int(raw) if raw.isdigit() else float(raw)
            except ValueError:  # more digits than int() converts
                raise _syntax(text, f"number too long at column {start}", start) from None
            tokens.append(_Token("num", raw, number, start, i))
        elif c in _WORD_START:
            i += 1
            while i < n and text[i] in _WORD_CHARS:
                i += 1
            tokens.append(_Token("word", text[start:i], None, start, i))
        elif c in "'\"":
            value, i = _scan_string(text, i)
            tokens.append(_Token("str", text[start:i], value, start, i))
        elif text[i:i + 2] in _TWO_CHAR_OPS:
            i += 2
            tokens.append(_Token("op", text[start:i], None, start, i))
        elif c in _ONE_CHAR_OPS:
            i += 1
            tokens.append(_Token("op", c, None, start, i))
        elif c in _HINTS:
            raise _syntax(text, f"unexpected '{c}' at column {i} (did you mean '{_HINTS[c]}'?)", i)
        else:
            raise _syntax(text, f"unexpected character {c!r} at column {i}", i)
    tokens.append(_Token("end", "", None, n, n))
    return tokens


def _scan_number(text: str, i: int, *, fraction: bool) -> int:
    n = len(text)
    while i < n and text[i] in _DIGITS:
        i += 1
    if not fraction:  # after '.', digits are a list index: items.0.1
        return i
    if i + 1 < n and text[i] == "." and text[i + 1] in _DIGITS:
        i += 1
        while i < n and text[i] in _DIGITS:
            i += 1
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        if j < n and text[j] in _DIGITS:
            i = j
            while i < n and text[i] in _DIGITS:
                i += 1
    return i


def _scan_string(text: str, start: int) -> tuple[str, int]:
    """Backslash escapes as in JSON; an unknown escape stays verbatim (``"\\d+"`` for regexes)."""
    quote, i, n = text[start], start + 1, len(text)
    chars: list[str] = []
    while i < n:
        c = text[i]
        if c == quote:
            return "".join(chars), i + 1
        if c == "\\" and i + 1 < n:
            e = text[i + 1]
            if e == "u":
                digits = text[i + 2:i + 6]
                if len(digits) != 4 or not all(h in _HEX for h in digits):
                    raise _syntax(text, f"invalid \\u escape at column {i} (expected 4 hex "
                                        "digits)", i)
                chars.append(chr(int(digits, 16)))
                i += 6
                continue
            chars.append(_ESCAPES.get(e, "\\" + e))
            i += 2
            continue
        chars.append(c)
        i += 1
    raise _syntax(text, f"unterminated string starting at column {start}", start)


# --------------------------------------------------------------------------------------------
# Parser

_COMPARISON_OPS: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})
_COMPARISON_WORDS: Final = frozenset({"contains", "in", "matches", "startsWith", "endsWith"})
_RESERVED: Final = _COMPARISON_WORDS | {"and", "or", "exists"}
_CONSTANTS: Final = {"true": True, "false": False, "nil": None, "null": None}


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of expression"
    shown = token.text if len(token.text) <= 20 else token.text[:17] + "..."
    return f"'{shown}'"


class _Parser:
    """Recursive descent, one method per precedence level; ``depth`` bounds the recursion."""

    __slots__ = ("depth", "i", "text", "tokens")

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    # helpers -------------------------------------------------------------------------------
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def peek(self, ahead: int = 1) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "end":
            self.i += 1
        return token

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def at_word(self, *words: str) -> bool:
        return self.tok.kind == "word" and self.tok.text in words

    def error(self, message: str, position: int) -> ExpressionError:
        return _syntax(self.text, message, position)

    def found(self) -> str:
        return "" if self.tok.kind == "end" else f", found {_describe(self.tok)}"

    def enter(self, position: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested too deeply at column {position} (at most "
                             f"{MAX_DEPTH} levels)", position)

    def leave(self) -> None:
        self.depth -= 1

    def expect_close(self, close: str, opener: _Token) -> _Token:
        if not self.at_op(close):
            pos = self.tok.start
            raise self.error(f"expected '{close}' at column {pos} (to match '{opener.text}' at "
                             f"column {opener.start}){self.found()}", pos)
        return self.advance()

    # grammar -------------------------------------------------------------------------------
    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise self.error("expression is empty", 0)
        node = self.parse_or()
        if self.tok.kind != "end":
            pos = self.tok.start
            raise self.error(f"expected an operator or the end of the expression at column "
                             f"{pos}, found {_describe(self.tok)}", pos)
        return node

    def parse_or(self) -> Node:
        operands = [self.parse_and()]
        while self.at_op("||") or self.at_word("or"):
            self.advance()
            operands.append(self.parse_and())
        if len(operands) == 1:
            return operands[0]
        return Logical("or", tuple(operands), operands[0].start, operands[-1].end)

    def parse_and(self) -> Node:
        operands = [self.parse_not()]
        while self.at_op("&&") or self.at_word("and"):
            self.advance()
            operands.append(self.parse_not())
        if len(operands) == 1:
            return operands[0]
        return Logical("and", tuple(operands), operands[0].start, operands[-1].end)

    def parse_not(self) -> Node:
        if self.at_op("!") or self.at_word("not"):
            token = self.advance()
            self.enter(token.start)
            operand = self.parse_not()
            self.leave()
            return Unary("not", operand, token.start, operand.end)
        return self.parse_comparison()

    def at_comparison(self) -> bool:
        token = self.tok
        if token.kind == "op":
            return token.text in _COMPARISON_OPS
        if token.kind != "word":
            return False
        if token.text == "not":
            return self.peek().kind == "word" and self.peek().text in ("in", "exists")
        return token.text in _COMPARISON_WORDS or token.text == "exists"

    def parse_comparison(self) -> Node:
        left = self.parse_additive()
        node = self.comparison_tail(left)
        if node is not left and self.at_comparison():
            pos = self.tok.start
            raise self.error(f"comparisons do not chain: unexpected {_describe(self.tok)} at "
                             f"column {pos} (combine them with '&&')", pos)
        return node

    def comparison_tail(self, left: Node) -> Node:
        token = self.tok
        if self.at_word("exists"):
            self.advance()
            return Exists(left, False, left.start, token.end)
        if self.at_word("not"):
            following = self.peek()
            if following.kind == "word" and following.text == "exists":
                self.advance()
                self.advance()
                return Exists(left, True, left.start, following.end)
            if following.kind == "word" and following.text == "in":
                self.advance()
                self.advance()
                op = "not in"
            else:
                found = "" if following.kind == "end" else f", found {_describe(following)}"
                raise self.error(f"expected 'in' or 'exists' after 'not' at column "
                                 f"{following.start}{found}", following.start)
        elif (token.kind == "op" and token.text in _COMPARISON_OPS) or (
                token.kind == "word" and token.text in _COMPARISON_WORDS):
            op = self.advance().text
        else:
            return left
        right = self.parse_additive()
        return Compare(op, left, right, left.start, right.end)

    def parse_additive(self) -> Node:
        first = self.parse_multiplicative()
        rest: list[tuple[str, Node]] = []
        while self.at_op("+", "-"):
            op = self.advance().text
            rest.append((op, self.parse_multiplicative()))
        if not rest:
            return first
        return Arithmetic(first, tuple(rest), first.start, rest[-1][1].end)

    def parse_multiplicative(self) -> Node:
        first = self.parse_unary()
        rest: list[tuple[str, Node]] = []
        while self.at_op("*", "/", "%"):
            op = self.advance().text
            rest.append((op, self.parse_unary()))
        if not rest:
            return first
        return Arithmetic(first, tuple(rest), first.start, rest[-1][1].end)

    def parse_unary(self) -> Node:
        if self.at_op("-", "!"):
            token = self.advance()
            self.enter(token.start)
            operand = self.parse_unary()
            self.leave()
            if (token.text == "-" and isinstance(operand, Literal)
                    and _is_number(operand.value)):
                return Literal(-operand.value, token.start, operand.end)
            return Unary("-" if token.text == "-" else "not", operand, token.start, operand.end)
        return self.parse_postfix()

    def parse_postfix(self) -> Node:
        node = self.parse_primary()
        keys: list[Member | Index] = []
        end = node.end
        while True:
            if self.at_op("."):
                self.advance()
                token = self.tok
                if token.kind == "word" or (token.kind == "num" and token.text.isdigit()):
                    self.advance()
                    keys.append(Member(token.text, token.start, token.end))
                    end = token.end
                else:
                    raise self.error(f"expected a name after '.' at column {token.start}"
                                     f"{self.found()}", token.start)
            elif self.at_op("["):
                opener = self.advance()
                self.enter(opener.start)
                key = self.parse_or()
                close = self.expect_close("]", opener)
                self.leave()
                keys.append(Index(key, opener.start, close.end))
                end = close.end
            else:
                break
        if not keys:
            return node
        return Access(node, tuple(keys), node.start, end)

    def parse_primary(self) -> Node:
        token = self.tok
        if token.kind in ("num", "str"):
            self.advance()
            return Literal(token.value, token.start, token.end)
        if token.kind == "op":
            if token.text == "$":
                self.advance()
                return Name("$", token.start, token.end)
            if token.text == "(":
                self.advance()
                self.enter(token.start)
                inner = self.parse_or()
                close = self.expect_close(")", token)
                self.leave()
                return dataclasses.replace(inner, start=token.start, end=close.end)
            if token.text == "[":
                return self.parse_array()
        if token.kind == "word" and token.text not in _RESERVED and token.text != "not":
            self.advance()
            if token.text in _CONSTANTS:
                return Literal(_CONSTANTS[token.text], token.start, token.end)
            if self.at_op("("):
                return self.parse_call(token)
            return Name(token.text, token.start, token.end)
        previous = self.tokens[self.i - 1] if self.i > 0 else None
        after = f" after {_describe(previous)}" if previous is not None else ""
        raise self.error(f"expected an operand{after} at column {token.start}{self.found()}",
                         token.start)

    def parse_array(self) -> Node:
        opener = self.advance()
        self.enter(opener.start)
        items: list[Node] = []
        while not self.at_op("]"):
            items.append(self.parse_or())
            if not self.at_op(","):
                break
            self.advance()
        close = self.expect_close("]", opener)
        self.leave()
        return Array(tuple(items), opener.start, close.end)

    def parse_call(self, name: _Token) -> Node:
        if name.text not in _FUNCTIONS:
            known = ", ".join(sorted(_FUNCTIONS))
            raise self.error(f"unknown function '{name.text}' at column {name.start} (known: "
                             f"{known})", name.start)
        opener = self.advance()
        self.enter(opener.start)
        if self.at_op(")") or self.at_op(","):
            pos = self.tok.start
            raise self.error(f"{name.text}() takes exactly one argument, at column {pos}", pos)
        argument = self.parse_or()
        if self.at_op(","):
            pos = self.tok.start
            raise self.error(f"{name.text}() takes exactly one argument, found ',' at column "
                             f"{pos}", pos)
        close = self.expect_close(")", opener)
        self.leave()
        return Call(name.text, argument, name.start, close.end)


@functools.lru_cache(maxsize=2048)
def parse(text: str) -> Expression:
    """Parse ``text`` or raise ``ExpressionError`` with the 0-based column of the problem."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression too long ({len(text)} characters, at most "
                              f"{MAX_LENGTH})", text, MAX_LENGTH)
    parser = _Parser(text)
    try:
        return Expression(text, parser.parse())
    except RecursionError:  # only when called with little stack left: MAX_DEPTH needs ~650
        raise ExpressionError("expression nested too deeply for the available stack", text,
                              parser.tok.start) from None


# --------------------------------------------------------------------------------------------
# Values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _absent(value: Any) -> bool:
    return value is MISSING or value is None


def _kind(value: Any) -> str:
    if value is MISSING:
        return "a missing value"
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a bool"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a map"
    if _is_list(value):
        return "a list"
    return f"a {type(value).__name__}"


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if value is MISSING:
        return None
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, str):
        return list(value)
    return str(value)


def render(value: Any, width: int = VALUE_WIDTH) -> str:
    """``value`` as JSON for messages (``<missing>`` for MISSING), cut to ``width`` chars."""
    if value is MISSING:
        return "<missing>"
    try:
        text = json.dumps(value, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


_INTEGER: Final = re.compile(r"-?[0-9]{1,18}")


def descend(value: Any, key: Any) -> Any:
    """One step into ``value``: map key, list index (negative counts from the end, digit
    strings too) or string index; ``MISSING`` when it does not resolve, never an error."""
    if isinstance(value, Mapping):
        try:
            return value[key]
        except (KeyError, TypeError):
            pass
        if isinstance(key, int) and not isinstance(key, bool):
            return value.get(str(key), MISSING)
        return MISSING
    if isinstance(value, str) or _is_list(value):
        if isinstance(key, str) and _INTEGER.fullmatch(key):
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            try:
                return value[key]
            except IndexError:
                return MISSING
    return MISSING


def _equal(a: Any, b: Any) -> bool:
    """Strict equality: no number/string coercion, bools only equal bools, MISSING == nil."""
    if _absent(a) or _absent(b):
        return _absent(a) and _absent(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return len(a) == len(b) and all(k in b and _equal(v, b[k]) for k, v in a.items())
    if _is_list(a) and _is_list(b):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


def _order(op: str, a: Any, b: Any) -> bool:
    if not ((_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise _Failure(f"'{op}' cannot compare {_kind(a)} with {_kind(b)}")
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _contains(op: str, container: Any, item: Any) -> bool:
    """``contains``: substring of a string, element of a list, key of a map; nil holds nothing."""
    if _absent(container):
        return False
    if isinstance(container, str):
        if not isinstance(item, str):
            raise _Failure(f"'{op}' looks for a string in a string, got {_kind(item)}")
        return item in container
    if isinstance(container, Mapping):
        try:
            return item in container
        except TypeError:
            return False
    if _is_list(container):
        return any(_equal(element, item) for element in container)
    side = "right" if op.endswith("in") else "left"
    raise _Failure(f"'{op}' needs a string, list or map on the {side}, got {_kind(container)}")


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. FutureWarning for "[[" in a pattern
            return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise _Failure(f"invalid regular expression {render(pattern)}: {exc}") from None


def _string_test(op: str, subject: Any, argument: Any) -> bool:
    if _absent(subject):
        return False
    if not isinstance(subject, str) or not isinstance(argument, str):
        raise _Failure(f"'{op}' needs two strings, got {_kind(subject)} and {_kind(argument)}")
    if op == "matches":
        return _regex(argument).search(subject) is not None
    if op == "startsWith":
        return subject.startswith(argument)
    return subject.endswith(argument)


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op in ("<", "<=", ">", ">="):
        return _order(op, left, right)
    if op == "contains":
        return _contains(op, left, right)
    if op == "in":
        return _contains(op, right, left)
    if op == "not in":
        return not _contains(op, right, left)
    return _string_test(op, left, right)


def _arithmetic(op: str, a: Any, b: Any) -> Any:
    if op == "+" and not (_is_number(a) and _is_number(b)):
        if isinstance(a, str) and isinstance(b, str):
            return a + b
        if _is_list(a) and _is_list(b):
            return [*a, *b]
        raise _Failure(f"'+' needs two numbers, two strings or two lists, got {_kind(a)} and "
                       f"{_kind(b)}")
    if not (_is_number(a) and _is_number(b)):
        raise _Failure(f"'{op}' needs two numbers, got {_kind(a)} and {_kind(b)}")
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            raise _Failure("division by zero" if op == "/" else "modulo by zero")
        return a / b if op == "/" else a % b
    except OverflowError:
        raise _Failure(f"'{op}' overflowed") from None


def _text(value: Any) -> str:
    """``string(x)``: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _fn_len(value: Any) -> Any:
    if _absent(value):
        return 0
    if isinstance(value, str | Mapping) or _is_list(value):
        return len(value)
    raise _Failure(f"len() needs a string, list or map, got {_kind(value)}")


def _fn_case(name: str, convert: Callable[[str], str]) -> Callable[[Any], Any]:
    def fn(value: Any) -> Any:
        if _absent(value):
            return value  # a missing header stays missing: the comparison fails, not errors
        if not isinstance(value, str):
            raise _Failure(f"{name}() needs a string, got {_kind(value)}")
        return convert(value)

    return fn


def _fn_string(value: Any) -> Any:
    if value is MISSING:
        return MISSING
    try:
        return _text(value)
    except (TypeError, ValueError, RecursionError):
        raise _Failure(f"string() cannot render {_kind(value)}") from None


def _fn_number(name: str, convert: Callable[[Any], int | float]) -> Callable[[Any], Any]:
    def fn(value: Any) -> Any:
        if not (_is_number(value) or isinstance(value, bool | str)):
            raise _Failure(f"{name}() cannot convert {_kind(value)}")
        try:
            return convert(value)
        except (ValueError, OverflowError):
            raise _Failure(f"{name}() cannot convert {render(value)}") from None

    return fn


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return int(float(value))
    return int(value)


_FUNCTIONS: Final[dict[str, Callable[[Any], Any]]] = {
    "len": _fn_len,
    "lower": _fn_case("lower", str.lower),
    "upper": _fn_case("upper", str.upper),
    "string": _fn_string,
    "int": _fn_number("int", _to_int),
    "float": _fn_number("float", float),
}


# --------------------------------------------------------------------------------------------
# Evaluator


def _probe(node: Node) -> bool:
    """Whether ``node``'s value is worth showing in a failure message (not a literal or a
    boolean combination whose parts are shown themselves)."""
    if isinstance(node, Literal | Compare | Logical | Exists):
        return False
    if isinstance(node, Unary):
        return node.op == "-"
    if isinstance(node, Array):
        return not all(isinstance(item, Literal) for item in node.items)
    return True


class _Evaluator:
    """Walks the AST; one Python frame per node, so MAX_DEPTH bounds the recursion."""

    __slots__ = ("record", "scope", "text")

    def __init__(self, text: str, scope: Mapping[str, Any],
                 record: dict[str, Any] | None) -> None:
        self.text = text
        self.scope = scope
        self.record = record

    def note(self, node: Node, value: Any) -> None:
        if self.record is not None and _probe(node):
            self.record.setdefault(self.text[node.start:node.end], value)

    def eval(self, node: Node) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Name):
            if node.name == "$":
                return self.scope
            try:
                return self.scope[node.name]
            except KeyError:
                return MISSING
        if isinstance(node, Access):
            value = self.eval(node.base)
            for key in node.keys:
                value = descend(value, key.name if isinstance(key, Member) else
                                self.eval(key.key))
            return value
        if isinstance(node, Compare):
            left = self.eval(node.left)
            self.note(node.left, left)
            right = self.eval(node.right)
            self.note(node.right, right)
            return _compare(node.op, left, right)
        if isinstance(node, Logical):
            stop_at = node.op == "or"
            for operand in node.operands:
                value = self.eval(operand)
                self.note(operand, value)
                if bool(value) is stop_at:
                    return stop_at
            return not stop_at
        if isinstance(node, Exists):
            value = self.eval(node.operand)
            self.note(node.operand, value)
            return _absent(value) if node.negated else not _absent(value)
        if isinstance(node, Unary):
            value = self.eval(node.operand)
            if node.op == "not":
                self.note(node.operand, value)
                return not value
            if not _is_number(value):
                raise _Failure(f"'-' needs a number, got {_kind(value)}")
            return -value
        if isinstance(node, Arithmetic):
            value = self.eval(node.first)
            for op, operand in node.rest:
                value = _arithmetic(op, value, self.eval(operand))
            return value
        if isinstance(node, Call):
            return _FUNCTIONS[node.function](self.eval(node.argument))
        return [self.eval(item) for item in node.items]

    def run(self, node: Node) -> Any:
        try:
            value = self.eval(node)
        except _Failure as exc:
            raise ExpressionError(str(exc), self.text) from None
        except RecursionError:
            raise ExpressionError("value nested too deeply to evaluate", self.text) from None
        self.note(node, value)
        return value


def evaluate(expr: Expression, scope: Mapping[str, Any]) -> Any:
    """The value of ``expr`` in ``scope`` (names are scope keys, ``$`` the scope itself);
    type mismatches and bad regexes raise ``ExpressionError``, never a Python TypeError."""
    return _Evaluator(expr.text, scope, None).run(expr.node)


def _failure(text: str, reason: str | None, values: tuple[tuple[str, str], ...]) -> str:
    parts = [reason] if reason else []
    if values:
        parts.append(", ".join(f"{source} = {shown}" for source, shown in values))
    return f"{text} failed: {'; '.join(parts)}" if parts else f"{text} failed"


def check(text: str, scope: Mapping[str, Any]) -> AssertionOutcome:
    """Evaluate an assertion; passes only on ``true``. Syntax and evaluation errors come back
    as a failed outcome (message ``<text> failed: <error>``) so the runner reports, not raises."""
    record: dict[str, Any] = {}
    try:
        result = _Evaluator(text, scope, record).run(parse(text).node)
    except ExpressionError as exc:
        values = tuple((source, render(value)) for source, value in record.items())
        return AssertionOutcome(text, False, _failure(text, exc.message, values), values)
    values = tuple((source, render(value)) for source, value in record.items())
    if result is True:
        return AssertionOutcome(text, True, None, values)
    reason = None if result is False else f"expected true or false, got {render(result)}"
    return AssertionOutcome(text, False, _failure(text, reason, values), values)


def names(expr: Expression) -> frozenset[str]:
    """Root identifiers ``expr`` reads; ``$.body`` / ``$["body"]`` count as ``body``, and a
    ``$`` used any other way as ``$`` (it reads the whole scope)."""
    found: set[str] = set()
    stack: list[Node] = [expr.node]
    while stack:
        node = stack.pop()
        if isinstance(node, Name):
            found.add(node.name)
        elif isinstance(node, Access):
            keys = node.keys
            first = keys[0]
            if isinstance(node.base, Name) and node.base.name == "$":
                if isinstance(first, Member):
                    found.add(first.name)
                elif isinstance(first.key, Literal) and isinstance(first.key.value, str):
                    found.add(first.key.value)
                else:
                    found.add("$")
            else:
                stack.append(node.base)
            stack.extend(key.key for key in keys if isinstance(key, Index))
        elif isinstance(node, Array):
            stack.extend(node.items)
        elif isinstance(node, Call | Unary | Exists):
            stack.append(node.argument if isinstance(node, Call) else node.operand)
        elif isinstance(node, Logical):
            stack.extend(node.operands)
        elif isinstance(node, Arithmetic):
            stack.append(node.first)
            stack.extend(operand for _, operand in node.rest)
        elif isinstance(node, Compare):
            stack.extend((node.left, node.right))
    return frozenset(found)
