"""The Serve deployments: one stateless scorer per detector family, and the router (FastAPI ingress).

A request flows: proxy -> ``Router`` (validates, resolves the ``champion``
version of ``<tenant>.<group>.ensemble``) -> the members' raw scores -> ``Router``
combines them with the ensemble's calibration, ranks and alarm policy
(``AnomalyModel.finish_stream``, the code ``eyenet score`` runs) and, for a
stream, commits the series' new state to the stream store.

Where members run: a request of at most ``inline_max_points`` points is scored
by the router itself for every member whose family runs on CPU, because one
hop to another replica costs several milliseconds here while such a member
scores a window in well under one. Larger requests, and members whose family
deployment holds a GPU, go to the family deployments in parallel (multiplexed
by model version, dynamically batched, autoscaled on their own).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from ray import serve

from eyenet.monitoring import feedback as fbk
from eyenet.monitoring import metrics as m
from eyenet.lifecycle import registry as reg
from eyenet.serving import schemas
from eyenet.serving.controller import settings_from
from eyenet.core.errors import EyenetError, InvalidInputError, NotServableError, UnknownNameError
from eyenet.serving.follower import Follower, unwrap
from eyenet.serving.settings import AppConfig
from eyenet.monitoring.monitor import Outbox
from eyenet.serve.actors import get_controller
from eyenet.serve.actors import get_monitor

log = logging.getLogger(__name__)


#: models (versions, tenants, series groups) a family replica keeps loaded; the least recently
#: used is unloaded beyond this
MODELS_PER_REPLICA = 8
#: ensemble models a router replica keeps loaded (least recently used dropped beyond this)
MODELS_PER_ROUTER = 32
#: series states a router replica caches between calls (the store stays the authority)
STREAMS_PER_ROUTER = 50_000


def _model_id(name: str, version: int) -> str:
    return f"{name}/{version}"


def _parse_model_id(model_id: str) -> tuple[str, int]:
    name, _, version = model_id.rpartition("/")
    return name, int(version)


class FamilyScorer:
    """Raw scores of one family's detectors, for any registered model holding such a detector."""

    def __init__(self, family: str, mlflow_uri: str | None, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        import torch

        torch.set_num_threads(1)  # tiny networks: one thread is fastest and steadiest
        self.family = family
        self.registry = reg.Registry(mlflow_uri)
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> Any:
        name, version = _parse_model_id(model_id)
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.registry.load(name, version=version))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def score_batch(self, requests: list[tuple[int, np.ndarray, int]]) -> list[np.ndarray]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        members = model._members()
        out = []
        for member, ctx, n_new in requests:
            det = members[member]
            if det.family != self.family:
                raise UnknownNameError(f"member {member} of this model is {det.family!r}, not {self.family!r}")
            out.append((det.score(ctx)[len(ctx) - n_new :], len(requests)))
        return out

    async def warm(self) -> str:
        """Load the request's model into this replica (the router calls it before first use)."""
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model.name

    async def raw(self, member: int, ctx: np.ndarray, n_new: int) -> np.ndarray:
        return await self.score_batch((member, ctx, n_new))

    async def forecast(self, ctx: np.ndarray) -> float:
        model = await self.get_model(serve.get_multiplexed_model_id())
        det = model._members()[0]
        if not hasattr(det, "forecast_next"):
            raise InvalidInputError(f"{self.family} is not a forecaster")
        return float(det.forecast_next(ctx))


app = FastAPI(
    title="EyeNet",
    description="Real-time anomaly scores for operational time series.",
    version="1",
)


