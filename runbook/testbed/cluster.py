"""The reference cluster RPC (the stand-in for api.mainnet-beta): ``python -m runbook.testbed.cluster
--port 18900 [--bind 127.0.0.1] [--version 2.1.0]``.

Like a public RPC it rate-limits: above ``--rate-limit`` requests a second per client address it answers
HTTP 429 with a JSON-RPC error body and ``Retry-After`` (:class:`RateLimited`).

``getSlot`` (and ``getBlockHeight``) return the cluster tip of :mod:`runbook.testbed.chain`, ``getHealth``
is ``ok``, ``getVersion`` names ``--version``, ``getGenesisHash`` ``--genesis-hash``; ``GET /health`` answers
``ok``. It is the validators' entrypoint: the same port over UDP is the gossip they announce themselves to
(:mod:`runbook.testbed.gossip`, agave's duplicate-instance rule included), and ``getClusterNodes`` lists the
nodes that announced themselves within ``--gossip-timeout``.

This module also holds the server machinery every JSON-RPC stand-in shares (the validator imports it):
a raw ASGI JSON-RPC app, and a uvicorn runner whose SIGTERM finishes in-flight requests and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Mapping
from types import FrameType
from typing import Any

import uvicorn

from runbook.errors import ConfigError
from runbook.testbed import chain, gossip

# --------------------------------------------------------------------------- server machinery
# Shared with runbook.testbed.cluster: a raw ASGI JSON-RPC app and a uvicorn runner with a graceful,
# exit-0 SIGTERM and a background task that may ask the server to exit with a status.

Method = Callable[[Any], Any]
RequestExit = Callable[[int], None]
MAX_BODY = 1 << 20
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"


class RpcFault(Exception):
    """Raised by a JSON-RPC method: becomes the response's error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            self.error["data"] = data


