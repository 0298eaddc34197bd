"""Training jobs: fit models, record them in MLflow, register versions.

The Ray parts stay thin (``eyenet.train`` builds the ``TorchTrainer``, the
Ray tasks and the Ray Data input); what runs inside them lives here:

* :func:`torch_train_loop` is the per-worker loop of a Ray Train run for one
  torch network: the epoch loop of in-process fitting
  (:func:`~eyenet.core.detectors.torch_common.train_epochs`), data-parallel
  (DDP) over the worker group, with a per-epoch hook that checkpoints through
  ``ray.train.report`` (resumption from the latest one) and logs the curves to
  MLflow from rank 0 only.
* :func:`fit_model` fits an :class:`~eyenet.core.model.AnomalyModel` (calibration
  and alarm threshold on held-out data) and :func:`train_and_register` records
  it and registers a ``challenger`` version.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from eyenet.lifecycle import registry as reg
from eyenet.core.errors import InvalidParameterError
from eyenet.core.model import AnomalyModel

if TYPE_CHECKING:
    from eyenet.core.detectors.torch_common import EpochEnd, EpochHook, TrainProgress

#: environment variable (read by the driver) that makes a training worker fail right after
#: checkpointing the given epoch: fault injection for exercising recovery (tests, game days)
FAULT_AT_EPOCH = "EYENET_FAULT_AT_EPOCH"

Progress = Callable[[str], None]


class InjectedFault(RuntimeError):
    """Raised by a worker when :data:`FAULT_AT_EPOCH` says so."""


# ----------------------------------------------------------------------------------------------
# the Ray Train worker loop


def torch_train_loop(config: dict[str, Any]) -> None:
    """Train one torch detector's network on this worker's shard (runs inside Ray Train).

    The epochs are :func:`~eyenet.core.detectors.torch_common.train_epochs`, seeded and
    shuffled as an in-process fit is; the per-epoch hook prints, logs the curve to MLflow
    (rank 0) and reports a checkpoint from which an interrupted run resumes.

    ``config``: ``detector`` (family + params), ``x_shape`` / ``y_shape`` (per-row
    shapes of inputs and targets, packed side by side in the datasets' ``data``
    column), optional ``mlflow_uri`` / ``mlflow_run_id`` / ``metric_prefix`` and
    ``torch_threads``. Datasets: ``train`` (split across workers), ``val`` (whole).
    """
    import ray.train
    import ray.train.torch
    import torch

    from eyenet.core import detectors
    from eyenet.core.detectors import torch_common as tc

    torch.set_num_threads(int(config.get("torch_threads", 1)))
    det = detectors.from_dict(config["detector"])
    p = det.get_params()
    max_epochs = int(p["max_epochs"])
    x_shape, y_shape = tuple(config["x_shape"]), tuple(config["y_shape"])
    x_width = int(np.prod(x_shape))
    device = ray.train.torch.get_device()
    rank = ray.train.get_context().get_world_rank()

    def rows(name: str) -> tuple[np.ndarray, np.ndarray]:
        shard = ray.train.get_dataset_shard(name)
        parts = [b["data"] for b in shard.iter_batches(batch_size=8192, batch_format="numpy")]
        a = np.concatenate(parts).astype(np.float32) if parts else np.empty((0, x_width), np.float32)
        return a[:, :x_width].reshape(-1, *x_shape), a[:, x_width:].reshape(-1, *y_shape)

    # a series' windows fit in memory: read this worker's shard once, not once per epoch
    x_train, y_train = rows("train")
    val = rows("val")
    with tc.seeded(int(p["seed"]), device) as rng:
        net = det._build_net()
        opt = tc.make_optimizer(net, float(p["lr"]))
        progress = _resume(net, opt, rng)
        resumed_from = progress.epoch
        tc.train_epochs(
            ray.train.torch.prepare_model(net),
            opt,
            (tc.to_tensor(x_train, device), tc.to_tensor(y_train, device)),
            val,
            batch_size=int(p["batch_size"]),
            max_epochs=max_epochs,
            patience=int(p["patience"]),
            rng=rng,
            device=device,
            progress=progress,
            on_epoch_end=_epoch_reporter(config, rank, rng, resumed_from, max_epochs),
        )


def _resume(net: Any, opt: Any, rng: np.random.Generator) -> TrainProgress:
    """The progress of the run's latest checkpoint, loaded into ``net``, ``opt`` and ``rng``
    (a fresh start without one)."""
    import ray.train
    import torch

    from eyenet.core.detectors.torch_common import TrainProgress

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return TrainProgress()
    with checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        meta = json.loads((Path(d) / "progress.json").read_text())
    net.load_state_dict(saved["net"])
    opt.load_state_dict(saved["opt"])
    rng.bit_generator.state = meta["rng"]
    return TrainProgress(epoch=meta["epoch"], best=meta["best"], best_epoch=meta["best_epoch"], waited=meta["waited"],
                         best_state=saved["best"] or None, history=meta["history"])


def _epoch_reporter(config: dict[str, Any], rank: int, rng: np.random.Generator, resumed_from: int,
                    max_epochs: int) -> EpochHook:
    """The Ray Train run's per-epoch hook: print, log the curve to MLflow, report a checkpoint
    (written by rank 0), and fail on purpose after the epoch :data:`FAULT_AT_EPOCH` names."""
    import ray.train
    import torch

    from eyenet.core.detectors.torch_common import weights_of

    client = None
    if rank == 0 and config.get("mlflow_run_id"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=config["mlflow_uri"])
    prefix = config.get("metric_prefix", "")
    fault = int(config.get("fault_at_epoch", 0))

    def report(end: EpochEnd) -> None:
        record, p, epoch = end.record, end.progress, end.record["epoch"]
        if rank == 0:
            print(f"{config['detector']['family']} epoch {epoch}/{max_epochs}: train_loss={record['train_loss']:.4g} "
                  f"val_loss={record['val_loss']:.4g}" + (" (best)" if p.best_epoch == epoch else ""), flush=True)
        if client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            client.log_batch(config["mlflow_run_id"], metrics=[
                Metric(f"{prefix}train_loss", record["train_loss"], now, epoch),
                Metric(f"{prefix}val_loss", record["val_loss"], now, epoch),
            ])
        metrics = {**record, "best_epoch": p.best_epoch, "best_val_loss": p.best, "resumed_from": resumed_from,
                   "done": end.last}
        with tempfile.TemporaryDirectory() as tmp:
            cp = None
            if rank == 0:
                torch.save({"net": weights_of(end.net), "opt": end.opt.state_dict(), "best": p.best_state or {}},
                           Path(tmp) / "state.pt")
                (Path(tmp) / "progress.json").write_text(json.dumps(
                    {"epoch": epoch, "best": p.best, "best_epoch": p.best_epoch, "waited": p.waited,
                     "history": p.history, "rng": rng.bit_generator.state}))
                cp = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=cp)
        if fault and epoch == fault and resumed_from < fault:
            raise InjectedFault(f"{FAULT_AT_EPOCH}={fault}: worker {rank} stops after epoch {epoch}")

    return report


def read_outcome(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Best weights (as ``net.<param>`` arrays), history and best epoch from a loop checkpoint."""
    import torch

    d = Path(checkpoint_dir)
    saved = torch.load(d / "state.pt", map_location="cpu", weights_only=True)
    meta = json.loads((d / "progress.json").read_text())
    weights = saved["best"] or saved["net"]
    return {
        "weights": {f"net.{k}": v.numpy().copy() for k, v in weights.items()},
        "history": meta["history"],
        "best_epoch": meta["best_epoch"] or meta["epoch"],
    }


