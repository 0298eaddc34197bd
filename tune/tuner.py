"""The Ray Tune search: ASHA + Optuna over a family's space, trials logged to MLflow.

Each trial scores its configuration on the validation series one by one and
reports the running NAB score after each, so ASHA can stop weak trials after
a few series. The best configuration is then retrained on the training data
and registered as ``challenger``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from eyenet.lifecycle import registry as reg
from eyenet.lifecycle import training, tuning
from eyenet.core.data import Series
from eyenet.core.errors import EyenetError, InvalidParameterError
from eyenet.tune.spaces import default_space, to_tune

METRIC = "nab_standard"


@dataclass
class SearchResult:
    family: str
    best_config: dict[str, Any]
    best_sample: dict[str, Any]
    best_score: float
    default_score: float
    trials: int
    stopped_early: int
    version: reg.VersionInfo | None = None
    table: list[dict[str, Any]] = field(default_factory=list)


def _trainable(sample: dict[str, Any], family: str, base: dict[str, Any],
               validation: Sequence[tuning.ValidationSeries]) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(1)
    try:
        config = tuning.apply(family, base, sample)
    except EyenetError as exc:  # an impossible combination scores as badly as possible
        tune.report({METRIC: -100.0, "series": float(len(validation)), "error": str(exc)[:200]})
        return
    for metrics in tuning.evaluate(config, validation):
        tune.report(metrics)


def search(
    family: str,
    validation: Sequence[tuning.ValidationSeries],
    *,
    trials: int = 16,
    space: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    cpus_per_trial: float = 1.0,
    max_concurrent: int = 2,
    grace_series: int = 2,
    seed: int = 0,
    storage_path: str | Path | None = None,
    mlflow_uri: str | None = None,
    progress: Callable[[str], None] | None = None,
    on_trial: Callable[[int, dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Run the search; returns the best configuration and the default's score on the same series.
    ``on_trial(done, metrics)`` is called as each trial ends (finished or stopped by ASHA)."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if trials < 1:
        raise InvalidParameterError(f"trials must be at least 1, got {trials}")
    if not validation:
        raise InvalidParameterError("tuning needs at least one validation series")
    if not any(vs.windows for vs in validation):
        raise InvalidParameterError("tuning needs validation series with labelled (or injected) anomalies")
    space = tuning.check_space(family, space) if space is not None else default_space(family)
    base = base or tuning.base_config(family)
    callbacks = []
    if mlflow_uri:
        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri, experiment_name=f"{reg.EXPERIMENT}-tune",
                                              tags={"eyenet.family": family}, save_artifact=False))
    if on_trial is not None:
        callbacks.append(_TrialsDone(on_trial))
    searcher = ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
    scheduler = ASHAScheduler(time_attr="series", max_t=len(validation), grace_period=min(grace_series, len(validation)),
                              reduction_factor=2)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, family=family, base=base, validation=list(validation)),
        {"cpu": cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=trials, search_alg=searcher,
                                    scheduler=scheduler),
        run_config=tune.RunConfig(
            name=f"tune-{family}",
            storage_path=str(Path(storage_path or reg.home() / "ray_tune").absolute()),
            callbacks=callbacks,
            verbose=1 if progress else 0,
        ),
    )
    grid = tuner.fit()
    rows = []
    for r in grid:
        m = r.metrics or {}
        rows.append({"sample": {k: v for k, v in (r.config or {}).items()}, METRIC: m.get(METRIC, -math.inf),
                     "series": m.get("series", 0.0), "error": m.get("error")})
    complete = [r for r in rows if r["series"] >= len(validation) and r["error"] is None]
    if not complete:
        raise InvalidParameterError(f"{family}: no trial finished every validation series; widen the space")
    best = max(complete, key=lambda r: r[METRIC])
    default = tuning.final_score(base, validation)[METRIC]
    return SearchResult(
        family=family,
        best_config=tuning.apply(family, base, best["sample"]),
        best_sample=best["sample"],
        best_score=float(best[METRIC]),
        default_score=float(default),
        trials=len(rows),
        stopped_early=sum(1 for r in rows if r["series"] < len(validation)),
        table=sorted(rows, key=lambda r: -r[METRIC] if np.isfinite(r[METRIC]) else math.inf),
    )


def _TrialsDone(on_trial: Callable[[int, dict[str, Any]], None]) -> Any:
    """A Ray Tune callback counting the trials that ended."""
    from ray.tune import Callback

    class TrialsDone(Callback):
        def __init__(self) -> None:
            self.done = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            on_trial(self.done, dict(trial.last_result or {}))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.on_trial_complete(iteration, trials, trial)

    return TrialsDone()


def search_and_register(
    family: str,
    validation: Sequence[tuning.ValidationSeries],
    train: Series,
    *,
    registry: reg.Registry,
    group: str = "default",
    tenant: str = "default",
    source: dict[str, Any] | None = None,
    **kw: Any,
) -> SearchResult:
    """:func:`search`, then retrain the best configuration on ``train`` and register it as challenger
    (``source``: where ``train`` came from, see :mod:`eyenet.lifecycle.holdout`)."""
    registry.check()
    result = search(family, validation, mlflow_uri=registry.uri, **kw)
    trained = training.train_and_register(
        result.best_config, np.asarray(train.values), registry=registry, group=group, tenant=tenant,
        data=training.data_info(train, source),
        extra_metrics={"tune_best_score": result.best_score, "tune_default_score": result.default_score,
                       "tune_trials": float(result.trials)},
    )
    result.version = trained.version
    return result
