"""The real-time (one new point) fast paths give the numbers of the general paths.

Scalar calibration equals array calibration bit for bit; ranking and novelty of
a few points (a scan of the history) equal the sorted batch path; the
ensemble's one-point combination equals its array combination; a torch
detector's single window (through ONNX Runtime on CPU) equals the eager network within float32
rounding.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from eyenet.core import detectors
from eyenet.core.calibration import FEW, RunningRank, TailCalibrator
from eyenet.core.detectors.forecasters import CNNForecaster, GRUForecaster, LSTMForecaster, TransformerForecaster
from eyenet.core.detectors.lstm_ae import LSTMAutoencoder
from eyenet.core.detectors import torch_common
from eyenet.core.detectors.torch_common import ONE_WINDOW_TOLERANCE, predict
from eyenet.core.model import AnomalyModel


# -- calibration -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scalar_calibration_equals_array_calibration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cal = TailCalibrator().fit(rng.gamma(2.0, 1.0, 400).round(2))  # ties in the body
    raw = np.r_[
        rng.uniform(-1.0, 15.0, 3000),  # below, inside and beyond the body
        cal.body_[::7],  # exactly on held-out scores
        cal.threshold_, np.nextafter(cal.threshold_, np.inf), 1e6,  # tail start, far tail (clipped to 1)
        np.nan, np.inf, -np.inf,
    ]
    array = cal.transform(raw)
    one = np.array([cal.transform_one(float(r)) for r in raw])
    np.testing.assert_array_equal(one, array)
    np.testing.assert_array_equal(np.concatenate([cal.transform(raw[i : i + 1]) for i in range(len(raw))]), array)


# -- running rank and novelty ------------------------------------------------------------------------
def _chunks(n: int, seed: int) -> list[slice]:
    rng = np.random.default_rng(seed)
    out, start = [], 0
    while start < n:
        size = int(rng.integers(1, FEW + 1))
        out.append(slice(start, start + size))
        start += size
    return out


@pytest.mark.parametrize("history, learning", [(60, 10), (500, 50)])
def test_rank_of_a_few_points_equals_the_sorted_batch_path(history: int, learning: int) -> None:
    rr = RunningRank(history=history, learning=learning, suppress=0)
    rng = np.random.default_rng(3)
    scores = rng.gamma(2.0, 0.1, 1500).round(3)  # many ties
    scores[rng.choice(len(scores), 40, replace=False)] = np.nan
    seed_history = rng.gamma(2.0, 0.1, history // 3)
    batch, hist = rr.rank(scores, seed_history)  # sorts: more than FEW points
    h, parts = seed_history, []
    for part in _chunks(len(scores), 4):
        r, h = rr.rank(scores[part], h)  # FEW or fewer: scans
        parts.append(r)
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    np.testing.assert_array_equal(h, hist)


def test_novelty_of_a_few_points_equals_the_batch_path() -> None:
    rr = RunningRank(history=100, learning=10, suppress=40)
    rng = np.random.default_rng(5)
    ranks = rng.uniform(0, 1, 800).round(2)
    ranks[rng.choice(len(ranks), 30, replace=False)] = np.nan
    batch, recent = rr.novelty(ranks, np.empty(0))
    q, parts = np.empty(0), []
    for part in _chunks(len(ranks), 6):
        o, q = rr.novelty(ranks[part], q)
        parts.append(o)
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    np.testing.assert_array_equal(q, recent)


# -- ensemble ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ensemble() -> AnomalyModel:
    x = np.random.default_rng(7).normal(0.0, 1.0, 800)
    members = [{"family": f, "params": {"window": 16}} for f in ("zscore", "mad", "iqr")]
    return AnomalyModel(detectors.create("ensemble", members=members)).fit(x)


@pytest.mark.parametrize(
    "combine, weights",
    [("mean", None), ("max", None), ("vote", None), ("weighted", [1.0, 2.0, 0.5])],
)
def test_one_point_combination_equals_the_array_path(ensemble: AnomalyModel, combine: str, weights: list | None) -> None:
    det = ensemble.detector
    det.combine, det.weights = combine, weights
    try:
        x = np.random.default_rng(8).normal(0.0, 1.5, 400)
        raw = det.member_raw(x)  # NaN rows first (not ready)
        batch = det.combine_raw(raw)
        one = np.array([det.combine_one(row) for row in raw.tolist()])
        np.testing.assert_array_equal(one, batch)
        lasts = np.array([det.score_last(x[: i + 1]) for i in range(len(x))])
        np.testing.assert_array_equal(lasts, det.score(x))
    finally:
        det.combine, det.weights = "mean", None


def test_score_last_reads_only_the_last_window(ensemble: AnomalyModel) -> None:
    det = ensemble.detector
    x = np.random.default_rng(9).normal(0.0, 1.0, 7000)
    assert det.score_last(x) == det.score_last(x[-det.min_history :]) == det.score(x)[-1]


def test_one_point_stream_steps_equal_one_shot(ensemble: AnomalyModel) -> None:
    x = np.random.default_rng(10).normal(0.0, 1.0, 300)
    whole = ensemble.score(x)
    state, parts = None, []
    for v in x:
        out, state = ensemble.score_stream([v], state)
        parts.append(out)
    for name in ("raw", "calibrated", "score", "alarm"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in parts]), getattr(whole, name), err_msg=name)


# -- torch: one window through ONNX Runtime ------------------------------------------------------------
FAST = dict(window=16, hidden=16, max_epochs=3, patience=2, device="cpu")


@pytest.fixture(scope="module", params=[LSTMForecaster, GRUForecaster, CNNForecaster, TransformerForecaster, LSTMAutoencoder],
                ids=lambda c: c.family)
def torch_det(request: pytest.FixtureRequest):
    t = np.arange(500)
    x = np.sin(2 * np.pi * t / 20) + 0.05 * np.random.default_rng(0).standard_normal(500)
    return request.param(**FAST).fit(x), x


@pytest.mark.torch
def test_single_window_equals_the_eager_network(torch_det) -> None:
    det, x = torch_det
    h = det.min_history
    batch = det.score(x)  # eager network, windows in one batch
    for i in (h - 1, h + 10, 250, len(x) - 1):
        window = x[i + 1 - h : i + 1]
        inputs, targets = det._pairs(det.norm_.transform(window))
        eager = next(predict(det.net_, inputs, det.device_))  # the eager network on the same single window
        np.testing.assert_allclose(det._forward_one(inputs), eager, rtol=0, atol=ONE_WINDOW_TOLERANCE)
        # batched and single-window kernels may sum in another order: float32 rounding, not a bug
        assert det.score_last(window) == pytest.approx(batch[i], rel=1e-4, abs=1e-5)
    assert det._one[1].__name__ == "run_onnx"  # on CPU the runtime answers, not torch


@pytest.mark.torch
def test_a_runtime_outside_the_tolerance_leaves_the_window_to_torch(torch_det, monkeypatch) -> None:
    det, x = torch_det
    copy = pickle.loads(pickle.dumps(det))
    monkeypatch.setattr(torch_common, "ONE_WINDOW_TOLERANCE", -1.0)  # no runtime output can pass the check
    copy.warm()
    assert copy._one[1].__name__ == "run_torch"
    assert copy.score_last(x) == pytest.approx(det.score_last(x), rel=1e-5, abs=ONE_WINDOW_TOLERANCE)


@pytest.mark.torch
def test_the_runner_follows_new_weights_and_is_not_pickled(torch_det) -> None:
    det, x = torch_det
    first = det.score_last(x)
    copy = pickle.loads(pickle.dumps(det))
    assert "_one" not in copy.__dict__
    assert copy.score_last(x) == first
    copy._set_state({k: v * 1.5 if k.startswith("net.") else v for k, v in det._state().items()})  # a new network
    changed = copy.score_last(x)
    assert copy._one[0] is copy.net_ and changed != first
    assert changed == pytest.approx(copy.score(x)[-1], rel=1e-6, abs=1e-6)
