"""The node RPC adapter against an httpx mock transport, plus one real connection failure."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from runbook.adapters.rpc import HealthResponse, NodeVersion, RpcClient, RpcError, RpcHealth
from runbook.errors import AdapterError

URL = "http://node.test:8899"
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> RpcClient:
    return RpcClient(url=URL + "/", timeout=1.0, transport=httpx.MockTransport(handler))


def rpc_answer(result: Any = None, *, error: dict[str, Any] | None = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and str(request.url) == URL
        body = json.loads(request.content)
        assert body["jsonrpc"] == "2.0" and isinstance(body["id"], int)
        payload = {"jsonrpc": "2.0", "id": body["id"]}
        payload |= {"error": error} if error is not None else {"result": result}
        return httpx.Response(200, json=payload)

    return handle


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, "ok", "ok"),
        (200, "behind", "behind"),
        (200, "unknown", "unknown"),
        (200, "ok\n", "ok"),
        (503, "ok", "error"),
        (200, "<html>bad gateway</html>", "error"),
        (200, "", "error"),
    ],
)
def test_health_verdict(status: int, body: str, verdict: str) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET" and request.url.path == "/health"
        return httpx.Response(status, text=body)

    h = client(handle).health()
    assert h == HealthResponse(url=URL, status_code=status, body=body)
    assert h.verdict == verdict and h.ok is (verdict == "ok")


def test_get_health_rpc_reads_agaves_error_object() -> None:
    assert client(rpc_answer("ok")).get_health_rpc() == RpcHealth(status="ok", slots_behind=0)
    behind = {"code": -32005, "message": "Node is behind by 42 slots", "data": {"numSlotsBehind": 42}}
    assert client(rpc_answer(error=behind)).get_health_rpc() == RpcHealth(
        status="behind", slots_behind=42, message="Node is behind by 42 slots"
    )
    unknown = {"code": -32005, "message": "Node is unhealthy", "data": {"numSlotsBehind": None}}
    assert client(rpc_answer(error=unknown)).get_health_rpc().status == "unknown"
    with pytest.raises(RpcError, match="-32601"):
        client(rpc_answer(error={"code": -32601, "message": "Method not found"})).get_health_rpc()


def test_typed_methods() -> None:
    assert client(rpc_answer(123456)).get_slot() == 123456
    assert client(rpc_answer({"solana-core": "2.1.0", "feature-set": 77})).get_version() == NodeVersion("2.1.0", 77)
    assert client(rpc_answer({"solana-core": "2.1.0"})).get_version().feature_set is None
    key = "DkNx7RQDpQiL7tqoZsCfwgBUYsywKuuwehJXFjSgQS9N"
    assert client(rpc_answer({"identity": key})).get_identity() == key


def test_get_slot_sends_commitment() -> None:
    seen: list[Any] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body.get("params"))
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": 1})

    rpc = client(handle)
    rpc.get_slot()
    rpc.get_slot(commitment="finalized")
    assert seen == [None, [{"commitment": "finalized"}]]


def test_json_rpc_error_names_url_method_and_code() -> None:
    rpc = client(rpc_answer(error={"code": -32601, "message": "Method not found"}))
    with pytest.raises(RpcError) as err:
        rpc.get_identity()
    e = err.value
    assert (e.code, e.method, e.url, e.rpc_message) == (-32601, "getIdentity", URL, "Method not found")
    assert isinstance(e, AdapterError)
    assert "getIdentity" in str(e) and URL in str(e) and "-32601" in str(e)


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (httpx.Response(502, text="upstream down"), "HTTP 502"),
        (httpx.Response(200, text="not json"), "not JSON"),
        (httpx.Response(200, json=[1, 2]), "not a JSON-RPC response"),
        (httpx.Response(200, json={"jsonrpc": "2.0", "id": 1}), "no result"),
        (httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": "many"}), "expected an integer slot"),
    ],
)
def test_bad_answers_become_adapter_errors(response: httpx.Response, problem: str) -> None:
    with pytest.raises(AdapterError, match=problem) as err:
        client(lambda request: response).get_slot()
    assert "getSlot" in str(err.value) and URL in str(err.value) and not isinstance(err.value, RpcError)


def test_timeouts_become_adapter_errors() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(AdapterError, match="ReadTimeout"):
        client(handle).get_version()
    with pytest.raises(AdapterError, match="GET /health"):
        client(handle).health()


def test_connection_refused_names_url_and_method() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{port}"
        with RpcClient(url=url, timeout=2.0) as rpc:
            with pytest.raises(AdapterError, match="ConnectError") as err:
                rpc.get_slot()
            assert url in str(err.value) and "getSlot" in str(err.value)
            with pytest.raises(AdapterError, match="GET /health"):
                rpc.health()


def test_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        RpcClient(URL)  # type: ignore[misc]
    assert repr(RpcClient(url=URL + "/")) == f"RpcClient(url={URL!r})"
