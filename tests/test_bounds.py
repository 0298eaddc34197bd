"""Bounded state and reliability, without Ray: per-tenant quotas (rate buckets, live series), memory caps
with counted evictions (store, router caches, monitor), bounded reload, a flusher that survives failed
writes, a locked database retried, feedback only for scored points, fully matched ids, and a flood."""
from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from typing import Any

import numpy as np
import pytest

from eyenet.core import presets, synthetic
from eyenet.core.errors import InvalidInputError, InvalidParameterError, QuotaExceededError
from eyenet.core.model import AnomalyModel, StreamState
from eyenet.lifecycle import registry as reg
from eyenet.monitoring import metrics as m
from eyenet.monitoring.monitor import Monitor, Outbox
from eyenet.serving import http, schemas
from eyenet.serving.pipeline import AliasResolver, ModelCache, Pipeline
from eyenet.serving.quota import RateLimits, TokenBucket
from eyenet.serving.settings import AppConfig, QuotaSettings, StoreSettings
from eyenet.serving.streams import Refusal, StreamStore, Streams
from fakes import Shelf

MEMBERS = [{"family": "zscore", "params": {}}, {"family": "mad", "params": {}}]


def evictions(structure: str) -> float:
    return m.REGISTRY.get_sample_value("eyenet_evictions_total", {"structure": structure}) or 0.0


class Clock:
    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t


# -- rate quotas -----------------------------------------------------------------------------------------
def test_a_token_bucket_refills_at_its_rate_and_caps_at_its_burst():
    b = TokenBucket(10, 20, now=0.0)
    assert b.wait(20) == 0.0
    b.take(20)
    assert b.wait(5) == pytest.approx(0.5)
    b.refill(1.0)
    assert b.tokens == pytest.approx(10)
    b.refill(100.0)
    assert b.tokens == 20  # never more than the burst
    assert b.wait(1000) == 0.0  # a request bigger than the bucket passes when it is full


def test_rate_limits_refuse_with_retry_after_and_take_nothing_from_a_refused_request():
    clock = Clock()
    q = QuotaSettings(requests_per_s=2, points_per_s=100, burst_s=1,
                      tenants={"big": {"requests_per_s": 100}, "free": {"points_per_s": None}})
    rl = RateLimits(q, clock=clock)
    rl.check("a", 60)
    with pytest.raises(QuotaExceededError, match="points/s") as exc:
        rl.check("a", 60)  # 40 points left: refused whole
    assert exc.value.retry_after_s >= 1 and http.error_status(exc.value) == (429, "quota")
    rl.check("a", 40)  # the refused request took nothing: its request token is still there
    with pytest.raises(QuotaExceededError, match="requests/s"):
        rl.check("a", 0)
    rl.check("other", 100)  # another tenant has its own buckets
    for _ in range(50):
        rl.check("big", 1)  # an override
    rl.check("free", 10**9)  # points unlimited for this tenant
    clock.t += 1.0
    rl.check("a", 100)
    assert rl.stats()["refused"] == 2


def test_the_pace_of_new_series_puts_a_burst_into_debt_and_never_refuses():
    clock = Clock()
    rl = RateLimits(QuotaSettings(new_series_per_s=100, tenants={"free": {"new_series_per_s": None}}), clock=clock)
    assert rl.pace("a", 10) == 0.0  # within its small burst (PACE_BURST_S of the rate: 12.5)
    assert rl.pace("a", 100) == pytest.approx(0.975)  # 97.5 series owed at 100 a second
    assert rl.pace("a", 1) == pytest.approx(0.985)  # a later request queues behind the debt
    assert rl.pace("b", 12) == 0.0 and rl.pace("free", 10**6) == 0.0  # another tenant; an unpaced one
    clock.t += 1.0
    assert rl.pace("a", 1) == 0.0  # a second later the debt (98.5) is paid and 1.5 are there
    clock.t += 10.0
    assert rl.pace("a", 12) == 0.0  # paid off, and the bucket full again (never more than its burst)
    assert rl.pace("a", 2) == pytest.approx(0.015)
    assert rl.stats()["paced"] == 3 and rl.stats()["refused"] == 0
    assert QuotaSettings().of("x").new_series_per_s == 2000.0


