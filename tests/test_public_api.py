"""The library API (``import eyenet``) and the README's example of it, run as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import eyenet
from eyenet.core.errors import InvalidInputError, UnknownNameError

README = Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
    text = README.read_text()
    section = text[text.index("## Use it as a library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
@pytest.mark.torch
def test_the_readme_library_example_runs_and_alarms_on_its_spike(tmp_path: Path) -> None:
    code = _library_example() + "\nassert point.alarm and point.ready and 3500 in np.flatnonzero(scores.alarm)\n"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "PointScore(value=95.0" in res.stdout


def test_import_eyenet_is_cheap() -> None:
    res = subprocess.run([sys.executable, "-c", "import sys, eyenet; print(sorted(m for m in ('torch', 'ray', "
                          "'mlflow', 'pandas') if m in sys.modules))"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_a_stream_gives_the_numbers_of_scoring_the_whole_series() -> None:
    x = np.sin(np.arange(1500) / 15) + np.random.default_rng(3).normal(0, 0.05, 1500)
    x[1400] = 4.0
    model = eyenet.fit(x[:1000], "zscore")
    whole = model.score(x)
    stream = model.stream()
    points = [stream.score_one(v) for v in x]
    np.testing.assert_array_equal([p.score for p in points], whole.score)
    assert [p.alarm for p in points] == whole.alarm.tolist()
    assert not points[0].ready and np.isnan(points[0].score)  # "not judged yet", never a quiet 0
    assert points[1400].alarm and points[-1].seen == len(x)


def test_stream_rejects_a_value_that_is_not_a_finite_number() -> None:
    stream = eyenet.fit(np.random.default_rng(0).normal(size=600), "zscore").stream()
    for bad in ("abc", float("nan"), float("inf"), None):
        with pytest.raises(InvalidInputError, match="value"):
            stream.score_one(bad)
    assert stream.state.seen == 0  # nothing bad got into the state


def test_fit_with_params_and_an_unknown_family_names_the_problem() -> None:
    x = np.random.default_rng(1).normal(size=800)
    assert eyenet.fit(x, "zscore", window=32).detector.get_params()["window"] == 32
    with pytest.raises(UnknownNameError, match="nope"):
        eyenet.fit(x, "nope")
    assert "ensemble" in eyenet.detectors()


def test_load_model_reads_a_registered_version_by_alias_and_number(mlflow_store) -> None:
    x = np.random.default_rng(2).normal(size=800)
    model = eyenet.fit(x, "zscore")
    info = mlflow_store.register(model, group="api", alias="champion")
    for loaded in (eyenet.load_model(info.name, mlflow_uri=mlflow_store.uri),
                   eyenet.load_model(info.name, version=info.version, mlflow_uri=mlflow_store.uri)):
        np.testing.assert_array_equal(loaded.score(x).score, model.score(x).score)
