"""Figures for the capacity plan (docs/capacity.md), measured in-process: no Ray, no Serve, no server.

    nice -n 19 .venv/bin/python -m bench.capacity [--calls 300] [--copies 2000] [--json]

The default ensemble is trained as ``eyenet up`` trains it (``eyenet.cli.stack.ensure_models``:
the anomaly-free start of the synthetic ``cpu_pct`` series, ``eyenet.cli.training.default_series()``,
and ``presets.model_config("ensemble")``), with one torch thread as in a serving replica. Then:

- **stream state size** after 1, 500, 2,000, 5,000 and 10,000 streamed points (a fresh series, a
  young one, a mature one, one whose rank histories are full): the store's memory estimate
  ``streams.state_bytes(key, state)``, the stored row ``len(StreamState.to_bytes())`` and
  ``len(pickle.dumps(state, protocol=5))`` (what a Ray call carries);
- **memory of the store** holding ``--copies`` distinct saturated states in a real
  :class:`~eyenet.serving.streams.Streams` (temporary SQLite file, nothing flushed), by
  ``tracemalloc``, against the store's estimate; and one ``Streams.commit`` in-process;
- **scoring cost** of ``model.score_stream`` on a warm saturated state for 1, 16, 64 and 256 new
  points (a ``/v1/stream`` request's scoring), a 256-point window from a fresh stream (a
  ``/v1/detect`` request; with how many of its points get a ready score), and a 1-point step from
  a fresh state (a router's cache miss scores once from nothing before the store answers with the
  stored state);
- **serialisation** of a saturated state: ``to_bytes`` (the store's flush), ``from_bytes`` (its
  reload after a restart), ``pickle`` dumps and loads (a Ray commit);
- **model artifact**: the default ensemble registered in a temporary SQLite MLflow store (its run's
  files on disk), ``Registry.load`` of that version (what each router replica does once per swap)
  and ``Registry.aliases()`` (the controller's poll);
- **monitor**: ``Outbox.add`` (mean over 10,000 distinct series), one replica's push of 10,000 one-point series
  (``Outbox.take`` + pickle size + ``Monitor.push``), the monitor's memory filled to its
  default bounds (``max_series`` 10,000 series, ``max_recent_points`` 2,000,000), and a push of
  10,000 new one-point series into that full monitor (each evicts the least recently pushed one),
  and the memory per one-point series of an empty monitor.

Everything runs in a temporary folder (the MLflow store, its audit log, the feedback file, the SQLite
state file), deleted at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import pickle
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np


def pcts(seconds: list[float] | np.ndarray) -> dict[str, float]:
    s = np.asarray(seconds)
    return {"p50_ms": 1e3 * float(np.percentile(s, 50)), "p99_ms": 1e3 * float(np.percentile(s, 99))}


def time_calls(fn: Any, calls: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300, help="timed calls of the 1-point step (fewer for larger ones)")
    ap.add_argument("--copies", type=int, default=2000, help="distinct saturated states held in the store")
    ap.add_argument("--json", action="store_true", help="indent the JSON it prints")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from eyenet.cli.training import default_series
    from eyenet.core import presets, synthetic
    from eyenet.lifecycle import training
    from eyenet.serving.settings import StoreSettings
    from eyenet.serving.streams import Streams, state_bytes

    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "torch": torch.__version__, "load_before": os.getloadavg()}}
    home = tempfile.TemporaryDirectory(prefix="eyenet-capacity-")
    os.chdir(home.name)  # .eyenet/ (feedback, audit) of anything that defaults to the cwd lands here

    # -- the default ensemble, trained as `eyenet up` trains it --------------------------------
    series = default_series()
    config = presets.model_config("ensemble")
    t0 = time.perf_counter()
    model, _ = training.fit_model(config, series.values)
    out["model"] = {"members": model.member_families, "train_rows": len(series.values),
                    "fit_s": time.perf_counter() - t0, "rank_history": model.rank.history if model.rank else 0}
    _, live, _ = synthetic.series("cpu_pct", n=12_000, seed=11, anomalies_per_metric=0)
    live = np.asarray(live, dtype=float)
    key = "default/default/host-0001/cpu"

    # -- state sizes -------------------------------------------------------------------------
    sizes = []
    states = {}
    for n in (1, 500, 2000, 5000, 10_000):
        _, st = model.score_stream(live[:n])
        st.model = "default.default.ensemble/1"
        states[n] = st
        sizes.append({"points": n, "state_bytes": state_bytes(key, st), "to_bytes": len(st.to_bytes()),
                      "pickle": len(pickle.dumps(st, protocol=5)), "values": len(st.values),
                      "scores": [len(h) for h in st.scores], "ranks": len(st.ranks)})
    out["state_sizes"] = sizes
    full = states[10_000]

    # -- scoring cost on a warm saturated state ---------------------------------------------------
    cost = []
    feed = np.resize(live, 200_000)
    for k, calls in ((1, args.calls), (16, max(30, args.calls // 3)), (64, max(20, args.calls // 6)),
                     (256, max(15, args.calls // 10))):
        state, pos = full, 0

        def step() -> None:
            nonlocal state, pos
            _, state = model.score_stream(feed[pos:pos + k], state)
            pos += k

        t = time_calls(step, calls)
        cost.append({"what": f"stream, {k} points, warm state", "points": k, "calls": calls, **pcts(t),
                     "points_per_s": k / float(np.median(t))})
    w = live[-256:]
    t = time_calls(lambda: model.score(w), max(15, args.calls // 10), warmup=3)
    ready = int(np.isfinite(model.score(w).score).sum())
    cost.append({"what": "detect window, 256 points, fresh stream", "points": 256, "calls": len(t), **pcts(t),
                 "points_per_s": 256 / float(np.median(t)), "ready_points": ready})
    t = time_calls(lambda: model.score_stream(live[:1]), args.calls)
    cost.append({"what": "stream, 1 point, fresh state (router cache miss, first pass)", "points": 1,
                 "calls": len(t), **pcts(t), "points_per_s": 1 / float(np.median(t))})
    out["scoring"] = cost

    # -- serialisation of a saturated state -------------------------------------------------------
    from eyenet.core.model import StreamState

    blob, row = pickle.dumps(full, protocol=5), full.to_bytes()
    out["serialisation"] = {
        "to_bytes": pcts(time_calls(full.to_bytes, args.calls)),
        "pickle_dumps": pcts(time_calls(lambda: pickle.dumps(full, protocol=5), args.calls)),
        "pickle_loads": pcts(time_calls(lambda: pickle.loads(blob), args.calls)),
        "from_bytes": pcts(time_calls(lambda: StreamState.from_bytes(row), args.calls)),
    }

    # -- the store's memory for many saturated states ---------------------------------------------
    settings = StoreSettings(max_series=10_000_000, max_bytes=1 << 40)
    streams = Streams(Path(home.name) / "state", settings=settings)
    copies = [copy.deepcopy(full) for _ in range(min(args.copies, 50))]  # warm the allocator
    del copies
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    for i in range(args.copies):
        ok, _, _ = streams.commit(f"default/default/host-{i:07d}/cpu", 0, copy.deepcopy(full))
        assert ok
    m1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    commit_t = []
    for i in range(args.calls):
        s = copy.deepcopy(full)
        t0 = time.perf_counter()
        streams.commit(f"default/default/host-{i:07d}/cpu", 1 + i // args.copies, s)
        commit_t.append(time.perf_counter() - t0)
    out["store_memory"] = {"states": args.copies, "traced_bytes_per_state": (m1 - m0) / args.copies,
                           "estimate_bytes_per_state": streams.bytes / args.copies,
                           "commit_in_process": pcts(commit_t)}
    streams.snapshots.close()
    del streams

    # -- model artifact, load on a swap, the controller's poll --------------------------------------
    from eyenet.lifecycle.registry import Registry

    uri = f"sqlite:///{Path(home.name) / 'mlflow' / 'mlflow.db'}"
    (Path(home.name) / "mlflow").mkdir()
    reg = Registry(uri)
    t0 = time.perf_counter()
    info = reg.register(model, family="ensemble", group="default", tenant="default",
                        probe=series.values[-min(len(series.values), 1000):])
    register_s = time.perf_counter() - t0
    root = Path(home.name) / "mlflow" / "artifacts"  # the only version in this store: all of it is its
    model_dir = next(root.rglob("MLmodel")).parent  # what Registry.load downloads (models:/name/version)
    loads = [time.perf_counter()]
    for _ in range(5):
        reg.load(info.name, version=info.version)
        loads.append(time.perf_counter())
    polls = time_calls(reg.aliases, 20, warmup=2)
    out["artifact"] = {"all_files_bytes": dir_bytes(root),
                       "model_files_bytes": dir_bytes(model_dir),
                       "model_files": len([f for f in model_dir.rglob("*") if f.is_file()]),
                       "packed_zip_bytes": len(training.pack(model)),
                       "register_s": register_s,
                       "load_s_median": float(np.median(np.diff(loads))),
                       "aliases_poll_sqlite": pcts(polls)}

    # -- the monitor ---------------------------------------------------------------------------
    from eyenet.core.reference import DriftReference
    from eyenet.monitoring.monitor import Monitor, Outbox
    from eyenet.monitoring.settings import MonitorSettings

    name = info.name
    ms = MonitorSettings(feedback_path=str(Path(home.name) / "feedback.jsonl"))
    mon = Monitor(uri, ms)
    mon.drift.set_reference(name, DriftReference.from_model(model, series.values))
    mon.versions[name] = info.version
    scores1, _ = model.score_stream(live[-1:], full)
    ob = Outbox(ms.recent_points)
    n_series = 10_000
    t0 = time.perf_counter()
    for i in range(n_series):
        ob.add(name, info.version, live[i % len(live):i % len(live) + 1], scores1, series=f"host-{i:07d}/cpu",
               first=10_000 + i)
    add_us = 1e6 * (time.perf_counter() - t0) / n_series
    t0 = time.perf_counter()
    batch = ob.take()
    take_ms = 1e3 * (time.perf_counter() - t0)
    push_bytes = len(pickle.dumps(batch, protocol=5))
    pushes = []
    for _ in range(5):
        t0 = time.perf_counter()
        asyncio.run(mon.push("replica-1", batch))
        pushes.append(time.perf_counter() - t0)
    # fill to the default bounds: 10,000 series x 200 points = 2,000,000 recent points
    mon2 = Monitor(uri, ms)
    mon2.drift.set_reference(name, DriftReference.from_model(model, series.values))
    mon2.versions[name] = info.version
    scores200, _ = model.score_stream(live[-200:], full)
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    for part in range(10):
        ob = Outbox(ms.recent_points)
        for i in range(part * 1000, (part + 1) * 1000):
            ob.add(name, info.version, live[:200], scores200, series=f"host-{i:07d}/cpu", first=10_000)
        asyncio.run(mon2.push("replica-1", ob.take()))
    m1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    filled = mon2.stats()
    # memory per live series that sent one point: 10,000 one-point series into an empty monitor
    mon3 = Monitor(uri, ms)
    mon3.drift.set_reference(name, DriftReference.from_model(model, series.values))
    mon3.versions[name] = info.version
    ob = Outbox(ms.recent_points)
    for i in range(n_series):
        ob.add(name, info.version, live[i % len(live):i % len(live) + 1], scores1, series=f"one-{i:07d}/cpu",
               first=10_000 + i)
    one = ob.take()
    tracemalloc.start()
    m2 = tracemalloc.get_traced_memory()[0]
    asyncio.run(mon3.push("replica-1", one))
    per_series_bytes = (tracemalloc.get_traced_memory()[0] - m2) / n_series
    tracemalloc.stop()
    del mon3, one
    # a full monitor receiving 10,000 new one-point series: each evicts the least recently pushed one
    ob = Outbox(ms.recent_points)
    for i in range(n_series):
        ob.add(name, info.version, live[i % len(live):i % len(live) + 1], scores1, series=f"new-{i:07d}/cpu",
               first=10_000 + i)
    t0 = time.perf_counter()
    asyncio.run(mon2.push("replica-1", ob.take()))
    evict_push_ms = 1e3 * (time.perf_counter() - t0)
    out["monitor"] = {"push_ms_10k_new_series_into_full_monitor": evict_push_ms,
                      "evicted_by_it": mon2.stats()["evicted_series"],
                      "traced_bytes_per_one_point_series": per_series_bytes,
                      "outbox_add_us_mean_10k_distinct_series": add_us, "take_ms_10k_series": take_ms,
                      "push_payload_bytes_10k_series_1_point": push_bytes,
                      "push_ms_10k_series_1_point": pcts(pushes),
                      "filled": filled, "filled_traced_bytes": m1 - m0}
    out["machine"]["load_after"] = os.getloadavg()
    os.chdir("/")
    home.cleanup()

    print(json.dumps(out, indent=2 if args.json else None))


if __name__ == "__main__":
    main()