def test_a_request_that_would_wait_too_long_behind_its_tenants_pace_is_refused_and_owes_nothing():
    from eyenet.serving.quota import PACE_MAX_WAIT_S
    rl = RateLimits(QuotaSettings(new_series_per_s=100), clock=Clock(0.0))
    assert PACE_MAX_WAIT_S == 10.0
    assert rl.pace("a", 1000) == pytest.approx(9.875)  # alone: waits however long (it could never pass otherwise)
    with pytest.raises(QuotaExceededError, match="wait 9.9 s for its pace of 100 new series") as exc:
        rl.pace("a", 200)  # behind that debt it would wait 11.9 s
    assert exc.value.retry_after_s == 10 and rl.stats()["refused"] == 1
    assert rl.pace("a", 5) == pytest.approx(9.925)  # the refused request took nothing


def test_a_batch_of_new_series_is_taken_at_its_tenants_pace_and_held_series_are_not_paced(model, tmp_path):
    cfg = AppConfig(quota={"new_series_per_s": 400, "requests_per_s": None, "points_per_s": None})
    shelf = Shelf(model)
    p = Pipeline(AliasResolver(shelf), ModelCache(shelf), StreamStore(str(tmp_path)), config=cfg)

    def batch(tenant: str, ids: range) -> schemas.StreamBatchRequest:
        return schemas.StreamBatchRequest(series=[{"id": f"s{i}", "values": [1.0]} for i in ids], tenant=tenant)

    async def go() -> tuple[float, list, list, list]:
        t0 = time.monotonic()
        first = await p.stream_many(batch("flood", range(200)))
        took = time.monotonic() - t0
        paced = p.rates.stats()["paced"]
        again = await p.stream_many(batch("flood", range(200)))  # held now: nothing started
        other = await p.stream_many(batch("calm", range(20)))  # within its own burst
        assert p.rates.stats()["paced"] == paced == 1
        return took, first["results"], again["results"], other["results"]

    took, first, again, other = asyncio.run(go())
    assert took >= 0.3  # (200 - 50) series owed at 400 a second: 0.375 s
    assert all("error" not in r for r in first + again + other)  # waited, never refused
    assert [r["seen"] for r in again] == [2] * 200


def test_a_tenant_the_store_found_at_its_quota_is_refused_new_series_without_a_store_call(model, tmp_path,
                                                                                           monkeypatch):
    from eyenet.serving import leases
    monkeypatch.setattr(leases, "AT_QUOTA_S", 0.3)
    cfg = AppConfig(quota={"max_series_per_tenant": 3, "new_series_per_s": None, "requests_per_s": None,
                           "points_per_s": None})
    shelf = Shelf(model)
    p = Pipeline(AliasResolver(shelf), ModelCache(shelf), StreamStore(str(tmp_path), quota=cfg.quota), config=cfg)
    store, asked = p.owned.store, []
    claim = store.claim

    async def counted(owner, keys, *a, **k):
        asked.append(list(keys))
        return await claim(owner, keys, *a, **k)

    store.claim = counted

    def batch(ids, tenant="a") -> schemas.StreamBatchRequest:
        return schemas.StreamBatchRequest(series=[{"id": i, "values": [1.0]} for i in ids], tenant=tenant)

    async def go():
        await p.stream_many(batch(["s0", "s1", "s2"]))
        with pytest.raises(QuotaExceededError, match="quota of 3 live series"):  # the store refuses
            await p.stream(schemas.StreamRequest(id="s3", values=[1.0], tenant="a"))
        assert asked[-1] == ["a/default/s3"] and p.owned.stats()["tenants_at_quota"] == 1
        calls = len(asked)
        with pytest.raises(QuotaExceededError, match="every series of the batch was refused: .*quota of 3"):
            await p.stream_many(batch([f"n{i}" for i in range(50)]))  # only new ones: refused here
        with pytest.raises(QuotaExceededError):
            await p.stream(schemas.StreamRequest(id="s4", values=[1.0], tenant="a"))
        mixed = (await p.stream_many(batch(["s0", "n0"])))["results"]  # held ones go on, the new one refused
        other = await p.stream(schemas.StreamRequest(id="s0", values=[1.0], tenant="b"))  # another tenant
        assert len(asked) == calls + 1 and asked[-1] == ["b/default/s0"]  # the store asked for b's only
        assert mixed[0]["seen"] == 2 and mixed[1]["status"] == 429 and "quota" in mixed[1]["error"]
        assert other[0]["seen"] == 1 and p.owned.refused_here == 50 + 1 + 1
        await asyncio.sleep(0.35)  # the memory of the refusal lapsed: the store is asked again
        with pytest.raises(QuotaExceededError):
            await p.stream(schemas.StreamRequest(id="s5", values=[1.0], tenant="a"))
        assert asked[-1] == ["a/default/s5"] and p.owned.refused_here == 52

    asyncio.run(go())


