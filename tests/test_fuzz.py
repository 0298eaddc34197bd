"""Fuzz the live HTTP API from its own OpenAPI document (schemathesis) on a real Serve app on loopback.

Every operation of ``/openapi.json`` gets requests generated from its schema, valid ones and
invalid ones, sent without a credential, with a wrong one and (when the app has auth and the
``fuzz_api_key`` fixture gives one) with a valid one. Whatever is sent: no 5xx, no replica or
EyeNet actor restarted, and every response is documented (status, content type, headers, body
schema). A request valid by the schema that still gets a 4xx (other than 401/403/404, which
depend on who asks and what exists) is a schema that hides a rule, and fails the test too,
except for the few rules across fields that JSON Schema cannot say (listed in ``_CROSS_FIELD``).

About 1,300 requests in a minute or two; ``EYENET_FUZZ_EXAMPLES`` sets the examples per operation,
generation mode and credential (default 25).
"""
from __future__ import annotations

import collections
import os
import socket

import numpy as np
import pytest
import requests

from eyenet.core import presets, synthetic
from eyenet.lifecycle import training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXAMPLES = int(os.environ.get("EYENET_FUZZ_EXAMPLES", "25"))
MIN_REQUESTS = 1000
APP = "fuzz"
#: 422 messages a request valid by the schema may still get: rules across fields or values that
#: JSON Schema cannot state (one timestamp per value, in increasing order, a real calendar date;
#: a series id once per request; a point named once; detectors that are members of the served model)
_CROSS_FIELD = ("timestamps for", "unsorted", "duplicate timestamp", "not parseable as timestamps",
                "appears twice", "the same point as", "is not a member of", "is not a timestamp",
                "is being updated concurrently", "is not a forecaster")
#: a key in the shape of an EyeNet API key that no store holds
WRONG_KEY = "eyn_000000000000_" + "A" * 43


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fuzz_api_key():
    """A valid API key of the fuzzed app, or None while the app runs without auth (then the
    "valid credential" pass is the same as the others). Override to fuzz an app with auth on."""
    return os.environ.get("EYENET_FUZZ_API_KEY") or None


@pytest.fixture(scope="module")
def fuzz_app_config():
    """Extra AppConfig fields of the fuzzed app (e.g. its auth settings)."""
    return {}


