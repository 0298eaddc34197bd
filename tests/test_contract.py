"""The detector contract, checked for every family registered under the ``eyenet.core.detectors`` entry points.

Every family, present and future, must: take keyword-only parameters and only
store them; learn in ``fit`` (returning self, learned state ending in ``_``);
score causally with higher = more anomalous and NaN for "not ready"; round-trip
through dicts and through safe (pickle-free) artifacts; and reject bad input,
bad parameters and corrupt artifacts with the matching EyenetError. The same
holds for an :class:`~eyenet.core.model.AnomalyModel` wrapped around it, whose
point-by-point stream must equal its one-shot scores.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eyenet.core import detectors
from eyenet.core.detectors.base import Detector
from eyenet.core.errors import (
    ArtifactError,
    InvalidInputError,
    InvalidParameterError,
    NotEnoughDataError,
    NotFittedError,
)
from eyenet.core.model import AnomalyModel, StreamState

FAMILIES = detectors.available()


def _is_torch(family: str) -> bool:
    return any(c.__name__ == "TorchDetector" for c in detectors.get_class(family).__mro__)


FAMILY_PARAMS = [pytest.param(f, marks=pytest.mark.torch) if _is_torch(f) else f for f in FAMILIES]

_TORCH = dict(window=16, hidden=8, max_epochs=3, patience=2, device="cpu")
_SMALL: dict[str, dict[str, Any]] = {
    "zscore": dict(window=16),
    "mad": dict(window=16),
    "iqr": dict(window=16),
    "iforest": dict(window=16, n_estimators=25, max_samples=64),
    "lstm": _TORCH,
    "gru": _TORCH,
    "cnn": _TORCH,
    "transformer": _TORCH,
    "lstm_ae": _TORCH,
    "seasonal": dict(cycles=3),
    "classifier": dict(window=16, short=4, n_estimators=20),
    "ensemble": dict(
        members=[
            {"family": "zscore", "params": {"window": 16}},
            {"family": "mad", "params": {"window": 16}},
            {"family": "iforest", "params": {"window": 16, "n_estimators": 25, "max_samples": 64}},
        ]
    ),
}

N_TRAIN, N_TEST, SPIKE, PERIOD = 500, 300, 200, 25


def small_params(family: str) -> dict[str, Any]:
    """Quick parameters for the known families; a plugin family gets its defaults."""
    if family in _SMALL:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in _SMALL[family].items()}
    return {}


def make(family: str, **overrides: Any) -> Detector:
    return detectors.get_class(family)(**{**small_params(family), **overrides})


def sine(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sin(2 * np.pi * np.arange(n) / PERIOD) + 0.1 * rng.standard_normal(n)


TRAIN = sine(N_TRAIN, 0)
TEST = sine(N_TEST, 1)
TEST[SPIKE] += 6.0


def learn(det: Any, x: Any) -> Any:
    """``det.fit(x)``; a family that learns from labels (``supervised``) learns from ``x`` with spikes
    planted every 40 points and labelled as the anomalies."""
    inner = det.detector if isinstance(det, AnomalyModel) else det
    if not inner.supervised:
        return det.fit(x)
    a = np.array(x, dtype=float)
    y = np.zeros(len(a))
    if a.ndim == 1 and len(a) > 40:
        y[20::40] = 1.0
        a[20::40] += 4.0
    return det.fit(a, labels=y)


def bad_values(family: str) -> dict[str, Any]:
    """For every parameter, a value its declared constraint rejects."""
    out = {}
    for k, check in detectors.get_class(family)._constraints.items():
        for v in (-1, "not-a-valid-value", None, 10**15):
            if not check(v):
                out[k] = v
                break
    return out


@pytest.fixture(scope="module", params=FAMILY_PARAMS)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def fitted(family: str) -> Detector:
    return learn(make(family), TRAIN)


@pytest.fixture(scope="module")
def test_scores(fitted: Detector) -> np.ndarray:
    return fitted.score(TEST)


@pytest.fixture(scope="module")
def model(family: str) -> AnomalyModel:
    return learn(AnomalyModel.from_dict({"detector": make(family).to_dict()}), TRAIN)


# -- construction and parameters ----------------------------------------------------------------------
def test_constructor_is_keyword_only(family: str) -> None:
    cls = detectors.get_class(family)
    sig = inspect.signature(cls.__init__)
    kinds = {p.kind for name, p in sig.parameters.items() if name != "self"}
    assert kinds <= {inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD}
    first = next(iter(cls().get_params().values()))
    with pytest.raises(TypeError):
        cls(first)


def test_constructor_stores_params_unchanged_and_learns_nothing(family: str) -> None:
    params = small_params(family)
    det = make(family)
    for k, v in params.items():
        assert getattr(det, k) == v
    assert {k: v for k, v in det.get_params().items() if k in params} == params
    assert not [a for a in vars(det) if a.endswith("_") and not a.startswith("__")]
    assert not det.is_fitted
    # no validation in __init__: an out-of-range value is stored as given and only rejected at fit time
    for k, v in bad_values(family).items():
        assert getattr(make(family, **{k: v}), k) == v, k


def test_params_round_trip_through_set_params_and_dicts(family: str) -> None:
    det = make(family)
    params = det.get_params()
    assert set(params) == set(type(det)._constraints)
    assert det.set_params(**params) is det
    assert det.get_params() == params
    config = json.loads(json.dumps(det.to_dict()))  # plain JSON
    assert config["family"] == family
    again = detectors.from_dict(config)
    assert type(again) is type(det) and again.get_params() == params
    assert det.clone().get_params() == params
    with pytest.raises(InvalidParameterError, match="no_such_param"):
        det.set_params(no_such_param=1)
    with pytest.raises(InvalidParameterError, match="no_such_param"):
        detectors.create(family, no_such_param=1)


def test_bad_param_value_raises_naming_the_param(family: str) -> None:
    bad = bad_values(family)
    assert bad, f"{family}: declares no constraints"
    for k, v in bad.items():
        params = {**small_params(family), k: v}
        with pytest.raises(InvalidParameterError, match=k):
            detectors.create(family, **params)
        with pytest.raises(InvalidParameterError, match=k):
            detectors.from_dict({"family": family, "params": params})
        with pytest.raises(InvalidParameterError, match=k):
            learn(detectors.get_class(family)(**params), TRAIN)


# -- fitting ---------------------------------------------------------------------------------------------
def test_score_before_fit_raises_not_fitted(family: str, tmp_path: Path) -> None:
    det = make(family)
    with pytest.raises(NotFittedError):
        det.score(TEST)
    with pytest.raises(NotFittedError):
        det.score_last(TEST)
    with pytest.raises(NotFittedError):
        det.save(tmp_path / "d")
    with pytest.raises(NotFittedError):
        AnomalyModel(det).score(TEST)


def test_fit_returns_self_and_learned_attributes_end_in_underscore(family: str) -> None:
    det = make(family)
    before = set(vars(det))
    params = det.get_params()
    assert learn(det, TRAIN) is det
    added = set(vars(det)) - before
    assert added and all(a.endswith("_") for a in added), sorted(added)
    assert det.is_fitted
    assert det.get_params() == params  # fit leaves the parameters alone


def test_too_short_fit_raises_not_enough_data(family: str) -> None:
    det = make(family)
    with pytest.raises(NotEnoughDataError):
        learn(det, TRAIN[: det.min_fit - 1])
    with pytest.raises(NotEnoughDataError):
        learn(det, [])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_input_raises_invalid_input(family: str, fitted: Detector, bad: float) -> None:
    x = TRAIN.copy()
    x[123] = bad
    with pytest.raises(InvalidInputError):
        learn(make(family), x)
    with pytest.raises(InvalidInputError):
        fitted.score(x)
    with pytest.raises(InvalidInputError):
        fitted.score_last(x[:130])


def test_2d_input_raises_invalid_input(family: str, fitted: Detector) -> None:
    with pytest.raises(InvalidInputError):
        learn(make(family), np.column_stack([TRAIN, TRAIN]))
    with pytest.raises(InvalidInputError):
        fitted.score(TEST.reshape(-1, 1))
    with pytest.raises(InvalidInputError):
        fitted.score_last(TEST.reshape(20, -1))


# -- scoring ---------------------------------------------------------------------------------------------
def test_raw_score_is_higher_at_a_spike_than_typical(test_scores: np.ndarray) -> None:
    s = test_scores
    assert s[SPIKE] > np.nanmedian(s)
    assert s[SPIKE] >= np.nanpercentile(s, 95)


def test_nan_exactly_where_not_ready(fitted: Detector, test_scores: np.ndarray) -> None:
    h = fitted.min_history
    assert h >= 1
    assert len(test_scores) == len(TEST)
    assert np.isnan(test_scores[: h - 1]).all()
    assert np.isfinite(test_scores[h - 1 :]).all()
    short = fitted.score(TEST[: h - 1])
    assert len(short) == h - 1 and np.isnan(short).all()


def test_scores_are_causal(fitted: Detector, test_scores: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    for j in (fitted.min_history + 3, 150, N_TEST - 1):
        x = TEST.copy()
        x[j:] += rng.normal(0.0, 5.0, N_TEST - j)
        changed = fitted.score(x)
        np.testing.assert_allclose(changed[:j], test_scores[:j], rtol=1e-9, atol=1e-12)


def test_score_last_equals_score(fitted: Detector, test_scores: np.ndarray) -> None:
    h = fitted.min_history
    for i in sorted({0, max(h - 2, 0), h - 1, h, 150, SPIKE, N_TEST - 1}):
        last = fitted.score_last(TEST[: i + 1])
        assert isinstance(last, float)
        assert np.allclose(last, test_scores[i], rtol=1e-5, atol=1e-6, equal_nan=True), (i, last, test_scores[i])


# -- members: what a model ranks and combines ------------------------------------------------------------
def test_members_are_fitted_detectors_whose_raw_scores_combine_into_the_detectors(fitted: Detector,
                                                                                   test_scores: np.ndarray) -> None:
    members = fitted.member_detectors
    assert members and all(isinstance(m, Detector) and m.is_fitted for m in members)
    assert all(m.member_detectors == [m] for m in members)  # one level: a member has no members of its own
    raw = np.column_stack([m.score(TEST) for m in members])
    np.testing.assert_array_equal(fitted.combine_raw(raw), test_scores)
    assert fitted.min_history == max(m.min_history for m in members)


def test_model_ranks_one_score_history_per_member(model: AnomalyModel) -> None:
    assert model.member_families == [m.family for m in model.detector.member_detectors]
    assert len(model.reference_) == len(model.detector.member_detectors)
    assert model.member_calibrated(np.column_stack([m.score(TEST) for m in model.detector.member_detectors])).shape \
        == (len(TEST), len(model.reference_))


def test_a_single_detector_is_its_own_only_member() -> None:
    det = make("zscore")
    assert det.member_detectors == [det]
    det.fit(TRAIN)
    assert det.member_detectors == [det]


def test_an_ensembles_members_are_its_detectors() -> None:
    ens = make("ensemble")
    assert [d.family for d in ens.member_detectors] == ["zscore", "mad", "iforest"]
    assert not any(d.is_fitted for d in ens.member_detectors)
    ens.fit(TRAIN)
    assert [d.family for d in ens.member_detectors] == ["zscore", "mad", "iforest"]
    assert all(d.is_fitted for d in ens.member_detectors)
    assert ens.member_detectors[0] is ens.member_detectors[0]  # the fitted members, not new ones


class _Pair(Detector):
    """A composite from outside the package: a z-score and a MAD detector, their calibrated scores averaged."""

    family = "pair"
    _constraints: dict[str, Any] = {}

    def __init__(self) -> None:
        self.parts_ = [detectors.create("zscore", window=16), detectors.create("mad", window=16)]

    @property
    def member_detectors(self) -> list[Detector]:
        return self.parts_

    @property
    def min_history(self) -> int:
        return max(d.min_history for d in self.parts_)

    def _fit(self, x: np.ndarray) -> None:
        for d in self.parts_:
            d.fit(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.combine_raw(np.column_stack([d.score(x) for d in self.parts_]))[self.min_history - 1 :]

    def combine_raw(self, member_raw: np.ndarray) -> np.ndarray:
        return member_raw.mean(axis=1)

    def calibrate_members(self, member_raw: np.ndarray, calibrator: Any) -> np.ndarray:
        return np.column_stack([calibrator.transform(c) for c in member_raw.T])

    def combine_scores(self, s: np.ndarray) -> np.ndarray:
        return s.mean(axis=1)

    def combine_row(self, s: list[float]) -> float:
        return float(np.mean(s))


def test_the_model_serves_any_composite_through_the_contract() -> None:
    """The model knows no detector class: a composite it has never heard of ranks and streams like an ensemble."""
    model = AnomalyModel(_Pair()).fit(TRAIN)
    assert model.member_families == ["zscore", "mad"] and len(model.reference_) == 2
    whole = model.score(TEST)
    state, parts = None, []
    for v in TEST:
        out, state = model.score_stream([v], state)
        parts.append(out)
    _assert_same_scores(_concat(parts), whole)
    assert len(state.scores) == 2
    assert whole.score[SPIKE] == np.nanmax(whole.score)


def test_torch_families_are_named_without_importing_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from eyenet.core.detectors import TORCH_FAMILIES; print(TORCH_FAMILIES, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    assert set(detectors.TORCH_FAMILIES) == {f for f in FAMILIES if _is_torch(f) and
                                             detectors.get_class(f).__module__.startswith("eyenet.")}


# -- artifacts -------------------------------------------------------------------------------------------
def test_save_load_gives_identical_scores(fitted: Detector, test_scores: np.ndarray, tmp_path: Path) -> None:
    d = fitted.save(tmp_path / "det")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "state.npz"]
    with np.load(d / "state.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert all(z[k].dtype != object for k in z.files)
    loaded = detectors.load(d)
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.score(TEST), test_scores)


def _saved(fitted: Detector, tmp_path: Path) -> Path:
    return fitted.save(tmp_path / "det")


def test_corrupt_state_raises_artifact_error(fitted: Detector, tmp_path: Path) -> None:
    d = _saved(fitted, tmp_path)
    good = (d / "state.npz").read_bytes()
    (d / "state.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ArtifactError):
        detectors.load(d)
    (d / "state.npz").write_bytes(b"this is not an npz file")
    with pytest.raises(ArtifactError):
        detectors.load(d)
    (d / "state.npz").unlink()
    with pytest.raises(ArtifactError):
        detectors.load(d)


def test_state_needing_pickle_raises_artifact_error(fitted: Detector, tmp_path: Path) -> None:
    d = _saved(fitted, tmp_path)
    with np.load(d / "state.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[next(iter(arrays), "payload")] = np.array([{"x": 1}, None], dtype=object)
    np.savez(d / "state.npz", **arrays)
    with pytest.raises(ArtifactError):
        detectors.load(d)


def test_incomplete_state_or_config_raises_artifact_error(fitted: Detector, tmp_path: Path) -> None:
    d = _saved(fitted, tmp_path)
    np.savez(d / "state.npz", unrelated=np.zeros(3))
    with pytest.raises(ArtifactError):
        detectors.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError):
        detectors.load(d)


# -- inside an AnomalyModel ------------------------------------------------------------------------------
def test_model_scores_are_calibrated_to_unit_interval(model: AnomalyModel) -> None:
    out = model.score(TEST)
    assert len(out) == len(TEST)
    assert np.array_equal(np.isnan(out.calibrated), np.isnan(out.raw))
    cal = out.calibrated[np.isfinite(out.calibrated)]
    assert len(cal) and (cal >= 0).all() and (cal <= 1).all()
    sc = out.score[np.isfinite(out.score)]
    assert len(sc) and (sc >= 0).all() and (sc <= 1).all()
    assert out.alarm.dtype == bool and not out.alarm[~out.ready].any()
    assert out.calibrated[SPIKE] >= np.nanpercentile(out.calibrated, 95)


def _assert_same_scores(a: Any, b: Any) -> None:
    for name in ("raw", "calibrated", "score"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(np.isnan(x), np.isnan(y)), name
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(a.alarm, b.alarm)


def _concat(parts: list[Any]) -> Any:
    from eyenet.core.model import Scores

    return Scores(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("raw", "calibrated", "score", "alarm")))


def test_stream_point_by_point_equals_one_shot(model: AnomalyModel) -> None:
    whole = model.score(TEST)
    state = model.new_state()
    parts = []
    for v in TEST:
        out, state = model.score_stream([v], state)
        parts.append(out)
        state = StreamState.from_dict(json.loads(json.dumps(state.to_dict())))  # as a service would keep it
    assert state.seen == len(TEST)
    _assert_same_scores(_concat(parts), whole)


def test_stream_in_uneven_chunks_equals_one_shot(model: AnomalyModel) -> None:
    whole = model.score(TEST)
    state, parts, start = None, [], 0
    for size in (1, 7, 0, 50, 3, N_TEST):
        out, state = model.score_stream(TEST[start : start + size], state)
        parts.append(out)
        start += size
    _assert_same_scores(_concat(parts), whole)


def test_model_save_load_gives_identical_scores(model: AnomalyModel, tmp_path: Path) -> None:
    model.save(tmp_path / "model")
    loaded = AnomalyModel.load(tmp_path / "model")
    assert loaded.to_dict() == model.to_dict()
    a, b = model.score(TEST), loaded.score(TEST)
    for name in ("raw", "calibrated", "score", "alarm"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
