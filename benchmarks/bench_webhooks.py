"""Benchmark of webhook intake: signed Gitea pushes to our daemon vs adnanh/webhook 2.8.

Each server is pinned to core 0 (``taskset -c 0``), ``wrk`` (core 1, 32 connections) posts
pre-signed pushes with distinct shas (each stored durably with a queued run) and then one
body over and over (the duplicate path). Prints accepted/s, p99 and the ratio to the peer,
the peer running a command per hook (as deployed: a fork per delivery), and two ceilings of
the stack: bare aiohttp checking the same HMAC and storing nothing, and the same storing
one row per delivery in SQLite with group commit (the least a durable receiver does).
Usage: ``python benchmarks/bench_webhooks.py [--duration 10] [--bodies 60000] [--json]``.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--bodies", type=int, default=60000,
                        help="distinct signed pushes (more than the requests of one run)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("wrk", "webhook", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (apt-get install wrk webhook util-linux)", file=sys.stderr)
            return 2
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        work = Path(tmp)
        bodies = [push_body(f"{i:040x}") for i in range(1, args.bodies + 1)]
        distinct = lua_script(work / "distinct.lua", bodies, args.threads)
        duplicate = lua_script(work / "duplicate.lua", [bodies[0]] * args.threads,
                               args.threads)
        ours_port, peer_port = free_port(), free_port()
        (work / "ours").mkdir()
        (work / "peer").mkdir()
        daemon = start_daemon(work / "ours", ours_port)
        try:
            url = f"http://127.0.0.1:{ours_port}/api/v1/webhooks/gitea"
            results["testmesh_distinct"] = run_wrk(url, distinct, args.duration,
                                                   args.connections, args.threads)
            results["testmesh_duplicate"] = run_wrk(url, duplicate, args.duration,
                                                    args.connections, args.threads)
            import httpx

            counts = httpx.get(f"http://127.0.0.1:{ours_port}/api/v1/deliveries?limit=1")
            results["testmesh_check"] = counts.json()["items"][0]["outcome"]
        finally:
            stop(daemon)
        for name, durable in (("floor", False), ("durable_floor", True)):
            (work / name).mkdir()
            floor_port = free_port()
            floor = start_floor(work / name, floor_port, durable=durable)
            try:
                url = f"http://127.0.0.1:{floor_port}/api/v1/webhooks/gitea"
                results[f"{name}_distinct"] = run_wrk(url, distinct, args.duration,
                                                      args.connections, args.threads)
            finally:
                stop(floor)
        peer = start_peer(work / "peer", peer_port)
        try:
            url = f"http://127.0.0.1:{peer_port}/hooks/gitea"
            results["webhook_distinct"] = run_wrk(url, distinct, args.duration,
                                                  args.connections, args.threads)
            results["webhook_duplicate"] = run_wrk(url, duplicate, args.duration,
                                                   args.connections, args.threads)
            results["webhook_command_distinct"] = run_wrk(
                f"http://127.0.0.1:{peer_port}/hooks/gitea-command", distinct, args.duration,
                args.connections, args.threads)
        finally:
            stop(peer)
    if results["testmesh_distinct"]["requests"] > args.bodies:
        print(f"warning: {results['testmesh_distinct']['requests']} requests for "
              f"{args.bodies} distinct pushes: some were duplicates; raise --bodies",
              file=sys.stderr)
    for path in ("distinct", "duplicate"):
        ours, theirs = results[f"testmesh_{path}"], results[f"webhook_{path}"]
        results[f"ratio_{path}"] = ours["accepted_per_s"] / max(theirs["accepted_per_s"], 1e-9)
    results["ratio_command"] = results["testmesh_distinct"]["accepted_per_s"] / max(
        results["webhook_command_distinct"]["accepted_per_s"], 1e-9)
    results["ratio_floor"] = results["floor_distinct"]["accepted_per_s"] / max(
        results["webhook_distinct"]["accepted_per_s"], 1e-9)
    results["ratio_durable_floor"] = results["durable_floor_distinct"]["accepted_per_s"] / max(
        results["webhook_distinct"]["accepted_per_s"], 1e-9)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'path':<10} {'server':<22} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non-2xx':>8}")
    for path in ("distinct", "duplicate"):
        for server, name in (("testmesh", "testmesh-reconciler"), ("webhook", "adnanh/webhook")):
            r = results[f"{server}_{path}"]
            print(f"{path:<10} {name:<22} {r['accepted_per_s']:>11.0f} {r['p50_ms']:>8.2f} "
                  f"{r['p99_ms']:>8.2f} {r['non_2xx']:>8}")
        print(f"{path:<10} ratio (ours / webhook): {results[f'ratio_{path}']:.2f}")
    command = results["webhook_command_distinct"]
    print(f"peer running a command per hook (a fork each): {command['accepted_per_s']:.0f}/s, "
          f"p99 {command['p99_ms']:.2f} ms; ours / it: {results['ratio_command']:.2f}")
    floor = results["floor_distinct"]
    print(f"ceiling: bare aiohttp checking the HMAC, storing nothing: "
          f"{floor['accepted_per_s']:.0f}/s, p99 {floor['p99_ms']:.2f} ms "
          f"({results['ratio_floor']:.2f}x the peer)")
    durable = results["durable_floor_distinct"]
    print(f"ceiling of a durable receiver: the same plus one row per delivery in SQLite "
          f"(group commit): {durable['accepted_per_s']:.0f}/s, p99 {durable['p99_ms']:.2f} ms "
          f"({results['ratio_durable_floor']:.2f}x the peer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
