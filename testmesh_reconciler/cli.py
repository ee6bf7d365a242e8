"""Command-line entry point: parses arguments and maps outcomes to exit codes.

Exit codes: 0 ok, 1 the thing checked or run failed, 2 usage or config error. Every
sub-command lives in its own module; this file only wires them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from testmesh_reconciler import __version__
from testmesh_reconciler.config.problems import ConfigError, render_text
from testmesh_reconciler.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="testmesh-reconciler", description=(
        "GitOps reconciler for TestMesh test automation declared in Git."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub: Any = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("validate", help="validate a config repo (dry-run); exit 1 on problems")
    v.add_argument("path", nargs="?", default=".", help="declarations root (default: .)")
    v.add_argument("--format", choices=("text", "json"), default="text")
    v.add_argument("--base", metavar="REF", help="also print the plan against this Git revision")
    v.add_argument("--private-key", metavar="FILE", action="append", default=[],
                   help="prove that sealed values open with this key (repeatable)")
    v.add_argument("--verbose", action="store_true", help="also list ignored YAML documents")
    v.set_defaults(func=_validate)

    from testmesh_reconciler import cli_secrets, cli_serve, run_command
    from testmesh_reconciler.demo import command as demo_command

    cli_serve.register(sub)
    run_command.register(sub)
    cli_secrets.register(sub)
    demo_command.register(sub)
    return parser


def _validate(args: argparse.Namespace) -> int:
    from testmesh_reconciler.validate import run_validate

    return run_validate(args.path, fmt=args.format, base=args.base,
                        private_keys=args.private_key, verbose=args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except UsageError as exc:
        sys.stderr.write(f"testmesh-reconciler: error: {exc}\n")
        return 2
    except ConfigError as exc:
        sys.stderr.write(render_text(exc.problems))
        return 2
    except KeyboardInterrupt:
        return 130
