"""The node RPC adapter: agave's ``/health`` and JSON-RPC over httpx.

One client per node URL (a validator, the ingress in front of it, or the reference cluster RPC)::

    with RpcClient(url="http://127.0.0.1:18899") as node:
        node.health().verdict          # "ok" | "behind" | "unknown" | "error"
        node.get_slot()

Connection failures, non-200 JSON-RPC answers and JSON-RPC error objects raise
:class:`~runbook.errors.AdapterError` (JSON-RPC errors as its subclass :class:`RpcError`), naming the
URL and the method. ``getHealth``'s "node is behind" error is an answer, not a failure:
:meth:`RpcClient.get_health_rpc` returns it as an :class:`RpcHealth`.
"""

from __future__ import annotations

import email.utils
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import httpx

from runbook.errors import AdapterError

Verdict = Literal["ok", "behind", "unknown", "error"]
NODE_UNHEALTHY = -32005  # agave's RpcCustomError::NodeUnhealthy


@dataclass(frozen=True)
class HealthResponse:
    """What ``GET /health`` answered. agave answers HTTP 200 with body ``ok``, ``behind`` or ``unknown``:
    the status code alone says nothing about health."""

    url: str
    status_code: int
    body: str
    # the answer's headers, names in lower case (an ingress's X-Upstream: which upstream served it)
    headers: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def header(self, name: str) -> str | None:
        """One header of the answer (case-insensitive), None when absent."""
        return self.headers.get(name.lower())

    @property
    def verdict(self) -> Verdict:
        body = self.body.strip()
        if self.status_code == 200 and body in ("ok", "behind", "unknown"):
            return body  # type: ignore[return-value]
        return "error"

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


@dataclass(frozen=True)
class RpcHealth:
    """What JSON-RPC ``getHealth`` answered: ``ok``, ``behind`` (with the distance) or ``unknown``."""

    status: Literal["ok", "behind", "unknown"]
    slots_behind: int | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class NodeVersion:
    solana_core: str
    feature_set: int | None


class RpcError(AdapterError):
    """The node answered a JSON-RPC call with an error object."""

    def __init__(self, *, url: str, method: str, code: int, rpc_message: str, data: Any = None) -> None:
        self.url = url
        self.method = method
        self.code = code
        self.rpc_message = rpc_message
        self.data = data
        super().__init__(f"RPC {method} at {url}: JSON-RPC error {code}: {rpc_message}", obj=url)


class HttpStatusError(AdapterError):
    """The endpoint answered a JSON-RPC call with an HTTP status other than 200 (a public RPC's 429, a
    proxy's 502...). ``retry_after`` is the ``Retry-After`` header in seconds, when the answer had one."""

    def __init__(self, *, url: str, method: str, status_code: int, body: str, retry_after: float | None) -> None:
        self.url = url
        self.method = method
        self.status_code = status_code
        self.retry_after = retry_after
        super().__init__(f"RPC {method} at {url}: HTTP {status_code}: {body.strip()[:200]!r}", obj=url)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` (delta-seconds or an HTTP-date) in seconds from now; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RpcClient:
    """A synchronous client of one node's RPC endpoint. Keyword-only; ``transport`` is for tests."""

    def __init__(
        self,
        *,
        url: str,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._ids = itertools.count(1)
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers, transport=transport)

    # ---- lifecycle
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RpcClient(url={self.url!r})"

    # ---- transport
    def _fail(self, method: str, problem: str) -> AdapterError:
        return AdapterError(f"RPC {method} at {self.url}: {problem}", obj=self.url)

    def health(self) -> HealthResponse:
        """``GET /health``. Any HTTP answer is returned (check ``verdict``); no answer raises."""
        try:
            r = self._client.get(f"{self.url}/health")
        except httpx.HTTPError as exc:
            raise self._fail("GET /health", f"{type(exc).__name__}: {exc}") from exc
        return HealthResponse(url=self.url, status_code=r.status_code, body=r.text,
                              headers={k.lower(): v for k, v in r.headers.items()})

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        """One JSON-RPC call; returns ``result`` or raises (:class:`RpcError` for an error object)."""
        payload: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            payload["params"] = params
        try:
            r = self._client.post(self.url, json=payload)
        except httpx.HTTPError as exc:
            raise self._fail(method, f"{type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise HttpStatusError(url=self.url, method=method, status_code=r.status_code, body=r.text,
                                  retry_after=retry_after_seconds(r.headers.get("Retry-After")))
        try:
            body = r.json()
        except ValueError as exc:
            raise self._fail(method, f"not JSON: {r.text.strip()[:200]!r}") from exc
        if not isinstance(body, dict):
            raise self._fail(method, f"not a JSON-RPC response: {body!r}"[:300])
        if (error := body.get("error")) is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(error)
            data = error.get("data") if isinstance(error, dict) else None
            raise RpcError(
                url=self.url,
                method=method,
                code=code if isinstance(code, int) else 0,
                rpc_message=str(message),
                data=data,
            )
        if "result" not in body:
            raise self._fail(method, f"no result in response: {body!r}"[:300])
        return body["result"]

    # ---- methods
    def get_health_rpc(self) -> RpcHealth:
        """JSON-RPC ``getHealth``: agave reports an unhealthy node as error -32005, which is an answer."""
        try:
            result = self.call("getHealth")
        except RpcError as exc:
            if exc.code != NODE_UNHEALTHY:
                raise
            behind = exc.data.get("numSlotsBehind") if isinstance(exc.data, dict) else None
            if isinstance(behind, int):
                return RpcHealth(status="behind", slots_behind=behind, message=exc.rpc_message)
            return RpcHealth(status="unknown", message=exc.rpc_message)
        if result != "ok":
            raise self._fail("getHealth", f"unexpected result {result!r}")
        return RpcHealth(status="ok", slots_behind=0)

    def get_slot(self, *, commitment: str | None = None) -> int:
        result = self.call("getSlot", [{"commitment": commitment}] if commitment else None)
        if not isinstance(result, int) or isinstance(result, bool):
            raise self._fail("getSlot", f"expected an integer slot, got {result!r}")
        return result

    def get_version(self) -> NodeVersion:
        result = self.call("getVersion")
        if not isinstance(result, dict) or not isinstance(result.get("solana-core"), str):
            raise self._fail("getVersion", f"expected {{'solana-core': ...}}, got {result!r}")
        fs = result.get("feature-set")
        return NodeVersion(solana_core=result["solana-core"], feature_set=fs if isinstance(fs, int) else None)

    def get_identity(self) -> str:
        result = self.call("getIdentity")
        if not isinstance(result, dict) or not isinstance(result.get("identity"), str):
            raise self._fail("getIdentity", f"expected {{'identity': ...}}, got {result!r}")
        return str(result["identity"])
