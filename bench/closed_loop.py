"""The closed loop end to end, and what monitoring costs on the serving path.

    python -m bench.closed_loop [--overhead-requests 3000]

Scenario: the app as `eyenet up` deploys it (embedded MLflow, HAProxy ingress) serves a model that
goes stale (seasonal baseline + z-score, scores calibrated against training data only). A live
series streams 20 points per request; at a known instant its level rises by 20 and its noise
becomes heavy-tailed. Reported: seconds from the shift to the monitor calling drift, to the
controller starting a retraining (after `drift_for_s`), to the retrained version passing the gate,
to it serving; the alarm rate of the stale version on the shifted data against the new one's; and,
when Prometheus is installed, when its EyeNetDrift alert fired.

Overhead: one-point `/v1/stream` requests from one client, back to back, against the same app with
monitoring on (the default) and off (`monitor.enabled: false`), each deployed alone, in the order
on off off on on off so both see the same machine; p50 and p90 of each. Also, in process, the
request path's share of monitoring (`Outbox.add`) against one scoring step.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")

GROUP = "loop"
NAME = f"default.{GROUP}.ensemble"
MEMBERS = [{"family": "seasonal", "params": {}}, {"family": "zscore", "params": {}}]


def _prometheus(app_port: int, root: Path):
    import requests
    import yaml

    from bench.serving import _free_port

    binary = shutil.which("prometheus")
    if binary is None:
        return None, None
    rules = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve/prometheus/rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    (root / "rules.yml").write_text(yaml.safe_dump(rules))
    (root / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(root / "rules.yml")],
        "scrape_configs": [{"job_name": "eyenet", "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}]}))
    port = _free_port()
    proc = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if requests.get(f"{base}/-/ready", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    return proc, base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overhead-requests", type=int, default=3000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="eyenet-bench-loop-"))
    import requests
    import torch
    from ray import serve

    from eyenet.cli import cluster
    from eyenet.lifecycle import holdout, promotion, registry, training
    from eyenet.core import presets
    from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
    from eyenet.serve.app import build_app
    from eyenet.serve.actors import find_controller
    from eyenet.serve.actors import find_monitor

    from bench.serving import _free_port

    torch.set_num_threads(1)
    ray = cluster.connect(num_cpus=8)
    reg = registry.Registry().check()
    series = default_series()
    config = presets.model_config("ensemble", {"members": MEMBERS})
    config["rank"] = None
    model, metrics = training.fit_model(config, series.values)
    data = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    first = reg.register(model, group=GROUP, metrics=metrics, data=data, probe=series.values).version
    promotion.review(reg, NAME, actor="bench")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    base_cfg = {"auth": {"enabled": False}, "families": ["seasonal", "zscore"], "mlflow_uri": reg.uri, "use_gpus": False,
                "state_uri": str(Path.cwd() / "state")}
    before = np.asarray(series.values, dtype=float)
    rng = np.random.default_rng(2)
    after = float(np.median(before)) + 20 + 8 * rng.standard_t(2, 20000)
    session = requests.Session()

    def stream(sid: str, values: np.ndarray) -> dict:
        r = session.post(f"{url}/v1/stream", json={"id": sid, "values": [float(v) for v in values], "group": GROUP},
                         timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def ready(prefix: str = "") -> None:
        for _ in range(240):
            try:
                if session.get(f"{url}{prefix}/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError("the app did not come up")

    # -- overhead: monitoring on and off, one app at a time, in the order on off off on on off --------
    lat: dict[str, list[float]] = {"on": [], "off": []}
    order = ("on", "off", "off", "on", "on", "off")
    block = max(100, args.overhead_requests // 3)
    for mode in order:
        serve.run(build_app({**base_cfg, "name": "ovh", "monitor": {"enabled": mode == "on"}}), name="ovh",
                  route_prefix="/")
        ready()
        r = session.post(f"{url}/v1/stream", json={"id": "o", "values": before.tolist(), "group": GROUP,
                                                   "reset": True}, timeout=60)
        assert r.status_code == 200, r.text
        for j in range(block + 200):  # the first 200: warm-up, not kept
            body = {"id": "o", "values": [float(before[j % len(before)])], "group": GROUP}
            t0 = time.perf_counter()
            r = session.post(f"{url}/v1/stream", json=body, timeout=60)
            if j >= 200:
                lat[mode].append(1000 * (time.perf_counter() - t0))
            assert r.status_code == 200, r.text
        serve.delete("ovh")
    overhead = {mode: {"n": len(v), "p50_ms": round(float(np.percentile(v, 50)), 3),
                       "p90_ms": round(float(np.percentile(v, 90)), 3)} for mode, v in lat.items()}
    overhead["p50_ratio"] = round(overhead["on"]["p50_ms"] / overhead["off"]["p50_ms"], 3)
    # the same two costs without HTTP: what the request path adds (Outbox.add) against the scoring step
    from eyenet.monitoring.monitor import Outbox

    _, st = model.score_stream(before[:400])
    box = Outbox()
    t0 = time.perf_counter()
    for j in range(2000):
        sc, _ = model.score_stream(before[400 + j % 100:401 + j % 100], st)
    score_us = (time.perf_counter() - t0) / 2000 * 1e6
    t0 = time.perf_counter()
    for j in range(2000):
        box.add(NAME, first, before[400:401], sc, "o")
    overhead["in_process_us"] = {"score_step": round(score_us, 1),
                                 "outbox_add": round((time.perf_counter() - t0) / 2000 * 1e6, 2)}
    print(json.dumps({"overhead": overhead}), flush=True)

    # -- the scenario ---------------------------------------------------------------------------
    serve.run(build_app({**base_cfg, "name": "loop",
                         "controller": {"retrain": {"drift_for_s": 10, "check_s": 1, "rows": 600, "auto_promote": True}},
                         "monitor": {"drift_window": 500, "drift_min_points": 150, "push_s": 1}}),
              name="loop", route_prefix="/")
    ready()
    prom, prom_url = _prometheus(port, Path.cwd())
    for i in range(0, len(before), 20):
        stream("web-1", before[i:i + 20])
    monitor = find_monitor("loop")
    ctl = find_controller("loop")
    shift = time.time()
    marks: dict[str, float] = {}
    by_version: dict[int, list[int]] = {}
    i = 0
    while time.time() - shift < 600:
        out = stream("web-1", after[i:i + 20])
        i = (i + 20) % (len(after) - 20)
        time.sleep(0.05)  # ~400 points/s: a busy live series
        c = by_version.setdefault(out["version"], [0, 0])
        c[0] += len(out["points"])
        c[1] += sum(p["alarm"] for p in out["points"])
        now = time.time() - shift
        if i % 200 == 0:
            if "drift" not in marks and ray.get(monitor.drifted.remote(NAME)):
                marks["drift"] = now
            status = ray.get(ctl.status.remote())
            if "retrain_started" not in marks and (status["retraining"] or status["retrains"]):
                marks["retrain_started"] = now
            for rec in status["retrains"]:
                if "reviewed" in rec and "gate" not in marks:
                    marks["gate"] = rec["reviewed"] - shift
                    marks["gate_outcome"] = rec["outcome"]
            if prom_url and "prometheus_alert" not in marks:
                alerts = requests.get(f"{prom_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
                if any(a["labels"]["alertname"] == "EyeNetDrift" and a["state"] == "firing" for a in alerts):
                    marks["prometheus_alert"] = now
        if out["version"] != first and "serving" not in marks:
            marks["serving"] = now
        if "serving" in marks and by_version[out["version"]][0] >= 3000:
            break
    if prom is not None:
        prom.terminate()
    rates = {v: {"points": p, "alarms": a, "alarm_rate": round(a / p, 4)} for v, (p, a) in by_version.items()}
    figures = {"overhead": overhead, "seconds_after_shift": {k: round(v, 2) if isinstance(v, float) else v
                                                             for k, v in marks.items()},
               "stale_version": first, "by_version": rates,
               "retrains": ray.get(ctl.status.remote())["retrains"]}
    print(json.dumps(figures, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    serve.shutdown()
    for actor in (ctl, monitor):
        ray.kill(actor, no_restart=True)


if __name__ == "__main__":
    main()
