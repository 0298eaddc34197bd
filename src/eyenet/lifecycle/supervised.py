"""Learning from labels: operators' feedback as labels, and an ensemble with a supervised member
judged by the deployment gate against the same ensemble without it.

Operators label points through ``POST /v1/feedback``: an alarm that was right
(``true_anomaly``), one that was wrong (``false_alarm``) and an anomaly no
alarm caught (``missed_anomaly``). :func:`labels_from_feedback` turns those
records into one label per row of a training series (1 anomaly, 0 normal),
matching them by timestamp; rows nobody labelled count as normal (nothing
alarmed there, or an operator dismissed it, and nobody reported a miss), or as
unknown with ``unlabelled="unknown"``.

:func:`compare` fits two models on the head of the labelled series (the base
configuration, and the same ensemble with a ``classifier`` member added by
:func:`with_classifier`), scores the labelled tail that neither saw with
:func:`eyenet.lifecycle.gate.evaluate`, and lets :func:`eyenet.lifecycle.gate.decide`
judge the one with the supervised member as challenger against the one
without as champion. The supervised member is kept only when the gate passes it.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from eyenet.core.detectors.base import ANOMALY, NORMAL, check_labels
from eyenet.core.errors import InvalidInputError, InvalidParameterError, NotEnoughDataError
from eyenet.core.evaluation import ValidationSeries
from eyenet.core.model import AnomalyModel
from eyenet.lifecycle import gate

#: feedback labels and the row label each gives
LABEL_OF: dict[str, float] = {"true_anomaly": ANOMALY, "missed_anomaly": ANOMALY, "false_alarm": NORMAL}
#: how unlabelled rows are taken
UNLABELLED: dict[str, float] = {"normal": NORMAL, "unknown": np.nan}
#: the share of the labelled series kept for the gate's judgement
VALIDATE = 0.3
#: the classifier member's weight in a weighted-mean ensemble, against the base members' weights
CLASSIFIER_WEIGHT = 1.0


@dataclass(frozen=True)
class FeedbackLabels:
    """Row labels from feedback, and how many of the feedback's timestamps matched no row."""

    labels: np.ndarray
    matched: int
    unmatched: int

    @property
    def anomalies(self) -> int:
        return int(np.count_nonzero(self.labels == ANOMALY))


def labels_from_feedback(records: Iterable[Any], timestamps: Any, *, series: str,
                         unlabelled: str = "normal") -> FeedbackLabels:
    """One label per row of ``timestamps`` from the feedback ``records`` (``Feedback`` objects or
    their dicts) about ``series``: a labelled time goes to the nearest row within half the series'
    usual step (data read from Prometheus is sampled at other instants than the stream's points),
    and a row labelled more than once keeps its latest label. Records that give row indices instead
    of timestamps, and those of other series, are skipped."""
    if unlabelled not in UNLABELLED:
        raise InvalidParameterError(f"unlabelled: {unlabelled!r} is not one of {', '.join(UNLABELLED)}")
    ts = pd.DatetimeIndex(pd.to_datetime(np.asarray(timestamps), utc=True))
    if not ts.is_monotonic_increasing or not ts.is_unique:
        raise InvalidInputError("timestamps: must increase strictly to take labels by time")
    step = pd.Series(ts).diff().median() if len(ts) > 1 else pd.Timedelta(0)
    labels = np.full(len(ts), UNLABELLED[unlabelled])
    matched = unmatched = 0
    for r in records:
        d = r if isinstance(r, dict) else r.to_dict()
        if d.get("series") != series or d.get("label") not in LABEL_OF or not d.get("timestamps"):
            continue
        try:
            at = pd.DatetimeIndex(pd.to_datetime(d["timestamps"], utc=True))
        except (ValueError, TypeError):
            unmatched += len(d["timestamps"])
            continue
        rows = ts.get_indexer(at, method="nearest", tolerance=step / 2) if len(ts) else np.full(len(at), -1)
        labels[rows[rows >= 0]] = LABEL_OF[d["label"]]
        matched += int((rows >= 0).sum())
        unmatched += int((rows < 0).sum())
    return FeedbackLabels(labels, matched, unmatched)


def labels_from_column(column_timestamps: Any, column: Any, timestamps: Any, where: str) -> np.ndarray:
    """One label per row of ``timestamps`` from a label column of a data file (its rows at
    ``column_timestamps``): 1 / true (anomaly), 0 / false (normal), empty (unknown)."""
    col = pd.Series(column).reset_index(drop=True)
    text = col.astype(str).str.strip().str.lower()
    y = np.full(len(col), np.nan)
    y[text.isin(("1", "1.0", "true")).to_numpy()] = ANOMALY
    y[text.isin(("0", "0.0", "false")).to_numpy()] = NORMAL
    known = text.isin(("1", "1.0", "true", "0", "0.0", "false", "", "nan", "none", "<na>")).to_numpy()
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise InvalidInputError(f"{where}: label {col[i]!r} in row {i + 1} is not 1 (anomaly), 0 (normal) or empty")
    at = pd.DatetimeIndex(pd.to_datetime(np.asarray(column_timestamps), utc=True))
    if not at.is_unique:
        raise InvalidInputError(f"{where}: timestamps repeat (several series in one file?): labels are read "
                                "from a file of one series")
    rows = at.get_indexer(pd.DatetimeIndex(pd.to_datetime(np.asarray(timestamps), utc=True)))
    return np.where(rows >= 0, y[np.maximum(rows, 0)], np.nan)


