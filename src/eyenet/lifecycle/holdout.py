"""Held-out labelled data of a registered version: what the deployment gate scores it on.

A version records what it was trained on (``eyenet/data.json`` of its run: the
series, its rows, and a ``source`` made by one of the ``*_source`` functions
here). The held-out part is data the model did not learn from, with labels:

* synthetic telemetry (the default training data): the same seeded series
  after the training rows, labelled by its injected anomalies;
* a file of a NAB-format corpus (trained on its probation rows): the whole
  file, scored after the probation period, labelled by the corpus's windows
  (anomalies are planted after the probation period when it has none);
* any other file: the rows after the training rows, when the file has grown
  since, with anomalies planted in them; otherwise the second half of the file
  with anomalies planted (the model saw those rows clean: the same proxy the
  tuner uses for unlabelled input);
* a Prometheus query: the same query read again from the training range's start
  to now (at most Prometheus' 11,000 steps), treated like a file that grew.

Regenerated or re-read training rows are checked against the recorded mean and
spread, so a changed file or generator is an error rather than a silently
different test.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from eyenet.core import presets
from eyenet.lifecycle import tuning
from eyenet.core.errors import EyenetError, LifecycleError
from eyenet.core.evaluation import ValidationSeries

SYNTHETIC = "synthetic"
CORPUS = "nab"
INPUT = "input"
PROMETHEUS = "prometheus"
#: anomalies planted in an unlabelled tail (each needs 40 rows of it)
PLANTED = 4


def synthetic_source(metric: str = "cpu_pct", *, rows: int = presets.UP_ROWS, seed: int = presets.UP_SEED,
                     anomalies: int = presets.UP_ANOMALIES_PER_METRIC,
                     train_fraction: float = presets.UP_TRAIN_FRACTION) -> dict[str, Any]:
    """Source record of a model trained on the anomaly-free head of a synthetic metric (the CLI default)."""
    return {"kind": SYNTHETIC, "metric": metric, "rows": rows, "seed": seed, "anomalies": anomalies,
            "train_rows": int(rows * train_fraction)}


def corpus_source(root: str | Path) -> dict[str, Any]:
    """Source record of a model trained on the probation rows of a NAB-format corpus file."""
    return {"kind": CORPUS, "corpus": str(Path(root).absolute())}


def input_source(path: str | Path) -> dict[str, Any]:
    """Source record of a model trained on a CSV / Parquet file (or URI)."""
    text = str(path)
    return {"kind": INPUT, "path": text if "://" in text else str(Path(text).absolute())}


# ----------------------------------------------------------------------------------------------


def prometheus_source(url: str, query: str, start: float, end: float, step: float) -> dict[str, Any]:
    """Training data read from a Prometheus ``query_range`` (``url`` is recorded redacted)."""
    from eyenet.core.redact import redact

    return {"kind": PROMETHEUS, "url": redact(url), "query": query, "start": start, "end": end, "step": step}


def validation_for(registry: Any, name: str, version: int) -> list[ValidationSeries]:
    """The held-out labelled series of a registered version, from what it records about its training data."""
    record = registry.data_record(name, version)
    if not record or not isinstance(record.get("source"), dict):
        raise LifecycleError(
            f"{name} version {version} does not record where its training data came from; "
            "pass held-out validation series explicitly"
        )
    try:
        return from_record(record)
    except LifecycleError:
        raise
    except EyenetError as exc:
        raise LifecycleError(f"{name} version {version}: its held-out data cannot be rebuilt ({exc})") from None


def from_record(record: dict[str, Any]) -> list[ValidationSeries]:
    """Held-out series of a ``data.json`` record (see the module docstring)."""
    source = record["source"]
    kind = source.get("kind")
    if kind == SYNTHETIC:
        return [_synthetic(record, source)]
    if kind == CORPUS:
        return [_corpus(record, source)]
    if kind == INPUT:
        return [_input(record, source)]
    if kind == PROMETHEUS:
        return [_prometheus(record, source)]
    raise LifecycleError(f"unknown training-data source {kind!r} (known: {SYNTHETIC}, {CORPUS}, {INPUT}, {PROMETHEUS})")


def _check_same(record: dict[str, Any], head: np.ndarray, where: str) -> None:
    """The rows we rebuilt must be the rows the model was trained on (same mean and spread)."""
    for key, value in (("mean", float(np.mean(head))), ("std", float(np.std(head)))):
        want = record.get(key)
        if want is not None and not math.isclose(value, float(want), rel_tol=1e-6, abs_tol=1e-9):
            raise LifecycleError(
                f"{where}: the first {len(head)} rows are not the training rows any more "
                f"({key} {value:.6g}, recorded {float(want):.6g})"
            )


def _synthetic(record: dict[str, Any], source: dict[str, Any]) -> ValidationSeries:
    from eyenet.core import synthetic

    metric, n = source["metric"], int(source["rows"])
    t = synthetic.generate(n=n, metrics=(metric,), seed=int(source["seed"]),
                           anomalies_per_metric=int(source["anomalies"]))
    x = t.frame[metric].to_numpy(dtype=float)
    train = int(record.get("rows") or source["train_rows"])
    _check_same(record, x[:train], f"synthetic {metric} (seed {source['seed']})")
    windows = tuning.windows_around([(a.start, a.end) for a in t.anomalies[metric]], n)
    return ValidationSeries(str(record.get("series") or metric), x, windows, train)


def _corpus(record: dict[str, Any], source: dict[str, Any]) -> ValidationSeries:
    from eyenet.core import nab

    key = str(record.get("series"))
    found = [cf for cf in nab.read_corpus(source["corpus"]) if cf.key == key]
    if not found:
        raise LifecycleError(f"corpus {source['corpus']} has no file {key!r} any more")
    cf = found[0]
    s = nab.load_file(cf)
    x = np.asarray(s.values, dtype=float)
    train = int(record.get("rows") or nab.probation_length(len(x)))
    _check_same(record, x[:train], key)
    windows = nab.window_rows(s.timestamps, cf.windows)
    if windows:
        return ValidationSeries(key, x, windows, train)
    return tuning.with_injected(key, x, train_rows=train, count=PLANTED)


def _input(record: dict[str, Any], source: dict[str, Any]) -> ValidationSeries:
    from eyenet.core import data

    path = source["path"]
    if "://" in path:
        raise LifecycleError(f"{path} is on remote storage, which the gate does not read; "
                             "pass held-out validation series explicitly")
    series = data.read_many(path)
    name = record.get("series")
    chosen = [s for s in series if s.name == name] or (series if len(series) == 1 else [])
    if not chosen:
        raise LifecycleError(f"{path} has no series {name!r} any more")
    return _grown(chosen[0], record, path)


def _grown(s: Any, record: dict[str, Any], where: str) -> ValidationSeries:
    """A series the model was trained on the first rows of: the rows after them, with anomalies planted,
    when there are enough; else its second half, planted."""
    x = np.asarray(s.values, dtype=float)
    trained = int(record.get("rows") or len(x))
    _check_same(record, x[: min(trained, len(x))], where)
    if len(x) - trained >= 40 * PLANTED:  # rows arrived after training: a real hold-out
        return tuning.with_injected(s.name, x, train_rows=trained, count=PLANTED)
    return tuning.with_injected(s.name, x, train_fraction=0.5, count=PLANTED)


def _prometheus(record: dict[str, Any], source: dict[str, Any]) -> ValidationSeries:
    import time

    from eyenet.core import prometheus

    start, step = float(source["start"]), float(source["step"])
    end = max(float(source["end"]), min(time.time(), start + (prometheus.MAX_POINTS - 1) * step))
    result = prometheus.query_range(source["url"], source["query"], start=start, end=end, step=step,
                                    headers=prometheus.token_headers())
    name = record.get("series")
    chosen = [s for s in prometheus.to_series(result) if s.name == name]
    if not chosen:
        raise LifecycleError(f"{source['query']!r} at Prometheus {source['url']} returns no series {name!r} any more")
    return _grown(chosen[0], record, f"{source['query']!r} at Prometheus {source['url']}")
