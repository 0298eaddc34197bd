"""The HTTP request models behind HTTP and Serve handles: request schemas, limits, and their validation.

Everything a request can get wrong is caught here and reported as a 4xx with
the field named (``series[2].values[17]: not a finite number``); nothing a
request sends can reach a model unchecked. The Ray Serve wiring in
``eyenet.serve`` only routes validated requests.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Body, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eyenet.core import detectors, synthetic
from eyenet.core.errors import InvalidInputError
from eyenet.lifecycle import registry as reg
from eyenet.monitoring.feedback import Feedback
from eyenet.serving.jobs import ID_PATTERN as JOB_ID

#: a series id: a name (``web-1/cpu``) or a Prometheus series (``node_load1{instance="web-1:9100"}``),
#: printable characters only (fullmatch: `$` would take a trailing newline)
_ID = re.compile(r"[A-Za-z0-9_:][^\x00-\x1f\x7f]{0,399}")


@dataclass(frozen=True)
class Limits:
    """What one request may carry (oversized requests get 413 / 422 naming the limit)."""

    max_series: int = 100
    max_points: int = 10_000  # per series per request
    max_batch_series: int = 5_000  # series of one /v1/stream/batch request
    max_batch_points: int = 100_000  # points of one /v1/stream/batch request
    max_body_bytes: int = 8 * 1024 * 1024
    max_forecast_horizon: int = 1


LIMITS = Limits()
#: the tenant of a request that names none and has no credential to take one from (auth off, tests)
DEFAULT_TENANT = "default"

# -- what the OpenAPI document says of each field: the rules the validators below (and
# eyenet.lifecycle.registry.model_name) apply, so that a request valid by the schema is not refused
# by a stricter hidden rule. Only rules across fields or values stay out (one timestamp per value,
# in increasing order, a real calendar date; each series once; each point once; detectors that are
# members of the served model; a forecaster for /v1/forecast).
#: a series id (the ``_ID`` validator)
ID_SCHEMA = {"pattern": f"^{_ID.pattern}$", "minLength": 1, "maxLength": 400}
#: a group or family: one part of a model name (``registry.model_name``)
NAME_PART = r"^[a-z0-9][a-z0-9_-]{0,62}$"
NAME_SCHEMA = {"pattern": NAME_PART, "minLength": 1, "maxLength": 63}
#: a registered-model name ``<tenant>.<group>.<family>``
MODEL_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9][a-z0-9_-]{0,62}$"
#: an ISO 8601 timestamp that fits a nanosecond timestamp (years 1700-2259)
ISO_TIMESTAMP = (r"^(1[7-9][0-9][0-9]|2[01][0-9][0-9]|22[0-5][0-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                 r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?(Z|[+-]([01][0-9]|2[0-3]):?[0-5][0-9])?)?$")
#: what a null (or NaN) value means
MISSING = ("null (or NaN) is a missing value: imputed for the model and answered with imputed: true, "
           "never an alarm; infinities are refused")
#: epoch seconds that fit a nanosecond timestamp
EPOCH_MAX = 9.0e9
MAX_VERSION = 2**31 - 1

Timestamp = Annotated[str, Field(json_schema_extra={"pattern": ISO_TIMESTAMP})] | Annotated[
    float, Field(json_schema_extra={"minimum": -EPOCH_MAX, "maximum": EPOCH_MAX})]
#: the body of ``POST /api/v1/write``: a snappy-compressed protobuf WriteRequest, as bytes
RemoteWriteBody = Annotated[bytes, Body(media_type="application/x-protobuf",
                                        description="a snappy-compressed Prometheus remote_write 1.0 WriteRequest")]
#: the ``{name}`` of ``/v1/models/{name}/...``
ModelName = Annotated[str, Path(pattern=MODEL_NAME, max_length=191,
                                description="registered model, <tenant>.<group>.<family>")]
#: the ``limit`` of ``/v1/models/{name}/history``
SeriesMatch = Annotated[str, Query(max_length=200, description="only series whose id contains this (any case)")]
SeriesLimit = Annotated[int, Query(ge=1, le=10_000, description="series at most")]
SeriesId = Annotated[str, Path(min_length=1, max_length=200, description="series id, as streamed")]
GroupQuery = Annotated[str, Query(pattern=NAME_PART, max_length=63, description="the series' group")]
TenantQuery = Annotated[str | None, Query(pattern=NAME_PART, max_length=63, description="the series' tenant "
                                          "(default: the credential's; another: admins only)")]
PointsLimit = Annotated[int, Query(ge=1, le=100_000, description="the last this many points")]
HistoryLimit = Annotated[int | None, Query(ge=1, le=100_000, description="the last this many events (default: all)")]


def is_series_id(text: str) -> bool:
    """Whether ``text`` may name a series (what the ``id`` fields accept)."""
    return _ID.fullmatch(text) is not None


class SeriesIn(BaseModel):
    """One series' points: values in time order, optional timestamps (ISO 8601 or epoch seconds)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="series id, e.g. 'web-1/cpu'", json_schema_extra=ID_SCHEMA)
    values: list[float | None] = Field(min_length=1, json_schema_extra={"maxItems": LIMITS.max_points},
                                       description=MISSING)
    timestamps: list[Timestamp] | None = Field(None, json_schema_extra={"maxItems": LIMITS.max_points})

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.fullmatch(v):
            raise ValueError("must be 1-400 printable characters, starting with a letter, a digit, _ or :")
        return v


