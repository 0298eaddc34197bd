"""Training and tuning jobs over the API: the spec checks, the job board's states and bounds, and
real jobs on a served app (Ray tasks, Ray Tune) started, followed, cancelled and scoped by tenant."""
from __future__ import annotations

import asyncio
import time

import pytest
import requests

from eyenet.core.errors import (InvalidParameterError, LifecycleError, QuotaExceededError, UnknownNameError)
from eyenet.lifecycle import jobs
from eyenet.serving.jobs import CANCELLED, FAILED, LINE_CHARS, RUNNING, SUCCEEDED, JobBoard

# ----------------------------------------------------------------------------------------------
# what a job asks for is checked before it starts


def _spec(**kw):
    return jobs.JobSpec(**{"kind": "train", "family": "zscore", **kw})


@pytest.mark.parametrize("spec, message", [
    (_spec(kind="fit"), "is not a job kind"),
    (_spec(params={"window_size": 3}), "window_size"),
    (_spec(family="lstm", params={"max_epochs": 0}), "max_epochs"),
    (_spec(group="Not A Group"), "group"),
    (_spec(kind="tune", params={"window": 8}), "is not a tune parameter"),
    (_spec(kind="tune", params={"trials": 0}), "params.trials"),
    (_spec(kind="tune", params={"trials": 65}), "jobs.max_trials"),
    (_spec(kind="tune", params={"trials": True}), "params.trials"),
    (_spec(kind="tune", params={"space": {"nope": {"choice": [1, 2]}}}), "is not a parameter of 'zscore'"),
    (_spec(data={"synthetic": "disk_pct"}), "is not a synthetic metric"),
    (_spec(data={"synthetic": "cpu_pct", "range": "1h"}), "only the metric"),
    (_spec(data={}), "one of"),
    (_spec(data={"prometheus": "up"}), "jobs.prometheus_url"),
    (_spec(family="classifier"), "learns from labels"),
    (_spec(kind="tune", family="classifier"), "learns from labels"),
    (_spec(family="ensemble", params={"members": [{"family": "classifier"}]}), "learns from labels"),
])
def test_a_bad_job_is_refused_naming_the_problem(spec, message):
    with pytest.raises(InvalidParameterError, match=message):
        jobs.check_spec(spec)


def test_an_unknown_family_is_named_and_a_prometheus_source_gets_its_defaults_and_bounds():
    with pytest.raises(UnknownNameError, match="nope"):
        jobs.check_spec(_spec(family="nope"))
    url = "http://127.0.0.1:9"
    done = jobs.check_spec(_spec(data={"prometheus": "sum(rate(x[5m]))"}), prometheus_url=url)
    assert done.data == {"prometheus": "sum(rate(x[5m]))", "range": "7d", "step": "1m"}
    with pytest.raises(InvalidParameterError, match="widen the step"):
        jobs.check_spec(_spec(data={"prometheus": "up", "range": "30d", "step": "1m"}), prometheus_url=url)
    with pytest.raises(InvalidParameterError, match="data.range"):
        jobs.check_spec(_spec(data={"prometheus": "up", "range": "soon"}), prometheus_url=url)
    tune = jobs.check_spec(_spec(kind="tune", params={"trials": 3}))
    assert tune.params == {"trials": 3, "seed": 0}


# ----------------------------------------------------------------------------------------------
# the board: states, progress, log, bounds, tenants (jobs here are coroutines, not Ray tasks)


class Launcher:
    """Launches each job as an asyncio task running ``body(board, job_id)``; cancel cancels it."""

    def __init__(self, body):
        self.body, self.board, self.cancelled = body, None, []

    def launch(self, job_id, spec):
        return asyncio.get_running_loop().create_task(self.body(self.board, job_id))

    def cancel(self, task):
        self.cancelled.append(task)
        task.cancel()


def _board(body, **settings):
    launcher = Launcher(body)
    launcher.board = JobBoard(settings, launcher.launch, launcher.cancel)
    return launcher.board, launcher


SPEC = {"kind": "train", "family": "lstm", "group": "web", "tenant": "acme", "data": {"synthetic": "cpu_pct"},
        "params": {"max_epochs": 3}}


async def _until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_job_reports_progress_and_log_and_ends_with_its_version():
    async def body(board, job_id):
        for epoch in range(1, 4):
            board.report(job_id, line=f"epoch {epoch}", progress={"done": epoch, "total": 3, "unit": "epochs"})
            await asyncio.sleep(0.01)
        return {"version": {"name": "acme.web.lstm", "version": 7}}

    async def main():
        board, _ = _board(body)
        job = await board.start(SPEC, "ops")
        assert job["state"] == "pending" and job["actor"] == "ops" and job["id"].startswith("j")
        await _until(lambda: board.get(job["id"])["state"] == SUCCEEDED)
        got = board.get(job["id"])
        assert got["version"] == {"name": "acme.web.lstm", "version": 7}
        assert got["progress"] == {"done": 3, "total": 3, "unit": "epochs"}
        assert got["started"] is not None and got["ended"] >= got["started"]
        assert [line.split(" ", 1)[1] for line in got["logs"][1:]] == ["epoch 1", "epoch 2", "epoch 3"]
        assert "started by ops" in got["logs"][0]
        assert board.report(job["id"], line="late") is False  # an ended job takes no more reports
        assert board.stats()[SUCCEEDED] == 1

    asyncio.run(main())