def test_the_table_of_buckets_is_bounded():
    before = evictions("rate_buckets")
    rl = RateLimits(QuotaSettings(max_tenants=3))
    for t in "abcde":
        rl.check(t, 1)
    assert len(rl) == 3 and evictions("rate_buckets") - before == 2


def test_quota_settings_per_tenant_overrides_and_forbid_unknown_keys():
    q = QuotaSettings(max_series_per_tenant=5, tenants={"acme": {"max_series": 7}, "open": {"max_series": None}})
    assert q.of("x").max_series == 5 and q.of("acme").max_series == 7 and q.of("open").max_series is None
    assert q.of("acme").requests_per_s == q.requests_per_s
    with pytest.raises(ValueError):
        QuotaSettings(bogus=1)
    with pytest.raises(ValueError):
        AppConfig(quota={"max_series_per_tenant": 1, "nope": 2})
    assert AppConfig().quota.max_series_per_tenant == 10_000


# -- the store: quota, caps, eviction ----------------------------------------------------------------------
def st(n: int = 0) -> StreamState:
    return StreamState(values=np.arange(n, dtype=float), seen=n)


def test_the_live_series_quota_is_per_tenant_and_a_reset_frees_a_place(tmp_path):
    s = Streams(tmp_path, quota=QuotaSettings(max_series_per_tenant=3, tenants={"vip": {"max_series": 5}}))
    for i in range(3):
        assert s.commit(f"a/g/{i}", 0, st())[0]
    ok, version, refusal = s.commit("a/g/3", 0, st())
    assert not ok and version == -1 and isinstance(refusal, Refusal) and "'a'" in refusal.reason
    assert s.commit("a/g/1", 1, st(2))[0]  # existing series go on
    for i in range(5):
        assert s.commit(f"vip/g/{i}", 0, st())[0]
    assert not s.commit("vip/g/5", 0, st())[0]
    s.delete("a/g/0")  # a reset frees its place
    assert s.commit("a/g/3", 0, st())[0]
    assert s.stats()["refused"] == 2 and s.count() == 3 + 5 - 1 + 1


def test_the_store_evicts_idle_series_least_recently_used_first_and_counts_them(tmp_path):
    clock = Clock()
    before = evictions("store")
    s = Streams(tmp_path, settings=StoreSettings(max_series=3, min_idle_s=10), clock=clock)
    for i in range(3):
        s.commit(f"t/g/{i}", 0, st(5))
        clock.t += 1
    s.commit("t/g/0", 1, st(6))  # used again: 1 is now the least recently used
    clock.t += 20
    assert s.commit("t/g/3", 0, st())[0]
    assert "t/g/1" not in s.states and set(s.states) == {"t/g/0", "t/g/2", "t/g/3"}
    assert s.stats()["evicted"] == 1 and evictions("store") - before == 1
    # every series busy: a new one is refused (429), none evicted
    ok, _, refusal = s.commit("t/g/4", 0, st())
    assert ok is True  # t/g/0 and t/g/2 were idle 20 s
    for k in list(s.states):
        s.commit(k, s.get(k)[0], st(1))
    ok, _, refusal = s.commit("t/g/5", 0, st())
    assert not ok and isinstance(refusal, Refusal) and "full" in refusal.reason
    s.flush()
    assert Streams(tmp_path).count() == 3  # evicted rows are deleted from the file too


