"""Benchmark of webhook intake: signed Gitea pushes to our daemon vs adnanh/webhook 2.8.

Each server is pinned to core 0 (``taskset -c 0``), ``wrk`` (core 1, 32 connections) posts
pre-signed pushes with distinct shas (each stored durably with a queued run) and then one
body over and over (the duplicate path). Prints accepted/s, p99 and the ratio to the peer,
the peer running a command per hook (as deployed: a fork per delivery), and two ceilings of
the stack: bare aiohttp checking the same HMAC and storing nothing, and the same storing
one row per delivery in SQLite with group commit (the least a durable receiver does).
With ``--rounds N`` every server runs back to back N times and the figures are medians: this
VM's speed drifts by a quarter from minute to minute, and a round puts every server in the
same spell.
Usage: ``python benchmarks/bench_webhooks.py [--duration 10] [--rounds 3] [--json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECRET = "bench-webhook-secret"
HEAD = "apiVersion: testmesh.io/v1alpha1\n"
CONFIG = {
    "integration.yaml": HEAD + """kind: Integration
metadata: {name: gitea}
spec:
  type: git
  provider: gitea
  config: {url: "https://gitea.example.com"}
  secrets:
    token: {env: BENCH_GITEA_TOKEN}
    webhook_secret: {env: BENCH_GITEA_HOOK}
""",
    "flow.yaml": HEAD + """kind: Flow
metadata: {name: wait}
spec:
  name: wait
  steps:
    - {id: wait, action: delay, config: {duration: 1h}}
""",
    "suite.yaml": HEAD + """kind: Suite
metadata: {name: smoke}
spec:
  flows: [{flow: wait, order: 0}]
""",
    "rule.yaml": HEAD + """kind: TriggerRule
metadata: {name: shop-push}
spec:
  integration: gitea
  repository: acme/shop
  event_types: [push]
  suite: smoke
""",
}
SERVE = ("import sys; from testmesh_reconciler.cli_serve import serve_main; "
         "sys.exit(serve_main(sys.argv[1:]))")
#: The ceiling of the stack on one core: aiohttp checking the same HMAC, storing nothing.
FLOOR = """
import hashlib, hmac, sys
from aiohttp import web
SECRET = sys.argv[2].encode()
async def hook(request):
    body = await request.read()
    good = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(good, request.headers.get("X-Gitea-Signature", ""))
    return web.Response(status=202 if ok else 401, body=b'{"ok":true}',
                        content_type="application/json")
app = web.Application()
app.router.add_post("/api/v1/webhooks/gitea", hook)
app.router.add_get("/", lambda r: web.Response(text="ok"))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""
#: The ceiling of any durable Python receiver on this stack: the same, plus one row per
#: delivery (its id, digest and body) in a SQLite WAL table without secondary indexes,
#: committed once per turn of the event loop (group commit) before the answers go out.
DURABLE_FLOOR = """
import asyncio, hashlib, hmac, os, sqlite3, sys
from aiohttp import web
SECRET = sys.argv[2].encode()
db = sqlite3.connect(sys.argv[3], isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS d (seq INTEGER PRIMARY KEY, id BLOB, digest TEXT,"
           " body BLOB)")
pending = []
def commit():
    rows = [row for row, _ in pending]
    waiters = [fut for _, fut in pending]
    pending.clear()
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO d (id, digest, body) VALUES (?, ?, ?)", rows)
    db.execute("COMMIT")
    for fut in waiters:
        fut.set_result(None)
async def hook(request):
    body = await request.read()
    good = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(good, request.headers.get("X-Gitea-Signature", "")):
        return web.Response(status=401)
    fut = asyncio.get_running_loop().create_future()
    if not pending:
        asyncio.get_running_loop().call_soon(commit)
    pending.append(((os.urandom(16), hashlib.sha256(body).hexdigest(), body), fut))
    await fut
    return web.Response(status=202, body=b'{"ok":true}', content_type="application/json")
app = web.Application()
app.router.add_post("/api/v1/webhooks/gitea", hook)
app.router.add_get("/", lambda r: web.Response(text="ok"))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

LUA = """
local bodies = {%(bodies)s}
local sigs = {%(sigs)s}
local n = #bodies
local counter = 1
local threads = {}
function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end
function init(args)
  local per = math.floor(n / %(threads)d)
  i = (id - 1) * per
  last = i + per
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Gitea-Event"] = "push"
end
function request()
  i = i + 1
  if i > last then i = last end
  wrk.headers["X-Gitea-Signature"] = sigs[i]
  return wrk.format(nil, nil, nil, bodies[i])
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.errors.status, summary.duration, latency:percentile(99), latency:percentile(50)))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def push_body(sha: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "before": "1" * 40, "after": sha,
                       "repository": {"full_name": "acme/shop"}, "commits": [],
                       "pusher": {"login": "bench"}}, separators=(",", ":")).encode()


