"""Real Git config repos for the daemon tests and the reload benchmark.

``ConfigRepo`` drives the ``git`` CLI in a directory (write, commit, rewrite history);
``declarations`` generates valid YAML for any number of flows, suites and rules.
"""

from __future__ import annotations

import hashlib
import hmac
import subprocess
from pathlib import Path

#: Env vars the generated integrations read their secrets from.
SECRET_ENV = {"TM_TEST_GITEA_TOKEN": "gitea-token-value",
              "TM_TEST_GITEA_HOOK": "gitea-hook-value"}

INTEGRATION = """\
apiVersion: testmesh.io/v1alpha1
kind: Integration
metadata: {name: gitea}
spec:
  type: git
  provider: gitea
  config: {url: "https://gitea.example.com"}
  secrets:
    token: {env: TM_TEST_GITEA_TOKEN}
    webhook_secret: {env: TM_TEST_GITEA_HOOK}
"""


def flow(name: str, message: str = "hello") -> str:
    return f"""\
apiVersion: testmesh.io/v1alpha1
kind: Flow
metadata: {{name: {name}}}
spec:
  name: {name}
  steps:
    - {{id: s1, action: log, config: {{message: "{message}"}}}}
"""


def suite(name: str, flows: list[str]) -> str:
    entries = ", ".join(f"{{flow: {f}, order: 0}}" for f in flows)
    return f"""\
apiVersion: testmesh.io/v1alpha1
kind: Suite
metadata: {{name: {name}}}
spec:
  flows: [{entries}]
"""


def rule(name: str, suite_name: str, repository: str = "acme/shop") -> str:
    return f"""\
apiVersion: testmesh.io/v1alpha1
kind: TriggerRule
metadata: {{name: {name}}}
spec:
  integration: gitea
  repository: {repository}
  event_types: [push]
  suite: {suite_name}
"""


def generated_tree(declarations: int, *, per_file: int = 10) -> dict[str, str]:
    """About ``declarations`` declarations: one integration, then groups of 8 flows,
    1 suite and 1 rule, ``per_file`` documents per file."""
    docs: list[str] = [INTEGRATION]
    i = 0
    while len(docs) < declarations:
        names = [f"flow-{i}-{k}" for k in range(8)]
        docs.extend(flow(n) for n in names)
        docs.append(suite(f"suite-{i}", names))
        docs.append(rule(f"rule-{i}", f"suite-{i}", repository=f"acme/repo-{i}"))
        i += 1
    docs = docs[:declarations] if declarations > 10 else docs
    files: dict[str, str] = {}
    for n in range(0, len(docs), per_file):
        files[f"decl/group-{n // per_file:05d}.yaml"] = "---\n".join(docs[n:n + per_file])
    return files


class ConfigRepo:
    """A working Git repository made with the ``git`` CLI (branch ``main``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.email=test@example.com", "-c", "user.name=test",
             "-c", "commit.gpgsign=false", *args],
            cwd=self.path, check=True, capture_output=True, text=True).stdout.strip()

    def write(self, rel: str, text: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, "utf-8")

    def write_many(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            self.write(rel, text)

    def remove(self, rel: str) -> None:
        (self.path / rel).unlink()

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def rewrite_last(self, rel: str, text: str, message: str = "rewritten") -> str:
        """Drop the last commit and make another in its place (a force-push upstream)."""
        self.git("reset", "-q", "--hard", "HEAD~1")
        self.write(rel, text)
        return self.commit(message)


def basic_repo(path: Path) -> ConfigRepo:
    """A repo with an integration, two flows, a suite and a rule, committed."""
    repo = ConfigRepo(path)
    repo.write("integrations/gitea.yaml", INTEGRATION)
    repo.write("flows/a.yaml", flow("a") + "---\n" + flow("b"))
    repo.write("suites/smoke.yaml", suite("smoke", ["a", "b"]))
    repo.write("rules/shop.yaml", rule("shop-push", "smoke"))
    repo.commit("initial config")
    return repo


BAD_SUITE = """\
apiVersion: testmesh.io/v1alpha1
kind: Suite
metadata: {name: smoke}
spec:
  flows: [{flow: a, order: 0}, {flow: no-such-flow, order: 1}]
"""


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push_body(sha: str, ref: str = "refs/heads/main") -> bytes:
    import json

    return json.dumps({"ref": ref, "after": sha, "before": "0" * 40,
                       "repository": {"full_name": "acme/config"}}).encode()
