"""The daemon-subprocess fixture of ``tests/daemon``, shared with the dispatch e2e tests."""

from __future__ import annotations

from tests.daemon.conftest import start_daemon

__all__ = ["start_daemon"]
