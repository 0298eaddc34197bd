"""The job board: training and tuning jobs started over the API, their state, progress and log.

One board per app (a detached actor, see ``eyenet.serve.actors.get_jobs``). :meth:`JobBoard.start`
records a job and launches it off the serving path (a Ray task, through the ``launch`` it was
given); the running job reports its progress and log lines back with :meth:`JobBoard.report`; the
board follows the launch to its end (``succeeded`` with the registered version, ``failed`` with the
error, ``cancelled`` by :meth:`JobBoard.cancel` or past ``jobs.timeout_s``).

Everything is bounded: at most ``max_active`` jobs pending or running (more: 429), the last
``keep`` jobs kept (the oldest finished ones go first), ``log_lines`` lines of each job's log, each
at most :data:`LINE_CHARS` characters. The board lives in memory: a restart of its actor forgets
the jobs (their versions stay in the registry, with the job's id in the tag ``eyenet.job``).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field

from eyenet.core.errors import LifecycleError, QuotaExceededError, UnknownNameError
from eyenet.core.redact import redact

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "pending", "running", "succeeded", "failed", "cancelled"
ACTIVE = frozenset({PENDING, RUNNING})
#: a log line is cut to this many characters
LINE_CHARS = 500
#: a job id: ``j`` and 12 hex digits
ID_PATTERN = r"^j[0-9a-f]{12}$"


class JobSettings(BaseModel):
    """Training and tuning jobs started over the API (``POST /v1/jobs``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="take jobs over the API (false: POST /v1/jobs answers 409)")
    num_cpus: float = Field(0.5, gt=0, description="CPUs a job's Ray task reserves (a tune job's trials reserve their own)")
    cpus_per_trial: float = Field(0.5, gt=0, description="CPUs each trial of a tune job reserves")
    max_concurrent_trials: int = Field(2, ge=1, description="trials of one tune job running at once")
    max_trials: int = Field(64, ge=1, description="most trials a tune job may ask for")
    max_active: int = Field(2, ge=1, description="jobs pending or running at once in the app (more: 429)")
    keep: int = Field(100, ge=1, description="jobs the board remembers (the oldest finished ones are forgotten first)")
    log_lines: int = Field(200, ge=1, description="last lines kept of each job's log")
    timeout_s: float = Field(3600.0, gt=0, description="a job still running after this long is cancelled and failed")
    prometheus_url: str | None = Field(None, description="the Prometheus a job with a {\"prometheus\": ...} data "
                                       "source reads (query_range; bearer token from EYENET_PROMETHEUS_TOKEN)")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources a job's task needs")


