"""The request path of the service, without Ray: request -> served version -> member scores ->
combination -> response body; and the stream path (per-series lock, the state this replica holds,
written behind).

A ``POST /v1/stream`` request, from the HTTP handler in ``eyenet.serve.deployments``:

1. :meth:`Pipeline.stream` validates the points, takes the series' lock (one request of a
   series at a time in this process) and starts from the state this replica holds, claimed
   from the stream store on first use (:class:`~eyenet.serving.leases.OwnedStates`);
2. :meth:`Pipeline.score` resolves the version that serves the model (``resolve``), loads it
   (:class:`ModelCache`), and gets every member's raw scores (:meth:`Pipeline._members_raw`):
   in this process (``AnomalyModel.member_inputs`` then each member detector's ``score``) for
   small requests, else from the remote members (Serve: the family deployments), in parallel;
3. ``AnomalyModel.finish_stream`` (:mod:`eyenet.core.model`) calibrates, ranks, combines and
   decides alarms (without the members that failed: the answer is ``degraded``), and
   :func:`eyenet.serving.schemas.result_body` makes the JSON;
4. the new state is kept here and written behind to the store within ``store.write_behind_s``
   (no store call on the request path); a series another replica asks for is handed over with
   its newest state.

``/v1/detect`` is steps 2-3 for each series from a fresh state. Collaborators come in through
the constructor, so the same code runs under Serve (the controller's serving table, the
family deployment handles, the store actor) and in-process in tests (a registry alias lookup,
no remote members, a :class:`~eyenet.serving.streams.StreamStore`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from eyenet.core import gaps
from eyenet.core.errors import EyenetError, NotServableError, QuotaExceededError, UnavailableError
from eyenet.core.model import Scores
from eyenet.lifecycle import registry as reg
from eyenet.monitoring import metrics as m
from eyenet.monitoring.monitor import Outbox
from eyenet.serving import schemas
from eyenet.serving.quota import RateLimits
from eyenet.serving.alerts import Incidents
from eyenet.serving.leases import OwnedStates, StoreLike
from eyenet.serving.settings import AppConfig
from eyenet.serving.streams import Refusal

log = logging.getLogger(__name__)

#: ensemble models a process keeps loaded (least recently used dropped beyond this; ``AppConfig.models_cached``)
MODELS_PER_ROUTER = 32

#: the version of a model that serves a request starting now
Resolve = Callable[[str], Awaitable[int]]


def model_id(name: str, version: int) -> str:
    """The key of a model version: in the caches, and the multiplexed model id of the family deployments."""
    return f"{name}/{version}"


def parse_model_id(key: str) -> tuple[str, int]:
    name, _, version = key.rpartition("/")
    return name, int(version)


class RemoteMembers(Protocol):
    """Members scored outside this process (Serve: one deployment per detector family)."""

    def deployed(self, family: str) -> bool:
        """Whether anything answers for ``family`` (a member no one answers for is left out: degraded)."""

    def local(self, family: str) -> bool:
        """Whether this process may score ``family`` itself (False: e.g. its deployment holds a GPU)."""

    def up(self, family: str) -> bool:
        """Whether ``family``'s deployment has answered lately, so a call does not wait for a replica to start."""

    def wake(self, family: str, key: str) -> None:
        """Start ``family``'s deployment (if it has scaled to zero) and load model ``key`` into it, in
        the background."""

    def raw(self, family: str, key: str, member: int, inputs: np.ndarray,
            n_new: int) -> Awaitable[tuple[np.ndarray, int]]:
        """Send member ``member`` of model ``key`` its inputs now; the awaitable gives the raw scores of
        the last ``n_new`` points and the size of the batch they were scored in."""


