"""The application builder: ``build_app(config)`` for ``serve.run``, ``app_builder`` for ``serve deploy``;
and the deploy configs rendered from the same typed config (``profile``, ``serve_config``):

    python -m eyenet.serve.app > serve/serve_config.yaml      # serve deploy serve/serve_config.yaml
    python -m eyenet.serve.app --profile kuberay --manifest deploy/kuberay/rayservice.yaml
"""
from __future__ import annotations

from typing import Any

from ray import serve

from eyenet.serving.settings import AppConfig
from eyenet.serve.deployments import FamilyScorer, Router


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def build_app(config: AppConfig | dict[str, Any] | None = None, *, gpus: float | None = None) -> Any:
    """Bind the router and one scorer deployment per configured family."""
    cfg = config if isinstance(config, AppConfig) else AppConfig(**(config or {}))
    gpus = cluster_gpus() if gpus is None else gpus
    scorers, gpu_families = {}, []
    for family in cfg.families:
        s = cfg.settings(family)
        options = cfg.deployment_options(family, gpus)
        if options["ray_actor_options"].get("num_gpus"):
            gpu_families.append(family)
        scorers[family] = serve.deployment(FamilyScorer).options(**options).bind(
            family, cfg.mlflow_uri, s.max_batch_size, s.batch_wait_timeout_s)
    router = serve.deployment(Router).options(**cfg.router_options())
    return router.bind(cfg.model_dump(), scorers, gpu_families)


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point of ``serve deploy`` / ``serve run``: ``args`` is the config's ``args`` section."""
    return build_app(AppConfig(**(args or {})))


#: Custom Ray resource that the head node offers (``cluster.yaml``: the head node type;
#: ``deploy/kuberay/rayservice.yaml``: the head group). The detached actors (stream store, model
#: controller, monitor) of the cluster profiles ask for a sliver of it, so they live on the head,
#: which the autoscaler never removes, and never on a worker that is scaled in.
HEAD_RESOURCE = "eyenet_head"
#: In-cluster addresses of the KubeRay profile: the Services of ``deploy/kuberay/mlflow.yaml`` and
#: ``deploy/kuberay/postgres.yaml``. No password: libpq reads ``PGPASSWORD`` from the pods' environment.
KUBERAY_MLFLOW_URI = "http://eyenet-mlflow:5000"
KUBERAY_DATABASE_URI = "postgresql://eyenet@eyenet-postgres:5432/eyenet"
#: The profiles ``python -m eyenet.serve.app --profile`` renders.
PROFILES = ("cluster", "kuberay")


def profile(name: str = "cluster") -> AppConfig:
    """The typed config of a deployment profile.

    Both put the detached actors on the head and the torch families on the GPU workers (a fifth of
    a GPU each, so one replica of each of the five fits on one GPU; the autoscaler starts a GPU
    worker for them). ``cluster``: ``serve/serve_config.yaml``, for ``serve deploy`` on a
    ``ray up cluster.yaml`` cluster; MLflow, the stream-state database and the audit log come from
    each node's ``EYENET_MLFLOW_URI`` / ``EYENET_STATE_URI`` / ``EYENET_AUDIT_URI`` / ``EYENET_KEYS_URI``. ``kuberay``:
    ``spec.serveConfigV2`` of ``deploy/kuberay/rayservice.yaml``; the in-cluster MLflow server and
    PostgreSQL.
    """
    common: dict[str, Any] = {"actor_resources": {HEAD_RESOURCE: 0.001}, "use_gpus": True, "gpu_fraction": 0.2}
    if name == "cluster":
        return AppConfig(**common)
    if name == "kuberay":
        return AppConfig(**common, mlflow_uri=KUBERAY_MLFLOW_URI, state_uri=KUBERAY_DATABASE_URI,
                         controller={"audit_uri": KUBERAY_DATABASE_URI}, auth={"keys_uri": KUBERAY_DATABASE_URI})
    raise ValueError(f"unknown profile {name!r}; one of {', '.join(PROFILES)}")


def serve_config(config: AppConfig | None = None) -> dict[str, Any]:
    """The ``serve deploy`` config equivalent to ``build_app(config)`` (GPUs as ``config.use_gpus`` says,
    none when it leaves them to the cluster)."""
    cfg = config or AppConfig()
    deployments = []
    for family in cfg.families:
        opts = cfg.deployment_options(family, cluster_gpus=0)
        deployments.append({k: v for k, v in opts.items() if k != "backpressure_config"})
    r = cfg.router_options()
    deployments.append({k: v for k, v in r.items() if k != "backpressure_config"})
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [{
            "name": cfg.name,
            "route_prefix": cfg.route_prefix,
            "import_path": "eyenet.serve.app:app_builder",
            "runtime_env": {},
            "args": cfg.model_dump(exclude_none=True),
            "deployments": deployments,
        }],
    }


def serve_config_yaml(config: AppConfig | None = None) -> str:
    """:func:`serve_config` as YAML, in the builder's key order."""
    import yaml

    return yaml.safe_dump(serve_config(config), sort_keys=False)


def with_serve_config(manifest: str, config: AppConfig) -> str:
    """``manifest`` (a RayService's YAML text) with its ``serveConfigV2: |`` block replaced by
    ``config``'s serve config; everything else, comments included, is kept as it is."""
    lines = manifest.splitlines(keepends=True)
    key = next((i for i, line in enumerate(lines) if line.strip() == "serveConfigV2: |"), None)
    if key is None:
        raise ValueError("the manifest has no 'serveConfigV2: |' line")
    indent = len(lines[key]) - len(lines[key].lstrip())
    end = key + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    block = [" " * (indent + 2) + line + "\n" for line in serve_config_yaml(config).splitlines()]
    return "".join(lines[:key + 1] + block + lines[end:])


#: The environment variables the settings fall back to; unset while rendering, so that a committed
#: file never depends on the shell that generated it.
_SETTINGS_ENV = ("EYENET_MLFLOW_URI", "EYENET_STATE_URI", "EYENET_AUDIT_URI")


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m eyenet.serve.app",
        description="Render the `serve deploy` config of a profile: to stdout, or into a RayService manifest.")
    parser.add_argument("--profile", choices=PROFILES, default="cluster")
    parser.add_argument("--manifest", type=Path, help="rewrite this RayService manifest's serveConfigV2 in place")
    args = parser.parse_args(argv)
    for var in _SETTINGS_ENV:
        os.environ.pop(var, None)
    cfg = profile(args.profile)
    if args.manifest:
        args.manifest.write_text(with_serve_config(args.manifest.read_text(), cfg))
        return
    if args.profile == "cluster":
        sys.stdout.write("# Generated by `python -m eyenet.serve.app > serve/serve_config.yaml`; tests check it matches\n"
                         "# the builder. On a `ray up cluster.yaml` cluster: serve deploy serve/serve_config.yaml\n")
    sys.stdout.write(serve_config_yaml(cfg))


if __name__ == "__main__":
    main()
