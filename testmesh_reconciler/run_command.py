"""``testmesh-reconciler run``: a manual suite run from the terminal on a local config tree.

Argparse wiring (``register``), live progress per flow and step, the result table, and
``--format json`` (the SuiteRun resource). Exit 0 passed, 1 failed, 2 usage/config error.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from testmesh_reconciler.config.model import FlowDefinition, Snapshot, Suite
from testmesh_reconciler.config.problems import ConfigError, render_text
from testmesh_reconciler.errors import UsageError
from testmesh_reconciler.runner.flows import NullObserver, RunObserver
from testmesh_reconciler.runner.results import FlowResult, StepResult, SuiteRunResult
from testmesh_reconciler.runner.suites import render_routing, run_suite

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Default timeout of one HTTP request when neither the step nor its config sets one.
DEFAULT_REQUEST_TIMEOUT = 30.0

_MARKS = {"passed": "PASS", "failed": "FAIL", "error": "ERR ", "skipped": "SKIP",
          "cancelled": "CNCL", "completed": "PASS"}
_COLORS = {"passed": "32", "completed": "32", "failed": "31", "error": "31", "skipped": "33",
           "cancelled": "33"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` sub-command; it sets ``func(args) -> exit code``."""
    parser = subparsers.add_parser(
        "run",
        help="run a suite now, from the terminal; exit 1 when it failed",
        description=(
            "Run SUITE from the declarations under --config (a plain directory; Git not "
            "needed) as a manual run: live progress and a result table, or the SuiteRun "
            "record with --format json. Exit 0 passed, 1 failed, 2 usage or config error."
        ),
    )
    parser.add_argument("suite", metavar="SUITE", help="name of the Suite to run")
    parser.add_argument("--config", metavar="DIR", default=".",
                        help="declarations root (default: .)")
    parser.add_argument("--workspace", metavar="W", default="default",
                        help="workspace of the suite (default: default)")
    parser.add_argument("--var", metavar="K=V", action="append", default=[],
                        help="a run variable (repeatable; wins over the suite's variables "
                             "and the flows' env)")
    parser.add_argument("--environment", metavar="NAME",
                        help="a static TestEnvironment whose routing_policy gives "
                             "${service.<name>}")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: progress and a table; json: the SuiteRun resource")
    parser.set_defaults(func=handler)