def test_a_failing_job_says_why_and_a_cancelled_one_stays_cancelled():
    async def fails(board, job_id):
        board.report(job_id, line="reading http://user:secret@prom:9090")
        raise ValueError("cpu_pct: training data has 3 rows")

    async def slow(board, job_id):
        board.report(job_id, progress={"done": 0, "total": 100, "unit": "epochs"})
        await asyncio.sleep(60)

    async def main():
        board, _ = _board(fails)
        job = await board.start(SPEC, "ops")
        await _until(lambda: board.get(job["id"])["state"] == FAILED)
        got = board.get(job["id"])
        assert got["error"] == "ValueError: cpu_pct: training data has 3 rows"
        assert not any("secret" in line for line in got["logs"])  # credentials never reach the log

        board, launcher = _board(slow)
        job = await board.start(SPEC, "ops")
        await _until(lambda: board.get(job["id"])["state"] == RUNNING)
        out = board.cancel(job["id"], "alice")
        assert out["state"] == CANCELLED and launcher.cancelled
        await asyncio.sleep(0.05)
        assert board.get(job["id"])["state"] == CANCELLED  # the killed task does not turn it into failed
        with pytest.raises(LifecycleError, match="already cancelled"):
            board.cancel(job["id"], "alice")

    asyncio.run(main())


def test_the_board_is_bounded_in_active_jobs_kept_jobs_log_lines_and_time():
    async def chatty(board, job_id):
        for i in range(50):
            board.report(job_id, line=f"line {i} " + "x" * 2000)
        await asyncio.sleep(60)

    async def quick(board, job_id):
        return {"version": None}

    async def main():
        board, _ = _board(chatty, max_active=2, log_lines=10, timeout_s=0.3)
        first = await board.start(SPEC, "ops")
        await board.start(SPEC, "ops")
        with pytest.raises(QuotaExceededError, match="jobs.max_active"):
            await board.start(SPEC, "ops")
        await _until(lambda: "line 49" in board.get(first["id"])["logs"][-1])
        got = board.get(first["id"])
        assert len(got["logs"]) == 10 and all(len(line) <= LINE_CHARS + 9 for line in got["logs"])
        await _until(lambda: board.get(first["id"])["state"] == FAILED)
        assert "jobs.timeout_s" in board.get(first["id"])["error"]

        board, _ = _board(quick, keep=3, max_active=5)
        ids = []
        for _ in range(5):
            ids.append((await board.start(SPEC, "ops"))["id"])
            await _until(lambda: board.get(ids[-1])["state"] == SUCCEEDED)
        assert [j["id"] for j in board.list()] == ids[:-4:-1]  # the newest three, newest first
        with pytest.raises(UnknownNameError, match="last 3 jobs"):
            board.get(ids[0])

    asyncio.run(main())


def test_a_tenant_sees_and_cancels_only_its_own_jobs():
    async def slow(board, job_id):
        await asyncio.sleep(60)

    async def main():
        board, _ = _board(slow)
        acme = await board.start(SPEC, "ops")
        globex = await board.start({**SPEC, "tenant": "globex"}, "g-ops")
        assert [j["id"] for j in board.list(["acme"])] == [acme["id"]]
        assert {j["id"] for j in board.list(None)} == {acme["id"], globex["id"]}
        with pytest.raises(UnknownNameError):
            board.get(globex["id"], ["acme"])
        with pytest.raises(UnknownNameError):
            board.cancel(globex["id"], "ops", ["acme"])
        assert board.get(globex["id"])["state"] != CANCELLED
        for j in (acme, globex):
            board.cancel(j["id"], "admin")

    asyncio.run(main())


# ----------------------------------------------------------------------------------------------
# training in the job's process: progress per epoch, the version tagged with the job


class Collected:
    def __init__(self):
        self.lines, self.steps = [], []

    def line(self, text):
        self.lines.append(text)

    def progress(self, done, total, unit):
        self.steps.append((done, total, unit))


