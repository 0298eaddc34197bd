"""Per-tenant rate quotas of a router replica: token buckets for requests/s and points/s (no Ray).

Each tenant has two buckets, refilled continuously at its rate and holding at
most ``burst_s`` seconds of it; a request takes one request token and one point
token per point it carries. A request that finds either bucket short is refused
whole (nothing is taken) with :class:`~eyenet.core.errors.QuotaExceededError`,
whose ``retry_after_s`` is the time until both buckets hold enough again: the
HTTP answer is 429 with ``Retry-After``. A request bigger than a full bucket is
let through when the bucket is full (it could never pass otherwise) and
empties it.

**The limits are per router replica.** Buckets live in each replica's
:class:`~eyenet.serving.pipeline.Pipeline`, with no coordination on the request
path; the ingress spreads a tenant's requests over the replicas, so the
app-wide rate a tenant gets is about ``replicas x`` the configured one. Set the
rates with the router's replica count in mind (``router.autoscaling``). The
live-series quota (``max_series_per_tenant``) is app-wide: the stream store
enforces it (:mod:`eyenet.serving.streams`).

**Pace of new series**: a third bucket per tenant, ``new_series_per_s``, holding
only :data:`PACE_BURST_S` of its rate, counts the series a tenant brings to the
replica (ones it does not hold: new ids, or series another replica held). A
request bringing more than the bucket holds waits
(:meth:`RateLimits.pace`, an asyncio sleep before the store is asked for them)
until they are paid for, and later ones queue behind that debt. A tenant that
sends 10,000 new ids at once is admitted at the pace instead of in one burst
that fills both cores, and one sending new ids past its live-series quota is
slowed before each refusal too. A request that would wait longer than
:data:`PACE_MAX_WAIT_S` behind the requests already waiting (a sender with many
requests of new series in flight) is answered 429 with ``Retry-After`` instead.

The table of buckets is bounded too (``max_tenants``, least recently used
dropped and counted in ``eyenet_evictions_total{structure="rate_buckets"}``);
a dropped tenant's buckets start full again when it returns.

**Fair share of a replica**: :class:`InFlight` caps the requests of one tenant in
progress at once in a replica (``max_inflight_per_tenant``); as many more wait
for a turn, in order, for up to ``hold_s``; the rest get 429, ``hold_s`` late
(an asyncio sleep, no turn held: a client retrying at once sends at most one
request per connection per ``hold_s``). The router's Serve slots
(``router.max_ongoing_requests``) are sized well above what these caps let in,
so requests held here never keep another tenant's request out of a replica.
:class:`Admission`, an ASGI middleware behind authentication, applies it before
a body is read, and sends the app's own 429s (a quota) ``hold_s`` late, still
holding the turn. A replica works on its requests concurrently, so without the
cap a tenant sending many requests at once queues its work in front of every
other tenant's; with it, another tenant's request waits behind at most that
many, and a client that retries a refusal at once instead of after its
Retry-After spends its own turns waiting, not the replica's CPU.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from eyenet.core.errors import QuotaExceededError
from eyenet.monitoring import metrics as m
from eyenet.serving.settings import QuotaSettings


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` held; starts full."""

    __slots__ = ("rate", "capacity", "tokens", "at")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = float(rate)
        self.capacity = max(float(capacity), 1.0)
        self.tokens = self.capacity
        self.at = now

    def refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def wait(self, cost: float) -> float:
        """Seconds until ``cost`` tokens are there (0: now); call :meth:`refill` first."""
        need = min(float(cost), self.capacity)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    def take(self, cost: float) -> None:
        self.tokens = max(0.0, self.tokens - min(float(cost), self.capacity))

    def owe(self, cost: float) -> float:
        """Take ``cost`` tokens, into debt if need be; the seconds until the debt is paid (0: none).
        Call :meth:`refill` first."""
        self.tokens -= float(cost)
        return max(0.0, -self.tokens) / self.rate


#: the pace bucket of new series holds this many seconds of its rate (a small burst: the point is pacing)
PACE_BURST_S = 0.125
#: a request whose new series would wait longer than this behind its tenant's pace is refused (429)
PACE_MAX_WAIT_S = 10.0


