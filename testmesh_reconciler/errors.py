"""The package's exceptions: one root, few branches.

Validation problems are data (``config.problems.Problem``); ``config.problems.ConfigError``
carries them across a boundary (it lives there: this module sits below ``config``).
One place per surface (CLI, HTTP) maps these to answers.
"""

from __future__ import annotations


class TestmeshError(Exception):
    """Root of every error this package raises on purpose."""

    __test__ = False  # not a pytest test class


class UsageError(TestmeshError):
    """The user asked for something that cannot be done as asked (CLI exit 2)."""


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
