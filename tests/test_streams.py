"""Stream state: compact states, version rules of the store, incremental persistence (no Ray)."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from eyenet.core import presets, synthetic
from eyenet.core.model import AnomalyModel, StreamState
from eyenet.serving.streams import Streams


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    _, x, _ = synthetic.series("cpu_pct", n=1500, seed=3, anomalies_per_metric=0)
    return AnomalyModel.from_dict(presets.model_config("zscore")).fit(np.asarray(x[:1000]))


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    _, x, _ = synthetic.series("cpu_pct", n=1500, seed=3, anomalies_per_metric=0)
    return np.asarray(x)


def test_a_new_stream_stores_nothing_of_the_reference_and_scores_as_before(model, series):
    state = model.new_state()
    assert all(len(h) == 0 for h in state.scores)
    whole = model.score(series[1000:1300])
    one_go = whole.score
    st, got = state, []
    for chunk in np.array_split(series[1000:1300], 7):
        s, st = model.score_stream(chunk, StreamState.from_bytes(st.to_bytes()))
        got.append(s.score)
    np.testing.assert_array_equal(np.concatenate(got), one_go)
    # the stream's own finite raw scores only (the first points of a fresh stream are not ready)
    assert [len(h) for h in st.scores] == [int(np.isfinite(whole.raw).sum())] and st.seen == 300


def test_state_bytes_round_trip_and_refuse_damage(model, series):
    _, st = model.score_stream(series[1000:1100])
    st.model = "default.default.zscore/3"
    back = StreamState.from_bytes(st.to_bytes())
    np.testing.assert_array_equal(back.values, st.values)
    np.testing.assert_array_equal(back.scores[0], st.scores[0])
    np.testing.assert_array_equal(back.ranks, st.ranks)
    assert (back.seen, back.model, back.alarm.to_dict()) == (st.seen, st.model, st.alarm.to_dict())
    with pytest.raises(ValueError, match="lengths"):
        StreamState.from_bytes(st.to_bytes()[:-8])


def test_a_state_of_another_version_keeps_values_and_drops_its_scores(model, series):
    _, st = model.score_stream(series[1000:1100])
    st.model = "m/1"
    assert model.adopt(st, "m/1") is st
    other = model.adopt(st, "m/2")
    assert other.model == "m/2" and other.seen == 100 and all(len(h) == 0 for h in other.scores)
    np.testing.assert_array_equal(other.values, st.values)
    assert model.adopt(model.new_state(), "m/2").model == "m/2"


def test_commit_accepts_the_expected_version_and_returns_the_newer_state_otherwise(tmp_path):
    s = Streams(tmp_path)
    a, b = StreamState(seen=1), StreamState(seen=2)
    assert s.commit("t/g/x", 0, a) == (True, 1, None)
    ok, version, newer = s.commit("t/g/x", 0, b)  # a second writer from the old version
    assert not ok and version == 1 and newer is a
    assert s.commit("t/g/x", 1, b)[:2] == (True, 2)
    assert s.get("t/g/x") == (2, b)
    # a writer ahead of the store (the store restarted from an older snapshot) wins
    assert s.commit("t/g/x", 7, a)[:2] == (True, 8)


def test_delete_leaves_a_tombstone_that_a_stale_copy_cannot_overwrite(tmp_path):
    s = Streams(tmp_path)
    s.commit("k", 0, StreamState(seen=5))
    base = s.delete("k")
    assert s.get("k") == (base, None) and s.count() == 0
    assert s.commit("k", 1, StreamState(seen=6))[0] is False  # cached before the reset
    assert s.commit("k", base, StreamState(seen=1))[:2] == (True, base + 1)


def test_only_changed_states_are_written_and_a_restart_reloads_them(tmp_path):
    s = Streams(tmp_path)
    for i in range(50):
        s.commit(f"k{i}", 0, StreamState(values=np.arange(i, dtype=float), seen=i))
    assert s.flush() == 50
    s.commit("k3", 1, StreamState(seen=99))
    assert s.flush() == 1  # not 50
    again = Streams(tmp_path)
    assert again.count() == 50 and again.get("k3")[0] == 2 and again.get("k3")[1].seen == 99
    np.testing.assert_array_equal(again.get("k7")[1].values, np.arange(7, dtype=float))


def test_idle_states_expire_and_damaged_rows_or_files_do_not_stop_the_store(tmp_path):
    s = Streams(tmp_path, ttl_s=0.0)
    s.commit("old", 0, StreamState(seen=1))
    s.flush()
    assert s.count() == 0 and Streams(tmp_path).count() == 0
    ok = Streams(tmp_path)
    ok.commit("good", 0, StreamState(seen=1))
    ok.commit("bad", 0, StreamState(seen=2))
    ok.flush()
    with sqlite3.connect(tmp_path / "streams.db") as db:
        db.execute("UPDATE streams SET state = ? WHERE key = 'bad'", (b"\x05\x00\x00\x00{oops",))
    loaded = Streams(tmp_path)
    assert loaded.count() == 1 and loaded.unreadable == 1
    (tmp_path / "streams.db").write_bytes(b"not a database at all" * 100)
    for extra in tmp_path.glob("streams.db-*"):
        extra.unlink()
    fresh = Streams(tmp_path)
    assert fresh.count() == 0 and list(tmp_path.glob("streams.db.unreadable-*"))


# -- leases: which router replica holds a series ---------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_held_series_is_not_given_to_another_replica_until_released_or_lapsed(model, tmp_path):
    clock = Clock()
    s = Streams(tmp_path, clock=clock)
    s.renew("a", 2.0)
    assert s.claim("t/g/x", "a") == (0, None) and s.holder("t/g/x") == "a"
    state = model.new_state()
    assert s.sync("a", [("t/g/x", 0, state.to_bytes())]) == [(True, 1, None)]
    s.renew("b", 2.0)
    assert s.holder("t/g/x") == "a"  # b must ask a for it
    assert s.sync("b", [("t/g/x", 1, state.to_bytes())]) == [(False, 1, None)]  # b's write is refused
    s.sync("a", [], released=["t/g/x"])
    assert s.holder("t/g/x") is None and s.claim("t/g/x", "b")[0] == 1
    clock.t += 2.5  # b stops renewing: its lease lapses and anyone may take the series
    assert s.holder("t/g/x") is None
    s.renew("a", 2.0)
    version, blob = s.claim("t/g/x", "a")
    assert version == 1 and StreamState.from_bytes(blob).seen == 0  # kept as the bytes it came in


def test_a_reset_takes_the_series_from_its_holder(model, tmp_path):
    s = Streams(tmp_path)
    s.renew("a", 60)
    s.renew("b", 60)
    s.claim("t/g/x", "a")
    s.sync("a", [("t/g/x", 0, model.new_state())])
    base = s.delete("t/g/x", owner="b")
    assert s.holder("t/g/x") == "b" and s.get("t/g/x") == (base, None)
    assert s.sync("a", [("t/g/x", 1, model.new_state())])[0][0] is False  # a's copy predates the reset


def test_claimed_new_series_count_against_the_quota_until_written_or_lapsed(model, tmp_path):
    from eyenet.serving.settings import QuotaSettings
    from eyenet.serving.streams import Refusal

    clock = Clock()
    s = Streams(tmp_path, clock=clock, quota=QuotaSettings(max_series_per_tenant=2))
    s.renew("a", 2.0)
    assert s.claim("t/g/1", "a") == (0, None) and s.claim("t/g/2", "a") == (0, None)
    version, refusal = s.claim("t/g/3", "a")
    assert version == -1 and isinstance(refusal, Refusal) and refusal.status == 429
    s.sync("a", [("t/g/1", 0, model.new_state())])  # a reservation becomes a series: still 2 in all
    assert s.claim("t/g/3", "a")[0] == -1 and s.stats()["reserved"] == 1
    s.sync("a", [], released=["t/g/2"])  # let go unwritten: its place is free
    assert s.claim("t/g/3", "a") == (0, None)
    clock.t += 3  # a dies: its unwritten reservation (t/g/3) stops counting
    s.renew("b", 2.0)
    assert s.claim("t/g/4", "b") == (0, None)