class LimitAndMeasure:
    """Refuse oversized bodies before parsing them (413 naming the limit); time every API request
    (latency histogram, and a ``Server-Timing`` header with ``app``, the time spent in this replica).
    A pure ASGI middleware: Starlette's ``@app.middleware("http")`` costs ~1 ms a request here."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = schemas.LIMITS.max_body_bytes
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            m.ERRORS.labels("bad_input").inc()
            return await JSONResponse({"error": f"body: {int(length)} bytes, at most {limit}"},
                                      status_code=413)(scope, receive, send)
        path = scope["path"]
        root = scope.get("root_path", "")
        path = path[len(root):] if root and path.startswith(root) else path  # the app's own route
        if not path.startswith("/v1/"):
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                ms = 1000 * (time.perf_counter() - t0)
                m.REQUEST_LATENCY.labels(path).observe(ms)
                message["headers"] = [*message.get("headers", []), (b"server-timing", f"app;dur={ms:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, timed_send)


app.add_middleware(LimitAndMeasure)


@app.exception_handler(RequestValidationError)
async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    m.ERRORS.labels("bad_input").inc()
    return JSONResponse({"error": schemas.validation_message(exc.errors())}, status_code=422)


@app.exception_handler(EyenetError)
async def _eyenet_error(request: Request, exc: EyenetError) -> JSONResponse:
    status = exc.http_status if exc.http_status < 500 else 503
    m.ERRORS.labels("unknown_name" if isinstance(exc, UnknownNameError) else
                    "bad_input" if status < 500 else "internal").inc()
    return JSONResponse({"error": str(exc)}, status_code=status)


@serve.ingress(app)
class Router:
    """The HTTP API and the ensemble: fans out to the member families, combines, keeps stream state."""

    async def __init__(self, config: dict[str, Any], scorers: dict[str, Any],
                       gpu_families: list[str] | None = None) -> None:
        import torch

        torch.set_num_threads(1)
        self.config = AppConfig(**config)
        self.scorers = scorers
        self.remote_only = set(gpu_families or ())  # their replicas hold a GPU; the router does not
        self.registry = reg.Registry(self.config.mlflow_uri)
        self._aliases: dict[str, tuple[float, int]] = {}
        self._refreshing: dict[str, asyncio.Task] = {}
        self._locks: dict[str, list[Any]] = {}  # series -> [lock, requests holding or awaiting it]
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}
        self._streams: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._pool = ThreadPoolExecutor(self.config.score_threads, thread_name_prefix="eyenet-score")
        from eyenet.serve.actors import get_store

        self.store = get_store(self.config.state_dir or str(reg.home() / "state"))
        import ray

        self.replica_id = ray.get_runtime_context().get_actor_name() or ray.get_runtime_context().get_actor_id()
        self._controller_handle: Any = None
        self.follower = Follower(self._controller, self.replica_id, self._load)
        self._controller()  # created with the app (and its settings) by the first replica
        self.outbox = Outbox(self.config.monitor.recent_points)
        self._monitor_handle: Any = None
        self._pusher: asyncio.Task | None = None
        self._monitor()
        await self._warm_start()

    async def _warm_start(self) -> None:
        """Load the versions the app serves (and any announced next one) before taking traffic, so a
        new replica (scale-up, restart) answers its first requests without a model load and a
        switch in progress need not wait for it. Best effort: what fails here loads on first use."""
        loop = asyncio.get_running_loop()
        try:
            table = await asyncio.wait_for(self._controller().snapshot.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - controller starting or away
            log.info("warm start skipped: %s", unwrap(exc))
            return
        wanted = [(name, v) for name, raw in table.items() for v in (raw[1], raw[0]) if v is not None]
        for name, version in wanted[:MODELS_PER_ROUTER]:
            try:
                model = await loop.run_in_executor(None, lambda: self.registry.load(name, version=version))
            except Exception as exc:  # noqa: BLE001
                log.warning("warm start: %s version %s did not load: %s", name, version, exc)
                continue
            self._models[_model_id(name, version)] = model

    def _controller(self) -> Any:
        if self._controller_handle is None:
            self._controller_handle = get_controller(self.config.name, self.config.mlflow_uri,
                                                     settings_from(self.config))
        return self._controller_handle

    def _monitor(self) -> Any:
        if self._monitor_handle is None:
            self._monitor_handle = get_monitor(self.config.name, self.config.mlflow_uri,
                                               self.config.monitor.model_dump())
        return self._monitor_handle

    def _background(self) -> None:
        """Keep the controller follower and the monitor push running (started lazily: on a loop)."""
        self.follower.start()
        if self.config.monitor.enabled and (self._pusher is None or self._pusher.done()):
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())

    async def _push_loop(self) -> None:
        """Every ``monitor.push_s``: what this replica scored, and its metrics, to the app's monitor."""
        while True:
            await asyncio.sleep(self.config.monitor.push_s)
            batch = self.outbox.take()
            try:
                await asyncio.wait_for(self._monitor().push.remote(self.replica_id, batch, m.exposition().decode()),
                                       timeout=10)
            except Exception as exc:  # noqa: BLE001 - monitor away: these points are missing from drift windows
                m.ERRORS.labels("monitor").inc()
                log.debug("monitor push failed: %s", unwrap(exc))

    async def check_health(self) -> None:
        """Serve's periodic health check: also keeps the controller follower and monitor push running."""
        self._background()

    # -- models ----------------------------------------------------------------------------------
    async def _resolve(self, name: str) -> int:
        """The version of ``name`` that serves a request starting now: from the controller's serving
        table, which this replica follows (no registry call on the request path). A model the table
        does not hold yet is asked of the controller; if the controller cannot answer, of MLflow."""
        self._background()
        version = self.follower.version(name)
        if version is not None:
            return version
        try:
            entry = await asyncio.wait_for(self._controller().resolve.remote(name), timeout=120)
        except Exception as exc:  # noqa: BLE001
            cause = unwrap(exc)
            if isinstance(cause, EyenetError):
                raise cause from None
            m.ERRORS.labels("controller").inc()  # controller away: resolve it here meanwhile
            return await self._resolve_here(name)
        self.follower.merge(name, entry)
        return self.follower.version(name)

    async def _resolve_here(self, name: str) -> int:
        """The alias from MLflow, cached for ``alias_ttl_s`` and refreshed in the background."""
        hit = self._aliases.get(name)
        if hit is None:
            return await self._lookup(name)
        if time.monotonic() - hit[0] >= self.config.alias_ttl_s and name not in self._refreshing:
            self._refreshing[name] = asyncio.get_running_loop().create_task(self._refresh(name))
        return hit[1]

    async def _lookup(self, name: str) -> int:
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, lambda: self.registry.version(name, alias=self.config.alias))
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

    async def _model(self, tenant: str, group: str) -> tuple[str, int, Any]:
        name = reg.model_name("ensemble", group=group, tenant=tenant)
        version = await self._resolve(name)
        return name, version, await self._load(name, version)

    async def _load(self, name: str, version: int) -> Any:
        """The model of ``name`` version ``version``, loaded here and in the member deployments it
        fans out to (once: concurrent callers wait for the same load)."""
        key = _model_id(name, version)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.get_running_loop().create_task(self._load_now(name, version))
            pending.add_done_callback(lambda _t: self._loading.pop(key, None))
        return await asyncio.shield(pending)

    async def _load_now(self, name: str, version: int) -> Any:
        key = _model_id(name, version)
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, lambda: self.registry.load(name, version=version))
        try:
            info = await loop.run_in_executor(None, lambda: self.registry.version(name, version))
            m.set_model_created(name, info.created)
        except EyenetError:
            pass
        # load the version into the member deployments before it answers requests
        warm = [self.scorers[f].options(multiplexed_model_id=key).warm.remote()
                for f in set(model.member_families) if f in self.scorers]
        await asyncio.gather(*(asyncio.wait_for(w, timeout=120) for w in warm), return_exceptions=True)
        self._models[key] = model
        while len(self._models) > MODELS_PER_ROUTER:
            self._models.popitem(last=False)
        return model

    def _inline(self, family: str, n_points: int) -> bool:
        return family in self.scorers and family not in self.remote_only and n_points <= self.config.inline_max_points

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
                done.append((j, None))
        return done

    async def _members_raw(self, key: str, model: Any, ctx: np.ndarray, n_new: int,
                           n_points: int) -> tuple[np.ndarray, list[str]]:
        """Every member's raw scores for the new points (members that fail or time out are NaN):
        in this replica for small requests on CPU members, else from the family deployments in parallel."""
        families = model.member_families
        out = np.full((n_new, len(families)), np.nan)
        missing: list[str] = []
        inline, calls = [], []
        for j, (fam, inputs) in enumerate(zip(families, model.member_inputs(ctx, n_new))):
            if fam not in self.scorers:
                missing.append(fam)
            elif self._inline(fam, n_points):
                inline.append((j, inputs))
            else:
                calls.append((j, self.scorers[fam].options(multiplexed_model_id=key).raw.remote(j, inputs, n_new)))

        async def here() -> None:
            for j, ms in await self._off_loop(n_points, self._score_inline, model._members(), inline, n_new, out):
                if ms is None:
                    missing.append(families[j])
                    m.ERRORS.labels("member_failed").inc()
                else:
                    m.DETECTOR_LATENCY.labels(families[j]).observe(ms)

        async def one(j: int, call: Any) -> None:
            t0 = time.perf_counter()
            try:
                raw, batch = await asyncio.wait_for(call, timeout=self.config.member_timeout_s)
                out[:, j] = raw
                m.DETECTOR_LATENCY.labels(families[j]).observe(1000 * (time.perf_counter() - t0))
                m.BATCH_SIZE.labels(families[j]).observe(batch)
            except Exception:  # noqa: BLE001 - a member's fault or timeout degrades, never fails, the answer
                missing.append(families[j])
                m.ERRORS.labels("member_failed").inc()

        await asyncio.gather(*([here()] if inline else []), *(one(j, c) for j, c in calls))
        return out, missing

    @staticmethod
    def _finish(name: str, version: int, model: Any, member_raw: np.ndarray, x: np.ndarray, st: Any,
                missing: list[str]) -> tuple[dict[str, Any], Any, int, Any]:
        families = model.member_families
        idx = tuple(families.index(f) for f in missing)
        scores, new_state = model.finish_stream(member_raw, x, st, missing=idx)
        body = schemas.result_body(name, version, families, missing, scores, model.member_calibrated(member_raw))
        return body, new_state, int(scores.alarm.sum()), scores

    async def _score(self, tenant: str, group: str, x: np.ndarray, state: Any | None,
                     n_points: int, series: str | None = None) -> tuple[dict[str, Any], Any]:
        name, version, model = await self._model(tenant, group)
        key = _model_id(name, version)
        st = model.adopt(state if state is not None else model.new_state(), key)
        ctx = model.context(x, st)
        member_raw, missing = await self._members_raw(key, model, ctx, len(x), n_points)
        families = model.member_families
        if len(missing) == len(families):
            raise EyenetError(f"{name} v{version}: no member answered")
        body, new_state, alarms, scores = await self._off_loop(n_points, self._finish, name, version, model,
                                                               member_raw, x, st, missing)
        if self.config.monitor.enabled:  # drift, alarm rate, retraining data (see eyenet.monitoring.monitor)
            self.outbox.add(name, version, x, scores, series)
        m.POINTS.labels(name).inc(len(x))
        m.ANOMALIES.labels(name).inc(alarms)
        if missing:
            m.DEGRADED.labels(name).inc()
        for f in families:
            m.MODEL_VERSION.labels(name, f).set(version)
        return body, new_state

    # -- HTTP ------------------------------------------------------------------------------------
    # The HTTP routes return JSONResponse: the bodies are JSON-ready already, and FastAPI's generic
    # encoder costs ~1 ms per 256 points. Handle callers (Ray jobs) call detect / stream for dicts.
    @app.post("/v1/detect")
    async def http_detect(self, req: schemas.DetectRequest) -> JSONResponse:
        """Score windows of one or many series, each from a fresh stream (no stored state)."""
        return JSONResponse(await self.detect(req))

    @app.post("/v1/stream")
    async def http_stream(self, req: schemas.StreamRequest) -> JSONResponse:
        """Append points to a series; its history is kept by the server between calls (send one
        point at a time if you like). An ``X-EyeNet-Series`` header naming the series lets the
        ingress send all of a series' points to the same router replica (faster, not required)."""
        body, timing = await self._stream_points(req)
        return JSONResponse(body, headers={"Server-Timing": timing})

    async def detect(self, req: schemas.DetectRequest) -> dict[str, Any]:
        data = schemas.check_series(req.series)
        total = sum(len(s.values) for s in data)
        results = await asyncio.gather(*(self._score(req.tenant, req.group, s.values, None, total) for s in data))
        return {"results": [{"id": s.id, **body} for s, (body, _) in zip(data, results)]}

    async def stream(self, req: schemas.StreamRequest) -> dict[str, Any]:
        return (await self._stream_points(req))[0]

    async def _stream_points(self, req: schemas.StreamRequest) -> tuple[dict[str, Any], str]:
        """The replica scores from its cached copy of the series' state and commits the result to
        the store in one call; when another replica moved the series on meanwhile, the store answers
        with its newer state and the points are scored again from that."""
        (s,) = schemas.check_series([schemas.SeriesIn(id=req.id, values=req.values, timestamps=req.timestamps)],
                                    field="body")
        key = f"{req.tenant}/{req.group}/{req.id}"
        # one request of a series at a time in this replica: points of a series are applied in order
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._stream(req, s.values, key)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(key, None)

    async def _stream(self, req: schemas.StreamRequest, values: np.ndarray, key: str) -> tuple[dict[str, Any], str]:
        if req.reset:
            version, state = await self.store.delete.remote(key), None
        else:
            version, state = self._streams.get(key, (0, None))
        for _ in range(3):
            t0 = time.perf_counter()
            body, new_state = await self._score(req.tenant, req.group, values, state, len(values), series=req.id)
            t1 = time.perf_counter()
            ok, now, stored = await self.store.commit.remote(key, version, new_state)
            if ok:
                self._streams[key] = (now, new_state)
                if len(self._streams) > STREAMS_PER_ROUTER:
                    self._streams.popitem(last=False)
                # where the time went, for clients and load tests (the HTTP Server-Timing header)
                timing = f"score;dur={1000 * (t1 - t0):.2f}, state;dur={1000 * (time.perf_counter() - t1):.2f}"
                return {"id": req.id, "seen": new_state.seen, **body}, timing
            version, state = now, stored
        raise InvalidInputError(f"series {req.id!r} is being updated concurrently; send its points in order")

    @app.post("/v1/forecast")
    async def forecast(self, req: schemas.ForecastRequest) -> dict[str, Any]:
        data = schemas.check_series(req.series)
        if req.detector not in self.scorers:
            raise UnknownNameError(f"detector {req.detector!r} is not deployed (deployed: {sorted(self.scorers)})")
        name = reg.model_name(req.detector, group=req.group, tenant=req.tenant)
        version = await self._resolve(name)
        handle = self.scorers[req.detector].options(multiplexed_model_id=_model_id(name, version))
        values = await asyncio.gather(*(handle.forecast.remote(s.values) for s in data))
        return {"model": name, "version": version,
                "results": [{"id": s.id, "forecast": v} for s, v in zip(data, values)]}

    @app.get("/v1/detectors")
    async def detectors(self) -> dict[str, Any]:
        from eyenet.core import detectors

        return {"deployed": sorted(self.scorers),
                "families": {f: detectors.get_class(f)().get_params() for f in detectors.available()}}

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """Registered models, versions and aliases, and the version of each that this replica serves."""
        loop = asyncio.get_running_loop()
        versions = await loop.run_in_executor(None, self.registry.versions)
        try:
            monitoring = await asyncio.wait_for(self._monitor().report.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001
            monitoring = {"error": f"monitor unavailable ({type(unwrap(exc)).__name__})"}
        return {"models": [v.to_dict() for v in versions], "serving": self.follower.serving(),
                "monitoring": monitoring}

    async def _ask(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the controller; its errors keep their HTTP status, its absence is a 503."""
        try:
            return await getattr(self._controller(), method).remote(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            cause = unwrap(exc)
            if isinstance(cause, EyenetError):
                raise cause from None
            raise NotServableError(f"the model controller is not available ({type(cause).__name__}); "
                                   "serving goes on with the current versions, retry shortly") from None

    @app.get("/v1/models/{name}/history")
    async def model_history(self, name: str, limit: int | None = None) -> dict[str, Any]:
        """The audit log of a model: TRAIN, REGISTER, GATE-PASS, REJECT, PROMOTE, ROLLBACK and SERVE events."""
        reg.split_name(name)
        return {"name": name, "events": await self._ask("history", name, limit)}

    @app.post("/v1/models/{name}/rollback")
    async def model_rollback(self, name: str, req: schemas.RollbackRequest) -> dict[str, Any]:
        """Return the champion to the previous good version (or ``to``); answers once it serves."""
        reg.split_name(name)
        return await self._ask("rollback", name, to_version=req.to, reason=req.reason, actor=req.actor)

    @app.post("/v1/models/{name}/promote")
    async def model_promote(self, name: str, req: schemas.PromoteRequest) -> dict[str, Any]:
        """Make a version (default: the challenger) champion through the gate, or past it with ``force``."""
        reg.split_name(name)
        return await self._ask("promote", name, req.version, force=req.force, reason=req.reason,
                               actor=req.actor)

    @app.post("/v1/models/{name}/review")
    async def model_review(self, name: str) -> dict[str, Any]:
        """Gate the challenger against the champion now: promote it or archive it with the reason."""
        reg.split_name(name)
        return await self._ask("review", name, actor="http")

    @app.get("/v1/controller")
    async def controller_status(self) -> dict[str, Any]:
        """The controller's serving table, registry health, replicas, recent switches and reviews."""
        return await self._ask("status")

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """``ok``, or ``degraded`` (still serving) when the controller or the registry is unreachable."""
        self._background()
        ctl = self.follower.status()
        registry_ok = (ctl["registry"] or {}).get("ok", True)
        try:
            streams = await asyncio.wait_for(self.store.count.remote(), timeout=2)
        except Exception:  # noqa: BLE001
            streams = None
        problems = []
        if not ctl["connected"]:
            problems.append(f"model controller unreachable ({ctl['error'] or 'not contacted yet'})")
        if not registry_ok:
            problems.append(f"model registry unreachable: {(ctl['registry'] or {}).get('error')}")
        if streams is None:
            problems.append("stream store unreachable")
        return {"status": "degraded" if problems else "ok", "problems": problems, "families": sorted(self.scorers),
                "streams": streams, "replica": self.replica_id, "serving": self.follower.serving(),
                "controller": ctl}

    @app.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        """Prometheus text: every router replica's series (label ``replica``) and the app-wide drift and
        feedback gauges, from the app's monitor; this replica's alone if the monitor is away."""
        own = m.exposition().decode()
        try:
            text = await asyncio.wait_for(self._monitor().metrics.remote(self.replica_id, own), timeout=5)
        except Exception as exc:  # noqa: BLE001
            m.ERRORS.labels("monitor").inc()
            log.warning("/metrics from this replica only: monitor unavailable (%s)", unwrap(exc))
            text = own
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/v1/feedback")
    async def feedback(self, req: fbk.FeedbackRequest) -> dict[str, Any]:
        """An operator's verdict on points a model scored (true anomaly, false alarm, missed anomaly);
        EyeNet tracks precision, false-positive rate and alarm rate per model from it."""
        fb = fbk.check_feedback(req)
        if fb.model not in self.follower.table:  # unknown model: 404 naming it
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: self.registry.version(fb.model, alias=self.config.alias))
        try:
            counts = await asyncio.wait_for(self._monitor().record_feedback.remote(fb), timeout=30)
        except Exception as exc:  # noqa: BLE001
            cause = unwrap(exc)
            if isinstance(cause, EyenetError):
                raise cause from None
            raise NotServableError("the monitor is not available; feedback was not recorded, retry shortly") from None
        m.count_feedback(fb)
        return {"recorded": fb.to_dict(), "model": fb.model, **counts}
