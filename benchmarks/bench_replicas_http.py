"""Benchmark: accepted signed Gitea webhooks per second over HTTP, 1/2/3 daemons on one PostgreSQL.

Each configuration runs real ``serve`` subprocesses (``--max-concurrent-runs 1``, a service
under test that answers after 60 s, so runs barely execute) and loads them with ``wrk`` (one per
replica, distinct pre-signed shas) or, without wrk, a Python client; the peer is one SQLite
replica. CPU seconds of the daemons and of PostgreSQL show where the bottleneck is.
Usage: ``python benchmarks/bench_replicas_http.py [--seconds 8] [--dsn URL] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testmesh_reconciler.demo.standin import GiteaStandIn  # noqa: E402
from tests.replicas.conftest import (  # noqa: E402 - after the path is set
    HOOK,
    QUICK_REPO,
    TOKEN,
    CountingService,
    ServiceThread,
    config_files,
    push,
)

SECRET_ENV = {"TM_TEST_GITEA_TOKEN": TOKEN, "TM_TEST_GITEA_HOOK": HOOK}
CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK_SCRIPT = """
local bodies, sigs = {}, {}
local n, i = 0, 0
for line in io.lines(os.getenv("TM_REQUESTS")) do
  local sig, body = line:match("^(%x+) (.*)$")
  n = n + 1; bodies[n] = body; sigs[n] = sig
end
wrk.method = "POST"
wrk.path = "/api/v1/webhooks/gitea"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Gitea-Event"] = "push"
request = function()
  i = i % n + 1
  wrk.headers["X-Gitea-Signature"] = sigs[i]
  wrk.headers["X-Gitea-Delivery"] = "bench-" .. i
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (0 for a gone one)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


def postgres_pids(postmaster: int | None) -> list[int]:
    if postmaster is None:
        return []
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    pids.append(int(entry.name))
    return pids


def request_file(path: Path, prefix: str, count: int) -> None:
    """``count`` signed pushes with distinct shas and branches, one ``sig body`` per line."""
    with path.open("w") as out:
        for i in range(count):
            sha = hashlib.sha1(f"{prefix}-{i}".encode()).hexdigest()
            body, headers = push(QUICK_REPO, f"{prefix}{i}", sha, "-")
            out.write(f"{headers['X-Gitea-Signature']} {body.decode()}\n")


def parse_wrk(text: str, seconds: float) -> tuple[int, int]:
    """(all requests, non-2xx) from wrk's summary."""
    total = re.search(r"(\d+) requests in", text)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return int(total.group(1)) if total else 0, int(bad.group(1)) if bad else 0


async def python_client(url: str, lines: list[str], seconds: float, conns: int) -> tuple[int, int]:
    sent, bad, deadline = 0, 0, time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def worker(k: int) -> None:
            nonlocal sent, bad
            i = k
            while time.monotonic() < deadline and i < len(lines):
                sig, body = lines[i].split(" ", 1)
                r = await client.post("/api/v1/webhooks/gitea", content=body.encode(), headers={
                    "Content-Type": "application/json", "X-Gitea-Event": "push",
                    "X-Gitea-Signature": sig, "X-Gitea-Delivery": f"b{i}"})
                sent += 1
                bad += r.status_code != 202
                i += conns

        await asyncio.gather(*(worker(k) for k in range(conns)))
    return sent, bad


Daemons = list[tuple[subprocess.Popen[bytes], str]]


def start_daemons(n: int, base: Path, repo: Path, dsn: str | None) -> Daemons:
    daemons = []
    for i in range(1, n + 1):
        port = _free_port()
        args = [sys.executable, "-m", "testmesh_reconciler", "serve", "--config-repo", str(repo),
                "--listen", f"127.0.0.1:{port}", "--data-dir", str(base / f"data-r{i}"),
                "--public-url", f"http://127.0.0.1:{port}", "--poll-interval", "0",
                "--max-concurrent-runs", "1", "--max-queued-runs", "10000000",
                "--grace-period", "0"]
        if dsn:
            args += ["--database-url", dsn]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TESTMESH_")},
               **SECRET_ENV, "TESTMESH_REPLICA": f"r{i}"}
        with open(base / f"r{i}.log", "wb") as log:
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        daemons.append((proc, f"http://127.0.0.1:{port}"))
    deadline = time.monotonic() + 60
    for proc, url in daemons:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_daemons(daemons)
                raise RuntimeError(f"daemon {url} did not become ready; see {base}")
            time.sleep(0.1)
    return daemons


