"""The prober's connection layer: an asyncio network backend for httpcore, and "lanes", one keep-alive
connection each, so a request never waits behind a pool that scans hundreds of connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpcore
import httpx


# ------------------------------------------------------------------------ asyncio network backend
class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof, self.error = True, exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpcore.ReadTimeout(f"no data within {timeout:g} s"))


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport, self._p = transport, protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._p
        if not p.buffer and not p.eof:
            loop = asyncio.get_running_loop()
            p.waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter, timeout) if timeout else None
            try:
                await waiter
            finally:
                p.waiter = None
                if timer is not None:
                    timer.cancel()
        if p.buffer:
            data = bytes(p.buffer[:max_bytes])
            del p.buffer[:max_bytes]
            return data
        if p.error is not None:
            raise httpcore.ReadError(f"{type(p.error).__name__}: {p.error}")
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)  # requests are small: the transport buffers, nothing to await

    async def aclose(self) -> None:
        self._transport.close()

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # httpcore's "did the server close this idle connection?"
            return bool(self._p.buffer) or self._p.eof
        names = {"socket": "socket", "client_addr": "sockname", "server_addr": "peername"}
        return self._transport.get_extra_info(names[info]) if info in names else None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network interface on asyncio transports: no anyio cancel scopes or polls per read."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Protocol, host, port, local_addr=(local_address, 0) if local_address else None)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"{host}:{port}: {exc}") from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        assert isinstance(transport, asyncio.Transport)
        return _Stream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# ------------------------------------------------------------------------ lanes
# What a reused keep-alive connection raises when the server closed it as the request went out (Caddy
# closes idle client connections on every config reload): nothing of a response was received.
_CLOSED_IDLE = (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError)


def closed_while_idle(exc: BaseException) -> bool:
    if isinstance(exc, httpcore.RemoteProtocolError):
        return "without sending a response" in str(exc)
    return isinstance(exc, _CLOSED_IDLE)


class CoreLane:
    """One keep-alive connection (reconnected when closed or expired), prebuilt requests.

    A request that fails *on a reused connection the server closed* before any byte of a response is
    sent again once on a new connection, as Go's net/http (idempotent requests only), browsers and hyper
    would. The retry is only there to keep measuring (latency, upstream, body): the prober records the
    request as failed (``needed_retry``, the reason in ``retried``), since a client that does not retry,
    or a JSON-RPC POST that Go would not replay, lost it. A request on a fresh connection, or one whose
    retry fails too, fails with what it met."""

    def __init__(self, pool: httpcore.AsyncConnectionPool, requests: list[httpcore.Request], header: bytes) -> None:
        self._pool, self._requests, self._header = pool, requests, header
        self._warm = False  # the connection has carried a complete exchange and was kept alive
        self.retried = ""  # why the last fetch was retried, if it was

    async def fetch(self, index: int) -> tuple[int, str | None, bytes]:
        self.retried = ""
        try:
            result = await self._fetch(index)
        except _CLOSED_IDLE as exc:
            if not (self._warm and closed_while_idle(exc)):
                self._warm = False
                raise
            self._warm = False
            self.retried = f"{type(exc).__name__}: {exc or 'connection reset'} (reused keep-alive connection)"
            result = await self._fetch(index)
        except BaseException:
            self._warm = False
            raise
        # warm only if the connection stays open for the next request (a `Connection: close` answer ends it:
        # the next request then goes out on a fresh connection, and a failure there is not a reused one's)
        self._warm = any(c.is_idle() for c in self._pool.connections)
        return result

    async def _fetch(self, index: int) -> tuple[int, str | None, bytes]:
        response = await self._pool.handle_async_request(self._requests[index])
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        upstream = next((v.decode("latin-1") for k, v in response.headers if k.lower() == self._header), None)
        return response.status, upstream, body

    async def aclose(self) -> None:
        await self._pool.aclose()


class TransportLane:
    """The test seam: any httpx transport (e.g. ``httpx.MockTransport``), shared by all requests."""

    def __init__(self, transport: httpx.AsyncBaseTransport, requests: list[httpx.Request], header: str) -> None:
        self._transport, self._requests, self._header = transport, requests, header

    async def fetch(self, index: int) -> tuple[int, str | None, bytes]:
        response = await self._transport.handle_async_request(self._requests[index])
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.headers.get(self._header), body

    async def aclose(self) -> None:
        pass
