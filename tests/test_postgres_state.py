"""Stream state and the audit log on PostgreSQL: the same behaviour as the embedded SQLite file and
JSON-lines log, a flusher that outlives the server going away, and clear errors for bad URIs.

A real server (the ``postgres`` fixture, Debian's binaries); no Ray. The password reaches libpq as
``PGPASSWORD`` (``pg_env``), never inside a URI.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import psycopg
import pytest

from eyenet.core import presets, synthetic
from eyenet.core.errors import AuditError, EyenetError, InvalidParameterError, UnavailableError
from eyenet.core.model import AnomalyModel, StreamState
from eyenet.lifecycle import audit, promotion
from eyenet.serving.retraining import RetrainScheduler
from eyenet.serving.settings import RetrainSettings, StoreSettings
from eyenet.serving.snapshots import PostgresSnapshots, SqliteSnapshots, open_snapshots
from eyenet.serving.streams import StreamStore, Streams


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _db_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "postgres"])
def state_uri(request, tmp_path) -> str:
    """Where a store keeps its rows: a folder (SQLite), or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state")
    return request.getfixturevalue("pg_env").create_database(_db_name())


def stored(uri: str) -> dict[str, tuple[int, bytes | None]]:
    """The rows as stored (key -> version, state bytes), read around the store."""
    if uri.startswith("postgresql://"):
        with psycopg.connect(uri) as conn:
            rows = conn.execute("SELECT key, version, state FROM eyenet_streams").fetchall()
    else:
        with sqlite3.connect(f"{uri}/streams.db") as db:
            rows = db.execute("SELECT key, version, state FROM streams").fetchall()
    return {k: (int(v), None if s is None else bytes(s)) for k, v, s in rows}


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    _, x, _ = synthetic.series("cpu_pct", n=1500, seed=3, anomalies_per_metric=0)
    return AnomalyModel.from_dict(presets.model_config("zscore")).fit(np.asarray(x[:1000]))


@pytest.fixture(scope="module")
def states(model) -> list[StreamState]:
    """Real states of a fitted model's streams (values, raw-score history, ranks, alarm state)."""
    _, x, _ = synthetic.series("cpu_pct", n=1500, seed=3, anomalies_per_metric=0)
    out = []
    for n in (10, 120, 400):
        _, st = model.score_stream(np.asarray(x[1000:1000 + n]))
        st.model = "default.default.zscore/1"
        out.append(st)
    return out


def st(n: int = 0) -> StreamState:
    return StreamState(values=np.arange(n, dtype=float), seen=n)


# -- the same behaviour on both backends ---------------------------------------------------------------
def test_backends_are_chosen_by_the_uri(state_uri):
    backend = open_snapshots(state_uri)
    assert isinstance(backend, PostgresSnapshots if state_uri.startswith("postgresql://") else SqliteSnapshots)
    assert isinstance(open_snapshots(state_uri.replace("postgresql://", "postgres://")), type(backend))


def test_changed_states_round_trip_through_a_restart(state_uri, states):
    s = Streams(state_uri)
    for i in range(60):
        assert s.commit(f"t/g/{i}", 0, states[i % 3])[:2] == (True, 1)
    assert s.flush() == 60
    s.commit("t/g/3", 1, states[2])
    assert s.flush() == 1  # only what changed
    assert s.flush() == 0
    again = Streams(state_uri)
    assert again.count() == 60 and again.get("t/g/3")[0] == 2
    for i in (0, 1, 3, 59):
        version, state = again.get(f"t/g/{i}")
        want = states[2] if i == 3 else states[i % 3]
        assert state.to_bytes() == want.to_bytes() and state.model == want.model
        np.testing.assert_array_equal(state.values, want.values)
    assert stored(state_uri)["t/g/3"] == (2, states[2].to_bytes())
    # a writer ahead of the store (it restarted from an older snapshot) wins; a stale one is refused
    assert again.commit("t/g/3", 7, states[0])[:2] == (True, 8)
    ok, version, newer = again.commit("t/g/3", 2, states[1])
    assert not ok and version == 8 and newer is states[0]


