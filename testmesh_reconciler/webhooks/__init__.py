"""Inbound webhook receivers, one module per external system, registered in a literal dict.

Each module exposes pure ``verify``, ``select_integration`` and ``parse`` (see
``common.Receiver``); the web layer looks a source up here and never branches on its name.
"""

from __future__ import annotations

from collections.abc import Mapping

from testmesh_reconciler.webhooks import argocd, gitea
from testmesh_reconciler.webhooks.common import Receiver

RECEIVERS: Mapping[str, Receiver] = {"gitea": gitea, "argocd": argocd}

__all__ = ["RECEIVERS"]