class ModelCache:
    """Loaded models by ``name/version``, least recently used dropped beyond ``capacity``; a version is
    loaded once (concurrent callers wait for the same load), then ``prepare`` (Serve: warm the
    member deployments with it) runs before it answers."""

    def __init__(self, registry: Any, *, capacity: int = MODELS_PER_ROUTER,
                 prepare: Callable[[str, Any], Awaitable[None]] | None = None) -> None:
        self.registry = registry  # anything with load(name, version=) and version(name, version)
        self.capacity = capacity
        self.prepare = prepare
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._loading: dict[str, asyncio.Task] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._models

    def __len__(self) -> int:
        return len(self._models)

    async def get(self, name: str, version: int) -> Any:
        key = model_id(name, version)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.get_running_loop().create_task(self._load(name, version))
            pending.add_done_callback(lambda _t: self._loading.pop(key, None))
        return await asyncio.shield(pending)

    async def _load(self, name: str, version: int) -> Any:
        key = model_id(name, version)
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, lambda: self.registry.load(name, version=version).warm())
        try:
            info = await loop.run_in_executor(None, lambda: self.registry.version(name, version))
            m.set_model_created(name, info.created)
        except EyenetError:
            pass
        if self.prepare is not None:
            await self.prepare(key, model)
        self._put(key, model)
        return model

    def _put(self, key: str, model: Any) -> None:
        self._models[key] = model
        self._models.move_to_end(key)
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
            m.EVICTIONS.labels("router_models").inc()

    async def preload(self, versions: Iterable[tuple[str, int]]) -> None:
        """Load these versions now (best effort, without ``prepare``: what fails loads on first use)."""
        loop = asyncio.get_running_loop()
        for name, version in list(versions)[: self.capacity]:
            try:
                model = await loop.run_in_executor(None, lambda: self.registry.load(name, version=version).warm())
            except Exception as exc:  # noqa: BLE001
                log.warning("preload: %s version %s did not load: %s", name, version, exc)
                continue
            self._put(model_id(name, version), model)


class AliasResolver:
    """The version an alias (``champion``) names in the registry, cached for ``ttl_s`` and then
    refreshed in the background (the known version keeps serving meanwhile, and if the registry fails)."""

    def __init__(self, registry: Any, alias: str = "champion", ttl_s: float = 2.0) -> None:
        self.registry = registry
        self.alias = alias
        self.ttl_s = ttl_s
        self._aliases: dict[str, tuple[float, int]] = {}
        self._refreshing: dict[str, asyncio.Task] = {}

    async def __call__(self, name: str) -> int:
        hit = self._aliases.get(name)
        if hit is None:
            return await self._lookup(name)
        if time.monotonic() - hit[0] >= self.ttl_s and name not in self._refreshing:
            self._refreshing[name] = asyncio.get_running_loop().create_task(self._refresh(name))
        return hit[1]

    async def _lookup(self, name: str) -> int:
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, lambda: self.registry.version(name, alias=self.alias))
        self._aliases[name] = (time.monotonic(), info.version)
        return info.version

    async def _refresh(self, name: str) -> None:
        try:
            await self._lookup(name)
        except Exception:  # noqa: BLE001 - keep serving the known version; retried after the next TTL
            self._aliases[name] = (time.monotonic(), self._aliases[name][1])
            m.ERRORS.labels("registry").inc()
        finally:
            self._refreshing.pop(name, None)


