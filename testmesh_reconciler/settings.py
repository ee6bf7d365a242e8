"""The daemon's settings: one frozen ``Settings`` built once from flags and env vars.

``SERVE_FLAGS`` is the table of DESIGN.md section 3 (flag, env var, default); a flag wins
over its env var. ``settings_from(args, environ)`` validates every value and raises
``UsageError`` with a message saying what to fix.
"""

from __future__ import annotations

import argparse
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testmesh_reconciler.errors import UsageError
from testmesh_reconciler.secretvalue import SecretValue

DEFAULT_PORT = 5016


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``serve`` is configured with; immutable once built."""

    #: Git URL, local Git repository or plain directory (watched) holding the declarations.
    config_repo: str
    #: Branch of the config repo to track (fetch + hard reset to it; force-pushes followed).
    branch: str = "main"
    #: Sub-directory of the config repo holding the declarations ("" = the repo root).
    path: str = ""
    #: Interface to listen on (``0.0.0.0`` = all, for a Kubernetes pod).
    listen_host: str = "0.0.0.0"
    #: TCP port (5016 as TestMesh documents it).
    listen_port: int = DEFAULT_PORT
    #: Directory for the config clone (``config-repo/``) and the SQLite store.
    data_dir: Path = Path("./data")
    #: Base URL of the links the daemon hands out (commit status ``target_url``); no
    #: trailing slash. ``public_url_defaulted`` says it was guessed from the host name.
    public_url: str = ""
    public_url_defaulted: bool = True
    #: Seconds between fetches of the config repo (the backstop of the config webhook);
    #: 0 = fetch only on the config webhook. A plain directory is watched regardless.
    poll_interval: float = 60.0
    #: Runtime store; ``None`` = SQLite in the data dir, ``postgresql://...`` for replicas.
    database_url: str | None = field(default=None, repr=False)
    #: HMAC key of the config repo's push webhook; ``None`` = that endpoint answers 403.
    config_webhook_secret: SecretValue | None = field(default=None, repr=False)
    #: Bearer token for manual runs and deletes; ``None`` = those answer 403.
    api_token: SecretValue | None = field(default=None, repr=False)
    #: Private key files that open ``{sealed: ...}`` values (several = rotation).
    private_key_files: tuple[str, ...] = ()
    #: File holding an HTTPS token for a private config repo (re-read at each fetch).
    config_repo_token_file: str | None = None
    #: SSH private key file for a private config repo.
    config_repo_ssh_key_file: str | None = None
    #: Seconds of failed commit-status retries (5xx, network) before giving up.
    status_give_up_after: float = 86400.0
    #: Seconds runs get to finish on SIGTERM before they are cancelled.
    grace_period: float = 30.0
    #: Largest webhook body accepted, in bytes (413 above it), enforced while reading.
    max_body_bytes: int = 5_242_880
    #: Runs executing at once (they are I/O bound; this bounds load on the tested system).
    max_concurrent_runs: int = 4
    #: Queued runs before webhooks answer 429 (back-pressure instead of unbounded memory).
    max_queued_runs: int = 1000
    #: Seconds in which a repeated delivery (Gitea "redeliver") starts nothing.
    dedup_window: float = 3600.0
    #: Seconds between passes of the environment TTL reaper.
    reap_interval: float = 30.0
    #: Seconds to wait for a provisioned environment to become Healthy.
    provision_timeout: float = 600.0
    #: Seconds a replica's claim on a run lasts without a heartbeat.
    run_lease: float = 30.0

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    @property
    def clone_dir(self) -> Path:
        """Where the config repo is cloned."""
        return self.data_dir / "config-repo"


# -- value parsers --------------------------------------------------------------------------
def _text(flag: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise UsageError(f"{flag} must not be empty")
    return value


def _seconds(*, allow_zero: bool) -> Callable[[str, str], float]:
    def parse(flag: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{flag} {raw!r}: expected a number of seconds, e.g. 60") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            least = "0 or more" if allow_zero else "more than 0"
            raise UsageError(f"{flag} {raw!r}: expected {least} seconds")
        return value

    return parse


def _positive_int(flag: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{flag} {raw!r}: expected a whole number, e.g. 4") from None
    if value < 1:
        raise UsageError(f"{flag} {raw!r}: expected 1 or more")
    return value


def _secret(flag: str, raw: str) -> SecretValue:
    if not raw:
        raise UsageError(f"{flag} is set but empty (unset it to disable what it protects)")
    return SecretValue(raw)


def _key_files(flag: str, raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def parse_listen(raw: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:5016`` for IPv6, ``:5016`` for all interfaces)."""
    text = raw.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise UsageError(f"--listen {raw!r}: expected host:port, e.g. 0.0.0.0:5016")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"--listen {raw!r}: write an IPv6 address in brackets, e.g. [::]:5016")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--listen {raw!r}: the port must be a number, e.g. 0.0.0.0:5016") \
            from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--listen {raw!r}: the port must be between 0 and 65535")
    return host or "0.0.0.0", port