# ----------------------------------------------------------------------------------------------
# fitting and registering


@dataclass
class TrainResult:
    """What one training job produced."""

    family: str
    group: str
    version: reg.VersionInfo | None
    metrics: dict[str, float] = field(default_factory=dict)
    model: AnomalyModel | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # Ray Train runs behind it


def data_info(series: Any, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a model was trained on, recorded with its version.

    ``source`` (from :mod:`eyenet.lifecycle.holdout`) says where the series came from, so
    that the deployment gate can rebuild held-out labelled data for the version.
    """
    ts, x = series.timestamps, np.asarray(series.values, dtype=float)
    info = {
        "series": series.name,
        "rows": len(x),
        "start": str(ts[0]) if len(ts) else None,
        "end": str(ts[-1]) if len(ts) else None,
        "mean": float(x.mean()) if len(x) else None,
        "std": float(x.std()) if len(x) else None,
    }
    return {**info, "source": source} if source else info


def pack(model: AnomalyModel) -> bytes:
    """A fitted model's saved files as one in-memory zip (JSON and arrays; no pickle)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="eyenet-pack-") as tmp:
        root = model.save(Path(tmp) / "model")
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(root.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(root).as_posix())
    return buf.getvalue()


def unpack(blob: bytes) -> AnomalyModel:
    """The model of :func:`pack` (files checked by :meth:`AnomalyModel.load`)."""
    import io
    import zipfile

    from eyenet.core.errors import ArtifactError

    with tempfile.TemporaryDirectory(prefix="eyenet-unpack-") as tmp:
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as z:
                for member in z.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise ArtifactError(f"packed model holds an unsafe path {member!r}")
                z.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise ArtifactError(f"packed model is not a zip archive ({exc})") from None
        return AnomalyModel.load(tmp)


def fit_model(
    config: dict[str, Any], values: np.ndarray, *, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> tuple[AnomalyModel, dict[str, float]]:
    """Fit a model from its config on ``values``; returns it and its training metrics."""
    model = AnomalyModel.from_dict(config)
    if on_epoch is not None and hasattr(model.detector, "on_epoch"):
        model.detector.on_epoch = on_epoch
    t0 = time.perf_counter()
    model.fit(values)
    seconds = time.perf_counter() - t0
    held = model.score(values)
    ready = np.isfinite(held.score)
    metrics = {
        "fit_seconds": seconds,
        "train_rows": float(len(values)),
        "train_alarm_rate": float(held.alarm[ready].mean()) if ready.any() else 0.0,
        "calibrated_p99": float(np.nanquantile(held.calibrated, 0.99)) if ready.any() else math.nan,
    }
    for prefix, history in model.training_history().items():
        if history:
            metrics[f"{prefix}best_val_loss"] = float(min(h["val_loss"] for h in history))
            metrics[f"{prefix}epochs"] = float(len(history))
    return model, metrics


def train_and_register(
    config: dict[str, Any],
    values: np.ndarray,
    *,
    registry: reg.Registry,
    group: str = "default",
    tenant: str = "default",
    data: dict[str, Any] | None = None,
    extra_metrics: dict[str, float] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Fit ``config`` on ``values`` and register the result as a ``challenger`` version (``tags``: on its run)."""
    family = config["detector"]["family"]
    reg.model_name(family, group=group, tenant=tenant)  # validate names before any work
    if len(values) < 10:
        raise InvalidParameterError(f"{family}: training data has {len(values)} rows")
    registry.check()
    model, metrics = fit_model(config, values, on_epoch=on_epoch)
    metrics.update(extra_metrics or {})
    version = registry.register(model, family=family, group=group, tenant=tenant, metrics=metrics, data=data,
                                probe=values[-min(len(values), 1000):], tags=tags)
    return TrainResult(family, group, version, metrics, model)
