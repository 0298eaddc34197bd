"""What authentication costs per request: the same FastAPI app with the auth middleware on and off.

    python -m bench.auth [--requests 20000]

Both variants run in this process through the ASGI interface (no sockets, so the difference is the
middleware's work alone): a POST with a JSON body to a route that reads the caller's identity, as
``/v1/stream`` does. "on" sends a valid API key (verified once, then served from the in-memory
cache, as every request after a key's first is); "off" has ``auth.enabled: false``. The variants
alternate in rounds so drift of the machine hits both alike. Also timed: a key's first
verification (the scrypt hash), paid once per key per ``auth.cache_s``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI

from eyenet.serving import auth
from eyenet.serving.auth import Authenticator, AuthMiddleware, AuthSettings, KeyStore


def make_app(authenticator: Authenticator) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/stream")
    async def stream(body: dict) -> dict:
        return {"tenant": auth.current().tenant, "n": len(body.get("values", []))}

    app.add_middleware(AuthMiddleware, authenticator=authenticator)
    return app


async def _request(app: FastAPI, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/stream", "raw_path": b"/v1/stream", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    sent = False
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _timed(app: FastAPI, headers: list[tuple[bytes, bytes]], body: bytes, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        status = await _request(app, headers, body)
        out[i] = time.perf_counter() - t0
        if status != 200:
            raise SystemExit(f"unexpected status {status}")
    return out


async def main_async(requests: int, rounds: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="eyenet-bench-auth-"))
    store = KeyStore(root / "keys.db")
    _, key = store.create("bench", "acme", "writer")
    on = make_app(Authenticator(AuthSettings(cache_s=300), store))
    off = make_app(Authenticator(AuthSettings(enabled=False)))
    body = json.dumps({"id": "web-1/cpu", "values": [41.9]}).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    with_key = [*base, (b"authorization", f"Bearer {key}".encode())]
    first = Authenticator(AuthSettings(), store)
    t0 = time.perf_counter()
    first.verify(key)
    first_ms = 1e3 * (time.perf_counter() - t0)
    await _timed(on, with_key, body, 200)  # warm-up (and the key's one verification)
    await _timed(off, base, body, 200)
    times = {"on": [], "off": []}
    per = requests // rounds
    for _ in range(rounds):
        times["on"].append(await _timed(on, with_key, body, per))
        times["off"].append(await _timed(off, base, body, per))
    out = {}
    for name, parts in times.items():
        t = 1e3 * np.concatenate(parts)
        out[name] = {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)), "n": len(t)}
    out["cost_p50_ms"] = out["on"]["p50_ms"] - out["off"]["p50_ms"]
    out["cost_p99_ms"] = out["on"]["p99_ms"] - out["off"]["p99_ms"]
    out["first_verification_ms"] = first_ms
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    res = asyncio.run(main_async(args.requests, args.rounds))
    print(f"{'':<5} {'p50 ms':>8} {'p99 ms':>8}")
    for name in ("off", "on"):
        print(f"{name:<5} {res[name]['p50_ms']:>8.4f} {res[name]['p99_ms']:>8.4f}")
    print(f"auth cost: p50 {res['cost_p50_ms']:+.4f} ms, p99 {res['cost_p99_ms']:+.4f} ms "
          f"({res['on']['n']} requests each); a key's first verification: {res['first_verification_ms']:.1f} ms")


if __name__ == "__main__":
    main()
