"""Placeholders: scope layering and paths, nested structures, types, escapes, built-ins."""

from __future__ import annotations

import functools
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testmesh_reconciler.config.frozen import FrozenDict, freeze
from testmesh_reconciler.runner.expressions import MISSING
from testmesh_reconciler.runner.interpolate import (
    Builtins,
    Interpolated,
    Scope,
    interpolate,
    render_text,
    template_names,
)

NOW = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)

VARIABLES: dict[str, Any] = {
    "count": 3,
    "ratio": 0.5,
    "flag": True,
    "nothing": None,
    "empty": "",
    "name": "bob",
    "service": {"user-service": "http://user:8080", "product-service": "http://product:8080"},
    "service.user-service": "http://literal-name",
    "step": {
        "body": {"id": 7, "items": [{"n": "a"}, {"n": "b"}], "tags": ["x", "y"]},
        "headers": {"Content-Type": "application/json", "a.b": "dotted"},
    },
}


@pytest.fixture
def builtins() -> Builtins:
    return Builtins(clock=lambda: NOW, rng=random.Random(42))


@pytest.fixture
def scope() -> Scope:
    return Scope.layered(VARIABLES, {"count": 99, "lower": "from-second-layer"})


def run(value: Any, scope: Scope, builtins: Builtins) -> Interpolated:
    return interpolate(value, scope, builtins)


# -- Scope ---------------------------------------------------------------------------------


def test_scope_layers_first_wins(scope: Scope) -> None:
    assert scope["count"] == 3
    assert scope["lower"] == "from-second-layer"
    assert "lower" in scope
    assert "absent" not in scope
    assert list(scope)[:2] == ["count", "ratio"]
    assert len(scope) == len(VARIABLES) + 1
    with pytest.raises(KeyError):
        scope["absent"]


def test_scope_holds_references(builtins: Builtins) -> None:
    outputs: dict[str, Any] = {}
    scope = Scope.layered(outputs, VARIABLES)
    assert scope.lookup("login.token") is MISSING
    outputs["login"] = {"token": "t0k"}
    assert scope.lookup("login.token") == "t0k"
    assert scope.layers == (outputs, VARIABLES)


@pytest.mark.parametrize(("path", "value"), [
    ("count", 3),
    (" count ", 3),
    ("step.body.id", 7),
    ("step.body.items[1].n", "b"),
    ("step.body.items.0.n", "a"),
    ("step.body.tags[-1]", "y"),
    ('step.headers["Content-Type"]', "application/json"),
    ("step.headers['a.b']", "dotted"),
    ("step.headers.a.b", "dotted"),  # longest existing key wins at each level
    ("service.product-service", "http://product:8080"),
    ("service.user-service", "http://literal-name"),  # whole name first
    ("nothing", None),
])
def test_lookup(scope: Scope, path: str, value: Any) -> None:
    assert scope.lookup(path) == value


@pytest.mark.parametrize("path", [
    "", "absent", "step.absent", "step.body.items[5]", "step.body.items[x]", "count.x",
    "step.body.items[0", "step.headers['Content-Type", "step]", "step.body.id.more",
])
def test_lookup_missing(scope: Scope, path: str) -> None:
    assert scope.lookup(path) is MISSING


def test_lookup_in_frozen_values() -> None:
    scope = Scope.layered(freeze(VARIABLES))
    assert scope.lookup("step.body.items[1].n") == "b"
    assert scope.lookup("service.product-service") == "http://product:8080"


