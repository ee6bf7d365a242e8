"""Micro-benchmark: what opening sealed secrets adds to a config load.

Seals N values (default 1,000) for distinct bindings, then times opening all of them
through ``make_secret_opener`` as the loader calls it. Target: under 200 ms total.
Run: ``python benchmarks/bench_secrets.py [N] [ROUNDS]``.
"""

from __future__ import annotations

import sys
import time

from testmesh_reconciler.config.model import SecretBinding, SecretRef, SecretValue
from testmesh_reconciler.secrets import generate_key_pair, make_secret_opener, seal


def main(count: int = 1000, rounds: int = 5) -> int:
    old, new = generate_key_pair(), generate_key_pair()
    refs = []
    for i in range(count):
        binding = SecretBinding("default", f"integration-{i}", "token")
        pair = new if i % 2 else old  # half sealed with a rotated-out key
        refs.append(SecretRef("sealed", seal(pair.public, binding, f"value-{i:06d}"), binding))
    opener = make_secret_opener(
        private_keys=[new.private, old.private],
        public_key_ids=frozenset({old.key_id, new.key_id}),
    )
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        results = [opener(ref) for ref in refs]
        best = min(best, time.perf_counter() - start)
        assert all(isinstance(r, SecretValue) for r in results)
    total_ms = best * 1000
    print(f"opened {count} sealed values: {total_ms:.1f} ms total, "
          f"{total_ms * 1000 / count:.1f} us per value (best of {rounds}; target < 200 ms)")
    return 0 if total_ms < 200 else 1


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    raise SystemExit(main(*args))