class RateLimits:
    """The request and point buckets of every tenant seen by this replica (see the module docstring)."""

    def __init__(self, settings: QuotaSettings | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or QuotaSettings()
        self.clock = clock
        # per tenant: its requests, points and new series buckets (None: unlimited)
        self._buckets: OrderedDict[str, tuple[TokenBucket | None, ...]] = OrderedDict()
        self.refused = 0
        self.evicted = 0
        self.paced = 0  # requests that waited for the pace of new series

    def _of(self, tenant: str, now: float) -> tuple[TokenBucket | None, ...]:
        pair = self._buckets.get(tenant)
        if pair is not None:
            self._buckets.move_to_end(tenant)
            return pair
        q = self.settings.of(tenant)
        burst = self.settings.burst_s
        pair = (None if q.requests_per_s is None else TokenBucket(q.requests_per_s, q.requests_per_s * burst, now),
                None if q.points_per_s is None else TokenBucket(q.points_per_s, q.points_per_s * burst, now),
                None if q.new_series_per_s is None else TokenBucket(q.new_series_per_s,
                                                                    q.new_series_per_s * PACE_BURST_S, now))
        self._buckets[tenant] = pair
        while len(self._buckets) > self.settings.max_tenants:
            self._buckets.popitem(last=False)
            self.evicted += 1
            m.EVICTIONS.labels("rate_buckets").inc()
        return pair

    def check(self, tenant: str, points: int) -> None:
        """Take one request and ``points`` points of ``tenant``'s buckets, or raise
        :class:`QuotaExceededError` (taking nothing) naming the limit and when to retry."""
        now = self.clock()
        requests, pts, _ = self._of(tenant, now)
        waits = []
        for bucket, cost, what in ((requests, 1, "requests/s"), (pts, points, "points/s")):
            if bucket is not None:
                bucket.refill(now)
                w = bucket.wait(cost)
                if w > 0:
                    waits.append((w, what, bucket.rate))
        if waits:
            self.refused += 1
            wait, what, rate = max(waits)
            m.QUOTA_REFUSED.labels(what).inc()
            raise QuotaExceededError(f"tenant {tenant!r}: over its quota of {rate:g} {what} (per router replica); "
                                     f"retry in {wait:.2f} s", retry_after_s=max(1.0, math.ceil(wait)))
        for bucket, cost in ((requests, 1), (pts, points)):
            if bucket is not None:
                bucket.take(cost)

    def __len__(self) -> int:
        return len(self._buckets)

    def pace(self, tenant: str, new_series: int) -> float:
        """Seconds ``tenant``'s request that starts ``new_series`` series waits before it goes on
        (0: at once): the series are paid for from its pace bucket, into debt (see the module docstring)."""
        if new_series <= 0:
            return 0.0
        now = self.clock()
        bucket = self._of(tenant, now)[2]
        if bucket is None:
            return 0.0
        bucket.refill(now)
        if (new_series - bucket.tokens) / bucket.rate > PACE_MAX_WAIT_S and bucket.tokens < 0:
            self.refused += 1  # behind too many others: told when the debt is paid instead of waiting
            m.QUOTA_REFUSED.labels("new_series/s").inc()
            behind = -bucket.tokens / bucket.rate
            raise QuotaExceededError(f"tenant {tenant!r}: its new series wait {behind:.1f} s for its pace of "
                                     f"{bucket.rate:g} new series a second (per router replica); retry then, or "
                                     f"send fewer new series at once", retry_after_s=max(1.0, math.ceil(behind)))
        wait = bucket.owe(new_series)
        if wait > 0:
            self.paced += 1
            m.QUOTA_PACED.inc(wait)
        return wait

    def stats(self) -> dict[str, int]:
        return {"tenants": len(self._buckets), "refused": self.refused, "evicted": self.evicted, "paced": self.paced}


class InFlight:
    """Requests in progress per tenant in this replica: at most ``max_inflight`` each, as many more
    waiting (up to ``hold_s``) for one of them to finish, beyond that refused at once (see the
    module docstring). Tenants with nothing in progress take no memory. Used from one event loop."""

    def __init__(self, settings: QuotaSettings | None = None) -> None:
        self.settings = settings or QuotaSettings()
        self.now: dict[str, int] = {}
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self.refused = 0

    def _refuse(self, tenant: str, n: int) -> QuotaExceededError:
        self.refused += 1
        m.QUOTA_REFUSED.labels("inflight").inc()
        return QuotaExceededError(f"tenant {tenant!r}: {n} requests in progress on this replica, its most "
                                  f"(max_inflight_per_tenant); wait for answers before sending more",
                                  retry_after_s=1.0)

    async def enter(self, tenant: str) -> None:
        """Count a request of ``tenant`` in: at once while it has fewer than its maximum in progress,
        else after waiting up to ``hold_s`` for a turn (first come, first served); raises
        :class:`QuotaExceededError` when no turn comes or too many wait already."""
        cap = self.settings.of(tenant).max_inflight
        n = self.now.get(tenant, 0)
        if cap is None or n < cap:
            self.now[tenant] = n + 1
            return
        queue = self.waiting.setdefault(tenant, deque())
        if len(queue) >= cap or self.settings.hold_s <= 0:
            if not queue:
                del self.waiting[tenant]
            raise self._refuse(tenant, n)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), timeout=self.settings.hold_s)
        except BaseException as exc:  # no turn in time, or the request went away while waiting
            if turn.done() and not turn.cancelled():  # handed a turn just as the wait ended: pass it on
                self.leave(tenant)
            else:
                turn.cancel()
            if isinstance(exc, asyncio.TimeoutError):
                raise self._refuse(tenant, self.now.get(tenant, 0)) from None
            raise
        finally:
            if turn in queue:
                queue.remove(turn)
            if not queue:
                self.waiting.pop(tenant, None)

    def leave(self, tenant: str) -> None:
        """A request of ``tenant`` is done: its turn goes to the first one waiting, if any."""
        queue = self.waiting.get(tenant)
        while queue:
            turn = queue.popleft()
            if not turn.done():
                turn.set_result(None)  # the count stays: the turn moves to the waiting request
                return
        n = self.now.get(tenant, 0) - 1
        if n > 0:
            self.now[tenant] = n
        else:
            self.now.pop(tenant, None)

    def stats(self) -> dict[str, int]:
        return {"tenants": len(self.now), "requests": sum(self.now.values()),
                "waiting": sum(len(q) for q in self.waiting.values()), "refused": self.refused}


