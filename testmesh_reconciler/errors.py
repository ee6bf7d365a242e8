"""The package's exceptions: one root, few branches.

Validation problems are data (``config.problems.Problem``); an exception carries them
only across a boundary. One place per surface (CLI, HTTP) maps these to answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testmesh_reconciler.config.problems import Problem


class TestmeshError(Exception):
    """Root of every error this package raises on purpose."""

    __test__ = False  # not a pytest test class


class UsageError(TestmeshError):
    """The user asked for something that cannot be done as asked (CLI exit 2)."""


class ConfigError(TestmeshError):
    """A set of declarations did not validate; ``problems`` holds all of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0].render() if self.problems else "no problems"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class ProviderError(TestmeshError):
    """An outbound call failed; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool, delay: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.delay = delay
        self.status = status


class WebhookRejected(TestmeshError):
    """An inbound request gets this HTTP status and reason, never a 5xx."""

    def __init__(self, status: int, reason: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
