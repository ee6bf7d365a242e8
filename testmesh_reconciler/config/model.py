"""Frozen declaration objects and the ``Snapshot`` that holds one consistent config.

Built once by the loader from schema-valid documents; everything downstream (matching,
runner, web) reads these and never the raw YAML. Ids are stable UUIDv5 values derived
from (kind, workspace, name), so they survive file moves and re-ordering.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from testmesh_reconciler.config.frozen import EMPTY, FrozenDict
from testmesh_reconciler.secretvalue import SecretValue as SecretValue

API_GROUP = "testmesh.io/"
API_VERSIONS = ("testmesh.io/v1alpha1",)
KINDS = ("Integration", "TriggerRule", "Suite", "Flow", "TestEnvironment")
Kind = Literal["Integration", "TriggerRule", "Suite", "Flow", "TestEnvironment"]
DEFAULT_WORKSPACE = "default"

#: Which webhook event types each integration provider can send.
PROVIDER_EVENTS: Mapping[str, frozenset[str]] = FrozenDict(
    {"argocd": frozenset({"sync"}), "gitea": frozenset({"push", "pull_request"})}
)
#: Trigger variables each event carries (DESIGN.md section 4), for template checks.
COMMON_TRIGGER_VARIABLES = frozenset({"source", "event", "repo", "sha", "short_sha"})
EVENT_VARIABLES: Mapping[str, frozenset[str]] = FrozenDict(
    {
        "sync": COMMON_TRIGGER_VARIABLES | {"app", "branch"},
        "push": COMMON_TRIGGER_VARIABLES | {"branch"},
        "pull_request": COMMON_TRIGGER_VARIABLES
        | {"branch", "base_branch", "pr_number", "action"},
    }
)
ALL_TRIGGER_VARIABLES = frozenset().union(*EVENT_VARIABLES.values())
DEFAULT_PR_ACTIONS = ("opened", "synchronized", "reopened")
ACTIONS = ("http_request", "assert", "log", "delay", "wait_until")


def object_id(kind: str, workspace: str, name: str) -> uuid.UUID:
    """The stable id of a declaration: ``uuid5(NAMESPACE_URL, testmesh.io/<kind>/<ws>/<name>)``."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"testmesh.io/{kind}/{workspace}/{name}")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a declaration was read: file (relative to the root), 1-based line, doc index."""

    file: str
    line: int
    document: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Metadata:
    name: str
    workspace: str = DEFAULT_WORKSPACE
    labels: FrozenDict[str, str] = EMPTY


SecretSource = Literal["sealed", "env", "file"]