class ForecastSeriesIn(SeriesIn):
    """A series to forecast from: every value known (a forecast reads its last window as it is)."""

    values: list[float] = Field(min_length=1, json_schema_extra={"maxItems": LIMITS.max_points})


class DetectRequest(BaseModel):
    """``POST /v1/detect``: score windows of one or many series from a fresh stream each."""

    model_config = ConfigDict(extra="forbid")

    series: list[SeriesIn] = Field(min_length=1, json_schema_extra={"maxItems": LIMITS.max_series})
    group: str = Field("default", json_schema_extra=NAME_SCHEMA)
    tenant: str | None = Field(None, pattern=NAME_PART, description="acts for this tenant; default: the credential's (another tenant: admins only, else 403)")
    detectors: list[Annotated[str, Field(json_schema_extra=NAME_SCHEMA)]] | None = Field(
        default=None, max_length=32,
        description="member families whose own scores each point reports under 'detectors' (default: every member; "
                    "[]: none). The ensemble score always combines every member; a family that is not a member "
                    "of the served model is refused (422 naming it)")


class StreamRequest(BaseModel):
    """``POST /v1/stream``: append new points of one series; the server keeps its history."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(json_schema_extra=ID_SCHEMA)
    values: list[float | None] = Field(min_length=1, json_schema_extra={"maxItems": LIMITS.max_points},
                                       description=MISSING)
    timestamps: list[Timestamp] | None = Field(None, json_schema_extra={"maxItems": LIMITS.max_points})
    group: str = Field("default", json_schema_extra=NAME_SCHEMA)
    tenant: str | None = Field(None, pattern=NAME_PART, description="acts for this tenant; default: the credential's (another tenant: admins only, else 403)")
    reset: bool = Field(default=False, description="forget the series' history first")

    _check_id = field_validator("id")(SeriesIn._id.__func__)


class StreamBatchRequest(BaseModel):
    """``POST /v1/stream/batch``: new points of many series of one group at once (e.g. one point for
    each of 1,000 series), scored in one vectorised pass per member where the family allows it."""

    model_config = ConfigDict(extra="forbid")

    series: list[SeriesIn] = Field(min_length=1, json_schema_extra={"maxItems": LIMITS.max_batch_series})
    group: str = Field("default", json_schema_extra=NAME_SCHEMA)
    tenant: str | None = Field(None, pattern=NAME_PART, description="acts for this tenant; default: the credential's (another tenant: admins only, else 403)")


class ForecastRequest(BaseModel):
    """``POST /v1/forecast``: one-step-ahead forecast of each series by a forecaster family."""

    model_config = ConfigDict(extra="forbid")

    series: list[ForecastSeriesIn] = Field(min_length=1, json_schema_extra={"maxItems": LIMITS.max_series})
    detector: str = Field("transformer", json_schema_extra=NAME_SCHEMA)
    group: str = Field("default", json_schema_extra=NAME_SCHEMA)
    tenant: str | None = Field(None, pattern=NAME_PART, description="acts for this tenant; default: the credential's (another tenant: admins only, else 403)")


class PromoteRequest(BaseModel):
    """``POST /v1/models/{name}/promote``: make a version champion (gated unless ``force``)."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, le=MAX_VERSION, description="default: the challenger")
    force: bool = Field(False, description="skip the quality gate (the serving check still applies)")
    reason: str = Field("", max_length=2000)


