"""cluster.yaml is a valid Ray cluster-launcher config with a CPU head and autoscaled GPU workers.

Validated against the JSON schema shipped inside the installed Ray package, so a
Ray upgrade that changes the schema shows up here. No Ray cluster is started.
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

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
