"""The Serve deployments: one stateless scorer per detector family, and the router (FastAPI ingress).

The router is wiring: the HTTP routes, the Ray handles (family deployments, stream
store, controller, monitor) and the background tasks. What a request computes is
:class:`eyenet.serving.pipeline.Pipeline` (no Ray): resolve the ``champion``
version of ``<tenant>.<group>.ensemble``, the members' raw scores, their
combination (``AnomalyModel.finish_stream``, the code ``eyenet score`` runs) and,
for a stream, the series' new state kept by the replica and written behind to the store. A
``/v1/stream`` request: :meth:`Router.http_stream` -> :meth:`Pipeline.stream
<eyenet.serving.pipeline.Pipeline.stream>` -> :mod:`eyenet.core.model`.

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
from collections.abc import Iterable
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
import ray
from ray import serve

from eyenet.core.errors import (
    AuthenticationError,
    EyenetError,
    InvalidInputError,
    LifecycleError,
    PayloadTooLargeError,
    PermissionDeniedError,
    UnavailableError,
    UnknownNameError,
)
from eyenet.lifecycle import jobs
from eyenet.lifecycle import registry as reg
from eyenet.monitoring import metrics as m
from eyenet.monitoring.feedback import LABELS
from eyenet.monitoring.monitor import Outbox
from eyenet.serve.actors import get_controller, get_monitor, get_store
from eyenet.serve.jobs import get_jobs
from eyenet.serving import http, schemas
from eyenet.serving.http import JSONResponse
from eyenet.serving.controller import settings_from
from eyenet.serving.follower import Follower, unwrap
from eyenet.serving.heap import settle_after_first_load, settle_heap
from eyenet.serving.pipeline import AliasResolver, ModelCache, Pipeline, Turns, model_id, parse_model_id
from eyenet.serving import auth, console, views
from eyenet.serving.auth import AUTH_OFF, Authenticator, AuthMiddleware, AuthSettings, Identity, KeyStore
from eyenet.serving.quota import Admission, InFlight
from eyenet.serving.settings import TORCH_FAMILIES, AppConfig
from eyenet.serving.ingest import RemoteWriteIngest
from eyenet.serving.snapshots import default_uri as default_state_uri
from eyenet.serving.writeback import ScoreWriter
from eyenet.serving.alerts import AlertSender

log = logging.getLogger(__name__)


#: models (versions, tenants, series groups) a family replica keeps loaded; the least recently
#: used is unloaded beyond this
MODELS_PER_REPLICA = 8
#: how long a replica reuses its listing of every registered version (GET /v1/models)
VERSIONS_TTL_S = 2.0


class FamilyScorer:
    """Raw scores of one family's detectors, for any registered model holding such a detector."""

    def __init__(self, family: str, mlflow_uri: str | None, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        if family in TORCH_FAMILIES:  # a z-score replica never imports torch
            import torch

            torch.set_num_threads(1)  # tiny networks: one thread is fastest and steadiest
        self.family = family
        self.registry = reg.Registry(mlflow_uri)
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        settle_heap()

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> Any:
        name, version = parse_model_id(model_id)
        model = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.registry.load(name, version=version).warm())
        settle_after_first_load()
        return model

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def score_batch(self, requests: list[tuple[int, np.ndarray, int]]) -> list[np.ndarray]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        members = model.members
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
        det = model.members[0]
        if not hasattr(det, "forecast_next"):
            raise InvalidInputError(f"{self.family} is not a forecaster")
        return float(det.forecast_next(ctx))


app = FastAPI(
    title="EyeNet",
    description="Real-time anomaly scores for operational time series.",
    version="1",
)


class _ReplicaAuth:
    """This replica's authenticator and per-tenant in-flight cap: the Router sets them when it starts;
    until then every request that needs a credential is refused (no key store)."""

    authenticator = Authenticator(AuthSettings())
    inflight: InFlight | None = None


def _caller() -> Identity | None:
    try:
        return auth.current()
    except AuthenticationError:
        return None


# inside authentication: a tenant's requests in progress on this replica are capped (429 beyond)
app.add_middleware(Admission, limits=lambda: _ReplicaAuth.inflight, identity=_caller)
app.add_middleware(AuthMiddleware, authenticator=lambda: _ReplicaAuth.authenticator,
                   on_error=lambda kind: m.ERRORS.labels(kind).inc())
# the HTTP edge (eyenet.serving.http), outside the auth middleware: the body limit, latency by route
# template, and errors as {"error": ...} with Retry-After on 503 and 429
http.install(app)