def test_tombstones_survive_a_restart_and_refuse_stale_copies(state_uri):
    s = Streams(state_uri)
    s.commit("t/g/k", 0, st(5))
    s.flush()
    base = s.delete("t/g/k")
    s.flush()
    assert stored(state_uri)["t/g/k"] == (base, None)
    again = Streams(state_uri)
    assert again.get("t/g/k") == (base, None) and again.count() == 0
    assert again.commit("t/g/k", 1, st(6))[0] is False  # cached before the reset
    assert again.commit("t/g/k", base, st(1))[:2] == (True, base + 1)


def test_reload_is_bounded_newest_first_and_the_dropped_rows_are_pruned(state_uri):
    clock = Clock()
    s = Streams(state_uri, clock=clock)
    for i in range(100):
        clock.t += 1
        s.commit(f"t/g/{i}", 0, st(3))
    s.flush()
    again = Streams(state_uri, settings=StoreSettings(reload_max_series=30))
    assert again.count() == 30 and set(again.states) == {f"t/g/{i}" for i in range(70, 100)}
    assert again.reload_dropped == 70 and list(again.states)[0] == "t/g/70"  # least recently used first
    assert len(stored(state_uri)) == 100
    again.flush()  # nothing changed, but the dropped rows leave at the next write
    assert set(stored(state_uri)) == {f"t/g/{i}" for i in range(70, 100)}
    assert Streams(state_uri).count() == 30


def test_eviction_and_expiry_delete_the_rows(state_uri):
    clock = Clock()
    s = Streams(state_uri, settings=StoreSettings(max_series=3, min_idle_s=10), clock=clock)
    for i in range(3):
        s.commit(f"t/g/{i}", 0, st(5))
        clock.t += 1
    s.flush()
    clock.t += 20
    assert s.commit("t/g/3", 0, st())[0]  # evicts t/g/0, the least recently used
    s.flush()
    assert set(stored(state_uri)) == {"t/g/1", "t/g/2", "t/g/3"} and s.evicted == 1
    short = Streams(state_uri, ttl_s=5.0, clock=clock)
    clock.t += 6
    short.commit("t/g/9", 0, st(1))
    short.flush()  # the three idle ones expire
    assert set(stored(state_uri)) == {"t/g/9"}


def test_an_unreadable_row_restarts_only_its_stream(state_uri):
    s = Streams(state_uri)
    s.commit("t/g/good", 0, st(1))
    s.commit("t/g/bad", 0, st(2))
    s.flush()
    if state_uri.startswith("postgresql://"):
        with psycopg.connect(state_uri) as conn:
            conn.execute("UPDATE eyenet_streams SET state = %s WHERE key = 't/g/bad'", (b"\x05\x00\x00\x00{oops",))
    else:
        with sqlite3.connect(f"{state_uri}/streams.db") as db:
            db.execute("UPDATE streams SET state = ? WHERE key = 't/g/bad'", (b"\x05\x00\x00\x00{oops",))
    loaded = Streams(state_uri)
    assert loaded.count() == 1 and loaded.unreadable == 1 and loaded.get("t/g/good")[1].seen == 1


# -- PostgreSQL going away ------------------------------------------------------------------------------
def _healed(store: StreamStore) -> Any:
    async def wait() -> dict[str, Any]:
        for _ in range(300):
            health = await store.health()
            if health["ok"] and health["dirty"] == 0:
                return health
            await asyncio.sleep(0.05)
        return await store.health()

    return wait()


