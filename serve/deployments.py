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
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from ray import serve

from eyenet import metrics as m
from eyenet import registry as reg
from eyenet import service
from eyenet.errors import EyenetError, InvalidInputError, UnknownNameError
from eyenet.serve.config import AppConfig


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


@app.middleware("http")
async def _limit_and_measure(request: Request, call_next: Any) -> Any:
    """Refuse oversized bodies before parsing them (413 naming the limit); time every request."""
    limit = service.LIMITS.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        m.ERRORS.labels("bad_input").inc()
        return JSONResponse({"error": f"body: {int(length)} bytes, at most {limit}"}, status_code=413)
    t0 = time.perf_counter()
    response = await call_next(request)
    if request.url.path.startswith("/v1/"):
        m.REQUEST_LATENCY.labels(request.url.path).observe(1000 * (time.perf_counter() - t0))
    return response


@app.exception_handler(RequestValidationError)
async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    m.ERRORS.labels("bad_input").inc()
    return JSONResponse({"error": service.validation_message(exc.errors())}, status_code=422)


@app.exception_handler(EyenetError)
async def _eyenet_error(request: Request, exc: EyenetError) -> JSONResponse:
    status = exc.http_status if exc.http_status < 500 else 503
    m.ERRORS.labels("unknown_name" if isinstance(exc, UnknownNameError) else
                    "bad_input" if status < 500 else "internal").inc()
    return JSONResponse({"error": str(exc)}, status_code=status)


