"""Behaviour of the torch detector families: forecasters and the LSTM autoencoder."""
from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch

from eyenet.core.detectors.forecasters import (
    CNNForecaster,
    GRUForecaster,
    LSTMForecaster,
    TorchForecaster,
    TransformerForecaster,
)
from eyenet.core.detectors.lstm_ae import LSTMAutoencoder
from eyenet.core.detectors import torch_common as tc
from eyenet.core.detectors.torch_common import TorchDetector, predict, resolve_device, validation_size
from eyenet.core.errors import ArtifactError, InvalidParameterError, NotEnoughDataError, NotFittedError

pytestmark = pytest.mark.torch

FAMILIES = [LSTMForecaster, GRUForecaster, CNNForecaster, TransformerForecaster, LSTMAutoencoder]
FORECASTERS = [c for c in FAMILIES if issubclass(c, TorchForecaster)]
#: small and quick, still enough to learn a sine
FAST = dict(window=16, hidden=16, max_epochs=30, patience=3, device="cpu")
N = 600
PERIOD = 20
SPIKE = 400


def sine(n: int = N, *, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.sin(2 * np.pi * t / PERIOD) + noise * rng.standard_normal(n)


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    return sine()


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda c: c.family)
def fitted(request: pytest.FixtureRequest, series: np.ndarray) -> TorchDetector:
    return request.param(**FAST).fit(series)


@pytest.fixture(scope="module", params=FORECASTERS, ids=lambda c: c.family)
def forecaster(request: pytest.FixtureRequest, series: np.ndarray) -> TorchForecaster:
    return request.param(**FAST).fit(series)


# -- learning ----------------------------------------------------------------------------------
def test_fit_is_deterministic_under_a_seed(fitted: TorchDetector, series: np.ndarray) -> None:
    again = type(fitted)(**FAST).fit(series)
    np.testing.assert_array_equal(again.score(series), fitted.score(series))
    assert again.history_ == fitted.history_


def test_a_different_seed_gives_different_scores(fitted: TorchDetector, series: np.ndarray) -> None:
    other = type(fitted)(**{**FAST, "seed": 1}).fit(series)
    a, b = other.score(series), fitted.score(series)
    assert not np.allclose(a[~np.isnan(a)], b[~np.isnan(b)])


def test_fit_leaves_the_global_torch_rng_and_determinism_flag_alone(series: np.ndarray) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    flag = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    CNNForecaster(**{**FAST, "max_epochs": 2}).fit(series)
    assert torch.equal(torch.rand(3), expected)
    assert torch.are_deterministic_algorithms_enabled() == flag


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.family)
def test_early_stopping_stops_when_nothing_more_can_be_learned_and_keeps_the_best_weights(cls: type) -> None:
    noise = np.random.default_rng(7).standard_normal(N)  # the best forecast is the mean: learned at once
    det = cls(**FAST).fit(noise)
    epochs = [h["epoch"] for h in det.history_]
    assert epochs == list(range(1, len(epochs) + 1))
    assert len(epochs) < FAST["max_epochs"]
    assert len(epochs) == det.best_epoch_ + FAST["patience"]
    # the restored network has the best epoch's validation loss
    inputs, targets = det._pairs(det.norm_.transform(noise))
    n_val = validation_size(len(inputs), det.val_fraction)
    out = np.concatenate(list(predict(det.net_, inputs[-n_val:], det.device_)))
    best_val = det.history_[det.best_epoch_ - 1]["val_loss"]
    assert np.mean((out - targets[-n_val:]) ** 2) == pytest.approx(best_val, rel=1e-5)


def test_on_epoch_callback_sees_every_epoch(series: np.ndarray) -> None:
    seen: list[dict] = []
    det = GRUForecaster(**{**FAST, "max_epochs": 3, "patience": 10})
    det.on_epoch = seen.append
    det.fit(series)
    assert seen == det.history_
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert set(seen[0]) == {"epoch", "train_loss", "val_loss"}
    assert "on_epoch" not in det.get_params()


