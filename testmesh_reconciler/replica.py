"""This daemon's replica name: one name for run claims, environment leases and presence.

``TESTMESH_REPLICA`` when set, else the host name (a Kubernetes pod's name). It must be
stable across restarts of one process slot (start-up recovery re-queues the runs its own
name claimed) and unique among live replicas: set it per process when several run on one host.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

ENV_VAR = "TESTMESH_REPLICA"
FALLBACK = "testmesh"


def replica_name(environ: Mapping[str, str] | None = None, *,
                 hostname: Callable[[], str] = socket.gethostname) -> str:
    """``TESTMESH_REPLICA``, else the host name, else ``testmesh``."""
    env = os.environ if environ is None else environ
    return (env.get(ENV_VAR) or "").strip() or hostname() or FALLBACK


__all__ = ["ENV_VAR", "FALLBACK", "replica_name"]
