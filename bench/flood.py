"""A flood over HTTP: one tenant streams many distinct series (one point each) at a running app while
another tenant keeps streaming a few series; what each gets back, and the app's bounds afterwards.

    eyenet up ...                                     # an app with a model for both tenants' group
    python -m bench.flood --url http://127.0.0.1:8000 [--ids 200000] [--concurrency 32] \\
        [--flood-tenant flood] [--calm-tenant default] [--header "Authorization: Bearer KEY"]

Reports per tenant the status codes (the flooding tenant should get 429 with Retry-After past its
live-series quota, ``quota.max_series_per_tenant``), the calm tenant's latency percentiles during
the flood, and ``/healthz``'s store and bounds figures after it (series, bytes, evictions). Nothing
is recorded in bench/RESULTS.md by this script.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time

import numpy as np


async def _flood(args: argparse.Namespace) -> dict:
    import httpx

    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    statuses: dict[str, collections.Counter] = {"flood": collections.Counter(), "calm": collections.Counter()}
    retry_after: list[float] = []
    calm_ms: list[float] = []
    ids = iter(range(args.ids))
    done = asyncio.Event()

    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits, timeout=30) as client:
        async def flooder() -> None:
            for i in ids:
                body = {"id": f"flood-{i}", "values": [float(i % 13)], "tenant": args.flood_tenant,
                        "group": args.group}
                try:
                    r = await client.post("/v1/stream", json=body)
                except httpx.HTTPError as exc:
                    statuses["flood"][type(exc).__name__] += 1
                    continue
                statuses["flood"][r.status_code] += 1
                if r.status_code == 429 and "retry-after" in r.headers:
                    retry_after.append(float(r.headers["retry-after"]))

        async def calm() -> None:
            k = 0
            while not done.is_set():
                body = {"id": f"calm-{k % 10}", "values": [40.0 + k % 5], "tenant": args.calm_tenant,
                        "group": args.group}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/stream", json=body)
                    statuses["calm"][r.status_code] += 1
                    if r.status_code == 200:
                        calm_ms.append(1000 * (time.perf_counter() - t0))
                except httpx.HTTPError as exc:
                    statuses["calm"][type(exc).__name__] += 1
                k += 1
                await asyncio.sleep(args.calm_interval_s)

        t0 = time.perf_counter()
        calm_task = asyncio.create_task(calm())
        await asyncio.gather(*(flooder() for _ in range(args.concurrency)))
        took = time.perf_counter() - t0
        done.set()
        await calm_task
        health = (await client.get("/healthz")).json()

    pct = (lambda q: float(np.percentile(calm_ms, q)) if calm_ms else None)
    return {"ids": args.ids, "seconds": round(took, 1), "flood_rps": round(args.ids / took, 1),
            "flood": {str(k): v for k, v in statuses["flood"].items()},
            "calm": {str(k): v for k, v in statuses["calm"].items()},
            "retry_after_s": sorted(set(retry_after))[:5],
            "calm_ms": {"p50": pct(50), "p99": pct(99), "n": len(calm_ms)},
            "healthz": {k: health.get(k) for k in ("status", "problems", "streams", "store", "bounds", "monitor")}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--ids", type=int, default=200_000, help="distinct series the flooding tenant sends one point of")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--flood-tenant", default="flood")
    p.add_argument("--calm-tenant", default="default")
    p.add_argument("--group", default="default")
    p.add_argument("--calm-interval-s", type=float, default=0.05)
    p.add_argument("--header", action="append", default=[], help="extra request header, 'Name: value'")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(_flood(args)), indent=2))


if __name__ == "__main__":
    main()