async def _call(what: str, ref: Any, timeout_s: float, retry_after_s: float) -> Any:
    """Await an actor call for at most ``timeout_s``; an actor that is away or slower than that is a
    :class:`UnavailableError` (503 with ``Retry-After``), its own EyeNet errors keep their status."""
    try:
        return await asyncio.wait_for(ref, timeout=timeout_s)
    except asyncio.TimeoutError:
        m.ERRORS.labels("unavailable").inc()
        raise UnavailableError(f"{what} did not answer within {timeout_s:g} s; retry shortly",
                               retry_after_s=retry_after_s) from None
    except Exception as exc:  # noqa: BLE001 - RayActorError, ActorUnavailableError, ...
        cause = unwrap(exc)
        if isinstance(cause, EyenetError):
            raise cause from None
        m.ERRORS.labels("unavailable").inc()
        raise UnavailableError(f"{what} is not available ({type(cause).__name__}); retry shortly",
                               retry_after_s=retry_after_s) from None


class _StoreActor:
    """The stream store actor as the pipeline's store (:class:`eyenet.serving.leases.StoreLike`): states
    travel as :meth:`StreamState.to_bytes` (a thousand states pickled as objects cost the router more
    than scoring them); every call waits at most ``timeout_s`` (then 503 with ``Retry-After``)."""

    def __init__(self, actor: Any, timeout_s: float = 10.0, retry_after_s: float = 1.0) -> None:
        self.actor = actor
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s

    async def _do(self, ref: Any, timeout_s: float | None = None) -> Any:
        return await _call("the stream store", ref, timeout_s or self.timeout_s, self.retry_after_s)

    async def claim(self, owner: str, keys: list[str], lease_s: float, wait_s: float) -> list[tuple[int, Any]]:
        return await self._do(self.actor.claim.remote(owner, keys, lease_s, wait_s), self.timeout_s + wait_s)

    async def sync(self, owner: str, items: list[tuple[str, int, Any]], released: list[str],
                   lease_s: float) -> list[tuple[bool, int, Any]]:
        payload = []
        turns = Turns()
        for k, v, st in items:  # a thousand states take tens of ms: in turns
            payload.append((k, v, st.to_bytes()))
            await turns.take()
        return await self._do(self.actor.sync.remote(owner, payload, released, lease_s))

    async def wanted(self, owner: str, timeout_s: float) -> list[str]:
        return await self._do(self.actor.wanted.remote(owner, timeout_s), self.timeout_s + timeout_s)

    def heartbeat_blocking(self, owner: str, lease_s: float, timeout_s: float) -> None:
        """From the replica's heartbeat thread (not its event loop): raises what the call raised."""
        ray.get(self.actor.heartbeat.remote(owner, lease_s), timeout=timeout_s)

    async def delete(self, key: str, owner: str | None = None, lease_s: float | None = None) -> int:
        return await self._do(self.actor.delete.remote(key, owner, lease_s))

    async def health(self) -> dict[str, Any]:
        return await self._do(self.actor.health.remote())


class _FamilyDeployments:
    """The family deployments as the pipeline's remote members (multiplexed by model version).

    A family deployment may have scaled to zero (``family.autoscaling.min_replicas: 0``): a call
    would wait for a replica to start. So a family scored here too is called only while ``up`` (it
    answered within its idle timeout); otherwise the router scores it and ``wake`` starts the
    deployment for the next big request. A family only its deployment may score (it holds a GPU)
    is woken when a version that uses it is loaded, and waited for."""

    def __init__(self, scorers: dict[str, Any], gpu_families: Iterable[str], config: AppConfig) -> None:
        self.scorers = scorers
        self.remote_only = set(gpu_families)  # their replicas hold a GPU; the router does not
        self.config = config
        self._answered: dict[str, float] = {}  # family -> when its deployment last answered (monotonic)
        self._waking: dict[str, asyncio.Task] = {}

    def deployed(self, family: str) -> bool:
        return family in self.scorers

    def local(self, family: str) -> bool:
        return family not in self.remote_only

    def up(self, family: str) -> bool:
        last = self._answered.get(family)
        if last is None:
            return False
        a = self.config.settings(family).autoscaling
        if a.min_replicas > 0:
            return True
        idle_s = a.downscale_to_zero_delay_s or a.downscale_delay_s
        return time.monotonic() - last < 0.8 * idle_s  # well before the autoscaler may stop it

    async def raw(self, family: str, key: str, member: int, inputs: np.ndarray, n_new: int) -> Any:
        try:
            out = await self.scorers[family].options(multiplexed_model_id=key).raw.remote(member, inputs, n_new)
        except BaseException:  # a failed or timed-out call: score it here until the deployment answers again
            self._answered.pop(family, None)
            raise
        self._answered[family] = time.monotonic()
        return out

    async def _warm(self, family: str, key: str) -> None:
        await asyncio.wait_for(self.scorers[family].options(multiplexed_model_id=key).warm.remote(), timeout=120)
        self._answered[family] = time.monotonic()

    def wake(self, family: str, key: str) -> None:
        if family not in self.scorers or family in self._waking:
            return

        async def waking() -> None:
            try:
                await self._warm(family, key)
            except Exception as exc:  # noqa: BLE001 - the router goes on scoring it; the next big request retries
                log.warning("family %s did not start: %r", family, exc)
            finally:
                self._waking.pop(family, None)

        self._waking[family] = asyncio.get_running_loop().create_task(waking())

    async def warm(self, key: str, model: Any) -> None:
        """Load the version into the member deployments it will call before it answers requests: the
        families only a deployment may score, and every family when ``inline_max_points`` is 0."""
        every = self.config.inline_max_points == 0
        families = [f for f in set(model.member_families)
                    if f in self.scorers and (every or f in self.remote_only)]
        await asyncio.gather(*(self._warm(f, key) for f in families), return_exceptions=True)


