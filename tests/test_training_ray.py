"""Training on Ray: TorchTrainer workers, resuming an interrupted run, Ray tasks across series, Tune."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from eyenet import cli
from eyenet.core import presets, synthetic
from eyenet.lifecycle import registry, training
from eyenet.core.data import Series
from eyenet.core.errors import InvalidInputError
from eyenet.core.detectors.torch_common import TrainJob, training_backend
from eyenet.train import data as train_data
from eyenet.train import trainer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = {"max_epochs": 5, "patience": 10}


@pytest.fixture(scope="module")
def cpu():
    ts, values, _ = synthetic.series("cpu_pct", n=900, seed=2, anomalies_per_metric=0)
    return Series("cpu", ts, np.asarray(values))


def test_torch_family_trains_on_ray_train_and_registers(ray_cluster, mlflow_store, cpu, tmp_path):
    config = presets.model_config("cnn", EPOCHS)
    result = trainer.train_torch(config, cpu, registry=mlflow_store, group="ray-cnn", storage_path=tmp_path)
    v = result.version
    assert v.name == "default.ray-cnn.cnn" and v.aliases == ["challenger"]
    assert result.runs[0]["epochs"] == 5 and result.runs[0]["resumed_from"] == 0
    # rank 0 logged the curve into the registered run, one point per epoch
    curve = mlflow_store.client.get_metric_history(v.run_id, "val_loss")
    assert sorted(m.step for m in curve) == [1, 2, 3, 4, 5]
    back = mlflow_store.load(v.name, alias="challenger")
    np.testing.assert_array_equal(back.score(cpu.values).score, result.model.score(cpu.values).score)
    assert not list(tmp_path.iterdir()), "a finished run leaves no checkpoints behind"


def test_interrupted_run_resumes_from_its_last_checkpoint(ray_cluster, mlflow_store, cpu, tmp_path, monkeypatch):
    config = presets.model_config("cnn", EPOCHS)
    monkeypatch.setenv(training.FAULT_AT_EPOCH, "3")
    with pytest.raises(trainer.TrainingInterrupted, match="run the same command again"):
        trainer.train_torch(config, cpu, registry=mlflow_store, group="resume", storage_path=tmp_path)
    assert mlflow_store.client.search_model_versions("name='default.resume.cnn'") == []
    kept = list(tmp_path.iterdir())
    assert len(kept) == 1 and list(kept[0].glob("checkpoint_*")), "the checkpoints of the interrupted run are kept"
    monkeypatch.delenv(training.FAULT_AT_EPOCH)
    resumed = trainer.train_torch(config, cpu, registry=mlflow_store, group="resume", storage_path=tmp_path)
    assert resumed.runs[0]["resumed_from"] == 3
    history = resumed.model.detector.history_
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    # the resumed run ends where an uninterrupted one does
    fresh = trainer.train_torch(config, cpu, registry=mlflow_store, group="fresh", storage_path=tmp_path)
    assert resumed.model.detector.history_[-1]["val_loss"] == pytest.approx(fresh.model.detector.history_[-1]["val_loss"])
    np.testing.assert_allclose(resumed.model.score(cpu.values).raw, fresh.model.score(cpu.values).raw, rtol=1e-6, equal_nan=True)


def test_two_data_parallel_workers(ray_cluster, mlflow_store, cpu, tmp_path):
    config = presets.model_config("gru", {"max_epochs": 3, "patience": 10, "hidden": 8})
    result = trainer.train_torch(config, cpu, registry=mlflow_store, group="ddp", num_workers=2, storage_path=tmp_path)
    assert result.metrics["train_workers"] == 2
    assert len(result.model.detector.history_) == 3
    assert np.isfinite(result.model.score(cpu.values).raw[-100:]).all()


def test_ensemble_members_each_train_on_ray_train(ray_cluster, mlflow_store, cpu, tmp_path):
    members = [{"family": "cnn", "params": {"max_epochs": 2}}, {"family": "zscore", "params": {}},
               {"family": "lstm", "params": {"max_epochs": 2, "hidden": 8}}]
    config = presets.model_config("ensemble", {"members": members})
    result = trainer.train_torch(config, cpu, registry=mlflow_store, group="ens", storage_path=tmp_path)
    assert [r["run"].split("-m")[1][:1] for r in result.runs] == ["0", "1"]  # the two torch members
    hist = mlflow_store.client.get_metric_history(result.version.run_id, "m0.cnn.val_loss")
    assert len(hist) == 2


def test_non_torch_families_train_as_parallel_tasks_across_series(ray_cluster, mlflow_store):
    t = synthetic.generate(n=800, metrics=("cpu_pct", "mem_pct", "temperature_c"), seed=4, anomalies_per_metric=0)
    series = [Series(m, t.frame["timestamp"].to_numpy(), t.frame[m].to_numpy()) for m in ("cpu_pct", "mem_pct", "temperature_c")]
    lines = []
    results = trainer.train_many(presets.model_config("iforest"), series, registry=mlflow_store, tenant="acme",
                                 progress=lines.append)
    assert sorted(r.version.name for r in results) == ["acme.cpu_pct.iforest", "acme.mem_pct.iforest", "acme.temperature_c.iforest"]
    assert len(lines) == 3
    for r, s in zip(sorted(results, key=lambda r: r.group), sorted(series, key=lambda s: s.name)):
        back = mlflow_store.load(r.version.name, alias="challenger")
        np.testing.assert_array_equal(back.score(s.values).score, r.model.score(s.values).score)


def test_ray_data_reads_multi_series_parquet_and_names_bad_rows(ray_cluster, tmp_path):
    ts = pd.date_range("2026-01-01", periods=50, freq="1min")
    frame = pd.concat([pd.DataFrame({"timestamp": ts, "value": np.arange(50.0), "series": name}) for name in ("a", "b")])
    frame.to_parquet(tmp_path / "two.parquet")
    got = train_data.read_series(tmp_path / "two.parquet")
    assert [s.name for s in got] == ["a", "b"] and all(len(s) == 50 for s in got)
    bad = frame[frame.series == "a"].copy()
    bad.loc[bad.index[7], "value"] = np.nan
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(InvalidInputError, match=r"bad.parquet.*'value'.*row 7"):
        train_data.read_series(tmp_path / "bad.parquet")


def test_cli_train_registers_versions_listed_by_models(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(registry.ENV_URI, raising=False)
    ts = pd.date_range("2026-01-01", periods=600, freq="5min")
    values = 10 + np.sin(np.arange(600) / 20) + np.random.default_rng(0).normal(0, 0.1, 600)
    pd.DataFrame({"timestamp": ts, "value": values}).to_csv(tmp_path / "web.csv", index=False)
    assert cli.main(["train", "--detector", "zscore,mad", "--input", "web.csv", "--group", "web"]) == 0
    out = capsys.readouterr().out
    assert "default.web.zscore" in out and "default.web.mad" in out
    assert (tmp_path / ".eyenet" / "mlflow.db").exists()
    assert cli.main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(v["name"], v["version"], tuple(v["aliases"])) for v in listed} == {
        ("default.web.zscore", 1, ("challenger",)), ("default.web.mad", 1, ("challenger",))}
    assert cli.main(["models"]) == 0
    assert "challenger" in capsys.readouterr().out


def test_cli_train_with_labels_keeps_the_classifier_the_gate_finds_better(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(registry.ENV_URI, raising=False)
    t = synthetic.generate(n=4032, seed=11, anomalies_per_metric=6, kinds=("spike", "dip"), anomaly_free_prefix=0.05)
    label = np.zeros(4032, dtype=int)
    for a in t.anomalies["latency_ms"]:  # a metric whose labelled spikes and dips the default ensemble misses
        label[a.start : a.end + 1] = 1
    pd.DataFrame({"timestamp": t.frame["timestamp"], "value": t.frame["latency_ms"], "label": label}).to_csv(
        tmp_path / "packets.csv", index=False)
    assert cli.main(["train", "--detector", "ensemble", "--input", "packets.csv", "--labels", "label",
                     "--group", "packets"]) == 0
    out = capsys.readouterr().out
    assert "classifier member kept: challenger is better: NAB standard" in out, out
    assert "registered default.packets.ensemble version 1 as challenger" in out
    model = registry.Registry().load("default.packets.ensemble", alias="challenger")
    assert model.member_families == ["seasonal", "lstm", "classifier"]


def test_cli_tune_small_search_registers_a_challenger(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(registry.ENV_URI, raising=False)
    space = {"window": {"choice": [16, 32, 64]}, "alarm.threshold": {"uniform": [0.5, 0.9]}}
    (tmp_path / "space.json").write_text(json.dumps(space))
    assert cli.main(["tune", "--detector", "zscore", "--trials", "4", "--space", "space.json"]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "registered default.default.zscore version 1 as challenger" in out
    reg = registry.Registry()
    v = reg.version("default.default.zscore", alias="challenger")
    assert v.metrics["tune_trials"] == 4
    assert np.isfinite(v.metrics["tune_best_score"]) and np.isfinite(v.metrics["tune_default_score"])
    tune_exp = reg.client.get_experiment_by_name("eyenet-tune")
    assert len(reg.client.search_runs([tune_exp.experiment_id])) == 4


def test_backend_hook_is_used_for_every_torch_network():
    seen = []

    def backend(job: TrainJob, on_epoch):
        from eyenet.core.detectors.torch_common import TrainOutcome, state_dict_to_arrays
        from eyenet.core import detectors

        seen.append(job.detector["family"])
        net = detectors.from_dict(job.detector)._build_net()
        return TrainOutcome(weights=state_dict_to_arrays(net.state_dict()), history=[], best_epoch=0)

    members = [{"family": "cnn", "params": {}}, {"family": "mad", "params": {}}, {"family": "gru", "params": {"hidden": 4}}]
    from eyenet.core.model import AnomalyModel

    _, values, _ = synthetic.series("cpu_pct", n=600, seed=1)
    with training_backend(backend):
        AnomalyModel.from_dict(presets.model_config("ensemble", {"members": members})).fit(values)
    assert seen == ["cnn", "gru"]
