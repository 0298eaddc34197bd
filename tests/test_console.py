"""The web console in a real browser: Debian's chromium driven by Playwright, against a real app with
authentication on (the ``secured_app`` fixture: tenants acme and globex, one key per role).

Screenshots of the pages go to ``EYENET_ARTIFACTS`` (default ``build/artifacts`` in the repository),
one PNG per page; the draw time of a 10,000-point series view is printed (bench/RESULTS.md keeps it).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from servers import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHROMIUM_MISSING = "Debian's chromium is not installed (no chromium on PATH; see .ci/install-packages)"
ARTIFACTS = Path(os.environ.get("EYENET_ARTIFACTS") or Path(__file__).resolve().parents[1] / "build" / "artifacts")


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(CHROMIUM_MISSING)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    # no sandbox: the tests may run as root, where Chromium's sandbox refuses to start
    b = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
    yield b
    b.close()
    pw.stop()


def _page(browser, app, key_name: str):
    """A fresh browser tab logged in with the key ``key_name``."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app["url"] + "/")
    page.fill("#login-key", app["keys"][key_name])
    page.click("#login-submit")
    page.wait_for_selector("#identity:not(:empty)", timeout=30_000)  # selectors, not scripts: the CSP forbids eval
    return page


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def _stream(app, sid: str, values: np.ndarray) -> dict:
    r = requests.post(app["url"] + "/v1/stream", timeout=60, headers={"Authorization": f"Bearer {app['keys']['writer']}"},
                      json={"id": sid, "values": [float(v) for v in values], "group": "web"})
    assert r.status_code == 200, r.text
    return r.json()


def _listed(app, sid: str) -> bool:
    r = requests.get(app["url"] + "/v1/series", params={"match": sid}, timeout=30,
                     headers={"Authorization": f"Bearer {app['keys']['reader']}"})
    return any(s["id"] == sid for s in r.json()["series"])


def _false_alarms(app) -> int:
    """The false alarms labelled on acme's model so far (the monitor's feedback figures)."""
    r = requests.get(app["url"] + "/v1/models", timeout=30, headers={"Authorization": f"Bearer {app['keys']['reader']}"})
    fb = (r.json()["monitoring"].get(app["models"]["acme"]) or {}).get("feedback") or {}
    return int((fb.get("total") or {}).get("false_alarm", 0))


def test_the_page_loads_without_a_key_and_the_api_still_needs_one(secured_app, browser):
    page = browser.new_page()
    resp = page.goto(secured_app["url"] + "/")
    assert resp.status == 200 and "default-src 'self'" in resp.headers["content-security-policy"]
    assert page.is_visible("#login-form") and not page.is_visible("#nav")
    assert requests.get(secured_app["url"] + "/v1/series", timeout=30).status_code == 401
    for path in ("/vendor/%2e%2e%2f__init__.py", "/vendor/%2e%2e%2fconsole.js", "/console.py", "/vendor/.hidden.js"):
        r = requests.get(secured_app["url"] + path, timeout=30)  # nothing else is served, with or without a key
        assert r.status_code in (401, 404) and "import" not in r.text, path
    page.fill("#login-key", "eyn_000000000000_" + "x" * 43)
    page.click("#login-submit")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert page.is_visible("#login-form")
    page.close()


def test_an_alarm_is_marked_on_the_series_and_labelled_a_false_alarm(secured_app, browser):
    x = np.resize(np.asarray(secured_app["values"], dtype=float), 600)
    spike = 560
    x[spike] += 40 * float(np.std(x[:500]))
    answered = _stream(secured_app, "console-cpu", x)
    assert answered["points"][spike]["alarm"]
    wait_until("the series in the monitor", lambda: _listed(secured_app, "console-cpu"), timeout=30)
    page = _page(browser, secured_app, "writer")
    page.goto(secured_app["url"] + "/#/series")
    page.wait_for_selector("#series-table a:has-text('console-cpu')", timeout=30_000)
    _shot(page, "series-list")
    page.goto(secured_app["url"] + "/#/series/acme/web/console-cpu")
    row = page.wait_for_selector(f"#alarms tr[data-index='{spike}']", timeout=30_000)
    assert page.query_selector("#chart-value canvas") is not None
    _shot(page, "series")
    before = _false_alarms(secured_app)
    row.query_selector(".fb-false_alarm").click()
    page.wait_for_selector("#feedback-counts:has-text('false')", timeout=30_000)
    assert f"false_alarm: {before + 1}" in page.inner_text("#feedback-counts")  # the counts changed
    assert _false_alarms(secured_app) == before + 1
    assert page.get_attribute(f"#alarms tr[data-index='{spike}']", "data-label") == "false_alarm"
    page.close()


def _poor_champion_and_better_challenger(mlflow_store) -> str:
    """acme's group ``console``: a poor champion (z-score and MAD over 3 points) and a challenger the
    gate prefers (their defaults), trained on the synthetic telemetry it holds out labelled data of."""
    from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
    from eyenet.core import presets
    from eyenet.lifecycle import holdout, training

    series = default_series()
    data = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    values = np.asarray(series.values)
    members = lambda window: [{"family": f, "params": {"window": window} if window else {}} for f in ("zscore", "mad")]
    poor = training.train_and_register(presets.model_config("ensemble", {"members": members(3)}), values,
                                       registry=mlflow_store, group="console", tenant="acme", data=data)
    mlflow_store.set_alias(poor.version.name, "champion", poor.version.version)
    training.train_and_register(presets.model_config("ensemble", {"members": members(None)}), values,
                                registry=mlflow_store, group="console", tenant="acme", data=data)
    return poor.version.name


