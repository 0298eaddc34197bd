"""Ray wiring of the job board (:mod:`eyenet.serving.jobs`): its detached actor, and each job as a
Ray task that reports back to it. What a job does lives in :mod:`eyenet.lifecycle.jobs` (training)
and ``eyenet.tune.tuner`` (the search)."""
from __future__ import annotations

import functools
from typing import Any

from eyenet.serve.actors import NAMESPACE, get_actor

JOBS_PREFIX = "eyenet-jobs"


def jobs_name(app: str) -> str:
    return f"{JOBS_PREFIX}-{app}"


def get_jobs(app: str, settings: dict[str, Any], mlflow_uri: str | None = None, audit_uri: str | None = None,
             resources: dict[str, float] | None = None) -> Any:
    """The app's job board; the arguments matter only to the call that creates it."""
    from eyenet.serving.jobs import JobBoard

    name = jobs_name(app)
    return get_actor(JobBoard, name, settings, functools.partial(launch, name, mlflow_uri, audit_uri, settings),
                     cancel, resources=resources)


def launch(board: str, mlflow_uri: str | None, audit_uri: str | None, settings: dict[str, Any],
           job_id: str, spec: dict[str, Any]) -> Any:
    """Start job ``job_id`` as a Ray task (not retried); its ObjectRef."""
    import ray

    from eyenet.serving.jobs import JobSettings

    s = JobSettings(**settings)
    task = ray.remote(run).options(num_cpus=s.num_cpus, max_retries=0, resources=dict(s.resources),
                                   name=f"eyenet-job-{job_id}")
    return task.remote(board, job_id, spec, mlflow_uri, audit_uri, settings)


def cancel(ref: Any) -> None:
    """Stop a job's task and what it started (a tune job's trials)."""
    import ray

    ray.cancel(ref, force=True, recursive=True)


class Reporter:
    """What a running job tells its board: sent without waiting (a board away loses lines, not the
    job), and waited for by :meth:`flush` before the job ends, so its last words arrive first."""

    def __init__(self, board: Any, job_id: str) -> None:
        self.board, self.job_id, self.last = board, job_id, None

    def line(self, text: str) -> None:
        self.last = self.board.report.remote(self.job_id, line=text)

    def progress(self, done: int, total: int | None, unit: str) -> None:
        self.last = self.board.report.remote(self.job_id, progress={"done": done, "total": total, "unit": unit})

    def flush(self, timeout_s: float = 10.0) -> None:
        import ray

        if self.last is not None:
            try:  # one caller's calls to an actor arrive in order: the last one answered means all were
                ray.get(self.last, timeout=timeout_s)
            except Exception:  # noqa: BLE001 - the board away: the job's outcome still reaches it
                pass


def run(board: str, job_id: str, spec: dict[str, Any], mlflow_uri: str | None, audit_uri: str | None,
        settings: dict[str, Any]) -> dict[str, Any]:
    """One job, inside its Ray task (:func:`eyenet.lifecycle.jobs.run`, searching with Ray Tune)."""
    import ray
    import torch

    from eyenet.lifecycle import audit, jobs
    from eyenet.lifecycle import registry as reg
    from eyenet.serving.jobs import JobSettings
    from eyenet.tune import tuner

    torch.set_num_threads(1)
    s = JobSettings(**settings)
    reporter = Reporter(ray.get_actor(board, namespace=NAMESPACE), job_id)
    try:
        registry = reg.Registry(mlflow_uri, audit_log=audit.AuditLog(audit_uri) if audit_uri else None).check()
        version = jobs.run(jobs.JobSpec(**spec), job_id, registry=registry, reporter=reporter,
                           prometheus_url=s.prometheus_url, search=tuner.search, cpus_per_trial=s.cpus_per_trial,
                           max_concurrent=s.max_concurrent_trials)
        return {"version": {"name": version.name, "version": version.version}}
    finally:
        reporter.flush()