def test_the_flusher_outlives_the_server_going_away_and_loses_no_acknowledged_point(pg_env):
    uri = pg_env.create_database(_db_name())

    async def go() -> tuple[dict, dict]:
        store = StreamStore(uri, interval_s=0.02, settings={"max_backoff_s": 0.1})
        assert (await store.commit("t/g/a", 0, st(1)))[0]
        assert await store.flush() == 1
        await asyncio.to_thread(pg_env.stop, "immediate")  # as a crash would
        try:
            for i in range(1, 4):  # acknowledged while the server is away
                assert (await store.commit("t/g/a", i, st(i + 1)))[0]
                assert (await store.commit(f"t/g/new{i}", 0, st(i)))[0]
            await asyncio.sleep(0.6)  # the flusher fails a few times
            broken = await store.health()
        finally:
            await asyncio.to_thread(pg_env.start)
        healed = await _healed(store)
        await store.close()
        return broken, healed

    broken, healed = asyncio.run(go())
    assert broken["ok"] is False and "OperationalError" in broken["error"] and broken["failures"] >= 2
    assert broken["dirty"] == 4 and "127.0.0.1" in broken["error"]
    assert pg_env.password not in str(broken)
    assert healed["ok"] and healed["error"] is None and healed["dirty"] == 0
    again = Streams(uri)
    assert again.get("t/g/a")[0] == 4 and again.get("t/g/a")[1].seen == 4
    assert set(again.states) == {"t/g/a", "t/g/new1", "t/g/new2", "t/g/new3"}


def test_a_dropped_connection_is_replaced_without_a_failed_write(pg_env):
    uri = pg_env.create_database(_db_name())

    async def go() -> dict:
        store = StreamStore(uri, interval_s=3600)
        await store.commit("t/g/a", 0, st(1))
        await store.flush()
        assert pg_env.terminate(uri.rsplit("/", 1)[1]) >= 1  # an admin, a restart of a proxy, an idle timeout
        await store.commit("t/g/a", 1, st(2))
        assert await store.flush() == 1
        return await store.health()

    health = asyncio.run(go())
    assert health["ok"] and health["failures"] == 0 and stored(uri)["t/g/a"][0] == 2


def test_start_up_waits_for_an_unreachable_server_and_gives_up_with_a_clear_error(pg_env):
    uri = pg_env.create_database(_db_name())
    s = Streams(uri)
    s.commit("t/g/x", 0, st(2))
    s.flush()
    s.snapshots.close()
    pg_env.stop()
    starter = None
    try:
        down = r"stream store postgresql://\*\*\*@127\.0\.0\.1:\d+/t_\w+: connection failed"
        with pytest.raises(UnavailableError, match=down):
            Streams(uri, settings=StoreSettings(open_timeout_s=0.3))
        starter = threading.Thread(target=lambda: (time.sleep(1.0), pg_env.start()), daemon=True)
        t0 = time.monotonic()
        starter.start()
        again = Streams(uri, settings=StoreSettings(open_timeout_s=60))
        waited = time.monotonic() - t0
    finally:
        if starter is not None:
            starter.join(120)
        if not pg_env.running():
            pg_env.start()
    assert waited >= 0.9
    assert again.get("t/g/x")[1].seen == 2 and again.moved_aside is None


def test_states_are_stored_uncompressed_in_an_indexed_table(pg_env):
    uri = pg_env.create_database(_db_name())
    Streams(uri).snapshots.close()
    with psycopg.connect(uri) as conn:
        storage = conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = 'eyenet_streams'::regclass "
                               "AND attname = 'state'").fetchone()[0]
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'eyenet_streams'")}
    assert storage == "e" and "eyenet_streams_touched" in indexes  # float arrays do not compress: not tried
    Streams(uri).snapshots.close()  # a second start changes nothing


def test_a_password_in_the_uri_works_but_is_never_shown(postgres):
    db = _db_name()
    postgres.create_database(db)
    uri = f"postgresql://{postgres.user}:{postgres.password}@{postgres.host}:{postgres.port}/{db}"
    s = Streams(uri)
    s.commit("t/g/x", 0, st(1))
    assert s.flush() == 1
    assert s.stats()["backend"] == f"postgresql://***@{postgres.host}:{postgres.port}/{db}"
    assert postgres.password not in repr(audit.AuditLog(uri).where)


