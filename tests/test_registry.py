"""MLflow as the system of record: register, list, load back by alias or version, refuse unsafe files."""
from __future__ import annotations

import pickle
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from eyenet.core import presets, synthetic
from eyenet.lifecycle import registry, training
from eyenet.core.errors import ArtifactError, InvalidParameterError, UnknownNameError
from eyenet.lifecycle.registry import Registry, RegistryError


@pytest.fixture(scope="module")
def series():
    _, values, _ = synthetic.series("latency_ms", n=1200, seed=5)
    return np.asarray(values)


def _train(store: Registry, family: str, values: np.ndarray, group: str, params=None):
    config = presets.model_config(family, params)
    return training.train_and_register(config, values[:700], registry=store, group=group)


def test_names_leave_room_for_tenants_and_groups():
    assert registry.model_name("cnn") == "default.default.cnn"
    assert registry.model_name("cnn", group="edge-routers", tenant="acme") == "acme.edge-routers.cnn"
    assert registry.split_name("acme.edge-routers.cnn") == ("acme", "edge-routers", "cnn")
    assert registry.slug("realKnownCause/nyc_taxi.csv") == "realknowncause-nyc_taxi"
    with pytest.raises(InvalidParameterError, match="tenant"):
        registry.model_name("cnn", tenant="Acme Corp")
    with pytest.raises(UnknownNameError):
        registry.split_name("not-a-model")


@pytest.mark.parametrize("family", ["zscore", "iforest", "cnn"])
def test_loaded_version_scores_exactly_like_the_trained_model(mlflow_store, series, family):
    params = {"max_epochs": 3} if family == "cnn" else None
    result = _train(mlflow_store, family, series, f"exact-{family}", params)
    v = result.version
    assert v.name == f"default.exact-{family}.{family}" and "challenger" in v.aliases
    by_alias = mlflow_store.load(v.name, alias="challenger")
    by_version = mlflow_store.load(v.name, version=v.version)
    want = result.model.score(series)
    for back in (by_alias, by_version):
        got = back.score(series)
        np.testing.assert_array_equal(got.raw, want.raw)
        np.testing.assert_array_equal(got.score, want.score)
        np.testing.assert_array_equal(got.alarm, want.alarm)


def test_run_records_params_metrics_curves_and_artifacts(mlflow_store, series):
    result = _train(mlflow_store, "cnn", series, "record", {"max_epochs": 4, "patience": 10})
    client = mlflow_store.client
    run = client.get_run(result.version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["detector.family"] == "cnn"
    assert run.data.params["detector.params.max_epochs"] == "4"
    assert run.data.metrics["train_rows"] == 700
    curve = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in curve] == [1, 2, 3, 4]
    files = {f.path for f in client.list_artifacts(run.info.run_id, "eyenet")}
    assert {"eyenet/model_config.json", "eyenet/calibration.json", "eyenet/features.json"} <= files
    info = mlflow.models.get_model_info(f"models:/{result.version.name}/{result.version.version}")
    assert [c.name for c in info.signature.inputs.inputs] == ["timestamp", "value"]


def test_versions_and_aliases_are_listed(mlflow_store, series):
    first = _train(mlflow_store, "zscore", series, "listing").version
    second = _train(mlflow_store, "zscore", series, "listing", {"window": 32}).version
    versions = mlflow_store.versions(first.name)
    assert [v.version for v in versions] == [second.version, first.version]
    assert versions[0].aliases == ["challenger"] and versions[1].aliases == []
    assert versions[0].metrics["train_rows"] == 700
    mlflow_store.set_alias(first.name, "champion", first.version)
    assert mlflow_store.version(first.name, alias="champion").version == first.version
    assert first.name in mlflow_store.models()
    with pytest.raises(UnknownNameError, match="no alias"):
        mlflow_store.version(first.name, alias="nope")
    with pytest.raises(UnknownNameError):
        mlflow_store.versions("default.nothing.zscore")


def test_pyfunc_load_needs_no_pickle(mlflow_store, series):
    result = _train(mlflow_store, "mad", series, "pyfunc")
    mlflow.set_tracking_uri(mlflow_store.uri)
    model = mlflow.pyfunc.load_model(f"models:/{result.version.name}@challenger")
    frame = pd.DataFrame({"timestamp": pd.date_range("2026-01-01", periods=len(series), freq="5min"), "value": series})
    out = model.predict(frame)
    np.testing.assert_array_equal(out["score"].to_numpy(), result.model.score(series).score)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{result.version.name}/{result.version.version}"))
    assert not list(local.rglob("*.pkl"))


def _artifact_dir(store: Registry, name: str, version: int) -> Path:
    """The stored files of a version in the local artifact store."""
    source = store.client.get_model_version_download_uri(name, str(version))
    path = Path(source.replace("file://", ""))
    assert path.exists(), source
    return path


def test_corrupt_artifact_is_a_clear_error(mlflow_store, series):
    v = _train(mlflow_store, "zscore", series, "corrupt").version
    state = next(_artifact_dir(mlflow_store, v.name, v.version).rglob("state.npz"))
    state.write_bytes(b"this is not an npz file")
    with pytest.raises(ArtifactError, match="state.npz"):
        mlflow_store.load(v.name, version=v.version)


def test_pickle_where_arrays_are_expected_is_refused(mlflow_store, series):
    v = _train(mlflow_store, "zscore", series, "pickled").version
    state = next(_artifact_dir(mlflow_store, v.name, v.version).rglob("state.npz"))
    state.write_bytes(pickle.dumps({"center": np.zeros(3)}))
    with pytest.raises(ArtifactError, match="state.npz"):
        mlflow_store.load(v.name, version=v.version)


class _Pickled(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_a_pickled_pyfunc_under_an_eyenet_name_is_refused(mlflow_store):
    mlflow.set_tracking_uri(mlflow_store.uri)
    mlflow.set_experiment(experiment_id=mlflow_store.experiment_id())
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=_Pickled(), pip_requirements=[])
    mv = mlflow.register_model(info.model_uri, "default.foreign.zscore")
    with pytest.raises(ArtifactError, match="refusing"):
        mlflow_store.load("default.foreign.zscore", version=int(mv.version))


def test_unreachable_server_is_one_clear_error_and_nothing_is_written(series):
    store = Registry("http://127.0.0.1:9", timeout=2)
    t0 = time.perf_counter()
    with pytest.raises(RegistryError, match="127.0.0.1:9"):
        _train(store, "zscore", series, "offline")
    assert time.perf_counter() - t0 < 30


def test_failed_upload_leaves_nothing_registered(tmp_path, series):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the artifact folder should be")
    store = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=blocker.as_uri())
    with pytest.raises(RegistryError):
        _train(store, "zscore", series, "half")
    assert store.client.search_model_versions("name='default.half.zscore'") == []
    runs = store.client.search_runs([store.experiment_id()])
    assert [r.info.status for r in runs] == ["FAILED"]
