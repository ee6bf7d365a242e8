"""Headless Chromium for browser tests: find (or install) it, dump a page's DOM, screenshot.

Each call starts one Chromium process with a throw-away profile, bounded by a timeout and
ended by its process group id; nothing else is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "chromium-browser")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
)
TIMEOUT = 60.0


class BrowserError(RuntimeError):
    """Chromium is missing, failed, or took too long."""


def find_chromium() -> str | None:
    for candidate in CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


def ensure_chromium() -> str | None:
    """Chromium's path, installing the Debian package first when it is missing and we may
    (root with apt-get, unless ``TESTMESH_NO_BROWSER_INSTALL`` is set); else None."""
    found = find_chromium()
    if found or os.environ.get("TESTMESH_NO_BROWSER_INSTALL"):
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
    return find_chromium()


def _run(binary: str, args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="tm-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BrowserError(f"chromium took over {timeout:.0f} s: {' '.join(args)}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.returncode != 0:
            raise BrowserError(f"chromium exited {proc.returncode}: {err[-2000:]}")
        return out


def dump_dom(binary: str, url: str, *, timeout: float = TIMEOUT) -> str:
    """The DOM after load, serialised (what a browser made of the page)."""
    return _run(binary, ["--dump-dom", url], timeout)


def screenshot(binary: str, url: str, path: Path, *, width: int = 1280, height: int = 1600,
               timeout: float = TIMEOUT) -> Path:
    """A PNG of the viewport at ``width`` x ``height`` saved at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(binary, [f"--screenshot={path}", f"--window-size={width},{height}", url], timeout)
    if not path.is_file() or path.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot at {path}")
    return path
