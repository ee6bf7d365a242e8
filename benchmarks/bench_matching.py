"""Benchmark: CPU per Gitea push webhook (select_integration + verify, parse, match).

Builds snapshots with 100 and 10,000 trigger rules (spread over repositories, three on the
pushed one) and times the pure webhook path per delivery, beside a peer that scans every
rule linearly. The indexed path should not grow with the rule count; the scan does.
Run: ``python benchmarks/bench_matching.py [RULES...]`` (default 100 10000).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from testmesh_reconciler.config.loader import files_from_bytes
from testmesh_reconciler.config.model import Integration, SecretRef, SecretValue, Snapshot
from testmesh_reconciler.loading import make_loader
from testmesh_reconciler.matching import match, rule_accepts
from testmesh_reconciler.triggers import Trigger
from testmesh_reconciler.webhooks import gitea

HEAD = "apiVersion: testmesh.io/v1alpha1\n"
SECRET = "bench-webhook-secret"
PUSH_SAMPLE = Path(__file__).resolve().parents[2] / "shared/contracts/gitea/webhooks/push.json"

BASE = HEAD + """kind: Integration
metadata: {name: gitea-internal}
spec:
  type: git
  provider: gitea
  config: {url: "https://gitea.internal"}
  secrets: {webhook_secret: {env: GITEA_WEBHOOK_SECRET}}
---
""" + HEAD + """kind: Integration
metadata: {name: gitea-other}
spec:
  type: git
  provider: gitea
  config: {url: "https://gitea.other"}
  secrets: {webhook_secret: {env: OTHER_WEBHOOK_SECRET}}
---
""" + HEAD + """kind: Flow
metadata: {name: f}
spec:
  name: F
  steps: [{id: s, action: log, config: {message: hi}}]
---
""" + HEAD + """kind: Suite
metadata: {name: smoke}
spec:
  flows: [{flow: f, order: 0}]
"""


def rule(name: str, repo: str, branch_filter: str, events: str) -> str:
    return HEAD + f"""kind: TriggerRule
metadata: {{name: {name}}}
spec:
  integration: gitea-internal
  repository: {repo}
  branch_filter: "{branch_filter}"
  event_types: {events}
  suite: smoke
"""


def build(rules: int) -> Snapshot:
    docs = [rule("acme-main", "acme/shop", "main", "[push]"),
            rule("acme-release", "acme/shop", "release/*", "[push]"),
            rule("acme-pr", "acme/shop", "**", "[pull_request]")]
    docs += [rule(f"rule-{i}", f"org-{i % 50}/repo-{i}", "release/**", "[push, pull_request]")
             for i in range(rules - len(docs))]
    files = {"base.yaml": BASE.encode(), "rules.yaml": "---\n".join(docs).encode()}

    def open_secret(ref: SecretRef) -> SecretValue:
        return SecretValue(SECRET if ref.binding.integration == "gitea-internal" else "other")

    result = make_loader().load(files_from_bytes(files), revision="bench",
                                open_secret=open_secret)
    assert result.snapshot is not None, [p.render() for p in result.problems[:3]]
    assert len(result.snapshot.trigger_rules) == rules
    return result.snapshot


def delivery() -> tuple[dict[str, str], bytes]:
    """The contract push sample retargeted to acme/shop, signed, with Gitea's headers."""
    data = json.loads(PUSH_SAMPLE.read_bytes())
    data["repository"]["full_name"] = "acme/shop"
    body = json.dumps(data, indent=2).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Gitea-Delivery": "0b5a3c1e-7d2f-4e8a-9c61-3f2d8b7a9e10",
               "X-Gitea-Event": "push", "X-Gitea-Event-Type": "push",
               "X-Gitea-Signature": signature, "X-Hub-Signature-256": f"sha256={signature}",
               "Content-Type": "application/json", "User-Agent": "Go-http-client/1.1"}
    return headers, body


def scan(snapshot: Snapshot, trigger: Trigger) -> list[str]:
    """The peer: what matching costs without the index (every rule looked at)."""
    return sorted(r.name for r in snapshot.trigger_rules.values()
                  if r.enabled and r.integration == trigger.integration
                  and r.repository == trigger.repository and rule_accepts(r, trigger))


def best_us(fn: Callable[[], object], loops: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / loops * 1e6


def measure(size: int, headers: dict[str, str], body: bytes) -> tuple[float, ...]:
    """(load s, then us per call: select+verify, parse, match, total, peer scan)."""
    start = time.perf_counter()
    snapshot = build(size)
    load_s = time.perf_counter() - start
    chosen = gitea.select_integration(snapshot, headers, body, workspace="default")
    assert isinstance(chosen, Integration) and chosen.name == "gitea-internal"
    trigger = gitea.parse(headers, body, chosen)
    assert isinstance(trigger, Trigger)
    assert [m.rule.name for m in match(snapshot, trigger)] == ["acme-main"]
    assert scan(snapshot, trigger) == ["acme-main"]

    def pipeline() -> object:
        integ = gitea.select_integration(snapshot, headers, body, workspace="default")
        assert isinstance(integ, Integration)
        t = gitea.parse(headers, body, integ)
        assert isinstance(t, Trigger)
        return match(snapshot, t)

    loops = 2000
    sel = best_us(lambda: gitea.select_integration(snapshot, headers, body,
                                                   workspace="default"), loops)
    par = best_us(lambda: gitea.parse(headers, body, chosen), loops)
    mat = best_us(lambda: match(snapshot, trigger), loops * 10)
    tot = best_us(pipeline, loops)
    peer = best_us(lambda: scan(snapshot, trigger), max(10, 200_000 // size), rounds=3)
    return load_s, sel, par, mat, tot, peer


def main(sizes: list[int]) -> int:
    headers, body = delivery()
    print(f"push body {len(body)} bytes; 2 gitea integrations (the second's secret is also "
          "checked); best of 5 rounds, us per delivery")
    print(f"{'rules':>7} {'load s':>7} {'select+verify':>14} {'parse':>7} {'match':>7} "
          f"{'total':>7} {'peer scan':>10}")
    totals = []
    for size in sizes:
        load_s, sel, par, mat, tot, peer = measure(size, headers, body)
        totals.append((tot, mat, peer))
        print(f"{size:>7} {load_s:>7.2f} {sel:>14.1f} {par:>7.1f} {mat:>7.2f} {tot:>7.1f} "
              f"{peer:>10.1f}")
    if len(totals) > 1:
        (t0, m0, p0), (t1, m1, p1) = totals[0], totals[-1]
        print(f"largest vs smallest snapshot: total {t1 / t0:.2f}x, match {m1 / m0:.2f}x, "
              f"peer scan {p1 / p0:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main([int(a) for a in sys.argv[1:]] or [100, 10_000]))
