"""Generates large, valid config repos for the benchmarks (mixed kinds, varied layouts).

``python benchmarks/gen_config.py DIR --declarations 10000 [--layout mixed|single-rules]``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

HEAD = "apiVersion: testmesh.io/v1alpha1\n"

INTEGRATIONS = HEAD + """kind: Integration
metadata: {name: gitea-internal}
spec:
  type: git
  provider: gitea
  config: {url: "https://gitea.internal"}
  secrets:
    token: {env: GITEA_TOKEN}
    webhook_secret: {env: GITEA_WEBHOOK_SECRET}
---
""" + HEAD + """kind: Integration
metadata: {name: argocd-staging}
spec:
  type: git
  provider: argocd
  config: {url: "https://argocd.internal", app_filter: "app-*"}
  secrets:
    token: {env: ARGOCD_TOKEN}
    webhook_secret: {env: ARGOCD_WEBHOOK_SECRET}
"""


def flow(i: int) -> str:
    return HEAD + f"""kind: Flow
metadata:
  name: flow-{i}
  labels: {{team: team-{i % 17}}}
spec:
  name: Flow {i}
  description: Create then read item {i}
  tags: [generated, smoke]
  env: {{ITEM: "item-{i}"}}
  steps:
    - id: create
      action: http_request
      config:
        method: POST
        url: "${{BASE_URL}}/items"
        headers: {{Content-Type: application/json}}
        body: {{name: "${{ITEM}}", n: {i}}}
      output: {{item_id: "$.body.id"}}
      assert: ["status == 201", "body.id != nil"]
      retry: {{max_attempts: 3, delay: 200ms, backoff: exponential}}
    - id: read
      action: http_request
      config: {{method: GET, url: "${{BASE_URL}}/items/${{item_id}}"}}
      assert: ["status == 200 && body.name == \\"item-{i}\\""]
"""


def suite(i: int, flows: int) -> str:
    a, b = i % flows, (i + 1) % flows
    return HEAD + f"""kind: Suite
metadata: {{name: suite-{i}}}
spec:
  description: Suite {i}
  tags: [generated]
  variables: {{BASE_URL: "http://127.0.0.1:8080"}}
  flows:
    - {{flow: flow-{a}, order: 0, parallel: true}}
    - {{flow: flow-{b}, order: 0, parallel: true}}
    - {{flow: flow-{a}, order: 1}}
"""


def rule(i: int, suites: int) -> str:
    if i % 2:
        return HEAD + f"""kind: TriggerRule
metadata: {{name: rule-{i}}}
spec:
  integration: argocd-staging
  repository: app-{i}
  branch_filter: "*"
  event_types: [sync]
  suite: suite-{i % suites}
  variables: {{TARGET: "app-{i}"}}
"""
    return HEAD + f"""kind: TriggerRule
metadata: {{name: rule-{i}}}
spec:
  integration: gitea-internal
  repository: org-{i % 50}/repo-{i}
  branch_filter: "release/**"
  event_types: [push, pull_request]
  pull_request_actions: [opened, synchronized]
  suite: suite-{i % suites}
  report: {{context: "testmesh/rule-{i}"}}
"""


def environment(i: int) -> str:
    return HEAD + f"""kind: TestEnvironment
metadata: {{name: env-{i}}}
spec:
  provider: static
  routing_policy:
    svc-{i}: "http://svc-{i}.staging.svc:8080"
"""


def generate(root: Path, declarations: int, layout: str) -> int:
    root.mkdir(parents=True, exist_ok=True)
    (root / "integrations.yaml").write_text(INTEGRATIONS)
    if layout == "single-rules":
        n_rules, n_suites, n_flows, n_envs = declarations - 2, 1, 1, 0
        (root / "suite.yaml").write_text(suite(0, 1))
        (root / "flow.yaml").write_text(flow(0))
        for i in range(n_rules):
            (root / "rules").mkdir(exist_ok=True)
            (root / "rules" / f"rule-{i}.yaml").write_text(rule(i, 1))
        return n_rules + 4
    n = declarations - 2
    n_flows, n_suites, n_envs = n // 5, n // 5, n // 10
    n_rules = n - n_flows - n_suites - n_envs
    kinds: list[tuple[str, Callable[..., str], int, dict[str, int]]] = [
        ("flows", flow, n_flows, {}), ("suites", suite, n_suites, {"flows": n_flows}),
             ("rules", rule, n_rules, {"suites": n_suites}), ("environments", environment,
                                                              n_envs, {})]
    for folder, make, count, kw in kinds:
        (root / folder).mkdir(exist_ok=True)
        half = count // 2
        for i in range(half):  # one declaration per file
            (root / folder / f"{folder}-{i}.yaml").write_text(make(i, *kw.values()))
        batch: list[str] = []
        for i in range(half, count):  # ten per file
            batch.append(make(i, *kw.values()))
            if len(batch) == 10 or i == count - 1:
                (root / folder / f"batch-{i}.yaml").write_text("---\n".join(batch))
                batch = []
    return n + 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("--declarations", type=int, default=10_000)
    parser.add_argument("--layout", choices=("mixed", "single-rules"), default="mixed")
    args = parser.parse_args()
    print(generate(args.dir, args.declarations, args.layout))


if __name__ == "__main__":
    main()
