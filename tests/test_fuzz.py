"""Fuzz the live HTTP API from its own OpenAPI document (schemathesis) on a real Serve app on loopback.

Every operation of ``/openapi.json`` gets requests generated from its schema, valid ones and
invalid ones, sent without a credential, with a wrong one, with a reader's key and with an admin's
key (authentication is on, keys in the app's own store). Whatever is sent: no 5xx, no replica or
EyeNet actor restarted, and every response is documented (status, content type, headers, body
schema). A request valid by the schema that still gets a 4xx (other than 401/403/404, which
depend on who asks and what exists) is a schema that hides a rule, and fails the test too,
except for the few rules across fields that JSON Schema cannot say (listed in ``_CROSS_FIELD``).

About 1,300 requests in two minutes; ``EYENET_FUZZ_EXAMPLES`` sets the examples per operation,
generation mode and credential (default 20).
"""
from __future__ import annotations

import collections
import json
import os
import socket

import numpy as np
import pytest
import requests

from eyenet.core import presets, synthetic
from eyenet.lifecycle import training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXAMPLES = int(os.environ.get("EYENET_FUZZ_EXAMPLES", "20"))
MIN_REQUESTS = 1000
APP = "fuzz"
#: 422 messages a request valid by the schema may still get: rules across fields or values that
#: JSON Schema cannot state (one timestamp per value, in increasing order, a real calendar date;
#: a series id once per request; a point named once; detectors that are members of the served model),
#: or that depend on the service's state (feedback on points it scored)
_CROSS_FIELD = ("timestamps for", "unsorted", "duplicate timestamp", "not parseable as timestamps",
                "appears twice", "the same point as", "is not a member of", "is not a timestamp",
                "is being updated concurrently", "is not a forecaster",
                "never scored these points",  # feedback names points the service scored: state, like a 404
                "remote_write body:",  # a binary body: what a valid WriteRequest is, JSON Schema cannot say
                "takes no jobs over the API")  # jobs are off here: a real training run would outlive the fuzzing
