"""Many series in one request (``Pipeline.stream_many``, ``POST /v1/stream/batch``) without Ray: the
members score every series' window in one vectorised pass, and every series gets the numbers it
would get alone; states carry across batches, refusals and conflicts stay per series."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from eyenet.core import presets, synthetic
from eyenet.core.errors import InvalidInputError, QuotaExceededError
from eyenet.core.model import AnomalyModel
from eyenet.serving import http, schemas
from eyenet.serving.pipeline import Pipeline
from eyenet.serving.settings import AppConfig, QuotaSettings
from eyenet.serving.streams import StreamStore
from fakes import pipeline

NAME = "default.default.ensemble"
#: a seasonal member and a small network: both have a vectorised score_many
MEMBERS = [{"family": "seasonal", "params": {"period": 24, "cycles": 3}},
           {"family": "lstm", "params": {"window": 16, "hidden": 8, "max_epochs": 2, "batch_size": 64}}]
SERIES = 40


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    _, v, _ = synthetic.series("cpu_pct", n=900, seed=3)
    return AnomalyModel.from_dict(presets.model_config("ensemble", {"members": MEMBERS})).fit(np.asarray(v, float))


@pytest.fixture(scope="module")
def histories() -> np.ndarray:
    """SERIES series of 200 points each (one column of a synthetic metric shifted per series)."""
    _, v, _ = synthetic.series("cpu_pct", n=200 + SERIES * 7, seed=5)
    v = np.asarray(v, float)
    return np.stack([v[7 * k : 7 * k + 200] + k for k in range(SERIES)])


def make(model: AnomalyModel, store: Any, **config: Any) -> Pipeline:
    return pipeline(model, store, AppConfig(**config))


def batch(rows: list[tuple[str, list[float | None]]], **kw: Any) -> schemas.StreamBatchRequest:
    return schemas.StreamBatchRequest(series=[schemas.SeriesIn(id=i, values=v) for i, v in rows], **kw)


def scores(points: list[dict[str, Any]]) -> np.ndarray:
    return np.array([np.nan if p["score"] is None else p["score"] for p in points])


def test_a_batch_gives_each_series_the_scores_it_gets_alone(model, histories, tmp_path):
    async def go():
        together = make(model, StreamStore(str(tmp_path / "a")))
        alone = make(model, StreamStore(str(tmp_path / "b")))
        got, want = [], []
        # the first batch carries each series' history, then one new point per series per batch
        steps = [(0, 150)] + [(150 + k, 151 + k) for k in range(50)]
        for lo, hi in steps:
            out = await together.stream_many(batch([(f"s{k}", histories[k, lo:hi].tolist()) for k in range(SERIES)]))
            got.append([scores(r["points"]) for r in out["results"]])
            one = [await alone.stream(schemas.StreamRequest(id=f"s{k}", values=histories[k, lo:hi].tolist()))
                   for k in range(SERIES)]
            want.append([scores(body["points"]) for body, _ in one])
            assert [r["seen"] for r in out["results"]] == [body["seen"] for body, _ in one] == [hi] * SERIES
        return got, want

    got, want = asyncio.run(go())
    flat_got = np.concatenate([a for step in got for a in step])
    flat_want = np.concatenate([a for step in want for a in step])
    assert np.isfinite(flat_got).sum() > SERIES * 40  # most points are ready: the comparison means something
    # the network scores stacked windows in one pass: float32 kernels may round the last digits differently
    np.testing.assert_allclose(flat_got, flat_want, rtol=1e-5, atol=1e-7, equal_nan=True)


def test_seasonal_and_network_score_many_match_score(model, histories):
    for det in model.members:
        windows = [histories[k, : 60 + k] for k in range(SERIES)]
        n_new = [1 + k % 3 for k in range(SERIES)]
        many = det.score_many(windows, n_new)
        for w, n, got in zip(windows, n_new, many):
            np.testing.assert_allclose(got, det.score(w)[len(w) - n :], rtol=1e-5, atol=1e-7, equal_nan=True)
        # one new point per window: the vectorised path, against each window alone
        for want, got in zip([det.expected_many([w], [1])[0] for w in windows],
                             det.expected_many(windows, [1] * len(windows))):
            np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_points_carry_the_expected_value_of_the_seasonal_member(model, histories, tmp_path):
    seasonal = model.members[model.expected_member]
    assert seasonal.family == "seasonal"

    async def go():
        p = make(model, StreamStore(str(tmp_path)))
        await p.stream_many(batch([(f"s{k}", histories[k, :150].tolist()) for k in range(3)]))
        return (await p.stream_many(batch([(f"s{k}", histories[k, 150:151].tolist()) for k in range(3)])))["results"]

    for k, r in enumerate(asyncio.run(go())):
        want = seasonal._expected(histories[k, :151])[-1]
        assert r["points"][0]["expected"] == pytest.approx(want, rel=1e-12)


def test_a_series_new_past_the_tenant_quota_is_refused_alone(model, histories, tmp_path):
    quota = QuotaSettings(max_series_per_tenant=3)

    async def go():
        p = make(model, StreamStore(str(tmp_path), quota=quota), quota=quota.model_dump())
        first = await p.stream_many(batch([(f"s{k}", histories[k, :60].tolist()) for k in range(5)]))
        again = await p.stream_many(batch([(f"s{k}", histories[k, 60:61].tolist()) for k in range(5)]))
        with pytest.raises(QuotaExceededError, match="every series of the batch was refused: .*quota of 3") as refused:
            await p.stream_many(batch([(f"new{k}", [1.0]) for k in range(4)]))  # only new series past it
        return first["results"], again["results"], refused.value

    first, again, refused = asyncio.run(go())
    assert [r.get("status") for r in first] == [None, None, None, 429, 429]
    assert "quota of 3 live series" in first[3]["error"]
    assert [r.get("seen") for r in again[:3]] == [61, 61, 61]
    assert [r.get("status") for r in again[3:]] == [429, 429]
    # a request that takes nothing is refused as a whole: 429 with Retry-After, so a sender backs off
    assert http.error_status(refused) == (429, "quota") and refused.retry_after_s == quota.retry_after_s


def test_a_batch_names_its_bad_series_and_its_limits(model, tmp_path):
    p = make(model, StreamStore(str(tmp_path)))
    with pytest.raises(InvalidInputError, match=r"series\[1\]\.id: series 'a' appears twice"):
        asyncio.run(p.stream_many(batch([("a", [1.0]), ("a", [2.0])])))
    with pytest.raises(InvalidInputError, match=r"series\[0\]\.values\[1\]: not a finite number"):
        asyncio.run(p.stream_many(batch([("a", [1.0, float("inf")])])))
    big = schemas.LIMITS.max_batch_points // 1000 + 1
    rows = [(f"s{k}", [1.0] * 1000) for k in range(big)]
    with pytest.raises(InvalidInputError, match=rf"series: {big * 1000} points in one request, at most"):
        asyncio.run(p.stream_many(batch(rows)))


def test_missing_values_in_a_batch_are_imputed_not_alarmed(model, histories, tmp_path):
    async def go():
        p = make(model, StreamStore(str(tmp_path)))
        await p.stream_many(batch([("a", histories[0, :150].tolist())]))
        return (await p.stream_many(batch([("a", [None, histories[0, 150], None])])))["results"][0]

    r = asyncio.run(go())
    assert [p.get("imputed", False) for p in r["points"]] == [True, False, True]
    assert [p["score"] is None for p in r["points"]] == [True, False, True]
    assert not any(p["alarm"] for p in r["points"] if p.get("imputed"))
    assert r["seen"] == 153


def test_a_big_batch_lets_other_requests_of_the_replica_run_while_it_works(model, tmp_path, monkeypatch):
    """A batch of many new series takes turns on the event loop (every SERIES_PER_TURN series or
    TURN_S seconds), so another request arriving meanwhile is not held until the whole batch is done:
    between two turns of another coroutine, the batch answers at most SERIES_PER_TURN series."""
    from eyenet.serving import pipeline
    from eyenet.serving.pipeline import SERIES_PER_TURN

    async def go():
        p = make(model, StreamStore(str(tmp_path)))
        answered = [0]
        assemble = p._assemble

        def counted(*args, **kwargs):
            answered[0] += 1
            return assemble(*args, **kwargs)

        p._assemble = counted
        big = batch([(f"s{k}", [40.0 + k % 7]) for k in range(20 * SERIES_PER_TURN)])
        seen: list[int] = []
        task = asyncio.get_running_loop().create_task(p.stream_many(big))
        while not task.done():
            seen.append(answered[0])  # how far the batch had got each time this coroutine ran
            await asyncio.sleep(0)
        out = await task
        return np.diff(seen + [answered[0]]), out["results"]

    steps, results = asyncio.run(go())
    assert len(results) == 20 * SERIES_PER_TURN and all("status" not in r for r in results)
    assert steps.max() <= SERIES_PER_TURN  # never the whole batch (1,280 series) in one go
    monkeypatch.setattr(pipeline, "TURN_S", 0.0)  # a turn's time is up after every series
    steps, results = asyncio.run(go())
    assert len(results) == 20 * SERIES_PER_TURN and steps.max() <= 1