class Admission:
    """Pure ASGI, inside the authentication middleware: each request of a credential takes a turn of
    its tenant's :class:`InFlight` (found through ``limits``, which a replica sets when it starts;
    None: no cap) before its body is read; without one, 429 with ``Retry-After``. A 429 the app
    answers while the request holds its turn (a quota) is sent ``hold_s`` late at most (never
    later than its Retry-After), still holding the turn: a client that retries at once instead of
    after Retry-After is slowed to its in-flight cap per ``hold_s``, at no CPU cost."""

    def __init__(self, app: Any, limits: Callable[[], InFlight | None], identity: Callable[[], Any]) -> None:
        self.app = app
        self.limits = limits
        self.identity = identity

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limits = self.limits() if scope["type"] == "http" else None
        who = self.identity() if limits is not None else None
        if who is None or who.name == "public":
            return await self.app(scope, receive, send)
        tenant = who.tenant
        hold_s = limits.settings.hold_s
        try:
            await limits.enter(tenant)
        except QuotaExceededError as exc:
            from eyenet.serving.http import error_response

            if hold_s > 0:  # no turn at all: answered hold_s late too (no turn held), so a client that
                await asyncio.sleep(min(hold_s, exc.retry_after_s))  # retries at once is paced, not served
            return await error_response(exc)(scope, receive, send)

        async def held(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 429 and hold_s > 0:
                retry = next((v for k, v in message.get("headers", []) if k.lower() == b"retry-after"), b"1")
                try:
                    wait = min(hold_s, float(retry))
                except ValueError:
                    wait = hold_s
                await asyncio.sleep(wait)
            await send(message)

        try:
            await self.app(scope, receive, held)
        finally:
            limits.leave(tenant)