# -- interpolate ---------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "value"), [
    ("plain text", "plain text"),
    ("${count}", 3),
    ("{{count}}", 3),
    ("{{ count }}", 3),
    ("${ count }", 3),
    ("${ratio}", 0.5),
    ("${flag}", True),
    ("${nothing}", None),
    ("${step.body.tags}", ["x", "y"]),
    ("${step.body.items[0]}", {"n": "a"}),
    ("n=${count}", "n=3"),
    ("${count}${count}", "33"),
    ("r=${ratio} f=${flag} z=${nothing}", "r=0.5 f=true z=null"),
    ("tags=${step.body.tags}", 'tags=["x","y"]'),
    ("item=${step.body.items[0]}", 'item={"n":"a"}'),
    ("${service.user-service}/api", "http://literal-name/api"),
    ("${service.product-service}/api", "http://product:8080/api"),
    ('{{step.headers["Content-Type"]}}', "application/json"),
    ("Hello {{name}}, you have ${count}", "Hello bob, you have 3"),
    ("$${count}", "${count}"),
    ("cost: $${count} is ${count}", "cost: ${count} is 3"),
    ("${count", "${count"),
    ("${", "${"),
    ("{{count}", "{{count}"),
    ("${}", "${}"),
    ("$5 and {single}", "$5 and {single}"),
    ('{"json": {"nested": 1}}', '{"json": {"nested": 1}}'),
    ("${absent:-fallback}", "fallback"),
    ("${absent:-}", ""),
    ("{{ absent :- spaced out }}", "spaced out"),
    ("${absent:-http://host:80/x}", "http://host:80/x"),
    ("${nothing:-was nil}", "was nil"),
    ("${empty:-was empty}", "was empty"),
    ("${count:-7}", 3),
    ("x${absent:-7}", "x7"),
])
def test_strings(scope: Scope, builtins: Builtins, template: str, value: Any) -> None:
    result = run(template, scope, builtins)
    assert result == Interpolated(value, ())
    assert type(result.value) is type(value)


def test_missing_names_are_collected_in_order_without_repeats(
        scope: Scope, builtins: Builtins) -> None:
    result = run({
        "url": "${base_url}/users/${step.user.id}",
        "headers": {"Authorization": "Bearer {{ token }}", "X-Id": "${base_url}"},
        "body": ["${count}", "${later}", {"k": "{{token}}"}],
    }, scope, builtins)
    assert result.missing == ("base_url", "step.user.id", "token", "later")
    # unresolved placeholders stay as written, so nothing resolves to a wrong value silently
    assert result.value["url"] == "${base_url}/users/${step.user.id}"
    assert result.value["headers"]["Authorization"] == "Bearer {{ token }}"
    assert result.value["body"][1] == "${later}"


def test_nested_structures_keys_and_types(scope: Scope, builtins: Builtins) -> None:
    source: FrozenDict[Any, Any] = FrozenDict({
        "method": "POST",
        "${name}_key": {"count": "${count}", "list": ("${step.body.tags}", 1, None, 2.5)},
        "{{count}}": "number key renders as text",
        7: "non-string keys stay",
    })
    result = run(source, scope, builtins)
    assert result == Interpolated({
        "method": "POST",
        "bob_key": {"count": 3, "list": [["x", "y"], 1, None, 2.5]},
        "3": "number key renders as text",
        7: "non-string keys stay",
    }, ())
    assert type(result.value) is dict
    assert type(result.value["bob_key"]["list"]) is list


def test_whole_values_are_plain_copies(builtins: Builtins) -> None:
    data = {"body": {"items": [1, 2]}}
    frozen = Scope.layered(freeze(data))
    result = run("${body}", frozen, builtins)
    assert result.value == data["body"]
    assert type(result.value) is dict
    assert type(result.value["items"]) is list
    plain = Scope.layered(data)
    copied = run("${body}", plain, builtins).value
    copied["items"].append(3)
    assert data["body"]["items"] == [1, 2]


def test_resolved_values_are_not_interpolated_again(builtins: Builtins) -> None:
    scope = Scope.layered({"a": "${b}", "b": "nope"})
    assert run("${a}", scope, builtins) == Interpolated("${b}", ())


def test_non_string_scalars_pass_through(scope: Scope, builtins: Builtins) -> None:
    for value in (1, 2.5, True, None):
        assert run(value, scope, builtins) == Interpolated(value, ())


