"""The request path of the service, without Ray: request -> served version -> member scores ->
combination -> response body; and the stream path (per-series lock, cached state, commit with a
version, retry on conflict).

A ``POST /v1/stream`` request, from the HTTP handler in ``eyenet.serve.deployments``:

1. :meth:`Pipeline.stream` validates the points, takes the series' lock (one request of a
   series at a time in this process) and starts from its cached ``(version, state)``;
2. :meth:`Pipeline.score` resolves the version that serves the model (``resolve``), loads it
   (:class:`ModelCache`), and gets every member's raw scores (:meth:`Pipeline._members_raw`):
   in this process (``AnomalyModel.member_inputs`` then each member detector's ``score``) for
   small requests, else from the remote members (Serve: the family deployments), in parallel;
3. ``AnomalyModel.finish_stream`` (:mod:`eyenet.core.model`) calibrates, ranks, combines and
   decides alarms (without the members that failed: the answer is ``degraded``), and
   :func:`eyenet.serving.schemas.result_body` makes the JSON;
4. the new state is committed to the stream store with the version it was computed from; when
   another process moved the series on meanwhile, the store answers with its newer state and
   the points are scored again from that (at most :data:`COMMIT_ATTEMPTS` times).

``/v1/detect`` is steps 2-3 for each series from a fresh state. Collaborators come in through
the constructor, so the same code runs under Serve (the controller's serving table, the
family deployment handles, the store actor) and in-process in tests (a registry alias lookup,
no remote members, a :class:`~eyenet.serving.streams.StreamStore`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from eyenet.core.errors import EyenetError, InvalidInputError, NotServableError, QuotaExceededError
from eyenet.lifecycle import registry as reg
from eyenet.monitoring import metrics as m
from eyenet.monitoring.monitor import Outbox
from eyenet.serving import schemas
from eyenet.serving.quota import RateLimits
from eyenet.serving.settings import AppConfig
from eyenet.serving.streams import Refusal, state_bytes

log = logging.getLogger(__name__)

#: ensemble models a process keeps loaded (least recently used dropped beyond this; ``AppConfig.models_cached``)
MODELS_PER_ROUTER = 32
#: series states a process caches between calls (the store stays the authority; ``AppConfig.streams_cached``)
STREAMS_PER_ROUTER = 50_000
#: scorings of one stream request before a series that keeps moving on elsewhere is refused
COMMIT_ATTEMPTS = 3

#: the version of a model that serves a request starting now
Resolve = Callable[[str], Awaitable[int]]


def model_id(name: str, version: int) -> str:
    """The key of a model version: in the caches, and the multiplexed model id of the family deployments."""
    return f"{name}/{version}"


def parse_model_id(key: str) -> tuple[str, int]:
    name, _, version = key.rpartition("/")
    return name, int(version)


class StreamStoreLike(Protocol):
    """The stream states' authority (see :class:`eyenet.serving.streams.StreamStore`)."""

    async def get(self, key: str) -> tuple[int, Any]: ...
    async def commit(self, key: str, version: int, state: Any) -> tuple[bool, int, Any]: ...
    async def delete(self, key: str) -> int: ...
    async def count(self) -> int: ...