@pytest.fixture(scope="module")
def fuzz_app(ray_cluster, fuzz_app_config, tmp_path_factory):
    """The app under fuzzing, on its own MLflow store: its champion is ``default.default.ensemble``,
    so requests with the default group and tenant reach a real model and score."""
    from ray import serve

    from eyenet.lifecycle.registry import Registry
    from eyenet.serve.app import build_app

    root = tmp_path_factory.mktemp("fuzz-mlflow")
    store = Registry(f"sqlite:///{root / 'mlflow.db'}", artifact_root=(root / "artifacts").as_uri()).check()
    _, v, _ = synthetic.series("cpu_pct", n=600, seed=3)
    members = [{"family": "zscore", "params": {}}, {"family": "mad", "params": {}}]
    trained = training.train_and_register(presets.model_config("ensemble", {"members": members}),
                                          np.asarray(v[:500]), registry=store)
    store.set_alias(trained.version.name, "champion", trained.version.version)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = {"name": APP, "families": ["zscore", "mad"], "mlflow_uri": store.uri,
              "state_dir": str(tmp_path_factory.mktemp("fuzz-state")), "member_timeout_s": 10, "use_gpus": False,
              "router": {"num_cpus": 0.1, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
              "family": {"num_cpus": 0.1, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
              **fuzz_app_config}
    serve.run(build_app(config), name=APP, route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "model": trained.version.name}
    serve.delete(APP)
    serve.shutdown()
    import ray

    from eyenet.serve.actors import find_controller, find_monitor

    for actor in (find_controller(APP), find_monitor(APP)):  # detached: outlive the app unless stopped
        if actor is not None:
            ray.kill(actor, no_restart=True)


def _actors() -> dict[str, tuple[str, str]]:
    """name -> (actor id, state) of the app's replicas and EyeNet's detached actors."""
    from ray.util.state import list_actors

    out = {}
    for a in list_actors(limit=10_000, raise_on_missing_output=False):
        name = a.name or ""
        if name.startswith(f"SERVE_REPLICA::{APP}#") or name.startswith("eyenet-"):
            if a.state == "ALIVE" or name not in out:
                out[name] = (a.actor_id, a.state)
    return out


def _restarts() -> dict[str, int]:
    from ray.util.state import list_actors

    return {a.name: int(getattr(a, "num_restarts", 0) or 0)
            for a in list_actors(limit=10_000, raise_on_missing_output=False, detail=True)
            if (a.name or "").startswith(("eyenet-", f"SERVE_REPLICA::{APP}#"))}


def test_fuzzing_the_openapi_document_finds_no_5xx_and_no_undocumented_response(fuzz_app, fuzz_api_key):
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    url = fuzz_app["url"]
    credentials = {"none": {}, "wrong": {"Authorization": f"Bearer {WRONG_KEY}"}}
    if fuzz_api_key:
        credentials["valid"] = {"Authorization": f"Bearer {fuzz_api_key}"}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=credentials.get("valid", {}), timeout=30)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    # a warm-up: the first requests load the model into the router
    body = {"series": [{"id": "warm", "values": [1.0, 2.0, 3.0]}]}
    assert requests.post(f"{url}/v1/detect", json=body, headers=credentials.get("valid", {}), timeout=120).status_code \
        in (200, 401, 403)
    before, restarts_before = _actors(), _restarts()

    statuses: collections.Counter = collections.Counter()
    failures: list[str] = []
    hidden: list[str] = []  # valid by the schema, refused anyway
    session = requests.Session()

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception:  # noqa: BLE001 - nothing to negate (an operation without inputs)
                continue
            for who, headers in credentials.items():

                @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                                     phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                                     verbosity=hypothesis.Verbosity.quiet)
                @hypothesis.given(case=strategy)
                def fuzz(case, op=op, mode=mode, who=who, headers=headers):
                    resp = case.call(base_url=url, headers=dict(headers), session=session, timeout=60)
                    statuses[(op.label, mode.value, who, resp.status_code)] += 1
                    try:
                        case.validate_response(resp, checks=checks)
                    except Exception as exc:  # noqa: BLE001 - collected: every failure is reported at the end
                        failures.append(f"{op.label} [{mode.value}, {who}] -> {resp.status_code} "
                                        f"{resp.text[:200]!r}: {str(exc)[:400]}")
                    if (mode == GenerationMode.POSITIVE and 400 <= resp.status_code < 500
                            and resp.status_code not in (401, 403, 404)):
                        message = resp.json().get("error", "") if "json" in resp.headers.get("content-type", "") else ""
                        if not any(rule in message for rule in _CROSS_FIELD):
                            hidden.append(f"{op.label} [{who}] -> {resp.status_code} {message[:200]}")

                try:
                    fuzz()
                except hypothesis.errors.Unsatisfiable:
                    pass

    total = sum(statuses.values())
    by_status = collections.Counter()
    for (_, _, _, status), n in statuses.items():
        by_status[status] += n
    print(f"\nfuzzed {total} requests; statuses: {dict(sorted(by_status.items()))}")
    for key, n in sorted(statuses.items()):
        print(f"  {key}: {n}")
    assert total >= MIN_REQUESTS, (total, dict(by_status))
    assert not [s for s in by_status if s >= 500], dict(by_status)
    assert not failures, f"{len(failures)} responses break the OpenAPI document:\n" + "\n".join(failures[:20])
    assert not hidden, f"{len(hidden)} requests valid by the schema were refused:\n" + "\n".join(hidden[:20])
    after, restarts_after = _actors(), _restarts()
    alive_before = {n: a for n, (a, state) in before.items() if state == "ALIVE"}
    alive_after = {n: a for n, (a, state) in after.items() if state == "ALIVE"}
    assert alive_after == alive_before, "a replica or actor was replaced while fuzzing"
    assert {n: restarts_after.get(n, 0) for n in restarts_before} == restarts_before
    # and the service still answers
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] in ("ok", "degraded")