# -- the audit log ----------------------------------------------------------------------------------------
def _events() -> list[audit.Event]:
    base = {"reason": "because", "actor": "tester@host"}
    return [
        audit.Event(event=audit.TRAIN, name="default.a.zscore", version=1, time=1_700_000_000.25,
                    metrics={"train_rows": 500.0, "nab": None}, **base),
        audit.Event(event=audit.REGISTER, name="default.a.zscore", version=1, time=1_700_000_001.5, **base),
        audit.Event(event=audit.REGISTER, name="default.b.mad", version=4, time=1_700_000_002.0, **base),
        audit.Event(event=audit.INTENT, name="default.a.zscore", version=1, time=1_700_000_003.0, **base),
        audit.Event(event=audit.PROMOTE, name="default.a.zscore", version=1, previous=None, time=1_700_000_003.5,
                    metrics={"nab_standard": 61.5}, **base),
        audit.Event(event=audit.KEY_CREATE, name="key:bot", version=None, time=1_700_000_004.0, **base),
        audit.Event(event=audit.ROLLBACK, name="default.a.zscore", version=1, previous=2, time=1_700_000_005.0,
                    reason="é ünïcode, 'quotes'; DROP TABLE eyenet_audit; --", actor="x@y"),
    ]


def test_the_audit_log_reads_back_the_same_from_postgres_as_from_the_file(pg_env, tmp_path):
    file_log = audit.AuditLog(tmp_path / "audit.jsonl")
    pg_log = audit.AuditLog(pg_env.create_database(_db_name()))
    assert pg_log.path is None and file_log.path == tmp_path / "audit.jsonl"
    assert pg_log.read() == [] and pg_log.read("default.a.zscore", limit=2) == []
    for ev in _events():
        file_log.append(ev)
        pg_log.append(ev)
    for args in [(), ("default.a.zscore",), ("default.a.zscore", 2), ("default.b.mad",), ("nope",), (None, 3)]:
        got = pg_log.read(*args)
        assert got == file_log.read(*args), args
        assert [e.to_dict() for e in got] == [e.to_dict() for e in file_log.read(*args)]
    assert [e.event for e in pg_log.read("default.a.zscore", limit=2)] == ["PROMOTE", "ROLLBACK"]
    assert pg_log.read("default.a.zscore")[-1].reason.startswith("é ünïcode")
    assert audit.history("default.b.mad", uri=pg_log.backend.uri) == file_log.read("default.b.mad")
    with pytest.raises(InvalidParameterError, match="'DEPLOY' is not one of"):
        pg_log.append(audit.Event(event="DEPLOY", name="x", version=1, reason="", actor="", time=0.0))


def test_an_append_is_durable_when_it_returns_and_records_through_a_registry(pg_env):
    uri = pg_env.create_database(_db_name())
    reg = SimpleNamespace(uri="http://mlflow:5000", audit_log=audit.AuditLog(uri), tags=[],
                          set_tags=lambda *a: reg.tags.append(a), versions=lambda name: [])
    ev = audit.record(reg, audit.RETRAIN, "default.r.ensemble", 3, reason="drift", mirror=False,
                      metrics={"psi": np.float64(0.4), "nan": float("nan"), "note": "text"})
    # another connection sees it at once: committed before record() returned
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT event, version, metrics FROM eyenet_audit").fetchall() == [
            ("RETRAIN", 3, {"psi": 0.4, "nan": None})]
    assert promotion.history(reg, "default.r.ensemble") == [ev]
    # the retraining cool-down reads the last RETRAIN back after a restart
    sched = RetrainScheduler(RetrainSettings(), reg, None, served=lambda: [])
    assert sched.last_logged("default.r.ensemble") == pytest.approx(ev.time)
    assert sched.last_logged("default.other.ensemble") == 0.0


def test_the_default_log_follows_eyenet_audit_uri(pg_env, monkeypatch):
    uri = pg_env.create_database(_db_name())
    monkeypatch.setenv(audit.ENV_URI, uri)
    reg = SimpleNamespace(uri="http://mlflow:5000", audit_log=None, set_tags=lambda *a: None)
    audit.record(reg, audit.KEY_CREATE, "key:bot", None, reason="made")
    assert audit.for_registry(reg) is audit.for_registry(reg)  # one connection per server, kept
    assert [e.event for e in audit.AuditLog().read()] == ["KEY-CREATE"]
    assert [e.name for e in audit.history()] == ["key:bot"]


def _append_many(uri: str, worker: int, password: str) -> None:
    import os

    os.environ["PGPASSWORD"] = password
    log = audit.AuditLog(uri)
    for i in range(40):
        log.append(audit.Event(event=audit.TRAIN, name=f"default.w{worker % 2}.zscore", version=worker * 1000 + i,
                               reason="x" * 2000, actor="w", time=time.time()))


