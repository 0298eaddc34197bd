"""Stream-state write throughput: the store's flush on PostgreSQL and on SQLite, in the same run.

    python -m bench.store_write [--batches 100,1000,10000] [--uri postgresql://user@host:port/db]

Builds real stream states (an ensemble of zscore, mad and seasonal fitted on synthetic CPU data,
each state the result of streaming 500 or 2000 points: ~14 kB and ~65 kB as stored), fills a
:class:`~eyenet.serving.streams.Streams` per backend with ``batch`` series, then times
``Streams.flush()`` of ``batch`` changed states again and again (each round commits a new version
of every series, so after the first round every row is an update, as in steady traffic). The
backends take turns round by round, so both see the same machine load. Reports states/s and the
p50 / p99 of one flush (take the dirty set, serialise, write one transaction), and the time to
reload the largest table at start-up.

PostgreSQL: ``--uri`` (password from ``PGPASSWORD``), else a throwaway server started from the
distribution's binaries as the test fixture does (tests/servers.py), with the default durable
settings (fsync and synchronous_commit on). SQLite: a temporary folder on the same disk.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eyenet.core import presets, synthetic
from eyenet.core.model import AnomalyModel, StreamState
from eyenet.serving.settings import StoreSettings
from eyenet.serving.streams import Streams

#: rounds timed per batch size (the first, inserting, round is not counted)
ROUNDS = {100: 60, 1000: 20, 10000: 6}


def build_states(points: int, n: int = 8) -> list[StreamState]:
    """``n`` distinct real states after streaming ``points`` points each."""
    _, x, _ = synthetic.series("cpu_pct", n=2016 + points + n * 37, seed=5, anomalies_per_metric=0)
    x = np.asarray(x)
    members = [{"family": f, "params": {}} for f in ("zscore", "mad", "seasonal")]
    model = AnomalyModel.from_dict(presets.model_config("ensemble", {"members": members})).fit(x[:2016])
    out = []
    for i in range(n):
        _, st = model.score_stream(x[2016 + i * 37:2016 + i * 37 + points])
        st.model = "default.web.ensemble/3"
        out.append(st)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def run(uris: dict[str, str], batches: list[int], profiles: dict[str, list[StreamState]]) -> list[dict[str, Any]]:
    settings = StoreSettings(max_series=1_000_000, max_bytes=64 << 30, reload_max_series=1_000_000,
                             reload_max_s=3600)
    rows = []
    for profile, states in profiles.items():
        size = len(states[0].to_bytes())
        for batch in batches:
            if batch * size > 400 << 20:  # keep a batch under ~400 MB of rows
                print(f"skip {profile} x {batch}: {batch * size >> 20} MB a batch", file=sys.stderr)
                continue
            places = {name: uri if "://" in uri else f"{uri}/{profile}-{batch}" for name, uri in uris.items()}
            stores = {name: Streams(place, settings=settings) for name, place in places.items()}
            versions = dict.fromkeys(stores, 0)
            times: dict[str, list[float]] = {name: [] for name in stores}
            for r in range(ROUNDS.get(batch, 5) + 1):
                for name, s in stores.items():  # the backends take turns
                    v = versions[name]
                    for k in range(batch):
                        ok, _, _ = s.commit(f"t/g/{profile}-{k}", v, states[(k + r) % len(states)])
                        assert ok
                    versions[name] = v + 1
                    t0 = time.perf_counter()
                    assert s.flush() == batch
                    if r:  # round 0 inserts
                        times[name].append(time.perf_counter() - t0)
            for name, s in stores.items():
                t0 = time.perf_counter()
                again = Streams(places[name], settings=settings)
                reload_s = time.perf_counter() - t0
                assert again.count() >= batch
                again.snapshots.close()
                s.snapshots.close()
                ts = times[name]
                row = {"backend": name, "profile": profile, "state_bytes": size, "batch": batch, "rounds": len(ts),
                       "states_per_s": batch * len(ts) / sum(ts), "p50_ms": pct(ts, 50) * 1e3,
                       "p99_ms": pct(ts, 99) * 1e3, "reload_s": reload_s}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
            if any("://" in u for u in uris.values()):  # a fresh table for the next size
                _truncate(uris)
    return rows


def _truncate(uris: dict[str, str]) -> None:
    import psycopg

    for uri in uris.values():
        if "://" in uri:
            with psycopg.connect(uri) as conn:
                conn.execute("TRUNCATE eyenet_streams")


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| states | state size | batch | backend | states/s | flush p50 | flush p99 | rounds | reload |",
           "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['profile']} | {r['state_bytes'] / 1024:.1f} kB | {r['batch']:,} | {r['backend']} | "
                   f"{r['states_per_s']:,.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['rounds']} | "
                   f"{r['reload_s']:.2f} s |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="100,1000,10000")
    ap.add_argument("--uri", help="a PostgreSQL database to use (its eyenet_streams table is dropped first)")
    ap.add_argument("--points", default="500,2000", help="points streamed per state (sizes of the states)")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    profiles = {f"{p} points": build_states(int(p)) for p in args.points.split(",")}
    server = None
    with tempfile.TemporaryDirectory(prefix="eyenet-bench-sqlite-", dir=os.environ.get("TMPDIR")) as folder:
        try:
            uri = args.uri
            if uri is None:
                sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
                from servers import PostgresServer

                server = PostgresServer().start()
                os.environ.update(server.env())
                uri = server.uri()
            import psycopg

            with psycopg.connect(uri) as conn:
                pg_version = conn.execute("SHOW server_version").fetchone()[0]
                fsync = conn.execute("SHOW fsync").fetchone()[0]
                sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
            _drop_table(uri)
            rows = run({"SQLite": folder, "PostgreSQL": uri}, batches, profiles)
        finally:
            if server is not None:
                server.cleanup()
    print(f"PostgreSQL {pg_version} (fsync={fsync}, synchronous_commit={sync_commit}, "
          f"{'127.0.0.1, started by the bench' if args.uri is None else 'given by --uri'}); "
          f"SQLite {__import__('sqlite3').sqlite_version} (WAL); Python {platform.python_version()}")
    print(table(rows))
    return 0


def _drop_table(uri: str) -> None:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS eyenet_streams")


if __name__ == "__main__":
    raise SystemExit(main())
