"""``serve`` settings: the DESIGN.md flag table, flag over env, validation messages;
and the log redaction every daemon line goes through."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from testmesh_reconciler.cli_serve import register
from testmesh_reconciler.config.model import SecretValue
from testmesh_reconciler.errors import UsageError
from testmesh_reconciler.log import redact, redact_url
from testmesh_reconciler.settings import SERVE_FLAGS, add_serve_arguments, settings_from

DESIGN = Path(__file__).resolve().parents[3] / "shared" / "DESIGN.md"


def build(argv: list[str], environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(argv), environ or {}, hostname=lambda: "box")


def test_defaults() -> None:
    s = build(["--config-repo", "https://g/x.git"])
    assert (s.branch, s.path, s.listen_host, s.listen_port) == ("main", "", "0.0.0.0", 5016)
    assert s.data_dir == Path("data") and s.clone_dir == Path("data/config-repo")
    assert s.public_url == "http://box:5016" and s.public_url_defaulted
    assert (s.poll_interval, s.grace_period, s.max_body_bytes) == (60.0, 30.0, 5_242_880)
    assert (s.max_concurrent_runs, s.max_queued_runs, s.dedup_window) == (4, 1000, 3600.0)
    assert (s.reap_interval, s.provision_timeout, s.run_lease) == (30.0, 600.0, 30.0)
    assert s.status_give_up_after == 86400.0
    assert s.config_webhook_secret is None and s.api_token is None and s.database_url is None
    assert s.private_key_files == ()


def test_flag_wins_over_env_and_env_fills_the_rest() -> None:
    env = {"TESTMESH_CONFIG_REPO": "/env/repo", "TESTMESH_BRANCH": "env-branch",
           "TESTMESH_POLL_INTERVAL": "5", "TESTMESH_PRIVATE_KEY_FILE": "/k/a, /k/b",
           "TESTMESH_CONFIG_WEBHOOK_SECRET": "hook", "TESTMESH_LISTEN": "127.0.0.1:9000",
           "TESTMESH_PUBLIC_URL": "https://tm.example.com/"}
    s = build(["--branch", "flag-branch", "--listen", "[::1]:5017"], env)
    assert s.config_repo == "/env/repo" and s.branch == "flag-branch"
    assert s.poll_interval == 5.0 and s.private_key_files == ("/k/a", "/k/b")
    assert isinstance(s.config_webhook_secret, SecretValue)
    assert s.config_webhook_secret.reveal() == "hook"
    assert (s.listen_host, s.listen_port, s.listen) == ("::1", 5017, "[::1]:5017")
    assert s.public_url == "https://tm.example.com" and not s.public_url_defaulted
    s2 = build(["--private-key", "/x", "--private-key", "/y"], env)
    assert s2.private_key_files == ("/x", "/y")
    assert "hook" not in repr(s)


@pytest.mark.parametrize(("argv", "message"), [
    ([], "--config-repo"),
    (["--config-repo", "x", "--listen", "nope"], "--listen 'nope'"),
    (["--config-repo", "x", "--listen", "h:99999"], "between 0 and 65535"),
    (["--config-repo", "x", "--listen", "::1:80"], "brackets"),
    (["--config-repo", "x", "--poll-interval", "soon"], "--poll-interval 'soon'"),
    (["--config-repo", "x", "--poll-interval", "-1"], "0 or more"),
    (["--config-repo", "x", "--max-body-bytes", "0"], "1 or more"),
    (["--config-repo", "x", "--run-lease", "0"], "more than 0"),
    (["--config-repo", "x", "--public-url", "tm.example.com"], "http(s) URL"),
    (["--config-repo", "x", "--path", "../up"], "inside the config repo"),
    (["--config-repo", "x", "--config-webhook-secret", ""], "empty"),
])
def test_bad_values_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        build(argv)


def test_env_error_names_the_env_var() -> None:
    with pytest.raises(UsageError, match="TESTMESH_GRACE_PERIOD"):
        build(["--config-repo", "x"], {"TESTMESH_GRACE_PERIOD": "long"})


@pytest.mark.skipif(not DESIGN.exists(), reason="needs ../shared/DESIGN.md")
def test_every_flag_of_the_design_table_exists_with_its_env_var() -> None:
    row = r"^\s*\|\s*`(--[a-z-]+)[^`]*`[^|]*\|\s*`(TESTMESH_[A-Z_]+)`"
    rows = re.findall(row, DESIGN.read_text(), re.M)
    assert len(rows) == 22
    assert {(f.flag, f.env) for f in SERVE_FLAGS} == set(rows)


def test_register_adds_serve_to_a_cli() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["serve", "--config-repo", "x", "--grace-period", "3"])
    assert args.command == "serve" and callable(args.func) and args.grace_period == "3"


def test_redaction_by_type_key_and_url() -> None:
    event = redact(None, "info", {
        "event": "x", "value": SecretValue("plain"), "api_token": "abc",
        "authorization": "Bearer abc", "nested": {"password": "p", "ok": 1},
        "items": [SecretValue("s")], "url": "https://user:pw@host/repo.git",
        "webhook_secret_configured": True, "secrets": None})
    assert event == {
        "event": "x", "value": "***", "api_token": "***", "authorization": "***",
        "nested": {"password": "***", "ok": 1}, "items": ["***"],
        "url": "https://***@host/repo.git", "webhook_secret_configured": True,
        "secrets": None}
    assert redact_url("fetch https://a@b/c failed") == "fetch https://***@b/c failed"
