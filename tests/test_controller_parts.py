"""The parts of the model controller without Ray: the serving table and switches, the retraining triggers,
the serving check on an embedded MLflow store, and the settings the actors are created with."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from eyenet.core import presets, synthetic
from eyenet.core.data import Series
from eyenet.lifecycle import audit, holdout, training
from eyenet.lifecycle.registry import CHAMPION, Registry
from eyenet.lifecycle.settings import RetrainSettings
from eyenet.monitoring.monitor import Monitor
from eyenet.serving import admission as adm
from eyenet.serving.controller import Controller, settings_from
from eyenet.serving.retraining import RetrainScheduler, Triggers
from eyenet.serving.settings import AppConfig, ControllerActorSettings
from eyenet.serving.switching import Entry, Switchboard

METRIC = "cpu_pct"


# -- the serving table ---------------------------------------------------------------------------
def test_an_entry_serves_next_from_its_instant_on_and_travels_as_a_list():
    e = Entry(3, 4, 100.0)
    assert (e.serving(99.9), e.serving(100.0)) == (3, 4)
    assert Entry(3, 4).serving(1e12) == 3  # announced, no instant yet
    assert Entry.from_list(e.to_list()) == e and Entry.from_list([5, None, None]) == Entry(5)


class FakeAdmission:
    """Admits every version but those in ``bad``; records refusals."""

    def __init__(self, bad: set[int] = frozenset()) -> None:
        self.bad = set(bad)
        self.refused: dict[str, dict] = {}
        self.refusals: list[tuple] = []

    async def check(self, name, version):
        return [f"v{version} is broken"] if version in self.bad else []

    def admitted(self, name):
        self.refused.pop(name, None)

    def is_refused(self, name, version):
        return self.refused.get(name, {}).get("version") == version

    async def refuse(self, name, old, new, reason):
        self.refused[name] = {"version": new, "reason": reason, "time": time.time()}
        self.refusals.append((name, old, new, reason))


class FakeRegistry:
    uri = "memory://"

    def __init__(self, tmp_path) -> None:
        self.audit_log = audit.AuditLog(tmp_path / "audit.jsonl")

    def set_tags(self, *a):
        pass


def _board(tmp_path, bad=frozenset(), **kw) -> tuple[Switchboard, FakeAdmission]:
    settings = ControllerActorSettings(**{"switch_delay_s": 0.1, "ready_timeout_s": 5.0, "replica_ttl_s": 5.0,
                                          "hold_s": 0.1, **kw})
    admission = FakeAdmission(bad)
    return Switchboard(settings, FakeRegistry(tmp_path), admission), admission


async def _replica(board: Switchboard, rid: str, name: str, stop: asyncio.Event) -> None:
    """A router replica: follows the table, loads what is announced, serves what the table says."""
    serving: dict[str, int] = {}
    heard: set[tuple[str, int]] = set()
    epoch = None
    while not stop.is_set():
        await board.follow(rid, epoch, serving)
        epoch = board.epoch_id()
        for n, lst in board.lists().items():
            entry = Entry.from_list(lst)
            if entry.next is not None:
                board.ready(rid, n, entry.next)
                if entry.at is not None and (n, entry.next) not in heard:  # told once, when it hears
                    heard.add((n, entry.next))
                    board.armed(rid, n, entry.next)
            serving[n] = entry.serving(time.time())
        await asyncio.sleep(0.01)


def test_a_restarted_switchboard_learns_what_serves_from_the_replicas_and_switches_them_all(tmp_path):
    board, _ = _board(tmp_path)
    name = "default.a.ensemble"

    async def run():
        board.start()
        board.heard("r1").serving = {name: 2}
        board.heard("r2").serving = {name: 2}
        await board.follow_alias(name, 2)  # what they serve is the champion: nothing to do
        assert board.lists() == {name: [2, None, None]} and not board.switching
        stop = asyncio.Event()
        replicas = [asyncio.create_task(_replica(board, r, name, stop)) for r in ("r1", "r2")]
        await board.follow_alias(name, 3)
        assert board.busy(name) and board.served() == []
        await board.wait(name, 10)
        stop.set()
        await asyncio.gather(*replicas)

    asyncio.run(run())
    assert board.lists() == {name: [3, None, None]} and board.served() == [(name, 3)]
    (rec,) = board.swaps
    assert rec["from"] == 2 and rec["to"] == 3 and rec["replicas"] == 2 and rec["late"] == []
    (ev,) = board.registry.audit_log.read(name)
    assert (ev.event, ev.version, ev.previous) == (audit.SERVE, 3, 2)


def test_a_version_that_fails_the_check_is_withdrawn_and_not_tried_again(tmp_path):
    board, admission = _board(tmp_path, bad={3})
    name = "default.b.ensemble"
    board.table[name] = Entry(2)

    async def run():
        board.start()
        await board.follow_alias(name, 3)
        await board.wait(name, 5)
        await board.follow_alias(name, 3)  # the alias could not be moved back: keep serving 2
        assert not board.switching

    asyncio.run(run())
    assert board.lists() == {name: [2, None, None]}
    assert admission.refusals == [(name, 2, 3, "version 3 cannot serve: v3 is broken")]
    assert board.swaps[0]["refused"].startswith("version 3 cannot serve")


def test_a_model_nothing_serves_yet_serves_its_champion_at_once(tmp_path):
    board, _ = _board(tmp_path)

    async def run():
        board.start()
        await board.follow_alias("default.c.ensemble", 1)
        await board.wait("default.c.ensemble", 5)

    asyncio.run(run())
    assert board.lists() == {"default.c.ensemble": [1, None, None]} and board.swaps[0]["replicas"] == 0


def test_an_alias_that_moves_again_before_the_instant_supersedes_the_switch(tmp_path):
    board, _ = _board(tmp_path, ready_timeout_s=30.0)
    name = "default.d.ensemble"
    board.table[name] = Entry(1)

    async def run():
        board.start()
        board.heard("slow").serving = {name: 1}  # never reports ready: the switch waits
        await board.follow_alias(name, 2)
        await asyncio.sleep(0.05)
        assert board.lists()[name] == [1, 2, None]
        await board.follow_alias(name, 3)  # withdrawn, the latest announced instead
        await asyncio.sleep(0.05)
        assert board.lists()[name] == [1, 3, None]
        board.switching[name].cancel()
        await asyncio.gather(*board.switching.values(), return_exceptions=True)

    asyncio.run(run())
    assert [("superseded" in r, r["to"]) for r in board.swaps] == [(True, 2), (True, 3)]
    assert board.lists()[name] == [1, None, None]


def test_the_lead_time_follows_how_late_replicas_hear(tmp_path):
    board, _ = _board(tmp_path, max_switch_delay_s=1.0)
    assert board.lead_s() == pytest.approx(0.1)
    board.arm_lags.append(0.2)
    assert board.lead_s() == pytest.approx(0.6)
    board.arm_lags.append(5.0)
    assert board.lead_s() == 1.0


# -- retraining ----------------------------------------------------------------------------------
def _drift(version: int, psi: float = 0.8) -> dict:
    return {"version": version, "features": {"value": {"psi": psi, "ks": 0.4, "drifted_by": ["psi"]}}}


def test_drift_must_persist_before_it_triggers_and_a_calm_spell_resets_it():
    t = Triggers(RetrainSettings(drift_for_s=10))
    assert t.drift("m", 1, _drift(1), now=100.0) is None
    assert t.drift("m", 1, _drift(1), now=105.0) is None
    why, metrics = t.drift("m", 1, _drift(1), now=110.0)
    assert "drift of value against version 1's training data for 10s" in why and metrics["psi"] == 0.8
    assert t.drift("m", 1, None, now=111.0) is None and "m" not in t.drift_since
    assert t.drift("m", 1, _drift(1), now=112.0) is None  # starts over
    assert t.drift("m", 2, _drift(1), now=200.0) is None  # drift measured against another version
    unwatched = {"version": 1, "features": {"score": {"psi": 1, "ks": 1, "drifted_by": ["psi"]}}}
    assert t.drift("m", 1, unwatched, now=300.0) is None


def test_precision_schedule_and_cool_down():
    t = Triggers(RetrainSettings(precision_below=0.5, every_s=100, cooldown_s=50))
    assert t.precision({"feedback": {"window": {"precision": 0.6}}}) is None
    assert t.precision({"feedback": {"window": {"precision": 0.2}}})[1] == {"precision": 0.2}
    assert t.precision(None) is None and t.precision({"feedback": None}) is None
    assert Triggers(RetrainSettings(precision_below=None)).precision(
        {"feedback": {"window": {"precision": 0.0}}}) is None
    assert t.schedule("m", now=99.0) is None and t.schedule("m", now=100.0)[0] == "scheduled every 100s"
    t.retrained("m", 100.0)
    assert t.cooling("m", 149.0) and not t.cooling("m", 150.0)
    assert t.schedule("m", now=150.0) is None


class FakeMonitor:
    def __init__(self, drifted=None, precision=None, recent=("s1", [1.0] * 500)) -> None:
        self._drifted, self._precision, self._recent = drifted, precision, recent
        self.asked_since: list = []

    async def drifted(self, name):
        return self._drifted

    async def report(self, name):
        return {name: {"feedback": {"window": {"precision": self._precision}}}}

    async def recent_values(self, name, rows, since):
        self.asked_since.append(since)
        return self._recent


class FakeReviews:
    def __init__(self, action: str = "promoted") -> None:
        self.action = action
        self.reviewed: list[str] = []

    async def review(self, name):
        self.reviewed.append(name)
        return SimpleNamespace(action=self.action, reason="better")

    def hold(self, name, version):
        self.held = (name, version)


def _scheduler(tmp_path, monitor, *, launch=None, served=(("default.r.ensemble", 1),), **settings):
    launched = []

    async def fake_launch(num_cpus, uri, name, series, values, root, audit_uri=None):
        launched.append((num_cpus, name, series, len(values), root, audit_uri))
        return SimpleNamespace(version=2, seconds=0.1)

    reviews = FakeReviews()
    registry = FakeRegistry(tmp_path)
    sched = RetrainScheduler(RetrainSettings(**settings), registry, reviews, served=lambda: list(served),
                             monitor=lambda: monitor, launch=launch or fake_launch,
                             audit_uri=str(tmp_path / "audit.jsonl"))
    return sched, launched, reviews


def test_persistent_drift_launches_a_retraining_that_is_reviewed_and_cools_down(tmp_path):
    mon = FakeMonitor(drifted=_drift(1))
    sched, launched, reviews = _scheduler(tmp_path, mon, drift_for_s=0, rows=400, num_cpus=0.5,
                                          root=str(tmp_path / "retrain"), auto_promote=True)
    sched.last_logged = lambda name: 0.0  # never retrained before

    async def run():
        assert await sched.check() == ["default.r.ensemble"]
        await asyncio.gather(*sched.retraining.values())
        assert "default.r.ensemble" not in sched.triggers.drift_since  # promoted: a new story
        assert await sched.check() == []  # cooling down

    asyncio.run(run())
    assert launched == [(0.5, "default.r.ensemble", "s1", 400, str(tmp_path / "retrain"), str(tmp_path / "audit.jsonl"))]
    assert mon.asked_since[0] is not None  # after a drift: only the points since it began
    (rec,) = sched.retrains
    assert rec["outcome"] == "promoted" and rec["version"] == 2 and "drift of value" in rec["reason"]
    assert reviews.reviewed == ["default.r.ensemble"]
    (ev,) = sched.registry.audit_log.read()
    assert (ev.event, ev.version, ev.metrics["psi"]) == (audit.RETRAIN, 1, 0.8)


def test_by_default_a_retrained_model_waits_for_an_operator(tmp_path):
    mon = FakeMonitor(drifted=_drift(1))
    sched, launched, reviews = _scheduler(tmp_path, mon, drift_for_s=0, rows=400, root=str(tmp_path / "retrain"))
    sched.last_logged = lambda name: 0.0

    async def run():
        assert await sched.check() == ["default.r.ensemble"]
        await asyncio.gather(*sched.retraining.values())

    asyncio.run(run())
    (rec,) = sched.retrains
    assert rec["outcome"] == "challenger" and "operator" in rec["gate"]
    assert reviews.reviewed == [] and reviews.held == ("default.r.ensemble", 2)  # never reviewed by itself


def test_the_cool_down_survives_a_restart_through_the_audit_log(tmp_path, monkeypatch):
    mon = FakeMonitor(precision=0.1)
    sched, launched, _ = _scheduler(tmp_path, mon, cooldown_s=3600)
    monkeypatch.setattr(sched, "last_logged", lambda name: time.time() - 60)  # retrained a minute ago
    assert asyncio.run(sched.check()) == [] and launched == []


def test_no_monitor_no_data_or_a_failed_launch_start_nothing_for_good(tmp_path):
    sched, launched, _ = _scheduler(tmp_path, None, every_s=1)
    assert asyncio.run(sched.check()) == []
    sched, launched, _ = _scheduler(tmp_path, FakeMonitor(recent=None), every_s=1)
    sched.last_logged = lambda name: 0.0
    assert asyncio.run(sched.check()) == [] and launched == []

    async def broken(*a, **kw):
        raise RuntimeError("no CPUs\nmore")

    sched, _, reviews = _scheduler(tmp_path, FakeMonitor(), launch=broken, every_s=1)
    sched.last_logged = lambda name: 0.0

    async def run():
        await sched.check()
        await asyncio.gather(*sched.retraining.values())

    asyncio.run(run())
    (rec,) = sched.retrains
    assert rec["outcome"] == "failed" and rec["error"] == "no CPUs" and reviews.reviewed == []
    assert not sched.retraining


# -- admission on an embedded store ----------------------------------------------------------------
def _register(store: Registry, group: str) -> int:
    n = presets.UP_ROWS
    ts, values, _ = synthetic.series(METRIC, n=n, seed=presets.UP_SEED)
    head = int(n * presets.UP_TRAIN_FRACTION)
    series = Series(METRIC.replace("_", "-"), ts[:head], values[:head])
    data = training.data_info(series, holdout.synthetic_source(METRIC))
    model, metrics = training.fit_model(presets.model_config("zscore", None), series.values)
    return store.register(model, group=group, metrics=metrics, data=data, probe=series.values).version


def test_admission_checks_once_and_a_refusal_moves_the_alias_back(mlflow_store, tmp_path, monkeypatch):
    from eyenet.lifecycle.gate import GatePolicy

    name = "default.admit.zscore"
    store = Registry(mlflow_store.uri, artifact_root=mlflow_store.artifact_root,
                     audit_log=audit.AuditLog(tmp_path / "audit.jsonl"))
    first, second = _register(store, "admit"), _register(store, "admit")
    assert [e.event for e in store.audit_log.read(name)] == ["TRAIN", "REGISTER"] * 2  # the given log
    probe = adm.probe_series(store, name, first, rows=500)
    assert probe and all(len(s.values) <= max(500, s.train_rows + 200) for s in probe)
    a = adm.Admission(store, GatePolicy(), rows=500, alias=CHAMPION)

    assert asyncio.run(a.check(name, first)) == []
    assert store.version(name, first).tags[adm.CHECK_TAG] == adm.PASSED
    with monkeypatch.context() as m:  # a passed version is not checked again
        m.setattr(adm, "serving_problems", lambda *a: pytest.fail("checked again"))
        assert asyncio.run(a.check(name, first)) == []

    store.set_alias(name, CHAMPION, second)
    asyncio.run(a.refuse(name, first, second, adm.Admission.reason(second, ["scores are non-finite"])))
    assert a.is_refused(name, second) and store.version(name, alias=CHAMPION).version == first
    events = [(e.event, e.version) for e in store.audit_log.read(name)][-2:]
    assert events == [(audit.REJECT, second), (audit.ROLLBACK, first)]
    a.admitted(name)
    assert not a.is_refused(name, second)


# -- settings ------------------------------------------------------------------------------------------
def test_the_actors_validate_their_settings_dicts(tmp_path):
    config = AppConfig(name="app1", alias="live", controller={"poll_s": 2, "retrain": {"rows": 500},
                                                              "audit_uri": str(tmp_path / "a.jsonl")})
    d = settings_from(config)
    assert isinstance(d, dict) and d["app"] == "app1" and d["alias"] == "live" and d["retrain"]["rows"] == 500
    ctl = Controller(None, d)
    assert ctl.settings.poll_s == 2 and ctl.settings.retrain.rows == 500 and ctl.admission.alias == "live"
    assert ctl.registry.audit_log.path == tmp_path / "a.jsonl"  # given, not through the environment
    with pytest.raises(ValidationError):
        Controller(None, {**d, "pol_s": 1})
    with pytest.raises(ValidationError):
        Monitor(None, {"drift_windw": 10})
    assert Monitor(None, config.monitor.model_dump()).recent_points == config.monitor.recent_points