@dataclass
class Job:
    id: str
    kind: str
    family: str
    group: str
    tenant: str
    actor: str
    params: dict[str, Any]
    data: dict[str, Any]
    created: float
    log_lines: int
    state: str = PENDING
    progress: dict[str, Any] = field(default_factory=lambda: {"done": 0, "total": None, "unit": None})
    started: float | None = None
    ended: float | None = None
    version: dict[str, Any] | None = None
    error: str | None = None
    logs: collections.deque = field(default_factory=collections.deque)
    handle: Any = None  # what launch returned: awaited for the outcome, given to cancel

    def __post_init__(self) -> None:
        self.logs = collections.deque(maxlen=self.log_lines)

    def say(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        for line in str(text).splitlines() or [""]:
            self.logs.append(f"{stamp} {redact(line)[:LINE_CHARS]}")

    def end(self, state: str, error: str | None = None) -> None:
        self.state, self.ended = state, time.time()
        if error is not None:
            self.error = redact(error)[:LINE_CHARS]

    def to_dict(self, logs: bool = False) -> dict[str, Any]:
        out = {"id": self.id, "kind": self.kind, "family": self.family, "group": self.group, "tenant": self.tenant,
               "actor": self.actor, "state": self.state, "progress": dict(self.progress), "created": self.created,
               "started": self.started, "ended": self.ended, "version": self.version, "error": self.error,
               "params": self.params, "data": self.data}
        if logs:
            out["logs"] = list(self.logs)
        return out


#: ``launch(job_id, spec) -> handle``: starts the job; ``await handle`` is its outcome (a dict with
#: ``version``: ``{"name", "version"}``) or its error
Launch = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: ``cancel(handle)``: stops a launched job
Cancel = Callable[[Any], None]


class JobBoard:
    """Jobs by id; see the module docstring. Calls come from the router replicas (start, list, get,
    cancel, with the caller's tenant scope) and from the running jobs (report)."""

    def __init__(self, settings: dict[str, Any] | JobSettings | None, launch: Launch, cancel: Cancel) -> None:
        self.settings = settings if isinstance(settings, JobSettings) else JobSettings(**(settings or {}))
        self.launch, self.cancel_handle = launch, cancel
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._watchers: set[asyncio.Task] = set()

    # -- from the API ----------------------------------------------------------------------------
    async def start(self, spec: dict[str, Any], actor: str) -> dict[str, Any]:
        """Record and launch a checked job spec (``eyenet.lifecycle.jobs.JobSpec`` as a dict)."""
        s = self.settings
        active = sum(1 for j in self.jobs.values() if j.state in ACTIVE)
        if active >= s.max_active:
            raise QuotaExceededError(f"jobs: {active} jobs are pending or running (jobs.max_active is {s.max_active}); "
                                     "retry when one ends or cancel one", retry_after_s=30.0)
        job = Job(id=f"j{secrets.token_hex(6)}", kind=spec["kind"], family=spec["family"], group=spec["group"],
                  tenant=spec["tenant"], actor=actor, params=dict(spec.get("params") or {}),
                  data=dict(spec.get("data") or {}), created=time.time(), log_lines=s.log_lines)
        job.say(f"{job.kind} job for {job.family} (group {job.group}, tenant {job.tenant}) started by {actor}")
        self.jobs[job.id] = job
        self._forget_old()
        try:
            job.handle = self.launch(job.id, spec)
        except Exception as exc:  # noqa: BLE001 - recorded on the job: the caller sees it failed
            job.end(FAILED, f"could not launch: {exc}")
            return job.to_dict()
        task = asyncio.get_running_loop().create_task(self._follow(job))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return job.to_dict()

    def list(self, tenants: list[str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs first (of ``tenants``; None: all)."""
        out = [j.to_dict() for j in reversed(self.jobs.values()) if tenants is None or j.tenant in tenants]
        return out[:limit]

    def get(self, job_id: str, tenants: list[str] | None = None) -> dict[str, Any]:
        return self._job(job_id, tenants).to_dict(logs=True)

    def cancel(self, job_id: str, actor: str, tenants: list[str] | None = None) -> dict[str, Any]:
        """Stop a pending or running job (409 once it has ended)."""
        job = self._job(job_id, tenants)
        if job.state not in ACTIVE:
            raise LifecycleError(f"job {job_id} has already {job.state}")
        job.say(f"cancelled by {actor}")
        job.end(CANCELLED)
        self._stop(job)
        return job.to_dict(logs=True)

    # -- from the running job --------------------------------------------------------------------
    def report(self, job_id: str, line: str | None = None, progress: dict[str, Any] | None = None) -> bool:
        """A line of the job's log and / or its progress (``done``, ``total``, ``unit``); the first
        report marks it running. False when the board does not know the job (forgotten, or ended)."""
        job = self.jobs.get(job_id)
        if job is None or job.state not in ACTIVE:
            return False
        if job.state == PENDING:
            job.state, job.started = RUNNING, time.time()
        if progress is not None:
            job.progress = {"done": int(progress.get("done") or 0), "total": progress.get("total"),
                            "unit": progress.get("unit")}
        if line:
            job.say(line)
        return True

    def stats(self) -> dict[str, int]:
        counts = collections.Counter(j.state for j in self.jobs.values())
        return {state: counts.get(state, 0) for state in (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)}

    # -- inside --------------------------------------------------------------------------------
    def _job(self, job_id: str, tenants: list[str] | None) -> Job:
        job = self.jobs.get(job_id)
        if job is None or (tenants is not None and job.tenant not in tenants):  # another tenant's: not found
            raise UnknownNameError(f"job {job_id!r} is not known (the board keeps the last {self.settings.keep} jobs)")
        return job

    def _forget_old(self) -> None:
        while len(self.jobs) > self.settings.keep:
            old = next((k for k, j in self.jobs.items() if j.state not in ACTIVE), None)
            if old is None:
                return
            del self.jobs[old]

    def _stop(self, job: Job) -> None:
        try:
            self.cancel_handle(job.handle)
        except Exception as exc:  # noqa: BLE001 - already gone
            log.info("job %s: cancel: %s", job.id, exc)

    async def _follow(self, job: Job) -> None:
        """Await the launched job; record how it ended (a cancel already has)."""
        try:
            outcome = await asyncio.wait_for(_awaited(job.handle), timeout=self.settings.timeout_s)
        except asyncio.TimeoutError:
            if job.state in ACTIVE:
                job.say(f"still running after {self.settings.timeout_s:.0f} s (jobs.timeout_s): stopped")
                job.end(FAILED, f"ran past jobs.timeout_s ({self.settings.timeout_s:.0f} s)")
                self._stop(job)
            return
        except BaseException as exc:  # noqa: BLE001 - the job's own error, or its task killed by a cancel
            if job.state in ACTIVE:
                cause = getattr(exc, "cause", None) or exc  # a Ray task's error wraps its cause
                message = str(cause).strip().splitlines()
                text = f"{type(cause).__name__}: {message[-1] if message else ''}".strip()
                job.say(f"failed: {text}")
                job.end(FAILED, text)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if job.state in ACTIVE:
            job.version = (outcome or {}).get("version")
            job.started = job.started or job.created
            job.end(SUCCEEDED)


async def _awaited(handle: Any) -> Any:
    return await handle
