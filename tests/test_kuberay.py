"""deploy/kuberay/ and the Dockerfile: valid for KubeRay and Kubernetes, in step with the typed config.

The RayService is validated against KubeRay's CRD (``../shared/kuberay``; skipped when absent) the
way ``kubectl apply`` with strict field validation would: types, required fields, and no unknown
fields. The Deployment, StatefulSet and Services are validated against the core/v1 schemas that
the CRD embeds (a RayService holds a PodTemplateSpec and a Service). No cluster is needed.
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"
RAYSERVICE = KUBERAY / "rayservice.yaml"
SECRET_EXAMPLE = KUBERAY / "secret.example.yaml"
CRDS = REPO.parent / "shared" / "kuberay"  # the workspace's shared/ beside the repository
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)]


@pytest.fixture()
def rayservice() -> dict:
    (doc,) = _docs(RAYSERVICE)
    return doc


def _ray_groups(rs: dict) -> list[tuple[str, dict]]:
    """(name, group) of the head and every worker group."""
    spec = rs["spec"]["rayClusterConfig"]
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def _ray_containers(rs: dict) -> list[tuple[str, dict]]:
    return [(name, c) for name, g in _ray_groups(rs) for c in g["template"]["spec"]["containers"]]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# --- the CRD schemas ------------------------------------------------------------------------------

def _crd_schema(file: str) -> tuple[dict, dict]:
    path = CRDS / file
    if not path.is_file():
        pytest.skip(f"KubeRay's CRDs are not at {CRDS} (shared/kuberay beside the repository)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB of YAML
    version = next(v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage"))
    return crd, version


def strict(schema: dict) -> dict:
    """``schema`` rejecting unknown fields wherever it lists the known ones, as the API server's strict
    field validation (kubectl's default) does; ``x-kubernetes-preserve-unknown-fields`` stays open."""
    schema = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def validator(schema: dict) -> jsonschema.Draft202012Validator:
    """A validator for ``schema`` (not checked against the metaschema on every call, as
    ``jsonschema.validate`` does: that takes seconds for a CRD)."""
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def rayservice_crd() -> tuple[dict, dict]:
    crd, version = _crd_schema("ray.io_rayservices.yaml")
    return crd, version


@pytest.fixture(scope="module")
def rayservice_schema(rayservice_crd) -> jsonschema.Draft202012Validator:
    return validator(strict(rayservice_crd[1]["schema"]["openAPIV3Schema"]))


@pytest.fixture(scope="module")
def core_schemas(rayservice_crd) -> dict[str, jsonschema.Draft202012Validator]:
    """core/v1 PodTemplateSpec and Service, as embedded in the RayService CRD."""
    spec = rayservice_crd[1]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    head = spec["rayClusterConfig"]["properties"]["headGroupSpec"]["properties"]
    return {"PodTemplateSpec": validator(strict(head["template"])), "Service": validator(strict(spec["serveService"]))}


def test_rayservice_validates_against_kuberays_crd(rayservice, rayservice_crd, rayservice_schema):
    crd, version = rayservice_crd
    assert rayservice["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert rayservice["kind"] == crd["spec"]["names"]["kind"]
    rayservice_schema.validate(rayservice)


def test_its_cluster_is_also_a_valid_raycluster_spec(rayservice):
    _, version = _crd_schema("ray.io_rayclusters.yaml")
    spec_schema = strict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    validator(spec_schema).validate(rayservice["spec"]["rayClusterConfig"])


def test_the_crd_alone_accepts_unknown_fields_so_validation_is_strict(rayservice, rayservice_crd):
    """Kubernetes keeps unknown fields out of a CRD's schema; without strict() a typo would pass."""
    broken = copy.deepcopy(rayservice)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 8
    validator(rayservice_crd[1]["schema"]["openAPIV3Schema"]).validate(broken)


def _group(name: str):
    def get(rs: dict) -> dict:
        return next(g for n, g in _ray_groups(rs) if n == name)
    return get


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda rs: _group("cpu")(rs).__setitem__("maxReplica", 8), id="typo-in-worker-group"),
    pytest.param(lambda rs: _group("gpu")(rs).pop("groupName"), id="worker-group-without-name"),
    pytest.param(lambda rs: _group("cpu")(rs).__setitem__("minReplicas", "one"), id="replicas-not-int"),
    pytest.param(lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"].pop("template"), id="head-without-template"),
    pytest.param(lambda rs: rs["spec"].pop("rayClusterConfig"), id="no-cluster"),
    pytest.param(lambda rs: rs["spec"]["rayClusterConfig"]["authOptions"].__setitem__("mode", "tokens"), id="bad-auth-mode"),
    pytest.param(lambda rs: _group("cpu")(rs)["template"]["spec"]["containers"][0]["resources"]["limits"]
                 .__setitem__("cpu", "four"), id="bad-quantity"),
    pytest.param(lambda rs: _group("gpu")(rs)["template"]["spec"]["containers"][0].__setitem__("imagePullPolicyy", "Always"),
                 id="typo-in-container"),
    pytest.param(lambda rs: rs["spec"].__setitem__("serveConfigV2", {"applications": []}), id="serve-config-not-a-string"),
])
def test_broken_copies_fail_validation(rayservice, rayservice_schema, mutate):
    broken = copy.deepcopy(rayservice)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        rayservice_schema.validate(broken)


