"""``testmesh-reconciler demo``: the whole loop on one machine, nothing else installed.

A config repo made from ``examples/config-repo``, a small shop API to test, a stand-in
for Gitea that accepts commit statuses, and the real daemon between them.
"""

from __future__ import annotations