class JsonRpcApp:
    """ASGI: ``GET /health`` answers ``health()`` as text (always HTTP 200); ``POST /`` is JSON-RPC 2.0."""

    def __init__(self, *, methods: Mapping[str, Method], health: Callable[[], str]) -> None:
        self.methods = dict(methods)
        self.health = health

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health" and method in ("GET", "HEAD"):
            await _respond(send, 200, self.health().encode(), _TEXT, head=method == "HEAD")
        elif path == "/" and method == "POST":
            body = await _read_body(receive)
            if body is None:
                await _respond(send, 413, b"request body too large", _TEXT)
            else:
                await _respond(send, 200, self.handle(body), _JSON)
        elif path in ("/", "/health"):
            await _respond(send, 405, b"method not allowed", _TEXT)
        else:
            await _respond(send, 404, b"not found", _TEXT)

    def handle(self, body: bytes) -> bytes:
        try:
            request = json.loads(body)
        except ValueError:
            return _dumps(_error(None, -32700, "Parse error"))
        if isinstance(request, list):
            if not request:
                return _dumps(_error(None, -32600, "Invalid request"))
            return _dumps([self.call(r) for r in request])
        return _dumps(self.call(request))

    def call(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            return _error(None, -32600, "Invalid request")
        rid, name = request.get("id"), request.get("method")
        if request.get("jsonrpc") != "2.0" or not isinstance(name, str):
            return _error(rid, -32600, "Invalid request")
        fn = self.methods.get(name)
        if fn is None:
            return _error(rid, -32601, "Method not found")
        try:
            return {"jsonrpc": "2.0", "result": fn(request.get("params")), "id": rid}
        except RpcFault as fault:
            return {"jsonrpc": "2.0", "error": fault.error, "id": rid}


def _error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": rid}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _read_body(receive: Callable[..., Any]) -> bytes | None:
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _respond(send: Callable[..., Any], status: int, body: bytes, ctype: bytes, *, head: bool = False) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


class _Server(uvicorn.Server):
    """uvicorn, except that a SIGTERM/SIGINT ends in a normal exit (uvicorn re-raises the signal)."""

    exit_code = 0
    logger = logging.getLogger("runbook.testbed")

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.logger.info(
                    "%s received: finishing in-flight requests, then shutting down", signal.Signals(sig).name
                )
                self.should_exit = True

        originals = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, original in originals.items():
                signal.signal(sig, original)

    def request_exit(self, code: int) -> None:
        self.exit_code = code
        self.should_exit = True

    drain_idle = 0.0
    draining = False

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """With ``drain_idle``: stop accepting, answer every request from now on with ``Connection: close``,
        and close a keep-alive connection only once it has been idle ``drain_idle`` seconds (longer than its
        client keeps an idle connection: the client closes first), so no client sends on a connection as it
        closes. Then uvicorn's own shutdown, which closes idle connections at once (the keep-alive race)."""
        if self.drain_idle > 0:
            for server in self.servers:
                server.close()
            self.draining = True
            loop = asyncio.get_running_loop()
            start = loop.time()
            self.logger.info("draining: Connection: close on every answer, idle connections closed after %gs",
                             self.drain_idle)
            while self.server_state.connections and not self.force_exit and loop.time() - start <= self.drain_idle:
                for conn in list(self.server_state.connections):
                    if _idle_since(conn, start) <= loop.time() - self.drain_idle:
                        conn.shutdown()
                await asyncio.sleep(0.05)
        await super().shutdown(sockets)


def _idle_since(conn: Any, drain_start: float) -> float:
    """When an HTTP/1.1 connection last finished an answer (its keep-alive timer was set then); the drain's
    start for one that has not answered yet; +inf while a request is in flight."""
    cycle = getattr(conn, "cycle", None)
    if cycle is not None and not cycle.response_complete:
        return math.inf
    timer = getattr(conn, "timeout_keep_alive_task", None)
    if timer is None:
        return drain_start
    return float(timer.when()) - float(conn.timeout_keep_alive)


def run_server(
    app: JsonRpcApp | RateLimited,
    *,
    host: str,
    port: int,
    name: str,
    background: Callable[[RequestExit], Coroutine[Any, Any, None]] | None = None,
    on_stop: Callable[[], Coroutine[Any, Any, None]] | None = None,
    graceful_timeout: int = 10,
    drain_idle: float = 0.0,
) -> int:
    """Serve ``app`` until SIGTERM/SIGINT or until ``background`` calls ``request_exit(status)``.
    In-flight requests finish; then ``on_stop`` runs. Returns the process exit status. ``drain_idle``: see
    :meth:`_Server.shutdown` (0: idle keep-alive connections are closed at once, as uvicorn does)."""
    server_ref: list[_Server] = []

    async def served(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        async def send_closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and server_ref[0].draining:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)
        await app(scope, receive, send_closing if drain_idle > 0 else send)

    config = uvicorn.Config(
        served,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=graceful_timeout,
        # Longer than any proxy's idle timeout (Caddy: 2m), so the proxy, not us, closes idle
        # keep-alive connections: no close-while-the-proxy-reuses race that is not the cutover's.
        timeout_keep_alive=300,
    )
    server = _Server(config)
    server.drain_idle = drain_idle
    server_ref.append(server)
    server.logger = logger = logging.getLogger(name)

    async def guarded() -> None:
        assert background is not None
        try:
            await background(server.request_exit)
        except Exception:
            logger.exception("background task failed")
            server.request_exit(1)

    async def serve() -> int:
        task = asyncio.create_task(guarded()) if background is not None else None
        try:
            await server.serve()
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if on_stop is not None:
                await on_stop()
        return server.exit_code

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        return runner.run(serve())


# --------------------------------------------------------------------------- the cluster
DEFAULT_RATE_LIMIT = 4.0  # requests/s per client address; env: testbed.cluster_rate_limit


class RateLimited:
    """ASGI: at most ``rate`` requests a second per client address (a token bucket holding one second's
    worth), as api.mainnet-beta.solana.com limits each IP; above it, HTTP 429 with a JSON-RPC error body and
    ``Retry-After`` (whole seconds until a request is allowed again). Every request counts, ``GET /health``
    and a joining validator's ``getGenesisParams`` too: a public RPC exempts no one, and per address (not
    global) is what it does, so the validators in the node (127.0.0.1) do not eat the runner's budget (it
    arrives through the node's port mapping from another address)."""

    def __init__(self, app: Callable[..., Any], *, rate: float, clock: Callable[[], float] | None = None) -> None:
        self.app, self.rate = app, rate
        self.burst = max(1.0, rate)
        self.clock = clock or time.monotonic
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)
        self.limited = 0

    def admit(self, address: str) -> float | None:
        """None if a request from ``address`` may go through now, else the seconds until one may."""
        now = self.clock()
        tokens, then = self.buckets.get(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self.buckets[address] = (tokens - 1.0, now)
            return None
        self.buckets[address] = (tokens, now)
        return (1.0 - tokens) / self.rate

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or self.rate <= 0:
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("?", 0))[0]
        wait = self.admit(address)
        if wait is None:
            await self.app(scope, receive, send)
            return
        self.limited += 1
        body = _dumps(_error(None, 429, f"Too many requests for a specific RPC call: at most {self.rate:g} "
                                       "requests a second per client address"))
        headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", str(max(1, math.ceil(wait))).encode())]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})



