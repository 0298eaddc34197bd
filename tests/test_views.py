"""What a caller may see of the controller's status and the metrics: its own tenant's models only,
everything for an admin."""
from __future__ import annotations

from eyenet.serving import views
from eyenet.serving.auth import Identity

ACME = Identity("key:a", "acme", "reader")
ADMIN = Identity("key:root", "acme", "admin")


def test_the_controller_status_keeps_only_the_callers_models() -> None:
    status = {"table": {"acme.web.ensemble": [1, 2], "globex.web.ensemble": [3, None]},
              "refused": {"globex.web.ensemble": "x"}, "swaps": [{"name": "globex.web.ensemble"},
                                                                 {"name": "acme.web.ensemble"}],
              "reviews": [], "retrains": [], "switching": ["globex.web.ensemble"], "reviewing": [],
              "retraining": ["acme.web.ensemble"], "registry": {"ok": True},
              "replicas": {"r1": {"serving": {"acme.web.ensemble": 1, "globex.web.ensemble": 3}}}}
    seen = views.controller_status(status, ACME)
    assert list(seen["table"]) == ["acme.web.ensemble"] and seen["refused"] == {}
    assert seen["swaps"] == [{"name": "acme.web.ensemble"}] and seen["switching"] == []
    assert seen["retraining"] == ["acme.web.ensemble"] and seen["registry"] == {"ok": True}
    assert seen["replicas"]["r1"]["serving"] == {"acme.web.ensemble": 1}
    assert views.controller_status(status, ADMIN) is status


def test_metrics_keep_unlabelled_series_and_the_callers_models() -> None:
    text = ("# HELP eyenet_alarms_total alarms\n"
            'eyenet_alarms_total{model="acme.web.ensemble"} 3.0\n'
            'eyenet_alarms_total{model="globex.web.ensemble"} 9.0\n'
            'eyenet_requests_total{endpoint="/v1/stream"} 12.0\n')
    kept = views.metrics_text(text, ACME)
    assert "globex" not in kept and 'model="acme.web.ensemble"' in kept and "eyenet_requests_total" in kept
    assert views.metrics_text(text, ADMIN) == text