def test_the_byte_estimate_caps_the_store(tmp_path):
    clock = Clock()
    s = Streams(tmp_path, settings=StoreSettings(max_bytes=20_000, min_idle_s=0), clock=clock)
    for i in range(20):
        clock.t += 1
        assert s.commit(f"t/g/{i}", 0, st(500))[0]  # ~4.6 kB each
        assert s.bytes <= 20_000
    assert len(s.states) == 4 and s.evicted == 16 and set(s.states) == {f"t/g/{i}" for i in range(16, 20)}


def test_reload_is_bounded_newest_first_and_the_rest_dropped_and_counted(tmp_path):
    clock = Clock()
    s = Streams(tmp_path, clock=clock)
    for i in range(100):
        clock.t += 1
        s.commit(f"t/g/{i}", 0, st(3))
    s.flush()
    before = evictions("store_reload")
    again = Streams(tmp_path, settings=StoreSettings(reload_max_series=30))
    assert again.count() == 30 and set(again.states) == {f"t/g/{i}" for i in range(70, 100)}
    assert again.stats()["reload_dropped"] == 70 and evictions("store_reload") - before == 70
    assert list(again.states)[0] == "t/g/70"  # least recently used first
    again.flush()  # the dropped rows leave the file at the next write
    assert Streams(tmp_path).count() == 30
    timed = Streams(tmp_path, settings=StoreSettings(reload_max_s=0))
    assert timed.count() <= 1 and timed.reload_dropped >= 29


# -- reliability -----------------------------------------------------------------------------------------
def _break(path) -> Any:
    """Make the database unwritable for real (the tests run as root, where chmod stops nothing):
    move the files away and put a directory where the database was."""
    aside = path.parent / "aside"
    aside.mkdir()
    for f in path.parent.glob("streams.db*"):
        shutil.move(str(f), aside / f.name)
    path.mkdir()

    def restore() -> None:
        path.rmdir()
        for f in aside.iterdir():
            shutil.move(str(f), path.parent / f.name)
        aside.rmdir()

    return restore


def test_the_flusher_survives_failed_writes_reports_them_and_loses_no_acknowledged_point(tmp_path):
    async def go():
        store = StreamStore(str(tmp_path), interval_s=0.02, settings={"max_backoff_s": 0.05})
        assert (await store.commit("t/g/a", 0, st(1)))[0]
        await store.flush()
        restore = _break(store.streams.path)
        for i in range(1, 4):  # acknowledged while the disk refuses
            assert (await store.commit("t/g/a", i, st(i + 1)))[0]
            assert (await store.commit(f"t/g/new{i}", 0, st(i)))[0]
        await asyncio.sleep(0.3)  # the flusher fails a few times
        broken = await store.health()
        assert broken["ok"] is False and "OperationalError" in broken["error"] and broken["failures"] >= 2
        assert broken["dirty"] == 4 and not store._task.done()  # still looping
        restore()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if (await store.health())["ok"]:
                break
        healed = await store.health()
        await store.close()
        return healed

    healed = asyncio.run(go())
    assert healed["ok"] and healed["error"] is None and healed["dirty"] == 0
    again = Streams(tmp_path)
    assert again.get("t/g/a")[0] == 4 and again.get("t/g/a")[1].seen == 4
    assert {k for k in again.states} == {"t/g/a", "t/g/new1", "t/g/new2", "t/g/new3"}


def test_close_writes_what_is_left(tmp_path):
    async def go():
        store = StreamStore(str(tmp_path), interval_s=3600)
        await store.commit("t/g/x", 0, st(2))
        return await store.close()

    assert asyncio.run(go()) == 1 and Streams(tmp_path).get("t/g/x")[1].seen == 2


