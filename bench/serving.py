"""HTTP latency and throughput of the served ensemble, against the platform floor and the plain alternative.

    python -m bench.serving [--seconds 10] [--concurrency 1,8,32]   (needs `wrk`: apt-get install wrk)

Targets, each measured with wrk in the same run on the same machine:
  eyenet         the EyeNet Serve app as `eyenet up` deploys it, HAProxy ingress
  eyenet-fanout  the same app with every member scored by its family deployment (inline_max_points=0)
  serve-noop     a Ray Serve deployment that returns at once, same ingress and settings (the platform's floor)
  fastapi        one uvicorn process scoring the same model in-process (bench/fastapi_baseline.py)
  eyenet-access-log, serve-noop-access-log  with --access-log: the same with Serve's per-request log on
and, without HTTP, in-process scoring of the same requests. Requests: one new point of one of
SERIES streams that already have a long history (`/v1/stream`, the server keeps the history),
and 256-point windows (`/v1/detect`). Then the resident memory of the running system and its
growth per extra multiplexed model.
"""
from __future__ import annotations

import argparse
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

import numpy as np

# the fast ingress path of Ray 2.60 (set before Ray starts)
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")

SERIES = 64
LUA = """
math.randomseed(os.time())
local body_kind = "{kind}"
local values = "{values}"
request = function()
  local body
  local headers = {{["Content-Type"] = "application/json"}}
  if body_kind == "stream" then
    local id = "bench-" .. math.random(1, {series})
    headers["X-EyeNet-Series"] = id
    body = '{{"id": "' .. id .. '", "values": [' .. (40 + 10 * math.random()) .. ']}}'
  else
    body = '{{"series": [{{"id": "w", "values": [' .. values .. ']}}]}}'
  end
  return wrk.format("POST", nil, headers, body)
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    if m is None:  # wrk prints e.g. "-nanus" when it has no latency sample
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wrk(url: str, kind: str, values: str, conns: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.format(kind=kind, values=values, series=SERIES))
    out = subprocess.run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{seconds}s", "--latency",
                          "-s", f.name, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    if re.search(r"^\s*50%\s+(\S+)", out, re.M) is None:  # no request completed
        return {"p50": float("nan"), "p99": float("nan"), "rps": 0.0, "non2xx": -1, "socket_errors": out[-300:]}
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"p50": p50, "p99": p99, "rps": rps, "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def _wait(url: str, timeout: float = 120) -> None:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def cluster_rss_mb() -> float:
    """Resident memory of every process of this Ray cluster (GCS, raylet, workers, replicas) and this driver."""
    import psutil
    import ray

    from eyenet.cli.stack import cluster_processes

    procs = {p.pid: p for p in cluster_processes(ray.get_runtime_context().gcs_address)}
    procs[os.getpid()] = psutil.Process()
    total = 0
    for p in procs.values():
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def memory(reg, v: np.ndarray, url: str, extra: int = 4) -> None:
    """Total resident memory, then its growth as more models (series groups) are multiplexed in."""
    import requests

    from eyenet.core import presets
    from eyenet.lifecycle import training

    time.sleep(2)
    before = cluster_rss_mb()
    sizes = [before]
    for k in range(1, extra + 1):
        group = f"group-{k}"
        r = training.train_and_register(presets.model_config("ensemble"), v[:504] * (1 + 0.01 * k), registry=reg,
                                        group=group)
        reg.set_alias(r.version.name, "champion", r.version.version)
        resp = requests.post(f"{url}/v1/detect", json={"series": [{"id": "m", "values": v[600:856].tolist()}],
                                                        "group": group}, timeout=300)
        assert resp.status_code == 200, resp.text
        time.sleep(1)
        sizes.append(cluster_rss_mb())
    growth = np.diff(sizes)
    print(f"\nresident memory of the running system: {before:.0f} MB; with {extra} more multiplexed models: "
          f"{sizes[-1]:.0f} MB ({np.mean(growth):.1f} MB per model; steps {', '.join(f'{g:.1f}' for g in growth)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of the same load before each measurement "
                    "(autoscaling settles, batches fill)")
    ap.add_argument("--access-log", action="store_true", help="also measure the app with Serve's per-request "
                    "log on (AppConfig.access_log; off by default)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.serving needs wrk (apt-get install wrk)")
    conc = [int(c) for c in args.concurrency.split(",")]
    os.chdir(tempfile.mkdtemp(prefix="eyenet-bench-"))

    import torch
    from ray import serve

    from eyenet.cli import cluster
    from eyenet.core import presets, synthetic
    from eyenet.lifecycle import registry, training
    from eyenet.serve.app import build_app

    torch.set_num_threads(1)
    cluster.connect(num_cpus=8)
    reg = registry.Registry().check()
    _, v, _ = synthetic.series("cpu_pct", n=presets.UP_ROWS, seed=presets.UP_SEED)
    v = np.asarray(v)
    trained = training.train_and_register(presets.model_config("ensemble"), v[:504], registry=reg)
    reg.set_alias(trained.version.name, "champion", trained.version.version)
    model = trained.model
    window = v[600:856]
    values = ",".join(f"{x:.3f}" for x in window)

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256,
                      logging_config={"enable_access_log": False})  # as EyeNet's deployments (AppConfig.access_log)
    class Noop:
        async def __call__(self, request) -> str:
            return "ok"

    import requests

    families = model.member_families
    app_config = {"auth": {"enabled": False}, "families": families, "mlflow_uri": reg.uri, "use_gpus": False, "state_uri": str(Path.cwd() / "state")}
    history = v[:1700].tolist()  # every stream starts with a long history, as a live series has

    def prepare(base: str) -> None:
        requests.post(f"{base}/v1/detect", json={"series": [{"id": "w", "values": window.tolist()}]}, timeout=120)
        for i in range(1, SERIES + 1):
            r = requests.post(f"{base}/v1/stream", json={"id": f"bench-{i}", "values": history}, timeout=120)
            assert r.status_code == 200, r.text

    def measure(name: str, base: str, kinds: tuple[tuple[str, str], ...]) -> None:
        for c in conc:
            for kind, path in kinds:
                if args.warmup:
                    wrk(base + path, kind, values, c, args.warmup)
                rows.append((name, kind, c, wrk(base + path, kind, values, c, args.seconds)))
                print(rows[-1], flush=True)

    # each target runs alone on the machine while it is measured (idle replicas cost CPU too)
    rows: list[tuple[str, str, int, dict]] = []
    api = (("stream", "/v1/stream"), ("detect", "/v1/detect"))
    if args.access_log:
        serve.run(Noop.options(logging_config={"enable_access_log": True}).bind(), name="noop", route_prefix="/noop")
        measure("serve-noop-access-log", f"{url}/noop", (("-", ""),))
        serve.delete("noop")
    serve.run(Noop.bind(), name="noop", route_prefix="/noop")
    measure("serve-noop", f"{url}/noop", (("-", ""),))
    serve.delete("noop")
    serve.run(build_app({**app_config, "name": "fanout", "inline_max_points": 0}), name="fanout", route_prefix="/")
    prepare(url)
    measure("eyenet-fanout", url, api)
    serve.delete("fanout")
    base_port = _free_port()
    baseline = subprocess.Popen([sys.executable, "-m", "bench.fastapi_baseline", "--model", trained.version.name,
                                 "--mlflow-uri", reg.uri, "--port", str(base_port)],
                                cwd=Path(__file__).resolve().parents[1])
    try:
        base_url = f"http://127.0.0.1:{base_port}"
        _wait(f"{base_url}/docs")
        prepare(base_url)
        measure("fastapi", base_url, api)
    finally:
        baseline.terminate()
        baseline.wait(30)
    if args.access_log:
        serve.run(build_app({**app_config, "name": "logged", "access_log": True}), name="logged", route_prefix="/")
        prepare(url)
        measure("eyenet-access-log", url, api)
        serve.delete("logged")
    serve.run(build_app(app_config), name="eyenet", route_prefix="/")  # as `eyenet up` deploys it
    try:
        prepare(url)
        measure("eyenet", url, api)
        # in-process, no HTTP: the same work per request
        _, state = model.score_stream(v[:1700])
        point = v[1700:1701]
        t = []
        for _ in range(300):
            t0 = time.perf_counter()
            model.score_stream(point, state)
            t.append(time.perf_counter() - t0)
        inproc_point = 1000 * float(np.median(t))
        t = []
        for _ in range(50):
            t0 = time.perf_counter()
            model.score(window)
            t.append(time.perf_counter() - t0)
        inproc_window = 1000 * float(np.median(t))
        print("\n| target | request | conc. | p50 ms | p99 ms | req/s | points/s | non-2xx |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        order = {"serve-noop": 0, "serve-noop-access-log": 1, "eyenet": 2, "eyenet-access-log": 3,
                 "eyenet-fanout": 4, "fastapi": 5}
        for name, kind, c, r in sorted(rows, key=lambda r: (r[2], r[1] != "-", r[1], order[r[0]])):
            pts = r["rps"] * (256 if kind == "detect" else 1)
            print(f"| {name} | {kind} | {c} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | "
                  f"{pts:.0f} | {r['non2xx']} |")
        print(f"\nin-process (no HTTP): one stream point {inproc_point:.2f} ms median; one 256-point window "
              f"{inproc_window:.2f} ms median ({256 / inproc_window * 1000:.0f} points/s on one core)")
        print(json.dumps({"members": families, "version": trained.version.version}))
        memory(reg, v, url)
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main()
