"""The flow engine: runs one TestMesh flow definition (setup, steps, teardown) step by step.

Owns step semantics (``when``, ``retry``, ``timeout``, ``on_error``, ``output``), the
flow's variable scope, and the ``RunObserver`` seam through which progress is reported.
Time and HTTP are injected (``RunContext``); nothing here reads a global.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx

from testmesh_reconciler.config.model import FlowDefinition, SecretValue, Step
from testmesh_reconciler.runner.actions import (
    ACTIONS,
    Action,
    ActionContext,
    ActionOutcome,
    Redactor,
    assertion_results,
    output_summary,
    secret_name,
)
from testmesh_reconciler.runner.clock import Clock, Sleep, SystemClock
from testmesh_reconciler.runner.expressions import MISSING, ExpressionError, evaluate, parse
from testmesh_reconciler.runner.interpolate import Builtins, Scope, interpolate, render_text
from testmesh_reconciler.runner.results import (
    AssertionResult,
    FlowResult,
    FlowStatus,
    Phase,
    StepResult,
    StepStatus,
    SuiteRunResult,
)


class RunObserver(Protocol):
    """Progress callbacks, awaited in order. The CLI prints them; the daemon persists them
    (``step_started`` comes before anything is sent, so a store can mark the run started).
    ``flow`` is the suite entry's label (the Flow name or the flow file's path)."""

    async def run_started(self, run: SuiteRunResult) -> None: ...

    async def flow_started(self, flow: str, definition: FlowDefinition) -> None: ...

    async def step_started(self, flow: str, phase: Phase, step: Step) -> None: ...

    async def step_finished(self, flow: str, result: StepResult) -> None: ...

    async def flow_finished(self, result: FlowResult) -> None: ...

    async def run_progress(self, run: SuiteRunResult) -> None:
        """The run so far (status ``running``), after each finished flow."""
        ...

    async def run_finished(self, run: SuiteRunResult) -> None: ...


class NullObserver:
    """Observes nothing; subclass it and override only the callbacks you need."""

    async def run_started(self, run: SuiteRunResult) -> None:
        return None

    async def flow_started(self, flow: str, definition: FlowDefinition) -> None:
        return None

    async def step_started(self, flow: str, phase: Phase, step: Step) -> None:
        return None

    async def step_finished(self, flow: str, result: StepResult) -> None:
        return None

    async def flow_finished(self, result: FlowResult) -> None:
        return None

    async def run_progress(self, run: SuiteRunResult) -> None:
        return None

    async def run_finished(self, run: SuiteRunResult) -> None:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """What every flow of one run shares: the HTTP client, time, built-ins, redaction,
    the observer and the cancel signal."""

    client: httpx.AsyncClient
    clock: Clock
    sleep: Sleep
    builtins: Builtins
    redactor: Redactor
    observer: RunObserver
    cancel: asyncio.Event | None = None

    @classmethod
    def create(cls, *, client: httpx.AsyncClient, clock: Clock | None = None,
               sleep: Sleep | None = None, observer: RunObserver | None = None,
               secrets: Sequence[str] = (), builtins: Builtins | None = None,
               cancel: asyncio.Event | None = None) -> RunContext:
        clock = clock or SystemClock()
        return cls(client=client, clock=clock, sleep=sleep or clock.sleep,
                   builtins=builtins or Builtins(clock=clock.now, rng=random.Random()),
                   redactor=Redactor.of(secrets), observer=observer or NullObserver(),
                   cancel=cancel)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def reveal_variables(*layers: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Merge variable layers (the first that has a name wins) into plain values, and list
    the secret values among them: ``SecretValue``s and strings under secret-looking names."""
    merged: dict[str, Any] = {}
    secrets: list[str] = []
    for layer in layers:
        for name, value in layer.items():
            if name in merged:
                continue
            if isinstance(value, SecretValue):
                value = value.reveal()
                secrets.append(value)
            elif isinstance(value, str) and secret_name(name):
                secrets.append(value)
            merged[name] = value
    return merged, secrets


