"""Prometheus remote_write in at a steady rate (``POST /api/v1/write``): 10,000 active series at 1,000
samples/s for 5 minutes; what EyeNet did with every sample, and how long each request took.

    eyenet up --config bench/remote_write.yaml      # its rules select bench_load (group default)
    python -m bench.remote_write --url http://127.0.0.1:8000 --key "$(cat .eyenet/admin.key)" \\
        [--series 10000] [--rate 1000] [--seconds 300] [--batch 500] [--warm 300] [--shards 4]

EyeNet scores only the series its config's ``remote_write.rules`` select, so the app must run with
bench/remote_write.yaml (or rules of its own that select ``--metric``); the bench stops if its
samples come back counted as ``unselected``. That file also raises the tenant's live-series
quota (10,000 by default, as many as the bench's series). The key needs the writer role (and
reader, for ``/metrics``); the admin key of ``eyenet up`` has both.

The sender behaves like Prometheus' remote_write queue: series ``bench_load{job="eyenet-bench",
series="00042"}``, each scraped every ``series / rate`` seconds (10 s) on a fixed grid, the series'
scrapes spread evenly over that interval (so the app receives ``--rate`` samples a second). The
series are cut into blocks of ``--batch`` consecutive series, and block b belongs to shard
b mod ``--shards``: each shard (a thread, one request in flight) sends one WriteRequest of its
next ``--batch`` samples as soon as they are all due, so the shards take turns and one request
leaves every ``batch / rate`` seconds (0.5 s), each series always through the same shard (its
samples stay in order, as with Prometheus' sharding by series). A sample's timestamp is its
scrape time on the grid: now, to within a few milliseconds, while the sender keeps up.

Answers 429 and 503 (and other 5xx, connection errors) are retried as Prometheus does: the same
body again after a backoff (30 ms doubling to 5 s, or the answer's Retry-After), at most
``--max-retries`` times, then dropped (counted as lost). 400 and 413 are not retried (lost,
reported); 401 and 403 stop the bench. Bodies are encoded just before they are sent
(``eyenet.core.prometheus.encode_write``; its cost is measured and reported); values are the
synthetic ``cpu_pct`` metric, shifted in time and level per series.

Warm-up, not timed: every series first gets ``--warm`` samples of history, 10 s apart, ending one
interval before the grid's start (bodies of ~``--warm-body`` samples, whole series each), so the
models are ready; then the shards send what came due meanwhile, in bodies of up to
``--warm-body`` samples, until each is less than two batches behind. The timed phase starts when
every shard has caught up and lasts ``--seconds``; the warm-up is bounded by ``--warm-timeout``.
At the defaults the history is 3,000,000 samples in 60 bodies (~35 MB, encoded in ~3 s of client
CPU); scored in-process, remote_write history goes at roughly 40,000 samples/s per core, so expect
one to two minutes (progress is printed every 10 s).

Reported: samples sent and answered 204, the achieved rate of the timed phase, answers by status
(first attempts, retries), request latency p50 / p99 / max (EyeNet scores a request's samples
before it answers 204, so a request's latency bounds the time from receipt to score), how late
the sender was, and ``eyenet_remote_write_samples_total{outcome}`` from ``/metrics`` (summed over
the router replicas' lines) before and after, with the check that every sample answered 204 is
counted under one outcome (scored, late, stale, refused, conflict, invalid, unselected; imputed
points are filled-in points, not samples sent, and should be 0 here). An attempt answered 5xx or
not at all may have been scored before it failed, and its retry is then counted again (late):
such attempts' samples widen the check to a range. The counters are app-wide:
run nothing else that remote-writes meanwhile. Nothing is recorded in bench/RESULTS.md by this script.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import requests

from bench import loopback_url
from eyenet.core.prometheus import RemoteSeries, encode_write

WRITE_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                 "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": "eyenet-bench-remote-write"}
COUNTER = "eyenet_remote_write_samples_total"
OUTCOMES = ("scored", "imputed", "unselected", "late", "stale", "refused", "conflict", "invalid")
#: Prometheus' queue defaults (min_backoff, max_backoff)
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.03, 5.0
#: EyeNet's default bounds of one request (remote_write.max_samples, max_series)
MAX_SAMPLES, MAX_SERIES = 100_000, 10_000
REQUEST_TIMEOUT_S = 60.0


def fail(message: str) -> SystemExit:
    return SystemExit(f"bench.remote_write: {message}")


# -- counters -------------------------------------------------------------------------------------
def read_counters(url: str, headers: dict[str, str]) -> dict[str, float]:
    """``eyenet_remote_write_samples_total`` by outcome, summed over the lines with a ``replica`` label
    (every router replica's, as the app's monitor merges them); the unlabelled lines if there are
    none (the monitor away: the answering replica's own)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        r = requests.get(f"{url}/metrics", headers=headers, timeout=30)
    except requests.ConnectionError as exc:
        raise fail(f"cannot reach {url}/metrics: {exc.__class__.__name__} (is the app running?)") from None
    except requests.RequestException as exc:
        raise fail(f"{url}/metrics: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    if r.status_code == 401:
        raise fail(f"{url} refused the key (401): {r.text[:200]} (pass --key, e.g. \"$(cat .eyenet/admin.key)\")")
    if r.status_code == 403:
        raise fail(f"{url}/metrics: the key may not read metrics (403): {r.text[:200]} "
                   f"(a writer or admin key is needed)")
    if r.status_code != 200:
        raise fail(f"{url}/metrics answered {r.status_code}: {r.text[:200]}")
    labelled: dict[str, float] = collections.defaultdict(float)
    plain: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name == COUNTER:
                (labelled if "replica" in s.labels else plain)[s.labels.get("outcome", "")] += s.value
    return dict(labelled if labelled else plain)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    keys = sorted(set(after) | set(before) | set(OUTCOMES))
    return {k: int(round(after.get(k, 0.0) - before.get(k, 0.0))) for k in keys}


def counted(d: dict[str, int]) -> int:
    """Samples the app counted under an outcome (imputed points are filled in, not samples sent)."""
    return sum(v for k, v in d.items() if k != "imputed")


# -- what is sent ---------------------------------------------------------------------------------
class Plan:
    """The scrape grid: sample ``c`` (cycle) of series ``k`` is at ``B + (c * series + k) / rate`` seconds;
    cycles ``-warm .. -1`` are the history, cycles from 0 the live samples. Shard ``s`` owns the series
    in blocks of ``batch`` consecutive series, block ``b`` to shard ``b % shards``, and sends its samples
    in grid order (its ``m``-th sample: cycle ``m // n_s``, its ``m % n_s``-th series)."""

    def __init__(self, series: int, rate: float, warm: int, shards: int, batch: int, metric: str,
                 start_ms: int) -> None:
        from eyenet.core import presets, synthetic

        self.series, self.rate, self.warm, self.shards, self.base_ms = series, rate, warm, shards, start_ms
        self.labels = [{"__name__": metric, "job": "eyenet-bench", "series": f"{k:05d}"} for k in range(series)]
        _, v, _ = synthetic.series("cpu_pct", n=presets.UP_ROWS, seed=presets.UP_SEED)
        self.values = np.asarray(v, dtype=float)
        self.offset = (7 * np.arange(series)) % len(self.values)
        self.level = (np.arange(series) % 10).astype(float)
        block = np.arange(series) // batch
        self.owned = [np.flatnonzero(block % shards == s) for s in range(shards)]

    def ts_ms(self, g: np.ndarray) -> np.ndarray:
        return self.base_ms + np.rint(np.asarray(g, dtype=np.float64) * 1000.0 / self.rate).astype(np.int64)

    def value(self, c: np.ndarray, k: np.ndarray) -> np.ndarray:
        return self.values[(self.offset[k] + c + self.warm) % len(self.values)] + self.level[k]

    def due(self, s: int, now_ms: int) -> int:
        """How many of shard ``s``'s live samples are due (timestamp at or before ``now_ms``)."""
        g = int(math.floor((now_ms - self.base_ms) * self.rate / 1000.0))
        while self.ts_ms(g + 1) <= now_ms:
            g += 1
        while g >= 0 and self.ts_ms(g) > now_ms:
            g -= 1
        if g < 0:
            return 0
        c, r = divmod(g, self.series)
        owned = self.owned[s]
        return c * len(owned) + int(np.searchsorted(owned, r, side="right"))

    def due_at(self, s: int, m: int) -> float:
        """Epoch seconds when shard ``s``'s ``m``-th live sample is scraped."""
        owned = self.owned[s]
        c, i = divmod(m, len(owned))
        return float(self.ts_ms(c * self.series + owned[i])) / 1000.0

    def _body(self, k: np.ndarray, c: np.ndarray) -> tuple[bytes, int, float]:
        """Samples (series ``k``, cycle ``c``), grouped by series in time order: body, oldest ts, encode s."""
        t0 = time.perf_counter()
        ts, x = self.ts_ms(c * self.series + k), self.value(c, k)
        order = np.lexsort((c, k))
        k, ts, x = k[order], ts[order], x[order]
        cuts = np.flatnonzero(np.diff(k)) + 1
        out = [RemoteSeries(self.labels[int(kk[0])], tt, xx)
               for kk, tt, xx in zip(np.split(k, cuts), np.split(ts, cuts), np.split(x, cuts))]
        body = encode_write(out)
        return body, int(ts.min()), time.perf_counter() - t0

    def live_body(self, s: int, m0: int, m1: int) -> tuple[bytes, int, float]:
        owned = self.owned[s]
        m = np.arange(m0, m1)
        return self._body(owned[m % len(owned)], m // len(owned))

    def history_body(self, ks: np.ndarray) -> tuple[bytes, int, float]:
        c = np.arange(-self.warm, 0)
        return self._body(np.repeat(ks, len(c)), np.tile(c, len(ks)))


# -- the sender -----------------------------------------------------------------------------------
@dataclass
class Sent:
    """One body: its phase, samples, when it was due and sent, its final answer and its attempts."""

    phase: str  # history | catch-up | live (before the timed phase) | timed
    samples: int
    due: float  # epoch s when its newest sample was scraped (history: when it was handed over)
    oldest_ms: int
    started: float  # epoch s of the first attempt
    ended: float
    status: int | str  # the final answer (204: taken)
    attempts: list[tuple[int | str, float]]  # (status, seconds) of every attempt
    encode_s: float


class Run:
    """What the shards and the main thread share."""

    def __init__(self) -> None:
        self.t_live: float | None = None  # epoch s: the timed phase starts (every shard caught up)
        self.stop_at: float | None = None  # epoch s: no sample due later is sent
        self.abort = threading.Event()
        self.fatal: str | None = None
        self.errors: list[str] = []  # the first answers that were neither 204 nor retried (their text)


class Shard(threading.Thread):
    def __init__(self, s: int, plan: Plan, url: str, headers: dict[str, str], run: Run,
                 args: argparse.Namespace) -> None:
        super().__init__(daemon=True, name=f"shard-{s}")
        self.s, self.plan, self.url, self.headers, self.run_state, self.args = s, plan, url, headers, run, args
        self.sent: list[Sent] = []
        self.history_left = 0
        self.caught_up = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with requests.Session() as session:
                self.session = session
                self._history()
                self._live()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread, which stops the run
            self.run_state.fatal = self.run_state.fatal or f"shard {self.s}: {type(exc).__name__}: {exc}"
            self.run_state.abort.set()
        finally:
            self.caught_up.set()
            self.done.set()

    def _history(self) -> None:
        a, owned = self.args, self.plan.owned[self.s]
        per = max(1, min(a.warm_body // a.warm, MAX_SERIES))
        chunks = [owned[i : i + per] for i in range(0, len(owned), per)]
        self.history_left = len(chunks)
        for ks in chunks:
            if self.run_state.abort.is_set():
                return
            body, oldest, enc = self.plan.history_body(ks)
            self._send("history", body, len(ks) * a.warm, time.time(), oldest, enc)
            self.history_left -= 1

    def _live(self) -> None:
        a, plan, run, s = self.args, self.plan, self.run_state, self.s
        m = 0
        while not self.caught_up.is_set():  # what came due during the history, in big bodies
            if run.abort.is_set():
                return
            n = plan.due(s, int(time.time() * 1000))
            if n - m < 2 * a.batch:
                self.caught_up.set()
                break
            # whole batches, so that the live batches after it are the blocks of the grid
            cap = a.warm_body if len(plan.owned[s]) <= MAX_SERIES else MAX_SERIES
            m1 = m + max(1, min(n - m, cap) // a.batch) * a.batch
            body, oldest, enc = plan.live_body(s, m, m1)
            self._send("catch-up", body, m1 - m, plan.due_at(s, m1 - 1), oldest, enc)
            m = m1
        while not run.abort.is_set():
            due = plan.due_at(s, m + a.batch - 1)
            if run.stop_at is not None and due > run.stop_at:
                return
            wait = due - time.time()
            if wait > 0:
                run.abort.wait(min(wait, 1.0))
                continue
            body, oldest, enc = plan.live_body(s, m, m + a.batch)
            phase = "timed" if run.t_live is not None and due >= run.t_live else "live"
            self._send(phase, body, a.batch, due, oldest, enc)
            m += a.batch

    def _send(self, phase: str, body: bytes, samples: int, due: float, oldest_ms: int, encode_s: float) -> None:
        """POST one body until it is taken, refused for good, or retried ``--max-retries`` times."""
        run, attempts, backoff = self.run_state, [], MIN_BACKOFF_S
        started = time.time()
        while True:
            t0 = time.perf_counter()
            try:
                r = self.session.post(self.url, data=body, headers=self.headers, timeout=REQUEST_TIMEOUT_S)
                status: int | str = r.status_code
            except requests.RequestException as exc:
                r, status = None, type(exc).__name__
            attempts.append((status, time.perf_counter() - t0))
            if status in (401, 403):
                run.fatal = f"{self.url} answered {status}: {r.text[:200]} (pass --key: a writer or admin key)"
                run.abort.set()
            retry = status == 429 or isinstance(status, str) or (isinstance(status, int) and status >= 500)
            if status == 204 or not retry or len(attempts) > self.args.max_retries or run.abort.is_set():
                if status not in (204, 401, 403) and r is not None and len(run.errors) < 5:
                    run.errors.append(f"{phase}: {status}: {r.text[:200]}")
                break
            wait = backoff
            if r is not None and r.headers.get("Retry-After"):
                try:
                    wait = max(wait, float(r.headers["Retry-After"]))
                except ValueError:
                    pass
            run.abort.wait(min(wait, 30.0))
            backoff = min(2 * backoff, MAX_BACKOFF_S)
        self.sent.append(Sent(phase, samples, due, oldest_ms, started, time.time(), status, attempts, encode_s))


# -- the run --------------------------------------------------------------------------------------
def pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else math.nan


def wait_settled(url: str, headers: dict[str, str], before: dict[str, float], taken: int,
                 limit_s: float = 30.0) -> dict[str, float]:
    """The counters once they account for every taken sample, or stop changing (replicas push every second)."""
    deadline, last, same = time.time() + limit_s, None, 0
    while True:
        now = read_counters(url, headers)
        d = delta(now, before)
        if counted(d) >= taken or time.time() > deadline:
            return now
        same = same + 1 if d == last else 0
        if same >= 5:
            return now
        last = d
        time.sleep(1.0)


def bench(args: argparse.Namespace) -> None:
    url = loopback_url("bench.remote_write", "--url", args.url, args.allow_remote)
    auth = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    before = read_counters(url, auth)  # reachable, the key works, and where the counters start
    plan = Plan(args.series, args.rate, args.warm, args.shards, args.batch, args.metric, int(time.time() * 1000))
    probe = plan.live_body(0, 0, min(args.batch, len(plan.owned[0])))
    print(f"{args.series} series, a sample of each every {args.series / args.rate:g} s ({args.rate:g} samples/s), "
          f"{args.shards} shards, bodies of {args.batch} samples ({len(probe[0])} bytes, encoded in "
          f"{1000 * probe[2]:.1f} ms); warm-up: {args.warm} samples of history per series", flush=True)
    run = Run()
    shards = [Shard(s, plan, f"{url}/api/v1/write", {**WRITE_HEADERS, **auth}, run, args) for s in range(args.shards)]
    t_warm = time.time()
    for sh in shards:
        sh.start()
    selected = False  # the app scored a sample of the bench: its rules select the metric
    next_report = time.time() + 10
    while not all(sh.caught_up.is_set() for sh in shards) and not run.abort.is_set():
        time.sleep(0.5)
        if time.time() - t_warm > args.warm_timeout:
            run.fatal = (f"the warm-up took over --warm-timeout {args.warm_timeout:g} s "
                         f"(history bodies left: {sum(sh.history_left for sh in shards)}); the app is slower than "
                         f"this needs: fewer --series or --warm")
            run.abort.set()
        if time.time() >= next_report:
            next_report = time.time() + 10
            d = delta(read_counters(url, auth), before)
            taken = sum(x.samples for sh in shards for x in list(sh.sent) if x.status == 204)
            print(f"  warm-up {time.time() - t_warm:.0f} s: {taken} samples taken, counted {d}", flush=True)
            selected = selected or d.get("scored", 0) > 0
            if d.get("unselected", 0) > 0 and not selected:
                run.fatal = (f"the app counts the bench's samples as unselected: start it with "
                             f"eyenet up --config bench/remote_write.yaml (a rule selecting {args.metric})")
                run.abort.set()
    if run.abort.is_set():
        for sh in shards:
            sh.join(timeout=REQUEST_TIMEOUT_S + 5)
        raise fail(run.fatal or "stopped")
    for _ in range(10):  # the app scores the bench's series (its rules select them): else stop here
        d = delta(read_counters(url, auth), before)
        if d.get("scored", 0) > 0 or d.get("unselected", 0) > 0:
            break
        time.sleep(0.5)
    if d.get("scored", 0) == 0:
        run.abort.set()
        for sh in shards:
            sh.join(timeout=REQUEST_TIMEOUT_S + 5)
        raise fail(f"the app scored none of the warm-up's samples (counted: {d}); it must run with rules that "
                   f"select {args.metric}: eyenet up --config bench/remote_write.yaml")
    warm_s = time.time() - t_warm
    cpu0 = time.process_time()
    run.t_live = time.time()
    run.stop_at = run.t_live + args.seconds
    print(f"warm-up done in {warm_s:.1f} s; timed phase of {args.seconds:g} s", flush=True)
    next_report = time.time() + 30
    while not all(sh.done.is_set() for sh in shards):
        time.sleep(0.5)
        if time.time() > run.stop_at + 10 * REQUEST_TIMEOUT_S:
            run.fatal = "the sender did not finish within 10 request timeouts of the end"
            run.abort.set()
            break
        if time.time() >= next_report:
            next_report = time.time() + 30
            timed = [x for sh in shards for x in list(sh.sent) if x.phase == "timed"]
            lat = [x.attempts[-1][1] for x in timed if x.status == 204]
            print(f"  {time.time() - run.t_live:.0f} s: {sum(x.samples for x in timed if x.status == 204)} samples "
                  f"taken, request p99 {1000 * pct(lat, 99):.0f} ms", flush=True)
    for sh in shards:
        sh.join(timeout=REQUEST_TIMEOUT_S + 5)
    cpu = time.process_time() - cpu0
    if run.fatal:
        raise fail(run.fatal)
    sent = [x for sh in shards for x in sh.sent]
    taken_all = sum(x.samples for x in sent if x.status == 204)
    after = wait_settled(url, auth, before, taken_all)
    report(args, sent, before, after, warm_s, run, cpu)


def report(args: argparse.Namespace, sent: list[Sent], before: dict[str, float], after: dict[str, float],
           warm_s: float, run: Run, cpu_s: float) -> None:
    by_phase: dict[str, list[Sent]] = collections.defaultdict(list)
    for x in sent:
        by_phase[x.phase].append(x)
    timed = by_phase["timed"]
    ok = [x for x in timed if x.status == 204]
    taken_timed = sum(x.samples for x in ok)
    # the schedule's window, longer if the sender fell behind (the last request's latency not included)
    span = (max([run.stop_at or 0.0] + [x.started for x in timed]) - run.t_live) if run.t_live else math.nan
    lat = [1000 * x.attempts[-1][1] for x in ok]  # the attempt that was taken: receipt to scored
    first = collections.Counter(str(x.attempts[0][0]) for x in timed)
    final = collections.Counter(str(x.status) for x in timed)
    retries = sum(len(x.attempts) - 1 for x in sent)
    retried_timed = collections.Counter(str(s) for x in timed for s, _ in x.attempts[:-1])
    lag = [1000 * max(0.0, x.started - x.due) for x in timed]
    age = [1000 * x.ended - x.oldest_ms for x in ok]  # scrape of its oldest sample to 204
    live_enc = [x.encode_s for x in sent if x.phase in ("live", "timed")]
    hist = by_phase["history"]
    hist_samples = sum(x.samples for x in hist)
    hist_enc = sum(x.encode_s for x in hist)
    lost = sum(x.samples for x in sent if x.status != 204)
    taken_all = sum(x.samples for x in sent if x.status == 204)
    d = delta(after, before)
    print(f"\nremote_write: {args.series} series at {args.rate:g} samples/s (a sample per series every "
          f"{args.series / args.rate:g} s), {args.shards} shards, {args.batch} samples per request\n")
    print("| phase | requests | samples | taken (204) | seconds |")
    print("|---|---:|---:|---:|---:|")
    for phase in ("history", "catch-up", "live", "timed"):
        xs = by_phase.get(phase, [])
        if xs:
            secs = max(x.ended for x in xs) - min(x.started for x in xs)
            print(f"| {phase} | {len(xs)} | {sum(x.samples for x in xs)} | "
                  f"{sum(x.samples for x in xs if x.status == 204)} | {secs:.1f} |")
    print(f"\nwarm-up (history + catch-up until every shard was less than two batches behind): {warm_s:.1f} s; "
          f"history encoded at {1e6 * hist_enc / max(hist_samples, 1):.2f} µs per sample")
    rate = taken_timed / span if span and span > 0 else 0.0
    print(f"timed phase: {taken_timed} samples taken in {span:.1f} s = {rate:.0f} samples/s "
          f"(target {args.rate:g}: {'met' if rate >= 0.99 * args.rate else 'not met'})")
    print(f"  answers, first attempts: {dict(first)}; final: {dict(final)}; retried attempts: "
          f"{dict(retried_timed) or 0} (all phases: {retries} retries)")
    print(f"  request latency of the taken attempt (receipt to scored): p50 {pct(lat, 50):.0f} ms, "
          f"p99 {pct(lat, 99):.0f} ms, max {max(lat, default=math.nan):.0f} ms "
          f"(target p99 <= 1000 ms: {'met' if pct(lat, 99) <= 1000 else 'not met'})")
    print(f"  sender lag behind the schedule: p99 {pct(lag, 99):.0f} ms, max {max(lag, default=math.nan):.0f} ms; "
          f"oldest sample's age at its 204 (batching included): p99 {pct(age, 99):.0f} ms")
    print(f"  client: encoding a live body {1000 * pct(live_enc, 50):.2f} ms p50 "
          f"({1e6 * pct(live_enc, 50) / args.batch:.1f} µs per sample); client CPU "
          f"{100 * cpu_s / span if span else math.nan:.1f} % of one core over the timed phase")
    print(f"\n{COUNTER} (delta over the whole run, summed over replicas): "
          + ", ".join(f"{k} {v}" for k, v in d.items()))
    n = counted(d)
    # an attempt answered 5xx or not at all may have been scored before it failed: its retry is then
    # counted again (as late), so such attempts widen the check by their samples
    unsure = sum(x.samples for x in sent for status, _ in x.attempts
                 if isinstance(status, str) or (isinstance(status, int) and status >= 500))
    verdict = "ok" if taken_all <= n <= taken_all + unsure else "MISMATCH"
    outcomes = " + ".join(f"{k} {d.get(k, 0)}" for k in OUTCOMES if k != "imputed")
    if unsure:
        print(f"check: samples taken (204) {taken_all} <= counted under an outcome {n} ({outcomes}) <= taken + "
              f"samples of attempts answered 5xx or not at all ({unsure}): {verdict}")
    else:
        print(f"check: samples taken (204) {taken_all} == counted under an outcome {n} ({outcomes}): {verdict}")
    if d.get("unselected", 0):
        print(f"note: {d['unselected']} samples unselected: the app's remote_write.rules do not select "
              f"{args.metric} (eyenet up --config bench/remote_write.yaml)")
    print(f"lost by the sender (never taken after {args.max_retries} retries, or refused for good): {lost} samples; "
          f"imputed points: {d.get('imputed', 0)} (0 expected: the grid has no gaps)")
    not_scored = taken_all - d.get("scored", 0)
    if not_scored:
        print(f"not scored but counted: {not_scored} samples (see the outcomes above)")
    if any(v < 0 for v in d.values()):
        print("note: a counter went down (a router replica restarted, or stopped pushing its metrics for "
              "over a minute): the check is not reliable for this run")
    if run.errors:
        print(f"first answers neither taken nor retried: {run.errors}")
    print(json.dumps({"series": args.series, "rate": args.rate, "seconds": args.seconds, "batch": args.batch,
                      "shards": args.shards, "warm_s": round(warm_s, 1), "timed_samples_taken": taken_timed,
                      "timed_rate": round(rate, 1), "latency_ms": {"p50": round(pct(lat, 50), 1),
                      "p99": round(pct(lat, 99), 1), "max": round(max(lat, default=math.nan), 1)},
                      "first_attempts": dict(first), "retries": retries, "taken": taken_all, "lost": lost,
                      "counters": d, "check": verdict}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the EyeNet app")
    p.add_argument("--key", default="", help="API key with the writer role (and reader, for /metrics); none: auth off")
    p.add_argument("--series", type=int, default=10_000, help="active series")
    p.add_argument("--rate", type=float, default=1000.0, help="samples a second over all series")
    p.add_argument("--seconds", type=float, default=300.0, help="length of the timed phase")
    p.add_argument("--batch", type=int, default=500, help="samples per request")
    p.add_argument("--warm", type=int, default=300, help="samples of history per series before the timed phase")
    p.add_argument("--warm-body", type=int, default=50_000, help="samples per warm-up request at most")
    p.add_argument("--warm-timeout", type=float, default=900.0, help="seconds the warm-up may take at most")
    p.add_argument("--shards", type=int, default=4, help="sender threads, each with its share of the series and "
                   "one request in flight")
    p.add_argument("--max-retries", type=int, default=10, help="retries of one body before it is dropped")
    p.add_argument("--metric", default="bench_load", help="metric name of the series (a rule must select it)")
    p.add_argument("--allow-remote", action="store_true", help="allow a URL that is not a loopback address")
    args = p.parse_args(argv)
    if args.series < 1 or args.rate <= 0 or args.seconds <= 0 or args.warm < 1 or args.max_retries < 0:
        p.error("--series, --rate, --seconds and --warm must be positive, --max-retries at least 0")
    if not 1 <= args.shards <= args.series:
        p.error("--shards: 1 to --series")
    if args.batch < 1 or not args.warm <= args.warm_body <= MAX_SAMPLES:
        p.error(f"--batch must be positive; --warm-body: --warm to {MAX_SAMPLES} (EyeNet's default "
                f"remote_write.max_samples)")
    if args.batch > MAX_SERIES:
        p.error(f"--batch: at most {MAX_SERIES} (series of one request, remote_write.max_series)")
    blocks = math.ceil(args.series / args.batch)
    if args.shards > blocks:
        print(f"--shards {args.shards}: only {blocks} blocks of --batch series to share; using {blocks}")
        args.shards = blocks
    bench(args)


if __name__ == "__main__":
    main()
