"""Typed settings of the application (pydantic): the Serve builder, serve_config.yaml and the actors all read these."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eyenet.serving.auth import AuthSettings
from eyenet.serving.jobs import JobSettings

from eyenet.core.detectors import TORCH_FAMILIES
from eyenet.lifecycle.settings import RetrainSettings
from eyenet.monitoring.settings import MonitorSettings

__all__ = ["AppConfig", "Autoscaling", "ControllerActorSettings", "ControllerSettings", "DeploymentSettings",
           "GapSettings", "JobSettings", "MonitorSettings", "RemoteWriteRule", "RemoteWriteSettings", "WritebackSettings", "QuotaSettings", "RequestTimeouts", "RetrainSettings", "StoreSettings", "TORCH_FAMILIES",
           "TenantQuota"]


class TenantQuota(BaseModel):
    """One tenant's quotas; a field left out takes :class:`QuotaSettings`' default (None: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_s: float | None = Field(None, gt=0)
    points_per_s: float | None = Field(None, gt=0)
    max_series: int | None = Field(None, ge=0)
    max_inflight: int | None = Field(None, ge=1)
    new_series_per_s: float | None = Field(None, gt=0)


class QuotaSettings(BaseModel):
    """Per-tenant quotas (see eyenet.serving.quota). Rates are per router replica (token buckets in
    each replica, ``burst_s`` seconds of the rate at most); the live-series cap is app-wide (the
    stream store). Over a quota: 429 with Retry-After. None: unlimited."""

    model_config = ConfigDict(extra="forbid")

    requests_per_s: float | None = Field(1000.0, gt=0, description="requests a second per tenant, per router replica")
    points_per_s: float | None = Field(1_000_000.0, gt=0, description="points a second per tenant, per router replica")
    burst_s: float = Field(2.0, gt=0, description="a bucket holds this many seconds of its rate")
    max_series_per_tenant: int | None = Field(10_000, ge=0, description="live stream series per tenant (app-wide)")
    new_series_per_s: float | None = Field(
        2000.0, gt=0, description="stream series a tenant brings to a router replica a second (new ids, or ones "
        "another replica held): a burst beyond it is taken at this pace (its requests wait), so one tenant's "
        "cardinality explosion leaves the others their share of the CPU; a request "
        "that would wait more than 10 s behind the tenant's others is answered 429")
    max_inflight_per_tenant: int | None = Field(
        16, ge=1, description="requests of one tenant in progress at once per router replica (as many more may "
        "wait, hold_s; keep both under the router's max_ongoing_requests); the rest are answered 429, so one "
        "tenant's burst cannot queue in front of the others'")
    hold_s: float = Field(1.0, ge=0, description="a request over max_inflight waits this long at most for a turn "
                          "(as many may wait as may run); a 429 of a quota is sent this late at most (never past "
                          "its Retry-After), so a client ignoring Retry-After is slowed at no CPU cost; 0: neither")
    max_tenants: int = Field(10_000, ge=1, description="tenants whose rate buckets a replica keeps (LRU, counted)")
    retry_after_s: float = Field(5.0, ge=0, description="Retry-After of a refused new series")
    tenants: dict[str, TenantQuota] = Field(default_factory=dict, description="per-tenant overrides")

    def of(self, tenant: str) -> TenantQuota:
        """``tenant``'s quotas: its override's fields where given, the defaults otherwise."""
        base = {"requests_per_s": self.requests_per_s, "points_per_s": self.points_per_s,
                "max_series": self.max_series_per_tenant, "max_inflight": self.max_inflight_per_tenant,
                "new_series_per_s": self.new_series_per_s}
        o = self.tenants.get(tenant)
        if o is not None:
            base.update({f: getattr(o, f) for f in o.model_fields_set})
        return TenantQuota.model_construct(**base)


class StoreSettings(BaseModel):
    """The stream store: snapshots, memory caps, reload after a restart (see eyenet.serving.streams)."""

    model_config = ConfigDict(extra="forbid")

    flush_s: float = Field(1.0, gt=0, description="how often changed states are written")
    max_backoff_s: float = Field(30.0, gt=0, description="longest wait between retries of a failing write")
    ttl_s: float = Field(7 * 86400.0, gt=0, description="a series idle this long is forgotten")
    max_series: int = Field(1_000_000, ge=1, description="series in memory (tombstones included); beyond it the "
                            "least recently used idle series is evicted (counted), else a new series gets 429")
    max_bytes: int = Field(2 << 30, ge=1024, description="estimated bytes of the states in memory (same rule)")
    min_idle_s: float = Field(300.0, ge=0, description="a series used more recently than this is never evicted")
    reload_max_series: int = Field(1_000_000, ge=0, description="series reloaded after a restart, newest first")
    reload_max_s: float = Field(30.0, ge=0, description="longest reload after a restart; older rows are dropped")
    open_timeout_s: float = Field(60.0, gt=0, description="how long a locked database is retried at start-up")
    write_behind_s: float = Field(0.2, ge=0, le=10, description="how often a router replica writes the states of "
                                  "its series behind to the store: a replica that dies loses at most this much of "
                                  "acknowledged points per series; 0: a point is answered only once its state is in "
                                  "the store (none lost, one store round trip per request)")
    lease_s: float = Field(2.0, gt=0, description="a replica keeps its series this long after the store last heard "
                           "from it; then another replica may take them over")

    @model_validator(mode="after")
    def _lease_outlasts_writes(self) -> "StoreSettings":
        if self.lease_s < 4 * self.write_behind_s:
            raise ValueError(f"store.lease_s ({self.lease_s:g}) must be at least 4 x store.write_behind_s "
                             f"({self.write_behind_s:g}): every write renews the lease")
        return self


class Autoscaling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 30.0
    downscale_to_zero_delay_s: float | None = Field(
        None, gt=0, description="with min_replicas 0: idle this long before the last replica stops "
        "(default: downscale_delay_s)")


class DeploymentSettings(BaseModel):
    """Resources and limits of one deployment."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.25, gt=0)
    num_gpus: float = Field(0.0, ge=0, description="fraction of a GPU per replica (torch families, when the cluster has GPUs)")
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(64, ge=-1, description="beyond this the proxy answers 503 with Retry-After")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of a 503 under overload")
    autoscaling: Autoscaling = Autoscaling()
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources a replica needs "
                                        "(places it on the nodes that offer them, e.g. {\"eyenet_worker\": 0.01})")


class ControllerSettings(BaseModel):
    """The model controller: how it watches the registry and switches versions (see eyenet.serving.controller)."""

    model_config = ConfigDict(extra="forbid")

    poll_s: float = Field(0.5, gt=0, description="how often the registry's aliases are read")
    max_backoff_s: float = Field(10.0, gt=0, description="longest wait between retries while the registry fails")
    review_challengers: bool = Field(True, description="put every new `challenger` through the gate by itself")
    ready_timeout_s: float = Field(60.0, gt=0, description="longest wait for every router replica to load a new version")
    switch_delay_s: float = Field(0.25, ge=0, description="lead time between announcing a switch and making it, "
                                  "so every replica switches at the same instant (raised when replicas hear late)")
    max_switch_delay_s: float = Field(2.0, gt=0, description="longest lead time between announcing a switch and making it")
    replica_ttl_s: float = Field(5.0, gt=0, description="a router replica not heard from for this long is gone")
    check_rows: int = Field(2000, ge=100, description="rows of held-out data a new version is checked on before it serves")
    gate: dict[str, Any] = Field(default_factory=dict, description="gate policy (eyenet.lifecycle.gate.GatePolicy fields)")
    audit_uri: str | None = Field(None, description="the controller's audit log: a JSON-lines file path or a "
                                  "postgresql:// URI, password in PGPASSWORD/PGPASSFILE (default: EYENET_AUDIT_URI, "
                                  "else beside a SQLite store, else .eyenet/audit.jsonl where the controller runs)")
    retrain: RetrainSettings = RetrainSettings()


class ControllerActorSettings(ControllerSettings):
    """What the controller actor is created with: its app's :class:`ControllerSettings`, and which app
    (its monitor is found by this name) and alias it serves (see ``eyenet.serving.controller.settings_from``)."""

    app: str = "eyenet"
    alias: str = "champion"
    hold_s: float = Field(2.0, gt=0, description="longest a replica's follow call waits for a change")


class RequestTimeouts(BaseModel):
    """How long a request waits for each actor it calls; past that (or with the actor away) it gets
    503 with ``Retry-After: retry_after_s``."""

    model_config = ConfigDict(extra="forbid")

    store_s: float = Field(10.0, gt=0, description="a stream store call (get, commit, reset, count)")
    controller_s: float = Field(180.0, gt=0, description="an operator call to the model controller (history, "
                                "status, review; promote and rollback answer once the new version serves)")
    resolve_s: float = Field(120.0, gt=0, description="the controller's answer for a model the router does not "
                             "follow yet (checked before it serves); past it the router reads the registry itself")
    monitor_s: float = Field(10.0, gt=0, description="a monitor call (report, metrics, feedback)")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After of a 503 when an actor is away or slow")


class GapSettings(BaseModel):
    """Missing values and timestamps in a stream (see :mod:`eyenet.core.gaps`)."""

    model_config = ConfigDict(extra="forbid")

    max_fill: int = Field(60, ge=0, le=10_000, description="missing points imputed for one gap at most; a longer "
                          "gap restarts the series' warm-up")
    tolerance: float = Field(0.5, gt=0, le=100, description="an interval over (1 + tolerance) steps is a gap")

    def policy(self) -> Any:
        from eyenet.core.gaps import GapPolicy

        return GapPolicy(max_fill=self.max_fill, tolerance=self.tolerance)


class RemoteWriteRule(BaseModel):
    """Series of a remote_write request that ``match`` (a PromQL series selector) are scored by the
    tenant's model of ``group``."""

    model_config = ConfigDict(extra="forbid")

    match: str = Field(description='a series selector, e.g. node_load1{job="node"} or {__name__=~"http_.*"}')
    group: str = Field("default", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")

    @field_validator("match")
    @classmethod
    def _selector(cls, v: str) -> str:
        from eyenet.core.prometheus import parse_selector

        parse_selector(v)  # InvalidParameterError naming the problem
        return v


class RemoteWriteSettings(BaseModel):
    """``POST /api/v1/write``: Prometheus remote_write 1.0 in. Only series a rule matches are scored
    (first matching rule), so pointing a whole Prometheus at EyeNet scores nothing by accident."""

    model_config = ConfigDict(extra="forbid")

    rules: list[RemoteWriteRule] = Field(default_factory=list, max_length=1000,
                                         description="which series are scored, by which group's model; none: nothing")
    max_decoded_bytes: int = Field(64 << 20, ge=1024, description="a body that decompresses to more is refused (413)")
    max_series: int = Field(10_000, ge=1, description="series of one request at most (413 beyond)")
    max_samples: int = Field(100_000, ge=1, description="samples of one request at most (413 beyond)")


class WritebackSettings(BaseModel):
    """Scores written back through remote_write (``eyenet_anomaly_score``, ``eyenet_expected_value``,
    ``eyenet_alarm``, with the series' labels plus ``model`` and ``version``), batched off the request
    path and retried with backoff. ``url`` None: nothing is written."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="a remote_write endpoint, e.g. http://prometheus:9090/api/v1/write "
                            "(Prometheus with --web.enable-remote-write-receiver)")
    token_env: str | None = Field(None, description="environment variable holding a bearer token for url")
    interval_s: float = Field(1.0, gt=0, le=60, description="a batch is sent at least this often while samples wait")
    max_batch: int = Field(10_000, ge=1, description="samples of one request at most")
    max_queue: int = Field(200_000, ge=1, description="samples waiting at most per router replica (oldest dropped, "
                           "counted)")
    timeout_s: float = Field(5.0, gt=0, description="one request")
    max_backoff_s: float = Field(30.0, gt=0, description="retries of a failed batch wait up to this long")


class WebhookSettings(BaseModel):
    """A webhook receiver: JSON bodies signed with HMAC-SHA256 (``X-EyeNet-Signature``)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="where alerts are POSTed")
    secret_env: str | None = Field(None, description="environment variable holding the signing secret")
    secret_file: str | None = Field(None, description="file holding the signing secret (one line)")

    @model_validator(mode="after")
    def _one_secret(self) -> "WebhookSettings":
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError(f"webhook {self.url}: give exactly one of secret_env and secret_file")
        return self


class ReceiverSettings(BaseModel):
    """Where one tenant's alerts go."""

    model_config = ConfigDict(extra="forbid")

    alertmanager: list[str] = Field(default_factory=list, description="Alertmanager base URLs, e.g. "
                                    "http://alertmanager:9093 (alerts go to /api/v2/alerts of each)")
    webhooks: list[WebhookSettings] = Field(default_factory=list)


class AlertSettings(BaseModel):
    """Alarms out (:mod:`eyenet.serving.alerts`): one alert per series incident, to the receivers of
    the series' tenant only; a tenant without receivers gets none."""

    model_config = ConfigDict(extra="forbid")

    receivers: dict[str, ReceiverSettings] = Field(default_factory=dict, description="tenant -> its receivers")
    resolve_after: int = Field(5, ge=1, description="consecutive scored points below the alarm threshold that "
                               "end an incident (its alert resolves)")
    resend_s: float = Field(60.0, gt=0, description="a firing alert is posted again this often (keep it well under "
                            "Alertmanager's resolve_timeout, 5 min by default)")
    max_incidents: int = Field(100_000, ge=1, description="open incidents a router replica tracks (oldest "
                               "resolved beyond it, counted)")
    max_queue: int = Field(10_000, ge=1, description="deliveries waiting per receiver (oldest dropped, counted)")
    max_attempts: int = Field(10, ge=1, description="tries of one delivery before it is dead-lettered (counted)")
    max_backoff_s: float = Field(30.0, gt=0, description="retries wait up to this long")
    timeout_s: float = Field(5.0, gt=0, description="one request")


class AppConfig(BaseModel):
    """The whole application: which families are deployed and how."""

    model_config = ConfigDict(extra="forbid")

    name: str = "eyenet"
    route_prefix: str = "/"
    families: list[str] = Field(default_factory=lambda: ["zscore", "mad", "iqr", "iforest", "seasonal", "classifier",
                                                         *TORCH_FAMILIES])
    mlflow_uri: str | None = Field(None, description="default: EYENET_MLFLOW_URI, else the embedded store")
    state_uri: str | None = Field(None, description="where stream state is snapshotted: a folder (SQLite streams.db "
                                  "in it) or a postgresql:// URI, password in PGPASSWORD/PGPASSFILE (default: "
                                  "EYENET_STATE_URI, else .eyenet/state)")
    member_timeout_s: float = Field(2.0, gt=0, description="a member slower than this is left out (degraded)")
    inline_max_points: int = Field(
        4096, ge=0, description="requests of at most this many points are scored in the router by members on CPU "
        "(one hop to a member deployment costs more than their compute); 0: always call the member deployments")
    thread_min_points: int = Field(64, ge=1, description="requests of this many points or more are scored on the "
                                   "router's scoring threads (torch releases the GIL), smaller ones on its event loop")
    score_threads: int = Field(2, ge=1, description="scoring threads per router replica")
    critical_score: float = Field(0.95, gt=0, le=1, description="an alarm whose score reaches this is critical, "
                                  "else a warning (each point's severity, and its alert's)")
    alias: str = "champion"
    alias_ttl_s: float = Field(2.0, ge=0, description="how long a resolved alias is reused")
    gpu_fraction: float = Field(0.25, gt=0, le=1, description="GPU share of a torch replica when GPUs exist")
    use_gpus: bool | None = Field(None, description="None: use GPUs when the cluster has some")
    router: DeploymentSettings = DeploymentSettings(
        # Serve's slots only bound memory: each tenant's share of a replica is capped by the
        # quota's in-flight turns, and a request held there (waiting for a turn, or a 429 sent
        # late) must not take the slot another tenant's request needs
        num_cpus=0.25, max_ongoing_requests=1024, max_queued_requests=1024,
        # two from the start: one replica's crash or restart never interrupts the API, and each
        # replica process has a core's worth of Python (GIL) to itself
        autoscaling=Autoscaling(min_replicas=2, max_replicas=4))
    family: DeploymentSettings = DeploymentSettings(
        # only what is used runs: a family's first replica starts when a request needs it (a served
        # model's GPU member, a request over inline_max_points) and stops after 10 idle minutes
        autoscaling=Autoscaling(min_replicas=0, max_replicas=2, downscale_to_zero_delay_s=600.0))
    overrides: dict[str, DeploymentSettings] = Field(default_factory=dict, description="per-family settings")
    controller: ControllerSettings = ControllerSettings()
    monitor: MonitorSettings = MonitorSettings()
    auth: AuthSettings = AuthSettings()
    quota: QuotaSettings = QuotaSettings()
    store: StoreSettings = StoreSettings()
    timeouts: RequestTimeouts = RequestTimeouts()
    gaps: GapSettings = GapSettings()
    remote_write: RemoteWriteSettings = RemoteWriteSettings()
    writeback: WritebackSettings = WritebackSettings()
    alerts: AlertSettings = AlertSettings()
    jobs: JobSettings = JobSettings()
    access_log: bool = Field(
        False, description="Ray Serve's own log line per request on every replica. Off by default: EyeNet's "
        "request metrics and audit log cover requests, and Serve writes the lines 1,000 at a time, a pause of "
        "20-35 ms on a replica every 1,000 requests (bench/RESULTS.md)")
    streams_cached: int = Field(50_000, ge=1, description="stream states a router replica caches (LRU, counted)")
    streams_cached_bytes: int = Field(256 << 20, ge=1024, description="estimated bytes of those states at most")
    models_cached: int = Field(32, ge=1, description="ensemble versions a router replica keeps loaded (LRU, counted)")
    actor_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources the app's detached actors (stream store, model "
        "controller, monitor) need: pins them to the nodes that offer them, e.g. the head with "
        "{\"eyenet_head\": 0.001} and `ray start --head --resources '{\"eyenet_head\": 1}'`")

    def settings(self, family: str) -> DeploymentSettings:
        return self.overrides.get(family, self.family)

    def deployment_options(self, family: str, cluster_gpus: float) -> dict[str, Any]:
        """Ray Serve options of a family's deployment (GPU fraction only for torch families with GPUs)."""
        s = self.settings(family)
        use_gpu = (cluster_gpus > 0) if self.use_gpus is None else self.use_gpus
        gpus = (s.num_gpus or self.gpu_fraction) if (use_gpu and family in TORCH_FAMILIES) else 0.0
        return self._options(f"family-{family}", s, {"num_gpus": gpus} if gpus else {})

    def router_options(self) -> dict[str, Any]:
        return self._options("router", self.router, {})

    def _options(self, name: str, s: DeploymentSettings, gpus: dict[str, float]) -> dict[str, Any]:
        """Ray Serve options of one deployment from its settings (``gpus``: its ``num_gpus``, if any)."""
        return {
            "name": name,
            "ray_actor_options": {"num_cpus": s.num_cpus, **gpus,
                                  **({"resources": dict(s.resources)} if s.resources else {})},
            "max_ongoing_requests": s.max_ongoing_requests,
            "max_queued_requests": s.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": s.retry_after_s},
            "autoscaling_config": s.autoscaling.model_dump(exclude_none=True),
            "logging_config": {"enable_access_log": self.access_log},
        }