def sign(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def lua_script(path: Path, bodies: list[bytes], threads: int) -> Path:
    def lua_str(b: bytes) -> str:
        return "'" + b.decode().replace("\\", "\\\\").replace("'", "\\'") + "'"

    path.write_text(LUA % {"bodies": ",\n".join(lua_str(b) for b in bodies),
                           "sigs": ",".join(f"'{sign(b)}'" for b in bodies),
                           "threads": threads}, "utf-8")
    return path


def wait_http(url: str, timeout: float = 30) -> None:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def run_wrk(url: str, script: Path, duration: float, connections: int,
            threads: int) -> dict[str, float]:
    proc = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t", str(threads), "-c", str(connections),
         "-d", f"{round(duration)}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr or proc.stdout}")
    out = proc.stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if m is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    requests, bad, micros, p99, p50 = (int(g) for g in m.groups())
    seconds = micros / 1e6
    return {"requests": requests, "non_2xx": bad, "accepted_per_s": (requests - bad) / seconds,
            "p99_ms": p99 / 1000, "p50_ms": p50 / 1000}


def start_daemon(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "config"
    config.mkdir()
    for name, text in CONFIG.items():
        (config / name).write_text(text, "utf-8")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TESTMESH_")},
           "BENCH_GITEA_HOOK": SECRET, "BENCH_GITEA_TOKEN": "t"}
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-c", SERVE, "--config-repo", str(config),
         "--listen", f"127.0.0.1:{port}", "--data-dir", str(workdir / "data"),
         "--max-queued-runs", "10000000", "--max-concurrent-runs", "1",
         "--public-url", "http://127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_http(f"http://127.0.0.1:{port}/readyz")
    import httpx

    start = time.monotonic()  # wait until the config is loaded
    while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
        if time.monotonic() - start > 30:
            raise RuntimeError("daemon not ready")
        time.sleep(0.1)
    return proc


def start_peer(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    hooks = workdir / "hooks.json"
    rule = {"match": {"type": "payload-hmac-sha256", "secret": SECRET,
                      "parameter": {"source": "header", "name": "X-Gitea-Signature"}}}
    hooks.write_text(json.dumps([
        {"id": "gitea", "response-message": "accepted", "trigger-rule": rule},
        # the same hook running a command, as a real deployment does (a fork per delivery)
        {"id": "gitea-command", "response-message": "accepted", "trigger-rule": rule,
         "execute-command": shutil.which("true") or "/bin/true",
         "command-working-directory": str(workdir)},
    ]), "utf-8")
    log = open(workdir / "webhook.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["taskset", "-c", "0", "webhook", "-hooks", str(hooks), "-ip",
                             "127.0.0.1", "-port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/")
    return proc


def start_floor(workdir: Path, port: int, *, durable: bool = False
                ) -> subprocess.Popen[bytes]:
    log = open(workdir / "floor.log", "wb")  # noqa: SIM115
    code = DURABLE_FLOOR if durable else FLOOR
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", code, str(port),
                             SECRET, str(workdir / "floor.sqlite3")], stdout=log,
                            stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


