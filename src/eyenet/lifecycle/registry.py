"""MLflow as the system of record: runs, model versions, aliases.

Every trained :class:`~eyenet.core.model.AnomalyModel` becomes one MLflow run (its
parameters, metrics, training curves, calibration and feature configuration)
and one registered model version. The model is logged as an MLflow
``python_function`` model whose loader is this module (``loader_module``), so
the registry holds only JSON, ``.npz`` arrays and an MLmodel file: nothing is
ever unpickled, by EyeNet or by ``mlflow.pyfunc.load_model``.

The embedded default needs no server: a SQLite store and an artifact folder
under ``.eyenet/`` in the working directory. ``EYENET_MLFLOW_URI`` points at a
real tracking server instead; the code is the same.

Registered-model names are ``<tenant>.<group>.<family>`` (``default.default.
ensemble`` unless said otherwise), so tenants and per-series-group models get
their own version lines. New versions get the alias ``challenger``; the served
one is ``champion``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pandas as pd

from eyenet.core.errors import ArtifactError, EyenetError, InvalidParameterError, UnknownNameError
from eyenet.core.redact import redact
from eyenet.lifecycle import audit
from eyenet.lifecycle.paths import HOME, home  # noqa: F401 - re-exported: callers use registry.home()

if TYPE_CHECKING:
    from eyenet.core.reference import DriftReference

# MLflow's usage telemetry races on its own session variable when several runs and threads
# share a process (seen as KeyError '_MLFLOW_TELEMETRY_SESSION_ID'); it is read when MLflow is
# imported, so it is switched off here, before that
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ENV_URI = "EYENET_MLFLOW_URI"
EXPERIMENT = "eyenet"
CHAMPION = "champion"
CHALLENGER = "challenger"
#: folder of the model files inside the logged MLflow model
MODEL_DATA = "eyenet_model"
#: the version's drift reference, beside its other meta JSON under ``eyenet/`` in the run
DRIFT_REFERENCE = "drift_reference.json"
#: versions read per registry call when listing every model
MAX_LISTED = 1000
_NAME_PART = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # fullmatch: `$` would take a trailing newline


class RegistryError(EyenetError):
    """The tracking server is unreachable or refused an operation."""

    exit_code = 5


# ----------------------------------------------------------------------------------------------
# where


def default_uri(root: str | Path | None = None) -> str:
    return f"sqlite:///{home(root) / 'mlflow.db'}"


def tracking_uri(root: str | Path | None = None) -> str:
    """``EYENET_MLFLOW_URI`` when set, else the embedded SQLite store."""
    return os.environ.get(ENV_URI) or default_uri(root)


def model_name(family: str, *, group: str = "default", tenant: str = "default") -> str:
    """Registered-model name ``<tenant>.<group>.<family>``; each part lower-case ``[a-z0-9_-]``."""
    for what, part in (("tenant", tenant), ("group", group), ("family", family)):
        if not isinstance(part, str) or not _NAME_PART.fullmatch(part):
            raise InvalidParameterError(
                f"{what} {part!r} must be 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"
            )
    return f"{tenant}.{group}.{family}"


def slug(text: str) -> str:
    """A name part from free text: ``realKnownCause/nyc_taxi.csv`` -> ``realknowncause-nyc_taxi``."""
    t = re.sub(r"\.(csv|parquet|pq)\Z", "", str(text).lower().strip())
    t = re.sub(r"[^a-z0-9_-]+", "-", t).strip("-_")
    return (t or "series")[:63]


def split_name(name: str) -> tuple[str, str, str]:
    """``(tenant, group, family)`` of a registered-model name."""
    parts = name.split(".")
    if len(parts) != 3:
        raise UnknownNameError(f"{name!r} is not an EyeNet model name (<tenant>.<group>.<family>)")
    return parts[0], parts[1], parts[2]


# ----------------------------------------------------------------------------------------------
# records


@dataclass
class VersionInfo:
    """One registered model version, as ``eyenet models`` lists it."""

    name: str
    version: int
    run_id: str
    aliases: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created: float = 0.0  # unix seconds

    @property
    def family(self) -> str:
        return split_name(self.name)[2]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` for MLflow params (values as JSON text)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


# ----------------------------------------------------------------------------------------------
# the pyfunc flavour: MLflow calls _load_pyfunc(data_path) of the loader_module


class PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` returns for an EyeNet version: scores a DataFrame."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        values = model_input["value"] if isinstance(model_input, pd.DataFrame) else model_input
        out = self.model.score(np.asarray(values, dtype=float))
        return pd.DataFrame({"score": out.score, "calibrated": out.calibrated, "raw": out.raw, "alarm": out.alarm})


def _load_pyfunc(data_path: str) -> PyfuncModel:
    from eyenet.core.model import AnomalyModel

    return PyfuncModel(AnomalyModel.load(data_path))


def _requirement() -> str:
    """The pip requirement of the logged model: this EyeNet release (the installed package's metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"eyenet=={version('eyenet')}"
    except PackageNotFoundError:  # run from a source tree
        return "eyenet"


def _signature() -> Any:
    from mlflow.models import infer_signature

    x = pd.DataFrame({"timestamp": pd.date_range("2026-01-01", periods=3, freq="5min"), "value": [1.0, 2.0, 3.0]})
    y = pd.DataFrame({"score": [0.1], "calibrated": [0.1], "raw": [0.1], "alarm": [False]})
    return infer_signature(x, y)


# ----------------------------------------------------------------------------------------------
# the registry


class Registry:
    """Runs, versions and aliases in one MLflow tracking store (``uri``, default :func:`tracking_uri`).

    ``audit_log`` is where the lifecycle events of its versions are written (default: the log that
    belongs with the store, :func:`eyenet.lifecycle.audit.default_uri`)."""

    def __init__(self, uri: str | None = None, *, experiment: str = EXPERIMENT, timeout: float = 10.0,
                 artifact_root: str | None = None, audit_log: audit.AuditLog | None = None) -> None:
        self.uri = uri or tracking_uri()
        self.audit_log = audit_log
        self.experiment = experiment
        # where a new experiment keeps its artifacts: beside an embedded store, else the server's choice
        if artifact_root is None and self.uri.startswith("sqlite:///"):
            artifact_root = (Path(self.uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
        self.artifact_root = artifact_root
        self.timeout = timeout
        self._client: Any = None
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Registry({redact(self.uri)!r})"

    @property
    def is_embedded(self) -> bool:
        return self.uri.startswith("sqlite:") or self.uri.startswith("file:") or "://" not in self.uri

    # -- connection ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            if self.uri.startswith("http"):
                # fail fast on an unreachable server instead of retrying for minutes
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self.timeout)))
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            if self.uri.startswith("sqlite:///"):
                Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn MLflow and transport failures into one :class:`RegistryError` naming ``what``."""
        try:
            yield
        except EyenetError:
            raise
        except Exception as exc:  # noqa: BLE001 - MlflowException, requests errors, sqlalchemy errors
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RegistryError(redact(f"MLflow at {self.uri}: {what} failed: {text[:300]}")) from None

    def check(self) -> "Registry":
        """Raise :class:`RegistryError` unless the tracking store answers."""
        with self._calling("connecting"):
            self.client.search_experiments(max_results=1)
        return self

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            with self._calling(f"opening experiment {self.experiment!r}"):
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=self.artifact_root
                    )
                else:
                    self._experiment_id = exp.experiment_id
        return self._experiment_id

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, name: str, tags: dict[str, str] | None = None) -> str:
        """Create a run (status RUNNING) and return its id."""
        with self._calling("creating a run"):
            run = self.client.create_run(self.experiment_id(), run_name=name, tags=tags or {})
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and np.isfinite(v)]
        with self._calling("logging metrics"):
            for start in range(0, len(items), 900):
                self.client.log_batch(run_id, metrics=items[start : start + 900])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        with self._calling("ending a run"):
            self.client.set_terminated(run_id, status)

    # -- registering ----------------------------------------------------------------------------
    def register(
        self,
        model: Any,
        *,
        family: str | None = None,
        group: str = "default",
        tenant: str = "default",
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
        run_id: str | None = None,
        alias: str | None = CHALLENGER,
        probe: np.ndarray | None = None,
        log_history: bool = True,
    ) -> VersionInfo:
        """Log a fitted model into a run (``run_id`` or a new one) and register a version.

        The logged files are loaded back and must score ``probe`` (default: the
        model's own held-out reference) exactly as the in-memory model does
        before any version is created; if anything fails the run is marked
        FAILED and nothing is registered. The probe (training values, in every
        training path) and the model's scores on it are also recorded as the
        version's drift reference (:meth:`drift_reference`). Every registered
        version gets TRAIN and REGISTER events in the audit log (:mod:`eyenet.lifecycle.audit`).
        """
        import mlflow

        from eyenet.core.reference import DriftReference

        family = family or model.name
        name = model_name(family, group=group, tenant=tenant)
        self.check()
        run_id = run_id or self.start_run(f"train-{family}", {"eyenet.family": family})
        try:
            x = probe if probe is not None else getattr(model, "fit_tail_", None)
            if x is None:
                raise InvalidParameterError(f"{name}: registering needs a probe series to verify the stored model")
            with tempfile.TemporaryDirectory(prefix="eyenet-register-") as tmp:
                tmpd = Path(tmp)
                model.save(tmpd / MODEL_DATA)
                (tmpd / "meta").mkdir()
                (tmpd / "meta" / "model_config.json").write_text(json.dumps(model.to_dict(), indent=2))
                (tmpd / "meta" / "calibration.json").write_text(json.dumps(model.calibration_summary(), indent=2))
                (tmpd / "meta" / "features.json").write_text(json.dumps(model.feature_config(), indent=2))
                (tmpd / "meta" / DRIFT_REFERENCE).write_text(json.dumps(DriftReference.from_model(model, x).to_dict()))
                if data:
                    (tmpd / "meta" / "data.json").write_text(json.dumps(data, indent=2, default=str))
                with self._calling("logging parameters and artifacts"):
                    params = flatten(model.to_dict())
                    from mlflow.entities import Param

                    self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
                    self.client.log_artifacts(run_id, str(tmpd / "meta"), "eyenet")
                    for k, v in {"eyenet.family": family, "eyenet.group": group, "eyenet.tenant": tenant}.items():
                        self.client.set_tag(run_id, k, v)
                if log_history:
                    self.log_history(run_id, model)
                self.log_metrics(run_id, metrics or {})
                with self._calling("logging the model"):
                    mlflow.set_tracking_uri(self.uri)
                    # the fluent run must belong to the active experiment, whatever another
                    # caller (a Tune callback, a user's notebook) made active before
                    mlflow.set_experiment(experiment_id=self.experiment_id())
                    with mlflow.start_run(run_id=run_id):
                        info = mlflow.pyfunc.log_model(
                            name="model",
                            loader_module="eyenet.lifecycle.registry",
                            data_path=str(tmpd / MODEL_DATA),
                            signature=_signature(),
                            pip_requirements=[_requirement()],
                        )
            # verify before registering: the stored files must score as the fitted model does
            with tempfile.TemporaryDirectory(prefix="eyenet-verify-") as tmp:
                back = self._load_from_uri(info.model_uri, Path(tmp), what=f"{name} (new)")
                if not _same_scores(model, back, x):
                    raise ArtifactError(f"{name}: the logged model does not score as the trained one; not registered")
            with self._calling(f"registering {name}"):
                try:
                    self.client.get_registered_model(name)
                except Exception:  # noqa: BLE001 - not found
                    self.client.create_registered_model(name, tags={"eyenet.family": family})
                mv = self.client.create_model_version(
                    name, info.model_uri, run_id=run_id, tags={**(tags or {}), "eyenet.family": family},
                    model_id=info.model_id,
                )
            try:
                with self._calling(f"setting alias {alias!r} on {name}"):
                    if alias:
                        self.client.set_registered_model_alias(name, alias, mv.version)
                    for k, v in (metrics or {}).items():
                        if v is not None and np.isfinite(v):
                            self.client.set_model_version_tag(name, mv.version, f"metric.{k}", f"{float(v):.6g}")
            except RegistryError:
                with contextlib.suppress(Exception):
                    self.client.delete_model_version(name, mv.version)
                raise
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, "FAILED")
            raise
        self.end_run(run_id)
        self._audit_registration(name, int(mv.version), run_id, alias, metrics, data)
        return self.version(name, int(mv.version))

    def _audit_registration(self, name: str, version: int, run_id: str, alias: str | None,
                            metrics: dict[str, float] | None, data: dict[str, Any] | None) -> None:
        """TRAIN and REGISTER audit events: every version, whichever trainer made it, passes here."""
        trained_on = f"trained on {data.get('series')} ({data.get('rows')} rows)" if data else "trained"
        audit.record(self, audit.TRAIN, name, version, reason=f"{trained_on}, run {run_id}", metrics=metrics,
                     mirror=False)
        audit.record(self, audit.REGISTER, name, version, reason=f"registered{f' as {alias}' if alias else ''}",
                     status=audit.REGISTERED)

    def log_history(self, run_id: str, model: Any) -> None:
        """Training curves (per-epoch losses) of every torch part of the model, as stepped metrics."""
        for prefix, history in model.training_history().items():
            for rec in history:
                self.log_metrics(
                    run_id,
                    {f"{prefix}train_loss": rec["train_loss"], f"{prefix}val_loss": rec["val_loss"]},
                    step=int(rec["epoch"]),
                )

    # -- reading -------------------------------------------------------------------------------
    def version(self, name: str, version: int | None = None, *, alias: str | None = None) -> VersionInfo:
        """One version by number or alias (:class:`UnknownNameError` when there is none)."""
        split_name(name)
        with self._calling(f"reading {name}"):
            try:
                mv = (
                    self.client.get_model_version_by_alias(name, alias)
                    if alias is not None
                    else self.client.get_model_version(name, str(version))
                )
            except Exception as exc:  # noqa: BLE001
                if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower() or "INVALID_PARAMETER" in str(exc):
                    what = f"alias {alias!r}" if alias is not None else f"version {version}"
                    raise UnknownNameError(f"model {name!r} has no {what}") from None
                raise
        return self._info(mv)

    def _info(self, mv: Any) -> VersionInfo:
        metrics = {k[len("metric.") :]: float(v) for k, v in (mv.tags or {}).items() if k.startswith("metric.")}
        tags = {k: v for k, v in (mv.tags or {}).items() if not k.startswith("metric.")}
        return VersionInfo(
            name=mv.name,
            version=int(mv.version),
            run_id=mv.run_id or "",
            aliases=sorted(getattr(mv, "aliases", []) or []),
            metrics=metrics,
            tags=tags,
            created=(mv.creation_timestamp or 0) / 1000.0,
        )

    def models(self) -> list[str]:
        """Names of the registered EyeNet models."""
        with self._calling("listing models"):
            names = [m.name for m in self.client.search_registered_models(max_results=1000)]
        return sorted(n for n in names if n.count(".") == 2)

    def aliases(self) -> dict[str, dict[str, int]]:
        """Every EyeNet model's aliases (``{name: {alias: version}}``) in one registry call a thousand models."""
        found = []
        with self._calling("reading aliases"):
            token = None
            while True:
                page = self.client.search_registered_models(max_results=1000, page_token=token)
                found.extend(page)
                token = getattr(page, "token", None)
                if not token:
                    break
        return {m.name: {a: int(v) for a, v in (m.aliases or {}).items()} for m in found if m.name.count(".") == 2}

    def versions(self, name: str | None = None) -> list[VersionInfo]:
        """Every version of ``name`` (or of every model: two paged registry searches, however many
        models there are), newest first within a model."""
        if name is not None:
            with self._calling(f"listing versions of {name}"):
                found = list(self.client.search_model_versions(f"name='{name}'", max_results=1000))
            if not found:
                raise UnknownNameError(f"no registered model {name!r}")
            with self._calling(f"reading aliases of {name}"):
                aliases = {name: {a: int(v) for a, v in (self.client.get_registered_model(name).aliases or {}).items()}}
        else:
            aliases = self.aliases()
            found = []
            with self._calling("listing versions"):
                token = None
                while True:
                    page = self.client.search_model_versions(None, max_results=MAX_LISTED, page_token=token)
                    found.extend(mv for mv in page if mv.name in aliases)
                    token = getattr(page, "token", None)
                    if not token:
                        break
        out: list[VersionInfo] = []
        for info in sorted((self._info(mv) for mv in found), key=lambda v: (v.name, -v.version)):
            info.aliases = sorted(a for a, v in aliases.get(info.name, {}).items() if v == info.version)
            out.append(info)
        return out

    def drift_reference(self, name: str, version: int | None = None, *, alias: str | None = None) -> DriftReference | None:
        """The :class:`~eyenet.core.reference.DriftReference` recorded with a version (by number or alias);
        None for a version registered before references were recorded."""
        from eyenet.core.reference import DriftReference

        info = self.version(name, version, alias=alias)
        path = f"eyenet/{DRIFT_REFERENCE}"
        with self._calling(f"reading the drift reference of {name} v{info.version}"):
            if path not in {f.path for f in self.client.list_artifacts(info.run_id, "eyenet")}:
                return None
            with tempfile.TemporaryDirectory(prefix="eyenet-drift-") as tmp:
                text = Path(self.client.download_artifacts(info.run_id, path, tmp)).read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{name} v{info.version}: {DRIFT_REFERENCE} is not JSON ({exc})") from None
        return DriftReference.from_dict(d, what=f"{name} v{info.version} {DRIFT_REFERENCE}")

    def data_record(self, name: str, version: int) -> dict[str, Any] | None:
        """What a version was trained on (``eyenet/data.json`` of its run), or None when not recorded."""
        info = self.version(name, version)
        if not info.run_id:
            return None
        with self._calling(f"listing the files of {name} version {version}"):
            files = {f.path for f in self.client.list_artifacts(info.run_id, "eyenet")}
        if "eyenet/data.json" not in files:
            return None
        with tempfile.TemporaryDirectory(prefix="eyenet-data-") as tmp, \
                self._calling(f"reading the training-data record of {name} version {version}"):
            local = self.client.download_artifacts(info.run_id, "eyenet/data.json", tmp)
            record = json.loads(Path(local).read_text())
        return record if isinstance(record, dict) else None

    def set_tags(self, name: str, version: int, tags: dict[str, str]) -> None:
        """Set tags on one model version (what the MLflow UI shows beside it)."""
        with self._calling(f"tagging {name} version {version}"):
            for k, v in tags.items():
                self.client.set_model_version_tag(name, str(version), k, v)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.version(name, version)
        with self._calling(f"setting alias {alias!r} on {name}"):
            self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        with self._calling(f"deleting alias {alias!r} of {name}"):
            self.client.delete_registered_model_alias(name, alias)

    def load(self, name: str, *, alias: str | None = None, version: int | None = None) -> Any:
        """The :class:`~eyenet.core.model.AnomalyModel` of a version (by alias, by number, or the latest)."""
        if alias is None and version is None:
            versions = self.versions(name)
            version = versions[0].version
        info = self.version(name, version, alias=alias)
        with tempfile.TemporaryDirectory(prefix="eyenet-load-") as tmp:
            return self._load_from_uri(f"models:/{name}/{info.version}", Path(tmp), what=f"{name} v{info.version}")

    def _load_from_uri(self, uri: str, dst: Path, *, what: str) -> Any:
        import mlflow
        import yaml

        from eyenet.core.model import AnomalyModel

        with self._calling(f"downloading {what}"):
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_registry_uri(self.uri)
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        try:
            meta = yaml.safe_load((local / "MLmodel").read_text())
            flavor = meta["flavors"]["python_function"]
        except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
            raise ArtifactError(f"{what}: not a readable MLflow model ({type(exc).__name__}: {exc})") from None
        if flavor.get("loader_module") != "eyenet.lifecycle.registry" or "data" not in flavor:
            raise ArtifactError(
                f"{what}: not an EyeNet model (python_function loader {flavor.get('loader_module')!r}); "
                "refusing to load it, since that could unpickle arbitrary code"
            )
        return AnomalyModel.load(local / flavor["data"])


def _same_scores(a: Any, b: Any, x: np.ndarray) -> bool:
    sa, sb = a.score(x), b.score(x)
    return all(
        np.array_equal(p, q, equal_nan=True) for p, q in ((sa.raw, sb.raw), (sa.calibrated, sb.calibrated), (sa.score, sb.score))
    )
