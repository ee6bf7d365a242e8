"""The deployment examples work as shipped: kustomize base and overlay, Argo CD Application
and notifications, Gitea Actions workflow, pre-commit hook, Dockerfile.

Everything is checked statically (no kubectl, cluster, Argo CD or Docker engine): manifests
are rendered by the kustomize subset in ``deploy_render.py`` and validated against the
Kubernetes and Argo CD schemas; security and wiring rules are asserted on the result.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests import deploy_render as dr

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
BASE = EXAMPLES / "deploy" / "base"
OVERLAY = EXAMPLES / "deploy" / "overlays" / "replicas"
ARGOCD = EXAMPLES / "argocd"
K8S_VERSION = "1.30"  # bundled in kubernetes-validate (1.25 .. 1.37 in 1.37.0)
PORT = 5016
NAMESPACE = "testmesh"
APP_LABEL = {"app.kubernetes.io/name": "testmesh-reconciler"}
IMAGE = "ghcr.io/example/testmesh-reconciler"
# Seconds the outbox flush may take after the grace period (terminationGracePeriodSeconds
# must exceed TESTMESH_GRACE_PERIOD by at least this much).
OUTBOX_FLUSH_ALLOWANCE = 15

# Copied from DESIGN.md section 3 (`serve` flags and their env vars). Keep in sync: the
# test below also checks, when DESIGN.md is found beside the repo, that each is still there.
DESIGN_ENV_VARS = frozenset(
    {
        "TESTMESH_CONFIG_REPO",
        "TESTMESH_BRANCH",
        "TESTMESH_PATH",
        "TESTMESH_LISTEN",
        "TESTMESH_DATA_DIR",
        "TESTMESH_PUBLIC_URL",
        "TESTMESH_POLL_INTERVAL",
        "TESTMESH_DATABASE_URL",
        "TESTMESH_CONFIG_WEBHOOK_SECRET",
        "TESTMESH_API_TOKEN",
        "TESTMESH_PRIVATE_KEY_FILE",
        "TESTMESH_CONFIG_REPO_TOKEN_FILE",
        "TESTMESH_CONFIG_REPO_SSH_KEY_FILE",
        "TESTMESH_STATUS_GIVE_UP_AFTER",
        "TESTMESH_GRACE_PERIOD",
        "TESTMESH_MAX_BODY_BYTES",
        "TESTMESH_MAX_CONCURRENT_RUNS",
        "TESTMESH_MAX_QUEUED_RUNS",
        "TESTMESH_DEDUP_WINDOW",
        "TESTMESH_REAP_INTERVAL",
        "TESTMESH_PROVISION_TIMEOUT",
        "TESTMESH_RUN_LEASE",
    }
)
SENSITIVE_NAME = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL|DATABASE_URL", re.I)

SAMPLE_REVISION = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b"


# ----------------------------------------------------------------------------- fixtures


def find_shared_dir() -> Path:
    """``shared/`` (with ``contracts/``): beside the repo in CI, above it in the workspace."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared"
        if (candidate / "contracts").is_dir():
            return candidate
    pytest.fail(
        f"no shared/contracts found in any parent of {Path(__file__).resolve().parent}; "
        "CI needs a copy of shared/ beside the repository"
    )


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    return find_shared_dir()


@pytest.fixture(scope="module")
def argocd_swagger(shared_dir: Path) -> dict[str, Any]:
    swagger: dict[str, Any] = json.loads(
        (shared_dir / "contracts" / "argocd" / "swagger.json").read_text())
    return swagger


@pytest.fixture(scope="module")
def base_docs() -> list[dict[str, Any]]:
    return dr.render_kustomization(BASE)


@pytest.fixture(scope="module")
def overlay_docs() -> list[dict[str, Any]]:
    return dr.render_kustomization(OVERLAY)


@pytest.fixture(scope="module")
def notifications_cm() -> dict[str, Any]:
    docs = dr.load_yaml_documents(ARGOCD / "argocd-notifications-cm.yaml")
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def application() -> dict[str, Any]:
    docs = dr.load_yaml_documents(ARGOCD / "application.yaml")
    assert len(docs) == 1
    return docs[0]