def stop_daemons(daemons: Daemons) -> None:
    for proc, _ in daemons:  # by PID: SIGTERM, then SIGKILL when it lingers
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in daemons:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_config(label: str, n: int, dsn: str | None, base: Path, repo: Path, seconds: float,
               conns: int, postmaster: int | None) -> dict[str, Any]:
    work = base / label
    work.mkdir()
    daemons = start_daemons(n, work, repo, dsn)
    try:
        per = int(seconds * 4000) + 1000  # more distinct shas than one replica can take
        files = []
        for i in range(n):
            path = work / f"requests-{i}.txt"
            request_file(path, f"{label}-r{i}-", per)
            files.append(path)
        daemon_pids = [p.pid for p, _ in daemons]
        pg = postgres_pids(postmaster)
        cpu_d0, cpu_p0, t0 = cpu_seconds(daemon_pids), cpu_seconds(pg), time.monotonic()
        busy0, all0 = machine_busy()
        if shutil.which("wrk"):
            script = work / "push.lua"
            script.write_text(WRK_SCRIPT)
            procs = [subprocess.Popen(
                ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "-s", str(script), url],
                env={**os.environ, "TM_REQUESTS": str(f)}, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
                for (_, url), f in zip(daemons, files, strict=True)]
            results = [parse_wrk(p.communicate(timeout=seconds + 60)[0], seconds) for p in procs]
            client = "wrk"
        else:
            async def all_clients() -> list[tuple[int, int]]:
                return await asyncio.gather(*(
                    python_client(url, f.read_text().splitlines(), seconds, conns)
                    for (_, url), f in zip(daemons, files, strict=True)))

            results = asyncio.run(all_clients())
            client = "python"
        elapsed = time.monotonic() - t0
        busy1, all1 = machine_busy()
        # backends the pools opened during the load count from zero
        pg = sorted(set(pg) | set(postgres_pids(postmaster)))
        cpu_d, cpu_p = cpu_seconds(daemon_pids) - cpu_d0, cpu_seconds(pg) - cpu_p0
        machine = (busy1 - busy0) / max(all1 - all0, 1e-9) * (os.cpu_count() or 1)
        sent = sum(r[0] for r in results)
        rejected = sum(r[1] for r in results)
        accepted = sent - rejected
        stored = None
        if dsn:
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT count(*) FROM runs").fetchone()
                stored = int(row[0]) if row else None
        return {"config": label, "replicas": n, "client": client, "seconds": round(elapsed, 2),
                "sent": sent, "accepted": accepted, "non_2xx": rejected, "runs_stored": stored,
                "accepted_per_s": round(accepted / elapsed), "daemon_cpu_s_per_s":
                round(cpu_d / elapsed, 2), "postgres_cpu_s_per_s": round(cpu_p / elapsed, 2),
                "daemon_cpu_ms_per_accepted": round(cpu_d * 1000 / max(accepted, 1), 3),
                "postgres_cpu_ms_per_accepted": round(cpu_p * 1000 / max(accepted, 1), 3),
                "machine_busy_cores": round(machine, 2)}
    finally:
        stop_daemons(daemons)


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    cluster = None
    dsn_base = args.dsn
    if dsn_base is None:
        from tests.pg import find_bindir, start_cluster

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL binaries not found: run scripts/pg-ensure.sh or "
                             "give --dsn")
        cluster = start_cluster(bindir)
    services = ServiceThread()
    results = []
    try:
        service = CountingService(slow_seconds=60.0)
        service_url = services.serve(service.app())
        sink_url = services.serve(GiteaStandIn(TOKEN).app())
        with tempfile.TemporaryDirectory(prefix="bench-replicas-http-") as tmp:
            base = Path(tmp)
            repo = base / "config"
            repo.mkdir()
            files = config_files(service_url, sink_url)
            files["quick.yaml"] = files["quick.yaml"].replace("/hit/", "/slow/")
            for name, text in files.items():
                (repo / name).write_text(text)
            git_env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@l",
                       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@l"}
            for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "b"]):
                subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=git_env,
                               capture_output=True)
            postmaster = cluster.process.pid if cluster else None
            results.append(run_config("sqlite-1", 1, None, base, repo, args.seconds,
                                      args.connections, None))
            for n in (1, 2, 3):
                dsn = cluster.create_database() if cluster is not None else dsn_base
                results.append(run_config(f"postgres-{n}", n, dsn, base, repo, args.seconds,
                                          args.connections, postmaster))
                if cluster is not None:
                    cluster.drop_database(dsn)
    finally:
        services.close()
        if cluster is not None:
            from tests.pg import stop_cluster

            stop_cluster(cluster)
    return results


def report(results: list[dict[str, Any]]) -> None:
    cpus = os.cpu_count() or 1
    print(f"accepted signed Gitea webhooks per second over HTTP ({cpus} CPUs on this machine)")
    print(f"{'config':12s} {'accepted/s':>10s} {'non-2xx':>8s} {'daemons CPU':>12s} "
          f"{'postgres CPU':>13s} {'daemon ms/req':>14s} {'pg ms/req':>10s} {'machine':>8s}")
    for r in results:
        print(f"{r['config']:12s} {r['accepted_per_s']:>10d} {r['non_2xx']:>8d} "
              f"{r['daemon_cpu_s_per_s']:>11.2f}c {r['postgres_cpu_s_per_s']:>12.2f}c "
              f"{r['daemon_cpu_ms_per_accepted']:>14.3f} {r['postgres_cpu_ms_per_accepted']:>10.3f}"
              f" {r['machine_busy_cores']:>7.2f}c")
    print("(c = CPU cores busy on average; machine = every process, wrk included)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="load per configuration")
    parser.add_argument("--connections", type=int, default=16, help="per replica")
    parser.add_argument("--dsn", help="an existing empty PostgreSQL database (default: throwaway)")
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    out = main(ns)
    if ns.json:
        print(json.dumps(out, indent=2))
    else:
        report(out)