#: what a console file may do in the browser: load from this origin only, no framing
CONSOLE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                   "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' "
                                              "'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"}


def _console_file(path: str) -> Response:
    found = console.asset(path)
    if found is None:
        raise UnknownNameError(f"{path!r}: no such file of the console")
    body, kind = found
    return Response(body, media_type=kind, headers=CONSOLE_HEADERS)


# module helpers above the class: a Serve replica sees only the names defined before the ingress class
@serve.ingress(app)
class Router:
    """The HTTP API: routes, Ray handles and background tasks around the :class:`Pipeline`."""

    async def __init__(self, config: dict[str, Any], scorers: dict[str, Any],
                       gpu_families: list[str] | None = None) -> None:
        import torch

        torch.set_num_threads(1)
        self.config = AppConfig(**config)
        self.scorers = scorers
        self.registry = reg.Registry(self.config.mlflow_uri)
        self.replica_id = ray.get_runtime_context().get_actor_name() or ray.get_runtime_context().get_actor_id()
        a = self.config.auth
        keys = KeyStore.for_settings(a, reg.home()) if a.enabled else None
        self.auth = _ReplicaAuth.authenticator = Authenticator(a, keys)
        _ReplicaAuth.inflight = InFlight(self.config.quota)
        members = _FamilyDeployments(scorers, gpu_families or (), self.config)

        async def prepare(key: str, model: Any) -> None:
            await members.warm(key, model)
            settle_after_first_load()

        self.models = ModelCache(self.registry, capacity=self.config.models_cached, prepare=prepare)
        self._here = AliasResolver(self.registry, self.config.alias, self.config.alias_ttl_s)
        self.outbox = Outbox(self.config.monitor.recent_points, view_points=self.config.monitor.history_points)
        store = _StoreActor(get_store(self.config.state_uri or default_state_uri(),
                                      self.config.store.model_dump(), self.config.quota.model_dump(),
                                      self.config.actor_resources),
                            self.config.timeouts.store_s, self.config.timeouts.retry_after_s)
        self.pipeline = Pipeline(self._resolve, self.models, store, members=members,
                                 outbox=self.outbox if self.config.monitor.enabled else None, config=self.config,
                                 owner=self.replica_id)
        self.writer = ScoreWriter(self.config.writeback) if self.config.writeback.url else None
        self.alerts = AlertSender(self.config.alerts) if self.config.alerts.receivers else None
        self._resender: asyncio.Task | None = None
        if self.alerts is not None:
            self.pipeline.alerts_out = self._alerts_out
        self.ingest = RemoteWriteIngest(self.config.remote_write, self.pipeline, self.writer)
        self._controller_handle: Any = None
        self.follower = Follower(self._controller, self.replica_id, self.models.get)
        self._controller()  # created with the app (and its settings) by the first replica
        self._monitor_handle: Any = None
        self._jobs_handle: Any = None
        self._versions_cached: tuple[float, asyncio.Future] | None = None
        self._pusher: asyncio.Task | None = None
        self._monitor()
        await self._warm_start()
        settle_heap(loaded=bool(len(self.models)))  # versions loaded before traffic: one settling covers them

    async def _warm_start(self) -> None:
        """Load the versions the app serves (and any announced next one) before taking traffic, so a
        new replica (scale-up, restart) answers its first requests without a model load and a
        switch in progress need not wait for it. Best effort: what fails here loads on first use."""
        try:
            table = await asyncio.wait_for(self._controller().snapshot.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - controller starting or away
            log.info("warm start skipped: %s", unwrap(exc))
            return
        await self.models.preload((name, v) for name, raw in table.items() for v in (raw[1], raw[0]) if v is not None)

    def _controller(self) -> Any:
        if self._controller_handle is None:
            self._controller_handle = get_controller(self.config.name, self.config.mlflow_uri,
                                                     settings_from(self.config), self.config.actor_resources)
        return self._controller_handle

    def _monitor(self) -> Any:
        if self._monitor_handle is None:
            self._monitor_handle = get_monitor(self.config.name, self.config.mlflow_uri,
                                               self.config.monitor.model_dump(), self.config.actor_resources)
        return self._monitor_handle

    async def __del__(self) -> None:
        """A graceful shutdown (scale-down, redeploy, ``eyenet down``): the held series' states go to
        the store first, so no acknowledged point is lost (a replica that failed to start has neither)."""
        pipeline, alerts = getattr(self, "pipeline", None), getattr(self, "alerts", None)
        if pipeline is not None:
            await pipeline.close()
        if alerts is not None:
            await alerts.close()

    def _background(self) -> None:
        """Keep the controller follower, the monitor push and the stream states' write-behind running
        (started lazily: on a loop)."""
        self.follower.start()
        self.pipeline.owned.start()
        if self.alerts is not None:
            self.alerts.start()
            if self._resender is None or self._resender.done():
                self._resender = asyncio.get_running_loop().create_task(self._resend_loop())
        if self.writer is not None:
            self.writer.start()
        if self.config.monitor.enabled and (self._pusher is None or self._pusher.done()):
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())

    async def _resend_loop(self) -> None:
        """Firing alerts are posted again every ``alerts.resend_s`` while their incidents last."""
        while True:
            await asyncio.sleep(min(10.0, self.config.alerts.resend_s / 4))
            self.alerts.send(self.pipeline.incidents.due())  # re-sends: not new transitions

    def _alerts_out(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Alerts to their receivers, and to the monitor's recent-alerts list (the console's)."""
        self.alerts.send(items)
        if self.config.monitor.enabled:
            self.outbox.alert(items)

    async def _push_loop(self) -> None:
        """Every ``monitor.push_s``: what this replica scored, and its metrics, to the app's monitor."""
        while True:
            await asyncio.sleep(self.config.monitor.push_s)
            raw, alerts = self.outbox.detach(), self.outbox.take_alerts()
            try:
                # built and serialised (into Ray's object store) on a thread: a second in which 10,000
                # new series were scored takes hundreds of ms to pickle, which on the event loop every
                # request would wait behind; on a thread the loop gets the interpreter every few ms
                batch, text = await asyncio.to_thread(
                    lambda: (ray.put(Outbox.build(raw)), m.exposition().decode()))
                await asyncio.wait_for(self._monitor().push.remote(self.replica_id, batch, text, alerts), timeout=10)
            except Exception as exc:  # noqa: BLE001 - monitor away: these points are missing from drift windows
                m.ERRORS.labels("monitor").inc()
                log.debug("monitor push failed: %s", unwrap(exc))

    async def check_health(self) -> None:
        """Serve's periodic health check: also keeps the controller follower and monitor push running."""
        self._background()

    async def _resolve(self, name: str) -> int:
        """The version of ``name`` that serves a request starting now: from the controller's serving
        table, which this replica follows (no registry call on the request path). A model the table
        does not hold yet is asked of the controller; if the controller cannot answer, of MLflow."""
        self._background()
        version = self.follower.version(name)
        if version is not None:
            return version
        try:
            entry = await asyncio.wait_for(self._controller().resolve.remote(name),
                                           timeout=self.config.timeouts.resolve_s)
        except Exception as exc:  # noqa: BLE001
            cause = unwrap(exc)
            if isinstance(cause, EyenetError):
                raise cause from None
            m.ERRORS.labels("controller").inc()  # controller away: resolve it here meanwhile
            return await self._here(name)
        self.follower.merge(name, entry)
        return self.follower.version(name)

    # -- HTTP ------------------------------------------------------------------------------------
    # The scoring routes return http.JSONResponse (orjson): the bodies are JSON-ready already, and
    # FastAPI's generic encoder costs ~1 ms per 256 points. Handle callers (Ray jobs) call detect / stream for dicts.
    @app.post("/v1/detect", responses=http.responses(401, 403, 404, 413, 422, 429, 503))
    async def http_detect(self, req: schemas.DetectRequest) -> JSONResponse:
        """Score windows of one or many series, each from a fresh stream (no stored state). ``detectors``
        names the members whose own scores each point reports (default: all)."""
        return JSONResponse(await self.pipeline.detect(self._scoped(req, auth.current())))

    @app.post("/v1/stream", responses=http.responses(401, 403, 404, 413, 422, 429, 503))
    async def http_stream(self, req: schemas.StreamRequest) -> JSONResponse:
        """Append points to a series; its history is kept by the server between calls (send one
        point at a time if you like). An ``X-EyeNet-Series`` header naming the series lets the
        ingress send all of a series' points to the same router replica (faster, not required)."""
        body, timing = await self.pipeline.stream(self._scoped(req, auth.current()))
        return JSONResponse(body, headers={"Server-Timing": timing})

    @app.post("/v1/stream/batch", responses=http.responses(401, 403, 404, 413, 422, 429, 503))
    async def http_stream_batch(self, req: schemas.StreamBatchRequest) -> JSONResponse:
        """New points of many series of one group at once (e.g. one point for each of 1,000 series),
        scored in one vectorised pass per member. Each result is that series' ``/v1/stream`` answer,
        or its ``error`` and ``status`` (429: the tenant is at its series quota) while the others go on;
        when every series is refused for a quota, the request is answered 429 with ``Retry-After``."""
        return JSONResponse(await self.pipeline.stream_many(self._scoped(req, auth.current())))

    @app.post("/api/v1/write", status_code=204, response_class=Response,
              responses={**http.responses(400, 401, 403, 404, 413, 429, 503), 204: {"description": "taken"}})
    async def remote_write(self, body: schemas.RemoteWriteBody = b"") -> Response:
        """Prometheus remote_write 1.0 in (snappy-compressed protobuf ``WriteRequest``): the series that
        ``remote_write.rules`` select are scored as stream points of the credential's tenant. 204 once
        taken; 400 for a malformed body (never worth a retry); 429 and 503 where a retry helps."""
        who = auth.current()
        try:
            await self.ingest.write(who.tenant, body)
        except PayloadTooLargeError:
            raise
        except InvalidInputError as exc:  # malformed: 400, which Prometheus does not retry
            return http.error_response(exc, status=400, kind="bad_input")
        return Response(status_code=204)

    # The Serve handle API (Ray jobs): the same checks as HTTP, with the caller's identity passed in.
    async def detect(self, req: schemas.DetectRequest, identity: Identity | None = None) -> dict[str, Any]:
        return await self.pipeline.detect(self._scoped(req, self._caller(identity, "writer")))

    async def stream(self, req: schemas.StreamRequest, identity: Identity | None = None) -> dict[str, Any]:
        return (await self.pipeline.stream(self._scoped(req, self._caller(identity, "writer"))))[0]

    async def stream_many(self, req: schemas.StreamBatchRequest, identity: Identity | None = None) -> dict[str, Any]:
        return await self.pipeline.stream_many(self._scoped(req, self._caller(identity, "writer")))

    def _caller(self, identity: Identity | None, role: str) -> Identity:
        """A handle caller's identity, checked like a credential's role (auth off: anyone is admin)."""
        if not self.auth.enabled:
            return identity or AUTH_OFF
        if not isinstance(identity, Identity):
            raise AuthenticationError("identity: the handle API needs identity=eyenet.serving.auth.Identity(name, "
                                      "tenant, role); a trusted Ray job passes its own")
        if not identity.allows(role):
            raise PermissionDeniedError(f"role: this call needs {role}; {identity.name} is {identity.role}")
        return identity

    @staticmethod
    def _scoped(req: Any, who: Identity) -> Any:
        """``req`` acting for the caller's tenant (another tenant only for an admin, else 403)."""
        return req.model_copy(update={"tenant": who.tenant_for(req.tenant)})

    @app.post("/v1/forecast", responses=http.responses(401, 403, 404, 413, 422, 429, 503))
    async def forecast(self, req: schemas.ForecastRequest) -> dict[str, Any]:
        req = self._scoped(req, auth.current())
        data = schemas.check_series(req.series, missing=False)
        if req.detector not in self.scorers:
            raise UnknownNameError(f"detector {req.detector!r} is not deployed (deployed: {sorted(self.scorers)})")
        name = reg.model_name(req.detector, group=req.group, tenant=req.tenant)
        version = await self._resolve(name)
        handle = self.scorers[req.detector].options(multiplexed_model_id=model_id(name, version))
        values = await asyncio.gather(*(handle.forecast.remote(s.values) for s in data))
        return {"model": name, "version": version,
                "results": [{"id": s.id, "forecast": v} for s, v in zip(data, values)]}

    @app.get("/v1/detectors", responses=http.responses(401, 403))
    async def detectors(self) -> dict[str, Any]:
        from eyenet.core import detectors

        return {"deployed": sorted(self.scorers),
                "families": {f: detectors.get_class(f)().get_params() for f in detectors.available()}}

    @app.get("/v1/models", responses=http.responses(401, 403, 503))
    async def models(self) -> dict[str, Any]:
        """Registered models, versions and aliases, and the version of each that this replica serves."""
        who = auth.current()
        versions = await self._versions()
        try:
            monitoring = await asyncio.wait_for(self._monitor().report.remote(), timeout=self.config.timeouts.monitor_s)
        except Exception as exc:  # noqa: BLE001
            monitoring = {"error": f"monitor unavailable ({type(unwrap(exc)).__name__})"}
        return {"models": [v.to_dict() for v in versions if views.visible(who, v.name)],
                "serving": {n: v for n, v in self.follower.serving().items() if views.visible(who, n)},
                "monitoring": {n: v for n, v in monitoring.items() if n == "error" or views.visible(who, n)}}

    async def _versions(self) -> list[Any]:
        """Every registered version, read at most once per :data:`VERSIONS_TTL_S` by this replica
        (callers meanwhile share the answer: open consoles poll it)."""
        now = time.monotonic()
        cached = self._versions_cached
        if cached is None or now - cached[0] >= VERSIONS_TTL_S:
            cached = self._versions_cached = (now, asyncio.get_running_loop().run_in_executor(None, self.registry.versions))
        try:
            return await asyncio.shield(cached[1])
        except Exception:
            if self._versions_cached is cached:
                self._versions_cached = None  # the next call asks the registry again
            raise

    async def _ask(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the controller; its errors keep their HTTP status, its absence or a call slower than
        ``timeouts.controller_s`` is a 503 with ``Retry-After``."""
        t = self.config.timeouts
        return await _call("the model controller (serving goes on with the current versions)",
                           getattr(self._controller(), method).remote(*args, **kwargs), t.controller_s, t.retry_after_s)

    @app.get("/v1/models/{name}/history", responses=http.responses(401, 403, 404, 422, 503))
    async def model_history(self, name: schemas.ModelName, limit: schemas.HistoryLimit = None) -> dict[str, Any]:
        """The audit log of a model: TRAIN, REGISTER, GATE-PASS, REJECT, PROMOTE, ROLLBACK and SERVE events."""
        reg.split_name(name)
        auth.current().check_model(name)
        return {"name": name, "events": await self._ask("history", name, limit)}

    @app.post("/v1/models/{name}/rollback", responses=http.responses(401, 403, 404, 409, 413, 422, 503))
    async def model_rollback(self, name: schemas.ModelName, req: schemas.RollbackRequest) -> dict[str, Any]:
        """Return the champion to the previous good version (or ``to``); answers once it serves."""
        reg.split_name(name)
        who = auth.current()
        who.check_model(name)
        return await self._ask("rollback", name, to_version=req.to, reason=req.reason, actor=who.name)

    @app.post("/v1/models/{name}/promote", responses=http.responses(401, 403, 404, 409, 413, 422, 503))
    async def model_promote(self, name: schemas.ModelName, req: schemas.PromoteRequest) -> dict[str, Any]:
        """Make a version (default: the challenger) champion through the gate, or past it with ``force``."""
        reg.split_name(name)
        who = auth.current()
        who.check_model(name)
        return await self._ask("promote", name, req.version, force=req.force, reason=req.reason, actor=who.name)

    @app.post("/v1/models/{name}/review", responses=http.responses(401, 403, 404, 409, 422, 503))
    async def model_review(self, name: schemas.ModelName) -> dict[str, Any]:
        """Gate the challenger against the champion now: promote it or archive it with the reason."""
        reg.split_name(name)
        who = auth.current()
        who.check_model(name)
        return await self._ask("review", name, actor=who.name)

    @app.get("/v1/controller", responses=http.responses(401, 403, 503))
    async def controller_status(self) -> dict[str, Any]:
        """The controller's serving table, registry health, replicas, recent switches and reviews (of the
        caller's tenant; an admin's: all)."""
        return views.controller_status(await self._ask("status"), auth.current())

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """``ok``, or ``degraded`` (still serving) when the controller or the registry is unreachable."""
        self._background()
        ctl = self.follower.status()
        registry_ok = (ctl["registry"] or {}).get("ok", True)
        async def monitor_health() -> Any:
            return await asyncio.wait_for(self._monitor().health.remote(), timeout=2)

        store, monitor = await asyncio.gather(  # sizes and counters of the bounded structures
            asyncio.wait_for(self.pipeline.store.health(), timeout=2), monitor_health(), return_exceptions=True)
        store = None if isinstance(store, BaseException) else store
        monitor = None if isinstance(monitor, BaseException) else monitor
        streams = None if store is None else store["series"]
        problems = []
        if not ctl["connected"]:
            problems.append(f"model controller unreachable ({ctl['error'] or 'not contacted yet'})")
        if not registry_ok:
            problems.append(f"model registry unreachable: {(ctl['registry'] or {}).get('error')}")
        if streams is None:
            problems.append("stream store unreachable")
        elif not store["ok"]:
            problems.append(f"stream store cannot write its snapshots ({store['failures']} attempts, "
                            f"{store['dirty']} series waiting): {store['error']}")
        held = self.pipeline.owned
        if held.error is not None:
            problems.append(f"stream states not written behind ({held.failures} attempts, {len(held.dirty)} series "
                            f"waiting): {held.error}")
        if self.writer is not None and self.writer.error is not None:
            problems.append(f"score write-back: {self.writer.error}")
        for r in self.alerts.stats() if self.alerts is not None else ():
            if r["error"] is not None and r["queued"]:
                problems.append(f"alerts to {r['url']} waiting ({r['queued']}): {r['error']}")
        return {"status": "degraded" if problems else "ok", "problems": problems,
                "auth": "on" if self.auth.enabled else "off (auth.enabled is false: every caller is an admin)",
                "families": sorted(self.scorers),
                "streams": streams, "replica": self.replica_id, "serving": self.follower.serving(),
                "controller": ctl, "store": store, "monitor": monitor,
                "writeback": None if self.writer is None else self.writer.stats(),
                "alerts": None if self.alerts is None else {"receivers": self.alerts.stats(),
                                                            "incidents": len(self.pipeline.incidents.open)},
                "bounds": {**self.pipeline.stats(), "inflight": _ReplicaAuth.inflight.stats()}}

    @app.get("/metrics", response_class=PlainTextResponse, responses=http.responses(401, 403))
    async def metrics(self) -> PlainTextResponse:
        """Prometheus text: every router replica's series (label ``replica``) and the app-wide drift and
        feedback gauges, from the app's monitor; this replica's alone if the monitor is away."""
        own = m.exposition().decode()
        try:
            text = await asyncio.wait_for(self._monitor().metrics.remote(self.replica_id, own),
                                          timeout=self.config.timeouts.monitor_s)
        except Exception as exc:  # noqa: BLE001
            m.ERRORS.labels("monitor").inc()
            log.warning("/metrics from this replica only: monitor unavailable (%s)", unwrap(exc))
            text = own
        return PlainTextResponse(views.metrics_text(text, auth.current()), media_type="text/plain; version=0.0.4")

    # -- the web console (static files; its API calls carry the key) --------------------------------
    @app.get("/", include_in_schema=False)
    async def console_page(self) -> Response:
        return _console_file(console.INDEX)

    @app.get("/console.{ext}", include_in_schema=False)
    async def console_file(self, ext: str) -> Response:
        return _console_file(f"console.{ext}")

    @app.get("/vendor/{name}", include_in_schema=False)
    async def console_vendor(self, name: str) -> Response:
        return _console_file(f"vendor/{name}")

    @app.get("/v1/me", responses=http.responses(401))
    async def me(self) -> dict[str, Any]:
        """Who the credential is: its name, tenant and role (with the roles it includes)."""
        who = auth.current()
        return {"name": who.name, "tenant": who.tenant, "role": who.role,
                "roles": [r for r in auth.ROLES if who.allows(r)]}

    async def _from_monitor(self, method: str, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(getattr(self._monitor(), method).remote(*args),
                                          timeout=self.config.timeouts.monitor_s)
        except Exception as exc:  # noqa: BLE001
            raise UnavailableError("the monitor is not available, retry shortly",
                                   retry_after_s=self.config.timeouts.retry_after_s) from unwrap(exc)

    @app.get("/v1/alerts", responses=http.responses(401, 403, 422, 503))
    async def recent_alerts(self, limit: schemas.SeriesLimit = 20) -> dict[str, Any]:
        """The newest alerts raised and resolved (of the caller's tenant; an admin's: all), newest
        first; empty unless ``alerts.receivers`` are configured."""
        who = auth.current()
        return {"alerts": await self._from_monitor("recent_alerts", None if who.is_admin else [who.tenant], limit)}

    @app.get("/v1/series", responses=http.responses(401, 403, 422, 503))
    async def series(self, match: schemas.SeriesMatch = "", limit: schemas.SeriesLimit = 100) -> dict[str, Any]:
        """Live series with scored points kept (of the caller's tenant; an admin's: all), most recently
        scored first: per series its model and version, points kept, alarms among them, last score."""
        who = auth.current()
        return {"series": await self._from_monitor("series", None if who.is_admin else [who.tenant], match, limit)}

    @app.get("/v1/series/{id:path}/points", responses=http.responses(401, 403, 404, 422, 503))
    async def series_points(self, id: schemas.SeriesId, group: schemas.GroupQuery = "default",
                            tenant: schemas.TenantQuery = None, limit: schemas.PointsLimit = 10_000) -> dict[str, Any]:
        """A live series' last scored points, oldest first, as they were answered: time, position,
        value, score, alarm, severity, expected value and band, each member's score."""
        who = auth.current()
        name = reg.model_name("ensemble", group=group, tenant=who.tenant_for(tenant))
        got = await self._from_monitor("series_points", name, id, limit)
        if got is None:
            raise UnknownNameError(f"series {id!r} of {name}: no scored points kept (stream it first; the monitor "
                                   f"keeps the last monitor.history_points of each live series)")
        try:  # the alarm threshold the points were judged against, to draw
            threshold = (await self.models.get(name, got["version"])).threshold
        except Exception:  # noqa: BLE001 - a version no longer loadable: the points still show
            threshold = None
        return {**got, "threshold": threshold}

    # -- training and tuning jobs (run as Ray tasks by the app's job board) ---------------------------
    async def _board(self, method: str, *args: Any) -> Any:
        t = self.config.timeouts
        if self._jobs_handle is None:
            self._jobs_handle = get_jobs(self.config.name, self.config.jobs.model_dump(), self.config.mlflow_uri,
                                         self.config.controller.audit_uri, self.config.actor_resources)
        return await _call("the job board", getattr(self._jobs_handle, method).remote(*args), t.controller_s,
                           t.retry_after_s)

    @app.post("/v1/jobs", status_code=202, responses=http.responses(401, 403, 404, 409, 413, 422, 429, 503))
    async def start_job(self, req: schemas.JobRequest) -> dict[str, Any]:
        """Start a training or tuning run off the serving path; answers its id at once (state
        ``pending``). Its parameters and data source are checked first: a bad one is a 4xx, never a failed job."""
        who = auth.current()
        req = self._scoped(req, who)
        if not self.config.jobs.enabled:
            raise LifecycleError("jobs: this app takes no jobs over the API (jobs.enabled is false)")
        spec = jobs.check_spec(jobs.JobSpec(req.kind, req.family, req.group, req.tenant, req.data.model_dump(),
                                            req.params),
                               max_trials=self.config.jobs.max_trials, prometheus_url=self.config.jobs.prometheus_url)
        return await self._board("start", spec.to_dict(), who.name)

    @app.get("/v1/jobs", responses=http.responses(401, 403, 422, 503))
    async def list_jobs(self, limit: schemas.JobsLimit = 50) -> dict[str, Any]:
        """The newest jobs first (of the caller's tenant; an admin's: all): state, progress, result."""
        who = auth.current()
        return {"jobs": await self._board("list", None if who.is_admin else [who.tenant], limit)}

    @app.get("/v1/jobs/{job_id}", responses=http.responses(401, 403, 404, 422, 503))
    async def get_job(self, job_id: schemas.JobId) -> dict[str, Any]:
        """A job's state, progress (epochs or trials done), the tail of its log and the version it registered."""
        who = auth.current()
        return await self._board("get", job_id, None if who.is_admin else [who.tenant])

    @app.post("/v1/jobs/{job_id}/cancel", responses=http.responses(401, 403, 404, 409, 422, 503))
    async def cancel_job(self, job_id: schemas.JobId) -> dict[str, Any]:
        """Stop a pending or running job (409 once it has ended)."""
        who = auth.current()
        return await self._board("cancel", job_id, who.name, None if who.is_admin else [who.tenant])

    @app.post("/v1/feedback", responses=http.responses(401, 403, 404, 413, 422, 429, 503))
    async def feedback(self, req: schemas.FeedbackRequest) -> dict[str, Any]:
        """An operator's verdict on points a model scored (true anomaly, false alarm, missed anomaly);
        EyeNet tracks precision, false-positive rate and alarm rate per model from it."""
        who = auth.current()
        req = self._scoped(req, who)
        fb = schemas.check_feedback(req, by=who.name)
        who.check_model(fb.model)
        if fb.model not in self.follower.table:  # unknown model: 404 naming it
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: self.registry.version(fb.model, alias=self.config.alias))
        try:
            counts = await asyncio.wait_for(self._monitor().record_feedback.remote(fb),
                                            timeout=self.config.timeouts.monitor_s)
        except Exception as exc:  # noqa: BLE001
            cause = unwrap(exc)
            if isinstance(cause, EyenetError):
                raise cause from None
            raise UnavailableError("the monitor is not available; feedback was not recorded, retry shortly",
                                   retry_after_s=self.config.timeouts.retry_after_s) from None
        m.count_feedback(fb)
        await self._ask("record", "FEEDBACK", fb.model, fb.version, actor=who.name, metrics={fb.label: fb.points},
                        reason=f"{fb.label} on {fb.points} points of series {fb.series}")
        total = counts.get("total") or {}
        return {"recorded": fb.to_dict(), "model": fb.model, **counts,
                "counts": {label: int(total.get(label, 0)) for label in LABELS}}