def extract(result: Mapping[str, Any], path: str) -> Any:
    """An ``output`` path into a step result: ``$`` (all of it), ``$.body.id``, ``body.id``,
    ``response.body.id``; a path that misses at the top is tried under ``body`` too."""
    text = path.strip()
    if text in ("", "$"):
        return result
    if text.startswith("$."):
        text = text[2:]
    elif text.startswith("$["):
        text = text[1:]
    scope = Scope.layered(result)
    value = scope.lookup(text)
    if value is MISSING and not text.startswith(("body", "response", "[")) and "body" in result:
        value = scope.lookup("body." + text)
    return value


def _where(phase: Phase, label: str) -> str:
    return f"step {label!r}" if phase == "steps" else f"{phase} step {label!r}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class _Attempt:
    status: StepStatus
    error: str | None = None
    retryable: bool = True
    outcome: ActionOutcome | None = None
    assertions: tuple[AssertionResult, ...] = ()


_NO_OUTCOME = ActionOutcome()


class FlowRunner:
    """Runs one flow once. Step results and outputs live in dicts that the flow's ``Scope``
    layers by reference, so each step sees what earlier ones produced.

    Semantics: setup, then steps; the first failing step skips the rest of both; teardown
    always runs, every step of it (a failing teardown step fails the flow but does not stop
    the cleanup). A step is tried up to ``retry.max_attempts`` times while it fails or errs
    retryably (an unknown variable or an invalid config is not retried); ``timeout`` bounds
    each attempt. ``on_error: continue`` records the step as failed (``continued``) and the
    flow goes on and can still pass; the object form runs its action, then the flow fails.
    Results and ``output`` values are kept also from a failed step, so teardown can clean up.
    Scope, first wins: outputs, step results by id, ``service``, run variables, flow ``env``.
    """

    def __init__(self, definition: FlowDefinition, context: RunContext, *,
                 variables: Mapping[str, Any], services: Mapping[str, str],
                 label: str | None = None, path: str | None = None) -> None:
        self.definition = definition
        self.context = context
        self.label = label or definition.name
        self.path = path
        self.services = dict(services)
        self.outputs: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.unresolved_outputs: dict[str, str] = {}
        self.step_ids = frozenset(
            s.id for s in (*definition.setup, *definition.steps, *definition.teardown) if s.id)
        self.env: dict[str, Any] = {}
        self.env_missing: dict[str, tuple[str, ...]] = {}
        service_layer = {"service": self.services}
        env_scope = Scope.layered(service_layer, variables, self.env)
        for name, value in definition.env.items():
            if name in variables:
                continue
            rendered = interpolate(value, env_scope, context.builtins)
            if rendered.missing:
                self.env_missing[name] = rendered.missing
            else:
                self.env[name] = rendered.value
        self.scope = Scope.layered(self.outputs, self.results, service_layer, variables,
                                   self.env)

    # -- the flow ---------------------------------------------------------------------------

    async def run(self) -> FlowResult:
        ctx = self.context
        started_at, start = ctx.clock.now(), ctx.clock.monotonic()
        steps: list[StepResult] = []
        internal: str | None = None
        cancelled = False
        stop: str | None = None
        try:
            await ctx.observer.flow_started(self.label, self.definition)
            phases: tuple[tuple[Phase, tuple[Step, ...]], ...] = (
                ("setup", self.definition.setup), ("steps", self.definition.steps))
            for phase, group in phases:
                for step in group:
                    if stop is None and ctx.cancelled:
                        cancelled, stop = True, "not run: the run was cancelled"
                    if stop is not None:
                        steps.append(await self._skip(step, phase, stop))
                        continue
                    result = await self._step(step, phase)
                    steps.append(result)
                    if result.failing:
                        stop = f"not run: {_where(phase, result.label)} failed"
        except Exception as exc:  # our bug, not the flow's: reported as the run's error
            internal = f"internal error in flow {self.label!r}: {type(exc).__name__}: {exc}"
        for step in self.definition.teardown:  # always, also after a failure
            try:
                steps.append(await self._step(step, "teardown"))
            except Exception as exc:
                internal = internal or (f"internal error in teardown of flow {self.label!r}: "
                                        f"{type(exc).__name__}: {exc}")
        failing = next((s for s in steps if s.failing), None)
        status: FlowStatus
        error: str | None = None
        if internal is not None:
            status, error = "failed", internal
        elif failing is not None:
            status = "failed"
            error = f"{_where(failing.phase, failing.label)}: {failing.error}"
        elif cancelled:
            status, error = "cancelled", "cancelled before it finished"
        else:
            status = "passed"
        flow_result = FlowResult(
            flow=self.label, name=self.definition.name or self.label, status=status,
            path=self.path, started_at=started_at, completed_at=ctx.clock.now(),
            duration_ms=round((ctx.clock.monotonic() - start) * 1000), error=error,
            steps=tuple(steps), internal=internal is not None,
        )
        await ctx.observer.flow_finished(flow_result)
        return flow_result

    async def _skip(self, step: Step, phase: Phase, reason: str) -> StepResult:
        result = StepResult(id=step.id, name=step.name, action=step.action, phase=phase,
                            status="skipped", error=reason)
        await self.context.observer.step_finished(self.label, result)
        return result

    async def _step(self, step: Step, phase: Phase) -> StepResult:
        observer = self.context.observer
        await observer.step_started(self.label, phase, step)
        result = await self._execute(step, phase)
        handler = step.on_error.step
        if result.failing and step.on_error.mode == "action" and handler is not None:
            result = replace(result, on_error=await self._execute(handler, "on_error"))
        await observer.step_finished(self.label, result)
        return result

    # -- one step ---------------------------------------------------------------------------

    async def _execute(self, step: Step, phase: Phase) -> StepResult:
        ctx = self.context
        started_at, start = ctx.clock.now(), ctx.clock.monotonic()

        def finish(status: StepStatus, attempts: int, *, error: str | None = None,
                   outcome: ActionOutcome = _NO_OUTCOME,
                   assertions: tuple[AssertionResult, ...] = (),
                   outputs: Mapping[str, str] | None = None,
                   message: str | None = None) -> StepResult:
            redact = ctx.redactor
            if redact.secrets:
                error = redact.text(error) if error else error
                assertions = tuple(
                    replace(a, message=redact.text(a.message) if a.message else a.message,
                            values=tuple((k, redact.text(v)) for k, v in a.values))
                    for a in assertions)
            return StepResult(
                id=step.id, name=step.name, action=step.action, phase=phase, status=status,
                attempts=attempts, duration_ms=round((ctx.clock.monotonic() - start) * 1000),
                error=error, assertions=assertions, request=outcome.request,
                response=outcome.response, message=message or outcome.message,
                outputs=outputs or {}, started_at=started_at,
                continued=status in ("failed", "error") and step.on_error.mode == "continue",
            )

        if step.when is not None:
            run_it, problem = self._when(step.when)
            if problem is not None:
                return finish("error", 0, error=problem)
            if not run_it:
                return finish("skipped", 0, message=f"when {step.when!r} is false")
        action = ACTIONS.get(step.action)
        if action is None:
            return finish("error", 0, error=f"unknown action {step.action!r}")
        max_attempts = max(1, step.retry.max_attempts)
        attempts = 0
        while True:
            attempts += 1
            attempt = await self._attempt(step, action)
            if (attempt.status == "passed" or not attempt.retryable
                    or attempts >= max_attempts or ctx.cancelled):
                break
            await ctx.sleep(step.retry.delay_before(attempts + 1))
        outcome = attempt.outcome or _NO_OUTCOME
        outputs: dict[str, str] = {}
        notes: list[str] = []
        if outcome.result:
            if step.id is not None:
                self.results[step.id] = outcome.result
            for name, path in step.output.items():
                value = extract(outcome.result, path)
                if value is MISSING:
                    self.unresolved_outputs[name] = f"{step.label}: {path}"
                    notes.append(f"output {name!r}: {path!r} did not resolve")
                else:
                    self.outputs[name] = value
                    self.unresolved_outputs.pop(name, None)
                    outputs[name] = output_summary(name, value, ctx.redactor)
        message = "; ".join(filter(None, [outcome.message, *notes])) or None
        error = attempt.error
        if error is not None and attempts > 1:
            error = f"{error} (after {_plural(attempts, 'attempt')})"
        return finish(attempt.status, attempts, error=error, outcome=outcome,
                      assertions=attempt.assertions, outputs=outputs, message=message)

    async def _attempt(self, step: Step, action: Action) -> _Attempt:
        ctx = self.context
        rendered = interpolate(step.config, self.scope, ctx.builtins)
        missing = list(rendered.missing)
        asserts: list[str] = []
        for text in step.asserts:
            if "$" in text or "{{" in text:
                done = interpolate(text, self.scope, ctx.builtins)
                missing.extend(n for n in done.missing if n not in missing)
                text = render_text(done.value)
            asserts.append(text)
        if missing:
            return _Attempt("error", self._unknown(missing), retryable=False)
        action_ctx = ActionContext(client=ctx.client, clock=ctx.clock, sleep=ctx.sleep,
                                   redactor=ctx.redactor, scope=self.scope)
        if step.timeout_seconds is None:
            outcome = await action(rendered.value, action_ctx)
        else:
            timeout = asyncio.timeout(step.timeout_seconds)
            try:
                async with timeout:
                    outcome = await action(rendered.value, action_ctx)
            except TimeoutError:
                if not timeout.expired():
                    raise
                return _Attempt("error", f"timed out after {step.timeout_seconds:g}s")
        if outcome.error is not None:
            return _Attempt("error", outcome.error, outcome.retryable, outcome)
        assertions = outcome.assertions
        if asserts:
            assertions += assertion_results(asserts, Scope.layered(outcome.result, self.scope))
        failed = [a for a in assertions if not a.passed]
        if outcome.failure is None and not failed:
            return _Attempt("passed", outcome=outcome, assertions=assertions)
        reasons = [outcome.failure] if outcome.failure else []
        reasons.extend(a.message or f"{a.expression} failed" for a in failed)
        error = reasons[0] if len(reasons) == 1 else (
            f"{reasons[0]} (and {_plural(len(reasons) - 1, 'more failure')})")
        return _Attempt("failed", error, True, outcome, assertions)

    def _when(self, text: str) -> tuple[bool, str | None]:
        """Whether a step's ``when`` holds; placeholders are filled in first."""
        if "$" in text or "{{" in text:
            done = interpolate(text, self.scope, self.context.builtins)
            if done.missing:
                return False, f"when: {self._unknown(list(done.missing))}"
            text = render_text(done.value)
        try:
            value = evaluate(parse(text), self.scope)
        except ExpressionError as exc:
            return False, f"when {text!r}: {exc.message}"
        return bool(value), None

    def _unknown(self, names: Sequence[str]) -> str:
        """"unknown variable 'X'" plus a hint at why it is unknown; nothing was sent."""
        described = []
        for name in names:
            root = name.split(".", 1)[0].split("[", 1)[0]
            hint = ""
            if root in self.env_missing:
                needs = ", ".join(repr(n) for n in self.env_missing[root])
                hint = f" (flow env {root!r} uses unknown {needs})"
            elif root in self.unresolved_outputs:
                hint = f" (output of step {self.unresolved_outputs[root]} did not resolve)"
            elif root == "service":
                known = ", ".join(sorted(self.services))
                hint = (f" (the environment routes: {known})" if known
                        else " (no environment: run with one that routes this service)")
            elif root in self.results:
                hint = f" (step {root!r} has no such field)"
            elif root in self.step_ids:
                hint = f" (step {root!r} has not produced a result)"
            described.append(repr(name) + hint)
        word = "variable" if len(names) == 1 else "variables"
        return f"unknown {word} {', '.join(described)}; nothing was sent"


async def run_flow(definition: FlowDefinition, *, client: httpx.AsyncClient,
                   variables: Mapping[str, Any] | None = None,
                   services: Mapping[str, str] | None = None,
                   clock: Clock | None = None, sleep: Sleep | None = None,
                   observer: RunObserver | None = None, secrets: Sequence[str] = (),
                   builtins: Builtins | None = None, cancel: asyncio.Event | None = None,
                   label: str | None = None, path: str | None = None) -> FlowResult:
    """Run one flow with ``variables`` (SecretValues revealed, and masked in results) and
    ``services`` (``${service.<name>}``); see ``FlowRunner``."""
    plain, found = reveal_variables(variables or {})
    context = RunContext.create(client=client, clock=clock, sleep=sleep, observer=observer,
                                secrets=[*secrets, *found], builtins=builtins, cancel=cancel)
    runner = FlowRunner(definition, context, variables=plain, services=services or {},
                        label=label, path=path)
    return await runner.run()
