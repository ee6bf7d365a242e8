"""The JSON Schemas in ``schemas/``: valid against their metaschema, documented on every
property, and in agreement with ``examples/config-repo`` under both validators the loader
uses (``jsonschema_rs`` for the fast path, ``jsonschema`` with a ``referencing.Registry``
for error details), including readable errors for the common mistakes.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
import yaml
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS_DIR = ROOT / "schemas"
EXAMPLE_REPO = ROOT / "examples" / "config-repo"
BASE_ID = "https://testmesh.io/schemas/v1alpha1/"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

KIND_SCHEMAS = {
    "Integration": "integration.json",
    "TriggerRule": "trigger-rule.json",
    "Suite": "suite.json",
    "Flow": "flow.json",
    "TestEnvironment": "test-environment.json",
}
FLOW_FILE_SCHEMA = "flow-file.json"
SCHEMA_FILES = ("definitions.json", *KIND_SCHEMAS.values(), FLOW_FILE_SCHEMA)
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")

Doc = dict[str, Any]


# ----------------------------------------------------------------------------- helpers


@cache
def load_schemas() -> dict[str, Doc]:
    return {
        name: json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8")) for name in SCHEMA_FILES
    }


@cache
def py_registry() -> Registry[Any]:
    resources = [(s["$id"], Resource.from_contents(s)) for s in load_schemas().values()]
    return Registry().with_resources(resources)


@cache
def py_validator(name: str) -> Any:
    schema = load_schemas()[name]
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=py_registry())


@cache
def rs_validator(name: str) -> Any:
    schemas = load_schemas()
    registry = jsonschema_rs.Registry([(s["$id"], s) for s in schemas.values()])
    return jsonschema_rs.validator_for(schemas[name], registry=registry)


def py_errors(name: str, doc: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in py_validator(name).iter_errors(doc)]


def rs_errors(name: str, doc: Any) -> list[str]:
    return [f"{list(e.instance_path)}: {e.message}" for e in rs_validator(name).iter_errors(doc)]


def walk(node: Any, pointer: str = "#") -> Iterator[tuple[str, Any]]:
    """Every (JSON pointer, subschema) of a schema. ``if`` conditions are left out (they
    only discriminate; editors never show them), and so are literal values."""
    yield pointer, node
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("if", "const", "enum", "default", "examples"):
                continue
            yield from walk(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{pointer}/{index}")


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLE_REPO.rglob("*") if p.suffix in (".yaml", ".yml"))


def example_documents() -> list[tuple[str, Doc]]:
    """``(file#index, document)`` of every testmesh.io declaration in the example repo."""
    found = []
    for path in example_files():
        docs = yaml.safe_load_all(path.read_text(encoding="utf-8"))
        for index, doc in enumerate(docs):
            api_version = doc.get("apiVersion", "") if isinstance(doc, dict) else ""
            if isinstance(api_version, str) and api_version.startswith("testmesh.io/"):
                found.append((f"{path.relative_to(EXAMPLE_REPO)}#{index}", doc))
    return found


def example(relative: str, index: int = 0) -> Doc:
    docs = list(yaml.safe_load_all((EXAMPLE_REPO / relative).read_text(encoding="utf-8")))
    return copy.deepcopy(docs[index])


# ----------------------------------------------------------------------------- schemas


def test_schema_directory_holds_exactly_the_known_files() -> None:
    assert sorted(p.name for p in SCHEMAS_DIR.glob("*.json")) == sorted(SCHEMA_FILES)


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_against_its_metaschema(name: str) -> None:
    schema = load_schemas()[name]
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == BASE_ID + name
    assert schema.get("title")
    assert schema.get("description")
    jsonschema.validators.validator_for(schema).check_schema(schema)
    jsonschema_rs.meta.validate(schema)


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_every_property_has_a_title_and_a_description(name: str) -> None:
    missing = [
        f"{pointer}/properties/{prop}"
        for pointer, node in walk(load_schemas()[name])
        if isinstance(node, dict) and isinstance(node.get("properties"), dict)
        for prop, sub in node["properties"].items()
        if not (isinstance(sub, dict) and sub.get("title") and sub.get("description"))
    ]
    assert missing == []


def test_every_shared_definition_is_documented() -> None:
    defs = load_schemas()["definitions.json"]["$defs"]
    assert [k for k, v in defs.items() if not v.get("description")] == []


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_every_ref_resolves_through_the_registry(name: str) -> None:
    schema = load_schemas()[name]
    resolver = py_registry().resolver(base_uri=schema["$id"])
    refs = [n["$ref"] for _, n in walk(schema) if isinstance(n, dict) and "$ref" in n]
    for ref in refs:
        assert resolver.lookup(ref).contents is not None, ref


def test_objects_we_own_reject_unknown_keys() -> None:
    """Typos must be caught: every object schema with ``properties`` says what to do with
    other keys, and only the free-form ones allow them."""
    free_form = {
        "integration.json": {"#/properties/spec/properties/config"},
        "test-environment.json": {
            "#/properties/spec/properties/application",
            "#/properties/spec/properties/application/properties/source",
            "#/properties/spec/properties/services/items",
        },
        "definitions.json": {"#/$defs/httpRequestConfig"},
    }
    for name, schema in load_schemas().items():
        for pointer, node in walk(schema):
            if not (isinstance(node, dict) and "properties" in node and "type" in node):
                continue
            if pointer in free_form.get(name, set()):
                assert node.get("additionalProperties") is True, (name, pointer)
            else:
                assert "additionalProperties" in node, (name, pointer)
                assert node["additionalProperties"] is not True, (name, pointer)


# ----------------------------------------------------------------------------- examples

EXAMPLE_DOCUMENTS = example_documents()


def test_example_repo_declares_every_kind_and_ignores_other_yaml() -> None:
    kinds = {doc["kind"] for _, doc in EXAMPLE_DOCUMENTS}
    assert kinds == set(KIND_SCHEMAS)
    others = [
        doc
        for path in example_files()
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if not (isinstance(doc, dict) and "apiVersion" in doc)
    ]
    assert others, "the example repo should show a non-testmesh YAML file being ignored"


@pytest.mark.parametrize(("where", "doc"), EXAMPLE_DOCUMENTS, ids=[w for w, _ in EXAMPLE_DOCUMENTS])
def test_example_declaration_is_valid(where: str, doc: Doc) -> None:
    name = KIND_SCHEMAS[doc["kind"]]
    assert py_errors(name, doc) == []
    assert rs_errors(name, doc) == []


def test_plain_flow_file_is_valid_in_both_forms() -> None:
    wrapped = example("flows/legacy/orders.yaml")
    assert list(wrapped) == ["flow"]
    for doc in (wrapped, wrapped["flow"]):
        assert py_errors(FLOW_FILE_SCHEMA, doc) == []
        assert rs_errors(FLOW_FILE_SCHEMA, doc) == []


def test_suite_paths_point_at_plain_flow_files() -> None:
    paths = [
        entry["path"]
        for _, doc in EXAMPLE_DOCUMENTS
        if doc["kind"] == "Suite"
        for entry in doc["spec"]["flows"]
        if "path" in entry
    ]
    assert paths
    for path in paths:
        doc = yaml.safe_load((EXAMPLE_REPO / path).read_text(encoding="utf-8"))
        assert py_errors(FLOW_FILE_SCHEMA, doc) == []


def test_example_secrets_come_from_env_or_file_only() -> None:
    for where, doc in EXAMPLE_DOCUMENTS:
        for key, secret in doc["spec"].get("secrets", {}).items():
            assert set(secret) <= {"env", "file"}, (where, key)


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(EXAMPLE_REPO)))
def test_declaration_files_point_editors_at_their_schema(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    if all(isinstance(d, dict) and "apiVersion" in d for d in docs):
        expected = {KIND_SCHEMAS[d["kind"]] for d in docs}
    elif all(isinstance(d, dict) and "flow" in d for d in docs):
        expected = {FLOW_FILE_SCHEMA}
    else:
        return  # not ours: no modeline required
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    match = MODELINE.match(first_line)
    assert match, f"{path}: first line should be '# yaml-language-server: $schema=...'"
    target = (path.parent / match.group(1)).resolve()
    assert target.parent == SCHEMAS_DIR.resolve()
    assert {target.name} == expected


# ----------------------------------------------------------------------------- negatives


def apply(doc: Doc, ops: tuple[tuple[Any, ...], ...]) -> Doc:
    """Apply ``("set", path, value)``, ``("del", path)``, ``("rename", path, new_key)``."""
    for op, path, *arg in ops:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if op == "set":
            parent[path[-1]] = arg[0]
        elif op == "del":
            del parent[path[-1]]
        elif op == "rename":
            parent[arg[0]] = parent.pop(path[-1])
    return doc


UUID = "840e8efb-91fc-5d42-95ee-db60c1745b73"
RULE = "rules/shop-staging.yaml"
GITEA = "integrations/gitea.yaml"
LIFECYCLE = "flows/product-lifecycle.yaml"
CHECKOUT = "flows/checkout.yaml"
REGRESSION = "suites/regression.yaml"
PR_ENV = "environments/shop-pr-review.yaml"

# (id, example file, ops, expected JSON path of the best error, expected message)
NEGATIVE_CASES: list[tuple[str, str, tuple[tuple[Any, ...], ...], str, str]] = [
    (
        "rule-unknown-event-type",
        RULE,
        (("set", ("spec", "event_types"), ["sync", "merge"]),),
        "$.spec.event_types[1]",
        "'merge' is not one of ['sync', 'push', 'pull_request']",
    ),
    (
        "rule-misspelled-key",
        RULE,
        (("rename", ("spec", "event_types"), "evnt_types"),),
        "$.spec",
        "Additional properties are not allowed ('evnt_types' was unexpected)",
    ),
    (
        "rule-suite-and-suite-id",
        RULE,
        (("set", ("spec", "suite_id"), UUID),),
        "$.spec.suite",
        "use either suite or suite_id, not both",
    ),
    (
        "rule-neither-suite-nor-suite-id",
        RULE,
        (("del", ("spec", "suite")),),
        "$.spec",
        "'suite' is a required property",
    ),
    (
        "rule-bad-suite-id",
        RULE,
        (("del", ("spec", "suite")), ("set", ("spec", "suite_id"), "smoke")),
        "$.spec.suite_id",
        "'smoke' does not match",
    ),
    (
        "rule-github-pr-action",
        RULE,
        (("set", ("spec", "pull_request_actions"), ["synchronize"]),),
        "$.spec.pull_request_actions[0]",
        "'synchronize' is not one of ['opened', 'synchronized'",
    ),
    (
        "rule-empty-event-types",
        RULE,
        (("set", ("spec", "event_types"), []),),
        "$.spec.event_types",
        "[] should be non-empty",
    ),
    (
        "rule-report-repository-not-owner-repo",
        RULE,
        (("set", ("spec", "report", "repository"), "shop"),),
        "$.spec.report.repository",
        "'shop' does not match",
    ),
    (
        "integration-plaintext-secret",
        GITEA,
        (("set", ("spec", "secrets", "token"), "s3cr3t"),),
        "$.spec.secrets.token",
        "'s3cr3t' is not of type 'object'",
    ),
    (
        "integration-secret-two-sources",
        GITEA,
        (("set", ("spec", "secrets", "token"), {"env": "TOKEN", "file": "/run/token"}),),
        "$.spec.secrets.token",
        "has too many properties",
    ),
    (
        "integration-secret-unknown-source",
        GITEA,
        (("set", ("spec", "secrets", "token"), {"vault": "kv/gitea"}),),
        "$.spec.secrets.token",
        "Additional properties are not allowed ('vault' was unexpected)",
    ),
    (
        "integration-unknown-provider",
        GITEA,
        (("set", ("spec", "provider"), "github"),),
        "$.spec.provider",
        "'github' is not one of ['gitea', 'argocd']",
    ),
    (
        "integration-url-without-scheme",
        GITEA,
        (("set", ("spec", "config", "url"), "gitea.internal"),),
        "$.spec.config.url",
        "'gitea.internal' does not match '^https?://'",
    ),
    (
        "metadata-uppercase-name",
        GITEA,
        (("set", ("metadata", "name"), "Gitea_Internal"),),
        "$.metadata.name",
        "'Gitea_Internal' does not match",
    ),
    (
        "wrong-api-version",
        GITEA,
        (("set", ("apiVersion",), "testmesh.io/v1"),),
        "$.apiVersion",
        "'testmesh.io/v1alpha1' was expected",
    ),
    (
        "missing-spec",
        GITEA,
        (("del", ("spec",)),),
        "$",
        "'spec' is a required property",
    ),
    (
        "suite-flow-and-path",
        REGRESSION,
        (("set", ("spec", "flows", 1, "path"), "flows/other.yaml"),),
        "$.spec.flows[1].flow",
        "use either flow or path, not both",
    ),
    (
        "suite-absolute-path",
        REGRESSION,
        (("set", ("spec", "flows", 2, "path"), "/srv/flows/orders.yaml"),),
        "$.spec.flows[2].path",
        "'/srv/flows/orders.yaml' does not match",
    ),
    (
        "suite-no-flows",
        REGRESSION,
        (("set", ("spec", "flows"), []),),
        "$.spec.flows",
        "[] should be non-empty",
    ),
    (
        "flow-unknown-action",
        LIFECYCLE,
        (("set", ("spec", "steps", 0, "action"), "graphql"),),
        "$.spec.steps[0].action",
        "'graphql' is not one of ['http_request', 'assert', 'log', 'delay', 'wait_until']",
    ),
    (
        "flow-bad-duration",
        LIFECYCLE,
        (("set", ("spec", "steps", 0, "retry", "delay"), "5 seconds"),),
        "$.spec.steps[0].retry.delay",
        "'5 seconds' does not match",
    ),
    (
        "flow-numeric-timeout",
        LIFECYCLE,
        (("set", ("spec", "steps", 0, "timeout"), 10),),
        "$.spec.steps[0].timeout",
        "10 is not of type 'string'",
    ),
    (
        "flow-http-request-without-url",
        LIFECYCLE,
        (("del", ("spec", "steps", 0, "config", "url")),),
        "$.spec.steps[0].config",
        "'url' is a required property",
    ),
    (
        "flow-lowercase-method",
        LIFECYCLE,
        (("set", ("spec", "steps", 0, "config", "method"), "post"),),
        "$.spec.steps[0].config.method",
        "'post' is not one of ['GET', 'POST'",
    ),
    (
        "flow-misspelled-step-key",
        LIFECYCLE,
        (("rename", ("spec", "steps", 0, "assert"), "asserts"),),
        "$.spec.steps[0]",
        "Additional properties are not allowed ('asserts' was unexpected)",
    ),
    (
        "flow-unknown-on-error",
        LIFECYCLE,
        (("set", ("spec", "teardown", 0, "on_error"), "ignore"),),
        "$.spec.teardown[0].on_error",
        "'ignore' is not one of ['continue', 'fail']",
    ),
    (
        "flow-nested-on-error",
        LIFECYCLE,
        (
            (
                "set",
                ("spec", "teardown", 0, "on_error"),
                {"action": "log", "config": {"message": "x"}, "on_error": "continue"},
            ),
        ),
        "$.spec.teardown[0].on_error.on_error",
        "an on_error step cannot have its own on_error",
    ),
    (
        "flow-no-steps",
        LIFECYCLE,
        (("set", ("spec", "steps"), []),),
        "$.spec.steps",
        "[] should be non-empty",
    ),
    (
        "flow-delay-without-duration",
        CHECKOUT,
        (("set", ("spec", "steps", 2, "config"), {}),),
        "$.spec.steps[2].config",
        "'duration' is a required property",
    ),
    (
        "flow-log-unknown-level",
        CHECKOUT,
        (("set", ("spec", "steps", 0, "on_error", "config", "level"), "fatal"),),
        "$.spec.steps[0].on_error.config.level",
        "'fatal' is not one of",
    ),
    (
        "flow-wait-until-without-condition",
        CHECKOUT,
        (("del", ("spec", "steps", 1, "config", "condition")),),
        "$.spec.steps[1].config",
        "'condition' is a required property",
    ),
    (
        "environment-argocd-without-integration",
        PR_ENV,
        (("del", ("spec", "integration")),),
        "$.spec",
        "'integration' is a required property",
    ),
    (
        "environment-zero-ttl",
        PR_ENV,
        (("set", ("spec", "ttl_minutes"), 0),),
        "$.spec.ttl_minutes",
        "0 is less than or equal to the minimum of 0",
    ),
    (
        "environment-routing-not-a-url",
        PR_ENV,
        (("set", ("spec", "routing_policy", "order-service"), "order-service:8080"),),
        "$.spec.routing_policy['order-service']",
        "'order-service:8080' does not match",
    ),
    (
        "environment-unknown-provider",
        PR_ENV,
        (("set", ("spec", "provider"), "kubernetes"),),
        "$.spec.provider",
        "'kubernetes' is not one of ['argocd', 'static']",
    ),
]


@pytest.mark.parametrize(
    ("case", "file", "ops", "path", "message"), NEGATIVE_CASES, ids=[c[0] for c in NEGATIVE_CASES]
)
def test_common_mistake_is_rejected_readably(
    case: str, file: str, ops: tuple[tuple[Any, ...], ...], path: str, message: str
) -> None:
    doc = apply(example(file), ops)
    name = KIND_SCHEMAS[doc["kind"]]
    assert not rs_validator(name).is_valid(doc)
    assert rs_errors(name, doc), case
    best = best_match(py_validator(name).iter_errors(doc))
    assert best is not None, case
    assert best.json_path == path
    assert message in best.message


FLOW_FILE_CASES: list[tuple[str, Any, str, str]] = [
    (
        "unknown-action-in-wrapper",
        {"flow": {"name": "x", "steps": [{"action": "kafka_publish"}]}},
        "$.flow.steps[0].action",
        "'kafka_publish' is not one of",
    ),
    (
        "extra-key-beside-wrapper",
        {"flow": {"name": "x", "steps": [{"action": "assert"}]}, "env": {}},
        "$",
        "Additional properties are not allowed ('env' was unexpected)",
    ),
    (
        "unwrapped-without-steps",
        {"name": "x"},
        "$",
        "'steps' is a required property",
    ),
    (
        "not-a-mapping",
        ["steps"],
        "$",
        "is not of type 'object'",
    ),
]


@pytest.mark.parametrize(
    ("case", "doc", "path", "message"), FLOW_FILE_CASES, ids=[c[0] for c in FLOW_FILE_CASES]
)
def test_bad_plain_flow_file_is_rejected(case: str, doc: Any, path: str, message: str) -> None:
    assert not rs_validator(FLOW_FILE_SCHEMA).is_valid(doc)
    best = best_match(py_validator(FLOW_FILE_SCHEMA).iter_errors(doc))
    assert best is not None, case
    assert best.json_path == path
    assert message in best.message


def test_static_environment_needs_no_integration() -> None:
    doc = example("environments/staging.yaml")
    assert "integration" not in doc["spec"]
    assert py_errors(KIND_SCHEMAS["TestEnvironment"], doc) == []
    assert rs_validator(KIND_SCHEMAS["TestEnvironment"]).is_valid(doc)


def test_rule_by_suite_id_alone_is_valid() -> None:
    doc = apply(example(RULE), (("del", ("spec", "suite")), ("set", ("spec", "suite_id"), UUID)))
    assert py_errors(KIND_SCHEMAS["TriggerRule"], doc) == []
    assert rs_validator(KIND_SCHEMAS["TriggerRule"]).is_valid(doc)


@pytest.mark.parametrize("duration", ["500ms", "1s", "2m", "1h30m", "1.5s", "250us", "10µs"])
def test_go_durations_are_accepted(duration: str) -> None:
    doc = apply(example(LIFECYCLE), (("set", ("spec", "steps", 0, "timeout"), duration),))
    assert py_errors(KIND_SCHEMAS["Flow"], doc) == []
    assert rs_validator(KIND_SCHEMAS["Flow"]).is_valid(doc)


@pytest.mark.parametrize("duration", ["", "1", "1 s", "s", "-1s", "1d", "${TIMEOUT}"])
def test_non_durations_are_rejected(duration: str) -> None:
    doc = apply(example(LIFECYCLE), (("set", ("spec", "steps", 0, "timeout"), duration),))
    assert py_errors(KIND_SCHEMAS["Flow"], doc) != []
    assert not rs_validator(KIND_SCHEMAS["Flow"]).is_valid(doc)


def test_defaults_match_the_design() -> None:
    defs = load_schemas()["definitions.json"]["$defs"]
    rule = load_schemas()["trigger-rule.json"]["properties"]["spec"]["properties"]
    env = load_schemas()["test-environment.json"]["properties"]["spec"]["properties"]
    integration = load_schemas()["integration.json"]["properties"]["spec"]["properties"]
    expected: Mapping[str, tuple[Any, Any]] = {
        "workspace": (defs["metadata"]["properties"]["workspace"]["default"], "default"),
        "branch_filter": (rule["branch_filter"]["default"], "*"),
        "pr_actions": (
            rule["pull_request_actions"]["default"],
            ["opened", "synchronized", "reopened"],
        ),
        "enabled": (rule["enabled"]["default"], True),
        "ttl": (env["ttl_minutes"]["default"], 120),
        "require_secret": (
            integration["config"]["properties"]["require_webhook_secret"]["default"],
            True,
        ),
        "max_attempts": (defs["retry"]["properties"]["max_attempts"]["default"], 1),
        "retry_delay": (defs["retry"]["properties"]["delay"]["default"], "1s"),
        "backoff": (defs["retry"]["properties"]["backoff"]["default"], "fixed"),
    }
    assert {k: a for k, (a, _) in expected.items()} == {k: b for k, (_, b) in expected.items()}