def test_a_locked_database_at_start_up_is_retried_never_moved_aside(tmp_path):
    s = Streams(tmp_path)
    s.commit("t/g/x", 0, st(2))
    s.flush()
    holder = sqlite3.connect(tmp_path / "streams.db", check_same_thread=False)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE streams SET touched = touched")
    released = threading.Event()

    def release() -> None:
        time.sleep(1.0)
        holder.rollback()
        holder.execute("PRAGMA locking_mode=NORMAL")
        holder.execute("SELECT 1 FROM streams").fetchall()  # leaves the exclusive mode
        holder.close()
        released.set()

    threading.Thread(target=release, daemon=True).start()
    t0 = time.monotonic()
    again = Streams(tmp_path, settings=StoreSettings(open_timeout_s=20))
    assert released.is_set() and time.monotonic() - t0 >= 0.9
    assert again.get("t/g/x")[1].seen == 2 and again.moved_aside is None
    assert not list(tmp_path.glob("streams.db.unreadable-*"))


def test_a_database_locked_for_too_long_raises_and_keeps_the_file(tmp_path):
    Streams(tmp_path).commit("t/g/x", 0, st(2))
    holder = sqlite3.connect(tmp_path / "streams.db")
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            Streams(tmp_path, settings=StoreSettings(open_timeout_s=0.3))
    finally:
        holder.close()
    assert (tmp_path / "streams.db").exists() and not list(tmp_path.glob("streams.db.unreadable-*"))


# -- ids are fully matched ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["web-1\n", "x" * 401, "", "-lead", "{a=\"b\"}", "web\n1", "tab\tin"])
def test_series_ids_are_fully_matched_and_length_limited(bad):
    with pytest.raises(ValueError):
        schemas.SeriesIn(id=bad, values=[1.0])
    with pytest.raises(ValueError):
        schemas.StreamRequest(id=bad, values=[1.0])
    with pytest.raises(ValueError):
        schemas.FeedbackRequest(id=bad, label="false_alarm", indices=[1])


def test_a_400_character_id_is_fine():
    assert schemas.StreamRequest(id="x" * 400, values=[1.0]).id == "x" * 400


def test_a_prometheus_series_is_an_id():
    sid = 'node_load1{instance="web-1:9100",job="node"}'
    assert schemas.StreamRequest(id=sid, values=[1.0]).id == sid


@pytest.mark.parametrize("bad", ["acme\n", "a" * 64, "", "Acme", "_x", "a.b"])
def test_model_name_parts_are_fully_matched(bad):
    with pytest.raises(InvalidParameterError):
        reg.model_name("ensemble", tenant=bad)
    with pytest.raises(InvalidParameterError):
        reg.model_name("ensemble", group=bad)


def test_slug_gives_a_valid_name_part():
    for text in ("realKnownCause/nyc_taxi.csv\n", "x" * 300, "\n", "ok.csv"):
        part = reg.slug(text)
        assert reg.model_name("zscore", group=part).split(".")[1] == part


# -- the monitor: bounded series, feedback only for scored points -----------------------------------------
class _Scores:
    def __init__(self, n: int) -> None:
        self.calibrated = np.zeros(n)
        self.score = np.zeros(n)
        self.alarm = np.zeros(n, dtype=bool)


def _push(mon: Monitor, name: str, series: str, n: int, first: int = 0, timestamps: Any = None) -> None:
    box = Outbox()
    box.add(name, 1, np.ones(n), _Scores(n), series, first=first, timestamps=timestamps)
    asyncio.run(mon.push("r1", box.take()))


def _monitor(tmp_path, **kw: Any) -> Monitor:
    return Monitor(None, {"feedback_path": str(tmp_path / "fb.jsonl"), "feedback_wait_s": 0, **kw})