def test_an_operator_promotes_the_challenger_and_a_reader_is_not_offered_it(secured_app, browser, mlflow_store):
    name = _poor_champion_and_better_challenger(mlflow_store)
    wait_until("the controller to serve the poor champion", lambda: name in requests.get(
        secured_app["url"] + "/v1/models", timeout=30,
        headers={"Authorization": f"Bearer {secured_app['keys']['reader']}"}).json()["serving"], timeout=60)
    reader = _page(browser, secured_app, "reader")
    reader.goto(secured_app["url"] + "/#/models")
    try:
        # the first /v1/models of a session reads every registered model from MLflow: slow late in a full run
        reader.wait_for_selector(f"[id='served-{name}']", timeout=120_000)
    except Exception:
        raise AssertionError(reader.inner_text("body")[:2000]) from None
    assert reader.query_selector(f"[id='promote-{name}']") is None
    reader.close()
    page = _page(browser, secured_app, "operator")
    page.goto(secured_app["url"] + "/#/models")
    served = page.wait_for_selector(f"[id='served-{name}']", timeout=120_000)
    before = served.inner_text()
    _shot(page, "models")
    page.click(f"[id='promote-{name}']")
    try:
        after = wait_until("the served version to change", lambda: (
            (t := page.inner_text(f"[id='served-{name}']")) != before and t.isdigit() and t), timeout=60, every=0.5)
    except AssertionError:
        raise AssertionError(page.inner_text("#error-text") + " | " + page.inner_text(f"[id='result-{name}']")) from None
    assert int(after) > int(before)
    models = requests.get(secured_app["url"] + "/v1/models", timeout=30,
                          headers={"Authorization": f"Bearer {secured_app['keys']['reader']}"}).json()
    assert models["serving"][name] == int(after)
    page.close()


def test_ten_thousand_points_draw_in_under_a_second_and_an_idle_page_stays_quiet(secured_app, browser):
    values = np.resize(np.asarray(secured_app["values"], dtype=float), 10_000)
    _stream(secured_app, "console-long", values)
    wait_until("the long series in the monitor", lambda: _listed(secured_app, "console-long"), timeout=30)
    page = _page(browser, secured_app, "reader")
    page.goto(secured_app["url"] + "/#/series/acme/web/console-long")
    try:
        page.wait_for_selector("body[data-draw-ms]", state="attached", timeout=60_000)
    except Exception:
        raise AssertionError(page.inner_text("body")[:1500]) from None
    draw_ms = float(page.get_attribute("body", "data-draw-ms"))
    print(f"\nconsole: 10,000 points drawn in {draw_ms:.0f} ms after the data arrived")
    assert draw_ms < 1000
    page.goto(secured_app["url"] + "/#/overview")
    page.wait_for_selector("#health", timeout=30_000)
    _shot(page, "overview")
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if "/v1/" in r.url or "/healthz" in r.url else None)
    time.sleep(10)
    assert len(calls) <= 10, calls  # at most one API request a second while idle
    page.close()


def test_an_operator_starts_a_small_training_job_and_watches_it_finish(secured_app, browser):
    reader = _page(browser, secured_app, "reader")
    reader.goto(secured_app["url"] + "/#/jobs")
    reader.wait_for_selector("#jobs-table")
    assert reader.query_selector("#job-start") is None  # a reader is not offered what it may not do
    reader.close()
    page = _page(browser, secured_app, "operator")
    page.goto(secured_app["url"] + "/#/jobs")
    page.wait_for_selector("#job-family option[value='lstm']", state="attached", timeout=30_000)
    page.select_option("#job-kind", "train")
    page.select_option("#job-family", "lstm")
    page.fill("#job-group", "console-jobs")
    page.fill("#job-params", '{"max_epochs": 2, "window": 16}')
    page.click("#job-start")
    page.wait_for_selector("#job-detail:not([hidden])", timeout=30_000)
    job_id = page.inner_text("#job-detail h2 code").strip()
    assert job_id.startswith("j"), job_id
    row = f"[id='job-{job_id}']"
    try:
        wait_until("the job to succeed", lambda: page.inner_text(f"{row} td.state") == "succeeded", timeout=240,
                   every=0.5)
    except AssertionError:
        raise AssertionError(page.inner_text("#job-detail")[:3000]) from None
    assert page.inner_text(f"{row} a.version-link").startswith("acme.console-jobs.lstm v")
    # the detail follows the list: once the row says succeeded, the open job's panel does too, with its log
    wait_until("the job's detail to show its end", lambda: "succeeded" in page.inner_text("#job-detail dl"), timeout=10)
    assert "epoch 1/2" in page.inner_text("#job-logs")
    assert "2 epochs" in page.inner_text(f"{row}") or "1 / 2 epochs" in page.inner_text(f"{row}")
    _shot(page, "jobs")
    page.close()