def test_render_text() -> None:
    assert render_text("s") == "s"
    assert render_text(None) == "null"
    assert render_text(MISSING) == "null"
    assert render_text(False) == "false"
    assert render_text(10) == "10"
    assert render_text(1.25) == "1.25"
    assert render_text(FrozenDict({"a": (1, "é")})) == '{"a":[1,"é"]}'


# -- built-ins -----------------------------------------------------------------------------


def test_builtins_with_fixed_clock_and_rng(scope: Scope, builtins: Builtins) -> None:
    result = run({
        "ts": "${TIMESTAMP}", "ms": "${TIMESTAMP_MS}", "iso": "${ISO_TIMESTAMP}",
        "date": "{{DATE}}", "time": "${TIME}", "int": "${RANDOM_INT}", "id": "${RANDOM_ID}",
        "uuid": "${UUID}",
    }, scope, builtins)
    value = result.value
    assert result.missing == ()
    assert value["ts"] == 1714566645
    assert value["ms"] == 1714566645123
    assert value["iso"] == "2024-05-01T12:30:45Z"
    assert value["date"] == "2024-05-01"
    assert value["time"] == "12:30:45"
    assert isinstance(value["int"], int)
    assert 0 <= value["int"] < Builtins.RANDOM_INT_LIMIT
    assert re.fullmatch(r"[0-9a-f]{8}", value["id"])
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        value["uuid"])
    # same seed, same values: tests are reproducible
    again = run({"uuid": "${UUID}"}, scope, Builtins(clock=lambda: NOW, rng=random.Random(42)))
    first = run({"uuid": "${UUID}"}, scope, Builtins(clock=lambda: NOW, rng=random.Random(42)))
    assert again == first


def test_builtins_are_evaluated_per_occurrence(scope: Scope, builtins: Builtins) -> None:
    text = run("${UUID} ${UUID} {{RANDOM_ID}} {{RANDOM_ID}}", scope, builtins).value
    a, b, c, d = text.split()
    assert a != b
    assert c != d


def _identity(value: datetime) -> datetime:
    return value


def test_builtins_convert_the_clock_to_utc(scope: Scope) -> None:
    local = NOW.astimezone(timezone(timedelta(hours=2)))
    naive = NOW.replace(tzinfo=None)
    for now in (local, naive):
        builtins = Builtins(clock=functools.partial(_identity, now), rng=random.Random(0))
        assert run("${ISO_TIMESTAMP} ${TIMESTAMP}", scope, builtins).value == (
            "2024-05-01T12:30:45Z 1714566645")


def test_variables_shadow_builtins(builtins: Builtins) -> None:
    scope = Scope.layered({"UUID": "mine"})
    assert run("${UUID}", scope, builtins).value == "mine"
    assert builtins.resolve("NOT_A_BUILTIN") is MISSING


def test_system_builtins() -> None:
    system = Builtins.system()
    assert abs(system.resolve("TIMESTAMP") - int(datetime.now(UTC).timestamp())) <= 2


# -- template_names ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("pr-${pr_number}", ("pr_number",)),
    ("${service.x}", ("service",)),
    ("{{ a[0] }} ${b.c} ${a}", ("a", "b")),
    ("${UUID}-${branch}", ("UUID", "branch")),
    ("$${escaped} ${real}", ("real",)),
    ("${opt:-default}", ("opt",)),
    ("no placeholders", ()),
    ("${unterminated", ()),
])
def test_template_names(text: str, expected: tuple[str, ...]) -> None:
    assert template_names(text) == expected


# -- robustness ----------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from(list("${}:- abc.[]'\"0")), max_size=40))
def test_random_templates_never_raise(text: str) -> None:
    builtins = Builtins(clock=lambda: NOW, rng=random.Random(0))
    result = interpolate(text, Scope.layered({"a": {"b": [1]}, "c": "x"}), builtins)
    assert isinstance(result.missing, tuple)
    template_names(text)


def test_long_strings_are_not_cached_but_work(scope: Scope, builtins: Builtins) -> None:
    body = "x" * 10_000 + "${count}"
    assert run(body, scope, builtins).value == "x" * 10_000 + "3"
