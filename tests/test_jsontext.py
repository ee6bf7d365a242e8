"""``jsontext.encoder`` gives the text ``json.JSONEncoder.encode`` gives, for any JSON tree."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testmesh_reconciler.jsontext import encoder

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)
OPTIONS = [dict(compact=c, ensure_ascii=a) for c in (True, False) for a in (True, False)]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@given(value=trees)
def test_same_text_as_json_encoder(options: dict[str, bool], value: Any) -> None:
    separators = (",", ":") if options["compact"] else (", ", ": ")
    expected = json.JSONEncoder(separators=separators,
                                ensure_ascii=options["ensure_ascii"]).encode(value)
    assert encoder(compact=options["compact"],
                   ensure_ascii=options["ensure_ascii"])(value) == expected


def test_default_turns_other_values_into_json() -> None:
    encode = encoder(default=sorted)
    assert encode({"b": frozenset({"y", "x"}), "t": ("a", 1)}) == '{"b":["x","y"],"t":["a",1]}'
    assert encoder(compact=False, default=str)({"p": 1.5, "o": object}) \
        == '{"p": 1.5, "o": "<class \'object\'>"}'


def test_without_default_other_values_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encoder()({"x": object()})


def test_tuples_are_arrays_and_non_ascii_is_kept_or_escaped() -> None:
    assert encoder()(("é", 2)) == '["\\u00e9",2]'
    assert encoder(ensure_ascii=False)(("é", 2)) == '["é",2]'
