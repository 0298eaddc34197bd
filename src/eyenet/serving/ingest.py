"""Prometheus remote_write in (``POST /api/v1/write``): a WriteRequest's samples scored as stream points.

1. The body is decoded (:func:`eyenet.core.prometheus.decode_write`: snappy, then protobuf, with
   bounds on its decoded size, series and samples). A malformed body is a
   :class:`~eyenet.core.errors.InvalidInputError` (the route answers 400, which Prometheus never
   retries), an oversized one a :class:`~eyenet.core.errors.PayloadTooLargeError` (413).
2. Each series is matched against ``remote_write.rules`` (PromQL series selectors, first match
   wins; its ``group`` names the tenant's model). Series no rule selects are counted and left,
   and so are EyeNet's own written-back series (``eyenet_anomaly_score`` ...), which a
   Prometheus that forwards everything would send back: scores are never scored.
3. A series' id is its metric name and sorted labels (``node_load1{instance="a:9100"}``); the
   tenant is the credential's. Its samples are stream points with their timestamps, scored in one
   batch per group (:meth:`~eyenet.serving.pipeline.Pipeline.stream_series`): gaps are imputed,
   samples at or before the series' last one (out of order, duplicates, a retried request) are
   dropped and counted. An infinite sample cannot be imputed: it is dropped and counted as
   ``invalid``, and the rest of its series is scored.
4. A staleness marker ends a series (its state is forgotten): samples before the first marker
   are scored first, samples after the last one start the series afresh, any between are
   dropped (counted as stale).
5. What was scored goes to the :class:`~eyenet.serving.writeback.ScoreWriter`, if one is set.

A tenant over its rate quota gets a 429 (worth a retry); a series over the tenant's series quota
is counted as refused and the request still succeeds (a retry would not help). Outcomes are
counted in ``eyenet_remote_write_samples_total{outcome}``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from eyenet.core.prometheus import RemoteSeries, decode_write, is_stale, parse_selector, series_id
from eyenet.monitoring import metrics as m
from eyenet.serving import schemas
from eyenet.serving.settings import RemoteWriteSettings
from eyenet.serving.writeback import WRITTEN


@dataclass(frozen=True)
class _Taken:
    """A selected series' samples in one scoring round."""

    labels: dict[str, str]
    id: str
    timestamps_ms: np.ndarray
    values: np.ndarray


class RemoteWriteIngest:
    """Scores remote_write requests through a pipeline (see the module docstring)."""

    def __init__(self, settings: RemoteWriteSettings, pipeline: Any, writer: Any | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.writer = writer
        self.rules = [(parse_selector(r.match), r.group) for r in settings.rules]

    def group_of(self, labels: dict[str, str]) -> str | None:
        """The group whose model scores a series with these labels (the first rule that matches), or None."""
        for selector, group in self.rules:
            if selector.matches(labels):
                return group
        return None

    async def write(self, tenant: str, body: bytes) -> dict[str, int]:
        """Score one remote_write body for ``tenant``; returns the samples by outcome."""
        s = self.settings
        series = decode_write(body, max_bytes=s.max_decoded_bytes, max_series=s.max_series, max_samples=s.max_samples)
        counts: Counter[str] = Counter()
        now_round: dict[str, list[_Taken]] = {}
        later: dict[str, list[_Taken]] = {}  # samples after a staleness marker: scored after the series ends
        ended: dict[str, list[str]] = {}
        for rs in series:
            n = len(rs.values)
            group = self.group_of(rs.labels) if n and rs.labels.get("__name__") not in WRITTEN else None
            if group is None:
                counts["unselected"] += n
                continue
            sid = series_id(rs.labels)
            if not schemas.is_series_id(sid):
                counts["invalid"] += n
                continue
            inf = np.isinf(rs.values)
            if inf.any():
                counts["invalid"] += int(inf.sum())
                rs = RemoteSeries(rs.labels, rs.timestamps_ms[~inf], rs.values[~inf])
            self._split(rs, sid, group, now_round, later, ended, counts)
        total = sum(len(t.values) for g in (now_round, later) for ts in g.values() for t in ts)
        if total:
            self.pipeline.rates.check(tenant, total)  # a 429 before anything is scored: the retry is whole
        for group, taken in now_round.items():
            await self._score(tenant, group, taken, counts)
        for group, ids in ended.items():
            await self.pipeline.end_series(tenant, group, ids)
        for group, taken in later.items():
            await self._score(tenant, group, taken, counts)
        out = {outcome: n for outcome, n in counts.items() if n}
        for outcome, n in out.items():
            m.REMOTE_WRITE.labels(outcome).inc(n)
        return out

    @staticmethod
    def _split(rs: RemoteSeries, sid: str, group: str, now_round: dict[str, list[_Taken]],
               later: dict[str, list[_Taken]], ended: dict[str, list[str]], counts: Counter[str]) -> None:
        stale = is_stale(rs.values)
        if not stale.any():
            now_round.setdefault(group, []).append(_Taken(rs.labels, sid, rs.timestamps_ms, rs.values))
            return
        first, last = int(np.argmax(stale)), len(stale) - 1 - int(np.argmax(stale[::-1]))
        counts["stale"] += last - first + 1  # the markers and whatever came between them
        if first:
            now_round.setdefault(group, []).append(
                _Taken(rs.labels, sid, rs.timestamps_ms[:first], rs.values[:first]))
        ended.setdefault(group, []).append(sid)
        if last + 1 < len(stale):
            later.setdefault(group, []).append(
                _Taken(rs.labels, sid, rs.timestamps_ms[last + 1 :], rs.values[last + 1 :]))

    async def _score(self, tenant: str, group: str, taken: list[_Taken], counts: Counter[str]) -> None:
        data = [schemas.SeriesData(t.id, t.values, t.timestamps_ms.astype("datetime64[ms]").astype("datetime64[ns]"))
                for t in taken]
        results = await self.pipeline.stream_series(tenant, group, data, [t.labels for t in taken])
        for t, r in zip(taken, results):
            body = r.body
            if "error" in body:
                counts["refused" if body.get("status") == 429 else "conflict"] += len(t.values)
                continue
            counts["late"] += body.get("dropped", 0)
            imputed = sum(1 for p in body["points"] if p.get("imputed"))
            counts["imputed"] += imputed
            counts["scored"] += len(body["points"]) - imputed
            if self.writer is not None and r.timestamps is not None and body["points"]:
                stamps = np.round(r.timestamps * 1000).astype(np.int64)
                self.writer.add(t.labels, body["model"], body["version"], stamps, body["points"])