class RemoteMembers(Protocol):
    """Members scored outside this process (Serve: one deployment per detector family)."""

    def deployed(self, family: str) -> bool:
        """Whether anything answers for ``family`` (a member no one answers for is left out: degraded)."""

    def local(self, family: str) -> bool:
        """Whether this process may score ``family`` itself (False: e.g. its deployment holds a GPU)."""

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
        model = await loop.run_in_executor(None, lambda: self.registry.load(name, version=version))
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
                model = await loop.run_in_executor(None, lambda: self.registry.load(name, version=version))
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

    Bounds: per-tenant request and point rates (:class:`~eyenet.serving.quota.RateLimits`, per
    replica), the cached stream states (``streams_cached`` states and ``streams_cached_bytes``,
    least recently used dropped and counted); a tenant the store refused a new series
    (429) is refused new series here without scoring until its ``Retry-After`` has passed.
    """

    def __init__(self, resolve: Resolve, models: ModelCache, store: StreamStoreLike, *,
                 members: RemoteMembers | None = None, outbox: Outbox | None = None,
                 config: AppConfig | None = None, streams_cached: int | None = None) -> None:
        self.resolve = resolve
        self.models = models
        self.store = store
        self.members = members
        self.outbox = outbox
        self.config = config or AppConfig()
        self.streams_cached = self.config.streams_cached if streams_cached is None else streams_cached
        self.streams_cached_bytes = self.config.streams_cached_bytes
        self.rates = RateLimits(self.config.quota)
        self._locks: dict[str, list[Any]] = {}  # series -> [lock, requests holding or awaiting it]
        self._streams: OrderedDict[str, tuple[int, Any]] = OrderedDict()  # series -> (version, state)
        self._streams_bytes = 0
        self._full: dict[str, tuple[float, Refusal]] = {}  # tenant -> (refuse new series until, why)
        self._pool = ThreadPoolExecutor(self.config.score_threads, thread_name_prefix="eyenet-score")

    def close(self) -> None:
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
        results = await asyncio.gather(*(self.score(name, version, model, s.values, None, total, report=report,
                                                    scored=s.id, timestamps=s.timestamps)
                                         for s in data))
        return {"results": [{"id": s.id, **body} for s, (body, _) in zip(data, results)]}

    async def stream(self, req: schemas.StreamRequest) -> tuple[dict[str, Any], str]:
        """Append points to a series; returns the body and a ``Server-Timing`` value (``score``: the
        scoring, ``state``: the commit). Scores from this process's cached copy of the series'
        state and commits the result to the store in one call; when another process moved the
        series on meanwhile, the store answers with its newer state and the points are scored again."""
        (s,) = schemas.check_series([schemas.SeriesIn(id=req.id, values=req.values, timestamps=req.timestamps)],
                                    field="body")
        self.rates.check(req.tenant or schemas.DEFAULT_TENANT, len(s.values))
        key = f"{req.tenant or schemas.DEFAULT_TENANT}/{req.group}/{req.id}"
        # one request of a series at a time in this process: points of a series are applied in order
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._stream(req, s.values, key, s.timestamps)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(key, None)

    async def _stream(self, req: schemas.StreamRequest, values: np.ndarray, key: str,
                      timestamps: np.ndarray | None = None) -> tuple[dict[str, Any], str]:
        tenant = req.tenant or schemas.DEFAULT_TENANT
        if req.reset:
            version, state = await self.store.delete(key), None
        else:
            version, state = self._streams.get(key, (0, None))
            if state is None:
                await self._refuse_if_full(tenant, key)
        for _ in range(COMMIT_ATTEMPTS):
            t0 = time.perf_counter()
            name, version_m, model = await self.model(tenant, req.group)
            scored: list[tuple[Any, ...]] = []  # for the outbox once committed (refused points were not served)
            body, new_state = await self.score(name, version_m, model, values, state, len(values), series=req.id,
                                               timestamps=timestamps, later=scored)
            t1 = time.perf_counter()
            ok, now, stored = await self.store.commit(key, version, new_state)
            if isinstance(stored, Refusal):  # a new series over the tenant's quota, or the store full: 429
                self._full[tenant] = (time.monotonic() + stored.retry_after_s, stored)
                if len(self._full) > self.config.quota.max_tenants:
                    self._full = {t: v for t, v in self._full.items() if v[0] > time.monotonic()}
                raise QuotaExceededError(stored.reason, retry_after_s=stored.retry_after_s)
            if ok:
                self._cache(key, now, new_state)
                if self.outbox is not None:
                    for args, kwargs in scored:
                        self.outbox.add(*args, **kwargs)
                # where the time went, for clients and load tests (the HTTP Server-Timing header)
                timing = f"score;dur={1000 * (t1 - t0):.2f}, state;dur={1000 * (time.perf_counter() - t1):.2f}"
                return {"id": req.id, "seen": new_state.seen, **body}, timing
            version, state = now, stored
        raise InvalidInputError(f"series {req.id!r} is being updated concurrently; send its points in order")

    async def _refuse_if_full(self, tenant: str, key: str) -> None:
        """Refuse a series new to this process without scoring it while the store refuses ``tenant``
        new series (until the refusal's Retry-After), unless the store holds the series already."""
        hit = self._full.get(tenant)
        if hit is None:
            return
        until, refusal = hit
        if time.monotonic() >= until:
            del self._full[tenant]
            return
        if (await self.store.get(key))[1] is None:
            raise QuotaExceededError(refusal.reason, retry_after_s=max(1.0, until - time.monotonic()))

    def _cache(self, key: str, version: int, state: Any) -> None:
        """Keep a series' state for its next request; least recently used dropped (and counted) beyond
        ``streams_cached`` states or ``streams_cached_bytes``."""
        old = self._streams.pop(key, None)
        if old is not None:
            self._streams_bytes -= state_bytes(key, old[1])
        self._streams[key] = (version, state)
        self._streams_bytes += state_bytes(key, state)
        while len(self._streams) > 1 and (len(self._streams) > self.streams_cached
                                          or self._streams_bytes > self.streams_cached_bytes):
            k, (_, s) = self._streams.popitem(last=False)
            self._streams_bytes -= state_bytes(k, s)
            m.EVICTIONS.labels("router_streams").inc()

    def stats(self) -> dict[str, Any]:
        """Sizes of this replica's bounded structures (``/healthz``)."""
        return {"streams_cached": len(self._streams), "max_streams_cached": self.streams_cached,
                "streams_cached_bytes": self._streams_bytes, "max_streams_cached_bytes": self.streams_cached_bytes,
                "models_cached": len(self.models), "max_models_cached": self.models.capacity,
                "rate_limits": self.rates.stats()}

    # -- the model -------------------------------------------------------------------------------
    async def model(self, tenant: str, group: str) -> tuple[str, int, Any]:
        """The served ensemble of ``tenant``/``group``: its name, the version serving now, the model."""
        name = reg.model_name("ensemble", group=group, tenant=tenant)
        version = await self.resolve(name)
        return name, version, await self.models.get(name, version)

    async def score(self, name: str, version: int, model: Any, x: np.ndarray, state: Any | None, n_points: int,
                    series: str | None = None, report: set[str] | None = None, *, scored: str | None = None,
                    timestamps: np.ndarray | None = None,
                    later: list[tuple[Any, ...]] | None = None) -> tuple[dict[str, Any], Any]:
        """The response body of new points ``x`` of a series in ``state`` (None: a fresh one) and its
        new state. ``n_points``: the points of the whole request (where the members run). What was
        scored goes to the outbox (``series``: a live series' values; ``scored``: the series named
        for feedback otherwise; ``timestamps``: the points'), or into ``later`` to add once the
        state is committed."""
        key = model_id(name, version)
        st = model.adopt(state if state is not None else model.new_state(), key)
        first = st.seen
        ctx = model.context(x, st)
        member_raw, missing = await self._members_raw(key, model, ctx, len(x), n_points)
        families = model.member_families
        if len(missing) == len(families):
            raise NotServableError(f"{name} v{version}: no member answered (members: {families})")
        body, new_state, alarms, scores = await self._off_loop(n_points, self._finish, name, version, model,
                                                               member_raw, x, st, missing, report)
        if self.outbox is not None:  # drift, alarm rate, retraining data, feedback (see eyenet.monitoring.monitor)
            entry = ((name, version, x, scores, series), {"first": first, "timestamps": timestamps, "scored": scored})
            if later is not None:
                later.append(entry)
            else:
                self.outbox.add(*entry[0], **entry[1])
        m.POINTS.labels(name).inc(len(x))
        m.ANOMALIES.labels(name).inc(alarms)
        if missing:
            m.DEGRADED.labels(name).inc()
        for f in families:
            m.MODEL_VERSION.labels(name, f).set(version)
        return body, new_state

    # -- members ---------------------------------------------------------------------------------
    def _inline(self, family: str, n_points: int) -> bool:
        if self.members is None:
            return True
        return self.members.local(family) and n_points <= self.config.inline_max_points

    async def _off_loop(self, n_points: int, fn: Any, *args: Any) -> Any:
        """Run ``fn`` here for small requests; on the scoring threads for big ones, so the event
        loop keeps taking requests and torch's kernels (which release the GIL) use every core."""
        if n_points < self.config.thread_min_points:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @staticmethod
    def _score_inline(members: list[Any], todo: list[tuple[int, np.ndarray]], n_new: int,
                      out: np.ndarray) -> list[tuple[int, float | None]]:
        """Raw scores of the members in ``todo`` into ``out``; per member its milliseconds (None: failed)."""
        done = []
        for j, inputs in todo:
            t0 = time.perf_counter()
            try:
                out[:, j] = members[j].score(inputs)[len(inputs) - n_new :]
                done.append((j, 1000 * (time.perf_counter() - t0)))
            except Exception:  # noqa: BLE001 - a member's fault degrades, never fails, the answer
                log.debug("member %s failed", j, exc_info=True)
                done.append((j, None))
        return done

    async def _members_raw(self, key: str, model: Any, ctx: np.ndarray, n_new: int,
                           n_points: int) -> tuple[np.ndarray, list[str]]:
        """Every member's raw scores for the new points (members that fail or time out are NaN and
        named in the list): in this process for small requests on CPU members, else from the remote
        members in parallel (all sent before the inline ones are scored)."""
        families = model.member_families
        out = np.full((n_new, len(families)), np.nan)
        missing: list[str] = []
        inline, calls = [], []
        for j, (fam, inputs) in enumerate(zip(families, model.member_inputs(ctx, n_new))):
            if self.members is not None and not self.members.deployed(fam):
                missing.append(fam)
            elif self._inline(fam, n_points):
                inline.append((j, inputs))
            else:
                calls.append((j, self.members.raw(fam, key, j, inputs, n_new)))

        async def here() -> None:
            for j, ms in await self._off_loop(n_points, self._score_inline, model.members, inline, n_new, out):
                if ms is None:
                    missing.append(families[j])
                    m.ERRORS.labels("member_failed").inc()
                else:
                    m.DETECTOR_LATENCY.labels(families[j]).observe(ms)

        async def there(j: int, call: Awaitable[tuple[np.ndarray, int]]) -> None:
            t0 = time.perf_counter()
            try:
                raw, batch = await asyncio.wait_for(call, timeout=self.config.member_timeout_s)
                out[:, j] = raw
                m.DETECTOR_LATENCY.labels(families[j]).observe(1000 * (time.perf_counter() - t0))
                m.BATCH_SIZE.labels(families[j]).observe(batch)
            except Exception as exc:  # noqa: BLE001 - a member's fault or timeout degrades, never fails, the answer
                log.debug("member %s (%s) failed: %r", j, families[j], exc)
                missing.append(families[j])
                m.ERRORS.labels("member_failed").inc()

        await asyncio.gather(*([here()] if inline else []), *(there(j, c) for j, c in calls))
        return out, missing

    @staticmethod
    def _finish(name: str, version: int, model: Any, member_raw: np.ndarray, x: np.ndarray, st: Any,
                missing: list[str], report: set[str] | None) -> tuple[dict[str, Any], Any, int, Any]:
        families = model.member_families
        idx = tuple(families.index(f) for f in missing)
        scores, new_state = model.finish_stream(member_raw, x, st, missing=idx)
        body = schemas.result_body(name, version, families, missing, scores, model.member_calibrated(member_raw),
                                   report)
        return body, new_state, int(scores.alarm.sum()), scores
