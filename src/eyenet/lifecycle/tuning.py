"""What a hyper-parameter search optimises, and how its search space is written.

A trial's objective is the NAB standard-profile score (optimised threshold) of
its model configuration on labelled validation series: each series is played
as a stream, the model learning from its head (the probation period) and
scoring every row causally. Labelled data comes from a NAB-format corpus or the
synthetic telemetry. Unlabelled series get labels by injection: spikes, dips,
level shifts and variance bursts are planted in the series' tail, and the
objective is how well the configuration finds them. That proxy needs no labels
and punishes both missed incidents and false alarms, which a forecast-error
proxy would not.

Search spaces are plain JSON (``{"lr": {"loguniform": [1e-4, 1e-2]}, "window":
{"choice": [32, 64]}}``) so that they can come from a file; ``eyenet.tune``
turns them into Ray Tune domains.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Iterator, Sequence

import numpy as np

from eyenet.core import detectors, evaluation, nab, presets, synthetic
from eyenet.core.errors import InvalidParameterError, NotEnoughDataError
from eyenet.core.evaluation import ValidationSeries
from eyenet.core.model import AnomalyModel

#: distributions a search space may use, with the number of arguments each takes
DISTRIBUTIONS = {"choice": None, "uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}
#: settings of the model around the detector that a space may search (besides detector params)
MODEL_KEYS = ("holdout", "tail_quantile", "rank.suppress", "rank.history", "alarm.threshold", "alarm.k", "alarm.n")


# ----------------------------------------------------------------------------------------------
# validation data


def from_corpus(root: Any, *, every: int = 1, offset: int = 0) -> list[ValidationSeries]:
    """Files of a NAB-format corpus (every ``every``-th from ``offset``, to hold some out)."""
    out = []
    for cf in nab.read_corpus(root)[offset::every]:
        s = nab.load_file(cf)
        out.append(ValidationSeries(cf.key, np.asarray(s.values, dtype=float),
                                    nab.window_rows(s.timestamps, cf.windows), nab.probation_length(len(s))))
    return out


def windows_around(spans: Sequence[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """NAB-style windows: 10 % of the series shared among the anomalies, centred on each start."""
    if not spans:
        return []
    half = max(2, int(0.1 * n / len(spans)) // 2)
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        lo, hi = max(0, start - half), min(n - 1, max(end - 1, start) + half)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def from_synthetic(*, metrics: Sequence[str] = ("cpu_pct", "latency_ms", "bytes_in"), n: int = 2016,
                   seed: int = 11, anomalies: int = 3) -> list[ValidationSeries]:
    """Labelled synthetic telemetry; the anomaly-free first quarter is the training part."""
    t = synthetic.generate(n=n, metrics=metrics, seed=seed, anomalies_per_metric=anomalies)
    out = []
    for m in metrics:
        spans = [(a.start, a.end) for a in t.anomalies[m]]
        out.append(ValidationSeries(m, t.frame[m].to_numpy(dtype=float), windows_around(spans, n), n // 4))
    return out


def with_injected(name: str, values: np.ndarray, *, train_fraction: float = 0.5, count: int = 4,
                  seed: int = 0, train_rows: int | None = None) -> ValidationSeries:
    """An unlabelled series with anomalies planted in its tail (the labels are where they were planted).

    The tail starts after ``train_rows`` when given, else after ``train_fraction`` of the rows.
    """
    x = np.array(values, dtype=float)
    n = len(x)
    train = int(n * train_fraction) if train_rows is None else int(train_rows)
    if n - train < 40 * count:
        raise NotEnoughDataError(f"{name}: {n} rows leave too little after the training part to plant {count} anomalies")
    rng = np.random.default_rng(seed)
    sigma = float(np.std(np.diff(x[:train]))) or float(np.std(x[:train])) or 1.0
    slots = np.linspace(train, n, count + 1).astype(int)
    spans = []
    for j, kind in enumerate(("spike", "level_shift", "dip", "variance")[i % 4] for i in range(count)):
        lo, hi = slots[j] + 10, slots[j + 1] - 20
        start = int(rng.integers(lo, max(lo + 1, hi)))
        length = {"spike": 1, "dip": 1}.get(kind, int(min(20, slots[j + 1] - start)))
        if kind == "spike":
            x[start] += 8 * sigma
        elif kind == "dip":
            x[start] -= 8 * sigma
        elif kind == "level_shift":
            x[start : start + length] += 6 * sigma
        else:
            x[start : start + length] += rng.normal(0, 5 * sigma, length)
        spans.append((start, start + length))
    return ValidationSeries(name, x, windows_around(spans, n), train)


# ----------------------------------------------------------------------------------------------
# the objective


def score_series(config: dict[str, Any], vs: ValidationSeries) -> np.ndarray:
    """Final [0, 1] score per row of one validation series (0 where the model is not ready)."""
    model = AnomalyModel.from_dict(config)
    model.fit(vs.values[: vs.train_rows])
    return np.nan_to_num(model.score(vs.values).score, nan=0.0)


def evaluate(config: dict[str, Any], series: Sequence[ValidationSeries]) -> Iterator[dict[str, float]]:
    """Score the series one by one; after each, the NAB scores of all series so far.

    A series whose fit fails (too short for the configuration) counts as all
    zeros, so an infeasible configuration scores low instead of crashing a trial.
    """
    files: list[evaluation.FileArrays] = []
    failures = 0
    for vs in series:
        try:
            scores = score_series(config, vs)
        except (InvalidParameterError, NotEnoughDataError):
            scores, failures = np.zeros(len(vs.values)), failures + 1
        files.append((scores, vs.windows, vs.train_rows))
        if not any(w for _, w, _ in files):
            continue
        report = evaluation.score_arrays(files)
        yield {
            "nab_standard": report.score("standard"),
            "nab_low_fp": report.score("reward_low_fp"),
            "nab_low_fn": report.score("reward_low_fn"),
            "series": float(len(files)),
            "failures": float(failures),
        }


def final_score(config: dict[str, Any], series: Sequence[ValidationSeries]) -> dict[str, float]:
    out: dict[str, float] = {"nab_standard": -math.inf}
    for out in evaluate(config, series):
        pass
    return out


# ----------------------------------------------------------------------------------------------
# search spaces


def check_space(family: str, space: Any) -> dict[str, Any]:
    """Validate a JSON search space for ``family``; returns it. Names the first bad entry."""
    if not isinstance(space, dict) or not space:
        raise InvalidParameterError("search space must be a non-empty JSON object of parameter -> distribution")
    params = detectors.get_class(family)().get_params()
    for key, dist in space.items():
        if key not in params and key not in MODEL_KEYS and not (family == "ensemble" and _weight_index(key) is not None):
            raise InvalidParameterError(
                f"search space: {key!r} is not a parameter of {family!r} "
                f"(parameters: {sorted(params)}; model settings: {list(MODEL_KEYS)})"
            )
        if not isinstance(dist, dict) or len(dist) != 1:
            raise InvalidParameterError(f"search space: {key!r} must be one of {{\"<distribution>\": [args]}}, got {dist!r}")
        (kind, args), = dist.items()
        if kind not in DISTRIBUTIONS:
            raise InvalidParameterError(f"search space: {key!r} uses unknown distribution {kind!r} (known: {list(DISTRIBUTIONS)})")
        if not isinstance(args, list) or not args:
            raise InvalidParameterError(f"search space: {key!r}: {kind} needs a non-empty list of arguments")
        want = DISTRIBUTIONS[kind]
        if want is not None:
            if len(args) != want or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise InvalidParameterError(f"search space: {key!r}: {kind} needs {want} numbers, got {args!r}")
            if args[0] >= args[1] or (kind == "loguniform" and args[0] <= 0):
                raise InvalidParameterError(f"search space: {key!r}: {kind} bounds {args[:2]} are not a valid range")
    return space


def apply(family: str, base: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """The model config of a trial: ``base`` (a model config) with the sampled values set.

    Detector parameters are checked by the detector's constraints, so an
    impossible sample raises :class:`InvalidParameterError`.
    """
    config = copy.deepcopy(base)
    det_params = dict(config["detector"].get("params", {}))
    weights: dict[int, float] = {}
    for key, value in sample.items():
        if isinstance(value, np.generic):
            value = value.item()
        if _weight_index(key) is not None:
            weights[_weight_index(key)] = float(value)
        elif key in MODEL_KEYS:
            section, _, field = key.partition(".")
            if field:
                config.setdefault(section, {})
                config[section] = {**(config[section] or {}), field: value}
            else:
                config[key] = value
        else:
            det_params[key] = value
    if weights:  # ensemble member weights: weights.<i>, missing members weigh 1
        n = len(detectors.create(family, **det_params).member_configs)
        det_params["weights"] = [weights.get(i, 1.0) for i in range(n)]
        det_params["combine"] = "weighted"
    config["detector"] = detectors.create(family, **det_params).to_dict()
    if "rank" in config and config["rank"] is not None:
        from eyenet.core.calibration import RunningRank

        config["rank"] = {**RunningRank().__dict__, **config["rank"]}
    if "alarm" in config:
        from dataclasses import asdict

        from eyenet.core.alarms import AlarmPolicy

        config["alarm"] = {**asdict(AlarmPolicy()), **config["alarm"]}
    AnomalyModel.from_dict(config)  # checks the whole config
    return config


def _weight_index(key: str) -> int | None:
    head, _, tail = key.partition(".")
    return int(tail) if head == "weights" and tail.isdigit() else None


def base_config(family: str) -> dict[str, Any]:
    return presets.model_config(family)
