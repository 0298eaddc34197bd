"""The serving core without Ray (eyenet.serving.pipeline): detect and stream give the offline numbers,
stream state carries across calls and survives conflicting writers, members degrade, errors map to 4xx."""
from __future__ import annotations

import asyncio
import copy
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from eyenet.core import presets, synthetic
from eyenet.core.errors import (
    ArtifactError,
    EyenetError,
    GateRejectedError,
    InvalidInputError,
    InvalidParameterError,
    LifecycleError,
    NotEnoughDataError,
    NotServableError,
    UnavailableError,
    UnknownNameError,
)
from eyenet.core.model import AnomalyModel
from eyenet.lifecycle.registry import RegistryError
from eyenet.monitoring.monitor import Outbox
from eyenet.serving import http, schemas
from eyenet.serving.pipeline import AliasResolver, ModelCache, Pipeline
from eyenet.serving.settings import AppConfig
from eyenet.serving.streams import StreamStore

NAME = "default.default.ensemble"
MEMBERS = [{"family": "zscore", "params": {}}, {"family": "mad", "params": {}}]


@pytest.fixture(scope="module")
def values() -> np.ndarray:
    _, v, _ = synthetic.series("cpu_pct", n=1200, seed=1)
    return np.asarray(v, dtype=float)


@pytest.fixture(scope="module")
def model(values) -> AnomalyModel:
    return AnomalyModel.from_dict(presets.model_config("ensemble", {"members": MEMBERS})).fit(values[:600])


class Shelf:
    """A registry of in-memory models, all at version 1 under the alias ``champion``."""

    def __init__(self, models: dict[str, AnomalyModel]) -> None:
        self.models = models
        self.loads = 0

    def load(self, name: str, version: int | None = None) -> AnomalyModel:
        self.loads += 1
        return self.models[name]

    def version(self, name: str, version: int | None = None, *, alias: str | None = None) -> Any:
        if name not in self.models:
            raise UnknownNameError(f"{name}: no such model")
        return SimpleNamespace(version=1, created=0.0)