def test_the_epoch_loop_resumed_from_its_progress_ends_where_an_uninterrupted_run_does(series: np.ndarray) -> None:
    """What a Ray Train run relies on to resume from a checkpoint: progress, weights, optimiser and generator."""
    det = CNNForecaster(**{**FAST, "max_epochs": 5, "patience": 10})
    inputs, targets = det._pairs(series)
    n_val = validation_size(len(inputs), det.val_fraction)
    cpu = torch.device("cpu")
    train = (tc.to_tensor(inputs[:-n_val], cpu), tc.to_tensor(targets[:-n_val], cpu))
    val = (inputs[-n_val:], targets[-n_val:])
    kw = dict(batch_size=det.batch_size, max_epochs=5, patience=10, device=cpu)

    def run(stop_after: int | None = None, resume: dict | None = None) -> tuple[tc.TrainProgress, dict]:
        with tc.seeded(0, cpu) as rng:
            net = det._build_net()
            opt = tc.make_optimizer(net, det.lr)
            progress = None
            if resume:
                net.load_state_dict(resume["net"])
                opt.load_state_dict(resume["opt"])
                rng.bit_generator.state = resume["rng"]
                progress = resume["progress"]
            saved: dict = {}

            def checkpoint(end: tc.EpochEnd) -> None:
                if end.record["epoch"] == stop_after:
                    saved.update(net=tc.weights_of(end.net), opt=copy.deepcopy(end.opt.state_dict()),
                                 rng=rng.bit_generator.state, progress=copy.deepcopy(end.progress))
                    raise KeyboardInterrupt

            try:
                p = tc.train_epochs(net, opt, train, val, rng=rng, progress=progress, on_epoch_end=checkpoint, **kw)
            except KeyboardInterrupt:
                return saved["progress"], saved
            return p, saved

    whole, _ = run()
    _, checkpoint = run(stop_after=3)
    resumed, _ = run(resume=checkpoint)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.history == whole.history
    assert resumed.best_epoch == whole.best_epoch


# -- scoring -----------------------------------------------------------------------------------
def test_an_injected_spike_scores_far_above_the_rest(fitted: TorchDetector, series: np.ndarray) -> None:
    x = series.copy()
    x[SPIKE] += 3.0
    s = fitted.score(x)
    assert s[SPIKE] > 10 * np.nanmedian(s)
    # nothing whose input does not contain the spike comes close
    elsewhere = np.delete(s, np.arange(SPIKE, SPIKE + fitted.min_history))
    assert s[SPIKE] > 3 * np.nanmax(elsewhere)


def test_min_history(fitted: TorchDetector) -> None:
    w = FAST["window"]
    assert fitted.min_history == (w if isinstance(fitted, LSTMAutoencoder) else w + 1)


def test_long_series_are_scored_in_chunks_with_the_same_numbers(fitted: TorchDetector) -> None:
    long = sine(9000, seed=3)  # more than one 4096-window chunk
    s = fitted.score(long)
    tail = fitted.score(long[-1000:])
    np.testing.assert_allclose(s[-1000 + fitted.min_history - 1 :], tail[fitted.min_history - 1 :], rtol=1e-5, atol=1e-5)


# -- persistence -------------------------------------------------------------------------------
def test_save_and_load_give_identical_scores(fitted: TorchDetector, series: np.ndarray, tmp_path) -> None:
    d = fitted.save(tmp_path / "model")
    assert json.loads((d / "config.json").read_text())["family"] == fitted.family
    for loader in (type(fitted), TorchDetector):
        loaded = loader.load(d)
        assert type(loaded) is type(fitted)
        assert loaded.get_params() == fitted.get_params()
        np.testing.assert_array_equal(loaded.score(series), fitted.score(series))
        assert loaded.history_ == fitted.history_
        assert loaded.best_epoch_ == fitted.best_epoch_


def test_load_can_move_a_model_to_another_device(fitted: TorchDetector, series: np.ndarray, tmp_path) -> None:
    d = fitted.save(tmp_path / "model")
    loaded = type(fitted).load(d, device="cpu")
    assert loaded.device == "cpu" and loaded.device_.type == "cpu"
    np.testing.assert_array_equal(loaded.score(series), fitted.score(series))


