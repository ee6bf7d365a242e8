"""Cold ``validate`` of 10,000 declarations, side by side with its peers in one run.

Commands run in turn (A, B, C, A, B, C, ...) as whole processes, so machine drift hits
all alike; we report medians and per-round ratios:
  ours   ``testmesh-reconciler validate DIR``
  parse  the lower bound: read every file and parse it with PyYAML's C loader, nothing else
  cjs    check-jsonschema 0.39 on the same files against our schemas (single-rule layout
         only: it validates one schema per call), when it is installed; point
         ``--check-jsonschema`` at its executable (``pip install 'check-jsonschema==0.39.*'``
         into a separate venv).
Also reports our peak RSS (target: under 150 MB) and the ratios (targets: ours/parse at
most 1.5, cjs/ours at least 10).

    python benchmarks/bench_validate.py [--rounds 5] [--check-jsonschema PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gen_config import generate  # noqa: E402

PARSE = """
import os, sys, yaml
n = 0
for d, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        if f.endswith((".yaml", ".yml")):
            with open(os.path.join(d, f), "rb") as fh:
                n += len(list(yaml.load_all(fh.read(), Loader=yaml.CSafeLoader)))
print(n)
"""


def timed(cmd: list[str]) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB) and exit code of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss, proc.returncode


def compare(label: str, commands: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in commands}
    rss: dict[str, int] = {k: 0 for k in commands}
    for cmd in commands.values():  # warm-up: page cache, .pyc files
        timed(cmd)
    for _ in range(rounds):
        for name, cmd in commands.items():
            seconds, peak, code = timed(cmd)
            if name == "ours" and code != 0:
                raise SystemExit(f"validate failed with exit {code}: {' '.join(cmd)}")
            times[name].append(seconds)
            rss[name] = max(rss[name], peak)
    print(f"\n== {label} ({rounds} rounds)")
    for name, values in times.items():
        print(f"  {name:6s} median {statistics.median(values):6.2f} s  "
              f"(min {min(values):.2f}, max {max(values):.2f})  peak RSS {rss[name] / 1024:.0f} MB")
    for other in times:
        if other == "ours":
            continue
        ratios = [a / b for a, b in zip(times["ours"], times[other], strict=True)]
        inverse = [b / a for a, b in zip(times["ours"], times[other], strict=True)]
        print(f"  ours/{other}: median {statistics.median(ratios):.2f}x   "
              f"{other}/ours: median {statistics.median(inverse):.1f}x")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--declarations", type=int, default=10_000)
    parser.add_argument("--check-jsonschema", default=None,
                        help="path of a check-jsonschema 0.39 executable")
    args = parser.parse_args()
    ours = [sys.executable, "-m", "testmesh_reconciler", "validate"]
    with tempfile.TemporaryDirectory() as tmp:
        mixed = Path(tmp) / "mixed"
        generate(mixed, args.declarations, "mixed")
        compare(f"{args.declarations} declarations, mixed kinds, one and ten per file",
                {"ours": [*ours, str(mixed)],
                 "parse": [sys.executable, "-c", PARSE, str(mixed)]}, args.rounds)
        single = Path(tmp) / "single"
        generate(single, args.declarations, "single-rules")
        commands = {"ours": [*ours, str(single)],
                    "parse": [sys.executable, "-c", PARSE, str(single)]}
        if args.check_jsonschema:
            schema = HERE.parent / "schemas" / "trigger-rule.json"
            rules = sorted(str(p) for p in (single / "rules").glob("*.yaml"))
            commands["cjs"] = [args.check_jsonschema, "--schemafile", str(schema),
                               "--base-uri", schema.as_uri(), *rules]
        compare(f"{args.declarations} declarations, one TriggerRule per file", commands,
                args.rounds)


if __name__ == "__main__":
    main()
