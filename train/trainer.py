"""Ray Train and Ray task wiring for :mod:`eyenet.lifecycle.training`.

* :class:`RayTrainBackend` trains every torch network of a model with a
  ``TorchTrainer`` (``ScalingConfig(num_workers, use_gpu)``), fed by Ray Data,
  checkpointing each epoch under ``storage_path/<run name>``. The run name is
  derived from the model, the data and the member, so running the same
  command again after an interruption resumes from the last checkpoint.
* :func:`train_many` fits one model per series as parallel Ray tasks and
  registers each result from the driver.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from eyenet.lifecycle import registry as reg
from eyenet.lifecycle import training
from eyenet.core.data import Series
from eyenet.core.detectors.torch_common import EpochCallback, TrainJob, TrainOutcome, training_backend
from eyenet.core.errors import EyenetError


class TrainingInterrupted(EyenetError):
    """A Ray Train run failed or was stopped; its checkpoints are kept for resuming."""

    exit_code = 6


def run_key(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (model config, data fingerprint, member)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


class RayTrainBackend:
    """A :data:`~eyenet.core.detectors.torch_common.TrainBackend` running a ``TorchTrainer`` per network."""

    def __init__(
        self,
        *,
        storage_path: str | Path,
        name: str,
        num_workers: int = 1,
        use_gpu: bool = False,
        cpus_per_worker: float = 1.0,
        mlflow_uri: str | None = None,
        mlflow_run_id: str | None = None,
        max_failures: int = 0,
    ) -> None:
        self.storage_path = Path(storage_path).absolute()
        self.name = name
        self.num_workers = num_workers
        self.use_gpu = use_gpu
        self.cpus_per_worker = cpus_per_worker
        self.mlflow_uri = mlflow_uri
        self.mlflow_run_id = mlflow_run_id
        self.max_failures = max_failures
        self.calls = 0
        self.runs: list[dict[str, Any]] = []

    def __call__(self, job: TrainJob, on_epoch: EpochCallback | None = None) -> TrainOutcome:
        import ray.data
        import ray.train
        from ray.train.torch import TorchTrainer

        # the controller collects each epoch's report when it polls the workers (every 2 s by
        # default); small networks finish an epoch far sooner, so poll often
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        index, self.calls = self.calls, self.calls + 1
        family = job.detector["family"]
        x = job.inputs.reshape(len(job.inputs), -1)
        y = job.targets.reshape(len(job.targets), -1)
        packed = np.concatenate([x, y], axis=1).astype(np.float32)
        n_train = len(packed) - job.n_val
        run_name = f"{self.name}-m{index}-{family}-{run_key(job.detector, packed)}"
        config = {
            "detector": job.detector,
            "x_shape": list(job.inputs.shape[1:]),
            "y_shape": list(job.targets.shape[1:]),
            "mlflow_uri": self.mlflow_uri,
            "mlflow_run_id": self.mlflow_run_id,
            "metric_prefix": f"m{index}.{family}." if self.name.endswith("ensemble") else "",
            "fault_at_epoch": int(os.environ.get(training.FAULT_AT_EPOCH, "0") or 0),
        }
        trainer = TorchTrainer(
            training.torch_train_loop,
            train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(
                num_workers=self.num_workers,
                use_gpu=self.use_gpu,
                resources_per_worker={"CPU": self.cpus_per_worker, **({"GPU": 1} if self.use_gpu else {})},
            ),
            datasets={"train": ray.data.from_numpy(packed[:n_train]), "val": ray.data.from_numpy(packed[n_train:])},
            dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
            run_config=ray.train.RunConfig(
                name=run_name,
                storage_path=str(self.storage_path),
                failure_config=ray.train.FailureConfig(max_failures=self.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
        )
        try:
            result = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - TrainingFailedError and worker errors
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrainingInterrupted(
                f"{family}: Ray Train run {run_name} stopped ({text[:300]}); "
                "run the same command again to resume from its last checkpoint"
            ) from None
        if result.checkpoint is None:
            raise TrainingInterrupted(f"{family}: Ray Train run {run_name} reported no checkpoint")
        with result.checkpoint.as_directory() as d:
            out = training.read_outcome(d)
        resumed = int((result.metrics or {}).get("resumed_from", 0))
        self.runs.append({"run": run_name, "resumed_from": resumed, "epochs": len(out["history"])})
        if on_epoch is not None:
            for rec in out["history"][resumed:]:
                on_epoch(dict(rec))
        shutil.rmtree(self.storage_path / run_name, ignore_errors=True)  # finished: next run starts fresh
        return TrainOutcome(weights=out["weights"], history=out["history"], best_epoch=out["best_epoch"],
                            info={"run": run_name, "resumed_from": resumed, "workers": self.num_workers})


def train_torch(
    config: dict[str, Any],
    series: Series,
    *,
    registry: reg.Registry,
    group: str,
    tenant: str = "default",
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    storage_path: str | Path | None = None,
    on_epoch: EpochCallback | None = None,
    source: dict[str, Any] | None = None,
) -> training.TrainResult:
    """Train one model whose torch networks run on Ray Train, then register it (``source``: where the
    series came from, see :mod:`eyenet.lifecycle.holdout`)."""
    family = config["detector"]["family"]
    name = reg.model_name(family, group=group, tenant=tenant)
    run_id = registry.start_run(f"train-{family}", {"eyenet.family": family, "eyenet.group": group})
    backend = RayTrainBackend(
        storage_path=storage_path or reg.home() / "ray_train",
        name=name.replace(".", "-"),
        num_workers=num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        mlflow_uri=registry.uri,
        mlflow_run_id=run_id,
    )
    try:
        with training_backend(backend):
            model, metrics = training.fit_model(config, series.values, on_epoch=on_epoch)
        metrics["train_workers"] = float(num_workers)
        metrics["resumed_from_epoch"] = float(max((r["resumed_from"] for r in backend.runs), default=0))
        version = registry.register(
            model, family=family, group=group, tenant=tenant, metrics=metrics, run_id=run_id,
            data=training.data_info(series, source), probe=series.values[-1000:], log_history=False,
        )
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    return training.TrainResult(family, group, version, metrics, model, runs=backend.runs)


def _fit_remote(config: dict[str, Any], values: np.ndarray) -> tuple[bytes, dict[str, float]]:
    """Ray task body: fit one model, return its saved files as an in-memory zip (no pickle)."""
    import torch

    torch.set_num_threads(1)
    model, metrics = training.fit_model(config, values)
    return training.pack(model), metrics


def train_many(
    config: dict[str, Any],
    series: list[Series],
    *,
    registry: reg.Registry,
    tenant: str = "default",
    cpus_per_task: float = 1.0,
    progress: Callable[[str], None] | None = None,
    source: dict[str, Any] | None = None,
) -> list[training.TrainResult]:
    """One model per series, fitted as parallel Ray tasks; each registered as ``<tenant>.<series>.<family>``."""
    import ray

    family = config["detector"]["family"]
    groups = [reg.slug(s.name) for s in series]
    for g in groups:
        reg.model_name(family, group=g, tenant=tenant)
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=1)(_fit_remote)
    pending = {remote.remote(config, np.asarray(s.values)): (s, g) for s, g in zip(series, groups)}
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        s, g = pending.pop(done[0])
        blob, metrics = ray.get(done[0])
        model = training.unpack(blob)
        version = registry.register(model, family=family, group=g, tenant=tenant, metrics=metrics,
                                    data=training.data_info(s, source), probe=np.asarray(s.values)[-1000:])
        results.append(training.TrainResult(family, g, version, metrics, model))
        if progress:
            progress(f"[{len(results)}/{len(results) + len(pending)}] {s.name}: {version.name} v{version.version} "
                     f"({metrics['fit_seconds']:.1f}s)")
    return results


def _compare_remote(config: dict[str, Any], values: np.ndarray, labels: np.ndarray,
                    name: str) -> tuple[bytes, dict[str, float], dict[str, str]]:
    """Ray task body: the model with a supervised member against the one without
    (:func:`eyenet.lifecycle.supervised.compare`); returns the gate's choice packed, its metrics and tags."""
    import torch

    from eyenet.lifecycle import supervised

    torch.set_num_threads(1)
    c = supervised.compare(config, values, labels, name=name)
    metrics, tags = supervised.outcome(c)
    return training.pack(c.chosen), metrics, tags


def train_labelled(config: dict[str, Any], series: Series, labels: np.ndarray, *, registry: reg.Registry,
                   group: str, tenant: str = "default", source: dict[str, Any] | None = None,
                   cpus: float = 1.0) -> tuple[training.TrainResult, dict[str, str]]:
    """Fit ``config`` with and without a supervised member on a labelled series in a Ray task, and
    register the one the gate chooses; returns it and its tags (``eyenet.supervised``: kept or left
    out, and why)."""
    import ray

    values = np.asarray(series.values, dtype=float)
    blob, metrics, tags = ray.get(ray.remote(num_cpus=cpus, max_retries=0)(_compare_remote).remote(
        config, values, labels, series.name))
    model = training.unpack(blob)
    family = model.detector.family
    version = registry.register(model, family=family, group=group, tenant=tenant, metrics=metrics,
                                data=training.data_info(series, source), probe=values[-1000:], tags=tags)
    return training.TrainResult(family, group, version, metrics, model), tags
