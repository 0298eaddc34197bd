"""cluster.yaml is a valid Ray cluster-launcher config with a CPU head and autoscaled GPU workers.

Validated against the JSON schema shipped inside the installed Ray package, so a
Ray upgrade that changes the schema shows up here. No Ray cluster is started: the
setup commands that write the nodes' environment run in a scratch HOME, and the
tests read the environment a `ray start` would get.
"""
from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def schema() -> dict:
    text = resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text()
    return json.loads(text)


@pytest.fixture()
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_validates_against_rays_schema(config, schema):
    jsonschema.validate(config, schema)


def test_cluster_yaml_passes_rays_own_config_checks(config):
    # The same defaults-filling and checks `ray up` applies (pure Python, no cluster).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_has_cpu_head_and_autoscaled_gpu_workers(config):
    assert config["cluster_name"] == "eyenet"
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith("m5.")
    assert head["resources"].get("GPU", 0) == 0

    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker type offers a GPU"
    for name, t in gpu_types.items():
        assert name != config["head_node_type"]
        assert t["node_config"]["InstanceType"].startswith("g")
        assert 0 <= t["min_workers"] < t["max_workers"] <= config["max_workers"]

    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    assert any("pip install" in c for c in config["setup_commands"])


def test_ray_token_auth_is_on_on_every_node(config):
    """RAY_AUTH_MODE=token for every `ray start`, and the token file synced to the nodes."""
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c.split("ray start")[0] for c in starts), (key, starts)
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in config["setup_commands"])
    assert not any("RAY_AUTH_MODE=disabled" in c for k, v in config.items() if k.endswith("commands") for c in v)


def test_dashboard_listens_on_loopback_only(config):
    """Reached through `ray dashboard cluster.yaml` (an SSH tunnel), never on an open port."""
    (head,) = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    hosts = [arg.split("=", 1)[1] for arg in head.split() if arg.startswith("--dashboard-host")]
    assert hosts == ["127.0.0.1"], head
    assert "0.0.0.0" not in head
    assert not any("--dashboard-host" in c for c in config["worker_start_ray_commands"])


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.__setitem__("max_workers", "lots"), id="max_workers-not-int"),
        pytest.param(lambda c: c["available_node_types"]["gpu_worker"]["resources"].__setitem__("GPU", 0.5), id="fractional-gpu-resource"),
        pytest.param(lambda c: c["available_node_types"]["head"].pop("node_config"), id="missing-node-config"),
        pytest.param(lambda c: c.__setitem__("max_wrokers", 4), id="misspelt-key"),
    ],
)
def test_broken_copies_fail_validation(config, schema, mutate):
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


# --- where state lives, credentials, the head's custom resource -------------------------------------

PGPASSWORD_FILE = "~/.config/eyenet/pgpassword"


