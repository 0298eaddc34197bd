"""Review, promote and roll back champions on the embedded MLflow store, and the `eyenet models` commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eyenet.lifecycle import audit, gate, holdout, promotion, training
from eyenet import cli
from eyenet.core import presets
from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
from eyenet.core.errors import GateRejectedError, LifecycleError, UnknownNameError
from eyenet.lifecycle.registry import CHAMPION, Registry

GOOD = None  # default zscore window: finds the synthetic anomalies
POOR = {"window": 3}  # a reference window far too short: a much lower NAB score


def _register(store: Registry, group: str, params: dict | None = GOOD, *, corrupt_state: bool = False) -> int:
    """Train a zscore model on the default synthetic series and register it as challenger."""
    series = default_series()
    data = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    model, metrics = training.fit_model(presets.model_config("zscore", params), series.values)
    if corrupt_state:
        model.detector.spread_floor_ = float("nan")  # a version whose every score is NaN
    return store.register(model, group=group, metrics=metrics, data=data, probe=series.values).version


def _events(store: Registry, name: str) -> list[tuple[str, int | None]]:
    return [(e.event, e.version) for e in promotion.history(store, name)]


def _champion(store: Registry, name: str) -> int:
    return store.version(name, alias=CHAMPION).version


def _aliases(store: Registry, name: str) -> dict[int, list[str]]:
    return {v.version: v.aliases for v in store.versions(name)}


def _artifact_dir(store: Registry, name: str, version: int) -> Path:
    source = store.client.get_model_version_download_uri(name, str(version))
    return Path(source.replace("file://", ""))


def test_a_better_challenger_is_promoted_and_a_worse_one_archived(mlflow_store):
    name = "default.better.zscore"
    first = _register(mlflow_store, "better", POOR)
    out = promotion.review(mlflow_store, name, actor="controller")
    assert (out.action, out.version, out.champion, out.previous) == ("promoted", first, first, None)
    assert "no champion" in out.reason

    second = _register(mlflow_store, "better", GOOD)
    out = promotion.review(mlflow_store, name, actor="controller")
    assert (out.action, out.champion, out.previous) == ("promoted", second, first)
    assert "is better: NAB standard" in out.reason and out.metrics["nab_gain"] > 10
    assert _aliases(mlflow_store, name) == {second: [CHAMPION], first: []}  # challenger alias dealt with
    tags = mlflow_store.version(name, second).tags
    assert tags["eyenet.status"] == audit.PROMOTED and tags["eyenet.previous_champion"] == str(first)
    assert json.loads(tags["eyenet.gate"])["nab_standard"] == pytest.approx(out.metrics["nab_standard"], abs=1e-3)

    third = _register(mlflow_store, "better", POOR)
    out = promotion.review(mlflow_store, name, actor="controller")
    assert (out.action, out.champion) == ("rejected", second)
    assert _champion(mlflow_store, name) == second and _aliases(mlflow_store, name)[third] == []
    tags = mlflow_store.version(name, third).tags
    assert tags["eyenet.status"] == audit.ARCHIVED and "not better by the margin" in tags["eyenet.reason"]

    assert _events(mlflow_store, name) == [
        ("TRAIN", first), ("REGISTER", first), ("GATE-PASS", first), ("INTENT", first), ("PROMOTE", first),
        ("TRAIN", second), ("REGISTER", second), ("GATE-PASS", second), ("INTENT", second), ("PROMOTE", second),
        ("TRAIN", third), ("REGISTER", third), ("REJECT", third),
    ]
    reject = promotion.history(mlflow_store, name)[-1]
    assert reject.actor == "controller" and reject.previous == second and "not better by the margin" in reject.reason
    assert reject.metrics["champion.nab_standard"] > reject.metrics["nab_standard"]


def test_a_nan_producing_challenger_never_becomes_champion(mlflow_store):
    name = "default.nans.zscore"
    champion = _register(mlflow_store, "nans")
    promotion.review(mlflow_store, name)
    broken = _register(mlflow_store, "nans", corrupt_state=True)
    out = promotion.review(mlflow_store, name)
    assert out.action == "rejected" and "non-finite (NaN/inf) scores on 100.0% of rows" in out.reason
    assert _champion(mlflow_store, name) == champion
    assert mlflow_store.version(name, broken).tags["eyenet.status"] == audit.ARCHIVED


def test_a_version_that_fails_to_load_is_rejected(mlflow_store):
    name = "default.unloadable.zscore"
    v = _register(mlflow_store, "unloadable")
    next(_artifact_dir(mlflow_store, name, v).rglob("state.npz")).write_bytes(b"not an npz file")
    out = promotion.review(mlflow_store, name)
    assert out.action == "rejected" and "failed to load" in out.reason and "state.npz" in out.reason
    assert out.champion is None and _aliases(mlflow_store, name) == {v: []}


def test_a_challenger_over_the_latency_budget_is_rejected(mlflow_store):
    name = "default.slow.zscore"
    champion = _register(mlflow_store, "slow", POOR)
    promotion.review(mlflow_store, name)
    _register(mlflow_store, "slow", GOOD)
    out = promotion.review(mlflow_store, name, policy=gate.GatePolicy(latency_budget_ms=1e-6, latency_calls=20))
    assert out.action == "rejected" and "exceeds the latency budget of 1e-06 ms" in out.reason
    assert _champion(mlflow_store, name) == champion


def test_explicit_promotion_is_gated_unless_forced(mlflow_store):
    name = "default.explicit.zscore"
    good = _register(mlflow_store, "explicit", GOOD)
    promotion.promote(mlflow_store, name, good)
    poor = _register(mlflow_store, "explicit", POOR)
    with pytest.raises(GateRejectedError, match=rf"version {poor} rejected: .*not better by the margin"):
        promotion.promote(mlflow_store, name, poor, reason="operator says so")
    assert _champion(mlflow_store, name) == good
    out = promotion.promote(mlflow_store, name, poor, force=True, reason="incident 42", actor="ops@example")
    assert out.champion == poor and _champion(mlflow_store, name) == poor
    last = promotion.history(mlflow_store, name)[-1]
    assert (last.event, last.version, last.previous, last.actor) == ("PROMOTE", poor, good, "ops@example")
    assert last.reason == "forced past the gate: incident 42"
    with pytest.raises(LifecycleError, match="already the champion"):
        promotion.promote(mlflow_store, name, poor, force=True)


def test_rollback_returns_to_the_previous_good_version_and_is_recorded(mlflow_store):
    name = "default.rollback.zscore"
    with pytest.raises(UnknownNameError, match="no registered model"):
        promotion.rollback(mlflow_store, name)
    first = _register(mlflow_store, "rollback", POOR)
    with pytest.raises(LifecycleError, match="has no champion to roll back"):
        promotion.rollback(mlflow_store, name)
    promotion.review(mlflow_store, name)
    with pytest.raises(LifecycleError, match=f"no earlier good champion to roll back to from version {first}"):
        promotion.rollback(mlflow_store, name)
    second = _register(mlflow_store, "rollback", GOOD)
    promotion.review(mlflow_store, name)
    archived = _register(mlflow_store, "rollback", POOR)
    promotion.review(mlflow_store, name)  # rejected: archived

    out = promotion.rollback(mlflow_store, name, actor="oncall@host", reason="alarm storm after deploy")
    assert (out.action, out.version, out.previous) == ("rolled-back", first, second)
    assert _champion(mlflow_store, name) == first
    withdrawn = mlflow_store.version(name, second).tags
    assert withdrawn["eyenet.status"] == audit.ROLLED_BACK and "alarm storm" in withdrawn["eyenet.reason"]
    last = promotion.history(mlflow_store, name)[-1]
    assert (last.event, last.version, last.previous, last.actor, last.reason) == (
        "ROLLBACK", first, second, "oncall@host", "alarm storm after deploy")
    # nothing good before the first champion: a clean error, and the champion stays
    with pytest.raises(LifecycleError, match="no earlier good champion"):
        promotion.rollback(mlflow_store, name)
    with pytest.raises(LifecycleError, match=f"version {archived} was archived by the gate"):
        promotion.rollback(mlflow_store, name, to_version=archived)
    assert _champion(mlflow_store, name) == first
    out = promotion.rollback(mlflow_store, name, to_version=second, reason="false alarm")
    assert out.version == second and _champion(mlflow_store, name) == second


def test_rollback_skips_versions_withdrawn_since(mlflow_store):
    name = "default.chain.zscore"
    a = _register(mlflow_store, "chain", {"window": 8})
    promotion.review(mlflow_store, name)
    b = _register(mlflow_store, "chain", {"window": 64})
    promotion.promote(mlflow_store, name, b, force=True)
    c = _register(mlflow_store, "chain", {"window": 32})
    promotion.promote(mlflow_store, name, c, force=True)
    assert promotion.rollback(mlflow_store, name).version == b  # c withdrawn
    assert promotion.rollback(mlflow_store, name).version == a  # b withdrawn
    d = _register(mlflow_store, "chain", {"window": 16})
    promotion.promote(mlflow_store, name, d, force=True)
    assert promotion.rollback(mlflow_store, name, to_version=c, reason="c was fine after all").version == c
    assert mlflow_store.version(name, b).tags["eyenet.status"] == audit.ROLLED_BACK
    assert promotion.rollback(mlflow_store, name).version == a  # c's predecessor b was withdrawn: skipped


def test_review_needs_a_challenger(mlflow_store):
    name = "default.nochallenger.zscore"
    _register(mlflow_store, "nochallenger")
    promotion.review(mlflow_store, name)
    with pytest.raises(LifecycleError, match="has no challenger to review"):
        promotion.review(mlflow_store, name)


def test_versions_without_a_training_data_record_need_explicit_validation(mlflow_store):
    name = "default.norecord.zscore"
    series = default_series()
    training.train_and_register(presets.model_config("zscore"), series.values, registry=mlflow_store, group="norecord")
    with pytest.raises(LifecycleError, match="does not record where its training data came from"):
        promotion.review(mlflow_store, name)
    record = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    out = promotion.review(mlflow_store, name, validation=holdout.from_record(record))
    assert out.action == "promoted"


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture
def cli_store(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EYENET_MLFLOW_URI", mlflow_store.uri)
    return mlflow_store


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_commands_review_promote_rollback_and_show_history(cli_store, capsys):
    name = "default.cli.zscore"
    first = _register(cli_store, "cli", POOR)
    code, out, _ = _run(capsys, "models", "review", name)
    assert code == 0 and f"{name} version {first} is champion" in out
    second = _register(cli_store, "cli", POOR)
    code, out, _ = _run(capsys, "models", "review", name, "--json")
    assert code == 6 and json.loads(out)["action"] == "rejected"
    code, out, _ = _run(capsys, "models", "promote", name, "--version", str(second), "--force", "--reason", "drill")
    assert code == 0 and f"version {second} is champion (was version {first})" in out
    code, out, _ = _run(capsys, "models", "rollback", name, "--reason", "drill over")
    assert code == 0 and f"version {first} is champion (was version {second}): drill over" in out
    code, out, _ = _run(capsys, "models", "history", name, "--json")
    events = json.loads(out)
    assert [e["event"] for e in events][-8:] == ["PROMOTE", "TRAIN", "REGISTER", "REJECT", "INTENT", "PROMOTE",
                                                 "INTENT", "ROLLBACK"]
    assert events[-2]["reason"].startswith(f"roll back to version {first} from {second}")  # written before the move
    assert events[-1]["reason"] == "drill over" and events[-1]["iso"].endswith("+00:00")
    code, out, _ = _run(capsys, "models", "history", name, "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and "ROLLBACK" in lines[-1] and "drill over" in lines[-1]
    # the listing keeps working with and without the subcommand
    for argv in (["models"], ["models", "list"], ["models", "--name", name]):
        code, out, _ = _run(capsys, *argv)
        assert code == 0 and name in out and "champion" in out and "rolled-back" in out
    for argv in (["models", "--json", "--name", name], ["models", "list", "--json", "--name", name]):
        code, out, _ = _run(capsys, *argv)
        listed = json.loads(out)
        assert {v["version"]: v["aliases"] for v in listed} == {second: [], first: ["champion"]}


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["models", "rollback", "not-a-model"], 2, "not an EyeNet model name"),
        (["models", "history", "default.nothing.zscore"], 2, "no registered model 'default.nothing.zscore'"),
        (["models", "review", "default.nothing.zscore"], 2, "no registered model"),
        (["models", "promote", "default.nothing.zscore", "--version", "3"], 2, "has no version 3"),
    ],
)
def test_models_commands_with_bad_input_are_one_line(cli_store, capsys, argv, code, message):
    got, out, err = _run(capsys, *argv)
    assert got == code and out == ""
    assert err.startswith("eyenet: error: ") and message in err and err.count("\n") == 1, err


def test_rollback_without_a_previous_version_is_one_line(cli_store, capsys):
    name = "default.clione.zscore"
    _register(cli_store, "clione")
    assert _run(capsys, "models", "review", name)[0] == 0
    code, out, err = _run(capsys, "models", "rollback", name)
    assert code == 6 and out == "" and err.count("\n") == 1 and "no earlier good champion" in err


def test_console_script_reports_a_refused_rollback_in_one_line(cli_store, tmp_path):
    name = "default.script.zscore"
    _register(cli_store, "script")
    exe = Path(sys.executable).parent / "eyenet"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from eyenet.cli import main; sys.exit(main())"]
    env = {**os.environ, "EYENET_MLFLOW_URI": cli_store.uri}
    res = subprocess.run([*cmd, "models", "rollback", name], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 6 and res.stdout == ""
    assert res.stderr == f"eyenet: error: {name} has no champion to roll back\n"