class Pipeline:
    """Scores ``/v1/detect`` and ``/v1/stream`` requests: resolves, loads, fans out, combines, commits.

    ``resolve`` gives the version that serves a model name; ``models`` loads and caches versions;
    ``store`` keeps stream states; ``members`` (optional) scores members elsewhere: without it every
    member is scored in this process. ``outbox`` (optional) collects what was scored for the monitor.

    ``owner`` names this process to the store (a router replica's id); the series it holds are
    :attr:`owned`.

    Bounds: per-tenant request and point rates (:class:`~eyenet.serving.quota.RateLimits`, per
    replica), the held stream states (``streams_cached`` states and ``streams_cached_bytes``,
    least recently used released to the store and counted).
    """

    def __init__(self, resolve: Resolve, models: ModelCache, store: StoreLike, *,
                 members: RemoteMembers | None = None, outbox: Outbox | None = None,
                 config: AppConfig | None = None, streams_cached: int | None = None,
                 owner: str | None = None) -> None:
        self.resolve = resolve
        self.models = models
        self.store = store
        self.members = members
        self.outbox = outbox
        self.config = config or AppConfig()
        self.rates = RateLimits(self.config.quota)
        # alarms out: the incidents of the series scored here; the router sets alerts_out (AlertSender.send)
        self.incidents = Incidents(self.config.alerts) if self.config.alerts.receivers else None
        self.alerts_out: Callable[[list[tuple[str, dict[str, Any]]]], None] | None = None
        self.owned = OwnedStates(store, owner or f"process-{uuid.uuid4().hex[:12]}", self.config.store,
                                 max_states=self.config.streams_cached if streams_cached is None else streams_cached,
                                 max_bytes=self.config.streams_cached_bytes,
                                 on_leave=None if self.incidents is None else self._left)
        self._pool = ThreadPoolExecutor(self.config.score_threads, thread_name_prefix="eyenet-score")
        self.gap_policy = self.config.gaps.policy()

    async def close(self) -> None:
        """Write every held series behind (releasing it) and stop the scoring threads."""
        await self.owned.close()
        self._pool.shutdown(wait=False)

    # -- requests --------------------------------------------------------------------------------
    async def detect(self, req: schemas.DetectRequest) -> dict[str, Any]:
        """Score windows of one or many series, each from a fresh stream (no stored state)."""
        data = schemas.check_series(req.series)
        total = sum(len(s.values) for s in data)
        tenant = req.tenant or schemas.DEFAULT_TENANT
        self.rates.check(tenant, total)
        name, version, model = await self.model(tenant, req.group)
        report = schemas.check_detectors(req.detectors, model.member_families, f"{name} v{version}")
        plans = [self._plan(model, s, None) for s in data]
        scored = await self._score_units(name, version, model, [u for p in plans for u in p.units], total,
                                         report=report)
        out = []
        for s, plan in zip(data, plans):
            body, _, entries = self._assemble(name, version, model, plan, scored)
            for args, kwargs in entries:
                kwargs.update(scored=s.id)
                self._to_outbox((args, kwargs), series=False)
            out.append({"id": s.id, **body})
        return {"results": out}

    async def stream(self, req: schemas.StreamRequest) -> tuple[dict[str, Any], str]:
        """Append points to a series; returns the body and a ``Server-Timing`` value (``score``: the
        scoring, ``state``: the commit). Scores from this process's cached copy of the series'
        state and commits the result to the store in one call; when another process moved the
        series on meanwhile, the store answers with its newer state and the points are scored again."""
        (s,) = schemas.check_series([schemas.SeriesIn(id=req.id, values=req.values, timestamps=req.timestamps)],
                                    field="body")
        tenant = req.tenant or schemas.DEFAULT_TENANT
        self.rates.check(tenant, len(s.values))
        key = f"{tenant}/{req.group}/{req.id}"
        async with self.owned.holding([key]):  # one request of a series at a time here: points apply in order
            return await self._stream(tenant, req.group, s, key, req.reset)

    async def stream_many(self, req: schemas.StreamBatchRequest) -> dict[str, Any]:
        """New points of many series of one group (``POST /v1/stream/batch``): one vectorised pass per
        member, one store call for the states and one for the commits. A series the store refuses
        (its tenant at its series quota) or that keeps moving on elsewhere gets an ``error`` and a
        ``status`` in its result; the others are scored. When every series is refused for a quota,
        the request is: :class:`QuotaExceededError` (429 with Retry-After), so a sender that keeps
        sending new series past its quota is told to back off (and is paced, ``quota.hold_s``)."""
        limits = schemas.LIMITS
        tenant = req.tenant or schemas.DEFAULT_TENANT
        if self.owned.at_quota and 0 < len(req.series) <= limits.max_batch_series:
            # only new series of a tenant the store just found at its quota: refused before the
            # batch is validated or the store asked, after the tenant's pace (a flood of new ids)
            keys = [f"{tenant}/{req.group}/{s.id}" for s in req.series]
            refusal = self.owned.refuse_new(tenant, keys)
            if refusal is not None:
                await self._pace(tenant, len(keys))
                raise QuotaExceededError(f"every series of the batch was refused: {refusal.reason}",
                                         retry_after_s=self.config.quota.retry_after_s)
        data = schemas.check_series(req.series, max_series=limits.max_batch_series, max_total=limits.max_batch_points)
        self.rates.check(tenant, sum(len(s.values) for s in data))
        results = await self.stream_series(tenant, req.group, data)
        if results and all(r.body.get("status") == 429 for r in results):
            # nothing taken: the request as a whole is over a quota, so a sender backs off (Retry-After)
            raise QuotaExceededError(f"every series of the batch was refused: {results[0].body['error']}",
                                     retry_after_s=self.config.quota.retry_after_s)
        return {"results": [r.body for r in results]}

    async def stream_series(self, tenant: str, group: str, data: list[schemas.SeriesData],
                            labels: list[dict[str, str]] | None = None) -> list[SeriesResult]:
        """:meth:`stream_many` of validated series (also the remote_write path, which passes each
        series' ``labels`` for its alerts): per series its body and the timestamps (epoch seconds)
        of its points, imputed ones included."""
        keys = [f"{tenant}/{group}/{s.id}" for s in data]
        async with self.owned.holding(keys):
            return await self._stream_many(tenant, group, data, keys, labels)

    async def end_series(self, tenant: str, group: str, ids: Iterable[str]) -> None:
        """Forget series (a Prometheus stale marker: the target is gone); their next point starts afresh."""
        keys = [f"{tenant}/{group}/{i}" for i in ids]
        async with self.owned.holding(keys):
            for key in keys:
                await self.owned.reset(key)

    async def _stream(self, tenant: str, group: str, s: schemas.SeriesData, key: str,
                      reset: bool) -> tuple[dict[str, Any], str]:
        t0 = time.perf_counter()
        if reset:
            version, state = await self.owned.reset(key), None
        else:
            await self._pace(tenant, self.owned.missing([key]))
            got = (await self.owned.acquire([key]))[key]
            if isinstance(got, Refusal):  # a new series over the tenant's quota, the store full: 429
                raise _refused(got)
            version, state = got
        t1 = time.perf_counter()
        name, version_m, model = await self.model(tenant, group)
        plan = self._plan(model, s, state)
        scored = await self._score_units(name, version_m, model, plan.units, len(s.values))
        body, new_state, entries = self._assemble(name, version_m, model, plan, scored)
        # where the time went, for clients and load tests (the HTTP Server-Timing header)
        timing = f"state;dur={1000 * (t1 - t0):.2f}, score;dur={1000 * (time.perf_counter() - t1):.2f}"
        if new_state is None:  # every point was dropped (at or before the last one applied)
            return {"id": s.id, "seen": state.seen if state is not None else 0, **body}, timing
        self._alert(tenant, group, s.id, None, version_m, model, name, plan, body, new_state)
        self.owned.put(key, version, new_state)
        await self.owned.written()  # at once, unless store.write_behind_s is 0
        for entry in entries:
            self._to_outbox(entry)
        return {"id": s.id, "seen": new_state.seen, **body}, timing

    async def _stream_many(self, tenant: str, group: str, data: list[schemas.SeriesData],
                           keys: list[str], labels: list[dict[str, str]] | None = None) -> list[SeriesResult]:
        await self._pace(tenant, self.owned.missing(keys))
        held = await self.owned.acquire(keys)  # one store call for the series this replica does not hold
        results: list[SeriesResult | None] = [None] * len(data)
        todo = []
        for i, key in enumerate(keys):
            got = held[key]
            if isinstance(got, Refusal):
                results[i] = _failed(data[i].id, got.status, got.reason)
            else:
                todo.append(i)
        if todo:
            name, version_m, model = await self.model(tenant, group)
            plans = []
            turns = Turns()
            for i in todo:
                plans.append(self._plan(model, data[i], held[keys[i]][1]))
                await turns.take()
            scored = await self._score_units(name, version_m, model, [u for p in plans for u in p.units],
                                             sum(len(data[i].values) for i in todo), batch=True)
            for i, plan in zip(todo, plans):
                await turns.take()
                body, new_state, entries = self._assemble(name, version_m, model, plan, scored)
                version, state = held[keys[i]]
                if new_state is not None:
                    self._alert(tenant, group, data[i].id, None if labels is None else labels[i], version_m, model,
                                name, plan, body, new_state)
                    self.owned.put(keys[i], version, new_state)
                    for entry in entries:
                        self._to_outbox(entry)
                seen = new_state.seen if new_state is not None else (state.seen if state is not None else 0)
                results[i] = SeriesResult({"id": data[i].id, "seen": seen, **body}, plan.timestamps)
            await self.owned.written()
        return results  # type: ignore[return-value]

    async def _pace(self, tenant: str, series: int) -> None:
        """Wait while ``tenant`` brings this replica ``series`` series it does not hold (new ones, or held
        elsewhere) faster than its ``quota.new_series_per_s`` (:meth:`~eyenet.serving.quota.RateLimits.pace`),
        before the store is asked for them: admitting them is most of their cost."""
        wait = self.rates.pace(tenant, series)
        if wait > 0:
            await asyncio.sleep(wait)

    def _alert(self, tenant: str, group: str, series: str, labels: dict[str, str] | None, version: int, model: Any,
               name: str, plan: Plan, body: dict[str, Any], state: Any) -> None:
        """The series' incident transitions to the alert sender (no I/O here); the open incident is
        kept in the series' new ``state`` (before it is held), so it moves with the series."""
        if self.incidents is None or self.alerts_out is None or not plan.units \
                or tenant not in self.config.alerts.receivers:  # nowhere to send this tenant's alerts
            return
        values = np.concatenate([u.values for u in plan.units]).tolist()
        points = body["points"]
        if len(values) != len(points):
            return
        stamps = plan.timestamps.tolist() if plan.timestamps is not None else [time.time()] * len(points)
        items = self.incidents.observe(tenant, group, series, labels, name, version, model.threshold,
                                       values, stamps, points, state.alarm)
        if items:
            self.alerts_out(items)

    def _left(self, key: str) -> None:
        """A series this process held went elsewhere: its open incident (in its state) is not resent here."""
        tenant, group, series = key.split("/", 2)
        self.incidents.forget(tenant, group, series)

    def _to_outbox(self, entry: tuple[tuple[Any, ...], dict[str, Any]], series: bool = True) -> None:
        if self.outbox is not None:
            args, kwargs = entry
            self.outbox.add(*(args if series else (*args[:4], None)), **kwargs)

    def stats(self) -> dict[str, Any]:
        """Sizes of this replica's bounded structures (``/healthz``)."""
        return {"streams": self.owned.stats(), "models_cached": len(self.models), "max_models_cached": self.models.capacity,
                "rate_limits": self.rates.stats()}

    # -- the model -------------------------------------------------------------------------------
    async def model(self, tenant: str, group: str) -> tuple[str, int, Any]:
        """The served ensemble of ``tenant``/``group``: its name, the version serving now, the model."""
        name = reg.model_name("ensemble", group=group, tenant=tenant)
        version = await self.resolve(name)
        return name, version, await self.models.get(name, version)

    # -- scoring ---------------------------------------------------------------------------------
    def _plan(self, model: Any, s: schemas.SeriesData, state: Any | None) -> Plan:
        """The units a series' new points are scored as: its gaps filled (:mod:`eyenet.core.gaps`),
        points at or before its last one dropped, and a new start after a gap too long to fill."""
        ts = None if s.timestamps is None else s.timestamps.astype("int64") / 1e9
        nan = float("nan")
        filled = gaps.fill(s.values, ts, last_ts=getattr(state, "last_ts", nan), step=getattr(state, "step", nan),
                           last_value=getattr(state, "last_value", nan), policy=self.gap_policy)
        units, seen = [], state.seen if state is not None else 0
        for k, seg in enumerate(filled.segments):
            start = state if k == 0 and not seg.restart else (None if seen == 0 else _Fresh(seen))
            units.append(Unit(seg.values, seg.imputed if seg.imputed.any() else None,
                              None if seg.timestamps is None else (seg.timestamps * 1e9).astype("datetime64[ns]"),
                              start))
            seen += len(seg.values)
        stamps = None if ts is None else np.concatenate([seg.timestamps for seg in filled.segments]) \
            if filled.segments else np.empty(0)
        return Plan(units, filled, stamps, s.id)

    async def _score_units(self, name: str, version: int, model: Any, units: list[Unit], n_points: int, *,
                           batch: bool = False, report: set[str] | None = None) -> list[tuple[Any, ...]]:
        """Score every unit (each from its own state): every member's raw scores, in one pass over all
        the units for the members scored here, then the combination. Per unit ``(body, new state,
        scores, imputed)``. ``n_points``: the request's points (where the members run)."""
        key = model_id(name, version)
        families = model.member_families
        inputs = []
        turns = Turns() if len(units) > 1 else None
        for u in units:
            start = u.state.state(model) if isinstance(u.state, _Fresh) else u.state
            u.state = model.adopt(start if start is not None else model.new_state(), key)
            inputs.append(model.member_inputs(model.context(u.values, u.state), len(u.values)))
            if turns is not None:
                await turns.take()
        raw = [np.full((len(u.values), len(families)), np.nan) for u in units]
        missing: list[set[str]] = [set() for _ in units]
        here, there = [], []
        for j, fam in enumerate(families):
            if self.members is not None and not self.members.deployed(fam):
                for gone in missing:
                    gone.add(fam)
            elif self._inline(fam, key, n_points, batch):
                here.append(j)
            else:
                there.append(j)

        async def inline() -> None:
            done = await self._off_loop(n_points, self._score_inline, model.members, here, inputs,
                                        [len(u.values) for u in units], raw)
            for j, ms in done:
                if ms is None:
                    for gone in missing:
                        gone.add(families[j])
                    m.ERRORS.labels("member_failed").inc()
                else:
                    m.DETECTOR_LATENCY.labels(families[j]).observe(ms)

        async def remote(k: int, j: int) -> None:
            t0 = time.perf_counter()
            try:
                call = self.members.raw(families[j], key, j, inputs[k][j], len(units[k].values))
                got, size = await asyncio.wait_for(call, timeout=self.config.member_timeout_s)
                raw[k][:, j] = got
                m.DETECTOR_LATENCY.labels(families[j]).observe(1000 * (time.perf_counter() - t0))
                m.BATCH_SIZE.labels(families[j]).observe(size)
            except Exception as exc:  # noqa: BLE001 - a member's fault or timeout degrades, never fails, the answer
                log.debug("member %s (%s) failed: %r", j, families[j], exc)
                missing[k].add(families[j])
                m.ERRORS.labels("member_failed").inc()

        await asyncio.gather(*([inline()] if here else []), *(remote(k, j) for j in there for k in range(len(units))))
        if any(len(gone) == len(families) for gone in missing):
            raise NotServableError(f"{name} v{version}: no member answered (members: {families})")
        out = await self._off_loop(n_points, self._finish_units, name, version, model, raw, units, missing, report,
                                   inputs, self.config.critical_score)
        alarms = sum(a for _, _, _, a in out)
        m.POINTS.labels(name).inc(sum(len(u.values) for u in units))
        m.ANOMALIES.labels(name).inc(alarms)
        if any(missing):
            m.DEGRADED.labels(name).inc()
        for f in families:
            m.MODEL_VERSION.labels(name, f).set(version)
        return [(body, new_state, scores) for body, new_state, scores, _ in out]

    def _assemble(self, name: str, version: int, model: Any, plan: Plan,
                  scored: list[tuple[Any, ...]]) -> tuple[dict[str, Any], Any, list[tuple[Any, ...]]]:
        """One series' body (its units' points in order), its new state (None: nothing was scored) and
        its outbox entries, from the results of :meth:`_score_units` (looked up by unit)."""
        body: dict[str, Any] = {"model": name, "version": version, "degraded": False, "missing": [], "points": []}
        new_state, entries, missing = None, [], set()
        for u in plan.units:
            b, new_state, scores = scored[u.slot]
            body["points"].extend(b["points"])
            missing.update(b["missing"])
            real = slice(None) if u.imputed is None else ~u.imputed
            first = u.state.seen
            x, ts = u.values[real], None if u.timestamps is None else u.timestamps[real]
            kept = Scores(raw=scores.raw[real], calibrated=scores.calibrated[real], score=scores.score[real],
                          alarm=scores.alarm[real])
            if len(x):
                # what the console draws of a live series: the real points as answered, where they sit
                pts = b["points"] if u.imputed is None else [p for p, r in zip(b["points"], real.tolist()) if r]
                index = np.arange(first, first + len(u.values))[real]
                entries.append(((name, version, x, kept, plan.series), {
                    "first": first, "timestamps": ts, "view": (pts, index, model.member_families)}))
        body["degraded"], body["missing"] = bool(missing), sorted(missing)
        if plan.timestamps is not None:  # points no longer line up with the values sent: say when each is
            for point, t in zip(body["points"], plan.timestamps.tolist()):
                point["timestamp"] = t
        f = plan.filled
        if f.dropped:
            body["dropped"] = f.dropped
        if new_state is not None:
            new_state = replace(new_state, last_ts=f.last_ts, step=f.step, last_value=f.last_value)
            # a series still warming up says how many more points its first score needs
            warm = not body["points"] or body["points"][-1]["ready"] or body["points"][-1].get("imputed")
            body["points_needed"] = 0 if warm else max(model.detector.min_history - len(new_state.values), 1)
        return body, new_state, entries

    # -- members ---------------------------------------------------------------------------------
    def _inline(self, family: str, key: str, n_points: int, batch: bool = False) -> bool:
        """Whether member ``family`` is scored in this process: small requests and batches (the hop
        costs more than the compute), and big ones while the family's deployment is not up."""
        if self.members is None:
            return True
        if not self.members.local(family) or batch or n_points <= self.config.inline_max_points:
            return self.members.local(family)
        if self.members.up(family):
            return False
        self.members.wake(family, key)  # scored here this time; the next big request goes to the deployment
        return True

    async def _off_loop(self, n_points: int, fn: Any, *args: Any) -> Any:
        """Run ``fn`` here for small requests; on the scoring threads for big ones, so the event
        loop keeps taking requests and torch's kernels (which release the GIL) use every core."""
        if n_points < self.config.thread_min_points:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @staticmethod
    def _score_inline(members: list[Any], todo: list[int], inputs: list[list[np.ndarray]], n_new: list[int],
                      raw: list[np.ndarray]) -> list[tuple[int, float | None]]:
        """Raw scores of the members in ``todo`` for every unit (one :meth:`score_many` call each)
        into ``raw``; per member its milliseconds (None: failed)."""
        done = []
        for j in todo:
            t0 = time.perf_counter()
            try:
                got = members[j].score_many([i[j] for i in inputs], n_new) if len(inputs) > 1 \
                    else [members[j].score(inputs[0][j])[len(inputs[0][j]) - n_new[0] :]]
                for k, r in enumerate(got):
                    raw[k][:, j] = r
                done.append((j, 1000 * (time.perf_counter() - t0)))
            except Exception:  # noqa: BLE001 - a member's fault degrades, never fails, the answer
                log.debug("member %s failed", j, exc_info=True)
                done.append((j, None))
        return done

    @staticmethod
    def _explained(model: Any, scores: Scores, critical: float) -> dict[str, Any]:
        """What a response explains beyond the scores (see :func:`eyenet.serving.schemas.result_body`)."""
        return {"shares": None if scores.members is None else model.detector.shares(scores.members),
                "halfwidth": model.expected_halfwidth, "threshold": model.threshold, "critical": critical}

    @staticmethod
    def _finish_units(name: str, version: int, model: Any, raw: list[np.ndarray], units: list[Unit],
                      missing: list[set[str]], report: set[str] | None,
                      inputs: list[list[np.ndarray]], critical: float = 1.0) -> list[tuple[Any, ...]]:
        """Calibration, ranks, combination and alarms of every unit, and what the model expected;
        imputed points are answered with ``imputed: true``, no score and no alarm."""
        families = model.member_families
        expected = model.expected_many(inputs, [len(u.values) for u in units])
        if len(units) > 1 and not any(missing) and all(len(u.values) == 1 and u.imputed is None for u in units):
            return Pipeline._finish_points(name, version, model, raw, units, report,
                                           None if expected is None else np.concatenate(expected), critical)
        out = []
        for k, u in enumerate(units):
            gone = sorted(missing[k])
            idx = tuple(families.index(f) for f in gone)
            scores, new_state = model.finish_stream(raw[k], u.values, u.state, missing=idx)
            if u.imputed is not None:
                scores = Scores(raw=scores.raw, calibrated=scores.calibrated,
                                score=np.where(u.imputed, np.nan, scores.score), alarm=scores.alarm & ~u.imputed,
                                members=scores.members)
            body = schemas.result_body(name, version, families, gone, scores, model.member_calibrated(raw[k]), report,
                                       imputed=u.imputed, expected=None if expected is None else expected[k],
                                       **Pipeline._explained(model, scores, critical))
            u.slot = k
            out.append((body, new_state, scores, int(scores.alarm.sum())))
        return out


    @staticmethod
    def _finish_points(name: str, version: int, model: Any, raw: list[np.ndarray], units: list[Unit],
                       report: set[str] | None, expected: np.ndarray | None,
                       critical: float = 1.0) -> list[tuple[Any, ...]]:
        """:meth:`_finish_units` of units of one point each, every member answering (the batch stream
        of one new point per series): one :meth:`~eyenet.core.model.AnomalyModel.finish_many` and
        one response body over all of them, then split per unit (the same numbers)."""
        member_raw = np.vstack(raw)
        scores, states = model.finish_many(member_raw, np.array([u.values[0] for u in units]), [u.state for u in units])
        body = schemas.result_body(name, version, model.member_families, [], scores,
                                   model.member_calibrated(member_raw), report, expected=expected,
                                   **Pipeline._explained(model, scores, critical))
        out = []
        for k, (u, point, state) in enumerate(zip(units, body["points"], states)):
            u.slot = k
            one = Scores(raw=scores.raw[k : k + 1], calibrated=scores.calibrated[k : k + 1],
                         score=scores.score[k : k + 1], alarm=scores.alarm[k : k + 1])
            out.append(({"model": name, "version": version, "degraded": False, "missing": [], "points": [point]},
                        state, one, int(scores.alarm[k])))
        return out