@dataclass(frozen=True, slots=True)
class SecretBinding:
    """Where a secret is used; sealed values are bound to it (associated data)."""

    workspace: str
    integration: str
    key: str


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A declared secret: ``{sealed: ...}``, ``{env: NAME}`` or ``{file: PATH}``.

    ``value`` is the opened secret when the loader was given an opener (the daemon),
    else ``None`` (``validate`` without a private key). ``reference`` is the ciphertext,
    env var name or path: not secret, but never shown in full by the API either.
    """

    source: SecretSource
    reference: str = field(repr=False)
    binding: SecretBinding
    value: SecretValue | None = field(default=None, compare=False)

    @property
    def configured(self) -> bool:
        return True


class _Declared:
    """Name and workspace of a declaration, read from its ``metadata``."""

    __slots__ = ()
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def workspace(self) -> str:
        return self.metadata.workspace


@dataclass(frozen=True, slots=True)
class Integration(_Declared):
    id: uuid.UUID
    metadata: Metadata
    source: Source
    type: str
    provider: str
    url: str | None
    app_filter: str
    require_webhook_secret: bool
    config: FrozenDict[str, Any]
    secrets: FrozenDict[str, SecretRef]
    document: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "Integration"

    def secret(self, key: str) -> SecretValue | None:
        ref = self.secrets.get(key)
        return ref.value if ref is not None else None

    @property
    def host(self) -> str | None:
        """Lower-cased host[:port] of ``url``, used to match repo URLs to this integration."""
        return url_host(self.url) if self.url else None


@dataclass(frozen=True, slots=True)
class ReportTarget:
    integration: str | None = None
    repository: str | None = None
    context: str | None = None


@dataclass(frozen=True, slots=True)
class TriggerRule(_Declared):
    id: uuid.UUID
    metadata: Metadata
    source: Source
    integration: str
    repository: str
    branch_filter: str
    branch_pattern: re.Pattern[str] | None  # None = matches every branch (a lone "*")
    event_types: tuple[str, ...]
    pull_request_actions: tuple[str, ...]
    suite: str
    suite_id: uuid.UUID
    environment: str | None
    variables: FrozenDict[str, Any]
    report: ReportTarget
    enabled: bool
    document: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "TriggerRule"

    def matches_branch(self, branch: str | None) -> bool:
        """A lone ``*`` matches every branch (even an unknown one); else a full glob match."""
        if self.branch_pattern is None:
            return True
        return branch is not None and self.branch_pattern.fullmatch(branch) is not None


@dataclass(frozen=True, slots=True)
class Retry:
    max_attempts: int = 1
    delay_seconds: float = 1.0
    backoff: str = "fixed"

    def delay_before(self, attempt: int) -> float:
        """Delay before attempt ``attempt`` (2-based: the first retry is attempt 2)."""
        if attempt <= 1:
            return 0.0
        if self.backoff == "exponential":
            return self.delay_seconds * float(2 ** (attempt - 2))
        return self.delay_seconds


@dataclass(frozen=True, slots=True)
class OnError:
    """``continue`` | ``fail`` | an action step run when the step fails (then the flow fails)."""

    mode: Literal["fail", "continue", "action"] = "fail"
    step: Step | None = None


@dataclass(frozen=True, slots=True)
class Step:
    action: str
    config: FrozenDict[str, Any]
    id: str | None = None
    name: str | None = None
    asserts: tuple[str, ...] = ()
    output: FrozenDict[str, str] = EMPTY
    retry: Retry = Retry()
    timeout_seconds: float | None = None
    when: str | None = None
    on_error: OnError = OnError()

    @property
    def label(self) -> str:
        return self.id or self.name or self.action


@dataclass(frozen=True, slots=True)
class FlowDefinition:
    """A TestMesh flow definition: the ``spec`` of a Flow, or a plain flow file."""

    name: str
    description: str = ""
    tags: tuple[str, ...] = ()
    env: FrozenDict[str, Any] = EMPTY
    setup: tuple[Step, ...] = ()
    steps: tuple[Step, ...] = ()
    teardown: tuple[Step, ...] = ()


@dataclass(frozen=True, slots=True)
class Flow(_Declared):
    id: uuid.UUID
    metadata: Metadata
    source: Source
    definition: FlowDefinition
    document: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "Flow"


@dataclass(frozen=True, slots=True)
class SuiteFlow:
    """One entry of a suite: a named Flow, or a plain flow file by ``path``."""

    order: int
    parallel: bool
    flow: str | None = None
    path: str | None = None

    @property
    def label(self) -> str:
        return self.flow if self.flow is not None else str(self.path)


@dataclass(frozen=True, slots=True)
class Suite(_Declared):
    id: uuid.UUID
    metadata: Metadata
    source: Source
    description: str
    tags: tuple[str, ...]
    variables: FrozenDict[str, Any]
    flows: tuple[SuiteFlow, ...]
    document: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "Suite"

    def stages(self) -> tuple[tuple[SuiteFlow, ...], ...]:
        """Flows grouped by ascending ``order``, declaration order kept inside a stage."""
        orders = sorted({f.order for f in self.flows})
        return tuple(tuple(f for f in self.flows if f.order == o) for o in orders)


@dataclass(frozen=True, slots=True)
class TestEnvironment(_Declared):
    id: uuid.UUID
    metadata: Metadata
    source: Source
    provider: str
    integration: str | None
    context: str | None
    provider_app_name: str | None
    namespace: str | None
    ttl_minutes: float
    application: FrozenDict[str, Any] | None
    services: tuple[FrozenDict[str, Any], ...]
    routing_policy: FrozenDict[str, str]
    document: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "TestEnvironment"
    __test__ = False


Declaration = Integration | TriggerRule | Suite | Flow | TestEnvironment
Key = tuple[str, str]  # (workspace, name)


@dataclass(frozen=True, slots=True)
class Ignored:
    """A YAML document that is not a testmesh.io declaration (listed by ``--verbose``)."""

    file: str
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent, validated config: declarations by kind plus lookup indexes.

    ``rules_by_source`` maps (workspace, integration name, repository) to the rules that
    listen there, so matching a webhook is a dict lookup whatever the number of rules.
    """

    revision: str
    integrations: FrozenDict[Key, Integration]
    trigger_rules: FrozenDict[Key, TriggerRule]
    suites: FrozenDict[Key, Suite]
    flows: FrozenDict[Key, Flow]
    environments: FrozenDict[Key, TestEnvironment]
    flow_files: FrozenDict[str, FlowDefinition]
    rules_by_source: FrozenDict[tuple[str, str, str], tuple[TriggerRule, ...]]
    warnings: tuple[Any, ...] = ()  # Problem with severity "warning"
    ignored: tuple[Ignored, ...] = ()
    # Built on first use: most reloads never look a declaration up by id, and hashing
    # 10,000 UUIDs is a fifth of an incremental reload.
    _by_id: dict[uuid.UUID, Declaration] = field(default_factory=dict, compare=False,
                                                 repr=False)

    @property
    def by_id(self) -> Mapping[uuid.UUID, Declaration]:
        """Every declaration by its stable id."""
        if not self._by_id:
            self._by_id.update((d.id, d) for d in self.all())
        return self._by_id

    def counts(self) -> dict[str, int]:
        return {
            "Integration": len(self.integrations),
            "TriggerRule": len(self.trigger_rules),
            "Suite": len(self.suites),
            "Flow": len(self.flows),
            "TestEnvironment": len(self.environments),
        }

    def all(self) -> Iterator[Declaration]:
        yield from self.integrations.values()
        yield from self.trigger_rules.values()
        yield from self.suites.values()
        yield from self.flows.values()
        yield from self.environments.values()

    def of_kind(self, kind: str) -> FrozenDict[Key, Any]:
        tables: dict[str, FrozenDict[Key, Any]] = {
            "Integration": self.integrations,
            "TriggerRule": self.trigger_rules,
            "Suite": self.suites,
            "Flow": self.flows,
            "TestEnvironment": self.environments,
        }
        return tables[kind]

    def rules_for(self, workspace: str, integration: str, repository: str
                  ) -> tuple[TriggerRule, ...]:
        rules: tuple[TriggerRule, ...] = self.rules_by_source.get(
            (workspace, integration, repository), ())
        return rules

    def integrations_of(self, provider: str) -> tuple[Integration, ...]:
        return tuple(i for i in self.integrations.values() if i.provider == provider)

    def flow_for(self, suite: Suite, entry: SuiteFlow) -> FlowDefinition:
        """The definition a suite entry runs (the loader guarantees it exists)."""
        if entry.flow is not None:
            return self.flows[(suite.workspace, entry.flow)].definition
        return self.flow_files[str(entry.path)]


def url_host(url: str) -> str | None:
    """Host (and port when given) of an http(s) or ssh-style URL, lower-cased."""
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^@/]*@)?([^/?#]+)", url)
    if m:
        return m.group(1).lower()
    m = re.match(r"^[^@/]+@([^:/]+):", url)  # git@host:owner/repo.git
    return m.group(1).lower() if m else None


def repo_from_url(url: str) -> str | None:
    """``owner/repo`` from a clone URL (https, ssh or scp-like), ``.git`` dropped."""
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]+/(.+?)/?$", url) or re.match(
        r"^[^@/]+@[^:/]+:(.+?)/?$", url
    )
    if not m:
        return None
    path = m.group(1)
    if path.endswith(".git"):
        path = path[:-4]
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2:
        return None
    return "/".join(parts[-2:])
