"""Golden tests: the exact text ``validate`` prints for broken config repos.

Each ``golden/<case>/repo`` is a small config repo with mistakes; ``expected.txt`` is
the whole reviewed output. A change to any message shows up here as a diff.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from testmesh_reconciler.validate import run_validate

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "repo").is_dir())


def _validate(path: Path, fmt: str = "text") -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_validate(str(path), fmt=fmt, base=None, private_keys=(), verbose=False,
                        out=out, err=err)
    return code, out.getvalue()


def test_there_are_enough_golden_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", CASES)
def test_golden_text(case: str) -> None:
    code, text = _validate(GOLDEN / case / "repo")
    assert text == (GOLDEN / case / "expected.txt").read_text("utf-8")
    has_error = any(": warning: " not in line for line in text.splitlines())
    assert code == (1 if has_error else 0)


@pytest.mark.parametrize("case", CASES)
def test_golden_json_matches_text(case: str) -> None:
    """``--format json`` carries the same problems as the text, field by field."""
    _, text = _validate(GOLDEN / case / "repo")
    code, raw = _validate(GOLDEN / case / "repo", fmt="json")
    items = json.loads(raw)
    assert code == 1
    rendered = [
        f"{p['file']}:{p['line']}:{p['column']}: {p['path']}: "
        + ("warning: " if p.get("severity") == "warning" else "") + p["message"]
        for p in items
    ]
    assert rendered == text.splitlines()
    for p in items:
        assert set(p) >= {"file", "line", "column", "path", "message"}


def test_plaintext_secret_value_is_never_echoed() -> None:
    _, text = _validate(GOLDEN / "13-plaintext-secret" / "repo")
    assert "3f9a1c0e2b7d4e5f" not in text
    assert "secrets seal" in text


def test_example_config_repo_is_valid() -> None:
    code, text = _validate(Path(__file__).parents[2] / "examples" / "config-repo")
    assert (code, text) == (0, "")