@dataclasses.dataclass
class _Fresh:
    """The start of a unit after a gap too long to fill: a fresh state that keeps the series' count."""

    seen: int

    def state(self, model: Any) -> Any:
        return replace(model.new_state(), seen=self.seen)


@dataclasses.dataclass(eq=False)
class Unit:
    """Points of one series scored from one state: a request's points, or those after a gap that
    restarts the series' warm-up (``slot``: its result among those of :meth:`Pipeline._score_units`)."""

    values: np.ndarray
    imputed: np.ndarray | None
    timestamps: np.ndarray | None
    state: Any
    slot: int = -1


@dataclasses.dataclass
class Plan:
    """How a series' points are scored: its units, what gap filling did, and the points' timestamps
    (epoch seconds, imputed ones included; None when the client sent none)."""

    units: list[Unit]
    filled: Any
    timestamps: np.ndarray | None
    series: str | None = None


@dataclasses.dataclass
class SeriesResult:
    """One series of a batch: its response body, and its points' timestamps (epoch seconds, imputed
    ones included) for whoever writes the scores on."""

    body: dict[str, Any]
    timestamps: np.ndarray | None = None


#: series a batch works through before it lets the event loop take other requests (a thousand new
#: series cost tens of ms here; another tenant's one-point request should not wait for all of them)
SERIES_PER_TURN = 64
#: and at most this long (seconds): a calm request's every step (body read, auth, store, answer) waits
#: behind a batch's turn, so a request of ten steps beside a batch at work waits up to ten turns (with
#: 1 ms turns the calm tenant's p99 beside a flood of new series was 1.5-2.0x its p99 alone, 1.2-1.8x with these)
TURN_S = 0.0002


class Turns:
    """A batch's work on the event loop, in turns: :meth:`take` after each series gives the loop to
    whatever else is ready every :data:`SERIES_PER_TURN` series or :data:`TURN_S` seconds."""

    __slots__ = ("n", "at")

    def __init__(self) -> None:
        self.n = 0
        self.at = time.perf_counter()

    async def take(self) -> None:
        self.n += 1
        if self.n >= SERIES_PER_TURN or time.perf_counter() - self.at >= TURN_S:
            await asyncio.sleep(0)
            self.n, self.at = 0, time.perf_counter()


def _refused(refusal: Refusal) -> EyenetError:
    """The error a store's :class:`Refusal` is over HTTP: 429 (quota, store full) or 503 (busy)."""
    if refusal.status == 503:
        return UnavailableError(refusal.reason, retry_after_s=refusal.retry_after_s)
    return QuotaExceededError(refusal.reason, retry_after_s=refusal.retry_after_s)


def _failed(series: str, status: int, message: str) -> SeriesResult:
    return SeriesResult({"id": series, "status": status, "error": message})
