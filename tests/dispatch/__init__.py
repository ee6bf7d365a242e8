"""Tests of webhooks to runs: the config they run against, shared by in-process and e2e tests.

``config_files(service_url)`` is a small config repo: a Gitea and an Argo CD integration,
one flow that calls the service under test once per run (keyed by the sha), rules for
push, pull_request and sync events.
"""

from __future__ import annotations

HEAD = "apiVersion: testmesh.io/v1alpha1\n"
GITEA = "gitea-internal"
ARGOCD = "argocd-staging"
HOOK_ENV = {"TM_GITEA_HOOK": "gitea-hook-secret", "TM_GITEA_TOKEN": "gitea-token",
            "TM_ARGO_HOOK": "argo-hook-secret"}


def config_files(service_url: str, *, delay: float = 0.0,
                 environment: bool = False) -> dict[str, str]:
    """Declarations for the dispatch tests (secrets from env vars in ``HOOK_ENV``); with
    ``environment``, pushes run on a static TestEnvironment ``shared``, one per branch."""
    uses = "  environment: shared\n" if environment else ""
    files = {
        "integrations.yaml": HEAD + f"""kind: Integration
metadata: {{name: {GITEA}}}
spec:
  type: git
  provider: gitea
  config: {{url: "https://gitea.example.com"}}
  secrets:
    token: {{env: TM_GITEA_TOKEN}}
    webhook_secret: {{env: TM_GITEA_HOOK}}
---
""" + HEAD + f"""kind: Integration
metadata: {{name: {ARGOCD}}}
spec:
  type: git
  provider: argocd
  config: {{url: "https://argocd.example.com", app_filter: "testmesh-*"}}
  secrets:
    webhook_secret: {{env: TM_ARGO_HOOK}}
""",
        "flows.yaml": HEAD + """kind: Flow
metadata: {name: hit}
spec:
  name: hit
  steps:
    - id: call
      action: http_request
      config: {method: GET, url: "${base}/hit/${sha}?delay=${delay}"}
      assert: ["status == 200"]
""",
        "suites.yaml": HEAD + f"""kind: Suite
metadata: {{name: smoke}}
spec:
  variables: {{base: "{service_url}", delay: "{delay}", sha: manual}}
  flows: [{{flow: hit, order: 0}}]
""",
        "rules.yaml": HEAD + f"""kind: TriggerRule
metadata: {{name: shop-push}}
spec:
  integration: {GITEA}
  repository: acme/shop
  event_types: [push]
  suite: smoke
{uses}---
""" + HEAD + f"""kind: TriggerRule
metadata: {{name: shop-pr}}
spec:
  integration: {GITEA}
  repository: acme/shop
  event_types: [pull_request]
  suite: smoke
---
""" + HEAD + f"""kind: TriggerRule
metadata: {{name: demo-sync}}
spec:
  integration: {ARGOCD}
  repository: testmesh-demo
  event_types: [sync]
  suite: smoke
""",
    }
    if environment:
        files["environments.yaml"] = HEAD + f"""kind: TestEnvironment
metadata: {{name: shared}}
spec:
  provider: static
  context: "${{branch}}"
  routing_policy: {{api: "{service_url}"}}
"""
    return files