def sample_application() -> dict[str, Any]:
    """An Application as argocd-notifications sees it after a successful deploy (shape of
    the swagger's v1alpha1Application; checked against it in a test)."""
    return {
        "metadata": {"name": "shop-staging", "namespace": "argocd"},
        "spec": {
            "project": "default",
            "source": {
                "repoURL": "https://gitea.internal/acme/shop.git",
                "targetRevision": "main",
                "path": "deploy/staging",
            },
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "shop"},
        },
        "status": {
            "sync": {"status": "Synced", "revision": SAMPLE_REVISION},
            "health": {"status": "Healthy"},
            "operationState": {
                "phase": "Succeeded",
                "syncResult": {"revision": SAMPLE_REVISION},
                "startedAt": "2026-08-20T10:00:00Z",
                "finishedAt": "2026-08-20T10:00:30Z",
            },
        },
    }


def docs_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = docs_of(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        spec = dr.pod_spec(doc)
        if spec is not None:
            yield f"{doc['kind']}/{doc['metadata']['name']}", spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def effective_env(
    container: dict[str, Any], docs: list[dict[str, Any]]
) -> dict[str, tuple[str, Any]]:
    """name -> (source, value): source is "value", "secret", "configmap" or "other"."""
    env: dict[str, tuple[str, Any]] = {}
    configmaps = {d["metadata"]["name"]: d for d in docs_of(docs, "ConfigMap")}
    for source in container.get("envFrom") or []:
        assert "prefix" not in source, "envFrom prefixes are not expected"
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            assert ref in configmaps, f"envFrom names ConfigMap {ref!r} not in the manifests"
            for key, value in (configmaps[ref].get("data") or {}).items():
                env[key] = ("configmap", value)
        else:
            pytest.fail(f"unexpected envFrom source {source}")
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = ("value", item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = ("secret", item["valueFrom"]["secretKeyRef"])
        else:
            env[item["name"]] = ("other", item.get("valueFrom"))
    return env


def main_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "testmesh-reconciler"]
    return cast(dict[str, Any], container)


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    pytest.fail(f"port name {port!r} is not a port of container {container['name']}")


def secret_files(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """Absolute file path -> Secret name, for files mounted from Secret volumes."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    files: dict[str, str] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        secret = volume.get("secret")
        if secret is None:
            continue
        assert mount.get("readOnly") is True, f"secret mount {mount['mountPath']} not readOnly"
        assert "subPath" not in mount
        items = secret.get("items")
        assert items, f"secret volume {volume['name']} should list its items"
        for item in items:
            files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = secret["secretName"]
    return files


# ------------------------------------------------------------------ kustomize rendering


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_file_is_listed_in_its_kustomization(directory: Path) -> None:
    assert dr.unlisted_files(directory) == []


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_rendered_manifests_validate_against_kubernetes_schemas(directory: Path) -> None:
    docs = dr.render_kustomization(directory)
    assert docs
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, desired_version=K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            message = str(exc).splitlines()[0]
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {message}")
    assert problems == []


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_everything_namespaced_lands_in_testmesh(directory: Path) -> None:
    for doc in dr.render_kustomization(directory):
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


def test_no_secret_resource_is_shipped(base_docs: Any, overlay_docs: Any) -> None:
    for doc in base_docs + overlay_docs:
        assert doc["kind"] != "Secret", "Secrets are created out of band, never committed"


def test_base_resources(base_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in base_docs)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "NetworkPolicy",
        ]
    )
    sa = one(base_docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    pvc = one(base_docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"

    deployment = one(base_docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}, "RWO SQLite volume needs Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = main_container(base_docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data = volumes[mounts["/var/lib/testmesh"]]
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_image_placeholder_set_through_kustomize_images(variant: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{variant}_docs")
    images = dr.load_kustomization(BASE)["images"]
    assert [i["name"] for i in images] == [IMAGE]
    assert main_container(docs)["image"] == f"{IMAGE}:0.1.0"


def test_overlay_runs_three_replicas_on_postgres(overlay_docs: list[dict[str, Any]]) -> None:
    assert not docs_of(overlay_docs, "PersistentVolumeClaim")
    deployment = one(overlay_docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    for volume in pod["volumes"]:
        assert "persistentVolumeClaim" not in volume
    container = main_container(overlay_docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (data,) = [v for v in pod["volumes"] if v["name"] == mounts["/var/lib/testmesh"]]
    assert set(data) == {"name", "emptyDir"}

    env = effective_env(container, overlay_docs)
    assert env["TESTMESH_DATABASE_URL"] == ("secret", {"name": "testmesh-postgres", "key": "url"})

    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(
        t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and t["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
        for t in terms
    )

    pdb = one(overlay_docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# ------------------------------------------------------------------------------ security


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_containers_are_locked_down(variant: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{variant}_docs")
    specs = list(pod_specs(docs))
    assert specs
    for where, spec in specs:
        pod_sc = spec.get("securityContext") or {}
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("runAsUser") == 10001, where
        assert pod_sc.get("fsGroup") == 10001, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is not True, where
        assert spec.get("enableServiceLinks") is False, (
            f"{where}: service links would inject TESTMESH_RECONCILER_* env vars"
        )
        assert not spec.get("hostNetwork"), where
        assert not spec.get("hostPID"), where
        for container in all_containers(spec):
            name = f"{where}/{container['name']}"
            sc = container.get("securityContext") or {}
            effective = {**pod_sc, **sc}
            assert effective.get("runAsNonRoot") is True, name
            assert effective.get("runAsUser") not in (None, 0), name
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("privileged") is not True, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            resources = container.get("resources") or {}
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
            assert "memory" in resources.get("limits", {}), name


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_no_literal_secret_values(variant: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{variant}_docs")
    for configmap in docs_of(docs, "ConfigMap"):
        for key in configmap.get("data") or {}:
            assert not SENSITIVE_NAME.search(key), f"ConfigMap key {key} looks secret"
    for where, spec in pod_specs(docs):
        for container in all_containers(spec):
            files = secret_files(spec, container)
            for item in container.get("env") or []:
                name = item["name"]
                if not SENSITIVE_NAME.search(name):
                    continue
                if "valueFrom" in item:
                    assert set(item["valueFrom"]) == {"secretKeyRef"}, f"{where}: {name}"
                    continue
                assert name.endswith("_FILE"), f"{where}: {name} has a literal value"
                paths = [p.strip() for p in str(item["value"]).split(",")]
                for path in paths:
                    assert path in files, f"{where}: {name}={path} is not a Secret-mounted file"


def test_no_key_material_in_examples() -> None:
    pem = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
    for path in EXAMPLES.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".yml", ".json", ".md", ""}:
            assert not pem.search(path.read_text(encoding="utf-8", errors="replace")), path


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_secret_files_and_mounts_are_wired(variant: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{variant}_docs")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = main_container(docs)
    env = effective_env(container, docs)
    files = secret_files(pod, container)
    for name in ("TESTMESH_PRIVATE_KEY_FILE", "TESTMESH_CONFIG_REPO_TOKEN_FILE"):
        source, value = env[name]
        assert source == "value"
        assert value in files, f"{name}={value} is not mounted from a Secret"
    for name in ("TESTMESH_API_TOKEN", "TESTMESH_CONFIG_WEBHOOK_SECRET"):
        source, ref = env[name]
        assert source == "secret"
        assert ref["name"] == "testmesh-reconciler"
    # the comment tells operators how to create the Secret that is deliberately absent
    text = (BASE / "deployment.yaml").read_text()
    assert "kubectl -n testmesh create secret generic testmesh-reconciler" in text
    for key in ("api-token", "config-webhook-secret", "private-key", "config-repo-token"):
        assert key in text


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_probes_ports_and_grace_period(variant: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{variant}_docs")
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = main_container(docs)
    assert [p["containerPort"] for p in container["ports"]] == [PORT]
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert resolve_port(container, http["port"]) == PORT, probe

    env = effective_env(container, docs)
    assert env["TESTMESH_LISTEN"][1].rsplit(":", 1)[1] == str(PORT)
    assert env["TESTMESH_DATA_DIR"][1] == "/var/lib/testmesh"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/testmesh", "/tmp"} <= mounts
    grace = int(env.get("TESTMESH_GRACE_PERIOD", ("default", "30"))[1])
    assert pod["terminationGracePeriodSeconds"] >= grace + OUTBOX_FLUSH_ALLOWANCE

    service = one(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"]) == ("http", PORT)
    assert resolve_port(container, port["targetPort"]) == PORT
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_network_policy_admits_webhook_senders_and_ingress(variant: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{variant}_docs")
    policy = one(docs, "NetworkPolicy")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert "Ingress" in spec["policyTypes"]
    admitted: set[str] = set()
    for rule in spec["ingress"]:
        assert rule.get("ports") == [{"protocol": "TCP", "port": PORT}], "only port 5016"
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, peer
            selector = peer["namespaceSelector"]
            assert set(selector) == {"matchLabels"}
            admitted.add(selector["matchLabels"]["kubernetes.io/metadata.name"])
    assert admitted == {"argocd", "gitea", "ingress-nginx"}
    # egress stays open (Git, Gitea API, Argo CD API, DNS, services under test)
    if "Egress" in spec["policyTypes"]:
        assert {} in spec["egress"]


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_env_vars_are_design_flags(variant: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{variant}_docs")
    names = set(effective_env(main_container(docs), docs))
    testmesh = {n for n in names if n.startswith("TESTMESH_")}
    assert testmesh
    assert testmesh <= DESIGN_ENV_VARS, sorted(testmesh - DESIGN_ENV_VARS)
    assert names == testmesh, "only TESTMESH_* settings are expected"
    configmap = one(docs, "ConfigMap")
    for key in (
        "TESTMESH_CONFIG_REPO",
        "TESTMESH_BRANCH",
        "TESTMESH_PATH",
        "TESTMESH_PUBLIC_URL",
        "TESTMESH_POLL_INTERVAL",
        "TESTMESH_LISTEN",
        "TESTMESH_GRACE_PERIOD",
    ):
        assert key in configmap["data"], key
    assert configmap["data"]["TESTMESH_LISTEN"] == f"0.0.0.0:{PORT}"


def test_design_env_var_constant_matches_design(shared_dir: Path) -> None:
    design = shared_dir / "DESIGN.md"
    if not design.is_file():
        pytest.skip("DESIGN.md not beside the contracts")
    documented = set(re.findall(r"`(TESTMESH_[A-Z0-9_]+)`", design.read_text()))
    assert documented >= DESIGN_ENV_VARS, sorted(DESIGN_ENV_VARS - documented)


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_daemon_settings_accept_the_manifest_env(variant: str, request: Any) -> None:
    """The env the manifests give the container parses with the daemon's own settings code
    (Secret values replaced by placeholders)."""
    settings = pytest.importorskip("testmesh_reconciler.settings")
    if not hasattr(settings, "settings_from"):
        pytest.skip("testmesh_reconciler.settings has no settings_from yet")
    docs = request.getfixturevalue(f"{variant}_docs")
    env = effective_env(main_container(docs), docs)
    environ = {}
    for name, (source, value) in env.items():
        if source == "secret":
            value = "postgresql://u:p@db:5432/testmesh" if "DATABASE_URL" in name else "placeholder"
        environ[name] = str(value)
    flags = {spec.env for spec in settings.SERVE_FLAGS}
    assert set(environ) <= flags, sorted(set(environ) - flags)
    parsed = settings.settings_from(argparse.Namespace(), environ, hostname=lambda: "pod")
    assert parsed.listen_port == PORT
    assert str(parsed.data_dir) == "/var/lib/testmesh"
    assert parsed.path == ""
    assert parsed.public_url_defaulted is False
    assert parsed.private_key_files == ("/etc/testmesh/private-key/private-key",)
    assert parsed.config_repo_token_file == "/etc/testmesh/config-repo/token"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= parsed.grace_period + OUTBOX_FLUSH_ALLOWANCE
    assert (parsed.database_url is not None) == (variant == "overlay")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_subset_renders_like_real_kustomize(directory: Path) -> None:
    """Where kubectl is around, the test renderer must agree with `kubectl kustomize`."""
    try:
        result = subprocess.run(
            ["kubectl", "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"kubectl kustomize unusable here: {exc}")
    if result.returncode != 0:
        pytest.skip(f"kubectl kustomize failed: {result.stderr.strip()[:200]}")

    def normalize(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: normalize(v) for k, v in value.items()}
        if isinstance(value, list):
            items = [normalize(v) for v in value]
            return sorted(items, key=lambda i: i["name"]) if dr._is_named_list(items) else items
        return value

    real = {dr.resource_key(d): normalize(d) for d in yaml.safe_load_all(result.stdout) if d}
    mine = {dr.resource_key(d): normalize(d) for d in dr.render_kustomization(directory)}
    assert mine == real


# ------------------------------------------------------------------------------- Argo CD


def test_application_matches_argocd_schema(
    application: dict[str, Any], argocd_swagger: dict[str, Any]
) -> None:
    assert dr.application_errors(application, argocd_swagger) == []


def test_schema_rejects_unknown_keys(argocd_swagger: dict[str, Any]) -> None:
    app = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "x"},
        "spec": {"source": {"repoUrl": "https://x"}, "syncPolicy": {"automatic": {}}},
    }
    errors = dr.application_errors(app, argocd_swagger)
    assert any("repoUrl" in e for e in errors), errors
    assert any("automatic" in e for e in errors), errors


def test_application_syncs_the_base(application: dict[str, Any]) -> None:
    meta, spec = application["metadata"], application["spec"]
    assert meta["namespace"] == "argocd"
    assert "resources-finalizer.argocd.argoproj.io" in meta["finalizers"]
    source = spec["source"]
    assert source["repoURL"] == "https://gitea.internal/platform/testmesh-reconciler.git"
    assert (REPO / source["path"]).resolve() == BASE.resolve()
    assert spec["destination"]["namespace"] == dr.load_kustomization(BASE)["namespace"]
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "CreateNamespace=true" in spec["syncPolicy"]["syncOptions"]


def test_sample_application_has_the_swagger_shape(argocd_swagger: dict[str, Any]) -> None:
    app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **sample_application()}
    assert dr.application_errors(app, argocd_swagger) == []


def _cm_yaml(cm: dict[str, Any], key: str) -> Any:
    assert key in cm["data"], f"argocd-notifications-cm has no {key}"
    return yaml.safe_load(cm["data"][key])


def test_notifications_configmap_is_valid(notifications_cm: dict[str, Any]) -> None:
    kubernetes_validate.validate(notifications_cm, desired_version=K8S_VERSION, strict=True)
    assert notifications_cm["metadata"] == {
        "name": "argocd-notifications-cm",
        "namespace": "argocd",
    }
    for key in notifications_cm["data"]:
        assert key.split(".", 1)[0] in {"service", "template", "trigger"}, key
        _cm_yaml(notifications_cm, key)  # every value parses


def test_webhook_service_targets_the_daemon(
    notifications_cm: dict[str, Any], base_docs: list[dict[str, Any]]
) -> None:
    service = _cm_yaml(notifications_cm, "service.webhook.testmesh")
    svc = one(base_docs, "Service")
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert service["url"] == f"http://{host}:{PORT}/api/v1/webhooks/argocd"
    headers = {h["name"]: h["value"] for h in service["headers"]}
    assert headers["Content-Type"] == "application/json"
    secret_ref = headers["X-TestMesh-Secret"]
    assert secret_ref.startswith("$")
    (secret,) = dr.load_yaml_documents(ARGOCD / "argocd-notifications-secret.example.yaml")
    kubernetes_validate.validate(secret, desired_version=K8S_VERSION, strict=True)
    assert secret["metadata"]["name"] == "argocd-notifications-secret"
    assert secret["metadata"]["namespace"] == "argocd"
    assert secret_ref[1:] in secret["stringData"]
    for value in secret["stringData"].values():
        assert "REPLACE" in value, "the example Secret must hold placeholders only"
    assert "NEVER COMMIT" in (ARGOCD / "argocd-notifications-secret.example.yaml").read_text()


def test_template_renders_the_flat_body(notifications_cm: dict[str, Any], shared_dir: Path) -> None:
    template = _cm_yaml(notifications_cm, "template.testmesh-sync")
    webhook = template["webhook"]["testmesh"]  # block named after the service
    assert webhook["method"] == "POST"
    app = sample_application()
    rendered = dr.render_notification_body(webhook["body"], app)
    assert dr.NO_VALUE not in rendered
    body = json.loads(rendered)
    assert body == {
        "app_name": "shop-staging",
        "revision": SAMPLE_REVISION,
        "repository": "https://gitea.internal/acme/shop.git",
        "status": "Synced",
        "health": "Healthy",
        "target_revision": "main",
    }
    contract = json.loads(
        (shared_dir / "contracts" / "argocd" / "notification_sync_succeeded.json").read_text()
    )
    assert set(contract) <= set(body)


def test_body_renderer_subset() -> None:
    app = {"metadata": {"name": "a"}, "spec": {}}
    assert dr.render_notification_body("x {{ .app.metadata.name }} y", app) == "x a y"
    assert dr.render_notification_body("x  {{- .app.metadata.name -}}  y", app) == "xay"
    assert dr.render_notification_body("{{.app.spec.source.repoURL}}", app) == dr.NO_VALUE
    with pytest.raises(dr.TemplateError):
        dr.render_notification_body('{{call .repo.FullNameByRepoURL "x"}}', app)


@pytest.mark.parametrize(
    "trigger", ["trigger.on-sync-succeeded-testmesh", "trigger.on-deployed-testmesh"]
)
def test_triggers_fire_for_a_deployed_application(
    notifications_cm: dict[str, Any], trigger: str
) -> None:
    conditions = _cm_yaml(notifications_cm, trigger)
    assert isinstance(conditions, list)
    assert len(conditions) == 1
    (condition,) = conditions
    assert condition["send"] == ["testmesh-sync"]
    assert f"template.{condition['send'][0]}" in notifications_cm["data"]
    app = sample_application()
    assert dr.evaluate_expression(condition["when"], app) is True
    assert dr.evaluate_expression(condition["oncePer"], app) == SAMPLE_REVISION

    running = sample_application()
    running["status"]["operationState"]["phase"] = "Running"
    assert dr.evaluate_expression(condition["when"], running) is False


def test_trigger_conditions_are_the_documented_ones(notifications_cm: dict[str, Any]) -> None:
    (succeeded,) = _cm_yaml(notifications_cm, "trigger.on-sync-succeeded-testmesh")
    assert succeeded["when"] == "app.status.operationState.phase in ['Succeeded']"
    (deployed,) = _cm_yaml(notifications_cm, "trigger.on-deployed-testmesh")
    assert deployed["when"] == (
        "app.status.operationState.phase in ['Succeeded'] and app.status.health.status == 'Healthy'"
    )
    assert deployed["oncePer"] == "app.status.sync.revision"
    progressing = sample_application()
    progressing["status"]["health"]["status"] = "Progressing"
    assert dr.evaluate_expression(deployed["when"], progressing) is False
    assert dr.evaluate_expression(succeeded["when"], progressing) is True


def test_expression_evaluator_catches_typos() -> None:
    app = sample_application()
    # a misspelled leaf is nil, so the condition is false
    assert dr.evaluate_expression("app.status.health.stauts == 'Healthy'", app) is False
    with pytest.raises(dr.ExprError):  # a misspelled branch fails like expr-lang does
        dr.evaluate_expression("app.status.operationStat.phase in ['Succeeded']", app)
    with pytest.raises(dr.ExprError):
        dr.evaluate_expression("ap.status.sync.status == 'Synced'", app)
    assert dr.evaluate_expression("app.status.operationStat?.phase == nil", app) is True
    assert (
        dr.evaluate_expression("app.status?.operationState.phase in ['Succeeded', 'x']", app)
        is True
    )
    assert dr.evaluate_expression("not (app.spec.project != 'default') && true", app) is True
    assert dr.evaluate_expression("'Synced' not in ['OutOfSync']", app) is True


def test_subscription_annotation_names_a_trigger_and_service(
    notifications_cm: dict[str, Any], argocd_swagger: dict[str, Any]
) -> None:
    (snippet,) = dr.load_yaml_documents(ARGOCD / "subscription-annotation.yaml")
    annotations = snippet["metadata"]["annotations"]
    assert annotations == {"notifications.argoproj.io/subscribe.on-deployed-testmesh.testmesh": ""}
    for key in annotations:
        trigger, service = key.removeprefix("notifications.argoproj.io/subscribe.").split(".")
        assert f"trigger.{trigger}" in notifications_cm["data"]
        assert f"service.webhook.{service}" in notifications_cm["data"]
    app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **sample_application()}
    app["metadata"] = {**app["metadata"], **snippet["metadata"]}
    assert dr.application_errors(app, argocd_swagger) == []


# ------------------------------------------------------------------- CI and pre-commit


def test_gitea_actions_workflow() -> None:
    workflow = yaml.safe_load((EXAMPLES / "gitea-actions" / "validate.yaml").read_text())
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in on
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    python = next(s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python@"))
    assert str(python["with"]["python-version"]) == "3.11"
    runs = [str(s.get("run", "")) for s in steps]
    assert any(re.search(r"pip install .*testmesh-reconciler", r) for r in runs)
    (validate,) = [r for r in runs if "testmesh-reconciler validate" in r]
    assert re.search(r"--base\s+\"?origin/\$\{\{\s*(gitea|github)\.base_ref\s*\}\}", validate)


def test_pre_commit_hook_and_example() -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    (hook,) = [h for h in hooks if h["id"] == "testmesh-validate"]
    assert hook["pass_filenames"] is False
    assert hook["always_run"] is True
    assert hook["language"] == "python"
    assert hook["name"]
    assert hook["entry"] == "testmesh-reconciler validate"
    pattern = re.compile(hook["files"])
    assert pattern.search("rules/a.yaml")
    assert pattern.search("b.yml")
    assert not pattern.search("c.py")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert hook["entry"].split()[0] in scripts

    example = yaml.safe_load((EXAMPLES / "pre-commit-config.example.yaml").read_text())
    (repo,) = example["repos"]
    assert repo["repo"] == "https://gitea.internal/platform/testmesh-reconciler"
    assert repo["rev"] == "v0.1.0"
    assert [h["id"] for h in repo["hooks"]] == ["testmesh-validate"]


# ---------------------------------------------------------------------------- Dockerfile


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[tuple[str, str]], list[Any]]:
    return dr.parse_dockerfile((REPO / "Dockerfile").read_text())


def _base_image(stage: Any, preamble: list[tuple[str, str]]) -> str:
    args = {}
    for instruction, rest in preamble:
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), stage.base)


def test_dockerfile_is_multi_stage_on_slim_python(dockerfile: Any) -> None:
    preamble, stages = dockerfile
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    for stage in (builder, final):
        assert _base_image(stage, preamble) == "python:3.11-slim"
    builder_runs = " ".join(builder.args("RUN"))
    assert re.search(r"pip wheel .*-w /wheels", builder_runs)
    final_runs = " ".join(final.args("RUN"))
    wheels_from_builder = "from=builder" in final_runs or any(
        "--from=builder" in c for c in final.args("COPY")
    )
    assert wheels_from_builder, "the final stage installs the wheels built by the builder"
    assert re.search(r"pip install [^&]*--no-index [^&]*--find-links[= ]/wheels", final_runs)
    for tool in ("build-essential", "gcc", "pytest", "ruff", "mypy"):
        assert tool not in final_runs, f"{tool} in the final image"
    assert not any(i == "COPY" and "--from" not in a for i, a in final.instructions), (
        "the final stage copies nothing from the build context"
    )


def test_dockerfile_runtime_contract(dockerfile: Any) -> None:
    _, stages = dockerfile
    final = stages[-1]
    runs = " ".join(final.args("RUN"))
    install = re.search(r"apt-get install ([^&]*)", runs)
    assert install
    assert {"git", "openssh-client"} <= set(install[1].split())
    assert "--uid 10001" in runs
    (user,) = final.args("USER")
    assert user.split(":")[0] == "10001"
    assert final.args("EXPOSE") == [str(PORT)]
    assert dr.exec_form(final.args("ENTRYPOINT")[-1]) == ["testmesh-reconciler"]
    assert dr.exec_form(final.args("CMD")[-1]) == ["serve"]
    assert dr.exec_form(final.args("VOLUME")[-1]) == ["/var/lib/testmesh"]
    env = " ".join(final.args("ENV"))
    assert "TESTMESH_DATA_DIR=/var/lib/testmesh" in env
    names = set(re.findall(r"\b(TESTMESH_[A-Z0-9_]+)=", env))
    assert names <= DESIGN_ENV_VARS, sorted(names - DESIGN_ENV_VARS)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "testmesh-reconciler" in scripts


def test_dockerfile_healthcheck(dockerfile: Any) -> None:
    _, stages = dockerfile
    (healthcheck,) = stages[-1].args("HEALTHCHECK")
    command = healthcheck[healthcheck.index("CMD") + 3 :].strip()
    argv = dr.exec_form(command)
    assert argv is not None
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2]
    assert "urllib" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")  # the one-liner is valid Python


def test_dockerignore_keeps_the_build_inputs(dockerfile: Any) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".git" in patterns
    _, stages = dockerfile
    sources: list[str] = []
    for stage in stages:
        for args in stage.args("COPY"):
            if "--from" in args:
                continue
            sources.extend(args.split()[:-1])
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        for pattern in patterns:
            assert not fnmatch.fnmatch(source, pattern.removeprefix("**/")), (
                f"COPY {source} is excluded by .dockerignore pattern {pattern}"
            )


def test_schema_builder_is_draft4_valid(argocd_swagger: dict[str, Any]) -> None:
    jsonschema.Draft4Validator.check_schema(dr.argocd_schema(argocd_swagger, "v1alpha1Application"))
