"""Operator feedback: request validation, precision / false-positive rate / alarm rate, the durable log."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from eyenet.monitoring import feedback
from eyenet.core.errors import InvalidInputError, InvalidParameterError
from eyenet.monitoring.feedback import Feedback, FeedbackTracker
from eyenet.serving.schemas import FeedbackRequest, Limits, check_feedback, validation_message


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _fb(label: str, points: int, model: str = "default.default.ensemble", at: float = 1_000_000.0) -> Feedback:
    return Feedback(model=model, series="web-1/cpu", label=label, points=points, indices=list(range(points)), received=at)


# -- the request ----------------------------------------------------------------------------------


def test_request_names_points_by_timestamps_or_indices_exactly_once():
    ok = FeedbackRequest(id="web-1/cpu", label="false_alarm", indices=[3, 4])
    assert ok.group == "default" and ok.detector == "ensemble"
    for bad in ({}, {"indices": [1], "timestamps": ["2026-01-01T00:00:00Z"]}):
        with pytest.raises(ValidationError, match="either 'timestamps' or 'indices'"):
            FeedbackRequest(id="web-1/cpu", label="false_alarm", **bad)


@pytest.mark.parametrize("body, field", [
    ({"id": "web\n1", "label": "false_alarm", "indices": [1]}, "id"),
    ({"id": "w", "label": "maybe", "indices": [1]}, "label"),
    ({"id": "w", "label": "false_alarm", "indices": []}, "indices"),
    ({"id": "w", "label": "false_alarm", "indices": [1], "note": "x" * 1001}, "note"),
    ({"id": "w", "label": "false_alarm", "indices": [1], "version": 0}, "version"),
    ({"id": "w", "label": "false_alarm", "indices": [1], "severity": 3}, "severity"),
])
def test_bad_request_fields_are_named(body, field):
    with pytest.raises(ValidationError) as err:
        FeedbackRequest(**body)
    assert validation_message(err.value.errors()).startswith(field)


def test_check_normalises_timestamps_and_refuses_duplicates_bad_names_and_oversize():
    req = FeedbackRequest(id="w", label="true_anomaly", timestamps=["2026-03-01T10:00:00+01:00", 1772359200.5],
                          group="edge", tenant="acme", version=4, note="disk full")
    fb = check_feedback(req, now=123.0)
    assert fb.model == "acme.edge.ensemble" and fb.points == 2 and fb.received == 123.0
    assert fb.timestamps == ["2026-03-01T09:00:00+00:00", "2026-03-01T10:00:00.500000+00:00"]
    same_instant = FeedbackRequest(id="w", label="false_alarm", timestamps=["2026-03-01T09:00:00Z", 1772355600])
    with pytest.raises(InvalidInputError, match=r"timestamps\[1\]: the same point as timestamps\[0\]"):
        check_feedback(same_instant)
    with pytest.raises(InvalidInputError, match=r"timestamps\[0\]"):
        check_feedback(FeedbackRequest(id="w", label="false_alarm", timestamps=["yesterday-ish"]))
    with pytest.raises(InvalidInputError, match=r"indices\[1\]: -2 is negative"):
        check_feedback(FeedbackRequest(id="w", label="false_alarm", indices=[1, -2]))
    with pytest.raises(InvalidParameterError, match="group"):
        check_feedback(FeedbackRequest(id="w", label="false_alarm", indices=[1], group="Edge Routers"))
    with pytest.raises(InvalidInputError, match="indices: 4 points, at most 3"):
        check_feedback(FeedbackRequest(id="w", label="false_alarm", indices=[1, 2, 3, 4]), Limits(max_points=3))


# -- the arithmetic -------------------------------------------------------------------------------


def test_precision_false_positive_rate_and_alarm_rate():
    tr = FeedbackTracker(None, min_labels=5, clock=Clock())
    m = "default.default.ensemble"
    tr.record_alarms(m, 600, 12)
    tr.record_alarms(m, 400, 8)
    tr.record(_fb("true_anomaly", 15))
    tr.record(_fb("false_alarm", 5))
    tr.record(_fb("missed_anomaly", 5))
    w = tr.window(m)
    assert (w.points, w.alarms, w.true_anomaly, w.false_alarm, w.missed_anomaly) == (1000, 20, 15, 5, 5)
    assert w.precision == 0.75 and w.recall == 0.75
    assert w.false_positive_rate == 0.005 and w.alarm_rate == 0.02
    assert tr.precision(m) == 0.75
    r = tr.report()[m]
    assert r["window"]["precision"] == 0.75 and r["total"]["alarm_rate"] == 0.02
    json.dumps(r, allow_nan=False)
    with pytest.raises(InvalidParameterError):
        tr.record_alarms(m, 3, 4)


def test_precision_waits_for_enough_labels_and_nothing_divides_by_zero():
    tr = FeedbackTracker(None, min_labels=5, clock=Clock())
    m = "default.default.ensemble"
    tr.record(_fb("false_alarm", 1))  # one early false alarm is not a precision of 0
    assert tr.precision(m) is None and tr.report()[m]["window"]["precision"] is None
    assert tr.total(m).precision == 0.0
    assert tr.window(m).false_positive_rate is None and tr.window(m).alarm_rate is None  # no points scored yet
    tr.record(_fb("false_alarm", 4))
    assert tr.precision(m) == 0.0


def test_window_slides_and_totals_stay():
    clock = Clock()
    tr = FeedbackTracker(None, window_s=3600, buckets=60, min_labels=1, clock=clock)
    m = "default.default.ensemble"
    tr.record_alarms(m, 1000, 50)
    tr.record(_fb("false_alarm", 10, at=clock.t))
    clock.t += 1800
    tr.record_alarms(m, 1000, 10)
    tr.record(_fb("true_anomaly", 10, at=clock.t))
    assert tr.window(m).alarm_rate == 0.03 and tr.precision(m) == 0.5
    clock.t += 1800 + 60  # the first half hour has left the window
    w = tr.window(m)
    assert (w.points, w.alarms, w.false_alarm, w.true_anomaly) == (1000, 10, 0, 10)
    assert w.alarm_rate == 0.01 and tr.precision(m) == 1.0
    assert tr.total(m).alarm_rate == 0.03 and tr.total(m).precision == 0.5
    tr.record(_fb("false_alarm", 10, at=clock.t - 600))  # received late: still counted in its own bucket
    assert tr.window(m).false_alarm == 10
    clock.t += 3600 + 60
    assert tr.window(m).points == 0 and tr.total(m).points == 2000


# -- the durable log ------------------------------------------------------------------------------


def test_labels_are_appended_to_jsonl_and_replayed_by_a_new_tracker(tmp_path):
    path = tmp_path / "feedback.jsonl"
    clock = Clock()
    tr = FeedbackTracker(path, min_labels=1, clock=clock)
    req = FeedbackRequest(id="web-1/cpu", label="false_alarm", indices=[5, 6, 7], note="deploy")
    fb = check_feedback(req, now=clock.t, by="key:ana")  # the credential's identity, never a request field
    tr.record(fb)
    tr.record(_fb("true_anomaly", 1, at=clock.t))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["label"] == "false_alarm" and first["indices"] == [5, 6, 7] and first["note"] == "deploy"
    assert first["by"] == "key:ana" and first["model"] == "default.default.ensemble"
    with open(path, "a") as f:
        f.write('{"model": "default.default.ensemble", "label": "true_an')  # a torn last write
    back = FeedbackTracker(path, min_labels=1, clock=clock)
    assert back.replayed == 2
    t = back.total("default.default.ensemble")
    assert (t.false_alarm, t.true_anomaly, t.points) == (3, 1, 0)
    assert back.precision("default.default.ensemble") == 0.25
    back.record(_fb("true_anomaly", 2, at=clock.t))  # appended on a line of its own
    assert FeedbackTracker(path, clock=clock).total("default.default.ensemble").true_anomaly == 3


def test_default_file_is_under_the_eyenet_home(tmp_path):
    assert feedback.default_path(tmp_path) == tmp_path.absolute() / ".eyenet" / "feedback.jsonl"
