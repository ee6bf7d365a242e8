"""Test helpers for the deployment examples: render them the way their real consumers do.

A tiny pure-Python kustomize subset (resources, namespace, images, strategic-merge patches),
the argocd-notifications body renderer and trigger-condition evaluator, a JSON Schema for
Argo CD Applications built from the Argo CD swagger, and a Dockerfile parser. No kubectl,
kustomize, Argo CD or Docker needed.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# --------------------------------------------------------------------------- kustomize

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KUSTOMIZATION_FIELDS = frozenset(
    {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
)
# Kinds kustomize's namespace transformer leaves alone (cluster-scoped).
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "APIService",
    }
)
# Where container images live in the workload kinds we render.
_POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


class KustomizeSubsetError(Exception):
    """The kustomization uses something this subset does not implement, or is broken."""


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """All non-empty YAML documents of a file."""
    with path.open(encoding="utf-8") as fh:
        docs = [doc for doc in yaml.safe_load_all(fh) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeSubsetError(f"{path}: a document is not a mapping")
    return docs


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise KustomizeSubsetError(f"{directory}: no kustomization.yaml")


def load_kustomization(directory: Path) -> dict[str, Any]:
    docs = load_yaml_documents(kustomization_file(directory))
    if len(docs) != 1:
        raise KustomizeSubsetError(f"{directory}: kustomization must be one YAML document")
    kustomization = docs[0]
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZATION_FIELDS
    if unsupported:
        raise KustomizeSubsetError(
            f"{directory}: fields not supported by the test renderer: {sorted(unsupported)}"
        )
    return kustomization


def referenced_files(directory: Path) -> set[str]:
    """Names of the files in ``directory`` its kustomization lists (resources and patches)."""
    kustomization = load_kustomization(directory)
    names = {kustomization_file(directory).name}
    for entry in kustomization.get("resources") or []:
        names.add(str(entry))
    for patch in kustomization.get("patches") or []:
        if "path" in patch:
            names.add(str(patch["path"]))
    return names


def unlisted_files(directory: Path) -> list[str]:
    """Files of ``directory`` (not hidden) that its kustomization forgets to list."""
    listed = referenced_files(directory)
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in listed
    )


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization directory (recursively) with the supported subset."""
    directory = directory.resolve()
    kustomization = load_kustomization(directory)
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources") or []:
        entry = str(entry)
        if "://" in entry or entry.startswith("github.com/"):
            raise KustomizeSubsetError(f"{directory}: remote resource {entry!r} not supported")
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(render_kustomization(target))
        elif target.is_file():
            resources.extend(copy.deepcopy(load_yaml_documents(target)))
        else:
            raise KustomizeSubsetError(f"{directory}: resource {entry!r} does not exist")
    _check_unique(resources, directory)

    for patch_entry in kustomization.get("patches") or []:
        if set(patch_entry) - {"path", "patch"}:
            raise KustomizeSubsetError(
                f"{directory}: patch options {sorted(set(patch_entry) - {'path', 'patch'})} "
                "not supported (target the resource by apiVersion/kind/metadata.name)"
            )
        if "path" in patch_entry:
            patch_docs = load_yaml_documents(directory / str(patch_entry["path"]))
        else:
            patch_docs = [d for d in yaml.safe_load_all(str(patch_entry["patch"])) if d]
        for patch in patch_docs:
            resources = apply_patch(resources, patch)

    namespace = kustomization.get("namespace")
    if namespace:
        for res in resources:
            if res.get("kind") == "Namespace":
                if res["metadata"]["name"] != namespace:
                    raise KustomizeSubsetError(
                        f"{directory}: renaming a Namespace resource is not supported"
                    )
                continue
            if res.get("kind") not in CLUSTER_SCOPED_KINDS:
                res.setdefault("metadata", {})["namespace"] = namespace

    for image in kustomization.get("images") or []:
        apply_image(resources, image)
    return resources