def test_kuberays_own_checks_hold(rayservice):
    """What the operator checks beyond the schema (ray-operator/controllers/ray/utils/validation.go)."""
    spec = rayservice["spec"]["rayClusterConfig"]
    assert spec["enableInTreeAutoscaling"] is True
    assert tuple(int(p) for p in spec["rayVersion"].split(".")) >= (2, 52, 0)  # token auth needs Ray 2.52+
    for name, g in _ray_groups(rayservice):
        ray_start_resources = {"num-cpus", "num-gpus", "memory", "resources"} & set(g.get("rayStartParams", {}))
        assert not (ray_start_resources and g.get("resources")), f"{name}: resources in two places"
        assert g["template"]["spec"]["containers"], name
        if name != "head":
            assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], name


def test_kubectl_reads_the_manifests_as_these_tests_do(tmp_path):
    """The manifests share blocks through YAML anchors: kubectl must expand them to what PyYAML reads.
    `kubectl kustomize` parses them offline, with kubectl's own YAML reader."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    files = sorted(p.name for p in KUBERAY.glob("*.yaml")
                   if p.name not in ("postgres-trial.yaml", SECRET_EXAMPLE.name))  # same Service name twice
    for name in files:
        shutil.copy(KUBERAY / name, tmp_path / name)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": files}))
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    ours = sorted((d for name in files for d in _docs(KUBERAY / name)), key=key)
    assert sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key) == ours


# --- the serve config and the environment follow the typed config ---------------------------------

@pytest.fixture()
def kuberay_config(monkeypatch):
    from eyenet.serve.app import _SETTINGS_ENV, profile

    for var in _SETTINGS_ENV:
        monkeypatch.delenv(var, raising=False)
    return profile("kuberay")


def test_serve_config_is_what_the_generator_writes(kuberay_config):
    """Edit the profile (eyenet.serve.app.profile), then:
    python -m eyenet.serve.app --profile kuberay --manifest deploy/kuberay/rayservice.yaml"""
    from eyenet.serve.app import serve_config, with_serve_config

    text = RAYSERVICE.read_text()
    assert with_serve_config(text, kuberay_config) == text
    (doc,) = [d for d in yaml.safe_load_all(text) if d]
    assert yaml.safe_load(doc["spec"]["serveConfigV2"]) == serve_config(kuberay_config)


def test_a_hand_edit_of_the_serve_config_is_caught_and_regenerated(kuberay_config):
    from eyenet.serve.app import with_serve_config

    text = RAYSERVICE.read_text()
    edited = text.replace("    gpu_fraction: 0.2\n", "    gpu_fraction: 0.5\n", 1)
    assert edited != text
    assert with_serve_config(edited, kuberay_config) == text
    with pytest.raises(ValueError, match="serveConfigV2"):
        with_serve_config("apiVersion: ray.io/v1\nkind: RayService\n", kuberay_config)


def test_serve_config_is_valid_for_ray_serve_and_the_app(rayservice, kuberay_config):
    from ray.serve.schema import ServeDeploySchema

    from eyenet.serving.settings import AppConfig

    cfg = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(cfg)
    (app,) = cfg["applications"]
    assert app["import_path"] == "eyenet.serve.app:app_builder"
    assert AppConfig(**app["args"]) == kuberay_config


def test_production_profile_uses_the_in_cluster_services_and_postgres(kuberay_config):
    cfg = kuberay_config
    services = {d["metadata"]["name"]: d for _, d in _all_docs() if d["kind"] == "Service"}
    mlflow = urlsplit(cfg.mlflow_uri)
    assert mlflow.scheme == "http" and mlflow.hostname in services
    assert mlflow.port in [p["port"] for p in services[mlflow.hostname]["spec"]["ports"]]
    for uri in (cfg.state_uri, cfg.controller.audit_uri):
        db = urlsplit(uri)
        assert db.scheme == "postgresql" and db.hostname in services and db.password is None, uri
    # the trial server listens where the URIs point; the managed one is an alias of that name
    trial = next(d for d in _docs(KUBERAY / "postgres-trial.yaml") if d["kind"] == "Service")
    assert trial["metadata"]["name"] == urlsplit(cfg.state_uri).hostname
    assert urlsplit(cfg.state_uri).port in [p["port"] for p in trial["spec"]["ports"]]
    (managed,) = _docs(KUBERAY / "postgres.yaml")
    assert managed["spec"]["type"] == "ExternalName" and managed["metadata"]["name"] == trial["metadata"]["name"]


def test_every_ray_container_has_the_profiles_uris_the_password_and_serves_fast_path(rayservice, kuberay_config):
    from eyenet.cli.cluster import SERVE_ENV

    cfg = kuberay_config
    expected = {"EYENET_MLFLOW_URI": cfg.mlflow_uri, "EYENET_STATE_URI": cfg.state_uri,
                "EYENET_AUDIT_URI": cfg.controller.audit_uri, "EYENET_KEYS_URI": cfg.auth.keys_uri, **SERVE_ENV}
    for name, c in _ray_containers(rayservice):
        env = _env(c)
        assert {k: env.get(k, {}).get("value") for k in expected} == expected, name
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "eyenet-secrets", "key": "pg-password"}
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env[var]["valueFrom"]["secretKeyRef"]["optional"] is True, (name, var)


def test_actors_are_pinned_to_the_head_and_only_the_head_offers_it(rayservice, kuberay_config):
    wanted = kuberay_config.actor_resources
    assert wanted
    for name, g in _ray_groups(rayservice):
        offered = g.get("resources", {})
        for res, amount in wanted.items():
            if name == "head":
                assert float(offered.get(res, 0)) >= amount, offered
            else:
                assert res not in offered, f"worker group {name} offers {res}"


def test_torch_families_fit_the_gpu_group_and_the_others_stay_on_cpu(rayservice, kuberay_config):
    from eyenet.serving.settings import TORCH_FAMILIES

    cfg = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = cfg["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    gpu_group = _group("gpu")(rayservice)
    gpus_per_pod = float(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    needed_at_minimum = 0.0
    for family in kuberay_config.families:
        opts = deployments[f"family-{family}"]
        gpus = opts["ray_actor_options"].get("num_gpus", 0)
        if family in TORCH_FAMILIES:
            assert gpus > 0, family
            needed_at_minimum += gpus * max(1, opts["autoscaling_config"]["min_replicas"])  # every one in use
        else:
            assert gpus == 0, family
    assert deployments["router"]["ray_actor_options"].get("num_gpus", 0) == 0
    assert 0 < needed_at_minimum <= gpus_per_pod * gpu_group["maxReplicas"]


# --- Kubernetes objects ------------------------------------------------------------------------------

_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q: object) -> float:
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(q))
    assert m and m.group(2) in _UNITS, f"not a quantity: {q!r}"
    return float(m.group(1)) * _UNITS[m.group(2)]


def _all_containers() -> list[tuple[str, dict]]:
    out = []
    for path, d in _all_docs():
        where = f"{path.name}:{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "RayService":
            out += [(f"{where}:{name}", c) for name, c in _ray_containers(d)]
            out.append((f"{where}:autoscaler", d["spec"]["rayClusterConfig"]["autoscalerOptions"]))
        elif d["kind"] in ("Deployment", "StatefulSet"):
            spec = d["spec"]["template"]["spec"]
            out += [(where, c) for c in spec.get("initContainers", []) + spec["containers"]]
    return out


def test_every_container_has_requests_and_limits():
    containers = _all_containers()
    assert len(containers) >= 6
    for where, c in containers:
        res = c["resources"]
        for kind in ("cpu", "memory"):
            assert kind in res["requests"] and kind in res["limits"], (where, kind)
            assert quantity(res["requests"][kind]) <= quantity(res["limits"][kind]), (where, kind)
        if "nvidia.com/gpu" in res["requests"] or "nvidia.com/gpu" in res["limits"]:
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"], where


def test_plain_objects_are_well_formed():
    kinds = set()
    for path, d in _all_docs():
        api = d.get("apiVersion")
        assert api == "v1" or re.fullmatch(r"[a-z0-9.-]+/v[0-9]+(?:(?:alpha|beta)[0-9]+)?", str(api)), (path, api)
        assert isinstance(d.get("kind"), str) and d["kind"][:1].isupper(), path
        name = d.get("metadata", {}).get("name")
        assert name and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, (path, name)
        kinds.add(d["kind"])
        if d["kind"] in ("Deployment", "StatefulSet"):
            assert d["apiVersion"] == "apps/v1"
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), path
    assert {"RayService", "Deployment", "StatefulSet", "Service", "Secret", "PodMonitor"} <= kinds


def test_pod_templates_and_services_validate_against_the_core_schemas(core_schemas):
    checked = 0
    for path, d in _all_docs():
        if d["kind"] in ("Deployment", "StatefulSet"):
            core_schemas["PodTemplateSpec"].validate(d["spec"]["template"])
            checked += 1
        elif d["kind"] == "Service":
            core_schemas["Service"].validate(d)
            checked += 1
    assert checked >= 5
    (mlflow,) = [d for _, d in _all_docs() if d["kind"] == "Deployment"]
    broken = copy.deepcopy(mlflow["spec"]["template"])
    broken["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(jsonschema.ValidationError):
        core_schemas["PodTemplateSpec"].validate(broken)


def test_every_service_selects_pods_defined_here():
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for _, d in _all_docs()
                  if d["kind"] in ("Deployment", "StatefulSet")]
    for path, d in _all_docs():
        if d["kind"] == "Service" and d["spec"].get("type") != "ExternalName":
            sel = d["spec"]["selector"]
            assert any(sel.items() <= labels.items() for labels in pod_labels), (path, sel)


def test_mlflow_server_uses_postgres_proxied_artifacts_and_the_secret(kuberay_config):
    (mlflow,) = [d for _, d in _all_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "eyenet-mlflow"]
    (c,) = mlflow["spec"]["template"]["spec"]["containers"]
    command = " ".join(c["command"] + c["args"])
    assert "mlflow server" in command and "--serve-artifacts" in command and "--artifacts-destination" in command
    assert '--backend-store-uri "postgresql+psycopg://${PGUSER}@${PGHOST}:${PGPORT}/${PGDATABASE}"' in command
    assert "--allowed-hosts" in command and "eyenet-mlflow:*" in command  # MLflow refuses unknown Host headers
    env = _env(c)
    db = urlsplit(kuberay_config.state_uri)
    assert (env["PGHOST"]["value"], int(env["PGPORT"]["value"]), env["PGUSER"]["value"]) == (db.hostname, db.port, db.username)
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "eyenet-secrets"
    port = urlsplit(kuberay_config.mlflow_uri).port
    assert f"--port {port}" in command and any(p["containerPort"] == port for p in c["ports"])


def test_podmonitor_scrapes_the_app_metrics_on_the_head_only(rayservice):
    (pm,) = [d for _, d in _all_docs() if d["kind"] == "PodMonitor"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    selector = pm["spec"]["selector"]["matchLabels"]
    groups = dict(_ray_groups(rayservice))
    assert selector.items() <= groups["head"]["template"]["metadata"]["labels"].items()
    for name, g in groups.items():
        if name != "head":
            assert not selector.items() <= g["template"]["metadata"].get("labels", {}).items(), name
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    head_ports = {p["name"]: p["containerPort"] for p in groups["head"]["template"]["spec"]["containers"][0]["ports"]}
    assert endpoint["path"] == "/metrics" and head_ports[endpoint["port"]] == 8000
    assert endpoint["authorization"]["credentials"]["name"] == "eyenet-metrics"


# --- secrets -----------------------------------------------------------------------------------------

def _secret_refs(node: object, found: list[tuple[str, str | None, bool]]) -> list[tuple[str, str | None, bool]]:
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        if ref:
            found.append((ref["name"], ref["key"], bool(ref.get("optional"))))
        for v in node.values():
            _secret_refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _secret_refs(v, found)
    return found


def test_every_secret_referenced_is_in_the_example_template(rayservice):
    example = {(d["metadata"]["name"], k) for d in _docs(SECRET_EXAMPLE) for k in d["stringData"]}
    example_text = SECRET_EXAMPLE.read_text()
    refs = []
    for _, d in _all_docs():
        refs += _secret_refs(d, [])
    assert refs
    for name, key, optional in refs:
        assert (name, key) in example or (optional and f"# {key}:" in example_text), (name, key)
    token = rayservice["spec"]["rayClusterConfig"]["authOptions"]["secretName"]
    assert (token, "auth_token") in example  # the key KubeRay reads
    (pm,) = [d for _, d in _all_docs() if d["kind"] == "PodMonitor"]
    cred = pm["spec"]["podMetricsEndpoints"][0]["authorization"]["credentials"]
    assert (cred["name"], cred["key"]) in example


_SECRETISH = re.compile(r"pass|secret|token|credential|api_?key", re.I)


def test_no_secret_values_anywhere_in_deploy_but_the_marked_example():
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        assert not re.search(r"://[^/\s@'\"]+:[^/\s@'\"]+@", text), f"{path}: a URI with a password"
        if path.suffix not in (".yaml", ".yml"):
            continue
        for d in yaml.safe_load_all(text):
            if not d:
                continue
            if d["kind"] == "Secret":
                assert path == SECRET_EXAMPLE, f"{path}: Secrets belong in {SECRET_EXAMPLE.name} only"
                assert "EXAMPLE ONLY" in text
                for key, value in {**d.get("stringData", {}), **d.get("data", {})}.items():
                    assert value == "EXAMPLE-CHANGE-ME", (path, key)
                continue
            for _, c in _containers_of(d):
                for e in c.get("env", []):
                    if _SECRETISH.search(e["name"]):
                        assert "value" not in e and "secretKeyRef" in e["valueFrom"], (path, e["name"])
            for _, g in (_ray_groups(d) if d["kind"] == "RayService" else []):
                assert not any(_SECRETISH.search(k) for k in g.get("rayStartParams", {})), path


def _containers_of(d: dict) -> list[tuple[str, dict]]:
    if d["kind"] == "RayService":
        return _ray_containers(d)
    if d["kind"] in ("Deployment", "StatefulSet"):
        return [(d["metadata"]["name"], c) for c in d["spec"]["template"]["spec"]["containers"]]
    return []


# --- the image ---------------------------------------------------------------------------------------

def _dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for instr, rest in instructions if instr == "ARG" and "=" in rest)


def _pin(name: str) -> str:
    from packaging.requirements import Requirement

    return next(str(r.specifier) for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.name == name)


def test_image_is_rays_official_one_at_the_pinned_ray_and_python():
    from packaging.requirements import Requirement

    ins = _dockerfile()
    args = _args(ins)
    (base,) = [rest for instr, rest in ins if instr == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-py311-${VARIANT}"
    ray_req = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("ray"))
    assert args["RAY_VERSION"] in ray_req.specifier, (args["RAY_VERSION"], str(ray_req.specifier))
    assert "Programming Language :: Python :: 3.11" in PYPROJECT["project"]["classifiers"]
    assert args["VARIANT"] == "cpu"
    # the RayService runs this image at the same Ray version
    (rs,) = _docs(RAYSERVICE)
    assert rs["spec"]["rayClusterConfig"]["rayVersion"] == args["RAY_VERSION"]


def test_image_installs_the_pinned_torch_cpu_build_for_cpu_and_then_eyenet():
    ins = _dockerfile()
    assert _pin("torch") == f"=={_args(ins)['TORCH_VERSION']}"
    (run,) = [rest for instr, rest in ins if instr == "RUN" and "pip install" in rest]
    cpu_branch = run.split('if [ "$VARIANT" = "cpu" ]; then', 1)[1].split("else", 1)[0]
    assert '"torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu' in cpu_branch
    assert run.index("torch==") < run.index("pip install --no-cache-dir /home/ray/eyenet-src")


def test_image_runs_as_a_non_root_user_with_nothing_secret_built_in():
    ins = _dockerfile()
    users = [rest for instr, rest in ins if instr == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    for instr, rest in ins:
        if instr in ("ARG", "ENV"):
            assert not _SECRETISH.search(rest.split("=")[0]), rest


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    def regex(p: str) -> re.Pattern:
        out = "".join(".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
                      for tok in re.split(r"(\*\*|\*|\?)", p))
        return re.compile(out.replace(".*/", "(.*/)?"))

    parts = path.split("/")
    excluded = False
    for p in patterns:
        neg = p.startswith("!")
        r = regex(p.lstrip("!"))
        if any(r.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not neg
    return excluded


def test_build_context_holds_what_the_image_copies_and_nothing_private():
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copied = []
    for instr, rest in _dockerfile():
        if instr == "COPY":
            srcs = [a for a in rest.split() if not a.startswith("--")][:-1]
            copied += srcs
    # what `pip install` needs: pyproject, its readme, and every package directory it maps
    setuptools = PYPROJECT["tool"]["setuptools"]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"],
              *{d.split("/")[0] for d in setuptools["package-dir"].values()}}
    assert needed <= set(copied), needed - set(copied)
    for src in copied:
        assert (REPO / src).exists(), src
        assert not _dockerignored(src, patterns), f"{src} is excluded from the build context"
    assert not _dockerignored("src/eyenet/serving/settings.py", patterns)
    for private in (".eyenet/admin.key", ".eyenet/keys.db", ".git/config", ".venv/bin/python",
                    "deploy/kuberay/secret.example.yaml", "results/x.csv", "src/eyenet/__pycache__/x.pyc"):
        assert _dockerignored(private, patterns), private


def test_images_in_the_manifests_are_this_projects_at_its_version(rayservice):
    version = PYPROJECT["project"]["version"]
    images = {name: c["image"] for name, c in _ray_containers(rayservice)}
    repos = {img.rsplit(":", 1)[0] for img in images.values()}
    assert len(repos) == 1 and repos.pop().endswith("/eyenet")
    gpu_groups = {name for name, g in _ray_groups(rayservice)
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]}
    assert gpu_groups == {"gpu"}
    for name, img in images.items():
        assert img.rsplit(":", 1)[1] == f"{version}-{'gpu' if name in gpu_groups else 'cpu'}", (name, img)
    (mlflow,) = [d for _, d in _all_docs() if d["kind"] == "Deployment"]
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"] == images["head"]
