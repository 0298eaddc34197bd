"""Training the default suite on Ray, and Ray Train scaling for one torch family.

    python -m bench.training [--families all] [--scaling cnn] [--scaling-rows 4032]

For each family: wall time of the Ray path `eyenet train` uses (Ray Train
TorchTrainer for torch families and the ensemble, a Ray task otherwise,
registration in an embedded MLflow store included) next to an in-process fit
of the same configuration on the same data. Then one torch family on 1 and 2
Ray Train workers, same data, same epochs (early stopping off). Prints
Markdown tables.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from eyenet.cli import cluster
from eyenet.core import presets, synthetic
from eyenet.lifecycle import registry, training
from eyenet.cli.training import default_series
from eyenet.core.detectors import TORCH_FAMILIES
from eyenet.core.data import Series


def _ray_train(family: str, config: dict, series: Series, reg: registry.Registry, workers: int = 1) -> float:
    from eyenet.train import trainer

    t0 = time.perf_counter()
    if family in TORCH_FAMILIES or family == "ensemble":
        trainer.train_torch(config, series, registry=reg, group=f"bench-w{workers}", num_workers=workers)
    else:
        trainer.train_many(config, [Series("bench", series.timestamps, series.values)], registry=reg)
    return time.perf_counter() - t0


def suite(families: list[str], reg: registry.Registry) -> list[tuple]:
    import torch

    series = default_series()
    rows = []
    for family in families:
        config = presets.model_config(family)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        training.fit_model(config, np.asarray(series.values))
        local = time.perf_counter() - t0
        ray_s = _ray_train(family, config, series, reg)
        rows.append((family, len(series), local, ray_s))
        print(f"{family}: in-process {local:.1f}s, on Ray {ray_s:.1f}s", flush=True)
    return rows


def scaling(family: str, rows: int, reg: registry.Registry) -> list[tuple]:
    ts, values, _ = synthetic.series("cpu_pct", n=rows, seed=3, anomalies_per_metric=0)
    series = Series("scaling", ts, np.asarray(values))
    config = presets.model_config(family, {"max_epochs": 10, "patience": 100_000})
    out = []
    for workers in (1, 2):
        s = _ray_train(family, config, series, reg, workers)
        out.append((workers, s))
        print(f"{family} on {workers} worker(s): {s:.1f}s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="all")
    ap.add_argument("--scaling", default="cnn")
    ap.add_argument("--scaling-rows", type=int, default=4032)
    args = ap.parse_args()
    families = [*presets.DEFAULT_SUITE, "ensemble"] if args.families == "all" else args.families.split(",")
    os.chdir(tempfile.mkdtemp(prefix="eyenet-bench-"))
    cluster.connect()
    reg = registry.Registry().check()
    rows = suite(families, reg)
    scale = scaling(args.scaling, args.scaling_rows, reg)
    print("\n| family | rows | in-process fit s | Ray (train + register) s |\n|---|---:|---:|---:|")
    for family, n, local, ray_s in rows:
        print(f"| {family} | {n} | {local:.1f} | {ray_s:.1f} |")
    print(f"\n| {args.scaling}, {args.scaling_rows} rows, 10 epochs | seconds | speed-up vs 1 worker |\n|---|---:|---:|")
    for workers, s in scale:
        print(f"| {workers} Ray Train worker(s) | {s:.1f} | {scale[0][1] / s:.2f}x |")


if __name__ == "__main__":
    main()
