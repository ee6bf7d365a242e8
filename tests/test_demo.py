"""``testmesh-reconciler demo --once``: the newcomer's first command works end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_once_passes() -> None:
    done = subprocess.run([sys.executable, "-m", "testmesh_reconciler", "demo", "--once",
                           "--timeout", "60"], capture_output=True, text=True, timeout=240,
                          check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Demo passed" in out
    for step in ("1. Config repo", "2. Daemon started", "3. Argo CD notification",
                 "4. Gitea push", "5. Commit statuses", "-> commit status pending posted"):
        assert step in out
    assert out.count(": success ") == 2 and out.count(": pending ") == 2
    assert "/suite-runs/" in out


def test_demo_runs_without_git(tmp_path: Path) -> None:
    """With nothing but Python on the PATH the demo tracks a plain directory instead."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = Path(os.path.realpath(sys.executable))
    (bin_dir / "python").symlink_to(python)
    env = {**os.environ, "PATH": str(bin_dir)}
    done = subprocess.run([str(python), "-m", "testmesh_reconciler", "demo", "--once",
                           "--timeout", "60"], capture_output=True, text=True, timeout=240,
                          check=False, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "a plain directory (git is not installed)" in done.stdout
    assert "Demo passed" in done.stdout