class RollbackRequest(BaseModel):
    """``POST /v1/models/{name}/rollback``: champion back to the previous good version (or ``to``)."""

    model_config = ConfigDict(extra="forbid")

    to: int | None = Field(None, ge=1, le=MAX_VERSION)
    reason: str = Field("", max_length=2000)


#: the values of a job's family and synthetic metric
Family = Literal[tuple(detectors.available())]
SyntheticMetric = Literal[synthetic.METRICS]


class SyntheticData(BaseModel):
    """A job's data: the anomaly-free head of a synthetic metric (``eyenet demo``'s telemetry)."""

    model_config = ConfigDict(extra="forbid")

    synthetic: SyntheticMetric = Field("cpu_pct", description="the metric")


class PrometheusData(BaseModel):
    """A job's data: one series of the app's Prometheus (``jobs.prometheus_url``) over the last ``range``."""

    model_config = ConfigDict(extra="forbid")

    prometheus: str = Field(min_length=1, max_length=4096, description="PromQL returning one series")
    range: str = Field("7d", max_length=32, description="how far back (a Prometheus duration)")
    step: str = Field("1m", max_length=32, description="the resolution (a Prometheus duration)")


class JobRequest(BaseModel):
    """``POST /v1/jobs``: train a family (its ``params`` as ``eyenet train --params``), or tune it
    (``params``: ``trials``, ``space``, ``seed``), on a data source; the version is registered as challenger."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train", "tune"]
    family: Family = Field(description="the detector family")
    group: str = Field("default", json_schema_extra=NAME_SCHEMA)
    tenant: str | None = Field(None, pattern=NAME_PART, description="acts for this tenant; default: the credential's (another tenant: admins only, else 403)")
    data: SyntheticData | PrometheusData = Field(default_factory=SyntheticData)
    params: dict[str, Any] = Field(default_factory=dict, description="train: the family's parameters; tune: trials, space, seed")


JobId = Annotated[str, Path(pattern=JOB_ID, description="a job's id, as POST /v1/jobs answered it")]
JobsLimit = Annotated[int, Query(ge=1, le=1000, description="jobs at most, newest first")]


def _one_of_timestamps_or_indices(schema: dict[str, Any]) -> None:
    """The schema of :class:`FeedbackRequest`: the points as ``timestamps`` or ``indices``, exactly one."""
    props = schema.get("properties", {})
    for key in ("timestamps", "indices"):
        prop = props.get(key, {})
        branches = [b for b in prop.get("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:  # not null: leave it out instead
            extra = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
            props[key] = {**branches[0], **extra}
    schema["oneOf"] = [{"required": ["timestamps"], "not": {"required": ["indices"]}},
                       {"required": ["indices"], "not": {"required": ["timestamps"]}}]


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: an operator's verdict on points of one series, by timestamp or by index."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of_timestamps_or_indices)

    id: str = Field(description="series id, as sent to /v1/detect or /v1/stream", json_schema_extra=ID_SCHEMA)
    label: Literal["true_anomaly", "false_alarm", "missed_anomaly"]
    timestamps: list[Timestamp] | None = Field(default=None, min_length=1,
                                               json_schema_extra={"maxItems": LIMITS.max_points, "uniqueItems": True},
                                               description="the points' timestamps (ISO 8601 or epoch seconds)")
    indices: list[Annotated[int, Field(json_schema_extra={"minimum": 0})]] | None = Field(
                                      default=None, min_length=1,
                                      json_schema_extra={"maxItems": LIMITS.max_points, "uniqueItems": True},
                                      description="the points' positions in the series (for a stream: its 'seen' count "
                                                  "before the point)")
    group: str = Field("default", json_schema_extra=NAME_SCHEMA)
    tenant: str | None = Field(None, pattern=NAME_PART, description="acts for this tenant; default: the credential's (another tenant: admins only, else 403)")
    detector: str = Field(default="ensemble", description="family of the model that scored the points",
                          json_schema_extra=NAME_SCHEMA)
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                                description="model version that scored the points, if known")
    note: str | None = Field(default=None, max_length=1000)

    _check_id = field_validator("id")(SeriesIn._id.__func__)

    @model_validator(mode="after")
    def _one_way_to_name_points(self) -> FeedbackRequest:
        if (self.timestamps is None) == (self.indices is None):
            raise ValueError("give the points as either 'timestamps' or 'indices', not both or neither")
        return self


def _values(values: list[float | None], where: str, missing: bool) -> np.ndarray:
    """The values as floats, ``None`` as NaN (a missing value, when ``missing`` allows it); an
    infinity is refused (and NaN when missing values are not allowed)."""
    x = np.asarray(values, dtype=float)  # None -> nan
    bad = np.isinf(x) if missing else ~np.isfinite(x)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidInputError(f"{where}[{i}]: not a finite number ({values[i]!r})")
    return x


def _timestamps(ts: list[Any] | None, n: int, where: str) -> np.ndarray | None:
    if ts is None:
        return None
    if len(ts) != n:
        raise InvalidInputError(f"{where}: {len(ts)} timestamps for {n} values")
    try:
        if all(isinstance(t, (int, float)) for t in ts):
            if not all(math.isfinite(t) for t in ts):
                raise ValueError("non-finite epoch seconds")
            out = (np.asarray(ts, dtype=float) * 1e9).astype("datetime64[ns]")
        else:
            import pandas as pd

            out = pd.to_datetime(pd.Series([str(t) for t in ts]), utc=True, format="ISO8601").dt.tz_localize(None) \
                .to_numpy().astype("datetime64[ns]")  # pandas 3 keeps the strings' resolution (seconds, µs)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"{where}: not parseable as timestamps ({exc})") from None
    d = np.diff(out.astype("int64"))
    if (d == 0).any():
        i = int(np.argmax(d == 0)) + 1
        raise InvalidInputError(f"{where}[{i}]: duplicate timestamp {ts[i]!r}")
    if (d < 0).any():
        i = int(np.argmax(d < 0)) + 1
        raise InvalidInputError(f"{where}[{i}]: timestamp {ts[i]!r} is earlier than the one before (unsorted)")
    return out


@dataclass(frozen=True)
class SeriesData:
    """A validated series of a request."""

    id: str
    values: np.ndarray
    timestamps: np.ndarray | None


def check_series(series: list[SeriesIn], limits: Limits = LIMITS, field: str = "series", *,
                 missing: bool = True, max_series: int | None = None,
                 max_total: int | None = None) -> list[SeriesData]:
    """Validated arrays of a request's series (``missing``: null or NaN values are kept as NaN, to be
    imputed); raises :class:`InvalidInputError` naming the field."""
    cap = limits.max_series if max_series is None else max_series
    if len(series) > cap:
        raise InvalidInputError(f"{field}: {len(series)} series in one request, at most {cap}")
    total = sum(len(s.values) for s in series)
    if max_total is not None and total > max_total:
        raise InvalidInputError(f"{field}: {total} points in one request, at most {max_total}")
    # every series' values converted and checked at once (a batch of 1,000 one-point series costs
    # one array, not 1,000); a bad value is then looked for series by series, to name it
    flat = np.asarray([v for s in series for v in s.values], dtype=float)  # None -> nan
    bad = np.isinf(flat) if missing else ~np.isfinite(flat)
    any_bad = bool(bad.any())
    seen: set[str] = set()
    out = []
    at = 0
    for j, s in enumerate(series):
        where = f"{field}[{j}]"
        if s.id in seen:
            raise InvalidInputError(f"{where}.id: series {s.id!r} appears twice in the request")
        seen.add(s.id)
        n = len(s.values)
        if n > limits.max_points:
            raise InvalidInputError(f"{where}.values: {n} points, at most {limits.max_points} per series")
        x = _values(s.values, f"{where}.values", missing) if any_bad else flat[at:at + n].copy()  # owns its data
        at += n
        out.append(SeriesData(s.id, x, None if s.timestamps is None
                              else _timestamps(s.timestamps, n, f"{where}.timestamps")))
    return out


def check_feedback(req: FeedbackRequest, limits: Limits = LIMITS, *, now: float | None = None,
                   by: str | None = None) -> Feedback:
    """Validate a request beyond its schema (model name, point count, timestamps) into a
    :class:`~eyenet.monitoring.feedback.Feedback`; raises :class:`InvalidInputError` /
    :class:`~eyenet.core.errors.InvalidParameterError` naming the field."""
    name = reg.model_name(req.detector, group=req.group, tenant=req.tenant or DEFAULT_TENANT)
    points = req.timestamps if req.timestamps is not None else req.indices
    where = "timestamps" if req.timestamps is not None else "indices"
    if len(points) > limits.max_points:
        raise InvalidInputError(f"{where}: {len(points)} points, at most {limits.max_points} per request")
    timestamps = indices = None
    if req.timestamps is not None:
        timestamps = _iso(req.timestamps)
        keys: list[Any] = timestamps
    else:
        indices = list(req.indices)
        for i, v in enumerate(indices):
            if v < 0:
                raise InvalidInputError(f"indices[{i}]: {v} is negative")
        keys = indices
    seen: dict[Any, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            raise InvalidInputError(f"{where}[{i}]: the same point as {where}[{seen[k]}]")
        seen[k] = i
    return Feedback(model=name, series=req.id, label=req.label, points=len(points), timestamps=timestamps,
                    indices=indices, version=req.version, note=req.note, by=by,
                    received=time.time() if now is None else now)


def _iso(ts: list[str | float]) -> list[str]:
    """Timestamps as ISO 8601 UTC text (epoch seconds or ISO 8601 in)."""
    import pandas as pd

    out = []
    for i, t in enumerate(ts):
        try:
            if isinstance(t, (int, float)):
                if not np.isfinite(t):
                    raise ValueError("not a finite number")
                stamp = pd.Timestamp(t, unit="s", tz="UTC")
            else:
                stamp = pd.Timestamp(t)
                stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInputError(f"timestamps[{i}]: {t!r} is not a timestamp ({exc})") from None
        out.append(stamp.isoformat())
    return out


def check_detectors(detectors: list[str] | None, members: list[str], model: str,
                    field: str = "detectors") -> set[str]:
    """The member families a request asks to report (``None``: every member); raises
    :class:`InvalidInputError` naming the first entry that is not a member of ``model``."""
    if detectors is None:
        return set(members)
    for i, f in enumerate(detectors):
        if f not in members:
            raise InvalidInputError(f"{field}[{i}]: {f!r} is not a member of {model} (members: {sorted(set(members))})")
    return set(detectors)


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One line naming the first bad field of pydantic/FastAPI errors: ``series[0].values[3]: ...``."""
    err = errors[0] if errors else {}
    parts = list(err.get("loc", ()))
    if parts and parts[0] == "body":  # FastAPI prefixes body fields
        parts = parts[1:]
    loc = ""
    for part in parts:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    return f"{loc or 'body'}: {err.get('msg', 'invalid request')}"


