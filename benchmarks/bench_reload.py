"""Benchmark: config repo commit -> new snapshot active, through the config webhook.

Generates Git config repos of 1,000 and 10,000 declarations, starts the daemon as a
real process, and for several one-file commits measures commit -> webhook -> the new
revision served by ``/api/v1/status`` (median, targets: < 1 s for 1,000, < 2 s for
10,000). Then, in-process, the CPU time of an incremental one-file reload of the
10,000-declaration repo (fetch + load, reload thread; target < 50 ms).
Run: ``python benchmarks/bench_reload.py [ROUNDS]``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testmesh_reconciler import secrets  # noqa: E402
from testmesh_reconciler.reload import build_loader  # noqa: E402
from testmesh_reconciler.sources.git import GitSource  # noqa: E402
from tests.daemon.repo import SECRET_ENV, ConfigRepo, flow, generated_tree  # noqa: E402

SECRET = "bench-secret"
SERVE = ("import sys; from testmesh_reconciler.cli_serve import serve_main; "
         "sys.exit(serve_main(sys.argv[1:]))")
TARGETS = {1000: 1.0, 10000: 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_repo(where: Path, declarations: int) -> tuple[ConfigRepo, list[str]]:
    repo = ConfigRepo(where)
    tree = generated_tree(declarations)
    repo.write_many(tree)
    repo.commit("generated")
    return repo, sorted(tree)


def one_file_change(repo: ConfigRepo, files: list[str], i: int) -> str:
    """Append one more flow to one file (one blob changes)."""
    rel = files[(i * 7919) % len(files)]
    with open(repo.path / rel, "a", encoding="utf-8") as fh:
        fh.write("---\n" + flow(f"bench-extra-{i}", f"round {i}"))
    return repo.commit(f"round {i}")


def wait_revision(client: httpx.Client, sha: str, timeout: float = 60) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            if client.get("/api/v1/status").json().get("revision") == sha:
                return time.perf_counter()
        except httpx.TransportError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for revision {sha}")


def bench_webhook(declarations: int, rounds: int, tmp: Path) -> dict[str, float]:
    repo, files = make_repo(tmp / f"repo-{declarations}", declarations)
    port = free_port()
    log_path = tmp / f"daemon-{declarations}.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TESTMESH_")},
           **SECRET_ENV, "TESTMESH_CONFIG_WEBHOOK_SECRET": SECRET}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "--config-repo", str(repo.path), "--poll-interval",
             "0", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / f"data-{declarations}")],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        started = time.perf_counter()
        wait_revision(client, repo.head(), timeout=120)
        first = time.perf_counter() - started
        latencies = []
        for i in range(rounds):
            sha = one_file_change(repo, files, i)
            committed = time.perf_counter()
            body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
            sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            answer = client.post("/api/v1/webhooks/config", content=body,
                                 headers={"X-Gitea-Signature": sig})
            assert answer.status_code == 202, answer.text
            latencies.append(wait_revision(client, sha) - committed)
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    reloads = [json.loads(line) for line in log_path.read_text().splitlines()
               if '"config_reload_succeeded"' in line]
    server = [r for r in reloads if r.get("trigger") == "webhook"]
    return {
        "declarations": declarations,
        "first_load_s": first,
        "median_s": statistics.median(latencies),
        "max_s": max(latencies),
        "server_reload_ms_median": statistics.median(r["duration_ms"] for r in server),
        "server_cpu_ms_median": statistics.median(r["cpu_ms"] for r in server),
        "parsed_files": statistics.median(r["parsed_files"] for r in server),
    }


def bench_incremental(declarations: int, rounds: int, tmp: Path) -> dict[str, float]:
    repo, files = make_repo(tmp / f"inc-{declarations}", declarations)
    source = GitSource(str(repo.path), branch="main", path="", clone_dir=tmp / "inc-clone")
    loader = build_loader()
    opener = secrets.make_secret_opener(private_keys=[], environ=SECRET_ENV,
                                        read_file=secrets.read_secret_file)
    try:
        rev, refs = source.fetch()
        cpu = time.thread_time()
        result = loader.load(refs, revision=rev, open_secret=opener)
        full_cpu = time.thread_time() - cpu
        assert result.ok, result.problems[:3]
        load_cpu, total_cpu, walls, parsed = [], [], [], []
        for i in range(rounds):
            one_file_change(repo, files, 100 + i)
            wall, cpu0 = time.perf_counter(), time.thread_time()
            rev, refs = source.fetch()
            cpu1 = time.thread_time()
            result = loader.load(refs, revision=rev, open_secret=opener)
            cpu2 = time.thread_time()
            walls.append(time.perf_counter() - wall)
            assert result.ok and result.parsed_files == 1, (result.parsed_files, result.problems)
            load_cpu.append(cpu2 - cpu1)
            total_cpu.append(cpu2 - cpu0)
            parsed.append(result.parsed_files)
    finally:
        source.close()
    return {"declarations": declarations, "full_load_cpu_ms": full_cpu * 1000,
            "incremental_load_cpu_ms": statistics.median(load_cpu) * 1000,
            "incremental_fetch_and_load_cpu_ms": statistics.median(total_cpu) * 1000,
            "incremental_wall_ms": statistics.median(walls) * 1000,
            "parsed_files": statistics.median(parsed)}


def main(rounds: int = 7) -> int:
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as d:
        tmp = Path(d)
        for n in (1000, 10000):
            r = bench_webhook(n, rounds, tmp)
            target = TARGETS[n]
            ok &= r["median_s"] < target
            print(f"{n:>6} declarations: commit -> active via config webhook: median "
                  f"{r['median_s'] * 1000:.0f} ms, max {r['max_s'] * 1000:.0f} ms over {rounds} "
                  f"(target < {target:.0f} s); daemon reload {r['server_reload_ms_median']:.0f} "
                  f"ms wall / {r['server_cpu_ms_median']:.0f} ms CPU, "
                  f"{r['parsed_files']:.0f} file parsed; first load {r['first_load_s']:.2f} s "
                  "(incl. process start)")
        inc = bench_incremental(10000, rounds, tmp)
        ok &= inc["incremental_fetch_and_load_cpu_ms"] < 50
        print(f" 10000 declarations, one-file change in-process: load "
              f"{inc['incremental_load_cpu_ms']:.1f} ms CPU, fetch+load "
              f"{inc['incremental_fetch_and_load_cpu_ms']:.1f} ms CPU (reload thread; git "
              f"subprocesses excluded), {inc['incremental_wall_ms']:.0f} ms wall, "
              f"{inc['parsed_files']:.0f} file parsed (target < 50 ms CPU); full load "
              f"{inc['full_load_cpu_ms']:.0f} ms CPU")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:2])))