def test_feedback_is_refused_for_points_the_monitor_never_saw_scored(tmp_path):
    name = "default.fb.ensemble"
    mon = _monitor(tmp_path)
    mon._reference = _no_reference  # no MLflow here: drift is not the point
    ts = (np.array([1_700_000_000, 1_700_000_060, 1_700_000_120]) * 1e9).astype("datetime64[ns]")
    _push(mon, name, "s1", 100)
    _push(mon, name, "s1", 3, first=100, timestamps=ts)

    def fb(**kw: Any) -> Any:
        return schemas.check_feedback(schemas.FeedbackRequest(id="s1", group="fb", label="false_alarm", **kw))

    assert asyncio.run(mon.record_feedback(fb(indices=[5, 99, 102])))["total"]["false_alarm"] == 3
    assert asyncio.run(mon.record_feedback(fb(timestamps=["2023-11-14T22:13:20Z", 1_700_000_060])))
    with pytest.raises(InvalidInputError, match=r"indices.*\[103, 500\]") as exc:
        asyncio.run(mon.record_feedback(fb(indices=[5, 103, 500])))
    assert http.error_status(exc.value)[0] == 422
    with pytest.raises(InvalidInputError, match="2023-11-14T22:15:00"):
        asyncio.run(mon.record_feedback(fb(timestamps=[1_700_000_100])))
    with pytest.raises(InvalidInputError, match="never scored"):
        asyncio.run(mon.record_feedback(schemas.check_feedback(
            schemas.FeedbackRequest(id="other", group="fb", label="false_alarm", indices=[1]))))
    assert mon.feedback.total(name).false_alarm == 5  # the refused ones were not counted


def test_feedback_waits_briefly_for_a_push_in_flight(tmp_path):
    name = "default.fb.ensemble"
    mon = _monitor(tmp_path, feedback_wait_s=2.0)
    mon._reference = _no_reference
    box = Outbox()
    box.add(name, 1, np.ones(10), _Scores(10), "s1")

    async def go():
        fb = schemas.check_feedback(schemas.FeedbackRequest(id="s1", group="fb", label="true_anomaly", indices=[3]))
        later = asyncio.create_task(mon.record_feedback(fb))
        await asyncio.sleep(0.2)
        await mon.push("r1", box.take())
        return await later

    assert asyncio.run(go())["total"]["true_anomaly"] == 1


async def _no_reference(name: str, version: int) -> bool:
    return False


def test_the_monitor_keeps_a_bounded_number_of_series_and_points(tmp_path):
    before = evictions("monitor_series")
    mon = _monitor(tmp_path, max_series=50, max_recent_points=2000, recent_points=400)
    mon._reference = _no_reference
    for i in range(120):
        _push(mon, "default.g.ensemble", f"s{i}", 30)
    stats = mon.stats()
    assert stats["series"] <= 50 and stats["recent_points"] <= 2000
    assert evictions("monitor_series") - before == 120 - stats["series"]
    assert set(mon.recent["default.g.ensemble"]) == {f"s{i}" for i in range(120 - stats["series"], 120)}
    for i in range(5):  # a long series stays within recent_points, and the total within its cap
        _push(mon, "default.g.ensemble", "long", 300)
    assert len(mon.recent["default.g.ensemble"]["long"]) == 400 and mon.stats()["recent_points"] <= 2000


def test_the_outbox_is_bounded_between_pushes():
    box = Outbox(max_series_points=10, max_series=5)
    for i in range(20):
        box.add("m", 1, np.ones(3), _Scores(3), f"s{i}")
    (b,) = box.take()
    assert len(b["series"]) == 5 and b["points"] == 60 and box.dropped == 15


# -- the flood -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    _, v, _ = synthetic.series("cpu_pct", n=600, seed=1)
    return AnomalyModel.from_dict(presets.model_config("ensemble", {"members": MEMBERS})).fit(np.asarray(v, float))


def test_the_router_caches_are_bounded_and_count_evictions(model, tmp_path):
    before = evictions("router_streams")
    cfg = AppConfig(streams_cached=10, quota={"requests_per_s": None, "points_per_s": None})
    shelf = Shelf(model)
    p = Pipeline(AliasResolver(shelf), ModelCache(shelf, capacity=cfg.models_cached), StreamStore(str(tmp_path)),
                 config=cfg)

    store = p.owned.store

    async def go():
        for i in range(30):
            await p.stream(schemas.StreamRequest(id=f"s{i}", values=[1.0, 2.0]))
        await p.owned.sync()

    asyncio.run(go())
    assert len(p.owned.states) == 10 and evictions("router_streams") - before == 20
    # the evicted ones went to the store with their states and were let go
    assert store.streams.count() == 30 and set(store.streams.owner_of) == {f"default/default/s{i}" for i in range(20, 30)}
    assert AppConfig().streams_cached == 50_000 and AppConfig().models_cached == 32


