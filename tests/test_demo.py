"""``testmesh-reconciler demo --once``: the newcomer's first command works end to end."""

from __future__ import annotations

import subprocess
import sys


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
