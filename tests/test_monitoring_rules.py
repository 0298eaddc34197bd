"""Alert rules and dashboard: promtool checks and unit tests, names that exist, a real Prometheus firing.

Prometheus and promtool come from Debian's ``prometheus`` package (``make
test`` installs it when it can); without them the tests that run them skip.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import start_http_server
from prometheus_client.metrics import MetricWrapperBase

from eyenet.monitoring import metrics as m
from eyenet.core.reference import DriftReference, Reference
from eyenet.monitoring.drift import DriftMonitor

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "serve" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
DASHBOARD = ROOT / "serve" / "grafana" / "eyenet.json"
ALERTS = {"EyeNetHighLatencyP95", "EyeNetErrorRateHigh", "EyeNetDrift", "EyeNetAlarmRateBurst",
          "EyeNetPrecisionDrop", "EyeNetModelStale"}
_METRIC = re.compile(r"\beyenet[_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"\b(eyenet_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package 'prometheus'; `make test` installs it as root)")
    return path


def _run(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _exposed() -> dict[str, set[str]]:
    """Series names EyeNet's registry can expose, with the labels each carries."""
    out: dict[str, set[str]] = {}
    families = set()
    for obj in vars(m).values():
        if isinstance(obj, MetricWrapperBase):
            labels = set(obj._labelnames)  # prometheus-client keeps no public list of a family's labels
            fam = next(iter(obj.describe()))
            families.add(fam.name)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}[fam.type]
            for s in suffixes:
                out[fam.name + s] = labels | ({"le"} if s == "_bucket" else set())
    assert {f.name for f in m.REGISTRY.collect()} == families  # every metric is a module attribute
    return out


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _check_names(expr: str, known: dict[str, set[str]], recorded: set[str], where: str) -> None:
    names = _METRIC.findall(expr)
    assert names, f"{where}: references no EyeNet series: {expr}"
    for name in names:
        assert name in known or name in recorded, f"{where}: {name} is not a series EyeNet exposes"
    for name, matchers in _SELECTOR.findall(expr):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            assert label in known[name], f"{where}: {name} has no label {label!r}"
    exposed_labels = set().union(*known.values()) | {"instance", "job"}
    for group in _GROUPING.findall(expr):
        for label in filter(None, (s.strip() for s in group.split(","))):
            assert label in exposed_labels, f"{where}: no EyeNet series has a label {label!r}"


# -- the files reference only what exists ---------------------------------------------------------


def test_rules_define_every_alert_and_reference_only_exposed_series():
    known, rules = _exposed(), _rules()
    assert {r["alert"] for r in rules if "alert" in r} == ALERTS
    recorded = {r["record"] for r in rules if "record" in r}
    for r in rules:
        _check_names(r["expr"], known, recorded, r.get("alert") or r["record"])
        if "alert" in r:
            assert r["labels"]["severity"] in {"critical", "warning", "info"}
            assert r["annotations"]["summary"] and r["annotations"]["description"]


def test_dashboard_is_grafana_json_over_exposed_series_only():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "eyenet" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "model"} <= variables
    known = _exposed()
    exprs = _dashboard_exprs()
    for e in exprs:
        _check_names(e, known, set(), "dashboard")
    text = " ".join(exprs)
    for shown in ("eyenet_request_latency_ms_bucket", "eyenet_errors_total", "eyenet_points_scored_total",
                  "eyenet_anomalies_flagged_total", "eyenet_drift_score", "eyenet_precision",
                  "eyenet_false_positive_rate", "eyenet_alarm_rate", "eyenet_model_version"):
        assert shown in text, f"the dashboard does not show {shown}"
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, endpoint) (rate(eyenet_request_latency_ms_bucket" in text


# -- promtool -------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules_and_the_example_config():
    promtool = _tool("promtool")
    for args in (("check", "rules", "rules.yml"), ("check", "config", "prometheus.yml")):
        r = _run(promtool, *args)
        assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_fire_every_alert_and_keep_healthy_series_quiet():
    promtool = _tool("promtool")
    tested = {a["alertname"] for t in yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]
              for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    assert tested == ALERTS  # every alert has a case where it fires
    r = _run(promtool, "test", "rules", "rules_test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_parses_every_dashboard_query(tmp_path):
    promtool = _tool("promtool")
    exprs = [e.replace("$__rate_interval", "5m").replace("$model", ".*") for e in _dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:panel_{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    r = _run(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# -- a real Prometheus scraping EyeNet's registry -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_prometheus_scrapes_eyenet_metrics_and_fires_the_drift_alert(tmp_path):
    prometheus = _tool("prometheus")
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(min_points=100)
    for name in ("it.drifting.ensemble", "it.calm.ensemble"):
        monitor.set_reference(name, DriftReference({"value": Reference.from_values(rng.normal(0, 1, 2000))}))
    monitor.observe("it.drifting.ensemble", "value", rng.normal(2.0, 1, 1000))  # the injected drift
    monitor.observe("it.calm.ensemble", "value", rng.normal(0.0, 1, 1000))
    m.publish_drift(monitor)
    m.POINTS.labels("it.drifting.ensemble").inc(1000)

    exporter_port, prom_port = _free_port(), _free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=m.REGISTRY)
    # the project's rules, with the drift alert's "for" shortened so the test need not wait 15 minutes
    rules = yaml.safe_load(RULES.read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            if r.get("alert") == "EyeNetDrift":
                r["for"] = "0s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [{"job_name": "eyenet", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))
    with open(tmp_path / "prometheus.log", "w") as log:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        firing, series = [], []
        while time.monotonic() < deadline and not (firing and series):
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(1)
            try:
                q = urllib.parse.quote('eyenet_drift_score{test="psi"}')
                series = _get(f"{api}/query?query={q}")["data"]["result"]
                firing = [a for a in _get(f"{api}/alerts")["data"]["alerts"]
                          if a["labels"]["alertname"] == "EyeNetDrift" and a["state"] == "firing"]
            except OSError:
                continue  # not listening yet
        values = {s["metric"]["model"]: float(s["value"][1]) for s in series}
        assert values.get("it.drifting.ensemble", 0) > 0.3 > values.get("it.calm.ensemble", 1), values
        assert [(a["labels"]["model"], a["labels"]["feature"]) for a in firing] == [("it.drifting.ensemble", "value")]
        points = _get(f"{api}/query?query=eyenet_points_scored_total")["data"]["result"]
        assert any(s["metric"]["model"] == "it.drifting.ensemble" for s in points)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        m.DRIFT_SCORE.clear()
        m.DRIFTED.clear()
