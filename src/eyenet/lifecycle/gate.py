"""The deployment gate: may a fitted model version serve, and is it better than the one serving?

:func:`evaluate` scores an already-fitted model (never refitted) on held-out
labelled series as a stream from row 0, and measures what a bad version would
break in production:

* detection quality: the NAB standard score (at the optimised threshold, as the
  tuner optimises it, and at the model's own alarm threshold) and the precision
  and recall of the model's own alarms against the labelled windows;
* finite outputs: the fraction of rows after warm-up whose score is NaN or inf;
* calibration sanity: final scores within [0, 1], not constant, and an alarm
  rate an operator could live with;
* speed: the latency of one stream step (one new point with the stream state
  carried over), as a quantile over many calls.

:func:`decide` turns a challenger's report (and the champion's, when there is
one) into a :class:`Decision`: any failed check rejects with a reason naming
it; otherwise the challenger must beat the champion's NAB score by
``GatePolicy.margin`` points. With no champion, passing the checks is enough.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eyenet.core import evaluation
from eyenet.core.errors import EyenetError, InvalidParameterError, UnknownNameError
from eyenet.core.evaluation import ValidationSeries


class GatePolicy(BaseModel):
    """What a version must show to serve. Unknown keys are rejected (a typo must not loosen the gate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(1.0, ge=0, description="NAB standard points a challenger must gain over the champion")
    min_precision: float | None = Field(None, ge=0, le=1, description="lowest precision of the alarms (None: not checked)")
    min_recall: float | None = Field(None, ge=0, le=1, description="lowest share of labelled windows alarmed (None: not checked)")
    latency_budget_ms: float = Field(10.0, gt=0, description="one stream step, at latency_quantile")
    latency_quantile: float = Field(0.5, gt=0, le=1)
    latency_calls: int = Field(200, ge=10, description="stream steps timed")
    max_nonfinite: float = Field(0.0, ge=0, le=1, description="share of rows after warm-up allowed a NaN/inf score")
    max_alarm_rate: float = Field(0.1, gt=0, le=1, description="share of scored rows that may raise an alarm")
    min_score_std: float = Field(1e-6, ge=0, description="below this spread the final score counts as constant")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GatePolicy:
        """A policy from JSON-like settings; a bad key or value is an :class:`InvalidParameterError` naming it."""
        try:
            return cls.model_validate(d or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "policy"
            raise InvalidParameterError(f"gate policy: {where}: {err.get('msg')}") from None


@dataclass
class GateReport:
    """What :func:`evaluate` measured. ``error`` set means the version failed to load or crashed."""

    version: int | None = None
    error: str | None = None
    series: int = 0
    rows: int = 0  # rows scored (after warm-up)
    windows: int = 0
    nab_standard: float | None = None  # optimised threshold
    nab_standard_own: float | None = None  # the model's own alarm threshold
    precision: float | None = None  # None: no alarms
    recall: float | None = None
    nonfinite_fraction: float = 0.0
    score_min: float | None = None
    score_max: float | None = None
    score_std: float | None = None
    alarm_rate: float = 0.0
    latency_ms: float | None = None  # at the policy's quantile
    latency_p95_ms: float | None = None
    seconds: float = 0.0

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The numbers of the report (unset ones left out), keys prefixed for a champion's."""
        skip = {"version", "error"}
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()
                if k not in skip and v is not None and math.isfinite(float(v))}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    """The gate's verdict: ``passed`` or not, a one-line ``reason``, and the metrics behind it."""

    passed: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# measuring


def _warmup(model: Any, vs: ValidationSeries) -> int:
    """Rows not judged: the training (probation) rows, and at least the rows before the model's first
    score (``min_history``; not its ``context``, the most history a score may use: a seasonal member
    averaging ten daily cycles would leave a week of validation data unjudged and the version
    rejected for a constant score)."""
    return min(len(vs.values), max(int(vs.train_rows), int(model.detector.min_history)))


def _precision_recall(alarms: Sequence[np.ndarray], windows: Sequence[Sequence[tuple[int, int]]],
                      starts: Sequence[int]) -> tuple[float | None, float | None, int]:
    """Share of alarm rows inside a labelled window; share of windows (ending after warm-up) alarmed."""
    hits = total = found = counted = 0
    for alarm, wins, start in zip(alarms, windows, starts):
        inside = np.zeros(len(alarm), dtype=bool)
        for a, b in wins:
            inside[a : b + 1] = True
            if b >= start:
                counted += 1
                found += bool(alarm[max(a, start) : b + 1].any())
        judged = alarm[start:]
        total += int(judged.sum())
        hits += int((judged & inside[start:]).sum())
    return (hits / total if total else None), (found / counted if counted else None), counted


def stream_latency(model: Any, values: np.ndarray, *, calls: int, start: int) -> np.ndarray:
    """Seconds per stream step: the stream state after ``values[:start]``, then one point per call."""
    x = np.asarray(values, dtype=float)
    tail = x[start:] if len(x) > start else x[-1:]
    _, state = model.score_stream(x[:start]) if start else (None, model.new_state())
    out = np.empty(calls)
    for i in range(calls + 5):  # the first few calls warm caches and are not timed
        point = tail[i % len(tail) : i % len(tail) + 1]
        t0 = time.perf_counter()
        _, state = model.score_stream(point, state)
        if i >= 5:
            out[i - 5] = time.perf_counter() - t0
    return out


def evaluate(model: Any, validation: Sequence[ValidationSeries], policy: GatePolicy | None = None,
             *, version: int | None = None) -> GateReport:
    """Score a fitted model on held-out labelled series (no refit); a crash is reported, not raised."""
    policy = policy or GatePolicy()
    if not validation:
        raise InvalidParameterError("the gate needs at least one held-out validation series")
    report = GateReport(version=version, series=len(validation))
    t0 = time.perf_counter()
    files, alarms, starts, finals = [], [], [], []
    nonfinite = judged = 0
    try:
        for vs in validation:
            out = model.score(vs.values)
            start = _warmup(model, vs)
            score = np.asarray(out.score, dtype=float)
            bad = ~np.isfinite(score[start:])
            nonfinite += int(bad.sum())
            judged += len(bad)
            finals.append(score[start:][~bad])
            alarms.append(np.asarray(out.alarm, dtype=bool))
            starts.append(start)
            files.append((np.nan_to_num(score, nan=0.0, posinf=1.0, neginf=0.0), vs.windows, start))
        where = validation[0]
        lat = stream_latency(model, where.values, calls=policy.latency_calls, start=_warmup(model, where))
    except Exception as exc:  # noqa: BLE001 - whatever a broken version raises, it must not serve
        report.error = f"crashed while scoring: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        report.seconds = time.perf_counter() - t0
        return report
    report.rows = judged
    report.nonfinite_fraction = nonfinite / judged if judged else 0.0
    report.precision, report.recall, report.windows = _precision_recall(alarms, [v.windows for v in validation], starts)
    report.alarm_rate = float(sum(int(a[s:].sum()) for a, s in zip(alarms, starts)) / judged) if judged else 0.0
    final = np.concatenate(finals) if finals else np.empty(0)
    if len(final):
        report.score_min, report.score_max, report.score_std = float(final.min()), float(final.max()), float(final.std())
    if any(len(w) for _, w, _ in files):
        nab = evaluation.score_arrays(files, own_threshold=model.threshold)
        report.nab_standard = nab.score("standard")
        report.nab_standard_own = nab.profiles["standard"].own_score
    report.latency_ms = float(np.quantile(lat, policy.latency_quantile) * 1000.0)
    report.latency_p95_ms = float(np.quantile(lat, 0.95) * 1000.0)
    report.seconds = time.perf_counter() - t0
    return report


def evaluate_version(registry: Any, name: str, version: int, validation: Sequence[ValidationSeries],
                     policy: GatePolicy | None = None) -> GateReport:
    """Load a registered version and :func:`evaluate` it; a version that fails to load gets a report
    whose ``error`` says so. An unreachable registry or an unknown version is raised, not reported:
    that is no fault of the version."""
    from eyenet.lifecycle.registry import RegistryError

    registry.version(name, version)
    try:
        model = registry.load(name, version=version)
    except (RegistryError, UnknownNameError):
        raise
    except Exception as exc:  # noqa: BLE001 - ArtifactError, a bad config, a detector that cannot load
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        kind = "" if isinstance(exc, EyenetError) else f"{type(exc).__name__}: "
        return GateReport(version=version, error=f"failed to load: {kind}{text}")
    return evaluate(model, validation, policy, version=version)


# ----------------------------------------------------------------------------------------------
# deciding


def problems(report: GateReport, policy: GatePolicy) -> list[str]:
    """Every check the report fails, each as a short phrase naming the problem (empty: all pass)."""
    if report.error:
        return [report.error]
    out = []
    if report.nonfinite_fraction > policy.max_nonfinite:
        out.append(f"yields non-finite (NaN/inf) scores on {report.nonfinite_fraction:.1%} of rows after warm-up")
    if report.latency_ms is not None and report.latency_ms > policy.latency_budget_ms:
        out.append(f"stream step p{policy.latency_quantile * 100:g} {report.latency_ms:.3g} ms exceeds the "
                   f"latency budget of {policy.latency_budget_ms:g} ms")
    if report.score_min is not None and (report.score_min < 0.0 or report.score_max > 1.0):
        out.append(f"final scores outside [0, 1] ({report.score_min:.3g} .. {report.score_max:.3g})")
    if report.score_std is None or report.score_std < policy.min_score_std:
        out.append("final score is constant after warm-up (calibration collapsed)")
    if report.alarm_rate > policy.max_alarm_rate:
        out.append(f"alarms on {report.alarm_rate:.1%} of rows, above the {policy.max_alarm_rate:.1%} limit")
    if policy.min_precision is not None and report.precision is not None and report.precision < policy.min_precision:
        out.append(f"alarm precision {report.precision:.2f} below {policy.min_precision:.2f}")
    if policy.min_recall is not None and (report.recall or 0.0) < policy.min_recall:
        out.append(f"alarm recall {report.recall or 0.0:.2f} below {policy.min_recall:.2f}")
    return out


def _v(report: GateReport, who: str) -> str:
    return f"{who} v{report.version}" if report.version is not None else who


def decide(challenger: GateReport, champion: GateReport | None, policy: GatePolicy | None = None) -> Decision:
    """Pass or reject ``challenger`` against ``champion`` (None: there is no champion yet)."""
    policy = policy or GatePolicy()
    metrics = challenger.metrics()
    if champion is not None:
        metrics.update(champion.metrics("champion."))
    failed = problems(challenger, policy)
    if failed:
        return Decision(False, f"{_v(challenger, 'challenger')} {'; '.join(failed)}", metrics)
    if champion is None:
        return Decision(True, f"{_v(challenger, 'challenger')} passes every check and there is no champion", metrics)
    if problems(champion, policy):
        return Decision(True, f"{_v(challenger, 'challenger')} passes every check; {_v(champion, 'champion')} "
                              f"does not ({'; '.join(problems(champion, policy))})", metrics)
    new, old = challenger.nab_standard, champion.nab_standard
    if new is None or old is None:
        return Decision(False, "no labelled anomaly windows in the validation data, so the challenger cannot be "
                               "shown better than the champion", metrics)
    gain = new - old
    metrics["nab_gain"] = gain
    text = (f"NAB standard {new:.2f} vs {_v(champion, 'champion')} {old:.2f} ({gain:+.2f}, margin {policy.margin:g})")
    if gain >= policy.margin:
        return Decision(True, f"{_v(challenger, 'challenger')} is better: {text}", metrics)
    return Decision(False, f"{_v(challenger, 'challenger')} is not better by the margin: {text}", metrics)
