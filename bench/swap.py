"""Live model swaps under load: failed requests, p99 during a swap against steady p99, and the time from
an alias move to every router replica serving the new version.

    python -m bench.swap [--clients 32] [--swaps 6] [--steady 6]

The app is deployed as `eyenet up` deploys it (embedded MLflow on SQLite, HAProxy ingress, two router
replicas). `clients` connections send one new point of a live series each (`/v1/stream`, the
real-time path) back to back. Every `steady` seconds the `champion` alias is moved in the registry
(between two versions of the ensemble, as an operator or a review would), and the controller switches
the app to it. Each response names the version that scored it, so the run also checks that every
client saw versions change only at the switch and never go back.

Reported: requests and failures; p50/p99 of requests that started in steady state and of those that
started between an alias move and the switch completing; per swap, the seconds from the alias move to
the controller seeing it, to every replica ready, and to every replica serving it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")

SERIES_PER_CLIENT = 2


async def _client(session, url: str, ids: list[str], values: np.ndarray, stop: asyncio.Event,
                  out: list[tuple[float, float, int, int | None]]) -> None:
    i = 0
    while not stop.is_set():
        sid = ids[i % len(ids)]
        body = {"id": sid, "values": [float(values[i % len(values)])], "group": "swap"}
        t0 = time.time()
        try:
            async with session.post(f"{url}/v1/stream", json=body, headers={"X-EyeNet-Series": sid}) as r:
                data = await r.json(content_type=None)
                out.append((t0, time.time(), r.status, data.get("version") if r.status == 200 else None))
        except Exception:  # noqa: BLE001 - a failed request, counted
            out.append((t0, time.time(), 0, None))
        i += 1


def _pct(ms: list[float], q: float) -> float:
    return float(np.percentile(ms, q)) if ms else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--swaps", type=int, default=6)
    ap.add_argument("--steady", type=float, default=6.0, help="seconds of steady load before each swap")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="eyenet-bench-swap-"))

    import aiohttp
    import requests
    import torch
    from ray import serve

    from eyenet.cli import cluster
    from eyenet.lifecycle import holdout, registry, training
    from eyenet.core import presets
    from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
    from eyenet.serve.app import build_app
    from eyenet.serve.actors import find_controller

    torch.set_num_threads(1)
    ray = cluster.connect(num_cpus=8)
    reg = registry.Registry().check()
    series = default_series()
    data = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    versions = []
    for members in ([{"family": "zscore", "params": {}}, {"family": "mad", "params": {}}],
                    [{"family": "zscore", "params": {"window": 120}}, {"family": "mad", "params": {"window": 120}}]):
        model, metrics = training.fit_model(presets.model_config("ensemble", {"members": members}), series.values)
        versions.append(reg.register(model, group="swap", metrics=metrics, data=data, probe=series.values).version)
    name = "default.swap.ensemble"
    reg.set_alias(name, "champion", versions[0])

    from bench.serving import _free_port

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    config = {"auth": {"enabled": False}, "name": "swap", "families": ["zscore", "mad"], "mlflow_uri": reg.uri, "use_gpus": False,
              "state_uri": str(Path.cwd() / "state"), "controller": {"review_challengers": False}}
    serve.run(build_app(config), name="swap", route_prefix="/")
    ids = [f"s{i}" for i in range(args.clients * SERIES_PER_CLIENT)]
    half = len(series.values) // 2
    history = series.values[:half].tolist()
    for sid in ids:  # every series starts with a long history, as a live one has
        r = requests.post(f"{url}/v1/stream", json={"id": sid, "values": history, "group": "swap"}, timeout=120)
        assert r.status_code == 200, r.text
    ctl = find_controller("swap")
    live = series.values[half:]
    moves: list[tuple[float, int]] = []

    async def run() -> list[list[tuple[float, float, int, int | None]]]:
        stop = asyncio.Event()
        outs: list[list] = [[] for _ in range(args.clients)]
        conn = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:
            tasks = [asyncio.create_task(_client(session, url, ids[c::args.clients], live, stop, outs[c]))
                     for c in range(args.clients)]
            await asyncio.sleep(args.steady)  # warm-up: not measured (the first swap's baseline follows)
            for out in outs:
                out.clear()
            for k in range(args.swaps):
                await asyncio.sleep(args.steady)
                target = versions[(k + 1) % 2]
                moves.append((time.time(), target))
                await asyncio.to_thread(reg.set_alias, name, "champion", target)
            await asyncio.sleep(args.steady)
            stop.set()
            await asyncio.gather(*tasks)
        return outs

    outs = asyncio.run(run())
    status = ray.get(ctl.status.remote(), timeout=60)
    swaps = [s for s in status["swaps"] if s.get("detected", 0) >= moves[0][0] - 1]
    per_swap = []
    windows = []
    for (t_move, target), s in zip(moves, [next((s for s in swaps if s["to"] == t and s["detected"] >= tm - 0.01), {})
                                            for tm, t in moves]):
        end = s.get("completed", t_move + 10)
        windows.append((t_move, end))
        per_swap.append({"to": target, "seen_s": round(s.get("detected", float("nan")) - t_move, 3),
                         "checked_s": round(s.get("checked", float("nan")) - t_move, 3),
                         "ready_s": round(s.get("ready", float("nan")) - t_move, 3),
                         "lead_s": s.get("lead_s"), "arm_lag_s": s.get("arm_lag_s"), "late": s.get("late"), "replicas": s.get("replicas"),
                         "serving_everywhere_s": round(end - t_move, 3), "error": s.get("error")})
    steady, during = [], []
    failed = 0
    went_back = 0
    for out in outs:
        last = None
        for t0, t1, code, version in out:
            if code != 200:
                failed += 1
                continue
            (during if any(a <= t0 <= b for a, b in windows) else steady).append(1000 * (t1 - t0))
            # versions seen by one client: each change must be to the version of a later move
            if last is not None and version != last:
                expected = [t for tm, t in moves if tm <= t0]
                if not expected or expected[-1] != version:
                    went_back += 1
            last = version
    n = sum(len(o) for o in outs)
    figures = {
        "clients": args.clients, "swaps": len(moves), "requests": n, "failed": failed, "wrong_version_changes": went_back,
        "steady": {"n": len(steady), "p50_ms": round(_pct(steady, 50), 2), "p99_ms": round(_pct(steady, 99), 2)},
        "during_swap": {"n": len(during), "p50_ms": round(_pct(during, 50), 2), "p99_ms": round(_pct(during, 99), 2)},
        "p99_ratio": round(_pct(during, 99) / _pct(steady, 99), 2),
        "swap_s": per_swap,
        "serving_everywhere_s_max": max(p["serving_everywhere_s"] for p in per_swap),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    serve.shutdown()
    ray.kill(ctl, no_restart=True)


if __name__ == "__main__":
    main()
