"""The ``serve`` sub-command: its flags (DESIGN.md section 3) and its entry point.

``register(subparsers)`` adds it to the main CLI; ``serve_main(argv)`` parses only the
serve flags (tests and ``python -c`` use it). Exit codes: 0 clean stop, 1 failed to
start, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from testmesh_reconciler.errors import UsageError
from testmesh_reconciler.settings import add_serve_arguments, settings_from

HELP = "run the daemon: track the config repo, serve webhooks, run suites"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the CLI's sub-parsers (``cli.build_parser`` calls this)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help=HELP, description=HELP + ". Every flag also reads TESTMESH_<FLAG>; "
        "a flag wins over its env var.")
    add_serve_arguments(parser)
    parser.set_defaults(func=handler)
    return parser


def handler(args: argparse.Namespace) -> int:
    from testmesh_reconciler.daemon import serve

    settings = settings_from(args, os.environ)
    return serve(settings)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``testmesh-reconciler serve`` on its own (flags only, no sub-command word)."""
    parser = _Parser(prog="testmesh-reconciler serve", description=HELP)
    add_serve_arguments(parser)
    try:
        return handler(parser.parse_args(argv))
    except UsageError as exc:
        sys.stderr.write(f"testmesh-reconciler: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(serve_main())
