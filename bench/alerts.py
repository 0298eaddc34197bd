"""Alarms out under stream load: how soon an alarm is an alert in Alertmanager, and what delivery
costs the scoring, in one run.

    python -m bench.alerts [--series 50] [--hz 10] [--seconds 60] [--spike-every 1.5]
    (needs Debian's prometheus-alertmanager: .ci/install-packages installs it)

Self-contained, like bench/serving.py: a local Ray, the default ensemble (``eyenet up``'s) trained
and made champion for two tenants, ``alerting`` and ``quiet``, and the app deployed as ``eyenet up``
deploys it (auth off, so the bench picks the tenant in the body) with ``alerts.receivers`` for
``alerting`` only: a real Alertmanager on loopback (tests/servers.py), routing to a webhook that
only counts. ``quiet`` has no receiver, so its alarms are scored and decided but never delivered.

Load: each tenant has ``--series`` series with a long history (not timed). Every 1 / ``--hz`` s
each tenant sends one ``/v1/stream/batch`` request with the next point of each of its series, on
two threads (one per tenant, half a period apart, so neither waits behind the other's request),
so the app takes 2 x series x hz points a second (1,000 at the defaults). Every ``--spike-every`` s the next series in turn gets a spike (the level plus 30 times
the series' spread) in the same request of both tenants, then returns to normal, so each spike
raises one alarm and opens one incident, which resolves after ``alerts.resolve_after`` calm points.

Measured:
- alarm to alert: for each spike that alarmed in ``alerting``'s answer, from the moment its request
  was sent to the moment the alert is first seen in Alertmanager's ``GET /api/v2/alerts`` (polled
  every 20 ms by a third thread); p50, p99, max, and spikes whose alert never came;
- scoring with delivery on and off: request latency of ``alerting`` against ``quiet`` (the same
  points, the same spikes, the same app, interleaved), p50 and p99, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/servers.py: the Alertmanager

os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")

TENANTS = ("alerting", "quiet")
HISTORY = 1700


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


class Load(threading.Thread):
    """One tenant's batches at ``hz``; spikes where ``spikes`` says (tick -> series index)."""

    def __init__(self, url: str, tenant: str, ids: list[str], values: np.ndarray, hz: float, ticks: int,
                 spikes: dict[int, int], size: float) -> None:
        super().__init__(daemon=True)
        import requests

        self.session = requests.Session()
        self.url, self.tenant, self.ids, self.values = url, tenant, ids, values
        self.hz, self.ticks, self.spikes, self.size = hz, ticks, spikes, size
        self.latency: list[float] = []
        self.sent: dict[int, float] = {}  # spike tick -> when its request left
        self.alarmed: dict[int, bool] = {}
        self.errors = 0
        self.start_at = 0.0
        self.offset = 0.0  # the tenants take turns: each request has the app to itself as far as the load goes

    def run(self) -> None:
        for tick in range(self.ticks):
            due = self.start_at + self.offset + tick / self.hz
            time.sleep(max(0.0, due - time.time()))
            col = self.values[:, HISTORY + tick].copy()
            j = self.spikes.get(tick)
            if j is not None:
                col[j] += self.size
            body = {"tenant": self.tenant, "series": [{"id": i, "values": [float(x)]} for i, x in zip(self.ids, col)]}
            t0 = time.time()
            r = self.session.post(f"{self.url}/v1/stream/batch", json=body, timeout=30)
            self.latency.append(1000 * (time.time() - t0))
            if r.status_code != 200:
                self.errors += 1
                continue
            if j is not None:
                self.sent[tick] = t0
                point = r.json()["results"][j]["points"][-1]
                self.alarmed[tick] = bool(point.get("alarm"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=50, help="series per tenant")
    p.add_argument("--hz", type=float, default=10.0, help="points per series per second")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--spike-every", type=float, default=1.5, help="seconds between spikes")
    args = p.parse_args(argv)
    os.chdir(tempfile.mkdtemp(prefix="eyenet-bench-"))

    import requests
    import torch
    from ray import serve

    from eyenet.cli import cluster
    from eyenet.core import presets, synthetic
    from eyenet.lifecycle import registry, training
    from eyenet.serve.app import build_app
    from tests.servers import AlertmanagerServer, WebhookSink, free_port

    torch.set_num_threads(1)
    ticks = int(args.seconds * args.hz)
    sink = WebhookSink()
    am = AlertmanagerServer(sink.url)
    am.start()
    cluster.connect(num_cpus=8)
    reg = registry.Registry().check()
    _, v, _ = synthetic.series("cpu_pct", n=presets.UP_ROWS, seed=presets.UP_SEED)
    v = np.asarray(v, dtype=float)
    for tenant in TENANTS:
        trained = training.train_and_register(presets.model_config("ensemble"), v[:504], registry=reg, tenant=tenant)
        reg.set_alias(trained.version.name, "champion", trained.version.version)
    # every series: the synthetic metric shifted in time, long enough for history and load
    need = HISTORY + ticks
    values = np.stack([np.resize(np.roll(v, -7 * i), need) for i in range(args.series)])
    size = 30 * float(np.subtract(*np.percentile(v, [75, 25])))
    every = max(1, int(round(args.spike_every * args.hz)))
    spikes = {t: (t // every) % args.series for t in range(every, ticks - every, every)}

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    config = {"auth": {"enabled": False}, "mlflow_uri": reg.uri, "use_gpus": False,
              "state_uri": str(Path.cwd() / "state"),
              "alerts": {"receivers": {"alerting": {"alertmanager": [am.url]}}}}
    serve.run(build_app(config), name="eyenet", route_prefix="/")
    try:
        ids = {t: [f"{t}-{i:03d}" for i in range(args.series)] for t in TENANTS}
        for t in TENANTS:  # history, not timed
            for i, sid in enumerate(ids[t]):
                r = requests.post(f"{url}/v1/stream", timeout=120,
                                  json={"tenant": t, "id": sid, "values": values[i, :HISTORY].tolist()})
                assert r.status_code == 200, r.text
        seen: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    for a in am.alerts():
                        sid = a["labels"].get("series", "")
                        key = f"{sid}@{a['startsAt']}"
                        if key not in seen:
                            seen[key] = time.time()
                except requests.RequestException:
                    pass
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        loads = [Load(url, t, ids[t], values, args.hz, ticks, spikes, size) for t in TENANTS]
        start = time.time() + 0.5
        for k, load in enumerate(loads):
            load.start_at, load.offset = start, k / (2 * args.hz)
            load.start()
        for load in loads:
            load.join()
        time.sleep(3)
        stop.set()
        watcher.join()
        on, off = loads
        delays, missed = [], 0
        firsts: dict[str, list[float]] = {}
        for key, when in seen.items():
            firsts.setdefault(key.split("@")[0], []).append(when)
        for tick, sent in sorted(on.sent.items()):
            if not on.alarmed.get(tick):
                continue
            sid = ids["alerting"][spikes[tick]]
            after = [w for w in firsts.get(sid, []) if w >= sent]
            if after:
                delays.append(1000 * (min(after) - sent))
            else:
                missed += 1
        wall = ticks / args.hz
        print(f"\nload: {2 * args.series * args.hz:.0f} points/s for {wall:.0f} s; {len(spikes)} spikes; "
              f"alarmed in alerting's answers: {sum(on.alarmed.values())}, in quiet's: {sum(off.alarmed.values())}; "
              f"request errors: {on.errors} / {off.errors}")
        print(f"alarm to alert in Alertmanager: n={len(delays)}, p50 {pct(delays, 50):.0f} ms, "
              f"p99 {pct(delays, 99):.0f} ms, max {max(delays, default=float('nan')):.0f} ms; never arrived: {missed}")
        print("| tenant | delivery | requests | p50 ms | p99 ms |")
        print("|---|---|---:|---:|---:|")
        for load, mode in ((on, "on"), (off, "off")):
            print(f"| {load.tenant} | {mode} | {len(load.latency)} | {pct(load.latency, 50):.1f} | "
                  f"{pct(load.latency, 99):.1f} |")
        print(f"p50 on / off: {pct(on.latency, 50) / pct(off.latency, 50):.3f}")
        health = requests.get(f"{url}/healthz", timeout=30).json()
        print(json.dumps({"alerts": health.get("alerts"), "webhook_notifications": len(sink.received)}))
    finally:
        serve.shutdown()
        am.stop()
        sink.close()


if __name__ == "__main__":
    main()
