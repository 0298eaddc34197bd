"""Credentials never leave in a URI: errors, logs, status reports."""
from __future__ import annotations

import pytest

from eyenet.core.redact import redact


@pytest.mark.parametrize("raw, want", [
    ("http://user:pass@host", "http://***@host"),
    ("https://user:p%40ss@mlflow.example.com:5000/path?x=1", "https://***@mlflow.example.com:5000/path?x=1"),
    ("postgresql://u:p@h/db", "postgresql://***@h/db"),
    ("postgresql+psycopg2://eyenet:s3cret@db:5432/mlflow", "postgresql+psycopg2://***@db:5432/mlflow"),
    ("http://token@host/x", "http://***@host/x"),
    ("postgresql://h/db?user=u&password=s3cret&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
    ("MLflow at http://u:p@h:5000: connecting failed (http://a:b@c)", "MLflow at http://***@h:5000: connecting failed (http://***@c)"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("file:///home/me/.eyenet/mlruns", "file:///home/me/.eyenet/mlruns"),
    ("no uri here", "no uri here"),
    (None, ""),
])
def test_redact(raw, want):
    assert redact(raw) == want


def test_registry_errors_do_not_show_the_password():
    from eyenet.lifecycle.registry import Registry, RegistryError

    reg = Registry("http://alice:s3cret@127.0.0.1:9", timeout=2)
    with pytest.raises(RegistryError) as err:
        reg.check()
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value)
    assert "http://***@127.0.0.1:9" in str(err.value)
    assert "s3cret" not in repr(reg)


def test_status_reports_redact_errors_and_nested_texts():
    from eyenet.core.redact import redact_all
    from eyenet.serving.switching import short

    assert short(RuntimeError("API request to http://bob:hunter2@mlflow:5000/api failed\nmore")) == \
        "API request to http://***@mlflow:5000/api failed"
    report = {"health": {"error": "postgresql://u:pw@db/x down"}, "swaps": [("http://a:b@h", 1)], "n": 3}
    assert redact_all(report) == {"health": {"error": "postgresql://***@db/x down"}, "swaps": [("http://***@h", 1)],
                                  "n": 3}