def make(model: AnomalyModel, store: Any, **kw: Any) -> Pipeline:
    shelf = Shelf({NAME: model})
    return Pipeline(AliasResolver(shelf), ModelCache(shelf), store, **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def scores(points: list[dict[str, Any]], key: str = "score") -> np.ndarray:
    return np.array([np.nan if p[key] is None else p[key] for p in points])


def detect_req(x: np.ndarray, **kw: Any) -> schemas.DetectRequest:
    return schemas.DetectRequest(series=[schemas.SeriesIn(id="web-1", values=x.tolist())], **kw)


def stream_req(x: np.ndarray, series: str = "s", **kw: Any) -> schemas.StreamRequest:
    return schemas.StreamRequest(id=series, values=x.tolist(), **kw)


# -- detect ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [40, 400])  # under thread_min_points: on the event loop; over: on the scoring threads
def test_detect_gives_the_offline_scores(model, values, tmp_path, n):
    out = run(make(model, StreamStore(str(tmp_path))).detect(detect_req(values[:n])))
    (res,) = out["results"]
    offline = model.score(values[:n])
    assert res["id"] == "web-1" and res["model"] == NAME and res["version"] == 1
    assert res["degraded"] is False and res["missing"] == []
    np.testing.assert_allclose(scores(res["points"]), offline.score, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(scores(res["points"], "calibrated"), offline.calibrated, rtol=1e-12, equal_nan=True)
    assert [p["alarm"] for p in res["points"]] == offline.alarm.tolist()
    assert set(res["points"][-1]["detectors"]) == {"zscore", "mad"}


def test_detect_scores_each_series_from_a_fresh_state(model, values, tmp_path):
    req = schemas.DetectRequest(series=[schemas.SeriesIn(id="a", values=values[:300].tolist()),
                                        schemas.SeriesIn(id="b", values=values[300:600].tolist())])
    a, b = run(make(model, StreamStore(str(tmp_path))).detect(req))["results"]
    assert (a["id"], b["id"]) == ("a", "b")
    np.testing.assert_allclose(scores(b["points"]), model.score(values[300:600]).score, rtol=1e-12, equal_nan=True)


def test_detectors_selects_the_members_reported_not_the_score(model, values, tmp_path):
    async def go():
        p = make(model, StreamStore(str(tmp_path)))
        full = await p.detect(detect_req(values[:300]))
        mad = await p.detect(detect_req(values[:300], detectors=["mad"]))
        none = await p.detect(detect_req(values[:300], detectors=[]))
        with pytest.raises(InvalidInputError, match=r"detectors\[1\]: 'lstm' is not a member") as bad:
            await p.detect(detect_req(values[:300], detectors=["mad", "lstm"]))
        return full, mad, none, bad.value

    full, mad, none, bad = run(go())
    (f,), (m,), (n,) = full["results"], mad["results"], none["results"]
    assert set(m["points"][-1]["detectors"]) == {"mad"} and n["points"][-1]["detectors"] == {}
    assert m["points"][-1]["detectors"]["mad"] == f["points"][-1]["detectors"]["mad"]
    np.testing.assert_array_equal(scores(m["points"]), scores(f["points"]))  # the ensemble still uses every member
    assert http.error_status(bad) == (422, "bad_input")


def test_bad_input_is_a_4xx_naming_the_field(model, tmp_path):
    p = make(model, StreamStore(str(tmp_path)))
    with pytest.raises(InvalidInputError, match=r"series\[0\].values\[1\]: not a finite number") as nan:
        run(p.detect(detect_req(np.array([1.0, np.inf]))))  # NaN is a missing value: imputed
    with pytest.raises(UnknownNameError, match="default.nobody.ensemble") as unknown:
        run(p.detect(detect_req(np.array([1.0, 2.0]), group="nobody")))
    with pytest.raises(InvalidInputError, match="unsorted") as unsorted:
        run(p.stream(schemas.StreamRequest(id="s", values=[1.0, 2.0], timestamps=[2, 1])))
    assert [http.error_status(e.value)[0] for e in (nan, unknown, unsorted)] == [422, 404, 422]


# -- stream ------------------------------------------------------------------------------------------
def test_stream_state_carries_across_calls(model, values, tmp_path):
    outbox = Outbox()

    async def go():
        p = make(model, StreamStore(str(tmp_path)), outbox=outbox)
        got, seen, timing = [], [], ""
        for start in range(0, 450, 150):
            body, timing = await p.stream(stream_req(values[start:start + 150], reset=start == 0))
            got.extend(body["points"])
            seen.append(body["seen"])
        for i in range(450, 455):  # one point at a time: the real-time path
            body, _ = await p.stream(stream_req(values[i:i + 1]))
            got.extend(body["points"])
        again, _ = await p.stream(stream_req(values[:150], reset=True))  # reset: a fresh stream
        return got, seen, timing, again

    got, seen, timing, again = run(go())
    assert seen == [150, 300, 450]
    np.testing.assert_allclose(scores(got), model.score(values[:455]).score, rtol=1e-12, equal_nan=True)
    assert again["seen"] == 150
    np.testing.assert_allclose(scores(again["points"]), model.score(values[:150]).score, rtol=1e-12, equal_nan=True)
    assert "score;dur=" in timing and "state;dur=" in timing
    (batch,) = outbox.take()  # what the monitor is sent
    assert batch["model"] == NAME and batch["points"] == 455 + 150


class CountingStore(StreamStore):
    def __init__(self, state_uri: str) -> None:
        super().__init__(state_uri)
        self.claims: list[tuple[str, list[str]]] = []

    async def claim(self, owner: str, keys: list[str], lease_s: float, wait_s: float) -> list[tuple[int, Any]]:
        self.claims.append((owner, list(keys)))
        return await super().claim(owner, keys, lease_s, wait_s)


def test_a_held_series_is_scored_without_a_store_call_and_written_behind(model, values, tmp_path):
    store = CountingStore(str(tmp_path))

    async def go():
        p = make(model, store)
        for i in range(0, 300, 50):
            await p.stream(stream_req(values[i:i + 50]))
        unwritten = store.streams.get("default/default/s")[1]
        await p.owned.sync()
        return unwritten, store.streams.get("default/default/s")

    unwritten, (version, state) = run(go())
    assert len(store.claims) == 1  # the first request claimed the series; the other five used the held copy
    assert unwritten is None and version == 1 and state.seen == 300  # six requests, one write


def test_a_series_moving_to_another_replica_carries_its_newest_state(model, values, tmp_path):
    """Two processes (router replicas) share one store. The series' holder is asked for it and hands
    its newest state over, unwritten points included, so the scores are those of one process."""
    store = CountingStore(str(tmp_path))

    async def go():
        a, b = make(model, store), make(model, store)
        one, _ = await a.stream(stream_req(values[:200], reset=True))
        two, _ = await b.stream(stream_req(values[200:300]))  # a is asked for the series and hands it over
        three, _ = await a.stream(stream_req(values[300:400]))  # and back
        return one, two, three, a.owned.handed_over, b.owned.handed_over

    one, two, three, a_gave, b_gave = run(go())
    assert (one["seen"], two["seen"], three["seen"]) == (200, 300, 400)
    assert (a_gave, b_gave) == (1, 1)
    offline = model.score(values[:400]).score
    np.testing.assert_allclose(scores(two["points"]), offline[200:300], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(scores(three["points"]), offline[300:400], rtol=1e-12, equal_nan=True)


def test_a_reset_on_another_replica_is_seen_by_the_series_holder(model, values, tmp_path):
    store = StreamStore(str(tmp_path))

    async def go():
        a, b = make(model, store), make(model, store)
        await a.stream(stream_req(values[:100]))
        await b.stream(stream_req(values[:20], reset=True))  # a hands the series over, then b resets it
        out, _ = await a.stream(stream_req(values[20:30]))
        return out["seen"]

    assert run(go()) == 30


FAST_LEASES = AppConfig(store={"write_behind_s": 0.05, "lease_s": 0.4})


def _die(p: Pipeline) -> None:
    """``p``'s replica dies: no more writes, hand-overs or heartbeats."""
    for t in p.owned._tasks:
        t.cancel()
    if p.owned._beating is not None:
        p.owned._beating.set()


def test_a_dead_holders_series_continue_from_its_last_write_once_its_lease_lapses(model, values, tmp_path):
    """The durability bound: a replica that dies loses the points it took since its last write behind."""
    store = StreamStore(str(tmp_path))

    async def go():
        a, b = make(model, store, config=FAST_LEASES), make(model, store, config=FAST_LEASES)
        await a.stream(stream_req(values[:100]))
        await a.owned.sync()
        await a.stream(stream_req(values[100:150]))  # acknowledged, not written behind yet
        _die(a)
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        out, _ = await b.stream(stream_req(values[150:160]))
        return out["seen"], time.monotonic() - t0

    seen, waited = run(go())
    assert seen == 110  # a's last 50 points are lost; b goes on from a's last write
    assert waited < 1.5  # one lease at most


def test_with_write_behind_off_a_dead_holder_loses_no_acknowledged_point(model, values, tmp_path):
    store = StreamStore(str(tmp_path))
    cfg = AppConfig(store={"write_behind_s": 0, "lease_s": 0.4})

    async def go():
        a, b = make(model, store, config=cfg), make(model, store, config=cfg)
        await a.stream(stream_req(values[:100]))
        await asyncio.gather(*(a.stream(stream_req(values[100 + 10 * i:110 + 10 * i], series=f"s{i}"))
                               for i in range(5)))
        in_store = [store.streams.get(f"default/default/{k}")[1].seen for k in ("s", "s0", "s1", "s2", "s3", "s4")]
        _die(a)  # right after answering
        await asyncio.sleep(0.01)
        out, _ = await b.stream(stream_req(values[100:110]))
        return in_store, out["seen"]

    in_store, seen = run(go())
    assert in_store == [100, 10, 10, 10, 10, 10] and seen == 110  # each answer came after its write


def test_a_holder_that_renews_but_never_hands_over_is_a_503(model, values, tmp_path):
    store = StreamStore(str(tmp_path))

    async def go():
        a, b = make(model, store, config=FAST_LEASES), make(model, store, config=FAST_LEASES)
        await a.stream(stream_req(values[:100]))
        a.owned._tasks[1].cancel()  # a's hand-over loop is gone; its writes still renew its lease
        await asyncio.sleep(0.01)
        await b.stream(stream_req(values[100:110]))

    with pytest.raises(UnavailableError, match="did not hand it over") as exc:
        run(go())
    assert http.error_status(exc.value)[0] == 503


def test_a_replica_whose_event_loop_is_busy_for_three_leases_keeps_its_series(model, values, tmp_path):
    """The heartbeat thread renews the lease while the loop cannot (a flood of large batches)."""
    store = StreamStore(str(tmp_path))
    key = "default/default/s"

    async def go():
        a = make(model, store, config=FAST_LEASES)
        await a.stream(stream_req(values[:100]))
        time.sleep(3 * FAST_LEASES.store.lease_s)  # the loop blocked: no sync, no hand-over
        holder = store.streams.holder(key)
        out, _ = await a.stream(stream_req(values[100:110]))
        return holder, a.owned.heartbeats, out["seen"], set(a.owned.unconfirmed), a.owned.lost

    holder, beats, seen, unconfirmed, lost = run(go())
    assert holder is not None and holder.startswith("process-")  # still a's: its lease never lapsed
    assert beats >= 2 and seen == 110 and not unconfirmed and lost == 0


def test_concurrent_requests_of_one_series_are_applied_in_order(model, values, tmp_path):
    async def go():
        p = make(model, StreamStore(str(tmp_path)))
        await p.stream(stream_req(values[:100], reset=True))
        return await asyncio.gather(*(p.stream(stream_req(values[i:i + 50])) for i in range(100, 300, 50)))

    out = run(go())
    assert [body["seen"] for body, _ in out] == [150, 200, 250, 300]
    got = [pt for body, _ in out for pt in body["points"]]
    np.testing.assert_allclose(scores(got), model.score(values[:300]).score[100:], rtol=1e-12, equal_nan=True)


# -- members -----------------------------------------------------------------------------------------
def _boom(*_a: Any, **_k: Any) -> np.ndarray:
    raise RuntimeError("member crashed")


def test_a_failing_member_degrades_the_answer(model, values, tmp_path, monkeypatch):
    broken = copy.deepcopy(model)
    monkeypatch.setattr(broken.members[1], "score", _boom)  # mad
    (res,) = run(make(broken, StreamStore(str(tmp_path))).detect(detect_req(values[:300])))["results"]
    assert res["degraded"] is True and res["missing"] == ["mad"]
    assert set(res["points"][-1]["detectors"]) == {"zscore"}
    assert res["points"][-1]["ready"] and res["points"][-1]["score"] is not None


def test_no_member_answering_is_an_error(model, values, tmp_path, monkeypatch):
    broken = copy.deepcopy(model)
    for det in broken.members:
        monkeypatch.setattr(det, "score", _boom)
    with pytest.raises(NotServableError, match="no member answered") as exc:
        run(make(broken, StreamStore(str(tmp_path))).detect(detect_req(values[:300])))
    assert http.error_status(exc.value)[0] == 503


class FakeDeployments:
    """Remote members in the same process: ``families`` answer (``slow`` ones never in time)."""

    def __init__(self, model: AnomalyModel, families: set[str], slow: set[str] = frozenset(),
                 local: set[str] = frozenset(), up: set[str] | None = None) -> None:
        self.model, self.families, self.slow, self._local = model, families, slow, local
        self.calls: list[str] = []
        self.running = set(families) if up is None else set(up)  # deployments with a replica
        self.woken: list[str] = []

    def up(self, family: str) -> bool:
        return family in self.running

    def wake(self, family: str, key: str) -> None:
        self.woken.append(family)

    def deployed(self, family: str) -> bool:
        return family in self.families

    def local(self, family: str) -> bool:
        return family in self._local

    def raw(self, family: str, key: str, member: int, inputs: np.ndarray, n_new: int) -> Any:
        self.calls.append(family)

        async def answer() -> tuple[np.ndarray, int]:
            if family in self.slow:
                await asyncio.sleep(10)
            return self.model.members[member].score(inputs)[len(inputs) - n_new :], 1

        return answer()


def test_remote_members_give_the_same_scores_and_missing_or_slow_ones_degrade(model, values, tmp_path):
    cfg = AppConfig(member_timeout_s=0.2)

    async def go():
        everywhere = FakeDeployments(model, {"zscore", "mad"}, local={"zscore"})
        both = await make(model, StreamStore(str(tmp_path)), members=everywhere, config=cfg).detect(
            detect_req(values[:300]))
        one = await make(model, StreamStore(str(tmp_path)), members=FakeDeployments(model, {"zscore"}),
                         config=cfg).detect(detect_req(values[:300]))
        slow = await make(model, StreamStore(str(tmp_path)), members=FakeDeployments(model, {"zscore", "mad"}, {"mad"}),
                          config=cfg).detect(detect_req(values[:300]))
        return everywhere.calls, both, one, slow

    calls, both, one, slow = run(go())
    assert calls == ["mad"]  # zscore may run here and the request is small: scored inline
    np.testing.assert_allclose(scores(both["results"][0]["points"]), model.score(values[:300]).score, rtol=1e-12,
                               equal_nan=True)
    assert both["results"][0]["degraded"] is False
    for out in (one, slow):
        (res,) = out["results"]
        assert res["degraded"] is True and res["missing"] == ["mad"]


def test_requests_over_inline_max_points_go_to_the_remote_members(model, values, tmp_path):
    remote = FakeDeployments(model, {"zscore", "mad"}, local={"zscore", "mad"})
    p = make(model, StreamStore(str(tmp_path)), members=remote, config=AppConfig(inline_max_points=100))
    small = run(p.detect(detect_req(values[:100])))
    assert remote.calls == []
    big = run(p.detect(detect_req(values[:300])))
    assert sorted(remote.calls) == ["mad", "zscore"]
    np.testing.assert_allclose(scores(big["results"][0]["points"]), model.score(values[:300]).score, rtol=1e-12,
                               equal_nan=True)
    np.testing.assert_allclose(scores(small["results"][0]["points"]), model.score(values[:100]).score, rtol=1e-12,
                               equal_nan=True)


def test_a_big_request_is_scored_here_while_its_family_deployment_is_scaled_to_zero(model, values, tmp_path):
    """A family scaled to zero would keep a big request waiting for a replica to start: the router
    scores it and wakes the deployment; once the deployment is up, big requests go to it."""
    remote = FakeDeployments(model, {"zscore", "mad"}, local={"zscore", "mad"}, up=set())
    p = make(model, StreamStore(str(tmp_path)), members=remote, config=AppConfig(inline_max_points=100))
    cold = run(p.detect(detect_req(values[:300])))
    assert remote.calls == [] and sorted(remote.woken) == ["mad", "zscore"]
    remote.running = {"mad"}
    warm = run(p.detect(detect_req(values[:300])))
    assert remote.calls == ["mad"]
    for out in (cold, warm):
        assert out["results"][0]["degraded"] is False
        np.testing.assert_allclose(scores(out["results"][0]["points"]), model.score(values[:300]).score,
                                   rtol=1e-12, equal_nan=True)


# -- models ------------------------------------------------------------------------------------------
def test_a_version_is_loaded_once_for_concurrent_requests(model, values, tmp_path):
    shelf = Shelf({NAME: model})
    p = Pipeline(AliasResolver(shelf), ModelCache(shelf), StreamStore(str(tmp_path)))

    async def go():
        return await asyncio.gather(*(p.detect(detect_req(values[:50])) for _ in range(5)))

    assert len(run(go())) == 5 and shelf.loads == 1


def test_against_a_registry_alias(mlflow_store, values, tmp_path):
    """The resolver and loader of the embedded defaults: the registry's ``champion``."""
    from eyenet.lifecycle import training

    trained = training.train_and_register(presets.model_config("ensemble", {"members": MEMBERS}), values[:600],
                                          registry=mlflow_store, group="pipeline")
    mlflow_store.set_alias(trained.version.name, "champion", trained.version.version)
    p = Pipeline(AliasResolver(mlflow_store), ModelCache(mlflow_store), StreamStore(str(tmp_path)))
    req = schemas.StreamRequest(id="s", values=values[:300].tolist(), group="pipeline")
    body, _ = run(p.stream(req))
    assert body["model"] == "default.pipeline.ensemble" and body["version"] == trained.version.version
    np.testing.assert_allclose(scores(body["points"]), trained.model.score(values[:300]).score, rtol=1e-12,
                               equal_nan=True)


# -- the error map -----------------------------------------------------------------------------------
def _validation_error() -> ValidationError:
    try:
        schemas.StreamRequest(id="s", values=[])
    except ValidationError as exc:
        return exc
    raise AssertionError("no validation error")


@pytest.mark.parametrize("exc, status", [
    (InvalidInputError("x"), 422), (NotEnoughDataError("x"), 422), (InvalidParameterError("x"), 422),
    (_validation_error(), 422), (UnknownNameError("x"), 404), (LifecycleError("x"), 409),
    (GateRejectedError("x"), 409), (NotServableError("x"), 503), (RegistryError("x"), 503),
    (ArtifactError("x"), 503), (EyenetError("x"), 503),
])
def test_the_error_map(exc, status):
    got, kind = http.error_status(exc)
    assert got == status
    assert (kind in ("bad_input", "unknown_name")) == (got < 500)


def test_bad_input_never_maps_to_5xx():
    for cls, (status, _) in http.STATUS.items():
        if issubclass(cls, (ValueError, KeyError)):  # what a request can get wrong
            assert status < 500, cls
    assert http.error_status(RuntimeError("a bug")) is None  # not EyeNet's: Starlette answers 500
    assert http.error_body(_validation_error())["error"].startswith("values:")




def test_every_point_says_its_severity_band_and_each_members_share(values, tmp_path):
    members = [{"family": "seasonal", "params": {}}, {"family": "zscore", "params": {}}]
    model = AnomalyModel.from_dict(presets.model_config("ensemble", {"members": members})).fit(values[:600])
    x = values[:1000].copy()
    x[900] += 40 * np.std(values[:600])  # a spike
    cfg = AppConfig(critical_score=0.9)
    body = run(make(model, StreamStore(str(tmp_path)), config=cfg).detect(detect_req(x)))
    points = body["results"][0]["points"]
    h = model.expected_halfwidth
    assert h is not None and h > 0
    alarms = 0
    for p in points:
        if not p["ready"]:
            assert p["severity"] is None and p["shares"] == {} and p["agreement"] is None
            continue
        want = "normal" if not p["alarm"] else "critical" if p["score"] >= 0.9 else "warning"
        assert p["severity"] == want
        alarms += p["alarm"]
        assert set(p["shares"]) == {"seasonal", "zscore"} and sum(p["shares"].values()) == pytest.approx(1, abs=1e-3)
        assert p["agreement"] in (0.0, 0.5, 1.0)
        if p["expected"] is not None:
            lo, hi = p["band"]
            assert lo == pytest.approx(p["expected"] - h) and hi == pytest.approx(p["expected"] + h)
    spike = points[900]
    assert spike["alarm"] and spike["severity"] in ("warning", "critical") and alarms >= 1
    assert not spike["band"][0] <= x[900] <= spike["band"][1]  # far outside what was expected


def test_a_series_warming_up_says_how_many_more_points_its_first_score_needs(model, values, tmp_path):
    p = make(model, StreamStore(str(tmp_path)))
    need = model.detector.min_history
    assert need > 20
    first = run(p.stream(stream_req(values[:10], series="new")))[0]
    assert not first["points"][-1]["ready"] and first["points_needed"] == need - 10
    almost = run(p.stream(stream_req(values[10:need - 1], series="new")))[0]
    assert not almost["points"][-1]["ready"] and almost["points_needed"] == 1
    ready = run(p.stream(stream_req(values[need - 1:need], series="new")))[0]
    assert ready["points"][-1]["ready"] and ready["points_needed"] == 0
    (short,) = run(p.detect(detect_req(values[:need - 5])))["results"]
    assert short["points_needed"] == 5 and not any(pt["ready"] for pt in short["points"])


def test_the_console_sees_a_live_series_as_it_was_answered(values, tmp_path, mlflow_store):
    """What a stream answered reaches the monitor's series history (through the outbox, as a router
    replica pushes it): per point its time, position, value, score, alarm, severity, expected value
    and band and members' scores; bounded per series and in all; detect windows are not live series."""
    from eyenet.monitoring.monitor import Monitor, Outbox

    members = [{"family": "seasonal", "params": {}}, {"family": "zscore", "params": {}}]
    model = AnomalyModel.from_dict(presets.model_config("ensemble", {"members": members})).fit(values[:600])
    box = Outbox(4096, view_points=500)
    p = make(model, StreamStore(str(tmp_path)), outbox=box)
    x = values[:700].copy()
    x[650] += 40 * np.std(values[:600])
    stamps = (np.datetime64("2026-11-30T00:00:00") + np.arange(700) * np.timedelta64(60, "s")).astype(str).tolist()
    answered = run(p.stream(stream_req(x[:600], series="web-1", timestamps=stamps[:600])))[0]
    answered2 = run(p.stream(stream_req(x[600:], series="web-1", timestamps=stamps[600:])))[0]
    run(p.detect(detect_req(x[:300])))
    mon = Monitor(mlflow_store.uri, {"history_points": 400, "max_history_points": 10_000,
                                     "feedback_path": str(tmp_path / "fb.jsonl")})

    async def go():
        await mon.push("r1", box.take())
        return await mon.series(None), await mon.series(["other"]), await mon.series(None, match="WEB"), \
            await mon.series_points(NAME, "web-1", 10_000), await mon.series_points(NAME, "nope")

    listed, other, found, view, missing = run(go())
    assert [s["id"] for s in listed] == ["web-1"] and other == [] and found == listed  # detect's "web-1" is no live series
    (row,) = listed
    assert row["tenant"] == "default" and row["model"] == NAME and row["points"] == 400 and row["alarms"] >= 1
    assert missing is None and view["tenant"] == "default" and len(view["points"]) == 400
    pts, want = view["points"], (answered["points"] + answered2["points"])[-400:]
    assert [q["index"] for q in pts] == list(range(300, 700))
    assert pts[-1]["t"] == pytest.approx(np.datetime64(stamps[-1], "s").astype("int64"))
    for got, sent, v in zip(pts, want, x[300:]):
        assert got["value"] == pytest.approx(v) and got["alarm"] == sent["alarm"] and got["severity"] == sent["severity"]
        assert got["score"] == (None if sent["score"] is None else pytest.approx(sent["score"]))
        assert got["expected"] == (None if sent["expected"] is None else pytest.approx(sent["expected"]))
        assert set(got["detectors"]) == {"seasonal", "zscore"}
    spike = next(q for q in pts if q["index"] == 650)
    assert spike["alarm"] and spike["band"] is not None and not spike["band"][0] <= spike["value"] <= spike["band"][1]
    assert mon.stats()["history_points"] == 400


def test_iso_timestamps_mean_the_same_instants_as_epoch_seconds(model, values, tmp_path):
    """ISO 8601 strings (pandas keeps their own resolution) and epoch seconds are the same instants:
    the same gap filled at the same time, the same answers."""
    base = np.datetime64("2026-11-30T00:00:00", "s")
    minutes = [0, 1, 2, 4, 5]  # a missing point at minute 3
    iso = [str(base + np.timedelta64(60 * m, "s")) for m in minutes]
    epoch = [float((base + np.timedelta64(60 * m, "s")).astype("int64")) for m in minutes]
    answers = []
    for k, stamps in enumerate((iso, epoch)):
        p = make(model, StreamStore(str(tmp_path / str(k))))
        answers.append(run(p.stream(stream_req(values[:5], series="t", timestamps=stamps)))[0])
    a, b = answers
    assert [q["timestamp"] for q in a["points"]] == [q["timestamp"] for q in b["points"]]
    assert a["points"][3]["imputed"] and a["points"][3]["timestamp"] == epoch[2] + 60


def test_a_replica_settles_its_heap_again_after_its_first_model_load_only():
    """What a replica's first model load brings (modules imported then, the model) is moved out of the
    collector's sight once, in one full pass; later loads do not pay another pass. In a fresh
    interpreter: the settling changes the process-wide collector settings."""
    import json
    import subprocess
    import sys

    code = """
import gc, json
from eyenet.serving import heap as d
passes = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2 and passes.append(1))
d.settle_heap()  # at start-up
frozen0, passes0 = gc.get_freeze_count(), len(passes)
loaded = [{"k": [i]} for i in range(20000)]  # what a first load leaves alive
d.settle_after_first_load()
frozen1, passes1 = gc.get_freeze_count(), len(passes)
more = [{"k": [i]} for i in range(20000)]
d.settle_after_first_load()
print(json.dumps([frozen1 - frozen0, passes1 - passes0, gc.get_freeze_count() - frozen1, len(passes) - passes1]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    frozen, passes, frozen_later, passes_later = json.loads(out.stdout.strip().splitlines()[-1])
    assert frozen >= 40_000 and passes == 1  # the first load's objects: frozen, after one full pass
    assert frozen_later == 0 and passes_later == 0
