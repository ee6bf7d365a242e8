"""``testmesh-reconciler validate`` as users run it: the console script, real Git repos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testmesh_reconciler import secrets
from testmesh_reconciler.config.model import SecretBinding

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "config-repo"
CLI = [sys.executable, "-m", "testmesh_reconciler"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=60,
                          check=False)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.invalid",
                    "-c", "user.name=t", *args], check=True, capture_output=True)


def test_console_script_validates_the_example() -> None:
    exe = shutil.which("testmesh-reconciler")
    assert exe, "the console script is installed with the package"
    done = subprocess.run([exe, "validate", str(EXAMPLE)], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    assert "ok: 15 declarations" in done.stderr


def test_missing_path_and_bad_usage_exit_2() -> None:
    done = run("validate", "/nonexistent/config")
    assert done.returncode == 2
    assert "no such directory" in done.stderr
    assert run("validate", "--format", "xml").returncode == 2


def test_verbose_lists_ignored_documents() -> None:
    done = run("validate", "--verbose", str(EXAMPLE))
    assert done.returncode == 0
    assert ".gitea/workflows/validate.yaml:" in done.stdout and "ignored" in done.stdout


@pytest.fixture
def config_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "config"
    shutil.copytree(EXAMPLE, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def test_base_prints_the_plan(config_repo: Path) -> None:
    suite = config_repo / "suites" / "smoke.yaml"
    suite.write_text(suite.read_text().replace("Post-deploy smoke tests of the shop API",
                                               "Smoke tests"))
    (config_repo / "flows" / "checkout.yaml").unlink()
    done = run("validate", ".", "--base", "HEAD", "--format", "json", cwd=config_repo)
    payload = json.loads(done.stdout)
    assert payload["plan"]["changed"] == [
        {"kind": "Suite", "workspace": "default", "name": "smoke",
         "fields": ["spec.description"]}]
    assert payload["plan"]["removed"] == [{"kind": "Flow", "workspace": "default",
                                           "name": "checkout"}]
    # the regression suite still names the removed flow: a problem, so exit 1
    assert done.returncode == 1
    assert any("no Flow named 'checkout'" in p["message"] for p in payload["problems"])
    text = run("validate", ".", "--base", "HEAD", cwd=config_repo)
    assert "Plan against HEAD:" in text.stdout
    assert "  - Flow default/checkout" in text.stdout
    assert "0 to add, 1 to change, 1 to remove." in text.stdout


def test_base_with_unknown_revision_is_a_usage_error(config_repo: Path) -> None:
    done = run("validate", ".", "--base", "no-such-branch", cwd=config_repo)
    assert done.returncode == 2
    assert "no such revision" in done.stderr


def _seal_into(repo: Path, public: secrets.PublicKey, *, integration: str) -> None:
    sealed = secrets.seal(public, SecretBinding("default", integration, "token"), "tok-123")
    path = repo / "integrations" / "gitea.yaml"
    text = path.read_text()
    start = text.index("token:")
    end = text.index("\n", start)
    path.write_text(text[:start] + f"token: {{sealed: \"{sealed}\"}}" + text[end:])


def test_sealed_values_checked_against_repo_keys(tmp_path: Path) -> None:
    repo = tmp_path / "config"
    shutil.copytree(EXAMPLE, repo)
    pair = secrets.generate_key_pair()
    (repo / ".testmesh").mkdir(exist_ok=True)
    (repo / ".testmesh" / "public-key").write_text(pair.public_text())
    (tmp_path / "private-key").write_text(pair.private_text())
    _seal_into(repo, pair.public, integration="gitea-internal")
    assert run("validate", str(repo)).returncode == 0
    assert run("validate", str(repo), "--private-key", str(tmp_path / "private-key")
               ).returncode == 0

    # a value sealed for another integration is caught once the key can open it
    _seal_into(repo, pair.public, integration="argocd-staging")
    assert run("validate", str(repo)).returncode == 0  # format and key id are fine
    done = run("validate", str(repo), "--private-key", str(tmp_path / "private-key"))
    assert done.returncode == 1
    assert "integrations/gitea.yaml:" in done.stdout and "does not open" in done.stdout

    # a key the repo does not list
    other = secrets.generate_key_pair()
    _seal_into(repo, other.public, integration="gitea-internal")
    done = run("validate", str(repo))
    assert done.returncode == 1
    assert "not one of the repo's public keys" in done.stdout
    assert "tok-123" not in done.stdout + done.stderr
