"""The application builder: ``build_app(config)`` for ``serve.run``, ``app_builder`` for ``serve deploy``.

    serve deploy serve/serve_config.yaml     # import_path: eyenet.serve.app:app_builder
"""
from __future__ import annotations

from typing import Any

from ray import serve

from eyenet.serve.config import AppConfig
from eyenet.serve.deployments import FamilyScorer, Router


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def build_app(config: AppConfig | dict[str, Any] | None = None, *, gpus: float | None = None) -> Any:
    """Bind the router and one scorer deployment per configured family."""
    cfg = config if isinstance(config, AppConfig) else AppConfig(**(config or {}))
    gpus = cluster_gpus() if gpus is None else gpus
    scorers = {}
    for family in cfg.families:
        s = cfg.settings(family)
        dep = serve.deployment(FamilyScorer).options(**cfg.deployment_options(family, gpus))
        scorers[family] = dep.bind(family, cfg.mlflow_uri, s.max_batch_size, s.batch_wait_timeout_s, s.max_models_per_replica)
    r = cfg.router
    router = serve.deployment(Router).options(
        name="router",
        ray_actor_options={"num_cpus": r.num_cpus},
        max_ongoing_requests=r.max_ongoing_requests,
        max_queued_requests=r.max_queued_requests,
        autoscaling_config=r.autoscaling.model_dump(),
    )
    return router.bind(cfg.model_dump(), scorers)


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point of ``serve deploy`` / ``serve run``: ``args`` is the config's ``args`` section."""
    return build_app(AppConfig(**(args or {})))