def test_concurrent_writers_interleave_without_losing_events(pg_env):
    uri = pg_env.create_database(_db_name())
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(uri, w, pg_env.password)) for w in range(3)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_append_many, args=(uri, w, pg_env.password)) for w in (3, 4)]
    for t in threads:
        t.start()
    for p in procs:
        p.join(120)
    for t in threads:
        t.join(120)
    assert all(p.exitcode == 0 for p in procs)
    events = audit.AuditLog(uri).read()
    assert len(events) == 200
    for w in range(5):  # each writer's events stay in its own order
        assert [e.version for e in events if e.version // 1000 == w] == [w * 1000 + i for i in range(40)]
    assert len(audit.AuditLog(uri).read("default.w1.zscore")) == 80


def test_the_audit_log_reconnects_after_a_restart_and_fails_clearly_while_down(pg_env):
    log = audit.AuditLog(pg_env.create_database(_db_name()))
    log.append(_events()[0])
    pg_env.stop()
    try:
        with pytest.raises(AuditError, match=r"audit log postgresql://\*\*\*@127\.0\.0\.1:\d+/t_\w+: .*connect"):
            log.append(_events()[1])
    finally:
        pg_env.start()
    log.append(_events()[1])  # the dead connection is replaced
    pg_env.terminate()
    log.append(_events()[2])
    assert [e.event for e in log.read()] == ["TRAIN", "REGISTER", "REGISTER"]


# -- bad URIs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "problem"), [
    ("mysql://eyenet:s3cret@db/eyenet", "neither a folder nor a postgresql:// URI"),
    ("sqlite:///var/lib/eyenet", "neither a folder nor a postgresql:// URI"),
    ("postgresql://eyenet:s3cret@db:port/eyenet", "port 'port' is not a port number"),
    ("postgresql://eyenet@db:99999/eyenet", "port '99999' is not a port number"),
    ("postgresql://eyenet:s3cret@db/eyenet?colour=blue", "not a valid PostgreSQL URI: invalid URI query parameter"),
    ("postgres://eyenet@db/eyenet?sslmode=always", "sslmode 'always' is not one of"),
    ("postgresql://eyenet:s3cret@[::1/eyenet", "not a valid PostgreSQL URI"),
    ("", "state_uri is empty"),
])
def test_bad_state_uris_are_one_clear_error_without_the_password(uri, problem):
    with pytest.raises(InvalidParameterError) as exc:
        Streams(uri)
    assert problem in str(exc.value) and "s3cret" not in str(exc.value) and "state_uri" in str(exc.value)
    with pytest.raises(EyenetError):
        StreamStore(uri)


@pytest.mark.parametrize(("uri", "problem"), [
    ("mysql://eyenet:s3cret@db/eyenet", "neither a file path nor a postgresql:// URI"),
    ("postgresql://eyenet:s3cret@db:port/eyenet", "port 'port' is not a port number"),
    ("postgresql://eyenet:s3cret@db/eyenet?colour=blue", "not a valid PostgreSQL URI"),
])
def test_bad_audit_uris_are_one_clear_error_without_the_password(uri, problem):
    with pytest.raises(InvalidParameterError) as exc:
        audit.AuditLog(uri)
    assert problem in str(exc.value) and "s3cret" not in str(exc.value) and "audit_uri" in str(exc.value)


def test_an_unreachable_server_is_a_clear_error(tmp_path):
    from servers import free_port

    uri = f"postgresql://eyenet:s3cret@127.0.0.1:{free_port()}/eyenet"
    with pytest.raises(UnavailableError) as exc:
        Streams(uri, settings=StoreSettings(open_timeout_s=0.2))
    assert "Connection refused" in str(exc.value) and "s3cret" not in str(exc.value)
    with pytest.raises(AuditError) as aexc:
        audit.AuditLog(uri).append(_events()[0])
    assert "audit log postgresql://***@127.0.0.1" in str(aexc.value) and "s3cret" not in str(aexc.value)
