"""testmesh-reconciler: TestMesh test automation declared in Git, applied by a daemon.

The package is layered (see DESIGN.md section 6): ``config`` is the pure core, the
runner, providers and webhooks sit above it, and the CLI and web app are the shell.
"""

from __future__ import annotations

__version__ = "0.1.0"