def test_a_train_job_reports_each_epoch_and_registers_a_challenger_tagged_with_the_job(mlflow_store):
    spec = jobs.check_spec(_spec(family="lstm", group="jobs-unit", params={"max_epochs": 2, "window": 16}))
    series, source = jobs.load_data(spec)
    out = Collected()
    version = jobs.train(spec, None, series, source, registry=mlflow_store, reporter=out, tags={"eyenet.job": "j0"})
    assert version.name == "default.jobs-unit.lstm" and "challenger" in version.aliases
    assert out.steps[0] == (0, 2, "epochs") and out.steps[-1][2] == "epochs"
    assert 1 <= out.steps[-1][0] <= 2
    assert sum(line.startswith("epoch ") for line in out.lines) == out.steps[-1][0]
    assert mlflow_store.version(version.name, version=version.version).tags["eyenet.job"] == "j0"
    assert source["kind"] == "synthetic" and source["metric"] == "cpu_pct"


# ----------------------------------------------------------------------------------------------
# real jobs on a served app


def _call(app, method, path, key="operator", **kw):
    return requests.request(method, app["url"] + path, timeout=60,
                            headers={"Authorization": f"Bearer {app['keys'][key]}"}, **kw)


def _wait(app, job_id, states, timeout=240.0, key="operator"):
    deadline = time.monotonic() + timeout
    while True:
        job = _call(app, "GET", f"/v1/jobs/{job_id}", key).json()
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.slow
def test_jobs_over_the_api_train_tune_cancel_and_stay_within_their_tenant(secured_app):
    app = secured_app
    bad = _call(app, "POST", "/v1/jobs", json={"kind": "train", "family": "zscore", "params": {"window_size": 3}})
    assert bad.status_code == 422 and "window_size" in bad.json()["error"]
    assert _call(app, "POST", "/v1/jobs", "reader", json={"kind": "train", "family": "zscore"}).status_code == 403
    assert _call(app, "POST", "/v1/jobs", "writer", json={"kind": "train", "family": "zscore"}).status_code == 403
    assert _call(app, "GET", "/v1/jobs", "reader").json() == {"jobs": []}  # nothing started by the refusals

    started = _call(app, "POST", "/v1/jobs", json={"kind": "train", "family": "zscore", "group": "jobs"})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["state"] in ("pending", "running") and job["tenant"] == "acme"
    done = _wait(app, job["id"], (SUCCEEDED, FAILED))
    assert done["state"] == SUCCEEDED, done
    assert done["version"]["name"] == "acme.jobs.zscore" and done["progress"] == {"done": 1, "total": 1, "unit": "fits"}
    assert any("registered acme.jobs.zscore" in line for line in done["logs"])
    models = _call(app, "GET", "/v1/models", "reader").json()["models"]
    assert any(m["name"] == "acme.jobs.zscore" and m["version"] == done["version"]["version"] for m in models)

    # another tenant neither sees nor cancels it
    assert _call(app, "GET", f"/v1/jobs/{job['id']}", "globex-operator").status_code == 404
    assert _call(app, "GET", "/v1/jobs", "globex-operator").json() == {"jobs": []}
    assert [j["id"] for j in _call(app, "GET", "/v1/jobs", "admin").json()["jobs"]] == [job["id"]]
    assert _call(app, "POST", f"/v1/jobs/{job['id']}/cancel").status_code == 409

    # a tune job: Ray Tune trials counted as they end, the best configuration registered
    tune = _call(app, "POST", "/v1/jobs", json={"kind": "tune", "family": "zscore", "group": "jobs",
                                                "params": {"trials": 2, "space": {"window": {"choice": [24, 48]}}}})
    assert tune.status_code == 202, tune.text
    tuned = _wait(app, tune.json()["id"], (SUCCEEDED, FAILED), timeout=300)
    assert tuned["state"] == SUCCEEDED, tuned
    assert tuned["progress"] == {"done": 2, "total": 2, "unit": "trials"}
    assert tuned["version"]["version"] > done["version"]["version"]
    assert sum("trial " in line for line in tuned["logs"]) == 2

    # a long training cancelled while it runs: nothing registered, its task gone
    long = _call(app, "POST", "/v1/jobs", json={"kind": "train", "family": "lstm", "group": "jobs-cancel",
                                                "params": {"max_epochs": 500, "patience": 500}}).json()
    running = _wait(app, long["id"], (RUNNING,), timeout=120)
    assert running["state"] == RUNNING, running
    assert _job_processes(long["id"])  # the job's Ray worker, named after its task
    cancelled = _call(app, "POST", f"/v1/jobs/{long['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == CANCELLED
    time.sleep(3)
    after = _call(app, "GET", f"/v1/jobs/{long['id']}").json()
    assert after["state"] == CANCELLED and after["version"] is None
    assert not any(m["name"] == "acme.jobs-cancel.lstm"
                   for m in _call(app, "GET", "/v1/models", "reader").json()["models"])
    assert not _job_processes(long["id"])


def _job_processes(job_id: str) -> list:
    """Processes running job ``job_id``'s task (a Ray worker titles itself ``ray::<task name>``)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(f"eyenet-job-{job_id}" in part for part in p.info["cmdline"] or ()):
            found.append(p)
    return found