def test_pickled_detectors_score_the_same_and_drop_the_callback(fitted: TorchDetector, series: np.ndarray) -> None:
    fitted.on_epoch = print
    try:
        copy = pickle.loads(pickle.dumps(fitted))
    finally:
        del fitted.on_epoch
    assert copy.on_epoch is None
    np.testing.assert_array_equal(copy.score(series), fitted.score(series))


def test_torch_state_file_round_trips_with_weights_only(fitted: TorchDetector, series: np.ndarray, tmp_path) -> None:
    p = fitted.save_torch(tmp_path / "model.pt")
    raw = torch.load(p, weights_only=True)
    assert any(k.startswith("net.") for k in raw)
    loaded = type(fitted)(**fitted.get_params()).load_torch(p)
    np.testing.assert_array_equal(loaded.score(series), fitted.score(series))


def test_load_refuses_broken_artifacts(tmp_path) -> None:
    with pytest.raises(ArtifactError):
        LSTMForecaster.load(tmp_path / "nothing-here")
    det = CNNForecaster(**{**FAST, "max_epochs": 1}).fit(sine())
    d = det.save(tmp_path / "cnn")
    with pytest.raises(ArtifactError):
        LSTMForecaster.load(d)  # a cnn is not an lstm
    config = json.loads((d / "config.json").read_text())
    config["params"]["hidden"] = 8  # weights no longer fit the network
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError):
        CNNForecaster.load(d)
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    with pytest.raises(ArtifactError):
        CNNForecaster(**FAST).load_torch(tmp_path / "junk.pt")


# -- forecasts ---------------------------------------------------------------------------------
def test_forecast_of_a_clean_sine_is_close_to_the_truth(forecaster: TorchForecaster) -> None:
    clean = sine(noise=0.0)
    f = forecaster.forecast(clean)
    w = FAST["window"]
    assert f.shape == clean.shape
    assert np.isnan(f[:w]).all()
    assert np.mean(np.abs(f[w:] - clean[w:])) < 0.1  # amplitude 1
    assert forecaster.forecast_next(clean[:300]) == pytest.approx(f[300], abs=1e-5)
    nxt = forecaster.forecast_next(clean)
    assert abs(nxt - np.sin(2 * np.pi * N / PERIOD)) < 0.2


def test_forecast_next_needs_a_full_window(forecaster: TorchForecaster) -> None:
    with pytest.raises(NotEnoughDataError):
        forecaster.forecast_next(np.zeros(FAST["window"] - 1))


def test_lstm_autoencoder_reconstructs_in_original_units(series: np.ndarray) -> None:
    det = LSTMAutoencoder(**FAST).fit(series * 100 + 1000)
    rec = det.reconstruct(series[:40] * 100 + 1000)
    assert rec.shape == (FAST["window"],)
    assert np.mean(np.abs(rec - (series[24:40] * 100 + 1000))) < 30


# -- errors ------------------------------------------------------------------------------------
def test_learning_rate_must_be_positive(series: np.ndarray) -> None:
    with pytest.raises(InvalidParameterError, match="lr"):
        CNNForecaster(**{**FAST, "lr": 0}).fit(series)


def test_autoencoder_tail_cannot_exceed_window(series: np.ndarray) -> None:
    with pytest.raises(InvalidParameterError, match="tail"):
        LSTMAutoencoder(**{**FAST, "tail": FAST["window"] + 1}).fit(series)


def test_forecasts_need_a_fitted_forecaster() -> None:
    with pytest.raises(NotFittedError):
        LSTMForecaster(**FAST).forecast(sine())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.family)
def test_cuda_without_cuda_is_a_parameter_error(cls: type, series: np.ndarray) -> None:
    with pytest.raises(InvalidParameterError, match="CUDA is not available"):
        cls(**{**FAST, "device": "cuda"}).fit(series)


def test_auto_device_falls_back_to_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
