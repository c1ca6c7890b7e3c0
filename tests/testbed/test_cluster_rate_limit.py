"""The cluster stand-in rate-limits like a public RPC (api.mainnet-beta): above its limit per client address
it answers HTTP 429 with a JSON-RPC error body and Retry-After; another address has its own budget; a
validator joining through it still gets the genesis (it retries, as agave does). A real process on loopback."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from runbook.adapters.rpc import HttpStatusError, RpcClient
from runbook.testbed.cluster import RateLimited
from runbook.testbed.validator import join_cluster
from runbook.wait import wait_for
from tests.testbed import test_validator
from tests.testbed.test_validator import FAST, Proc

spawn = test_validator.spawn  # the fixture: stand-ins as real processes on free loopback ports

pytestmark = pytest.mark.integration

GET_SLOT = {"jsonrpc": "2.0", "id": 7, "method": "getSlot"}


def _burst(url: str, n: int, *, local_address: str = "127.0.0.1") -> list[httpx.Response]:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=local_address), timeout=5.0) as c:
        return [c.post(url, json=GET_SLOT) for _ in range(n)]


def test_above_its_limit_the_cluster_answers_429_like_a_public_rpc(spawn: Callable[..., Proc]) -> None:
    cluster = spawn("cluster", "--rate-limit", "4")
    cluster.wait_serving()
    answers = _burst(cluster.url, 12)
    codes = [r.status_code for r in answers]
    assert codes.count(200) <= 5 and 429 in codes, codes  # a bucket of 4 (one taken by wait_serving) + refill
    limited = answers[codes.index(429)]
    assert limited.headers["content-type"] == "application/json"
    assert int(limited.headers["retry-after"]) >= 1
    body = limited.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == 429 and "Too many requests" in body["error"]["message"]

    with RpcClient(url=cluster.url) as rpc:  # the client side sees the status and the Retry-After
        with pytest.raises(HttpStatusError) as caught:
            rpc.get_slot()
        assert caught.value.status_code == 429 and caught.value.retry_after is not None
        # after its Retry-After it answers again
        wait_for(cluster.alive(lambda: _burst(cluster.url, 1)[0].status_code), lambda c: c == 200, timeout=5,
                 interval=0.5, what="the cluster to answer after the Retry-After")

    other = _burst(cluster.url, 3, local_address="127.0.0.2")  # another client address: its own budget
    assert [r.status_code for r in other] == [200, 200, 200]


def test_without_a_limit_it_never_answers_429(spawn: Callable[..., Proc]) -> None:
    cluster = spawn("cluster", "--rate-limit", "0")
    cluster.wait_serving()
    assert {r.status_code for r in _burst(cluster.url, 30)} == {200}


def test_a_validator_joins_through_a_limited_cluster(spawn: Callable[..., Proc]) -> None:
    cluster = spawn("cluster", "--rate-limit", "1")
    cluster.wait_serving()
    assert 429 in [r.status_code for r in _burst(cluster.url, 4)]  # this address's budget is spent
    params = join_cluster([f"127.0.0.1:{cluster.port}"], timeout=10.0)  # retried after the 429
    assert params.to_dict() == FAST.to_dict()


def test_the_bucket_holds_one_seconds_worth_and_refills() -> None:
    now = [0.0]
    limiter = RateLimited(lambda *a: None, rate=4.0, clock=lambda: now[0])
    assert [limiter.admit("a") for _ in range(4)] == [None] * 4
    assert limiter.admit("a") == pytest.approx(0.25)
    assert limiter.admit("b") is None  # per client address
    now[0] = 0.25
    assert limiter.admit("a") is None and limiter.admit("a") is not None
