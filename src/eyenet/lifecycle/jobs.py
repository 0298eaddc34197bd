"""Training and tuning jobs started over the API (``POST /v1/jobs``): what a job asks for, checked
before anything starts, and the training it runs.

A :class:`JobSpec` names the kind (``train`` or ``tune``), the family, the model group and tenant,
the data (the anomaly-free head of a synthetic metric, or a Prometheus range) and the parameters:
a train job's are the family's (as ``eyenet train --params``), a tune job's are ``trials``,
``space`` (a search space, see :mod:`eyenet.lifecycle.tuning`) and ``seed``. :func:`check_spec`
raises naming the first problem, so a bad request is a 4xx and never a failed job.

:func:`train` fits in the job's own process and registers a ``challenger`` version, reporting each
epoch of a torch family through a :class:`Reporter`; the tune job's search runs on Ray Tune
(``eyenet.tune``), which calls :func:`validation` and :func:`train` the same way.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from eyenet.core import presets, synthetic
from eyenet.core.errors import InvalidParameterError, NotEnoughDataError
from eyenet.lifecycle import holdout, training, tuning
from eyenet.lifecycle import registry as reg

KINDS = ("train", "tune")
#: a Prometheus source without ``range`` / ``step``: a week at one minute (as ``eyenet train --prometheus``)
PROMETHEUS_RANGE, PROMETHEUS_STEP = "7d", "1m"
#: the tune parameters a job takes
TUNE_PARAMS = ("trials", "space", "seed")
#: torch families report epochs; the others one fit
EPOCHS, FITS, TRIALS = "epochs", "fits", "trials"


class Reporter(Protocol):
    """Where a running job says how far it is (the job board)."""

    def line(self, text: str) -> None: ...

    def progress(self, done: int, total: int | None, unit: str) -> None: ...


@dataclass(frozen=True)
class JobSpec:
    kind: str
    family: str
    group: str = "default"
    tenant: str = "default"
    data: dict[str, Any] = field(default_factory=lambda: {"synthetic": "cpu_pct"})
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return reg.model_name(self.family, group=self.group, tenant=self.tenant)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_spec(spec: JobSpec, *, max_trials: int = 64, prometheus_url: str | None = None) -> JobSpec:
    """``spec`` with its data source completed, if it can run; else the error naming what is wrong."""
    from eyenet.core import detectors, prometheus

    if spec.kind not in KINDS:
        raise InvalidParameterError(f"kind: {spec.kind!r} is not a job kind (kinds: {', '.join(KINDS)})")
    detectors.get_class(spec.family)  # unknown family: names the known ones
    reg.model_name(spec.family, group=spec.group, tenant=spec.tenant)  # group and tenant are valid names
    params = dict(spec.params)
    if spec.kind == "train":
        config = presets.model_config(spec.family, params or None)  # names an unknown or out-of-range parameter
        from eyenet.core.model import AnomalyModel

        if AnomalyModel.from_dict(config).detector.supervised:
            raise InvalidParameterError(f"family: {spec.family} learns from labels, which a job's data sources do not "
                                        "carry; train it with `eyenet train --labels` or `--feedback`")
    elif detectors.create(spec.family).supervised:
        raise InvalidParameterError(f"family: {spec.family} learns from labels, which a job's data sources do not carry")
    else:
        unknown = sorted(set(params) - set(TUNE_PARAMS))
        if unknown:
            raise InvalidParameterError(f"params: {unknown[0]!r} is not a tune parameter (tune parameters: "
                                        f"{', '.join(TUNE_PARAMS)}; a family's own go in the search space)")
        trials = params.get("trials", 8)
        if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= max_trials:
            raise InvalidParameterError(f"params.trials: a whole number from 1 to {max_trials} (jobs.max_trials), "
                                        f"got {trials!r}")
        seed = params.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise InvalidParameterError(f"params.seed: a whole number from 0 to 2^32 - 1, got {seed!r}")
        if params.get("space") is not None:
            tuning.check_space(spec.family, params["space"])
        params = {"trials": trials, "seed": seed, **({"space": params["space"]} if params.get("space") else {})}
    data = dict(spec.data)
    kinds = [k for k in ("synthetic", "prometheus") if k in data]
    if len(kinds) != 1:
        raise InvalidParameterError('data: one of {"synthetic": "<metric>"} or {"prometheus": "<PromQL>", '
                                    '"range": "7d", "step": "1m"}')
    if kinds[0] == "synthetic":
        if set(data) != {"synthetic"}:
            raise InvalidParameterError(f"data: a synthetic source takes only the metric, got {sorted(data)}")
        if data["synthetic"] not in synthetic.METRICS:
            raise InvalidParameterError(f"data.synthetic: {data['synthetic']!r} is not a synthetic metric "
                                        f"(metrics: {', '.join(synthetic.METRICS)})")
    else:
        extra = sorted(set(data) - {"prometheus", "range", "step"})
        if extra:
            raise InvalidParameterError(f"data: {extra[0]!r} is not a field of a Prometheus source (prometheus, range, step)")
        if not prometheus_url:
            raise InvalidParameterError("data.prometheus: this app reads no Prometheus (set jobs.prometheus_url)")
        query = data["prometheus"]
        if not isinstance(query, str) or not query.strip() or len(query) > 4096:
            raise InvalidParameterError("data.prometheus: a PromQL expression of 1 to 4,096 characters")
        data.setdefault("range", PROMETHEUS_RANGE)
        data.setdefault("step", PROMETHEUS_STEP)
        span = prometheus.parse_duration(data["range"], what="data.range")
        step = prometheus.parse_duration(data["step"], what="data.step")
        if span / step > prometheus.MAX_POINTS:
            raise InvalidParameterError(f"data: {data['range']} at {data['step']} is {span / step:,.0f} points a "
                                        f"series; Prometheus answers at most {prometheus.MAX_POINTS:,} (widen the step)")
    return JobSpec(spec.kind, spec.family, spec.group, spec.tenant, data, params)


def synthetic_series(metric: str = "cpu_pct") -> Any:
    """The anomaly-free head of a synthetic metric: what `eyenet up` and `eyenet train` train on by default."""
    from eyenet.core.data import Series

    n = presets.UP_ROWS
    ts, values, _ = synthetic.series(metric, n=n, seed=presets.UP_SEED)
    head = int(n * presets.UP_TRAIN_FRACTION)
    return Series(metric.replace("_", "-"), ts[:head], np.asarray(values[:head]))


def load_data(spec: JobSpec, prometheus_url: str | None = None, now: float | None = None) -> tuple[Any, dict[str, Any]]:
    """The training series of a checked spec and its source record (for the gate's hold-out)."""
    from eyenet.core import prometheus

    if "synthetic" in spec.data:
        metric = spec.data["synthetic"]
        return synthetic_series(metric), holdout.synthetic_source(metric)
    now = time.time() if now is None else now
    end = math.floor(now)
    start = end - prometheus.parse_duration(spec.data["range"])
    step = prometheus.parse_duration(spec.data["step"])
    result = prometheus.query_range(prometheus_url, spec.data["prometheus"], start=start, end=end, step=step,
                                    headers=prometheus.token_headers())
    series = prometheus.to_series(result)
    if not series:
        raise NotEnoughDataError(f"data.prometheus: {spec.data['prometheus']!r} returned no series over the last "
                                 f"{spec.data['range']}")
    if len(series) > 1:
        raise InvalidParameterError(f"data.prometheus: {spec.data['prometheus']!r} returned {len(series)} series; a "
                                    "job trains one model (narrow the selector or aggregate it, e.g. with sum)")
    return series[0], holdout.prometheus_source(prometheus_url, spec.data["prometheus"], start, end, step)


def validation(spec: JobSpec, series: Any) -> list[tuning.ValidationSeries]:
    """What a tune job's trials are scored on: the labelled synthetic metric, or the Prometheus series
    with anomalies planted in its tail."""
    if "synthetic" in spec.data:
        return tuning.from_synthetic(metrics=(spec.data["synthetic"],))
    return [tuning.with_injected(series.name, np.asarray(series.values), seed=int(spec.params.get("seed", 0)))]


def train(spec: JobSpec, config: Mapping[str, Any] | None, series: Any, source: dict[str, Any], *,
          registry: reg.Registry, reporter: Reporter, tags: dict[str, str] | None = None,
          extra_metrics: dict[str, float] | None = None, report_progress: bool = True) -> reg.VersionInfo:
    """Fit ``config`` (default: the family's with the train job's params) on ``series`` and register a
    challenger; ``report_progress``: its epochs are the job's progress (not after a tune job's trials)."""
    from eyenet.core.detectors import TORCH_FAMILIES

    config = dict(config) if config is not None else presets.model_config(spec.family, spec.params or None)
    values = np.asarray(series.values, dtype=float)
    torch = spec.family in TORCH_FAMILIES
    total = int(config["detector"]["params"].get("max_epochs", 1)) if torch else 1
    progress = reporter.progress if report_progress else (lambda done, total, unit: None)
    progress(0, total, EPOCHS if torch else FITS)
    reporter.line(f"fitting {spec.family} on {len(values):,} points of {series.name}")

    def on_epoch(rec: dict[str, Any]) -> None:
        progress(int(rec["epoch"]), total, EPOCHS)
        reporter.line(f"epoch {rec['epoch']}/{total}: train_loss {rec['train_loss']:.4g}, val_loss {rec['val_loss']:.4g}")

    result = training.train_and_register(config, values, registry=registry, group=spec.group, tenant=spec.tenant,
                                         data=training.data_info(series, source), extra_metrics=extra_metrics,
                                         on_epoch=on_epoch if torch else None, tags=tags)
    if not torch:
        progress(1, 1, FITS)
    v = result.version
    reporter.line(f"registered {v.name} version {v.version} as challenger "
                  f"({result.metrics.get('fit_seconds', 0.0):.1f} s to fit)")
    return v


def run(spec: JobSpec, job_id: str, *, registry: reg.Registry, reporter: Reporter, prometheus_url: str | None = None,
        search: Callable[..., Any] | None = None, cpus_per_trial: float = 0.5,
        max_concurrent: int = 2) -> reg.VersionInfo:
    """One checked job: read its data, train (a tune job: ``search`` it first, ``eyenet.tune.tuner.search``,
    then train the best configuration), register the version tagged with ``job_id``."""
    source_name = f"synthetic metric {spec.data['synthetic']}" if "synthetic" in spec.data else "Prometheus"
    reporter.line(f"reading {source_name}")
    series, source = load_data(spec, prometheus_url)
    tags = {"eyenet.job": job_id}
    if spec.kind == "train":
        return train(spec, None, series, source, registry=registry, reporter=reporter, tags=tags)
    if search is None:
        raise InvalidParameterError("a tune job needs a search (eyenet.tune.tuner.search)")
    trials = int(spec.params["trials"])
    held = validation(spec, series)
    reporter.progress(0, trials, TRIALS)
    reporter.line(f"searching {spec.family}: {trials} trials on {len(held)} labelled series")

    def on_trial(done: int, metrics: dict[str, Any]) -> None:
        reporter.progress(done, trials, TRIALS)
        score = metrics.get("nab_standard")
        reporter.line(f"trial {done}/{trials} ended: NAB standard "
                      f"{'n/a' if score is None else format(float(score), '.1f')}")

    result = search(spec.family, held, trials=trials, space=spec.params.get("space"), cpus_per_trial=cpus_per_trial,
                    max_concurrent=max_concurrent, seed=int(spec.params.get("seed", 0)), mlflow_uri=registry.uri,
                    on_trial=on_trial)
    reporter.progress(result.trials, trials, TRIALS)
    reporter.line(f"best NAB standard {result.best_score:.1f} (default configuration {result.default_score:.1f}); "
                  "training it")
    return train(spec, result.best_config, series, source, registry=registry, reporter=reporter, tags=tags,
                 extra_metrics={"tune_best_score": result.best_score, "tune_default_score": result.default_score,
                                "tune_trials": float(result.trials)}, report_progress=False)