def parse_variables(items: Sequence[str]) -> dict[str, str]:
    """``K=V`` items to a dict (a later one wins); ``UsageError`` for a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--var {item!r}: expected NAME=VALUE")
        out[name.strip()] = value
    return out


def _find_suite(snapshot: Snapshot, workspace: str, name: str) -> Suite:
    suite: Suite | None = snapshot.suites.get((workspace, name))
    if suite is None:
        names = [n for (ws, n) in snapshot.suites if ws == workspace]
        close = difflib.get_close_matches(name, names, n=1)
        hint = (f" (did you mean {close[0]!r}?)" if close
                else f" (suites there: {', '.join(sorted(names)) or 'none'})")
        raise UsageError(f"no Suite named {name!r} in workspace {workspace!r}{hint}")
    return suite


def environment_routing(snapshot: Snapshot, workspace: str, name: str) -> dict[str, str]:
    """The routing of a static environment for a manual run (which has no trigger
    variables); ``UsageError`` when it cannot be used from the CLI."""
    environment = snapshot.environments.get((workspace, name))
    if environment is None:
        names = sorted(n for (ws, n) in snapshot.environments if ws == workspace)
        raise UsageError(f"no TestEnvironment named {name!r} in workspace {workspace!r} "
                         f"(environments there: {', '.join(names) or 'none'})")
    if environment.provider != "static":
        raise UsageError(
            f"environment {name!r} has provider {environment.provider!r}: provisioning it "
            "needs the daemon (trigger the run through its API or a webhook), or name a "
            "static environment")
    routing, missing = render_routing(environment, {})
    if missing:
        service, unknown = next(iter(missing.items()))
        raise UsageError(
            f"environment {name!r}: routing_policy of {service!r} uses "
            f"{', '.join('${' + n + '}' for n in unknown)}, a trigger variable that a manual "
            "run does not have; use an environment whose routing has no templates")
    return routing


# --------------------------------------------------------------------------------------------
# Terminal output


def _ms(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value} ms" if value < 10_000 else f"{value / 1000:.1f} s"


class TerminalProgress(NullObserver):
    """Prints one line per flow start, finished step and finished flow, as they happen."""

    def __init__(self, out: TextIO, *, color: bool) -> None:
        self.out = out
        self.color = color

    def mark(self, status: str) -> str:
        text = _MARKS.get(status, status.upper()[:4])
        if self.color and status in _COLORS:
            return f"\x1b[{_COLORS[status]}m{text}\x1b[0m"
        return text

    def write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    async def flow_started(self, flow: str, definition: FlowDefinition) -> None:
        named = f" ({definition.name})" if definition.name and definition.name != flow else ""
        self.write(f"==> {flow}{named}")

    async def step_finished(self, flow: str, result: StepResult) -> None:
        self.write(f"  {flow} {self.mark(result.status)} {step_line(result)}")
        if result.on_error is not None:
            self.write(f"  {flow}   on_error {self.mark(result.on_error.status)} "
                       f"{step_line(result.on_error)}")

    async def flow_finished(self, result: FlowResult) -> None:
        self.write(f"<== {result.flow} {self.mark(result.status)} in {_ms(result.duration_ms)}")


def step_line(result: StepResult) -> str:
    parts = [f"{result.phase}/{result.label}"]
    if result.request is not None:
        arrow = f" -> {result.response.status}" if result.response is not None else ""
        parts.append(f"{result.request.method} {result.request.url}{arrow}")
    elif result.action != result.label:
        parts.append(result.action)
    if result.attempts > 1:
        parts.append(f"{result.attempts} attempts")
    if result.status != "skipped":
        parts.append(_ms(result.duration_ms))
    if result.continued:
        parts.append("(on_error: continue)")
    if result.error:
        parts.append(f"- {result.error}")
    elif result.message:
        parts.append(f"- {result.message}")
    return "  ".join(parts)


def result_table(run: SuiteRunResult) -> str:
    """The end-of-run table: one row per flow, then the run's summary line."""
    rows = [("FLOW", "STATUS", "STEPS", "DURATION", "ERROR")]
    for flow in run.flows:
        counted = [s for s in flow.steps if s.status != "skipped"]
        passed = sum(1 for s in counted if s.status == "passed")
        rows.append((flow.flow, flow.status, f"{passed}/{len(flow.steps)}",
                     _ms(flow.duration_ms) if flow.started_at else "-",
                     _one_line(flow.error or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
             for row in rows]
    summary = (f"suite {run.suite}: {run.status}: {run.passed_flows} passed, "
               f"{run.failed_flows} failed, {run.skipped_flows} skipped of {run.total_flows} "
               f"flows in {_ms(run.duration_ms)}")
    if run.error:
        summary += f"\nerror: {run.error}"
    return "\n".join(line.rstrip() for line in lines) + "\n" + summary + "\n"


def _one_line(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


# --------------------------------------------------------------------------------------------
# The command


async def execute(snapshot: Snapshot, suite: Suite, *, variables: Mapping[str, Any],
                  environment: str | None, routing: Mapping[str, str],
                  observer: RunObserver) -> SuiteRunResult:
    """One manual run with its own HTTP client (connection reuse across all steps)."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=DEFAULT_REQUEST_TIMEOUT, limits=limits) as client:
        return await run_suite(
            snapshot, suite, run_id=str(uuid.uuid4()), client=client, trigger_type="manual",
            variables=variables, environment=environment, environment_routing=routing,
            observer=observer,
        )


def handler(args: argparse.Namespace, *, out: TextIO | None = None,
            err: TextIO | None = None) -> int:
    """``run``: load, check, run, report. Returns the exit code (never raises for a
    usage or config error: those print to stderr and give 2)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        variables = parse_variables(args.var)
        from testmesh_reconciler.validate import load_directory

        loaded = load_directory(Path(args.config))
        if loaded.snapshot is None:
            err.write(render_text(loaded.errors))
            err.write(f"testmesh-reconciler: error: the declarations under {args.config} do "
                      "not validate (see above; 'testmesh-reconciler validate' shows all)\n")
            return EXIT_USAGE
        snapshot = loaded.snapshot
        suite = _find_suite(snapshot, args.workspace, args.suite)
        routing = (environment_routing(snapshot, args.workspace, args.environment)
                   if args.environment else {})
    except UsageError as exc:
        err.write(f"testmesh-reconciler: error: {exc}\n")
        return EXIT_USAGE
    except ConfigError as exc:
        err.write(render_text(exc.problems))
        return EXIT_USAGE
    observer: RunObserver
    if args.format == "json":
        observer = (TerminalProgress(err, color=True) if _is_tty(err) else NullObserver())
    else:
        observer = TerminalProgress(out, color=_is_tty(out))
    run = asyncio.run(execute(snapshot, suite, variables=variables,
                              environment=args.environment, routing=routing,
                              observer=observer))
    if args.format == "json":
        out.write(json.dumps(run.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write("\n" + result_table(run))
    return EXIT_PASSED if run.passed else EXIT_FAILED


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