MAINNET_GENESIS_HASH = "5eykt4UsFv8P8NJdTREpY1vzqKqZKvdpKuc147dw2N9d"  # the cluster this stands in for


def shred_version(genesis_hash: str) -> int:
    """A stable u16 standing in for the shred version agave derives from the genesis hash (and hard forks)."""
    return int.from_bytes(hashlib.sha256(genesis_hash.encode()).digest()[:2], "little") or 1


def cluster_app(
    params: chain.ChainParams,
    version: str,
    *,
    table: gossip.GossipTable | None = None,
    genesis_hash: str = MAINNET_GENESIS_HASH,
    gossip_interval: float = gossip.DEFAULT_INTERVAL,
) -> JsonRpcApp:
    info = {"solana-core": ".".join(map(str, chain.parse_version(version))), "feature-set": chain.feature_set(version)}
    nodes = table if table is not None else gossip.GossipTable()
    genesis = {**params.to_dict(), "genesis_hash": genesis_hash, "shred_version": shred_version(genesis_hash),
               "gossip_interval": gossip_interval, "gossip_timeout": nodes.timeout}
    return JsonRpcApp(
        methods={
            "getSlot": lambda _params: params.tip(),
            "getBlockHeight": lambda _params: params.tip(),
            "getHealth": lambda _params: "ok",
            "getVersion": lambda _params: info,
            "getGenesisHash": lambda _params: genesis_hash,
            # the nodes that announced themselves in gossip within the timeout (agave's RpcContactInfo)
            "getClusterNodes": lambda _params: nodes.cluster_nodes(),
            # stand-in only: what a joining validator learns from the cluster it is pointed at (agave
            # downloads the genesis from its entrypoint's RPC); the stand-ins share the tip through it
            "getGenesisParams": lambda _params: genesis,
        },
        health=lambda: "ok",
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )
    p = argparse.ArgumentParser(prog="runbook.testbed.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="JSON-RPC (TCP) and gossip (UDP): the entrypoint")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--version", default="2.1.0", help="release the cluster reports in getVersion")
    p.add_argument("--rate-limit", type=float, default=DEFAULT_RATE_LIMIT, metavar="PER_SECOND",
                   help="requests a second per client address before HTTP 429 (0: no limit)")
    p.add_argument("--genesis-hash", default=MAINNET_GENESIS_HASH, help="what getGenesisHash answers")
    p.add_argument("--gossip-interval", type=float, default=gossip.DEFAULT_INTERVAL, metavar="SECONDS",
                   help="seconds between a validator's gossip pushes (told to joining validators)")
    p.add_argument("--gossip-timeout", type=float, default=gossip.DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="seconds without a push before a node leaves getClusterNodes")
    args = p.parse_args(argv)
    log = logging.getLogger("cluster")
    if not 0 < args.gossip_interval * 2 <= args.gossip_timeout:
        p.error(f"--gossip-timeout ({args.gossip_timeout}s) must be at least twice --gossip-interval "
                f"({args.gossip_interval}s, > 0)")
    try:
        params = chain.ChainParams.from_env()
        table = gossip.GossipTable(timeout=args.gossip_timeout)
        app = cluster_app(params, args.version, table=table, genesis_hash=args.genesis_hash,
                          gossip_interval=args.gossip_interval)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((args.bind, args.port))
        except OSError as exc:
            udp.close()
            raise ConfigError(f"gossip UDP {args.bind}:{args.port}: {exc.strerror}") from exc
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    log.info(
        "cluster RPC on %s:%d: tip %d (genesis %s, slot time %gs)",
        args.bind,
        args.port,
        params.tip(),
        params.genesis_time,
        params.slot_time,
    )
    log.info("gossip on udp %s:%d: validators push every %gs, forgotten after %gs", args.bind, args.port,
             args.gossip_interval, args.gossip_timeout)
    limited = RateLimited(app, rate=args.rate_limit)
    log.info("rate limit: %s", f"{args.rate_limit:g} requests/s per client address, then HTTP 429"
             if args.rate_limit > 0 else "none")

    async def serve_gossip(request_exit: RequestExit) -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: gossip.ClusterGossip(table), sock=udp)
        try:
            await asyncio.Event().wait()  # until the server stops (cancelled)
        finally:
            transport.close()

    code = run_server(limited, host=args.bind, port=args.port, name="cluster", background=serve_gossip)
    log.info("exiting with status %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
