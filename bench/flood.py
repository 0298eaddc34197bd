"""A flood over HTTP: one tenant streams many distinct series (one point each) at a running app while
another tenant keeps streaming a few series; what each gets back, and the app's bounds afterwards.

    eyenet up [--config FILE]                        # an app, and a model for each tenant's group
    python -m bench.flood --url http://127.0.0.1:8000 --flood-key KEY1 --calm-key KEY2 \\
        [--ids 200000] [--connections 32] [--group G] [--calm-alone-s 30] [--calm-rps 20]

The calm tenant streams its few series at ``--calm-rps`` (one request at a time, its latency
measured per request, each naming its series in ``X-EyeNet-Series`` as the README asks, on one
kept connection, made during two seconds that count in neither figure), first alone for ``--calm-alone-s`` seconds (its baseline), then while the
flooding tenant sends ``--ids`` distinct series ids, one point each, as fast as ``--connections``
connections allow, ignoring Retry-After (a misbehaving client). The flood runs in ``wrk``
(bench/flood.lua), so the load generator takes little of the CPU the app needs; with ``--batch N``
it is ``/v1/stream/batch`` requests of N new ids each instead (a cardinality explosion as a
batching sender makes it), from ``--connections`` threads. Each tenant is
whoever its key belongs to (the tenant comes from the credential).

Reports the flood's status codes (429 with Retry-After past its live-series quota,
``quota.max_series_per_tenant``, or past its requests in progress, ``max_inflight_per_tenant``),
the calm tenant's latency percentiles alone and during the flood with their ratio, and
``/healthz``'s store, monitor and bounds figures after it. Nothing is recorded in
bench/RESULTS.md by this script.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests


class Calm:
    """One client streaming ``series`` series in turn at ``rps``, recording each answer's latency."""

    def __init__(self, url: str, key: str, group: str, rps: float, series: int = 10) -> None:
        self.url, self.group, self.interval, self.series = url, group, 1.0 / rps, series
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.ms: list[float] = []
        self.at: list[float] = []  # when each answered request was sent (time.perf_counter())
        self.timing: list[str] = []  # each answer's Server-Timing (the time it spent in the replica)
        self.statuses: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._k = 0
        self.session = requests.Session()

    def reset(self) -> None:
        """Forget the answers so far (the connection stays)."""
        self.ms, self.at, self.timing, self.statuses = [], [], [], collections.Counter()

    def _run(self) -> None:
        s = self.session  # one connection for both phases, as a real client keeps it
        while not self._stop.is_set():
            k = self._k
            sid = f"calm-{k % self.series}"
            body = {"id": sid, "values": [40.0 + k % 5], "group": self.group}
            t0 = time.perf_counter()
            try:  # as the README asks of a stream client: the series in X-EyeNet-Series
                r = s.post(f"{self.url}/v1/stream", json=body, headers={**self.headers, "X-EyeNet-Series": sid},
                           timeout=30)
                self.statuses[r.status_code] += 1
                if r.status_code == 200:
                    self.ms.append(1000 * (time.perf_counter() - t0))
                    self.at.append(t0)
                    self.timing.append(r.headers.get("Server-Timing", ""))
            except requests.RequestException as exc:
                self.statuses[type(exc).__name__] += 1
            self._k += 1
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t0)))

    def run_for(self, seconds: float) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(seconds)
        self.stop()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def summary(self, since: float | None = None) -> dict:
        """Percentiles, counts, and the slowest answers (the 1 % that set the p99, at least five) as
        [seconds after ``since``, ms, their Server-Timing] (``app``: the time in the replica's app; the
        rest of the ms was spent before it)."""
        pct = (lambda q: round(float(np.percentile(self.ms, q)), 2) if self.ms else None)
        since = self.at[0] if since is None and self.at else since
        slowest = sorted(zip(self.ms, self.at, self.timing), reverse=True)[: max(5, len(self.ms) // 100 + 1)]
        return {"p50": pct(50), "p99": pct(99), "n": len(self.ms), "statuses": {str(k): v for k, v in self.statuses.items()},
                "slowest": [[round(at - since, 2), round(ms, 1), timing] for ms, at, timing in slowest]}


class BatchFlood:
    """``--batch``: the flood as ``/v1/stream/batch`` requests of ``batch`` new series ids each (one
    point each), from ``connections`` threads, each sending its next request as soon as the last is
    answered (Retry-After ignored): a cardinality explosion as a remote_write sender or a batching
    agent would send it. Counts requests by status and series by their per-series status. It runs
    in a process of its own (:meth:`run`), so the flood's client work (building 1,000-series bodies,
    reading 1,000 answers) neither holds the calm client's interpreter lock nor counts in its
    latencies."""

    def __init__(self, url: str, key: str, group: str, ids: int, batch: int, connections: int,
                 prefix: str = "flood") -> None:
        self.url, self.group, self.ids, self.batch, self.connections = url, group, ids, batch, connections
        self.prefix = prefix
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"} if key else \
            {"Content-Type": "application/json"}
        self.requests: collections.Counter = collections.Counter()
        self.series: collections.Counter = collections.Counter()
        self.ms: list[float] = []
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> range | None:
        with self._lock:
            if self._next >= self.ids:
                return None
            r = range(self._next, min(self._next + self.batch, self.ids))
            self._next = r.stop
            return r

    def _run(self) -> None:
        head = ('{"group": %s, "series": [' % json.dumps(self.group)).encode()
        with requests.Session() as s:
            while (ids := self._take()) is not None:
                body = head + ",".join('{"id":"%s-%d","values":[1.0]}' % (self.prefix, i) for i in ids).encode() + b"]}"
                t0 = time.perf_counter()
                try:
                    r = s.post(f"{self.url}/v1/stream/batch", data=body, headers=self.headers, timeout=60)
                except requests.RequestException as exc:
                    self.requests[type(exc).__name__] += 1
                    continue
                self.ms.append(1000 * (time.perf_counter() - t0))
                self.requests[r.status_code] += 1
                if r.status_code == 200:
                    for res in r.json()["results"]:
                        self.series[res.get("status", 200)] += 1
                else:
                    self.series[r.status_code] += len(ids)

    def _threads(self, out: Any = None) -> dict:
        threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pct = (lambda q: round(float(np.percentile(self.ms, q)), 1) if self.ms else None)
        result = {"requests": sum(self.requests.values()), "by_status": {str(k): v for k, v in self.requests.items()},
                  "series_by_status": {str(k): v for k, v in self.series.items()}, "request_p50_ms": pct(50),
                  "request_p99_ms": pct(99)}
        if out is not None:
            out.put(result)
        return result

    def run(self) -> dict:
        """The flood in a child process; its counts once every id was sent."""
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        params = (self.url, self.headers.get("Authorization", "")[len("Bearer "):], self.group, self.ids,
                  self.batch, self.connections, self.prefix)
        child = ctx.Process(target=_flood_child, args=(params, out), daemon=True)
        child.start()
        result = out.get()
        child.join(timeout=30)
        return result


def _flood_child(params: tuple, out: Any) -> None:
    BatchFlood(*params)._threads(out)


def flood(args: argparse.Namespace) -> dict:
    if args.batch:
        return _measure(args, lambda: BatchFlood(args.url, args.flood_key, args.group, args.ids, args.batch,
                                                 args.connections, args.prefix).run())
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench.flood: wrk not found (Debian's package 'wrk')")
    threads = 2
    env = {**os.environ, "FLOOD_IDS": str(args.ids), "FLOOD_THREADS": str(threads), "FLOOD_KEY": args.flood_key,
           "FLOOD_GROUP": args.group, "FLOOD_PREFIX": args.prefix}

    def run_wrk() -> dict:
        out = subprocess.run([wrk, f"-t{threads}", f"-c{args.connections}", "-d3600s", "--timeout", "30s",
                              "-s", str(Path(__file__).with_name("flood.lua")), args.url],
                             env=env, capture_output=True, text=True, check=False)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("FLOOD ")), None)
        if line is None:
            raise SystemExit(f"bench.flood: wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        return json.loads(line[len("FLOOD "):])

    return _measure(args, run_wrk)


def _measure(args: argparse.Namespace, run_flood: Any) -> dict:
    """The calm tenant alone, then during ``run_flood()``; the figures of both and /healthz after."""
    calm = Calm(args.url, args.calm_key, args.group, args.calm_rps)
    calm.run_for(2.0)  # its connection made and its series on their replicas: not part of either figure
    calm.reset()
    calm.run_for(args.calm_alone_s)
    alone = calm.summary()
    calm.reset()
    t0 = time.perf_counter()
    calm.start()
    result = run_flood()
    took = time.perf_counter() - t0
    calm.stop()
    during = calm.summary(since=t0)
    health = requests.get(f"{args.url}/healthz", timeout=30,
                          headers={"Authorization": f"Bearer {args.calm_key}"} if args.calm_key else {}).json()
    return {"ids": args.ids, "connections": args.connections, "batch": args.batch, "seconds": round(took, 1),
            "flood_rps": round(result["requests"] / took, 1), "flood": result,
            "calm_alone_ms": alone, "calm_during_flood_ms": during,
            "calm_p99_ratio": round(during["p99"] / alone["p99"], 2) if during["p99"] and alone["p99"] else None,
            "calm_p50_ratio": round(during["p50"] / alone["p50"], 2) if during["p50"] and alone["p50"] else None,
            "healthz": {k: health.get(k) for k in ("status", "problems", "streams", "store", "bounds", "monitor")}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--ids", type=int, default=200_000, help="distinct series the flooding tenant sends one point of")
    p.add_argument("--connections", type=int, default=32, help="the flood's connections")
    p.add_argument("--group", default="default")
    p.add_argument("--flood-key", default="", help="the flooding tenant's API key (none: auth off)")
    p.add_argument("--calm-key", default="", help="the calm tenant's API key")
    p.add_argument("--calm-alone-s", type=float, default=30.0, help="seconds the calm tenant streams alone first")
    p.add_argument("--calm-rps", type=float, default=20.0, help="the calm tenant's requests a second")
    p.add_argument("--prefix", default="flood", help="the flood's series ids are <prefix>-<n> (another prefix: "
                   "new series again on the same app)")
    p.add_argument("--batch", type=int, default=0, help="send the flood as /v1/stream/batch requests of this many "
                   "new ids each (Python threads, one per connection) instead of one id per request (wrk)")
    args = p.parse_args(argv)
    print(json.dumps(flood(args), indent=2))


if __name__ == "__main__":
    main()
