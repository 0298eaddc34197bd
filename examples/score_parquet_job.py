"""Score a Parquet dataset through the running EyeNet app from a Ray job.

Each row is one point: columns ``series`` (id), ``timestamp`` and ``value``.
Ray Data reads the files, groups the rows by series, and every group is sent
to the ``eyenet`` Serve app through a deployment handle (no HTTP), which
returns the ensemble score, the alarm decision and each detector's score per
point. The result is written as Parquet.

    ray job submit --address http://127.0.0.1:8265 --working-dir examples -- \
        python score_parquet_job.py --input /data/metrics.parquet --output /data/scored

(`eyenet up` prints the dashboard address to submit to.)
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


class ScoreThroughServe:
    """``map_batches`` callable: one batch = all rows of one series (from ``groupby``)."""

    def __init__(self, app: str = "eyenet", group: str = "default", tenant: str = "default") -> None:
        from ray import serve

        self.handle = serve.get_app_handle(app)
        self.group, self.tenant = group, tenant

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from eyenet.serving.schemas import DetectRequest, SeriesIn

        batch = batch.sort_values("timestamp").reset_index(drop=True)
        series_id = str(batch["series"].iloc[0])
        req = DetectRequest(series=[SeriesIn(id=series_id, values=batch["value"].astype(float).tolist())],
                            group=self.group, tenant=self.tenant)
        res = self.handle.detect.remote(req).result()["results"][0]
        points = res["points"]
        out = batch.copy()
        out["score"] = [np.nan if p["score"] is None else p["score"] for p in points]
        out["alarm"] = [p["alarm"] for p in points]
        out["model_version"] = res["version"]
        out["degraded"] = res["degraded"]
        return out


def score_dataset(input_path: str, *, app: str = "eyenet", group: str = "default", tenant: str = "default"):
    """The scored dataset (lazy Ray Dataset) of a Parquet file or folder."""
    import ray

    ds = ray.data.read_parquet(input_path)
    return ds.groupby("series").map_groups(
        ScoreThroughServe, fn_constructor_kwargs={"app": app, "group": group, "tenant": tenant},
        batch_format="pandas", concurrency=1, num_cpus=0.25,
    )


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", default="default")
    ap.add_argument("--tenant", default="default")
    args = ap.parse_args()
    ray.init(address="auto")
    scored = score_dataset(args.input, group=args.group, tenant=args.tenant)
    scored.write_parquet(args.output)
    print(f"scored {scored.count()} points into {args.output}")


if __name__ == "__main__":
    main()
