"""The assertion language: grammar, precedence, MISSING semantics, errors and messages."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testmesh_reconciler.config.frozen import freeze
from testmesh_reconciler.errors import TestmeshError
from testmesh_reconciler.runner.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    MISSING,
    AssertionOutcome,
    Compare,
    Expression,
    ExpressionError,
    Literal,
    Logical,
    Name,
    check,
    descend,
    evaluate,
    names,
    parse,
)

SCOPE: dict[str, Any] = {
    "status": 200,
    "body": {
        "id": "abc-123",
        "name": "Widget",
        "count": 3,
        "price": 9.5,
        "ok": True,
        "none": None,
        "items": ["a", "b", "c"],
        "users": [{"name": "ann", "tags": ["x"]}, {"name": "bob", "tags": []}],
        "nested": {"deep": {"value": 42}},
        "empty": [],
    },
    "headers": {"Content-Type": "application/json", "X-Count": "7"},
    "duration_ms": 120,
    "len": 5,
}


def ev(text: str, scope: dict[str, Any] | None = None) -> Any:
    return evaluate(parse(text), SCOPE if scope is None else scope)


def syntax_error(text: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        parse(text)
    return info.value


def eval_error(text: str, scope: dict[str, Any] | None = None) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        ev(text, scope)
    return info.value


# -- literals and primaries ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("42", 42),
    ("4.25", 4.25),
    ("1e3", 1000.0),
    ("2.5E-1", 0.25),
    ("-7", -7),
    ("'single'", "single"),
    ('"double"', "double"),
    (r'"a\"b"', 'a"b'),
    (r"'it\'s'", "it's"),
    (r'"tab\there\nnew"', "tab\there\nnew"),
    (r'"\u00e9"', "é"),
    (r'"\d+\\"', "\\d+\\"),  # unknown escapes stay verbatim, for regexes
    ("true", True),
    ("false", False),
    ("nil", None),
    ("null", None),
    ("[1, 'two', [3]]", [1, "two", [3]]),
    ("[]", []),
    ("[1, 2,]", [1, 2]),
    ("(1 + 2)", 3),
])
def test_literals(text: str, value: Any) -> None:
    assert ev(text) == value
    assert type(ev(text)) is type(value)


def test_paths_members_indexes_and_quoted_keys() -> None:
    assert ev("body.id") == "abc-123"
    assert ev("body.nested.deep.value") == 42
    assert ev("body.items[0]") == "a"
    assert ev("body.items[-1]") == "c"
    assert ev("body.items.1") == "b"
    assert ev("body.users[1].name") == "bob"
    assert ev("body.users.0.tags.0") == "x"
    assert ev('headers["Content-Type"]') == "application/json"
    assert ev("headers['X-Count']") == "7"
    assert ev("body['items'][1 + 1]") == "c"
    assert ev("body.items[body.count - 1]") == "c"
    assert ev("'hello'[1]") == "e"


def test_dollar_is_the_root_scope() -> None:
    assert ev("$.body.id") == "abc-123"
    assert ev('$["status"]') == 200
    assert ev("$") is SCOPE
    assert ev("$.status == status") is True


def test_keywords_are_fine_as_member_names_and_functions_as_variables() -> None:
    scope = {"a": {"in": 1, "exists": 2, "not": 3, "len": 4}}
    assert ev("a.in + a.exists + a.not + a.len", scope) == 10
    assert ev("len + 1") == 6  # `len` without parentheses is a variable


def test_frozen_values_behave_like_plain_ones() -> None:
    scope = freeze(SCOPE)
    assert ev("body.items == ['a', 'b', 'c']", scope) is True
    assert ev("body.nested contains 'deep'", scope) is True
    assert ev("len(body.users)", scope) == 2


# -- operators -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("status == 200", True),
    ("status != 200", False),
    ("status == 200.0", True),
    ('status == "200"', False),  # strict: no number/string coercion
    ("body.ok == 1", False),  # bools only equal bools
    ("body.ok == true", True),
    ("body.items == ['a', 'b', 'c']", True),
    ("body.nested == body.nested", True),
    ("status < 300", True),
    ("status <= 200", True),
    ("status > 200", False),
    ("status >= 200", True),
    ("'abc' < 'abd'", True),
    ("body.items contains 'b'", True),
    ("body.items contains 'z'", False),
    ("body.name contains 'idg'", True),
    ("body.nested contains 'deep'", True),
    ("'b' in body.items", True),
    ("status in [200, 201]", True),
    ("status not in [200, 201]", False),
    ("'deep' in body.nested", True),
    ("'z' not in body.items", True),
    ("body.id matches '^abc-[0-9]+$'", True),
    (r"body.id matches '\d{4}'", False),
    ("body.name startsWith 'Wid'", True),
    ("body.name endsWith 'get'", True),
    ("body.name endsWith 'Wid'", False),
    ("body.id exists", True),
    ("body.none exists", False),
    ("body.gone exists", False),
    ("body.gone not exists", True),
    ("body.none not exists", True),
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("10 - 4 - 3", 3),
    ("7 / 2", 3.5),
    ("7 % 4", 3),
    ("-body.count", -3),
    ("- -3", 3),
    ("'a' + 'b'", "ab"),
    ("[1] + [2]", [1, 2]),
    ("body.price * 2", 19.0),
    ("!true", False),
    ("not false", True),
    ("!!body.ok", True),
    ("true && false", False),
    ("true and true", True),
    ("false || true", True),
    ("false or false", False),
])
def test_operators(text: str, value: Any) -> None:
    assert ev(text) == value


def test_functions() -> None:
    assert ev("len(body.items)") == 3
    assert ev("len(body.name)") == 6
    assert ev("len(body.nested)") == 1
    assert ev("len(body.gone)") == 0
    assert ev("len(nil)") == 0
    assert ev("lower(headers['Content-Type'])") == "application/json"
    assert ev("upper(body.name)") == "WIDGET"
    assert ev("lower(body.gone) == nil") is True
    assert ev("string(status)") == "200"
    assert ev("string(body.items)") == '["a","b","c"]'
    assert ev("string(true)") == "true"
    assert ev("string(nil)") == "null"
    assert ev("int(headers['X-Count']) + 1") == 8
    assert ev("int('3.9')") == 3
    assert ev("int(body.price)") == 9
    assert ev("float('1.5') * 2") == 3.0
    assert ev("float(status)") == 200.0


def test_short_circuit_skips_the_failing_side() -> None:
    assert ev("false && 1 / 0 == 1") is False
    assert ev("true || 'a' < 1") is True


# -- precedence ----------------------------------------------------------------------------


def test_precedence_or_below_and_below_not_below_comparison() -> None:
    assert ev("true || true && false") is True  # && binds tighter
    assert ev("(true || true) && false") is False
    assert ev("!status == 200") is False  # ! is below comparison: !(status == 200)
    assert ev("not status == 404") is True
    assert ev("status == 100 + 100") is True  # arithmetic above comparison
    assert ev("2 + 3 * 4 - 6 / 3 % 5") == 12.0
    assert ev("-2 * 3") == -6
    assert ev("status == 200 && body.id != nil || false") is True


def test_ast_is_flat_and_frozen() -> None:
    expr = parse("a || b || c")
    assert isinstance(expr.node, Logical)
    assert [n.name for n in expr.node.operands if isinstance(n, Name)] == ["a", "b", "c"]
    assert parse("x == 1").node == Compare("==", Name("x", 9, 9), Literal(1, 0, 0), 0, 0)
    assert str(expr) == "a || b || c"
    with pytest.raises(AttributeError):
        expr.text = "other"  # type: ignore[misc]


def test_parse_is_cached() -> None:
    assert parse("status == 200") is parse("status == 200")


def test_long_flat_chains_evaluate_without_deep_recursion() -> None:
    text = "+".join(["1"] * 2000)
    assert len(text) <= MAX_LENGTH
    assert ev(text) == 2000
    assert ev("&&".join(["true"] * 500)) is True


# -- MISSING semantics ---------------------------------------------------------------------


def test_missing_paths_resolve_to_missing_which_equals_nil() -> None:
    assert ev("body.gone") is MISSING
    assert ev("nothing.at.all[3]") is MISSING
    assert ev("body.items[10]") is MISSING
    assert ev("body.items.name") is MISSING
    assert ev("body.gone == nil") is True
    assert ev("body.gone != nil") is False
    assert ev("body.none == body.gone") is True
    assert ev("body.gone contains 'x'") is False
    assert ev("'x' in body.gone") is False
    assert ev("body.gone matches 'x'") is False
    assert ev("body.gone startsWith 'x'") is False
    assert ev("!body.gone") is True
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert copy.deepcopy(MISSING) is MISSING


def test_descend() -> None:
    assert descend({"a": 1}, "a") == 1
    assert descend({"0": "zero"}, 0) == "zero"
    assert descend([1, 2], "-1") == 2
    assert descend([1, 2], True) is MISSING
    assert descend({"a": 1}, ["unhashable"]) is MISSING
    assert descend(None, "a") is MISSING
    assert descend(5, "a") is MISSING


# -- names ---------------------------------------------------------------------------------


def test_names_are_the_root_identifiers() -> None:
    assert names(parse("status == 200 && body.id != nil")) == {"status", "body"}
    assert names(parse("$.body.id == x && len(y[z]) > 0")) == {"body", "x", "y", "z"}
    assert names(parse('$["headers"] exists')) == {"headers"}
    assert names(parse("$[key] exists")) == {"$", "key"}
    assert names(parse("-a + [b, 1] == lower(c)")) == {"a", "b", "c"}
    assert names(parse("1 == 1")) == frozenset()


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message", "position"), [
    ("status == 200 && ", "expected an operand after '&&' at column 17", 17),
    ("status ==", "expected an operand after '==' at column 9", 9),
    ("status == )", "expected an operand after '==' at column 10, found ')'", 10),
    ("(a", "expected ')' at column 2 (to match '(' at column 0)", 2),
    ("[1, 2", "expected ']' at column 5 (to match '[' at column 0)", 5),
    ("a[0", "expected ']' at column 3 (to match '[' at column 1)", 3),
    ("a b", "expected an operator or the end of the expression at column 2, found 'b'", 2),
    ("'abc", "unterminated string starting at column 0", 0),
    ("x == 'a\\u12'", "invalid \\u escape at column 7 (expected 4 hex digits)", 7),
    ("a == b == c",
     "comparisons do not chain: unexpected '==' at column 7 (combine them with '&&')", 7),
    ("a exists == true",
     "comparisons do not chain: unexpected '==' at column 9 (combine them with '&&')", 9),
    ("foo(1)", "unknown function 'foo' at column 0 (known: float, int, len, lower, string, "
               "upper)", 0),
    ("len()", "len() takes exactly one argument, at column 4", 4),
    ("len(a, b)", "len() takes exactly one argument, found ',' at column 5", 5),
    ("a & b", "unexpected '&' at column 2 (did you mean '&&'?)", 2),
    ("a | b", "unexpected '|' at column 2 (did you mean '||'?)", 2),
    ("a = 1", "unexpected '=' at column 2 (did you mean '=='?)", 2),
    ("a # b", "unexpected character '#' at column 2", 2),
    ("a not b", "expected 'in' or 'exists' after 'not' at column 6, found 'b'", 6),
    ("a.", "expected a name after '.' at column 2", 2),
    ("a.'b'", "expected a name after '.' at column 2, found ''b''", 2),
    ("in x", "expected an operand at column 0, found 'in'", 0),
    ("a && and", "expected an operand after '&&' at column 5, found 'and'", 5),
    ("   ", "expression is empty", 0),
])
def test_syntax_errors_golden(text: str, message: str, position: int) -> None:
    error = syntax_error(text)
    assert str(error) == message
    assert error.position == position
    assert error.expression == text
    assert isinstance(error, TestmeshError)


def test_length_and_depth_limits() -> None:
    error = syntax_error("1" + " " * MAX_LENGTH)
    assert str(error) == f"expression too long ({MAX_LENGTH + 1} characters, at most 4096)"
    assert "nested too deeply" in str(syntax_error("(" * (MAX_DEPTH + 1) + "1" + ")" * 65))
    assert "nested too deeply" in str(syntax_error("!" * 100 + "true"))
    assert "nested too deeply" in str(syntax_error("a[" * 100 + "0" + "]" * 100))
    assert "nested too deeply" in str(syntax_error("-" * 3000 + "1"))
    # the deepest allowed nesting of the most frame-hungry shape still evaluates
    deep = "(" * (MAX_DEPTH - 1) + "1" + ")" * (MAX_DEPTH - 1)
    assert ev(deep) == 1
    worst = "a[" * (MAX_DEPTH - 1) + "0" + "]" * (MAX_DEPTH - 1)
    assert ev(worst, {"a": [0]}) == 0
    mixed = "".join("!(x.y + -(" for _ in range(MAX_DEPTH // 4)) + "1" + "))" * (MAX_DEPTH // 4)
    with pytest.raises(ExpressionError):
        ev(mixed)  # '-' on a missing value; the point is: no RecursionError


@pytest.mark.parametrize(("text", "message"), [
    ("status < 'a'", "'<' cannot compare a number with a string"),
    ("body.gone > 1", "'>' cannot compare a missing value with a number"),
    ("body.items >= 1", "'>=' cannot compare a list with a number"),
    ("1 / 0", "division by zero"),
    ("1 % 0", "modulo by zero"),
    ("1.5 / 0.0", "division by zero"),
    ("'a' + 1", "'+' needs two numbers, two strings or two lists, got a string and a number"),
    ("body.ok * 2", "'*' needs two numbers, got a bool and a number"),
    ("-body.name", "'-' needs a number, got a string"),
    ("body.name matches '('",
     "invalid regular expression \"(\": missing ), unterminated subpattern at position 0"),
    ("status matches '2'", "'matches' needs two strings, got a number and a string"),
    ("body.name contains 1", "'contains' looks for a string in a string, got a number"),
    ("status contains 1", "'contains' needs a string, list or map on the left, got a number"),
    ("1 in status", "'in' needs a string, list or map on the right, got a number"),
    ("len(status)", "len() needs a string, list or map, got a number"),
    ("upper(1)", "upper() needs a string, got a number"),
    ("int('abc')", 'int() cannot convert "abc"'),
    ("int(body.gone)", "int() cannot convert a missing value"),
    ("float(body.items)", "float() cannot convert a list"),
    ("int(1e308 * 10)", "int() cannot convert Infinity"),
])
def test_evaluation_errors(text: str, message: str) -> None:
    error = eval_error(text)
    assert str(error) == message
    assert error.position is None
    assert error.expression == text


# -- check and failure messages ------------------------------------------------------------


def test_check_passes_with_values() -> None:
    outcome = check("status == 200", SCOPE)
    assert outcome == AssertionOutcome("status == 200", True, None, (("status", "200"),))


@pytest.mark.parametrize(("text", "message"), [
    ("status == 404", "status == 404 failed: status = 200"),
    ('body.items contains "x"', 'body.items contains "x" failed: body.items = ["a", "b", "c"]'),
    ("body.gone != nil", "body.gone != nil failed: body.gone = <missing>"),
    ("body.none exists", "body.none exists failed: body.none = null"),
    ("status == 200 && body.name == 'Gadget'",
     "status == 200 && body.name == 'Gadget' failed: status = 200, body.name = \"Widget\""),
    ("len(body.items) > 3", "len(body.items) > 3 failed: len(body.items) = 3"),
    ("body.count + 1 == duration_ms",
     "body.count + 1 == duration_ms failed: body.count + 1 = 4, duration_ms = 120"),
    ("1 == 2", "1 == 2 failed"),
    ("body.ok && body.none", "body.ok && body.none failed: body.ok = true, body.none = null"),
    ("status", "status failed: expected true or false, got 200; status = 200"),
    ("status > 'x'",
     "status > 'x' failed: '>' cannot compare a number with a string; status = 200"),
    ("status ==", "status == failed: expected an operand after '==' at column 9"),
])
def test_check_failure_messages(text: str, message: str) -> None:
    outcome = check(text, SCOPE)
    assert outcome.passed is False
    assert outcome.message == message
    assert outcome.expression == text


def test_failure_values_are_truncated() -> None:
    outcome = check("big == 1", {"big": "x" * 1000})
    ((source, shown),) = outcome.values
    assert source == "big"
    assert len(shown) == 200
    assert shown.endswith("...")


def test_check_records_only_evaluated_operands() -> None:
    outcome = check("status == 500 || body.name == 'Gadget'", SCOPE)
    assert [source for source, _ in outcome.values] == ["status", "body.name"]
    outcome = check("status == 500 && body.name == 'Gadget'", SCOPE)
    assert [source for source, _ in outcome.values] == ["status"]


# -- robustness ----------------------------------------------------------------------------

_GRAMMAR_PIECES = st.sampled_from([
    " ", "a", "b.c", "[", "]", "(", ")", "'", '"', "\\", "1", "2.5", "-", "+", "*", "/", "%",
    "==", "!=", "<", ">=", "&&", "||", "!", "not", "in", "contains", "matches", "exists",
    "startsWith", "$", ".", ",", "len(", "lower(", "int(", "nil", "true", "e9", "0", "x[-1]",
    "'[('", "\"^a\"", "u",
])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_parse_of_random_text_raises_only_expression_error(text: str) -> None:
    positions = []
    try:
        parse(text)
    except ExpressionError as error:
        positions.append(error.position)
    assert None not in positions


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_GRAMMAR_PIECES, max_size=25).map("".join))
def test_random_token_soup_parses_and_evaluates_without_python_errors(text: str) -> None:
    try:
        expr = parse(text)
    except ExpressionError:
        return
    assert isinstance(expr, Expression)
    scope = {"a": [1, "x", None], "b": {"c": "abc"}, "x": [0, 1]}
    with contextlib.suppress(ExpressionError):
        evaluate(expr, scope)
    outcome = check(text, scope)
    assert isinstance(outcome.passed, bool)
    names(expr)
