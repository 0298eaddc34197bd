"""Garbage-collector pauses on a router's request path, in-process: Python's default collector
against a replica's settled heap (``eyenet.serving.heap.settle_heap``), in the same run.

    python -m bench.gc_pauses [--batches 30] [--rounds 2]

Each side runs in a fresh process: the default ensemble fitted on synthetic ``cpu_pct``, a
:class:`~eyenet.serving.pipeline.Pipeline` over a local stream store whose tenant is at its
live-series quota (10), then ``--batches`` ``/v1/stream/batch`` bodies of one of its series and
999 new ones (one point each: the new ones refused, as in the flood of bench/RESULTS.md; a batch of
only new series is now refused whole) parsed, streamed and encoded.
Prints per side the time per batch (p50, p99, max) and the time spent in collections.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


def run(settled: bool, batches: int) -> dict:
    import asyncio
    import gc
    import sys as _sys
    import tempfile
    import time
    from pathlib import Path
    from types import SimpleNamespace

    import numpy as np

    import importlib

    for lib in ("ray", "mlflow"):  # a replica's heap holds these libraries too
        importlib.import_module(lib)
    from eyenet.core import presets, synthetic
    from eyenet.core.model import AnomalyModel
    from eyenet.serving import schemas
    from eyenet.serving.http import JSONResponse
    from eyenet.serving.pipeline import AliasResolver, ModelCache, Pipeline
    from eyenet.serving.settings import AppConfig
    from eyenet.serving.streams import StreamStore

    np.seterr(all="ignore")
    _, v, _ = synthetic.series("cpu_pct", n=2016, seed=7)
    model = AnomalyModel.from_dict(presets.model_config("ensemble")).fit(v[:504])

    class Shelf:
        def load(self, name, version=None):
            return model

        def version(self, name, version=None, *, alias=None):
            return SimpleNamespace(version=1, created=0.0)

    cfg = AppConfig(quota={"max_series_per_tenant": 10})
    store = StreamStore(tempfile.mkdtemp(), quota=cfg.quota)
    p = Pipeline(AliasResolver(Shelf()), ModelCache(Shelf()), store, config=cfg)
    if settled:
        _sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from eyenet.serving.heap import settle_heap

        settle_heap()
    spent = {"s": 0.0, "n": 0, "t": 0.0}

    def watch(phase: str, info: dict) -> None:
        if phase == "start":
            spent["t"] = time.perf_counter()
        else:
            spent["s"] += time.perf_counter() - spent["t"]
            spent["n"] += 1

    def body(start: int) -> bytes:
        return json.dumps({"series": [{"id": "a0", "values": [40.0]}]
                           + [{"id": f"s{start + i}", "values": [40.0]} for i in range(999)]}).encode()

    async def main() -> list[float]:
        fill = {"series": [{"id": f"a{i}", "values": [40.0] * 10} for i in range(10)]}
        await p.stream_many(schemas.StreamBatchRequest.model_validate_json(json.dumps(fill)))
        for k in range(3):  # warm
            await p.stream_many(schemas.StreamBatchRequest.model_validate_json(body(k * 1000)))
        gc.callbacks.append(watch)
        out = []
        for k in range(3, 3 + batches):
            raw = body(k * 1000)
            t0 = time.perf_counter()
            answer = await p.stream_many(schemas.StreamBatchRequest.model_validate_json(raw))
            JSONResponse(answer).body
            out.append(1000 * (time.perf_counter() - t0))
        gc.callbacks.remove(watch)
        return out

    ms = asyncio.run(main())
    return {"settled": settled, "p50": float(np.median(ms)), "p99": float(np.quantile(ms, 0.99)), "max": max(ms),
            "gc_ms": 1000 * spent["s"], "collections": spent["n"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the two sides this many times")
    ap.add_argument("--side", choices=("default", "settled"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(run(args.side == "settled", args.batches)))
        return
    print("| heap | batch p50 ms | p99 ms | max ms | time in collections | collections |\n|---|---:|---:|---:|---:|---:|")
    for _ in range(args.rounds):
        for side in ("default", "settled"):
            out = subprocess.run([sys.executable, "-m", "bench.gc_pauses", "--side", side, "--batches",
                                  str(args.batches)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {side} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | {r['gc_ms']:.0f} ms | "
                  f"{r['collections']} |", flush=True)


if __name__ == "__main__":
    main()