def _check_unique(resources: list[dict[str, Any]], directory: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for res in resources:
        key = resource_key(res)
        if key in seen:
            raise KustomizeSubsetError(f"{directory}: duplicate resource {key}")
        seen.add(key)


def resource_key(res: dict[str, Any]) -> tuple[str, str, str]:
    """(group, kind, name): how kustomize identifies a resource for a patch."""
    group = str(res.get("apiVersion", "")).rpartition("/")[0]
    return group, str(res.get("kind")), str(res.get("metadata", {}).get("name"))


def apply_patch(resources: list[dict[str, Any]], patch: dict[str, Any]) -> list[dict[str, Any]]:
    """Apply one strategic-merge patch document to the resource it names."""
    key = resource_key(patch)
    matches = [i for i, res in enumerate(resources) if resource_key(res) == key]
    if len(matches) != 1:
        raise KustomizeSubsetError(f"patch target {key} matches {len(matches)} resources")
    index = matches[0]
    if patch.get("$patch") == "delete":
        return resources[:index] + resources[index + 1 :]
    resources = list(resources)
    resources[index] = strategic_merge(resources[index], patch)
    return resources


def _is_named_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict) and "name" in item for item in value
    )


def strategic_merge(base: Any, patch: Any) -> Any:
    """A strategic-merge subset: maps merge deeply, ``null`` deletes a key, lists of maps
    that all have a ``name`` (containers, env, volumes, volumeMounts, ports) merge by name
    (new items first, as kustomize does; ``$patch: delete`` removes one), other lists and
    scalars are replaced. ``$patch: replace`` on a map replaces it."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return _strip_directives(patch)
        if directive not in (None, "merge"):
            raise KustomizeSubsetError(f"$patch: {directive} not supported here")
        if not isinstance(base, dict):
            return _strip_directives(patch)
        merged = dict(base)
        for key, value in patch.items():
            if key == "$patch":
                continue
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = _strip_directives(value)
        return merged
    if isinstance(patch, list) and _is_named_list(patch) and _is_named_list(base):
        by_name = {item["name"]: item for item in base}
        added: list[Any] = []
        deleted: set[str] = set()
        for item in patch:
            name = item["name"]
            if item.get("$patch") == "delete":
                deleted.add(name)
            elif name in by_name:
                by_name[name] = strategic_merge(by_name[name], item)
            else:
                added.append(_strip_directives(item))
        kept = [by_name[item["name"]] for item in base if item["name"] not in deleted]
        return added + kept
    return _strip_directives(patch)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v) for k, v in value.items() if k != "$patch" and v is not None
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


_IMAGE_RE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>.+))?$")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``registry/name:tag@digest`` -> (name, tag, digest); a registry port is no tag."""
    match = _IMAGE_RE.match(image)
    if not match:
        raise KustomizeSubsetError(f"cannot parse image {image!r}")
    name, tag, digest = match["name"], match["tag"], match["digest"]
    if tag is not None and "/" in tag:  # "host:5000/name" has no tag
        name, tag = f"{name}:{tag}", None
    return name, tag, digest


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    path = _POD_SPEC_PATHS.get(str(resource.get("kind")))
    if path is None:
        return None
    node: Any = resource
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