#: a key in the shape of an EyeNet API key that no store holds
WRONG_KEY = "eyn_000000000000_" + "A" * 43


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    from eyenet.serving.auth import KeyStore

    root = tmp_path_factory.mktemp("fuzz-mlflow")
    keys = KeyStore(root / "keys.db")
    credentials = {"none": {}, "wrong": {"Authorization": f"Bearer {WRONG_KEY}"},
                   **{role: {"Authorization": f"Bearer {keys.create(f'fuzz-{role}', 'default', role)[1]}"}
                      for role in ("reader", "admin")}}
    store = Registry(f"sqlite:///{root / 'mlflow.db'}", artifact_root=(root / "artifacts").as_uri()).check()
    _, v, _ = synthetic.series("cpu_pct", n=600, seed=3)
    members = [{"family": "zscore", "params": {}}, {"family": "mad", "params": {}}]
    trained = training.train_and_register(presets.model_config("ensemble", {"members": members}),
                                          np.asarray(v[:500]), registry=store)
    store.set_alias(trained.version.name, "champion", trained.version.version)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = {"name": APP, "families": ["zscore", "mad"], "mlflow_uri": store.uri,
              "state_uri": str(tmp_path_factory.mktemp("fuzz-state")), "member_timeout_s": 10, "use_gpus": False,
              "router": {"num_cpus": 0.1, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
              "family": {"num_cpus": 0.1, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
              "auth": {"keys_uri": str(root / "keys.db")},
              "controller": {"review_challengers": False, "retrain": {"enabled": False}},
              "jobs": {"enabled": False}, **fuzz_app_config}
    serve.run(build_app(config), name=APP, route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "model": trained.version.name, "credentials": credentials}
    serve.delete(APP)
    serve.shutdown()
    import ray

    from eyenet.serve.actors import find_actor, find_controller, find_monitor
    from eyenet.serve.jobs import jobs_name

    # detached: they outlive the app unless stopped
    for actor in (find_controller(APP), find_monitor(APP), find_actor(jobs_name(APP))):
        if actor is not None:
            ray.kill(actor, no_restart=True)


def _actors() -> dict[str, tuple[str, int]]:
    """name -> (actor id, restarts) of the app's live replicas and EyeNet's detached actors (read from
    the GCS: the test cluster runs without a dashboard, so without the state API)."""
    from ray._private import state

    return {a["Name"]: (a["ActorID"], int(a.get("NumRestarts") or 0)) for a in state.actors().values()
            if a.get("State") == "ALIVE"
            and (a.get("Name") or "").startswith((f"SERVE_REPLICA::{APP}#", "eyenet-"))}


def test_fuzzing_the_openapi_document_finds_no_5xx_and_no_undocumented_response(fuzz_app):
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
    credentials = fuzz_app["credentials"]
    # POST /api/v1/write takes bytes (a snappy-compressed protobuf): send what is generated as it is
    schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=credentials["admin"], timeout=30)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    # a warm-up: the first requests load the model into the router
    body = {"series": [{"id": "warm", "values": [1.0, 2.0, 3.0]}]}
    warm = requests.post(f"{url}/v1/detect", json=body, headers=credentials["admin"], timeout=120)
    assert warm.status_code == 200, warm.text
    before = _actors()
    assert any(n.startswith(f"SERVE_REPLICA::{APP}#") for n in before), before

    statuses: collections.Counter = collections.Counter()
    failures: list[str] = []
    hidden: list[str] = []  # valid by the schema, refused anyway
    session = requests.Session()
    notes: list[str] = []  # operations without a negative case

    def run(op, mode, who: str, headers: dict[str, str]) -> None:
        @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                             phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                             verbosity=hypothesis.Verbosity.quiet)
        @hypothesis.given(case=op.as_strategy(generation_mode=mode))
        def fuzz(case) -> None:
            resp = case.call(base_url=url, headers=dict(headers), session=session, timeout=60)
            statuses[(op.label, mode.value, who, resp.status_code)] += 1
            try:
                case.validate_response(resp, checks=checks)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collected, all reported at the end
                failures.append(f"{op.label} [{mode.value}, {who}] -> {resp.status_code} "
                                f"{resp.text[:200]!r}: {str(exc)[:400]}")
            if mode == GenerationMode.POSITIVE and 400 <= resp.status_code < 500 and resp.status_code not in (401, 403,
                                                                                                              404):
                try:
                    message = str(json.loads(resp.text).get("error", ""))
                except (ValueError, AttributeError):
                    message = resp.text[:200]
                if not any(rule in message for rule in _CROSS_FIELD):
                    hidden.append(f"{op.label} [{who}] {case.body if case.body is not None else ''!s:.200} -> "
                                  f"{resp.status_code} {message[:200]}")

        try:
            fuzz()
        except (hypothesis.errors.Unsatisfiable, hypothesis.errors.FailedHealthCheck):
            pass

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for who, headers in credentials.items():
                try:
                    run(op, mode, who, headers)
                except Exception as exc:  # noqa: BLE001 - schemathesis: nothing to negate in an operation
                    if "negat" not in str(exc).lower() and mode == GenerationMode.POSITIVE:
                        raise
                    notes.append(f"{op.label} [{mode.value}]: {str(exc)[:120]}")
                    break

    total = sum(statuses.values())
    by_status = collections.Counter()
    for (_, _, _, status), n in statuses.items():
        by_status[status] += n
    print(f"\nfuzzed {total} requests; statuses: {dict(sorted(by_status.items()))}")
    for note in notes:
        print(f"  skipped: {note}")
    for key, n in sorted(statuses.items()):
        print(f"  {key}: {n}")
    assert total >= MIN_REQUESTS, (total, dict(by_status))
    assert not [s for s in by_status if s >= 500], dict(by_status)
    assert not failures, f"{len(failures)} responses break the OpenAPI document:\n" + "\n".join(failures[:20])
    assert not hidden, f"{len(hidden)} requests valid by the schema were refused:\n" + "\n".join(hidden[:20])
    after = _actors()
    assert {k: after.get(k) for k in before} == before, "a replica or actor was replaced or restarted while fuzzing"
    assert all(restarts == 0 for k, (_, restarts) in after.items() if k not in before)  # created on first use (jobs)
    # and the service still answers
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] in ("ok", "degraded")
