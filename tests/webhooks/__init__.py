"""Helpers for the webhook and matching tests: small config repos loaded into snapshots.

``load_snapshot`` starts from ``examples/config-repo`` (or nothing) plus extra files, and
opens every webhook secret to the value given per integration name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from testmesh_reconciler.config.loader import files_from_bytes
from testmesh_reconciler.config.model import SecretRef, SecretValue, Snapshot
from testmesh_reconciler.loading import make_loader
from tests.testing.webhook_payloads import SAMPLE_SECRET

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "config-repo"
HEAD = "apiVersion: testmesh.io/v1alpha1\n"


def example_files() -> dict[str, bytes]:
    return {str(p.relative_to(EXAMPLES)): p.read_bytes()
            for p in EXAMPLES.rglob("*") if p.is_file()}


def integration(name: str, provider: str, url: str, *, secret: bool = True,
                require: bool | None = None, app_filter: str | None = None,
                workspace: str = "default") -> str:
    config = f'url: "{url}"'
    if app_filter is not None:
        config += f', app_filter: "{app_filter}"'
    if require is not None:
        config += f", require_webhook_secret: {str(require).lower()}"
    secrets = "  secrets:\n    webhook_secret: {env: X}\n" if secret else ""
    return (HEAD + f"kind: Integration\nmetadata: {{name: {name}, workspace: {workspace}}}\n"
            f"spec:\n  type: git\n  provider: {provider}\n  config: {{{config}}}\n" + secrets)


def rule(name: str, repository: str, *, integration: str = "gitea-internal",
         branch_filter: str = "*", events: str = "[push]", actions: str | None = None,
         suite: str = "smoke", enabled: bool = True, workspace: str = "default") -> str:
    extra = f"  pull_request_actions: {actions}\n" if actions is not None else ""
    return (HEAD + f"kind: TriggerRule\nmetadata: {{name: {name}, workspace: {workspace}}}\n"
            f"spec:\n  integration: {integration}\n  repository: {repository}\n"
            f'  branch_filter: "{branch_filter}"\n  event_types: {events}\n{extra}'
            f"  suite: {suite}\n  enabled: {str(enabled).lower()}\n")


def load_snapshot(extra: Mapping[str, str | bytes] | None = None, *,
                  secrets: Mapping[str, str] | None = None, examples: bool = True) -> Snapshot:
    """A snapshot of the examples plus ``extra``; webhook secrets open to ``secrets[name]``
    (default: the contract samples' secret)."""
    files = example_files() if examples else {}
    for path, data in (extra or {}).items():
        files[path] = data.encode() if isinstance(data, str) else data
    values = dict(secrets or {})

    def open_secret(ref: SecretRef) -> SecretValue:
        return SecretValue(values.get(ref.binding.integration, SAMPLE_SECRET))

    result = make_loader().load(files_from_bytes(files), revision="r1", open_secret=open_secret)
    assert result.snapshot is not None, [p.render() for p in result.problems]
    return result.snapshot
