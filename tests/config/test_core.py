"""Unit tests of the pure config core: globs, durations, YAML positions, ids, loading."""

from __future__ import annotations

import uuid

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from testmesh_reconciler.config.durations import parse_duration
from testmesh_reconciler.config.frozen import FrozenDict, freeze, thaw
from testmesh_reconciler.config.globs import GlobError, compile_glob, glob_matches
from testmesh_reconciler.config.loader import Loader, files_from_bytes
from testmesh_reconciler.config.model import (
    SecretValue,
    object_id,
    repo_from_url,
    url_host,
)
from testmesh_reconciler.config.plan import diff
from testmesh_reconciler.config.yamlio import FastSafeLoader, NodeIndex, load_documents


@pytest.mark.parametrize(
    ("pattern", "branch", "matches"),
    [
        ("main", "main", True),
        ("main", "main2", False),
        ("release/*", "release/1.2", True),
        ("release/*", "release/1.2/hotfix", False),
        ("feature/**", "feature/a/b/c", True),
        ("feature/**", "feature", False),
        ("**/fix", "a/b/fix", True),
        ("a/**/b", "a/b", True),
        ("v[0-9]*", "v1.0", True),
        ("v[0-9]*", "vx", False),
        ("[!m]ain", "main", False),
        ("ma?n", "main", True),
        ("ma?n", "ma/n", False),
        ("release.1", "releasex1", False),  # dots are literal
    ],
)
def test_branch_globs(pattern: str, branch: str, matches: bool) -> None:
    compiled = compile_glob(pattern)
    assert not isinstance(compiled, GlobError)
    assert glob_matches(compiled, branch) is matches


def test_lone_star_matches_everything_and_bad_globs_explain() -> None:
    assert compile_glob("*") is None
    unclosed = compile_glob("release/[0-9")
    assert isinstance(unclosed, GlobError) and "unclosed '['" in unclosed.message
    assert isinstance(compile_glob(""), GlobError)


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("1s", 1.0), ("2m", 120.0), ("1h30m", 5400.0), ("1.5s", 1.5), (3, 3.0),
    ("5 seconds", None), ("", None), ("1x", None), (-1, None)])
def test_go_durations(text: str | int, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_object_ids_are_uuid5_of_kind_workspace_name() -> None:
    expected = uuid.uuid5(uuid.NAMESPACE_URL, "testmesh.io/Suite/default/smoke")
    assert object_id("Suite", "default", "smoke") == expected


@pytest.mark.parametrize(("url", "host", "repo"), [
    ("https://gitea.internal/acme/shop.git", "gitea.internal", "acme/shop"),
    ("https://Gitea.Internal:3000/acme/shop", "gitea.internal:3000", "acme/shop"),
    ("ssh://git@gitea.internal:2222/acme/shop.git", "gitea.internal:2222", "acme/shop"),
    ("git@gitea.internal:acme/shop.git", "gitea.internal", "acme/shop"),
])
def test_repo_urls(url: str, host: str, repo: str) -> None:
    assert url_host(url) == host
    assert repo_from_url(url) == repo


def test_secret_value_never_prints_itself() -> None:
    secret = SecretValue("hunter2")
    for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
        assert "hunter2" not in text
    assert secret.reveal() == "hunter2"


def test_freeze_and_thaw_round_trip() -> None:
    value = {"a": [1, {"b": "c"}], "d": None}
    frozen = freeze(value)
    assert isinstance(frozen, FrozenDict) and isinstance(frozen["a"], tuple)
    assert hash(frozen) == hash(freeze(value))
    assert thaw(frozen) == value


def test_document_start_lines_and_positions() -> None:
    data = b"# comment\napiVersion: a\n---\n\n# c\nkind: b\nlist:\n  - x\n  - y\n"
    docs = load_documents(data)
    assert not isinstance(docs, tuple) and [d.line for d in docs] == [2, 6]  # type: ignore[union-attr]
    index = NodeIndex(data)
    assert index.position(1, ["list", 1]) == (9, 5)
    assert index.position(1, ["list"], key=True) == (7, 1)
    assert index.position(1, ["missing"]) == (6, 1)


yaml_scalars = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(),
                         st.floats(allow_nan=False, allow_infinity=False))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(yaml_values)
def test_fast_loader_equals_safe_load(value: object) -> None:
    text = yaml.safe_dump(value)
    assert yaml.load(text, Loader=FastSafeLoader) == yaml.safe_load(text)


def test_fast_loader_keeps_yaml_features() -> None:
    text = "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2\nalias: *b\nwhen: 2024-01-01\non: yes\n"
    assert yaml.load(text, Loader=FastSafeLoader) == yaml.safe_load(text)


def test_yaml_errors_keep_their_line() -> None:
    result = load_documents(b"a: 1\nb: [1, 2\n")
    assert not isinstance(result, list)
    assert result.line == 3 and "YAML syntax error" in result.message


SUITE = b"""apiVersion: testmesh.io/v1alpha1
kind: Suite
metadata: {name: smoke}
spec:
  flows: [{flow: health}]
"""
FLOW = b"""apiVersion: testmesh.io/v1alpha1
kind: Flow
metadata: {name: health}
spec:
  name: health
  steps: [{id: ping, action: log, config: {message: hi}}]
"""


def test_loader_parses_only_changed_files() -> None:
    loader = Loader()
    first = loader.load(files_from_bytes({"suite.yaml": SUITE, "flow.yaml": FLOW}))
    assert first.ok and first.parsed_files == 2
    again = loader.load(files_from_bytes({"suite.yaml": SUITE, "flow.yaml": FLOW}))
    assert again.ok and again.parsed_files == 0
    changed = loader.load(files_from_bytes({"suite.yaml": SUITE.replace(b"smoke", b"fast"),
                                            "flow.yaml": FLOW}))
    assert changed.ok and changed.parsed_files == 1
    assert changed.snapshot is not None and ("default", "fast") in changed.snapshot.suites


def test_snapshot_is_none_on_error_but_declarations_are_kept() -> None:
    result = Loader().load(files_from_bytes({"suite.yaml": SUITE}))
    assert result.snapshot is None
    assert [d.name for d in result.declarations] == ["smoke"]
    assert "no Flow named 'health'" in result.problems[0].message


def test_plan_lists_added_changed_removed() -> None:
    base = Loader().load(files_from_bytes({"suite.yaml": SUITE, "flow.yaml": FLOW}))
    head = Loader().load(files_from_bytes({
        "suite.yaml": SUITE.replace(b"flows:", b"description: new\n  flows:"),
        "flow2.yaml": FLOW.replace(b"name: health}", b"name: other}")}))
    plan = diff(base.declarations, head.declarations)
    assert plan.as_json() == {
        "added": [{"kind": "Flow", "workspace": "default", "name": "other"}],
        "changed": [{"kind": "Suite", "workspace": "default", "name": "smoke",
                     "fields": ["spec.description"]}],
        "removed": [{"kind": "Flow", "workspace": "default", "name": "health"}],
    }