@pytest.mark.slow
def test_a_flooding_tenant_gets_429s_beyond_its_quota_and_others_keep_being_served(model, tmp_path):
    """One tenant streams 200,000 distinct series one point each; its quota is 10,000 live series.
    The store, the router cache and the monitor stay within their caps; another tenant is served."""
    n, quota = 200_000, 10_000
    cfg = AppConfig(quota={"max_series_per_tenant": quota, "requests_per_s": None, "points_per_s": None},
                    streams_cached=5_000)
    shelf = Shelf(model)
    store = StreamStore(str(tmp_path), settings={"max_series": 12_000})
    outbox = Outbox()
    mon = _monitor(tmp_path, max_series=2_000, max_recent_points=100_000)
    mon._reference = _no_reference
    p = Pipeline(AliasResolver(shelf), ModelCache(shelf), store, outbox=outbox, config=cfg)
    p.models._put("flood.default.ensemble/1", model)
    p.models._put("calm.default.ensemble/1", model)

    async def go():
        refused = served_calm = 0
        t0 = time.monotonic()
        for i in range(n):
            try:
                await p.stream(schemas.StreamRequest(id=f"s{i}", values=[float(i % 7)], tenant="flood"))
            except QuotaExceededError as exc:
                refused += 1
                assert exc.retry_after_s > 0
            if i % 1000 == 0:
                body, _ = await p.stream(schemas.StreamRequest(id=f"c{(i // 1000) % 20}", values=[1.0], tenant="calm"))
                served_calm += 1
                await mon.push("r1", outbox.take())
        await mon.push("r1", outbox.take())
        await p.owned.sync()
        return refused, served_calm, time.monotonic() - t0

    refused, served_calm, took = asyncio.run(go())
    stats = store.streams.stats()
    assert refused == n - quota
    assert store.streams.live["flood"] == quota and store.streams.live["calm"] == 20
    assert stats["series"] <= 12_000 and len(p.owned.states) <= 5_000
    assert mon.stats()["series"] <= 2_000 and mon.stats()["recent_points"] <= 100_000
    assert served_calm == n // 1000
    print(f"flood: {n} requests in {took:.1f} s, {refused} refused")


# -- a tenant's fair share of a replica --------------------------------------------------------------------
def _admission_app(limits, inner):
    """Admission in front of ``inner``, the tenant taken from an ``x-tenant`` header (as the auth
    middleware would set it from the credential)."""
    from eyenet.serving.auth import Identity
    from eyenet.serving.quota import Admission

    async def app(scope, receive, send):
        tenant = dict(scope["headers"])[b"x-tenant"].decode()
        who = Identity(f"key:{tenant}", tenant, "writer")
        await Admission(inner, lambda: limits, lambda: who)(scope, receive, send)

    return app


def _released(event: asyncio.Event, status: int = 200, headers: list | None = None):
    async def inner(scope, receive, send):  # a route that answers once released
        await event.wait()
        await send({"type": "http.response.start", "status": status, "headers": headers or []})
        await send({"type": "http.response.body", "body": b"{}"})

    return inner