def result_body(name: str, version: int, families: list[str], missing: list[str], scores: Any,
                member_calibrated: np.ndarray, report: set[str] | None = None,
                imputed: np.ndarray | None = None, expected: np.ndarray | None = None, *,
                shares: np.ndarray | None = None, halfwidth: float | None = None, threshold: float = 1.0,
                critical: float = 1.0) -> dict[str, Any]:
    """The JSON of one scored series. Per point: the ensemble ``score`` and ``alarm``; its
    ``severity`` (``warning``, ``critical`` at ``critical`` and above, ``normal`` without an alarm,
    None before the model is ready); each answering member's score under ``detectors`` (of the
    members in ``report`` only, when given) and its ``shares`` of the ensemble score; ``agreement``,
    the fraction of answering members on the ensemble's side of the alarm ``threshold``; the value
    the model ``expected`` and the ``band`` around it (± ``halfwidth``, which held
    :data:`eyenet.core.model.BAND_COVERAGE` of the held-out points; None where it has none). ``imputed`` points (filled in for a missing value or
    timestamp) say so and carry no score."""

    def nums(a: np.ndarray) -> list[float | None]:
        return [v if v == v and abs(v) != np.inf else None for v in np.asarray(a, dtype=float).tolist()]

    n = len(scores.score)
    score_a = np.asarray(scores.score, dtype=float)
    ready_a = np.isfinite(score_a)
    alarm_a = np.asarray(scores.alarm, dtype=bool)
    score, calibrated, alarm = nums(score_a), nums(scores.calibrated), alarm_a.tolist()
    shown = [j for j, f in enumerate(families) if f not in missing and (report is None or f in report)]
    names = [families[j] for j in shown]
    cal = np.asarray(member_calibrated, dtype=float)
    detectors = [dict(zip(names, row)) for row in zip(*(nums(cal[:, j]) for j in shown))] if shown else None
    parts = [dict(zip(names, row)) for row in zip(*(nums(np.round(shares[:, j], 4)) for j in shown))] \
        if shown and shares is not None else None
    severity = np.where(alarm_a, np.where(score_a >= critical, "critical", "warning"), "normal").tolist()
    here = [j for j, f in enumerate(families) if f not in missing]
    agree = nums(np.round(((cal[:, here] >= threshold) == (score_a >= threshold)[:, None]).mean(axis=1), 4)) \
        if here else [None] * n
    if expected is not None:
        e_a = np.asarray(expected, dtype=float)
        exp = nums(e_a)
        lo, hi = (nums(e_a - halfwidth), nums(e_a + halfwidth)) if halfwidth is not None else ([None] * n,) * 2
    else:
        exp = lo = hi = [None] * n
    ready = ready_a.tolist()
    points = [
        {"score": score[i], "calibrated": calibrated[i], "alarm": alarm[i], "ready": ready[i],
         "severity": severity[i] if ready[i] else None, "expected": exp[i],
         "band": None if lo[i] is None else [lo[i], hi[i]],
         "detectors": detectors[i] if detectors is not None else {},
         "shares": parts[i] if parts is not None and ready[i] else {},
         "agreement": agree[i] if ready[i] else None}
        for i in range(n)
    ]
    if imputed is not None:
        for i in np.flatnonzero(imputed).tolist():
            points[i].update(imputed=True, ready=False, calibrated=None, detectors={}, shares={}, severity=None,
                             agreement=None)
    return {"model": name, "version": version, "degraded": bool(missing), "missing": sorted(missing), "points": points}
