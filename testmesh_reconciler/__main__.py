"""``python -m testmesh_reconciler``: the same entry point as the console script."""

from __future__ import annotations

from testmesh_reconciler.cli import main

raise SystemExit(main())
