"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temp dir, ``postgres`` on a free
127.0.0.1 port (fsync off), one per session, stopped by its PID at the end.

As root, initdb/postgres run as the ``postgres`` user (or ``nobody``) via ``subprocess``'s
``user=``; tests skip only when no PostgreSQL binaries exist (``scripts/pg-ensure.sh``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

SUPERUSER = "testmesh"
START_TIMEOUT = 30.0


def find_bindir() -> Path | None:
    """The directory with ``initdb`` and ``postgres``: pg_config's, else the newest Debian one."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout
            candidates.append(Path(out.strip()))
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += [Path(p) for p in versions]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def _run_as() -> dict[str, Any]:
    """``subprocess`` keyword arguments that drop root (initdb and postgres refuse it)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root and neither 'postgres' nor 'nobody' exists")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    """A running throwaway cluster; ``create_database`` hands each test a fresh database."""

    bindir: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    databases: list[str] = field(default_factory=list)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop a database made by ``create_database`` (closing leftover sessions)."""
        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @property
    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_cluster(bindir: Path) -> PgCluster:
    root = Path(tempfile.mkdtemp(prefix="testmesh-pg-"))
    run_as = _run_as()
    if run_as:
        os.chown(root, run_as["user"], run_as["group"])
    data = root / "data"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
         "--no-locale", "-E", "UTF8", "--no-sync"],
        capture_output=True, text=True, cwd=root, env=env, check=False, **run_as,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    last_error = ""
    for _ in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        log = open(root / "postgres.log", "wb")  # noqa: SIM115 - postgres writes to it
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
             "-k", str(root), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=300",
             "-c", "shared_buffers=64MB", "-c", "timezone=UTC"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
            start_new_session=True, **run_as,
        )  # fmt: skip
        log.close()
        cluster = PgCluster(bindir=bindir, root=root, port=port, process=process)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with psycopg.connect(cluster.dsn(), connect_timeout=2):
                    return cluster
            except psycopg.OperationalError as exc:
                last_error = str(exc)
                time.sleep(0.05)
        last_error = f"{last_error}\n{cluster.log}"
        stop_cluster(cluster, remove=False)
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"postgres did not start: {last_error}")


def stop_cluster(cluster: PgCluster, *, remove: bool = True) -> None:
    """Fast shutdown (SIGINT) of our postgres by PID; SIGKILL if it lingers."""
    process = cluster.process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if remove:
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's PostgreSQL cluster (skips only when PostgreSQL is not installed)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, postgres) not found; run scripts/pg-ensure.sh "
            "to install Debian's postgresql package"
        )
    cluster = start_cluster(bindir)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database on the session cluster, dropped after the test."""
    dsn = pg_cluster.create_database()
    yield dsn
    pg_cluster.drop_database(dsn)