@serve.ingress(app)
class Router:
    """The HTTP API and the ensemble: fans out to the member families, combines, keeps stream state."""

    def __init__(self, config: dict[str, Any], scorers: dict[str, Any], gpu_families: list[str] | None = None) -> None:
        import torch

        torch.set_num_threads(1)
        self.config = AppConfig(**config)
        self.scorers = scorers
        self.remote_only = set(gpu_families or ())  # their replicas hold a GPU; the router does not
        self.registry = reg.Registry(self.config.mlflow_uri)
        self._aliases: dict[str, tuple[float, int]] = {}
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._streams: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        from eyenet.serve.state import get_store

        self.store = get_store(self.config.state_dir or str(reg.home() / "state"))

    # -- models ----------------------------------------------------------------------------------
    async def _resolve(self, name: str) -> int:
        now = time.monotonic()
        hit = self._aliases.get(name)
        if hit and now - hit[0] < self.config.alias_ttl_s:
            return hit[1]
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, lambda: self.registry.version(name, alias=self.config.alias))
        self._aliases[name] = (now, info.version)
        return info.version

    async def _model(self, tenant: str, group: str) -> tuple[str, int, Any]:
        name = reg.model_name("ensemble", group=group, tenant=tenant)
        version = await self._resolve(name)
        key = _model_id(name, version)
        if key in self._models:
            self._models.move_to_end(key)
            return name, version, self._models[key]
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, lambda: self.registry.load(name, version=version))
        # load the version into the member deployments before it answers requests
        warm = [self.scorers[f].options(multiplexed_model_id=key).warm.remote()
                for f in set(model.member_families) if f in self.scorers]
        await asyncio.gather(*(asyncio.wait_for(w, timeout=120) for w in warm), return_exceptions=True)
        self._models[key] = model
        while len(self._models) > MODELS_PER_ROUTER:
            self._models.popitem(last=False)
        return name, version, model

    def _inline(self, family: str, n_points: int) -> bool:
        return family in self.scorers and family not in self.remote_only and n_points <= self.config.inline_max_points

    async def _members_raw(self, key: str, model: Any, ctx: np.ndarray, n_new: int,
                           n_points: int) -> tuple[np.ndarray, list[str]]:
        """Every member's raw scores for the new points (members that fail or time out are NaN):
        in this replica for small requests on CPU members, else from the family deployments in parallel."""
        families = model.member_families
        out = np.full((n_new, len(families)), np.nan)
        missing: list[str] = []
        members = model._members()
        calls = []
        for j, (fam, inputs) in enumerate(zip(families, model.member_inputs(ctx, n_new))):
            if fam not in self.scorers:
                missing.append(fam)
            elif self._inline(fam, n_points):
                t0 = time.perf_counter()
                try:
                    out[:, j] = members[j].score(inputs)[len(inputs) - n_new :]
                    m.DETECTOR_LATENCY.labels(fam).observe(1000 * (time.perf_counter() - t0))
                except Exception:  # noqa: BLE001 - a member's fault degrades, never fails, the answer
                    missing.append(fam)
                    m.ERRORS.labels("member_failed").inc()
            else:
                calls.append((j, self.scorers[fam].options(multiplexed_model_id=key).raw.remote(j, inputs, n_new)))

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

        if calls:
            await asyncio.gather(*(one(j, c) for j, c in calls))
        return out, missing

    async def _score(self, tenant: str, group: str, x: np.ndarray, state: Any | None,
                     n_points: int) -> tuple[dict[str, Any], Any]:
        name, version, model = await self._model(tenant, group)
        key = _model_id(name, version)
        st = model.adopt(state if state is not None else model.new_state(), key)
        ctx = model.context(x, st)
        member_raw, missing = await self._members_raw(key, model, ctx, len(x), n_points)
        families = model.member_families
        if len(missing) == len(families):
            raise EyenetError(f"{name} v{version}: no member answered")
        idx = tuple(families.index(f) for f in missing)
        scores, new_state = model.finish_stream(member_raw, x, st, missing=idx)
        per_member = model.member_calibrated(member_raw)
        m.POINTS.labels(name).inc(len(x))
        m.ANOMALIES.labels(name).inc(int(scores.alarm.sum()))
        if missing:
            m.DEGRADED.labels(name).inc()
        for f in families:
            m.MODEL_VERSION.labels(name, f).set(version)
        return service.result_body(name, version, families, missing, scores, per_member), new_state

    # -- HTTP ------------------------------------------------------------------------------------
    @app.post("/v1/detect")
    async def detect(self, req: service.DetectRequest) -> dict[str, Any]:
        """Score windows of one or many series, each from a fresh stream (no stored state)."""
        data = service.check_series(req.series)
        total = sum(len(s.values) for s in data)
        results = await asyncio.gather(*(self._score(req.tenant, req.group, s.values, None, total) for s in data))
        return {"results": [{"id": s.id, **body} for s, (body, _) in zip(data, results)]}

    @app.post("/v1/stream")
    async def stream(self, req: service.StreamRequest) -> dict[str, Any]:
        """Append points to a series; its history is kept by the server between calls.

        The replica scores from its cached copy of the series' state and commits the result to the
        store in one call; when another replica moved the series on meanwhile, the store answers
        with its newer state and the points are scored again from that.
        """
        (s,) = service.check_series([service.SeriesIn(id=req.id, values=req.values, timestamps=req.timestamps)],
                                    field="body")
        key = f"{req.tenant}/{req.group}/{req.id}"
        if req.reset:
            version, state = await self.store.delete.remote(key), None
        else:
            version, state = self._streams.get(key, (0, None))
        for _ in range(3):
            body, new_state = await self._score(req.tenant, req.group, s.values, state, len(s.values))
            ok, now, stored = await self.store.commit.remote(key, version, new_state)
            if ok:
                self._streams[key] = (now, new_state)
                if len(self._streams) > STREAMS_PER_ROUTER:
                    self._streams.popitem(last=False)
                return {"id": req.id, "seen": new_state.seen, **body}
            version, state = now, stored
        raise InvalidInputError(f"series {req.id!r} is being updated concurrently; send its points in order")

    @app.post("/v1/forecast")
    async def forecast(self, req: service.ForecastRequest) -> dict[str, Any]:
        data = service.check_series(req.series)
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
        from eyenet import detectors

        return {"deployed": sorted(self.scorers),
                "families": {f: detectors.get_class(f)().get_params() for f in detectors.available()}}

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        versions = await loop.run_in_executor(None, self.registry.versions)
        return {"models": [v.to_dict() for v in versions]}

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        import ray

        return {"status": "ok", "families": sorted(self.scorers), "streams": await self.store.count.remote(),
                "replica": ray.get_runtime_context().get_actor_name()}

    @app.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(m.exposition().decode(), media_type="text/plain; version=0.0.4")