def _url(flag: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise UsageError(f"{flag} {raw!r}: expected an http(s) URL, e.g. "
                         "https://testmesh.example.com")
    return value


@dataclass(frozen=True, slots=True)
class Flag:
    """One ``serve`` flag of DESIGN.md section 3."""

    flag: str
    env: str
    help: str
    parse: Callable[[str, str], Any] | None = None  # None = kept as text
    repeatable: bool = False
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


SERVE_FLAGS: tuple[Flag, ...] = (
    Flag("--config-repo", "TESTMESH_CONFIG_REPO",
         "Git URL, local Git repo, or plain directory (watched); required", _text,
         metavar="URL|PATH"),
    Flag("--branch", "TESTMESH_BRANCH", "branch to track (default: main)", _text),
    Flag("--path", "TESTMESH_PATH", "sub-directory holding the declarations (default: repo root)"),
    Flag("--listen", "TESTMESH_LISTEN", "host:port (default: 0.0.0.0:5016)", metavar="HOST:PORT"),
    Flag("--data-dir", "TESTMESH_DATA_DIR", "clone and SQLite store (default: ./data)", _text),
    Flag("--public-url", "TESTMESH_PUBLIC_URL",
         "base of target_url links (default: http://<host name>:<port>)", _url),
    Flag("--poll-interval", "TESTMESH_POLL_INTERVAL",
         "seconds between fetches (default: 60; 0 = only on the config webhook)",
         _seconds(allow_zero=True)),
    Flag("--database-url", "TESTMESH_DATABASE_URL",
         "postgresql://... for several replicas (default: SQLite in the data dir)", _text),
    Flag("--config-webhook-secret", "TESTMESH_CONFIG_WEBHOOK_SECRET",
         "HMAC key of the config repo's push webhook (unset: that endpoint answers 403)",
         _secret),
    Flag("--api-token", "TESTMESH_API_TOKEN",
         "Bearer token for manual runs and deletes (unset: those answer 403)", _secret),
    Flag("--private-key", "TESTMESH_PRIVATE_KEY_FILE",
         "private key that opens sealed values (repeatable; env: comma-separated)",
         repeatable=True, metavar="FILE"),
    Flag("--config-repo-token-file", "TESTMESH_CONFIG_REPO_TOKEN_FILE",
         "HTTPS token for a private config repo", _text, metavar="FILE"),
    Flag("--config-repo-ssh-key-file", "TESTMESH_CONFIG_REPO_SSH_KEY_FILE",
         "SSH key for a private config repo", _text, metavar="FILE"),
    Flag("--status-give-up-after", "TESTMESH_STATUS_GIVE_UP_AFTER",
         "seconds of failed status retries before giving up (default: 86400)",
         _seconds(allow_zero=False)),
    Flag("--grace-period", "TESTMESH_GRACE_PERIOD",
         "seconds to finish runs on SIGTERM (default: 30)", _seconds(allow_zero=True)),
    Flag("--max-body-bytes", "TESTMESH_MAX_BODY_BYTES",
         "webhook body cap, 413 above it (default: 5242880)", _positive_int),
    Flag("--max-concurrent-runs", "TESTMESH_MAX_CONCURRENT_RUNS",
         "runs executing at once (default: 4)", _positive_int),
    Flag("--max-queued-runs", "TESTMESH_MAX_QUEUED_RUNS",
         "queued runs before webhooks answer 429 (default: 1000)", _positive_int),
    Flag("--dedup-window", "TESTMESH_DEDUP_WINDOW",
         "seconds in which a repeated delivery starts nothing (default: 3600)",
         _seconds(allow_zero=True)),
    Flag("--reap-interval", "TESTMESH_REAP_INTERVAL",
         "seconds between TTL reaper passes (default: 30)", _seconds(allow_zero=False)),
    Flag("--provision-timeout", "TESTMESH_PROVISION_TIMEOUT",
         "seconds to wait for an environment to become Healthy (default: 600)",
         _seconds(allow_zero=False)),
    Flag("--run-lease", "TESTMESH_RUN_LEASE",
         "seconds a replica's claim on a run lasts without a heartbeat (default: 30)",
         _seconds(allow_zero=False)),
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``serve`` flag; defaults are applied later by ``settings_from``."""
    for spec in SERVE_FLAGS:
        parser.add_argument(
            spec.flag, dest=spec.dest, metavar=spec.metavar,
            action="append" if spec.repeatable else "store", default=None,
            help=f"{spec.help} [env: {spec.env}]")


def _raw(args: argparse.Namespace, environ: Mapping[str, str], spec: Flag) -> str | None:
    value = getattr(args, spec.dest, None)
    if value is not None:
        return ",".join(value) if spec.repeatable else str(value)
    env = environ.get(spec.env)
    return env if env not in (None, "") else None


def settings_from(args: argparse.Namespace, environ: Mapping[str, str], *,
                  hostname: Callable[[], str] = socket.gethostname) -> Settings:
    """Build and validate the ``Settings`` (flag > env var > default)."""
    values: dict[str, Any] = {}
    for spec in SERVE_FLAGS:
        raw = _raw(args, environ, spec)
        if raw is None:
            continue
        name = spec.flag if getattr(args, spec.dest, None) is not None else spec.env
        if spec.repeatable:
            values[spec.dest] = _key_files(name, raw)
        elif spec.parse is not None:
            values[spec.dest] = spec.parse(name, raw)
        else:
            values[spec.dest] = raw
    if "config_repo" not in values:
        raise UsageError("--config-repo (or TESTMESH_CONFIG_REPO) is required: a Git URL, a "
                         "local Git repository or a directory of declarations")
    host, port = parse_listen(values.pop("listen", f"0.0.0.0:{DEFAULT_PORT}"))
    path = values.pop("path", "").strip().strip("/")
    if ".." in path.split("/"):
        raise UsageError(f"--path {path!r}: must stay inside the config repo (no '..')")
    public_url = values.pop("public_url", None)
    defaulted = public_url is None
    if public_url is None:
        public_url = f"http://{hostname()}:{port}"
    return Settings(
        config_repo=values.pop("config_repo"),
        branch=values.pop("branch", "main"),
        path=path,
        listen_host=host,
        listen_port=port,
        data_dir=Path(values.pop("data_dir", "./data")),
        public_url=public_url,
        public_url_defaulted=defaulted,
        private_key_files=values.pop("private_key", ()),
        **values,
    )


__all__ = ["SERVE_FLAGS", "Flag", "Settings", "add_serve_arguments", "parse_listen",
           "settings_from"]
