"""Scores written back to a metrics store through Prometheus remote_write, off the request path.

For each scored point of a series that came in through remote_write, three samples go out with
the series' labels, its metric name as ``metric``, and ``model`` and ``version`` (the model that
scored it):
``eyenet_anomaly_score`` (the ensemble score in [0, 1]), ``eyenet_expected_value`` (what the
model expected, when it says) and ``eyenet_alarm`` (1 or 0). Imputed points are not written.

:class:`ScoreWriter` queues samples (at most ``max_queue``; beyond it the oldest are dropped and
counted) and a background task sends them in batches of at most ``max_batch`` every
``interval_s``, snappy-compressed protobuf as the remote_write 1.0 spec says. A batch that fails
with a connection error, a timeout, a 5xx or a 429 is retried with exponential backoff up to
``max_backoff_s`` (the queue keeps filling meanwhile, within its bound); a 4xx other than 429
means the receiver will never take it, so it is dropped and counted. A 400 may come from one
series alone (Prometheus refuses a whole request for one sample older than what it holds), so a
refused batch of several series is sent again one series at a time, once, and only the series
refused again are dropped. A writer never queues a point at or before the last one it queued of
the same series; with several router replicas a series' points may still reach the receiver out
of order (each replica writes its own), which Prometheus takes with ``out_of_order_time_window``.
Counters: ``eyenet_writeback_samples_total{outcome}`` and ``eyenet_writeback_retries_total``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from eyenet.core.prometheus import RemoteSeries, encode_write
from eyenet.monitoring import metrics as m
from eyenet.serving.settings import WritebackSettings

log = logging.getLogger(__name__)

#: the series names written back
SCORE, EXPECTED, ALARM = "eyenet_anomaly_score", "eyenet_expected_value", "eyenet_alarm"
WRITTEN = frozenset({SCORE, EXPECTED, ALARM})
#: series whose last written timestamp a writer remembers (least recently written forgotten beyond it)
MAX_REMEMBERED = 100_000

#: sends one compressed body; returns the HTTP status (raises OSError when the receiver is unreachable)
Post = Callable[[bytes], Awaitable[int]]


class ScoreWriter:
    """A bounded queue of score samples and the task that writes them (see the module docstring)."""

    def __init__(self, settings: WritebackSettings, post: Post | None = None) -> None:
        if settings.url is None and post is None:
            raise ValueError("ScoreWriter needs writeback.url")
        self.settings = settings
        self.post = post or self._post
        # one entry per sample: (label set, timestamp in ms, value); label sets are tuples of pairs
        self._queue: deque[tuple[tuple[tuple[str, str], ...], int, float]] = deque()
        self._task: asyncio.Task | None = None
        self._last: OrderedDict[tuple[tuple[str, str], ...], int] = OrderedDict()  # series -> last ms queued
        self.sent = self.dropped = self.rejected = self.failures = 0
        self.error: str | None = None

    # -- queueing (the request path: no I/O) ---------------------------------------------------
    def add(self, labels: Mapping[str, str], model: str, version: int, timestamps_ms: np.ndarray,
            points: list[dict[str, Any]]) -> None:
        """Queue the score samples of a series' scored points (``points``: response bodies' points,
        aligned with ``timestamps_ms``; imputed points and points without a score are skipped)."""
        base = {k: v for k, v in labels.items() if k not in ("__name__", "model", "version")}
        base.update(metric=labels.get("__name__", ""), model=model, version=str(version))
        names = {name: tuple(sorted({**base, "__name__": name}.items())) for name in (SCORE, EXPECTED, ALARM)}
        q, last = self._queue, self._last
        newest = last.get(names[SCORE], -1 << 62)
        for t, p in zip(timestamps_ms.tolist(), points):
            if p.get("imputed") or p.get("score") is None:
                continue
            if t <= newest:  # a point of this series at or before one already queued: the receiver refuses it
                m.WRITEBACK.labels("late").inc()
                continue
            newest = int(t)
            q.append((names[SCORE], int(t), float(p["score"])))
            q.append((names[ALARM], int(t), 1.0 if p.get("alarm") else 0.0))
            if p.get("expected") is not None:
                q.append((names[EXPECTED], int(t), float(p["expected"])))
        if newest > -1 << 62:
            last[names[SCORE]] = newest
            last.move_to_end(names[SCORE])
            if len(last) > MAX_REMEMBERED:
                last.popitem(last=False)
        over = len(q) - self.settings.max_queue
        if over > 0:
            for _ in range(over):
                q.popleft()
            self.dropped += over
            m.WRITEBACK.labels("dropped").inc(over)

    def __len__(self) -> int:
        return len(self._queue)

    # -- sending (a background task) -----------------------------------------------------------
    def start(self) -> None:
        """Run the sender on the running loop (idempotent; restarted if it died)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            while self._queue:
                if not await self.send_batch():
                    break  # the queue overflowed while a batch was retried: start again on the next tick

    def _take(self) -> list[tuple[tuple[tuple[str, str], ...], int, float]]:
        n = min(len(self._queue), self.settings.max_batch)
        return [self._queue.popleft() for _ in range(n)]

    @staticmethod
    def encode(batch: list[tuple[tuple[tuple[str, str], ...], int, float]]) -> bytes:
        """One remote_write body: a series per label set, its samples in time order."""
        by_series: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        for labels, t, v in batch:
            by_series.setdefault(labels, []).append((t, v))
        out = []
        for labels, samples in by_series.items():
            samples.sort()
            out.append(RemoteSeries(dict(labels), np.array([t for t, _ in samples], dtype=np.int64),
                                    np.array([v for _, v in samples], dtype=float)))
        return encode_write(out)

    async def send_batch(self) -> bool:
        """Send one batch, retrying with backoff; True when it was taken (or refused for good), False
        when it was dropped because the queue overflowed while it was retried."""
        batch = self._take()
        if not batch:
            return True
        series: dict[tuple[tuple[str, str], ...], list[Any]] = {}
        for sample in batch:
            series.setdefault(sample[0], []).append(sample)
        status = await self._send(batch)
        if status != 400 or len(series) == 1:
            return status is not None
        for part in series.values():  # a 400 of one series must not cost the others theirs
            if await self._send(part, split=True) is None:
                return False
        return True

    async def _send(self, batch: list[Any], split: bool = False) -> int | None:
        """POST ``batch`` until it is taken or refused for good; its status (None: dropped, the queue
        overflowed while it was retried). A 400 of a batch of several series is left to the caller."""
        body = self.encode(batch)
        delay = min(0.1, self.settings.max_backoff_s)
        while True:
            try:
                status = await self.post(body)
            except (OSError, asyncio.TimeoutError) as exc:
                status, reason = None, f"{type(exc).__name__}: {exc}"
            else:
                reason = f"HTTP {status}"
            if status is not None and 200 <= status < 300:
                self.sent += len(batch)
                self.error = None
                m.WRITEBACK.labels("sent").inc(len(batch))
                return status
            if status == 400 and not split and len({s[0] for s in batch}) > 1:
                return status
            if status is not None and 400 <= status < 500 and status != 429:
                self.rejected += len(batch)
                self.error = f"the receiver refused {len(batch)} samples ({reason}); dropped"
                m.WRITEBACK.labels("rejected").inc(len(batch))
                log.warning("writeback: %s", self.error)
                return status
            self.failures += 1
            self.error = f"writing scores failed ({reason}); retrying"
            m.WRITEBACK_RETRIES.inc()
            log.debug("writeback: %s in %.1f s", self.error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.max_backoff_s)
            if len(self._queue) + len(batch) > self.settings.max_queue:  # the queue overflowed meanwhile
                self.dropped += len(batch)
                m.WRITEBACK.labels("dropped").inc(len(batch))
                return None

    async def _post(self, body: bytes) -> int:
        s = self.settings
        headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                   "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": "eyenet"}
        token = os.environ.get(s.token_env) if s.token_env else None
        if token:
            headers["Authorization"] = f"Bearer {token}"

        def send() -> int:
            req = urllib.request.Request(s.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=s.timeout_s) as r:  # noqa: S310 - a configured URL
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code

        return await asyncio.to_thread(send)

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self._queue), "max_queue": self.settings.max_queue, "sent": self.sent,
                "dropped": self.dropped, "rejected": self.rejected, "retries": self.failures, "error": self.error}
