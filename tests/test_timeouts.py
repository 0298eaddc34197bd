"""Every actor call on the request path is bounded: a slow or absent actor is a 503 with Retry-After."""
from __future__ import annotations

import asyncio

import pytest

from eyenet.core.errors import UnavailableError, UnknownNameError
from eyenet.serving import http
from eyenet.serving.settings import AppConfig


class _Method:
    def __init__(self, behaviour):
        self.behaviour = behaviour

    def remote(self, *args):
        return self.behaviour()


class _FakeActor:
    """An actor handle whose calls hang, fail as an absent actor would, or raise an EyeNet error."""

    def __init__(self, behaviour):
        self.claim = self.sync = self.wanted = self.delete = self.health = _Method(behaviour)


def _hangs():
    return asyncio.get_running_loop().create_future()  # never resolved


async def _away_coro():
    raise ConnectionError("actor died")


async def _unknown_coro():
    raise UnknownNameError("series 'x' is unknown")


def test_a_store_call_slower_than_its_timeout_is_unavailable_with_retry_after():
    from eyenet.serve.deployments import _StoreActor

    store = _StoreActor(_FakeActor(_hangs), timeout_s=0.05, retry_after_s=4)
    with pytest.raises(UnavailableError, match="stream store did not answer within 0.05 s") as err:
        asyncio.run(store.claim("r1", ["t/g/s"], 2.0, 0.0))
    assert err.value.retry_after_s == 4
    assert http.error_status(err.value) == (503, "unavailable")
    assert http.error_headers(503, err.value) == {"Retry-After": "4"}


@pytest.mark.parametrize("method", ["claim", "sync", "wanted", "delete", "health"])
def test_an_absent_store_is_unavailable_and_its_own_errors_keep_their_status(method):
    from eyenet.serve.deployments import _StoreActor

    args = {"claim": ("r1", ["k"], 2.0, 1.0), "sync": ("r1", [], [], 2.0), "wanted": ("r1", 0.1),
            "delete": ("k", "r1", 2.0), "health": ()}[method]
    away = _StoreActor(_FakeActor(_away_coro), timeout_s=1)
    with pytest.raises(UnavailableError, match="not available"):
        asyncio.run(getattr(away, method)(*args))
    unknown = _StoreActor(_FakeActor(_unknown_coro), timeout_s=1)
    with pytest.raises(UnknownNameError):
        asyncio.run(getattr(unknown, method)(*args))


def test_timeouts_are_settings_with_sane_defaults():
    t = AppConfig().timeouts
    assert 0 < t.store_s <= 30 and 0 < t.monitor_s <= 30 and t.retry_after_s >= 1
    # an operator call may wait for a switch; never shorter than the controller's own wait for replicas
    assert t.controller_s > AppConfig().controller.ready_timeout_s
    with pytest.raises(ValueError):
        AppConfig(timeouts={"store_s": 0})