def _setup_env(config: dict, tmp_path: Path, password: str) -> tuple[dict[str, str], Path]:
    """Run every setup command but the installs in a scratch HOME, source ~/.eyenet.env as the
    `ray start` commands do, and return that environment (what every Ray process inherits)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("token\n")
    pg = home / PGPASSWORD_FILE.removeprefix("~/")
    pg.parent.mkdir(parents=True)
    pg.write_text(password + "\n")
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for cmd in config["setup_commands"]:
        if "pip install" not in cmd:
            subprocess.run(["bash", "-c", cmd], env=env, check=True, cwd=home)
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    before_start = start.split("ray start")[0].replace("ulimit -n 65536;", "")
    out = subprocess.run(["bash", "-c", f"{before_start} env -0"], env=env, check=True, cwd=home,
                         capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.split("\0") if "=" in line), home


def test_every_node_gets_mlflow_state_and_audit_uris_and_the_password_from_the_synced_file(config, tmp_path):
    env, home = _setup_env(config, tmp_path, password="s3cret-from-file")
    assert env["PGPASSWORD"] == "s3cret-from-file"
    assert env["RAY_AUTH_MODE"] == "token"
    mlflow = urlsplit(env["EYENET_MLFLOW_URI"])
    assert mlflow.scheme in ("http", "https") and mlflow.hostname and mlflow.password is None
    for var in ("EYENET_STATE_URI", "EYENET_AUDIT_URI", "EYENET_KEYS_URI"):
        uri = urlsplit(env[var])
        assert uri.scheme == "postgresql" and uri.hostname and uri.username, (var, env[var])
        assert uri.password is None, f"{var} holds a password: libpq reads PGPASSWORD"
    # the password is read when the file is sourced, never copied into a file or a command
    env_file = home / ".eyenet.env"
    assert "s3cret-from-file" not in env_file.read_text()
    assert ". ~/.eyenet.env" in (home / ".bashrc").read_text()
    assert config["file_mounts"].get(PGPASSWORD_FILE) == PGPASSWORD_FILE
    for path in (env_file, home / PGPASSWORD_FILE.removeprefix("~/")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_ray_serves_fast_path_is_on_as_eyenet_up_sets_it(config, tmp_path):
    from eyenet.cli.cluster import SERVE_ENV

    env, _ = _setup_env(config, tmp_path, password="x")
    assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV


def test_every_ray_start_sources_the_environment_file_first(config):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in config[key] if "ray start" in c]
        assert ". ~/.eyenet.env" in start.split("ray start")[0], start


def test_no_credential_is_written_into_the_config():
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"://[^/\s@'\"]+:[^/\s@'\"]+@", text), "a URI with a password"
    assert not re.search(r"(PGPASSWORD|PASSWORD|TOKEN)=(?!\"\$\(cat )", text), "a literal secret assignment"


def test_head_offers_the_resource_the_detached_actors_ask_for(config):
    import yaml as _yaml

    from eyenet.serving.settings import AppConfig

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    serve_cfg = _yaml.safe_load((CLUSTER_YAML.parent / "serve" / "serve_config.yaml").read_text())
    (app,) = serve_cfg["applications"]
    wanted = AppConfig(**app["args"]).actor_resources
    assert wanted, "serve_config.yaml does not pin the detached actors"
    for name, amount in wanted.items():
        assert head["resources"].get(name, 0) >= amount, (name, head["resources"])
        for t_name, t in types.items():
            if t_name != config["head_node_type"]:
                assert name not in t["resources"], f"worker type {t_name} offers {name}"


def test_eyenet_is_installed_from_the_synced_folder_with_its_pins(config):
    assert config["file_mounts"]["~/eyenet"] == "."
    installs = [c for c in config["setup_commands"] if "pip install" in c and "eyenet" in c]
    assert installs == ["python3 -m pip install ~/eyenet"], installs
    assert "**/.eyenet" in config["rsync_exclude"] and "**/.venv" in config["rsync_exclude"]


def test_serve_config_yaml_is_exactly_what_the_generator_writes(monkeypatch, capsys):
    """`python -m eyenet.serve.app > serve/serve_config.yaml` after changing the typed config."""
    import yaml as _yaml
    from ray.serve.schema import ServeDeploySchema

    from eyenet.serve import app

    for var in app._SETTINGS_ENV:
        monkeypatch.setenv(var, "postgresql://leaked@from-the-shell/db")  # must not reach the file
    app.main([])
    written = (CLUSTER_YAML.parent / "serve" / "serve_config.yaml").read_text()
    assert capsys.readouterr().out == written
    ServeDeploySchema.model_validate(_yaml.safe_load(written))


def test_torch_families_fit_the_gpu_workers_and_the_rest_stays_on_cpu(config):
    import yaml as _yaml

    from eyenet.serving.settings import TORCH_FAMILIES

    serve_cfg = _yaml.safe_load((CLUSTER_YAML.parent / "serve" / "serve_config.yaml").read_text())
    (app,) = serve_cfg["applications"]
    gpus_needed = 0.0
    for d in app["deployments"]:
        gpus = d["ray_actor_options"].get("num_gpus", 0)
        family = d["name"].removeprefix("family-")
        assert (gpus > 0) == (family in TORCH_FAMILIES), d["name"]
        gpus_needed += gpus * max(1, d["autoscaling_config"]["min_replicas"])  # every one in use
    gpu_capacity = sum(t["resources"].get("GPU", 0) * t["max_workers"]
                       for t in config["available_node_types"].values())
    assert 0 < gpus_needed <= gpu_capacity


def test_serves_per_request_log_is_off_on_every_deployment_unless_configured():
    """Serve writes its per-request lines 1,000 at a time: a pause on the replica every 1,000 requests."""
    import yaml as _yaml
    from ray.serve.schema import ServeDeploySchema

    from eyenet.serve import app
    from eyenet.serving.settings import AppConfig

    serve_cfg = _yaml.safe_load((CLUSTER_YAML.parent / "serve" / "serve_config.yaml").read_text())
    (deployed,) = ServeDeploySchema.model_validate(serve_cfg).applications
    assert deployed.deployments and all(d.logging_config.enable_access_log is False for d in deployed.deployments)
    on = app.serve_config(AppConfig(access_log=True, families=["zscore"]))
    assert [d["logging_config"] for d in on["applications"][0]["deployments"]] == [{"enable_access_log": True}] * 2