def windows_of(labels: np.ndarray) -> list[tuple[int, int]]:
    """The runs of anomalous rows as inclusive (first, last) row pairs."""
    a = np.concatenate(([False], np.asarray(labels) == ANOMALY, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(a))
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


def with_classifier(config: dict[str, Any], *, weight: float = CLASSIFIER_WEIGHT,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config`` with a ``classifier`` member added: an ensemble gets one more member; a single
    family becomes an ensemble of it and the classifier. The classifier may alarm on its own
    (``solo``): a pattern operators labelled is not averaged away by members that do not know it."""
    out = copy.deepcopy(config)
    det = out["detector"]
    member = {"family": "classifier", "params": dict(params or {}), "weight": float(weight), "solo": True}
    if det["family"] == "classifier" or any(m.get("family") == "classifier"
                                            for m in (det.get("params") or {}).get("members") or []):
        raise InvalidParameterError("the model already has a classifier member")
    if det["family"] == "ensemble":
        from eyenet.core import detectors

        p = det.setdefault("params", {})
        p["members"] = [*detectors.from_dict(det).member_configs, member]
        if p.get("combine") == "weighted":
            raise InvalidParameterError("combine='weighted' takes explicit weights: add the classifier member yourself")
    else:
        out["detector"] = {"family": "ensemble", "params": {"members": [{**det, "weight": 1.0}, member]}}
    return out


@dataclass
class Comparison:
    """The gate's judgement of the model with the supervised member (``with_``) against the one without."""

    decision: gate.Decision
    with_: AnomalyModel
    without: AnomalyModel
    with_report: gate.GateReport
    without_report: gate.GateReport
    fit_rows: int

    @property
    def chosen(self) -> AnomalyModel:
        return self.with_ if self.decision.passed else self.without


def split_row(n: int, labels: np.ndarray, validate: float = VALIDATE) -> int:
    """Where the fit part of a labelled series ends: ``validate`` of the rows are kept for the gate,
    and both parts must hold a labelled anomaly."""
    if not 0 < validate < 1:
        raise InvalidParameterError(f"validate={validate} must be in (0, 1)")
    cut = n - int(round(n * validate))
    wins = windows_of(labels)
    if not any(b < cut for _, b in wins) or not any(a >= cut for a, _ in wins):
        raise NotEnoughDataError(
            f"labels: learning from labels needs labelled anomalies both in the first {cut} rows (to learn from) "
            f"and after them (for the gate to judge on); got {len(wins)} anomalous stretch(es)"
            + (f" at rows {', '.join(f'{a}-{b}' for a, b in wins[:5])}" if wins else ""))
    return cut


def compare(config: dict[str, Any], values: Any, labels: Any, *, name: str = "labelled",
            validate: float = VALIDATE, weight: float = CLASSIFIER_WEIGHT, policy: gate.GatePolicy | None = None,
            classifier: dict[str, Any] | None = None) -> Comparison:
    """Fit ``config`` and ``config`` with a classifier member on the head of ``values`` (with its
    ``labels``), and judge them on the labelled tail neither saw."""
    x = np.asarray(values, dtype=float)
    y = check_labels(labels, len(x))
    cut = split_row(len(x), y, validate)
    without = AnomalyModel.from_dict(config).fit(x[:cut], labels=y[:cut])
    with_ = AnomalyModel.from_dict(with_classifier(config, weight=weight, params=classifier)).fit(
        x[:cut], labels=y[:cut])
    held = [ValidationSeries(name, x, [w for w in windows_of(y) if w[1] >= cut], cut)]
    with_report = gate.evaluate(with_, held, policy)
    without_report = gate.evaluate(without, held, policy)
    return Comparison(gate.decide(with_report, without_report, policy), with_, without, with_report,
                      without_report, cut)


def outcome(c: Comparison) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics and tags a version chosen by :func:`compare` is registered with: both gate reports
    (the one without the supervised member as ``champion.``) and whether the member was kept and why."""
    metrics = {k: float(v) for k, v in c.decision.metrics.items() if v is not None and math.isfinite(float(v))}
    metrics["supervised.fit_rows"] = float(c.fit_rows)
    tags = {"eyenet.supervised": "kept" if c.decision.passed else "left out",
            "eyenet.supervised.reason": c.decision.reason[:500]}
    return metrics, tags
