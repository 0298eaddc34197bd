"""remote_write in and scores back without Ray: the receiver's rules, staleness, late and invalid
samples against a real pipeline and stream store; the writer's batching, ordering, retries and bounds
against a receiver that answers as told."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from eyenet.core import presets, synthetic
from eyenet.core.errors import InvalidInputError, PayloadTooLargeError
from eyenet.core.model import AnomalyModel
from eyenet.core.prometheus import STALE_NAN_BITS, RemoteSeries, decode_write, encode_write
from eyenet.serving.ingest import RemoteWriteIngest
from eyenet.serving.settings import RemoteWriteSettings, WritebackSettings
from eyenet.serving.streams import StreamStore
from eyenet.serving.writeback import ScoreWriter
from fakes import pipeline

STALE = np.frombuffer(np.uint64(STALE_NAN_BITS).tobytes(), dtype=np.float64)[0]
MEMBERS = [{"family": "zscore", "params": {"window": 10}}, {"family": "mad", "params": {"window": 10}}]


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    _, v, _ = synthetic.series("cpu_pct", n=600, seed=2)
    return AnomalyModel.from_dict(presets.model_config("ensemble", {"members": MEMBERS})).fit(np.asarray(v, float))


class Receiver:
    """A writer's ``post``: answers the statuses given in turn (then 204), keeping what it was sent."""

    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses)
        self.bodies: list[bytes] = []

    async def __call__(self, body: bytes) -> int:
        self.bodies.append(body)
        answer = self.statuses.pop(0) if self.statuses else 204
        if isinstance(answer, Exception):
            raise answer
        return answer

    def samples(self) -> list[tuple[str, dict[str, str], int, float]]:
        out = []
        for body in self.bodies:
            for s in decode_write(body, max_bytes=1 << 20):
                out += [(s.labels["__name__"], s.labels, int(t), float(v)) for t, v in zip(s.timestamps_ms, s.values)]
        return out


def ingest_for(model: AnomalyModel, tmp_path: Any, writer: Any = None, **rules: Any) -> RemoteWriteIngest:
    settings = RemoteWriteSettings(rules=[{"match": 'load{host=~"web-.*"}', "group": "web"}], **rules)
    return RemoteWriteIngest(settings, pipeline(model, StreamStore(str(tmp_path))), writer)


def body(*series: tuple[dict[str, str], list[int], list[float]]) -> bytes:
    return encode_write([RemoteSeries(labels, np.array(ts, dtype=np.int64), np.array(v, dtype=float))
                         for labels, ts, v in series])


def test_rules_choose_the_series_and_scores_go_to_the_writer(model, tmp_path):
    receiver = Receiver()
    writer = ScoreWriter(WritebackSettings(url="http://127.0.0.1:1/api/v1/write"), post=receiver)
    ingest = ingest_for(model, tmp_path, writer)
    ts = list(range(1_000, 61_000, 1_000))
    values = (40 + np.sin(np.arange(60))).tolist()
    counts = asyncio.run(ingest.write("acme", body(({"__name__": "load", "host": "web-1", "job": "n"}, ts, values),
                                                   ({"__name__": "load", "host": "db-1"}, ts, values),
                                                   ({"__name__": "eyenet_anomaly_score", "host": "web-1"}, ts, values))))
    assert counts == {"scored": 60, "unselected": 120}  # db-1 matches no rule; a written-back score is never scored
    assert asyncio.run(writer.send_batch())
    sent = receiver.samples()
    names = {n for n, _, _, _ in sent}
    assert names == {"eyenet_anomaly_score", "eyenet_alarm", "eyenet_expected_value"} or \
        names == {"eyenet_anomaly_score", "eyenet_alarm"}
    score = [(labels, t) for n, labels, t, _ in sent if n == "eyenet_anomaly_score"]
    labels = score[0][0]
    assert labels["metric"] == "load" and labels["host"] == "web-1" and labels["job"] == "n"
    assert labels["model"] == "acme.web.ensemble" and labels["version"] == "1"
    assert [t for _, t in score] == sorted(t for _, t in score) and len(score) > 40  # ready points only


def test_late_stale_and_infinite_samples_are_counted_and_never_fail_the_request(model, tmp_path):
    ingest = ingest_for(model, tmp_path)
    web = {"__name__": "load", "host": "web-1"}
    ts = list(range(1_000, 31_000, 1_000))
    values = (40 + np.sin(np.arange(30))).tolist()
    assert asyncio.run(ingest.write("acme", body((web, ts, values)))) == {"scored": 30}
    again = asyncio.run(ingest.write("acme", body((web, ts, values))))  # a retried request
    assert again == {"late": 30}
    infinite = asyncio.run(ingest.write("acme", body((web, [31_000, 32_000], [float("inf"), 41.0]))))
    assert infinite == {"invalid": 1, "imputed": 1, "scored": 1}  # the infinity left a gap: filled, not scored
    # a staleness marker ends the series: samples after it start it afresh, so an old timestamp is not late
    stale = asyncio.run(ingest.write("acme", body((web, [33_000, 34_000, 1_000], [41.0, STALE, 40.0]))))
    assert stale == {"scored": 2, "stale": 1}


def test_malformed_and_oversized_bodies_name_the_problem(model, tmp_path):
    ingest = ingest_for(model, tmp_path, max_series=2)
    with pytest.raises(InvalidInputError, match="remote_write body: not snappy-compressed"):
        asyncio.run(ingest.write("acme", b"plain bytes"))
    many = body(*[({"__name__": "load", "host": f"web-{k}"}, [1_000], [1.0]) for k in range(3)])
    with pytest.raises(PayloadTooLargeError, match="3 series"):
        asyncio.run(ingest.write("acme", many))


def test_the_writer_retries_splits_a_refused_batch_and_stays_bounded():
    def add(writer: ScoreWriter, host: str, ts: list[int]) -> None:
        writer.add({"__name__": "load", "host": host}, "acme.web.ensemble", 1, np.array(ts, dtype=np.int64),
                   [{"score": 0.5, "alarm": False, "expected": 40.0} for _ in ts])

    settings = WritebackSettings(url="http://127.0.0.1:1/api/v1/write", max_backoff_s=0.01, max_queue=30)
    down_then_up = Receiver(OSError("connection refused"), 503, 429)
    writer = ScoreWriter(settings, post=down_then_up)
    add(writer, "web-1", [1_000, 2_000])
    assert asyncio.run(writer.send_batch())
    assert len(down_then_up.bodies) == 4 and writer.sent == 6 and writer.failures == 3
    # a 400 of a batch of six series (three per host): sent again one series at a time, and only the
    # series refused again (the first) is dropped
    one_bad = Receiver(400, 400)
    writer = ScoreWriter(settings, post=one_bad)
    add(writer, "web-1", [1_000])
    add(writer, "web-2", [1_000])
    assert asyncio.run(writer.send_batch())
    assert len(one_bad.bodies) == 1 + 6 and (writer.rejected, writer.sent) == (1, 5)
    # points at or before the last queued of a series are not queued; the queue keeps its bound
    writer = ScoreWriter(settings, post=Receiver())
    add(writer, "web-1", [5_000, 6_000])
    add(writer, "web-1", [4_000, 6_000])
    assert len(writer) == 6
    add(writer, "web-3", list(range(10_000, 20_000, 1_000)))
    assert len(writer) == 30 and writer.dropped == 6
