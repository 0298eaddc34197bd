"""The audit log: append-only, durable, readable after a crash, mirrored on MLflow tags."""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from eyenet.lifecycle import audit, registry, training
from eyenet.core import presets, synthetic
from eyenet.core.errors import AuditError, InvalidParameterError


def _event(kind: str = audit.PROMOTE, name: str = "default.a.zscore", version: int | None = 1, **kw) -> audit.Event:
    base = {"reason": "because", "actor": "tester@host", "time": 1_700_000_000.25}
    return audit.Event(event=kind, name=name, version=version, **{**base, **kw})


def test_events_read_back_in_order_filtered_and_limited(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    log.append(_event(audit.TRAIN, version=1))
    log.append(_event(audit.REGISTER, version=1))
    log.append(_event(audit.REGISTER, name="default.b.mad", version=4))
    log.append(_event(audit.PROMOTE, version=1, previous=None, metrics={"nab_standard": 61.5}))
    assert [e.event for e in log.read()] == ["TRAIN", "REGISTER", "REGISTER", "PROMOTE"]
    mine = log.read("default.a.zscore")
    assert [e.event for e in mine] == ["TRAIN", "REGISTER", "PROMOTE"]
    assert [e.event for e in log.read("default.a.zscore", limit=2)] == ["REGISTER", "PROMOTE"]
    assert mine[-1].metrics == {"nab_standard": 61.5} and mine[-1].actor == "tester@host"
    line = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[0])
    assert line["iso"] == "2023-11-14T22:13:20.250+00:00" and line["time"] == 1_700_000_000.25


def test_a_torn_last_line_is_skipped_and_the_next_event_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = audit.AuditLog(path)
    log.append(_event(audit.TRAIN))
    log.append(_event(audit.REGISTER))
    with open(path, "a") as f:  # a writer killed in mid-line
        f.write('{"event": "PROMOTE", "name": "default.a.zsc')
    assert [e.event for e in log.read()] == ["TRAIN", "REGISTER"]
    log.append(_event(audit.ROLLBACK))
    assert [e.event for e in log.read()] == ["TRAIN", "REGISTER", "ROLLBACK"]


def test_unknown_events_are_refused_and_non_finite_metrics_become_null(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(InvalidParameterError, match="'DEPLOY' is not one of"):
        log.append(_event("DEPLOY"))
    reg = type("R", (), {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})()
    ev = audit.record(reg, audit.REJECT, "default.a.zscore", None, reason="x",
                      metrics={"nab": float("nan"), "n": np.int64(3), "note": "text", "flag": True})
    assert ev.metrics == {"nab": None, "n": 3.0}
    assert audit.history("default.a.zscore", uri=tmp_path / "audit.jsonl")[0].metrics == {"nab": None, "n": 3.0}


def test_the_log_lives_beside_an_embedded_store_unless_told_otherwise(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(audit.ENV_URI, raising=False)
    assert audit.default_uri(f"sqlite:///{tmp_path}/x/mlflow.db") == str(tmp_path / "x" / "audit.jsonl")
    monkeypatch.chdir(tmp_path)
    assert audit.default_uri("http://mlflow:5000") == str(tmp_path / ".eyenet" / "audit.jsonl")
    monkeypatch.setenv(audit.ENV_URI, str(tmp_path / "shared" / "events.jsonl"))
    assert audit.default_uri(f"sqlite:///{tmp_path}/x/mlflow.db") == str(tmp_path / "shared" / "events.jsonl")
    monkeypatch.setenv(audit.ENV_URI, "postgresql://eyenet@db:5432/eyenet")  # a server: taken as it is
    assert audit.default_uri(f"sqlite:///{tmp_path}/x/mlflow.db") == "postgresql://eyenet@db:5432/eyenet"


def test_an_unwritable_log_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").mkdir()  # a folder where the file should be
    with pytest.raises(AuditError, match="audit.jsonl"):
        audit.AuditLog(tmp_path / "audit.jsonl").append(_event())


def _append_many(path: str, worker: int) -> None:
    log = audit.AuditLog(path)
    for i in range(40):
        log.append(_event(audit.TRAIN, version=worker * 1000 + i, reason="x" * 2000))


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    events = audit.AuditLog(path).read()
    assert len(events) == 120 and len(Path(path).read_text().splitlines()) == 120
    for w in range(3):  # each writer's events stay in its own order
        mine = [e.version for e in events if e.version // 1000 == w]
        assert mine == [w * 1000 + i for i in range(40)]


def test_registering_records_train_and_register_and_tags_the_version(mlflow_store) -> None:
    _, values, _ = synthetic.series("cpu_pct", n=600, seed=3)
    result = training.train_and_register(presets.model_config("zscore"), np.asarray(values[:500]),
                                         registry=mlflow_store, group="audited")
    v = result.version
    events = audit.history(v.name, registry=mlflow_store)
    assert [(e.event, e.version) for e in events] == [("TRAIN", v.version), ("REGISTER", v.version)]
    assert events[0].metrics["train_rows"] == 500 and events[0].reason.startswith("trained")
    assert events[1].reason == "registered as challenger" and "@" in events[1].actor
    assert v.tags["eyenet.status"] == audit.REGISTERED and v.tags["eyenet.event"] == "REGISTER"
    assert Path(audit.default_uri(mlflow_store.uri)).is_file()
    assert registry.Registry(mlflow_store.uri).version(v.name, v.version).tags["eyenet.reason"] == "registered as challenger"
