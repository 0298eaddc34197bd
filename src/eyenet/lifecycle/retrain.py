"""Retraining a served model on what it has seen lately (launched by the model controller on drift,
poor precision or a schedule; see :mod:`eyenet.serving.retraining`).

The champion's own configuration is fitted again on the recent points of its
busiest live series. Those points are written to a Parquet file under
``.eyenet/retrain/`` and the new version records it as its training data, with
the head it was fitted on: the deployment gate then judges the new version
against the champion on the tail it did not see (with anomalies planted in
it), so a retrained model is promoted only if it beats the stale one on the
data as it is now.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eyenet.lifecycle import audit, holdout, training
from eyenet.lifecycle import registry as reg
from eyenet.core.errors import NotEnoughDataError

#: share of the recent points the new version is fitted on; the rest is the gate's hold-out
TRAIN_FRACTION = 0.6


@dataclass
class RetrainResult:
    name: str
    version: int
    rows: int
    held_out: int
    path: str
    seconds: float
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_recent(root: str | Path, name: str, series: str, values: np.ndarray, step_s: float = 60.0) -> Path:
    """The recent points as a Parquet file (``timestamp``, ``value``) the gate can read back."""
    import pandas as pd

    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{series}")
    path = folder / f"{safe}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}.parquet"
    end = pd.Timestamp.now(tz="UTC").floor("s").tz_localize(None)
    ts = pd.date_range(end=end, periods=len(values), freq=pd.Timedelta(seconds=step_s))
    pd.DataFrame({"timestamp": ts, "value": np.asarray(values, dtype=float)}).to_parquet(path, index=False)
    return path


def retrain(mlflow_uri: str | None, name: str, series: str, values: list[float], root: str,
            train_fraction: float = TRAIN_FRACTION, audit_uri: str | None = None) -> RetrainResult:
    """Fit the champion's configuration on the head of ``values`` and register it as challenger
    (its TRAIN and REGISTER events go to the audit log at ``audit_uri``, default the store's)."""
    from eyenet.core import data
    from eyenet.core.model import AnomalyModel

    started = time.time()
    tenant, group, family = reg.split_name(name)
    store = reg.Registry(mlflow_uri, audit_log=audit.AuditLog(audit_uri) if audit_uri else None)
    champion = store.load(name, alias=reg.CHAMPION)
    config = champion.to_dict()
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    rows = int(len(x) * train_fraction)
    if len(x) - rows < 40 * holdout.PLANTED:
        raise NotEnoughDataError(f"{name}: {len(x)} recent points of {series!r}; retraining needs at least "
                                 f"{int(np.ceil(40 * holdout.PLANTED / (1 - train_fraction)))}")
    AnomalyModel.from_dict(config)  # the configuration still builds (raises naming what is wrong)
    path = write_recent(root, name, series, x)
    (recorded,) = data.read_many(path)
    head = data.Series(series, recorded.timestamps[:rows], recorded.values[:rows])
    result = training.train_and_register(config, x[:rows], registry=store, group=group, tenant=tenant,
                                         data=training.data_info(head, holdout.input_source(path)))
    return RetrainResult(name, result.version.version, rows, len(x) - rows, str(path), time.time() - started,
                         {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))})
