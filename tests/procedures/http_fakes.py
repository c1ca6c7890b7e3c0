"""The colours' RPC, the public ingress and the reference as one fake HTTP network, for unit tests of what
procedures observe through the adapters (``Adapters.rpc``, ``public_rpc``, ``reference``). The clients are
the real :class:`~runbook.adapters.rpc.RpcClient` and :class:`~runbook.adapters.reference.ReferenceTip`
over an ``httpx.MockTransport``: the requests they send are answered as agave, Caddy and a public RPC do."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from runbook.adapters.factory import Adapters
from runbook.adapters.reference import ReferenceTip
from runbook.adapters.rpc import RpcClient
from runbook.procedures.bluegreen import upstream_address


@dataclass
class FakeNode:
    health: str = "ok"  # the /health body: ok | behind | unknown
    version: str = "2.2.1"
    slot: int = 1000


@dataclass
class FakeNet:
    """What answers where: a node per colour, the cluster tip, and the colour the ingress forwards to."""

    nodes: dict[str, FakeNode] = field(default_factory=dict)
    tip: int = 1000
    serving: str | None = "green"
    requests: list[str] = field(default_factory=list)  # "<host:port> <method or GET path>", in order

    def transport(self, adapters: Adapters) -> httpx.MockTransport:
        env = adapters.env
        ports = {str(env.deployments.colour(c).rpc_port): c for c in ("green", "blue")}
        reference = {httpx.URL(u).netloc.decode() for u in env.cluster_rpc}
        ingress = httpx.URL(env.ingress.url).netloc.decode()

        def handle(request: httpx.Request) -> httpx.Response:
            where = request.url.netloc.decode()
            call = json.loads(request.content)["method"] if request.method == "POST" else f"GET {request.url.path}"
            self.requests.append(f"{where} {call}")
            if where == ingress:
                headers = {env.ingress.upstream_header: upstream_address(env, self.serving)} if self.serving else {}
                return httpx.Response(200, text="ok", headers=headers)
            if where in reference:
                return _result(request, self.tip)
            colour = ports.get(str(request.url.port))
            node = self.nodes.get(colour) if colour else None
            if node is None:
                raise httpx.ConnectError("connection refused", request=request)
            if call == "GET /health":
                return httpx.Response(200, text=node.health)
            if call == "getVersion":
                return _result(request, {"solana-core": node.version, "feature-set": 1})
            if call == "getSlot":
                return _result(request, node.slot)
            return httpx.Response(404)

        return httpx.MockTransport(handle)

    def asked_reference(self, adapters: Adapters) -> bool:
        refs = {httpx.URL(u).netloc.decode() for u in adapters.env.cluster_rpc}
        return any(r.split(" ", 1)[0] in refs for r in self.requests)


def _result(request: httpx.Request, result: Any) -> httpx.Response:
    return httpx.Response(200, json={"jsonrpc": "2.0", "id": json.loads(request.content)["id"], "result": result})


@dataclass(frozen=True)
class HttpAdapters(Adapters):
    """:class:`Adapters` whose HTTP clients reach :attr:`net` instead of the network."""

    net: FakeNet = field(default_factory=FakeNet)

    def rpc(self, colour: str, *, timeout: float = 5.0) -> RpcClient:
        return RpcClient(url=self.rpc_url(colour), timeout=timeout, transport=self.net.transport(self))

    def public_rpc(self, *, timeout: float = 5.0) -> RpcClient:
        return RpcClient(url=self.env.ingress.url, timeout=timeout, transport=self.net.transport(self))

    def reference(self) -> ReferenceTip:
        return ReferenceTip(list(self.env.cluster_rpc), poll=float(self.env.reference_poll),
                            transport=self.net.transport(self))


def with_net(adapters: Adapters, net: FakeNet) -> HttpAdapters:
    fields = {f: getattr(adapters, f) for f in ("env", "host", "workloads", "ingress", "storage", "reach", "host_path")}
    return HttpAdapters(**fields, net=net)
