"""The detector contract every family implements.

A detector is built from keyword-only parameters (stored, never validated in
``__init__``), learns in ``fit`` (learned state ends in ``_``) and returns raw
scores where HIGHER means MORE anomalous. Scores are causal: the score at
position ``i`` depends only on ``values[: i + 1]``. A position without enough
history is NaN, which means "not ready", never "normal".

Subclasses declare ``family``, ``_constraints`` (param -> check), and implement
``_fit(x)``, ``_score(x)`` and ``min_history``. State that must be saved is
returned by ``_state()`` as numpy arrays and restored by ``_set_state``; the
base class stores it as ``.npz`` without pickle, next to a JSON config.

A model (:class:`eyenet.core.model.AnomalyModel`) ranks the raw scores of the
detector's ``member_detectors`` one column each and asks the detector to
combine them (``fit_split``, ``combine_raw``, ``calibrate_members``,
``combine_scores``, ``combine_row``). The defaults describe a single detector;
a composite such as the ensemble overrides them, so the model never needs to
know which kind it holds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import numpy as np

from eyenet.core.errors import ArtifactError, InvalidInputError, InvalidParameterError, NotEnoughDataError, NotFittedError

Constraint = Callable[[Any], bool]


class Calibration(Protocol):
    """Raw scores -> [0, 1] (e.g. :class:`eyenet.core.calibration.TailCalibrator`)."""

    def transform(self, raw: np.ndarray) -> np.ndarray: ...


def interval(low: float | None = None, high: float | None = None, *, integer: bool = False) -> Constraint:
    """A constraint: a number in [low, high] (either end open when None)."""

    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return False
        if integer and int(v) != v:
            return False
        return (low is None or v >= low) and (high is None or v <= high)

    check.__doc__ = f"{'an integer' if integer else 'a number'} in [{low}, {high}]"
    return check


def one_of(*options: Any) -> Constraint:
    def check(v: Any) -> bool:
        return v in options

    check.__doc__ = f"one of {list(options)}"
    return check


def as_series(values: Any, *, name: str = "values") -> np.ndarray:
    """Validate and return a finite float64 1-D array."""
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name}: not numeric ({exc})") from None
    if x.ndim != 1:
        raise InvalidInputError(f"{name}: expected a 1-D series, got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"{name}: {int(bad.sum())} non-finite value(s), first at position {i} ({x[i]})")
    return x


#: labels are 1 (anomaly), 0 (normal) or NaN (unknown: not learned from)
ANOMALY, NORMAL = 1.0, 0.0


def check_labels(labels: Any, n: int, where: str = "labels") -> np.ndarray:
    """``labels`` as floats of length ``n``, each 1, 0 or NaN; anything else is an error naming it."""
    try:
        y = np.asarray(labels, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}: expected numbers 1 (anomaly), 0 (normal) or null (unknown)") from None
    if len(y) != n:
        raise InvalidInputError(f"{where}: {len(y)} labels for {n} values")
    bad = np.isfinite(y) & (y != ANOMALY) & (y != NORMAL)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"{where}: label {float(y[i])!r} at row {i} is not 1 (anomaly), 0 (normal) or null")
    return y


class Detector:
    """Base class: parameter handling, validation, calibration, save/load."""

    family: ClassVar[str] = ""
    #: whether :meth:`expected_many` gives the value the detector expected (a forecast, a baseline)
    expects: ClassVar[bool] = False
    #: whether ``fit`` learns from labels (``fit(values, labels=...)``) rather than from normal-looking data
    supervised: ClassVar[bool] = False
    _constraints: ClassVar[dict[str, Constraint]] = {}
    #: extra points beyond ``min_history`` that ``fit`` needs
    _min_fit_extra: ClassVar[int] = 8

    # -- parameters -----------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._constraints}

    def set_params(self, **params: Any) -> "Detector":
        for k, v in params.items():
            if k not in self._constraints:
                raise InvalidParameterError(f"{self.family}: unknown parameter {k!r} (known: {sorted(self._constraints)})")
            setattr(self, k, v)
        return self

    def _validate_params(self) -> None:
        for k, check in self._constraints.items():
            v = getattr(self, k)
            if not check(v):
                raise InvalidParameterError(f"{self.family}: parameter {k}={v!r} must be {check.__doc__}")

    def to_dict(self) -> dict[str, Any]:
        """Config that round-trips through :func:`eyenet.core.detectors.from_dict`."""
        return {"family": self.family, "params": _jsonable(self.get_params())}

    def clone(self) -> "Detector":
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- learning and scoring -----------------------------------------------------------
    @property
    def min_history(self) -> int:
        """Points needed before the first ready score (the score at index min_history-1)."""
        raise NotImplementedError

    @property
    def context(self) -> int:
        """Points a score may depend on (the scored one included): at least ``min_history``.

        A stream keeps the last ``context - 1`` values so that scoring point by
        point gives the same numbers as scoring the whole series.
        """
        return self.min_history

    @property
    def min_fit(self) -> int:
        return self.min_history + self._min_fit_extra

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "fitted_", False)

    def fit(self, values: Any, labels: Any = None) -> "Detector":
        """Learn from a (normal-looking) training series. Returns self.

        ``labels`` (1 anomaly, 0 normal, NaN unknown, one per value; :func:`check_labels`) are what a
        :attr:`supervised` family learns from, and it refuses to fit without them; ``_fit`` reads
        them as ``self._labels`` (None without labels), which is gone once ``fit`` returns."""
        self._validate_params()
        x = as_series(values)
        y = None if labels is None else check_labels(labels, len(x))
        if self.supervised and y is None:
            raise NotEnoughDataError(f"{self.family}: learns from labels: fit(values, labels=...)")
        if len(x) < self.min_fit:
            raise NotEnoughDataError(f"{self.family}: fit needs at least {self.min_fit} points, got {len(x)}")
        self._labels = y
        try:
            self._fit(x)
        finally:
            del self._labels
        self.fitted_ = True
        return self

    def score(self, values: Any) -> np.ndarray:
        """Raw causal scores (higher = more anomalous); NaN where not ready."""
        if not self.is_fitted:
            raise NotFittedError(f"{self.family}: call fit() before score()")
        x = as_series(values)
        out = np.full(len(x), np.nan)
        h = self.min_history
        if len(x) >= h:
            out[h - 1 :] = self._score(x)
        return out

    def score_many(self, windows: list[np.ndarray], n_new: list[int]) -> list[np.ndarray]:
        """Raw scores of the last ``n_new[i]`` points of each ``windows[i]``: many series at once
        (the batch stream path), the numbers :meth:`score` gives each alone. Families that can
        score the windows in one vectorised pass override it (e.g. one forward pass of a network
        over every window stacked)."""
        return [self.score(w)[len(w) - n :] for w, n in zip(windows, n_new)]

    def expected_many(self, windows: list[np.ndarray], n_new: list[int]) -> list[np.ndarray]:
        """What this detector expected at the last ``n_new[i]`` points of each ``windows[i]``, in the
        series' units (a forecast, a seasonal baseline); NaN where it expects nothing (not ready,
        or a family without an expected value: ``expects`` False)."""
        return [np.full(n, np.nan) for n in n_new]

    @property
    def raw_unit(self) -> float | None:
        """How far from the expected value, in the series' units, a raw score of 1 lies (raw scores
        of an expecting detector grow with that distance), or None: no expected value."""
        return None

    @property
    def validation_error(self) -> float | None:
        """How well the fitted detector predicts data it did not train on, in units of the series'
        spread (a forecaster's validation RMS error over the robust standard deviation: 0.1 is a
        miss a tenth of the usual variation), or None: this family does not predict values."""
        return None

    def warm(self) -> None:
        """Build now what the real-time path would build on its first point (a compiled network):
        a serving replica calls it while loading a model, so the first request does not wait."""

    def score_last(self, window: Any) -> float:
        """Raw score of the last point of ``window`` (the real-time path). NaN if not ready."""
        if not self.is_fitted:
            raise NotFittedError(f"{self.family}: call fit() before score_last()")
        x = as_series(window)
        if len(x) < self.min_history:
            return float("nan")
        return float(self._score(x[-max(self.context, self.min_history) :])[-1])

    # -- members: what a model ranks and combines ------------------------------------------
    @property
    def member_detectors(self) -> list["Detector"]:
        """The detectors whose raw scores a model ranks, one column each: this one by default."""
        return [self]

    def fit_split(self, values: Any, split: int, labels: np.ndarray | None = None) -> "Detector":
        """Fit for a model that keeps ``values[split:]`` for calibration: learn from the part before it
        (with its ``labels`` when this detector is :attr:`supervised`)."""
        return self.fit(as_series(values)[:split], labels=None if labels is None else labels[:split])

    def combine_raw(self, member_raw: np.ndarray) -> np.ndarray:
        """This detector's raw scores from its members' raw scores (one column per member)."""
        return member_raw[:, 0]

    def calibrate_members(self, member_raw: np.ndarray, calibrator: Calibration) -> np.ndarray:
        """Each member's calibrated [0, 1] score, shaped like ``member_raw``; a member without a
        calibration of its own uses ``calibrator`` (the model's)."""
        return calibrator.transform(member_raw[:, 0])[:, None]

    def combine_scores(self, s: np.ndarray) -> np.ndarray:
        """One score per row of a (points, members) matrix of [0, 1] scores."""
        return s[:, 0]

    def combine_row(self, s: list[float]) -> float:
        """:meth:`combine_scores` of one row, without arrays (the real-time path)."""
        return s[0]

    def shares(self, s: np.ndarray) -> np.ndarray:
        """Each member's share of the combination of the rows of ``s`` (points, members; NaN: a
        member left out), rows summing to 1 (NaN where nothing is ready)."""
        return np.where(np.isfinite(s), 1.0, np.nan)

    def _fit(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, x: np.ndarray) -> np.ndarray:
        """Scores for positions ``min_history-1 .. len(x)-1`` (length ``len(x)-min_history+1``)."""
        raise NotImplementedError

    # -- persistence --------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    def restore(self, state: dict[str, np.ndarray]) -> "Detector":
        """Become the fitted detector whose :meth:`_state` was ``state``. Returns self."""
        self._set_state(state)
        self.fitted_ = True
        return self

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``state.npz`` (no pickle) into directory ``path``."""
        if not self.is_fitted:
            raise NotFittedError(f"{self.family}: cannot save an unfitted detector")
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        np.savez(d / "state.npz", **self._state())
        return d

    @classmethod
    def _load_state(cls, d: Path) -> dict[str, np.ndarray]:
        return load_npz(Path(d) / "state.npz")

def normal_rows(labels: np.ndarray | None, start: int, n: int) -> np.ndarray | slice:
    """Which of the ``n`` rows from ``start`` are not labelled anomalous (all without labels): what a
    calibration learns "usual" from."""
    if labels is None:
        return slice(None)
    return ~(np.asarray(labels[start : start + n], dtype=float) == ANOMALY)


def load_npz(f: Path) -> dict[str, np.ndarray]:
    """Arrays from an ``.npz`` file, refusing anything that needs pickle."""
    try:
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ArtifactError(f"{f}: missing model state") from None
    except Exception as exc:  # noqa: BLE001 - zip/format errors and pickle refusals alike
        raise ArtifactError(f"{f}: not a readable safe array file ({type(exc).__name__}: {exc})") from None


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v