def test_a_tenants_requests_past_its_cap_wait_their_turn_or_are_refused_and_others_pass() -> None:
    import httpx

    from eyenet.serving.quota import InFlight
    from eyenet.serving.settings import QuotaSettings

    limits = InFlight(QuotaSettings(max_inflight_per_tenant=3, hold_s=0.3, tenants={"vip": {"max_inflight": 8}}))

    async def go():
        release = asyncio.Event()
        app = _admission_app(limits, _released(release))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            flood = [asyncio.create_task(c.post("/v1/stream", headers={"x-tenant": "flood"})) for _ in range(8)]
            await asyncio.sleep(0.1)
            during = limits.stats()
            vip = [asyncio.create_task(c.post("/v1/stream", headers={"x-tenant": "vip"})) for _ in range(8)]
            await asyncio.sleep(0.5)  # past hold_s: the waiting ones give up
            release.set()
            return during, await asyncio.gather(*flood), [r.status_code for r in await asyncio.gather(*vip)]

    during, flood, vip = asyncio.run(go())
    assert during == {"tenants": 1, "requests": 3, "waiting": 3, "refused": 2}  # 3 run, 3 wait, 2 refused at once
    assert sorted(r.status_code for r in flood) == [200] * 3 + [429] * 5 and vip == [200] * 8
    refused = next(r for r in flood if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "requests in progress" in refused.json()["error"]
    assert limits.now == {} and limits.waiting == {} and limits.stats()["refused"] == 5


def test_waiting_requests_take_turns_in_order_when_answers_come_in_time() -> None:
    import httpx

    from eyenet.serving.quota import InFlight
    from eyenet.serving.settings import QuotaSettings

    limits = InFlight(QuotaSettings(max_inflight_per_tenant=2, hold_s=5))
    started: list[int] = []

    async def inner(scope, receive, send):
        started.append(int(dict(scope["headers"])[b"x-n"]))
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def go():
        app = _admission_app(limits, inner)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            tasks = []
            for n in range(4):
                tasks.append(asyncio.create_task(c.post("/v1/stream", headers={"x-tenant": "t", "x-n": str(n)})))
                await asyncio.sleep(0.005)
            return [r.status_code for r in await asyncio.gather(*tasks)]

    assert asyncio.run(go()) == [200] * 4 and started == [0, 1, 2, 3] and limits.now == {}


def test_a_quota_refusal_is_sent_late_holding_the_turn_but_never_past_its_retry_after() -> None:
    import httpx

    from eyenet.serving.quota import InFlight
    from eyenet.serving.settings import QuotaSettings

    async def timed(hold_s: float, retry_after: str) -> tuple[float, int, dict]:
        limits = InFlight(QuotaSettings(max_inflight_per_tenant=1, hold_s=hold_s))
        release = asyncio.Event()
        release.set()
        app = _admission_app(limits, _released(release, 429, [(b"retry-after", retry_after.encode())]))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            t0 = time.monotonic()
            first = asyncio.create_task(c.post("/v1/stream", headers={"x-tenant": "t"}))
            await asyncio.sleep(0.05)
            held = limits.stats()  # the refusal still holds the tenant's one turn
            r = await first
            return time.monotonic() - t0, r.status_code, held

    took, status, held = asyncio.run(timed(0.4, "5"))
    assert status == 429 and 0.35 <= took < 2 and held["requests"] == 1
    took, status, _ = asyncio.run(timed(3.0, "0"))  # Retry-After 0: nothing to wait for
    assert status == 429 and took < 1


def test_a_request_refused_without_a_turn_is_answered_hold_s_late_holding_nothing() -> None:
    """A client that retries a refusal at once sends at most one request per connection per hold_s."""
    import httpx

    from eyenet.serving.quota import InFlight
    from eyenet.serving.settings import QuotaSettings

    limits = InFlight(QuotaSettings(max_inflight_per_tenant=1, hold_s=0.4))

    async def go():
        release = asyncio.Event()
        app = _admission_app(limits, _released(release))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            running = asyncio.create_task(c.post("/v1/stream", headers={"x-tenant": "t"}))
            waiting = asyncio.create_task(c.post("/v1/stream", headers={"x-tenant": "t"}))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            refused = asyncio.create_task(c.post("/v1/stream", headers={"x-tenant": "t"}))
            await asyncio.sleep(0.1)
            during = limits.stats()  # the refused one sleeps without a turn
            r = await refused
            took = time.monotonic() - t0
            release.set()
            return r.status_code, took, during, [x.status_code for x in await asyncio.gather(running, waiting)]

    status, took, during, others = asyncio.run(go())
    assert status == 429 and 0.35 <= took < 1.5
    assert during["requests"] == 1 and during["waiting"] == 1 and during["refused"] == 1
    assert others[0] == 200