def containers(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(resource)
    if spec is None:
        return
    for key in ("initContainers", "containers"):
        yield from spec.get(key) or []


def apply_image(resources: list[dict[str, Any]], image: dict[str, Any]) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeSubsetError(f"images entry {image} has unsupported fields")
    for res in resources:
        for container in containers(res):
            name, tag, digest = split_image(str(container.get("image", "")))
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "newTag" in image:
                tag, digest = str(image["newTag"]), None
            if "digest" in image:
                tag, digest = None, str(image["digest"])
            container["image"] = (
                name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            )


# ------------------------------------------------------------- argocd-notifications


class TemplateError(Exception):
    """The template uses Go template syntax the renderer does not implement."""


_ACTION_RE = re.compile(r"\{\{(?P<ltrim>-\s)?\s*(?P<body>.*?)\s*(?P<rtrim>\s-)?\}\}", re.S)
_FIELD_RE = re.compile(r"^(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")
NO_VALUE = "<no value>"


def _go_print(value: Any, action: str) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TemplateError(f"{action} renders a {type(value).__name__}, not a scalar")


def render_notification_body(template_body: str, app: dict[str, Any]) -> str:
    """Render an argocd-notifications template body for Application ``app``.

    Implements the Go text/template subset the examples use: field references such as
    ``{{.app.metadata.name}}`` (with optional ``{{-``/``-}}`` whitespace trimming), looked
    up in ``{"app": app}``. A missing key renders ``<no value>`` as Go does for maps; no
    JSON escaping is applied (argocd-notifications applies none either). Any other action
    (functions, pipelines, if/range) raises TemplateError.
    """
    data: dict[str, Any] = {"app": app}
    out: list[str] = []
    pos = 0
    for match in _ACTION_RE.finditer(template_body):
        text = template_body[pos : match.start()]
        if match["ltrim"]:
            text = text.rstrip()
        out.append(text)
        body = match["body"]
        if not _FIELD_RE.match(body):
            raise TemplateError(f"unsupported template action {match.group(0)!r}")
        value: Any = data
        for key in body.lstrip(".").split("."):
            if value is None:
                break
            if not isinstance(value, dict):
                raise TemplateError(f"{match.group(0)}: can't evaluate field {key}")
            value = value.get(key)
        out.append(_go_print(value, match.group(0)))
        pos = match.end()
        if match["rtrim"]:
            while pos < len(template_body) and template_body[pos].isspace():
                pos += 1
    out.append(template_body[pos:])
    return "".join(out)


class ExprError(Exception):
    """A trigger expression uses syntax outside the subset, or fails to evaluate."""


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op>==|!=|&&|\|\||\?\.|[\[\](),.!])
      | (?P<num>\d+(?:\.\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "nil"}
_MISSING = object()


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        match = _TOKEN_RE.match(expr, pos)
        if not match or match.end() == pos:
            raise ExprError(f"cannot tokenize {expr[pos:]!r} in {expr!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match[kind]))
        pos = match.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return tokens


class _Parser:
    """Recursive descent over the expr-lang subset argocd-notifications triggers use:
    member access with ``.`` and ``?.``, string/number/bool/nil literals, ``[...]`` lists,
    ``==``, ``!=``, ``in``, ``not in``, ``and``/``&&``, ``or``/``||``, ``not``/``!``, parens.
    Evaluates while parsing (no short-circuit needed: every operand is side-effect free)."""

    def __init__(self, expr: str, env: dict[str, Any]) -> None:
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.pos = 0
        self.env = env

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def accept(self, *values: str) -> str | None:
        token = self.peek()
        if token and token[1] in values and token[0] in ("op", "ident"):
            self.pos += 1
            return token[1]
        return None

    def expect(self, value: str) -> None:
        if not self.accept(value):
            raise ExprError(f"expected {value!r} at token {self.pos} of {self.expr!r}")

    def parse(self) -> Any:
        value = self.or_expr()
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()} in {self.expr!r}")
        return value

    def or_expr(self) -> Any:
        value = self.and_expr()
        while self.accept("or", "||"):
            right = self.and_expr()
            value = bool(value) or bool(right)
        return value

    def and_expr(self) -> Any:
        value = self.not_expr()
        while self.accept("and", "&&"):
            right = self.not_expr()
            value = bool(value) and bool(right)
        return value

    def not_expr(self) -> Any:
        if self.accept("not", "!"):
            return not self.not_expr()
        return self.comparison()

    def comparison(self) -> Any:
        left = self.member()
        if self.accept("=="):
            return left == self.member()
        if self.accept("!="):
            return left != self.member()
        negate = False
        if (
            self.peek() == ("ident", "not")
            and self.pos + 1 < len(self.tokens)
            and (self.tokens[self.pos + 1] == ("ident", "in"))
        ):
            self.pos += 1
            negate = True
        if self.accept("in"):
            right = self.member()
            if not isinstance(right, list | dict | str):
                raise ExprError(f"'in' needs a list on the right in {self.expr!r}")
            return (left not in right) if negate else (left in right)
        return left

    def member(self) -> Any:
        value = self.primary()
        short_circuited = False
        while True:
            op = self.accept(".", "?.")
            if op is None:
                return None if short_circuited else value
            token = self.peek()
            if token is None or token[0] != "ident":
                raise ExprError(f"expected a field name after {op!r} in {self.expr!r}")
            self.pos += 1
            if short_circuited:
                continue
            if value is None:
                if op == "?.":
                    short_circuited = True
                    continue
                raise ExprError(f"cannot fetch {token[1]!r} from nil in {self.expr!r}")
            if not isinstance(value, dict):
                raise ExprError(f"cannot fetch {token[1]!r} from {value!r} in {self.expr!r}")
            value = value.get(token[1])

    def primary(self) -> Any:
        token = self.peek()
        if token is None:
            raise ExprError(f"unexpected end of {self.expr!r}")
        kind, text = token
        self.pos += 1
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "ident":
            if text == "true":
                return True
            if text == "false":
                return False
            if text == "nil":
                return None
            if text in _KEYWORDS:
                raise ExprError(f"unexpected {text!r} in {self.expr!r}")
            value = self.env.get(text, _MISSING)
            if value is _MISSING:
                raise ExprError(f"unknown name {text!r} in {self.expr!r}")
            return value
        if text == "(":
            value = self.or_expr()
            self.expect(")")
            return value
        if text == "[":
            items: list[Any] = []
            if not self.accept("]"):
                items.append(self.or_expr())
                while self.accept(","):
                    items.append(self.or_expr())
                self.expect("]")
            return items
        raise ExprError(f"unexpected {text!r} in {self.expr!r}")


def evaluate_expression(expr: str, app: dict[str, Any]) -> Any:
    """Evaluate a trigger ``when`` / ``oncePer`` expression for Application ``app``."""
    return _Parser(expr, {"app": app}).parse()


# ------------------------------------------------------------------------ Argo CD schema


def _close_schema(node: Any) -> None:
    """Add ``additionalProperties: false`` to every object schema listing its properties."""
    if not isinstance(node, dict):
        return
    props = node.get("properties")
    if isinstance(props, dict):
        node.setdefault("additionalProperties", False)
        for sub in props.values():
            _close_schema(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _close_schema(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key) or []:
            _close_schema(sub)


def argocd_schema(swagger: dict[str, Any], definition: str) -> dict[str, Any]:
    """A closed (unknown keys rejected) Draft 4 schema for one swagger definition."""
    definitions = copy.deepcopy(swagger["definitions"])
    for sub in definitions.values():
        _close_schema(sub)
    return {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "definitions": definitions,
        "allOf": [{"$ref": f"#/definitions/{definition}"}],
    }


def application_errors(doc: dict[str, Any], swagger: dict[str, Any]) -> list[str]:
    """Problems of an Argo CD Application manifest (apiVersion/kind checked here, the rest
    against the swagger's ``v1alpha1Application`` with unknown keys rejected)."""
    import jsonschema

    errors: list[str] = []
    if doc.get("apiVersion") != "argoproj.io/v1alpha1":
        errors.append(f"apiVersion {doc.get('apiVersion')!r} != 'argoproj.io/v1alpha1'")
    if doc.get("kind") != "Application":
        errors.append(f"kind {doc.get('kind')!r} != 'Application'")
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    validator = jsonschema.Draft4Validator(argocd_schema(swagger, "v1alpha1Application"))
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        location = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        errors.append(f"{location}: {error.message}")
    return errors


# ----------------------------------------------------------------------------- Dockerfile


@dataclass
class DockerStage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction.upper()]


def _logical_lines(text: str) -> Iterable[str]:
    current: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        line = " ".join(part for part in current if part)
        current = []
        if line:
            yield line
    if current:
        yield " ".join(current)


def parse_dockerfile(text: str) -> tuple[list[tuple[str, str]], list[DockerStage]]:
    """(global instructions before the first FROM, stages)."""
    preamble: list[tuple[str, str]] = []
    stages: list[DockerStage] = []
    for line in _logical_lines(text):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        rest = rest.strip()
        if instruction == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(DockerStage(base=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((instruction, rest))
        else:
            preamble.append((instruction, rest))
    return preamble, stages


def exec_form(args: str) -> list[str] | None:
    """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for shell form."""
    args = args.strip()
    if not args.startswith("["):
        return None
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not an exec-form array: {args}")
    return value
