"""The suite runner: stages of flows in ascending ``order``, a SuiteRun record at the end.

In a stage the ``parallel: true`` flows run concurrently (as one group, where the first of
them is declared) and the others one at a time; every flow of a stage runs, and a stage
with a failed flow ends the run (the flows of later stages are ``skipped``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import httpx

from testmesh_reconciler.config.model import Snapshot, Suite, SuiteFlow, TestEnvironment
from testmesh_reconciler.runner.clock import Clock, Sleep, SystemClock
from testmesh_reconciler.runner.flows import (
    FlowRunner,
    RunContext,
    RunObserver,
    reveal_variables,
)
from testmesh_reconciler.runner.interpolate import Builtins, Scope, interpolate
from testmesh_reconciler.runner.results import (
    FlowResult,
    RunStatus,
    SuiteRunResult,
    TriggerType,
)

_EMPTY: Mapping[str, Any] = {}


def render_routing(environment: TestEnvironment, variables: Mapping[str, Any],
                   builtins: Builtins | None = None
                   ) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """A TestEnvironment's ``routing_policy`` with its templates filled from ``variables``
    (the trigger variables): the routing, and per service the names that did not resolve."""
    scope = Scope.layered(variables)
    builtins = builtins or Builtins.system()
    routing: dict[str, str] = {}
    missing: dict[str, tuple[str, ...]] = {}
    for service, template in environment.routing_policy.items():
        done = interpolate(template, scope, builtins)
        if done.missing:
            missing[service] = done.missing
        else:
            routing[service] = str(done.value)
    return routing, missing


def plan_stage(stage: Sequence[SuiteFlow]) -> list[tuple[SuiteFlow, ...]]:
    """A stage as units run one after another: each non-parallel flow alone, the parallel
    ones together as one unit where the first of them is declared."""
    units: list[tuple[SuiteFlow, ...]] = []
    parallel = tuple(entry for entry in stage if entry.parallel)
    for entry in stage:
        if not entry.parallel:
            units.append((entry,))
        elif entry is parallel[0]:
            units.append(parallel)
    return units


class _SuiteRun:
    def __init__(self, snapshot: Snapshot, suite: Suite, record: SuiteRunResult,
                 context: RunContext, variables: Mapping[str, Any],
                 services: Mapping[str, str]) -> None:
        self.snapshot = snapshot
        self.suite = suite
        self.record = record
        self.context = context
        self.variables = variables
        self.services = services
        self.stages = suite.stages()
        # Results are kept by position in stage order, so parallel flows finishing in any
        # order still give the same record.
        self.position = {id(e): i for i, e in enumerate(e for s in self.stages for e in s)}
        self.done: dict[int, FlowResult] = {}

    def flows(self) -> tuple[FlowResult, ...]:
        return tuple(self.done[i] for i in sorted(self.done))

    async def run(self) -> str | None:
        """Run the stages; the first internal error, if any."""
        stop: str | None = None
        for stage in self.stages:
            if stop is None:
                for unit in plan_stage(stage):
                    if self.context.cancelled:
                        stop = "not run: the run was cancelled"
                        break
                    if len(unit) == 1:
                        await self._flow(unit[0])
                    else:
                        await asyncio.gather(*(self._flow(entry) for entry in unit))
                failed = [r for e in stage
                          if (r := self.done.get(self.position[id(e)])) is not None
                          and r.status == "failed"]
                if stop is None and failed:
                    stop = f"not run: flow {failed[0].flow!r} of an earlier stage failed"
                if stop is None and self.context.cancelled:
                    stop = "not run: the run was cancelled"
            if stop is not None:
                self.skip_rest(stop)
        return next((f.error for f in self.flows() if f.internal), None)

    def skip_rest(self, reason: str) -> None:
        for stage in self.stages:
            for entry in stage:
                index = self.position[id(entry)]
                if index not in self.done:
                    self.done[index] = self._skipped(entry, reason)

    def _skipped(self, entry: SuiteFlow, reason: str) -> FlowResult:
        name = entry.label
        with contextlib.suppress(KeyError):
            name = self.snapshot.flow_for(self.suite, entry).name or name
        return FlowResult(flow=entry.label, name=name, status="skipped", path=entry.path,
                          error=reason)

    async def _flow(self, entry: SuiteFlow) -> None:
        ctx = self.context
        try:
            definition = self.snapshot.flow_for(self.suite, entry)
        except KeyError:
            now = ctx.clock.now()
            result = FlowResult(flow=entry.label, name=entry.label, status="failed",
                                path=entry.path, started_at=now, completed_at=now,
                                error=f"internal error: flow {entry.label!r} is not in the "
                                      "snapshot", internal=True)
        else:
            runner = FlowRunner(definition, ctx, variables=self.variables,
                                services=self.services, label=entry.label, path=entry.path)
            result = await runner.run()
        self.done[self.position[id(entry)]] = result
        await ctx.observer.run_progress(self.record.with_flows(self.flows()))


async def run_suite(snapshot: Snapshot, suite: Suite, *, run_id: str,
                    client: httpx.AsyncClient, trigger_type: TriggerType = "manual",
                    trigger: Mapping[str, Any] | None = None, trigger_ref: str | None = None,
                    variables: Mapping[str, Any] | None = None,
                    environment: str | None = None,
                    environment_routing: Mapping[str, str] | None = None,
                    secrets: Sequence[str] = (), clock: Clock | None = None,
                    sleep: Sleep | None = None, observer: RunObserver | None = None,
                    cancel: asyncio.Event | None = None,
                    builtins: Builtins | None = None) -> SuiteRunResult:
    """Run ``suite`` of ``snapshot`` and return its SuiteRun record (never raises for a
    failing flow or an error of ours; ``asyncio.CancelledError`` propagates).

    Variables, first wins: ``trigger`` (also recorded as the run's trigger), ``variables``
    (the manual run's, then the rule's, merged by the caller the same way), the suite's,
    each flow's ``env``. ``environment_routing`` is the acquired environment's routing
    (``${service.<name>}``). ``secrets`` are masked in every recorded string, as are
    ``SecretValue`` variables and string variables under secret-looking names. Setting
    ``cancel`` stops the run between steps (teardowns still run): status ``cancelled``.
    """
    clock = clock or SystemClock()
    trigger = dict(trigger or {})
    merged, found = reveal_variables(trigger, variables or _EMPTY, suite.variables)
    context = RunContext.create(client=client, clock=clock, sleep=sleep, observer=observer,
                                secrets=[*secrets, *found], builtins=builtins, cancel=cancel)
    started_at, start = clock.now(), clock.monotonic()
    record = SuiteRunResult(
        id=run_id, suite=suite.name, suite_id=str(suite.id), workspace=suite.workspace,
        status="running", trigger_type=trigger_type, trigger=trigger, environment=environment,
        started_at=started_at, total_flows=len(suite.flows), trigger_ref=trigger_ref,
        revision=snapshot.revision or None,
    )
    run = _SuiteRun(snapshot, suite, record, context, merged, environment_routing or {})
    error: str | None
    try:
        await context.observer.run_started(record)
        error = await run.run()
    except Exception as exc:  # a bug of ours: the run could not execute as declared
        error = f"internal error: {type(exc).__name__}: {exc}"
        run.skip_rest("not run: internal error")
    final = record.with_flows(run.flows())
    status: RunStatus
    if error is not None or final.failed_flows:
        status = "failed"
    elif final.passed_flows < final.total_flows and (
            context.cancelled or any(f.status == "cancelled" for f in final.flows)):
        status = "cancelled"
    else:
        status = "completed"
    final = replace(final, status=status, error=error, completed_at=clock.now(),
                    duration_ms=round((clock.monotonic() - start) * 1000))
    await context.observer.run_finished(final)
    return final


def error_run(snapshot: Snapshot, suite: Suite, *, run_id: str, error: str,
              trigger_type: TriggerType = "manual", trigger: Mapping[str, Any] | None = None,
              trigger_ref: str | None = None, environment: str | None = None,
              clock: Clock | None = None) -> SuiteRunResult:
    """The record of a run that could not start (say, its environment was not acquired):
    ``failed`` with ``error`` set and every flow ``skipped``."""
    now = (clock or SystemClock()).now()
    flows = tuple(
        FlowResult(flow=e.label, name=e.label, status="skipped", path=e.path,
                   error=f"not run: {error}")
        for stage in suite.stages() for e in stage)
    return SuiteRunResult(
        id=run_id, suite=suite.name, suite_id=str(suite.id), workspace=suite.workspace,
        status="failed", trigger_type=trigger_type, trigger=dict(trigger or {}),
        environment=environment, started_at=now, completed_at=now, duration_ms=0,
        total_flows=len(suite.flows), trigger_ref=trigger_ref,
        revision=snapshot.revision or None, error=error, flows=flows,
    )
