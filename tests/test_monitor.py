"""The app-wide monitor without Ray: router outboxes, drift against the served version's reference,
feedback, retraining data, and one Prometheus exposition from every replica's."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eyenet.core import presets
from eyenet.lifecycle import training
from eyenet.monitoring import history
from eyenet.serving.schemas import FeedbackRequest, check_feedback
from eyenet.monitoring.monitor import Monitor, Outbox, merge_expositions

NAME = "default.mon.zscore"


@pytest.fixture(scope="module")
def trained(mlflow_store):
    rng = np.random.default_rng(0)
    values = 50 + rng.normal(0, 2, 800)
    result = training.train_and_register(presets.model_config("zscore"), values, registry=mlflow_store, group="mon")
    return result.model, result.version.version, values


def _batch(model, version: int, values: np.ndarray, series: str | None = "s1") -> list[dict]:
    box = Outbox(max_series_points=5000)
    box.add(NAME, version, values, model.score(values), series)
    return box.take()


def test_outbox_groups_by_model_version_oldest_first_and_keeps_bounded_series(trained):
    model, version, values = trained
    box = Outbox(max_series_points=100)
    box.add(NAME, version + 1, values[:10], model.score(values[:10]), "a")
    box.add(NAME, version, values[:150], model.score(values[:150]), "a")
    box.add(NAME, version, values[:5], model.score(values[:5]), None)
    (first, last) = box.take()
    assert (first["version"], last["version"]) == (version + 1, version)  # in the order last touched
    assert last["points"] == 155 and len(last["value"]) == 155 and len(last["series"]["a"]) == 100
    assert last["series"]["a"] == [float(v) for v in values[50:150]]
    assert box.take() == []


def test_drift_follows_the_served_version_and_recent_values_pick_the_busiest_series(trained, mlflow_store, tmp_path):
    model, version, values = trained
    mon = Monitor(mlflow_store.uri, {"drift_window": 300, "drift_min_points": 100,
                                     "feedback_path": str(tmp_path / "fb.jsonl")})

    async def run():
        await mon.push("r1", _batch(model, version, values[:300]))
        calm = await mon.report(NAME)
        await mon.push("r2", _batch(model, version, values[300:700] + 15, series="s2"))  # a level shift
        return calm, await mon.report(NAME), await mon.drifted(NAME), await mon.recent_values(NAME, 350)

    calm, shifted, drifted, recent = asyncio.run(run())
    assert calm[NAME]["version"] == version and not calm[NAME]["drifted"]
    assert shifted[NAME]["drifted"] and shifted[NAME]["drift"]["value"]["psi"] > 0.3
    assert drifted["version"] == version and "value" in drifted["features"]
    assert recent[0] == "s2" and len(recent[1]) == 400
    assert asyncio.run(mon.recent_values(NAME, 500)) is None  # not enough points of one series
    assert asyncio.run(mon.recent_values(NAME, 1, time.time() + 60)) is None  # none arrived after `since`
    assert len(asyncio.run(mon.recent_values(NAME, 1, time.time() - 60))[1]) == 400
    fb = check_feedback(FeedbackRequest(id="s1", group="mon", detector="zscore", label="false_alarm", indices=[3]))
    counts = asyncio.run(mon.record_feedback(fb))
    assert counts["total"]["false_alarm"] == 1 and counts["total"]["points"] == 700


def test_a_version_without_reference_is_not_watched_and_unknown_models_do_not_break_a_push(trained, mlflow_store,
                                                                                           tmp_path):
    model, version, values = trained
    mon = Monitor(mlflow_store.uri, {"feedback_path": str(tmp_path / "fb.jsonl")})
    box = Outbox()
    box.add("default.nobody.zscore", 1, values[:10], model.score(values[:10]))
    asyncio.run(mon.push("r1", box.take()))  # the reference cannot be read: skipped, retried next push
    report = asyncio.run(mon.report("default.nobody.zscore"))["default.nobody.zscore"]
    assert report["version"] is None and report["drift"] == {} and not report["drifted"]
    assert report["feedback"]["total"]["points"] == 10  # alarm counts do not need a reference


def test_merged_exposition_labels_each_replica_and_keeps_the_monitors_own_series():
    texts = {}
    for replica, n in (("r1", 3), ("r2", 4)):
        reg = CollectorRegistry()
        Counter("eyenet_points_scored_total", "Points scored", ["model"], registry=reg).labels("m").inc(n)
        texts[replica] = generate_latest(reg).decode()
    own = CollectorRegistry()
    Counter("eyenet_feedback_total", "labels", ["model"], registry=own).labels("m").inc(2)
    merged = merge_expositions(generate_latest(own).decode(), texts)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(merged) for s in fam.samples}
    assert samples[("eyenet_points_scored_total", (("model", "m"), ("replica", "r1")))] == 3
    assert samples[("eyenet_points_scored_total", (("model", "m"), ("replica", "r2")))] == 4
    assert samples[("eyenet_feedback_total", (("model", "m"),))] == 2
    assert "_created" not in merged


def test_alert_transitions_are_kept_newest_first_per_tenant_and_bounded(tmp_path):
    box = Outbox()
    firing = {"labels": {"series": "cpu", "model": "acme.web.ensemble", "severity": "warning"},
              "annotations": {"summary": "cpu: 90"}, "startsAt": "2026-11-30T00:00:00Z"}
    box.alert([("acme", firing), ("globex", {**firing, "labels": {**firing["labels"], "series": "disk"}})])
    box.alert([("acme", {**firing, "endsAt": "2026-11-30T00:05:00Z"})])
    mon = Monitor(None, {"recent_alerts": 2, "feedback_path": str(tmp_path / "fb.jsonl")})
    asyncio.run(mon.push("r1", box.take(), None, box.take_alerts()))
    assert box.take_alerts() == []
    every = asyncio.run(mon.recent_alerts(None))
    assert [(a["tenant"], a["series"], a["state"]) for a in every] == [("acme", "cpu", "resolved"),
                                                                        ("globex", "disk", "firing")]  # bounded: 2
    (acme,) = asyncio.run(mon.recent_alerts(["acme"]))
    assert acme["severity"] == "warning" and acme["ends_at"] == "2026-11-30T00:05:00Z" and acme["summary"] == "cpu: 90"


def test_a_push_carries_every_series_history_in_one_table_and_the_monitor_keeps_each_apart(trained, tmp_path):
    model, version, values = trained
    box = Outbox(max_series_points=100)
    for k in range(300):  # a burst of new series, one point each, one of them with two answers
        points = [{"score": k / 1000, "alarm": k == 7, "detectors": {"zscore": 0.5}}]
        box.add(NAME, version, values[k : k + 1], model.score(values[k : k + 1]), f"s{k}", first=0,
                view=(points, np.arange(1), ["zscore"]))
    box.add(NAME, version, values[:1], model.score(values[:1]), "s3", first=1,
            view=([{"score": 0.9, "alarm": True}], np.arange(1, 2), ["zscore"]))
    (batch,) = box.take()
    views = batch["views"]
    assert len(views["ids"]) == 300 and all(isinstance(c, np.ndarray) for c in views["columns"].values())
    assert len(views["columns"]) == 10 and len(views["columns"]["score"]) == 301  # arrays, not 300 tables
    got = dict(history.rows(views))
    np.testing.assert_allclose(got["s3"]["score"], [0.003, 0.9])
    np.testing.assert_array_equal(got["s3"]["index"], [0, 1])
    assert got["s7"]["alarm"].tolist() == [True] and got["s8"]["alarm"].tolist() == [False]
    assert got["s299"]["score"].base is None  # a copy: a kept series does not hold the whole push
    mon = Monitor(None, {"feedback_path": str(tmp_path / "fb.jsonl")})
    asyncio.run(mon.push("r1", [batch]))
    assert mon.history.size(NAME, "s3") == 2 and mon.history.size(NAME, "s0") == 1
    assert mon.history.points(NAME, "s3", 10)[-1]["score"] == pytest.approx(0.9)


def test_answers_of_one_series_between_two_pushes_travel_as_one_table_in_order(trained):
    model, version, values = trained
    box = Outbox(max_series_points=100)
    stamps = np.datetime64("2026-01-01T00:00:00", "ns") + np.arange(3) * np.timedelta64(60, "s")
    for k, (first, n, ts) in enumerate([(0, 2, stamps[:2]), (2, 1, None), (3, 1, stamps[2:])]):
        chunk = values[first : first + n]
        points = [{"score": 0.1 * (first + i), "alarm": False, "detectors": {"zscore": 0.5}} for i in range(n)]
        box.add(NAME, version, chunk, model.score(chunk), "a", first=first, timestamps=ts,
                view=(points, np.arange(first, first + n), ["zscore"]))
    (batch,) = box.take()
    ((sid, table),) = history.rows(batch["views"])  # one table for the three answers
    assert sid == "a"
    np.testing.assert_array_equal(table["index"], [0, 1, 2, 3])
    np.testing.assert_allclose(table["score"], [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_array_equal(table["value"], values[:4])
    t = table["t"]
    assert t[0] == stamps[0].astype("int64") / 1e9 and t[1] - t[0] == 60
    assert np.isnan(t[2]) and t[3] == stamps[2].astype("int64") / 1e9  # the answer sent without a timestamp
    np.testing.assert_array_equal(table["member:zscore"], [0.5] * 4)
