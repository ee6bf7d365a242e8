"""The one ``Loader`` the daemon and ``validate`` both use: config's pure loader plus the
runner's expression grammar, so a bad assertion is a load problem, not a run-time failure.

Here, at the dispatcher/reload layer, because it joins ``config`` and ``runner`` (neither
may import the other); ``reload`` and ``validate`` import it from here.
"""

from __future__ import annotations

from testmesh_reconciler.config.build import ExpressionChecker
from testmesh_reconciler.config.loader import Loader


def expression_checker() -> ExpressionChecker:
    """The runner's expression grammar, used at load time to reject bad assertions."""
    from testmesh_reconciler.runner.expressions import ExpressionError, parse

    def check(text: str) -> str | None:
        try:
            parse(text)
        except ExpressionError as exc:
            return f"invalid expression {text!r}: {exc}"
        return None

    return check


def make_loader() -> Loader:
    """A ``Loader`` with the default schemas and the runner's expression checker."""
    return Loader(check_expression=expression_checker())


__all__ = ["expression_checker", "make_loader"]
