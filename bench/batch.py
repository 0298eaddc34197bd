"""Many live series, one new point each per request (``POST /v1/stream/batch``): EyeNet against one
FastAPI process scoring the same model, and the same batch in-process against one point in-process.

    eyenet up                                   # the app; its admin key is in .eyenet/admin.key
    python -m bench.fastapi_baseline --model default.default.ensemble \\
        --mlflow-uri sqlite:///$PWD/.eyenet/mlflow.db --port 8100 &     # the baseline, same champion
    python -m bench.batch --url http://127.0.0.1:8000 --key "$(cat .eyenet/admin.key)" \\
        [--baseline-url http://127.0.0.1:8100] [--series 1000] [--connections 2] [--history 300] [--seconds 20]

    python -m bench.batch --in-process [--model default.default.ensemble \\
        --mlflow-uri sqlite:///$PWD/.eyenet/mlflow.db] [--series 1000]        # no server needed

Over HTTP, for each target (EyeNet at ``--url``, then the baseline at ``--baseline-url`` if given,
each measured while the other is idle):

1. warm-up, not timed: every connection's ``--series`` series (its own, disjoint from the other
   connections') get ``--history`` points, in requests of at most 100,000 points; the values are
   ``eyenet.core.synthetic.series("cpu_pct")`` shifted in time and level per series;
2. load: ``--connections`` threads, each sending one request at a time for ``--seconds``; a
   request carries one new point for each of its connection's series. Every request body is
   serialised before the timed phase (``--steps`` per connection), so the client's CPU during
   it is the HTTP round trip alone (reported: the client shares the machine with the server).
   Threads, not processes: they wait on their sockets nearly all the time, so the client's GIL
   does not hold the load back (its CPU share in the report shows how little it takes).
   EyeNet requests carry the key and an ``X-EyeNet-Series`` header of the connection's own,
   so the ingress sends all of a connection's series to one router replica; the values are
   chosen (from ``/healthz``'s ``replica``) so that the connections spread over the replicas.

Reported per target: requests, 200 and other answers, scored points per second (points of 200
answers without a per-series error, over the wall time of the load), request p50 / p99, the
client's CPU; then EyeNet / baseline. A few answers are checked (one point per series, no
``error``, scores ready after the warm-up), so the bench stops rather than measuring errors.

``--in-process`` (no server, no Ray): the champion ``--model`` from ``--mlflow-uri``, or without
``--model`` an ensemble (``presets.model_config("ensemble")``) fitted here on synthetic data; then
in the same run (a) one batch of ``--series`` series of one point each through
``Pipeline.stream_many`` with a local ``StreamStore`` (its cost per point), and (b) one point of
one stream, ``model.stream().score_one(x)``, each after a warm-up; µs per point, p50 and p99 over
``--repeats``, and (a) / (b). Nothing is recorded in bench/RESULTS.md by this script.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import tempfile
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import requests

from bench import loopback_url
from eyenet.cli.cluster import SERIES_HEADER
#: points of one request at most (schemas.LIMITS.max_batch_points) and series (max_batch_series)
MAX_POINTS, MAX_SERIES = 100_000, 5_000
#: answers of each connection whose bodies are checked in full (the first ones and the last)
CHECKED = 2


def fail(message: str) -> SystemExit:
    return SystemExit(f"bench.batch: {message}")


def post(session: requests.Session, url: str, body: bytes, headers: dict[str, str],
         timeout: float) -> requests.Response:
    """A POST that turns an unreachable server or a refused key into a clear exit."""
    try:
        r = session.post(url, data=body, headers=headers, timeout=timeout)
    except requests.ConnectionError as exc:
        raise fail(f"cannot reach {url}: {exc.__class__.__name__} (is the server running?)") from None
    except requests.RequestException as exc:
        raise fail(f"{url}: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    if r.status_code == 401:
        raise fail(f"{url} refused the key (401): {r.text[:200]} (pass --key, e.g. \"$(cat .eyenet/admin.key)\")")
    if r.status_code == 403:
        raise fail(f"{url}: the key may not do this (403): {r.text[:200]} (a writer key is needed)")
    return r


# -- data -----------------------------------------------------------------------------------------
def series_values(n_series: int, n_points: int) -> np.ndarray:
    """``(n_series, n_points)`` values: the synthetic CPU metric shifted by 7 rows and 0-9 units per series."""
    from eyenet.core import presets, synthetic

    shifts = 7 * (np.arange(n_series) % 997)
    _, v, _ = synthetic.series("cpu_pct", n=n_points + int(shifts.max()) + 1, seed=presets.UP_SEED)
    v = np.asarray(v, dtype=float)
    return np.stack([v[s : s + n_points] + (k % 10) for k, s in enumerate(shifts)])


def batch_body(ids: list[str], column: np.ndarray, group: str) -> bytes:
    """A /v1/stream/batch body of one point per series, written by hand (faster than json.dumps)."""
    parts = ",".join(f'{{"id":"{i}","values":[{x:.4f}]}}' for i, x in zip(ids, column.tolist()))
    return f'{{"group":"{group}","series":[{parts}]}}'.encode()


# -- HTTP -----------------------------------------------------------------------------------------
def spread_headers(url: str, n: int, prefix: str) -> tuple[list[str], list[str | None]]:
    """One ``X-EyeNet-Series`` value per connection, chosen so the connections spread over the router
    replicas: ``/healthz`` names the replica that answered, and the ingress hashes the header the
    same way for every route. Without a ``replica`` in the answer: ``prefix-0``, ``prefix-1``, ..."""
    plain = [f"{prefix}-{c}" for c in range(n)]
    by_replica: dict[str, list[str]] = collections.defaultdict(list)
    for i in range(max(16, 4 * n)):
        value = f"{prefix}-{i}"
        try:
            r = requests.get(f"{url}/healthz", headers={SERIES_HEADER: value}, timeout=30)
            replica = r.json().get("replica") if r.ok else None
        except (requests.RequestException, ValueError):
            replica = None
        if replica is None:
            return plain, [None] * n
        by_replica[str(replica)].append(value)
    replicas = sorted(by_replica)
    values, where = [], []
    for c in range(n):
        replica = replicas[c % len(replicas)]
        if not by_replica[replica]:  # more connections than probed values of that replica: any other
            replica = max(replicas, key=lambda r: len(by_replica[r]))
        values.append(by_replica[replica].pop(0))
        where.append(replica)
    return values, where


class Connection(threading.Thread):
    """One connection sending its pre-built bodies one at a time until the deadline."""

    def __init__(self, url: str, headers: dict[str, str], bodies: list[bytes], n_series: int,
                 start: threading.Event, deadline: list[float], timeout: float) -> None:
        super().__init__(daemon=True)
        self.url, self.headers, self.bodies, self.n_series = url, headers, bodies, n_series
        self.start_evt, self.deadline, self.timeout = start, deadline, timeout
        self.ms: list[float] = []
        self.statuses: collections.Counter = collections.Counter()
        self.points = 0
        self.series_errors = 0
        self.checked: list[tuple[int, bytes]] = []  # (step, body) of answers checked afterwards
        self.errors: list[str] = []
        self.exhausted = False
        self.ended = 0.0

    def run(self) -> None:
        with requests.Session() as s:
            self.start_evt.wait()
            last = None
            for j, body in enumerate(self.bodies):
                if time.perf_counter() >= self.deadline[0]:
                    break
                t0 = time.perf_counter()
                try:
                    r = s.post(self.url, data=body, headers=self.headers, timeout=self.timeout)
                except requests.RequestException as exc:
                    self.statuses[type(exc).__name__] += 1
                    if len(self.errors) < 3:
                        self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                self.ms.append(1000 * (time.perf_counter() - t0))
                self.statuses[r.status_code] += 1
                if r.status_code != 200:
                    if len(self.errors) < 3:
                        self.errors.append(f"{r.status_code}: {r.text[:300]}")
                    continue
                content = r.content
                if b'"error"' in content:  # a series refused inside a 200 (429 at the quota, 409): not scored
                    failed = sum("error" in x for x in json.loads(content)["results"])
                    self.series_errors += failed
                    self.points += self.n_series - failed
                else:
                    self.points += self.n_series
                if len(self.checked) < CHECKED:
                    self.checked.append((j, content))
                last = (j, content)
            else:
                self.exhausted = True
            self.ended = time.perf_counter()
            if last is not None and last[0] not in {j for j, _ in self.checked}:
                self.checked.append(last)


def check_answer(target: str, content: bytes, ids: list[str]) -> int:
    """Fail unless every series of ``ids`` got exactly one point and no error; returns the points not ready."""
    body = json.loads(content)
    results = body.get("results")
    if not isinstance(results, list) or len(results) != len(ids):
        raise fail(f"{target}: expected {len(ids)} results, got {str(body)[:300]}")
    not_ready = 0
    for sid, r in zip(ids, results):
        if r.get("id") != sid or "error" in r or len(r.get("points", ())) != 1:
            raise fail(f"{target}: unexpected result for {sid}: {str(r)[:300]}")
        not_ready += r["points"][0].get("score") is None
    return not_ready


def warm(target: str, url: str, headers: list[dict[str, str]], ids: list[list[str]], values: np.ndarray,
         history: int, group: str) -> float:
    """Every connection's series get ``history`` points (requests of at most MAX_POINTS points); seconds taken."""
    t0 = time.perf_counter()
    per = len(ids[0])
    chunk = max(1, MAX_POINTS // per)
    with requests.Session() as s:
        for c, (hdr, conn_ids) in enumerate(zip(headers, ids)):
            rows = values[c * per : (c + 1) * per]
            for lo in range(0, history, chunk):
                hi = min(history, lo + chunk)
                body = json.dumps({"group": group, "series": [{"id": i, "values": np.round(row[lo:hi], 4).tolist()}
                                                              for i, row in zip(conn_ids, rows)]}).encode()
                r = post(s, f"{url}/v1/stream/batch", body, hdr, timeout=600)
                if r.status_code != 200:
                    raise fail(f"{target}: warm-up answered {r.status_code}: {r.text[:300]}")
                for sid, res in zip(conn_ids, r.json()["results"]):
                    if "error" in res or res.get("id") != sid:
                        raise fail(f"{target}: warm-up of {sid}: {str(res)[:300]}")
    return time.perf_counter() - t0


def measure(target: str, url: str, eyenet: bool, args: argparse.Namespace, ids: list[list[str]],
            values: np.ndarray, bodies: list[list[bytes]]) -> dict[str, Any]:
    base = {"Content-Type": "application/json"}
    if eyenet:  # the key, and a series header of each connection's own
        series_headers, replicas = spread_headers(url, args.connections, "bench-batch")
        auth = {"Authorization": f"Bearer {args.key}"} if args.key else {}
        headers = [{**base, **auth, SERIES_HEADER: h} for h in series_headers]
    else:  # the baseline has neither auth nor replicas
        replicas = [None] * args.connections
        headers = [dict(base) for _ in range(args.connections)]
    warm_s = warm(target, url, headers, ids, values, args.history, args.group)
    print(f"{target}: warm-up of {args.connections} x {args.series} series x {args.history} points: "
          f"{warm_s:.1f} s" + (f"; connections on replicas {replicas}" if any(replicas) else ""), flush=True)
    start, deadline = threading.Event(), [math.inf]
    conns = [Connection(f"{url}/v1/stream/batch", h, b, args.series, start, deadline, timeout=max(60.0, args.seconds))
             for h, b in zip(headers, bodies)]
    for c in conns:
        c.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline[0] = t0 + args.seconds
    start.set()
    for c in conns:
        c.join()
    wall = max(c.ended for c in conns) - t0
    cpu = time.process_time() - cpu0
    not_ready = checked = 0
    for c, conn_ids in zip(conns, ids):
        for _, content in c.checked:
            not_ready += check_answer(target, content, conn_ids)
            checked += len(conn_ids)
    if checked == 0:
        errors = [e for c in conns for e in c.errors]
        raise fail(f"{target}: no request succeeded during the load: {errors[:3]}")
    if not_ready > checked // 2:
        raise fail(f"{target}: {not_ready} of {checked} checked points have no score after {args.history} "
                   f"points of history (not ready): raise --history")
    ms = [x for c in conns for x in c.ms]
    statuses = sum((c.statuses for c in conns), collections.Counter())
    points = sum(c.points for c in conns)
    return {"target": target, "requests": len(ms), "ok": statuses.get(200, 0),
            "other": {str(k): v for k, v in statuses.items() if k != 200},
            "series_errors": sum(c.series_errors for c in conns), "points": points, "wall_s": wall,
            "points_per_s": points / wall if wall > 0 else 0.0,
            "p50_ms": float(np.percentile(ms, 50)) if ms else math.nan,
            "p99_ms": float(np.percentile(ms, 99)) if ms else math.nan,
            "client_cpu_pct": 100 * cpu / wall if wall > 0 else math.nan,
            "exhausted": sum(c.exhausted for c in conns), "warm_s": warm_s, "not_ready": not_ready,
            "checked": checked, "errors": [e for c in conns for e in c.errors][:3]}


def http_section(args: argparse.Namespace) -> None:
    url = loopback_url("bench.batch", "--url", args.url, args.allow_remote)
    base_url = loopback_url("bench.batch", "--baseline-url", args.baseline_url, args.allow_remote) \
        if args.baseline_url else None
    steps = args.steps or int(math.ceil(args.seconds * 30))
    n = args.connections * args.series
    values = series_values(n, args.history + steps)
    ids = [[f"bench-batch-c{c}-s{k:05d}" for k in range(args.series)] for c in range(args.connections)]
    t0 = time.perf_counter()
    bodies = [[batch_body(ids[c], values[c * args.series : (c + 1) * args.series, args.history + j], args.group)
               for j in range(steps)] for c in range(args.connections)]
    print(f"pre-built {args.connections} x {steps} request bodies ({len(bodies[0][0]) / 1024:.0f} KiB each) "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = [measure("eyenet", url, True, args, ids, values, bodies)]
    if base_url:
        rows.append(measure("fastapi", base_url, False, args, ids, values, bodies))
    print(f"\nPOST /v1/stream/batch: {args.connections} connections x {args.series} series, one new point per "
          f"series per request, {args.seconds:g} s per target, after {args.history} points of history\n")
    print("| target | requests | 200 | other | scored points/s | p50 ms | p99 ms | client CPU % |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        other = ", ".join(f"{k}: {v}" for k, v in r["other"].items()) or "-"
        print(f"| {r['target']} | {r['requests']} | {r['ok']} | {other} | {r['points_per_s']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['client_cpu_pct']:.1f} |")
    for r in rows:
        notes = []
        if r["series_errors"]:
            notes.append(f"{r['series_errors']} series refused inside 200 answers (not counted as scored)")
        if r["exhausted"]:
            notes.append(f"{r['exhausted']} connection(s) ran out of pre-built requests before the end: raise --steps")
        if r["errors"]:
            notes.append(f"first errors: {r['errors']}")
        if r["not_ready"]:
            notes.append(f"{r['not_ready']} of {r['checked']} checked points not ready")
        if notes:
            print(f"{r['target']}: " + "; ".join(notes))
    e = rows[0]
    print(f"\nEyeNet: {e['points_per_s']:.0f} scored points/s (target >= 20,000: "
          f"{'met' if e['points_per_s'] >= 20_000 else 'not met'})")
    if len(rows) > 1 and rows[1]["points_per_s"] > 0:
        b = rows[1]
        print(f"EyeNet / FastAPI: {e['points_per_s'] / b['points_per_s']:.2f}x points/s; "
              f"p99 {e['p99_ms']:.1f} ms vs {b['p99_ms']:.1f} ms")
    print(json.dumps({r["target"]: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()
                                    if k not in ("target", "errors")} for r in rows}))


# -- in-process -----------------------------------------------------------------------------------
def load_model(args: argparse.Namespace) -> tuple[Any, str]:
    if args.model:
        from eyenet.lifecycle import registry

        if not args.mlflow_uri:
            raise fail("--model needs --mlflow-uri")
        return registry.Registry(args.mlflow_uri).load(args.model, alias="champion"), \
            f"{args.model} (champion of {args.mlflow_uri})"
    from eyenet.core import presets, synthetic
    from eyenet.core.model import AnomalyModel

    _, v, _ = synthetic.series("cpu_pct", n=presets.UP_ROWS, seed=presets.UP_SEED)
    model = AnomalyModel.from_dict(presets.model_config("ensemble")).fit(np.asarray(v, dtype=float)[:504])
    return model, f"ensemble {'+'.join(model.member_families)} fitted in-process on synthetic cpu_pct (no --model)"


def us_stats(seconds: list[float], per: int) -> dict[str, float]:
    x = 1e6 * np.asarray(seconds) / per
    return {"p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99)), "n": len(x)}


async def batch_in_process(model: Any, values: np.ndarray, history: int, repeats: int, warmup: int) -> dict[str, float]:
    """(a): µs per point of one ``stream_many`` of one point for each series, after ``history`` points each."""
    from eyenet.serving import schemas
    from eyenet.serving.pipeline import AliasResolver, ModelCache, Pipeline
    from eyenet.serving.settings import AppConfig
    from eyenet.serving.streams import StreamStore

    class Shelf:  # the registry, as AliasResolver and ModelCache use it: this one model as version 1
        def load(self, name: str, version: int | None = None) -> Any:
            return model

        def version(self, name: str, version: int | None = None, *, alias: str | None = None) -> Any:
            return SimpleNamespace(version=1, created=0.0)

    n = len(values)
    ids = [f"s{k:05d}" for k in range(n)]
    with tempfile.TemporaryDirectory(prefix="eyenet-bench-batch-") as state:
        store = StreamStore(state)
        pipe = Pipeline(AliasResolver(Shelf()), ModelCache(Shelf()), store, config=AppConfig())
        try:
            chunk = max(1, MAX_POINTS // n)
            for lo in range(0, history, chunk):
                await pipe.stream_many(schemas.StreamBatchRequest(
                    series=[schemas.SeriesIn(id=i, values=row[lo : min(history, lo + chunk)].tolist())
                            for i, row in zip(ids, values)]))
            reqs = [schemas.StreamBatchRequest(series=[schemas.SeriesIn(id=i, values=[float(row[history + j])])
                                                       for i, row in zip(ids, values)])
                    for j in range(warmup + repeats)]
            times = []
            for j, req in enumerate(reqs):
                t0 = time.perf_counter()
                out = await pipe.stream_many(req)
                dt = time.perf_counter() - t0
                if j >= warmup:
                    times.append(dt)
            bad = [r for r in out["results"] if "error" in r or len(r["points"]) != 1]
            if bad:
                raise fail(f"in-process stream_many: {str(bad[0])[:300]}")
            if sum(r["points"][0]["score"] is None for r in out["results"]) > n // 2:
                raise fail(f"in-process stream_many: most points not ready after {history} points of history")
        finally:
            pipe.close()
            await store.close()
    return us_stats(times, n)


def one_in_process(model: Any, values: np.ndarray, history: int, repeats: int) -> dict[str, float]:
    """(b): µs of ``stream.score_one(x)`` of one stream after ``history`` points."""
    stream = model.stream()
    stream.score_many(values[:history])
    times = []
    for j in range(repeats):
        x = float(values[history + j % (len(values) - history)])
        t0 = time.perf_counter()
        stream.score_one(x)
        times.append(time.perf_counter() - t0)
    return us_stats(times[min(10, repeats // 10):], 1)


def in_process_section(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)  # as the router replicas and the FastAPI baseline score
    t0 = time.perf_counter()
    model, what = load_model(args)
    print(f"model: {what} ({time.perf_counter() - t0:.1f} s)", flush=True)
    warmup = 3
    values = series_values(args.series, args.history + warmup + args.repeats)
    a = asyncio.run(batch_in_process(model, values, args.history, args.repeats, warmup))
    b = one_in_process(model, values[0], args.history, max(200, 20 * args.repeats))
    print(f"\nin-process (no HTTP, no Ray; torch threads 1), after {args.history} points of history per series\n")
    print("| path | µs per point p50 | p99 | repeats |")
    print("|---|---:|---:|---:|")
    print(f"| (a) Pipeline.stream_many, one batch of {args.series} series x 1 point | {a['p50']:.1f} | {a['p99']:.1f} "
          f"| {a['n']} |")
    print(f"| (b) model.stream().score_one(x), one point | {b['p50']:.1f} | {b['p99']:.1f} | {b['n']} |")
    r50, r99 = a["p50"] / b["p50"], a["p99"] / b["p99"]
    print(f"\n(a) / (b): p50 {r50:.2f}, p99 {r99:.2f} (target (a) <= (b): {'met' if r50 <= 1 else 'not met'} at p50, "
          f"{'met' if r99 <= 1 else 'not met'} at p99)")
    print(json.dumps({"model": what, "series": args.series, "batch_us_per_point": a, "one_point_us": b,
                      "ratio_p50": round(r50, 3), "ratio_p99": round(r99, 3)}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the EyeNet app")
    p.add_argument("--key", default=None, help="an API key of a writer (or admin); none: auth is off")
    p.add_argument("--baseline-url", default=None, help="bench/fastapi_baseline.py serving the same model")
    p.add_argument("--series", type=int, default=1000, help="series per connection (points per request)")
    p.add_argument("--connections", type=int, default=2)
    p.add_argument("--history", type=int, default=300, help="points of each series before the load")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of load per target")
    p.add_argument("--steps", type=int, default=None, help="requests pre-built per connection "
                   "(default: 30 a second of --seconds); a connection stops when they run out")
    p.add_argument("--group", default="default")
    p.add_argument("--allow-remote", action="store_true", help="allow a URL that is not a loopback address")
    p.add_argument("--in-process", action="store_true", help="only the in-process section (no server needed)")
    p.add_argument("--model", default=None, help="--in-process: registered model whose champion is measured "
                   "(default: an ensemble fitted in-process)")
    p.add_argument("--mlflow-uri", default=None, help="--in-process: the registry of --model")
    p.add_argument("--repeats", type=int, default=30, help="--in-process: timed batches")
    args = p.parse_args(argv)
    if not 1 <= args.series <= MAX_SERIES:
        p.error(f"--series: 1 to {MAX_SERIES} (series of one request at most)")
    if args.connections < 1 or args.history < 1 or args.seconds <= 0 or args.repeats < 1:
        p.error("--connections, --history, --seconds and --repeats must be positive")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be positive")
    if args.in_process:
        in_process_section(args)
    else:
        http_section(args)


if __name__ == "__main__":
    main()