SERVERS = (("testmesh", "testmesh-reconciler"), ("webhook", "adnanh/webhook"),
           ("floor", "bare aiohttp (ceiling)"), ("durable_floor", "aiohttp + SQLite row"))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians over the rounds, and each ratio to the peer as the median of the per-round
    ratios (a round runs every server back to back, so a slow spell of the VM hits all)."""
    out: dict[str, Any] = {"rounds": rounds}
    for key in rounds[0]:
        runs = [r[key] for r in rounds]
        rates = [run["accepted_per_s"] for run in runs]
        out[key] = {field: _median([run[field] for run in runs])
                    for field in ("accepted_per_s", "p50_ms", "p99_ms", "non_2xx", "requests")}
        out[key]["accepted_per_s_range"] = [min(rates), max(rates)]
        server, _, path = key.rpartition("_")
        if server != "webhook":
            peer = [r[f"webhook_{path}"]["accepted_per_s"] for r in rounds]
            ratios = [ours / max(theirs, 1e-9) for ours, theirs in zip(rates, peer, strict=True)]
            out[f"ratio_{key}"] = {"median": _median(ratios),
                                   "range": [min(ratios), max(ratios)]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds, each running every server back to back")
    parser.add_argument("--bodies", type=int, default=60000,
                        help="distinct signed pushes per round (more than one run's requests)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("wrk", "webhook", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (apt-get install wrk webhook util-linux)", file=sys.stderr)
            return 2
    rounds: list[dict[str, dict[str, float]]] = []
    command: dict[str, float] = {}
    check = ""
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        work = Path(tmp)
        ports = {name: free_port() for name, _ in SERVERS}
        for name, _ in SERVERS:
            (work / name).mkdir()
        urls = {name: f"http://127.0.0.1:{port}/api/v1/webhooks/gitea"
                for name, port in ports.items()}
        urls["webhook"] = f"http://127.0.0.1:{ports['webhook']}/hooks/gitea"
        procs: list[subprocess.Popen[bytes]] = []
        try:  # all four wait on core 0; only the one under load uses it
            procs.append(start_daemon(work / "testmesh", ports["testmesh"]))
            procs.append(start_peer(work / "webhook", ports["webhook"]))
            procs.append(start_floor(work / "floor", ports["floor"]))
            procs.append(start_floor(work / "durable_floor", ports["durable_floor"],
                                     durable=True))
            for number in range(args.rounds):
                first = number * args.bodies + 1  # fresh shas each round: none is a redelivery
                bodies = [push_body(f"{i:040x}") for i in range(first, first + args.bodies)]
                distinct = lua_script(work / f"distinct{number}.lua", bodies, args.threads)
                duplicate = lua_script(work / f"duplicate{number}.lua",
                                       [bodies[0]] * args.threads, args.threads)
                found: dict[str, dict[str, float]] = {}
                for name, _ in SERVERS:
                    found[f"{name}_distinct"] = run_wrk(urls[name], distinct, args.duration,
                                                        args.connections, args.threads)
                for name in ("testmesh", "webhook"):
                    found[f"{name}_duplicate"] = run_wrk(urls[name], duplicate, args.duration,
                                                         args.connections, args.threads)
                if found["testmesh_distinct"]["requests"] > args.bodies:
                    print(f"warning: {found['testmesh_distinct']['requests']} requests for "
                          f"{args.bodies} distinct pushes: some were duplicates; raise --bodies",
                          file=sys.stderr)
                rounds.append(found)
            command = run_wrk(f"http://127.0.0.1:{ports['webhook']}/hooks/gitea-command",
                              distinct, args.duration, args.connections, args.threads)
            import httpx

            latest = httpx.get(f"http://127.0.0.1:{ports['testmesh']}/api/v1/deliveries?limit=1")
            check = latest.json()["items"][0]["outcome"]
        finally:
            for proc in procs:
                stop(proc)
    results = summarize(rounds)
    results["webhook_command_distinct"] = command
    results["testmesh_check"] = check
    ours = results["testmesh_distinct"]["accepted_per_s"]
    results["ratio_command"] = ours / max(command["accepted_per_s"], 1e-9)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.rounds} round(s) of {args.duration:.0f} s per server and path; medians, "
          "with the range of accepted/s over the rounds")
    print(f"{'path':<10} {'server':<24} {'accepted/s':>11} {'range':>15} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'non-2xx':>8}")
    for path in ("distinct", "duplicate"):
        for name, label in SERVERS:
            r = results.get(f"{name}_{path}")
            if r is None:
                continue
            low, high = r["accepted_per_s_range"]
            print(f"{path:<10} {label:<24} {r['accepted_per_s']:>11.0f} "
                  f"{f'{low:.0f}-{high:.0f}':>15} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['non_2xx']:>8.0f}")
        for name, label in SERVERS:
            ratio = results.get(f"ratio_{name}_{path}")
            if ratio is not None:
                low, high = ratio["range"]
                print(f"{path:<10} {label} / adnanh/webhook: {ratio['median']:.2f}x "
                      f"({low:.2f}-{high:.2f})")
    for path in ("distinct", "duplicate"):
        each = ", ".join(f"{r[f'testmesh_{path}']['accepted_per_s']:.0f}" for r in rounds)
        print(f"{path:<10} ours, round by round: {each}")
    print(f"peer running a command per hook (a fork each): {command['accepted_per_s']:.0f}/s, "
          f"p99 {command['p99_ms']:.2f} ms; ours / it: {results['ratio_command']:.2f}x")
    print(f"latest delivery stored by ours: outcome {check!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
