"""Fixtures: the daemon as a real subprocess on 127.0.0.1 and a free port, ended by PID.

``start_daemon(*args)`` runs ``serve_main`` with the given flags (JSON logs to a file in
``tmp_path``) and waits, bounded, until ``/healthz`` answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .repo import SECRET_ENV

SERVE = ("import sys; from testmesh_reconciler.cli_serve import serve_main; "
         "sys.exit(serve_main(sys.argv[1:]))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=5)

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def status(self) -> dict[str, Any]:
        return dict(self.get("/api/v1/status").json())

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 15) -> float:
        """Poll ``check`` (bounded); seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if check():
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.logs()}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; status={self._safe_status()}\n"
                             f"{self.logs()[-3000:]}")

    def wait_for_revision(self, sha: str, timeout: float = 15) -> float:
        return self.wait_for(lambda: self.status()["revision"] == sha, f"revision {sha}",
                             timeout)

    def _safe_status(self) -> object:
        try:
            return self.status()
        except Exception as exc:
            return exc

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return int(self.proc.returncode)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Daemon:
        port = free_port()
        n = len(started)
        log = tmp_path / f"daemon-{n}.log"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TESTMESH_")}
        full_env = {**inherited, **SECRET_ENV, **(env or {})}
        argv = [sys.executable, "-c", SERVE, "--listen", f"127.0.0.1:{port}",
                "--data-dir", str(tmp_path / f"data-{n}"), *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        daemon = Daemon(proc, port, log)
        started.append(daemon)
        daemon.wait_for(lambda: daemon.get("/healthz").status_code == 200, "/healthz")
        return daemon

    yield start
    for daemon in started:  # every subprocess ended by its PID
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        daemon.proc.wait(10)
        daemon.http.close()
