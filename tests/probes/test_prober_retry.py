"""A request that met a reused keep-alive connection the server closed without answering is lost to a
client that does not retry: the prober retries it once only to keep measuring, and records it failed
(``needed_retry``, with the reason); a fresh connection closed without an answer is a failure too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.probes.prober import Prober

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class ClosingServer:
    """Answers the first request of a connection, then drops the connection on its ``drop_at``-th request
    (``drop_at=1``: a fresh connection closed without an answer). ``close_first``: the first connection's
    answer says ``Connection: close`` and every later connection is dropped without an answer."""

    def __init__(self, drop_at: int, close_first: bool = False) -> None:
        self.drop_at = drop_at
        self.close_first = close_first
        self.connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            n = 0
            if self.close_first:
                await reader.readuntil(b"\r\n\r\n")
                if self.connections == 1:
                    writer.write(CLOSE)
                    await writer.drain()
                    writer.close()
                else:
                    writer.transport.abort()
                return
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    n += 1
                    if n == self.drop_at:
                        writer.transport.abort()  # RST, no response
                        return
                    writer.write(OK)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                return

        async def main() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await self._stop.wait()

        self._loop.run_until_complete(main())
        self._loop.close()

    def __enter__(self) -> ClosingServer:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)


@pytest.fixture
def reused_drop() -> Iterator[ClosingServer]:
    with ClosingServer(drop_at=2) as s:
        yield s


@pytest.fixture
def fresh_drop() -> Iterator[ClosingServer]:
    with ClosingServer(drop_at=1) as s:
        yield s


def _probe(port: int, out: Path, n: int) -> Prober:
    p = Prober(url=f"http://127.0.0.1:{port}", rate=50, out_dir=out, mix=("GET /health",), max_requests=n,
               max_in_flight=1, isolate=False, timeout=3)
    p.start()
    assert p.wait(timeout=30)
    return p


def test_a_request_that_needed_the_probers_retry_is_lost_to_a_client_that_does_not_retry(
        tmp_path: Path, reused_drop: ClosingServer) -> None:
    p = _probe(reused_drop.port, tmp_path, 6)
    s = p.stop()
    # the first request of the run has a fresh connection; every later one meets the connection the
    # server closed after answering the previous one, and is answered only on the retry
    assert s.total == 6 and s.failed == s.retried == 5 and not s.ok, s.describe()
    assert s.lost == {"needed_retry": 5} and s.verdicts == {"ok": 1, "needed_retry": 5}
    for r in s.failures:  # still measured: the answer the retry got
        assert (r["verdict"], r["answer"], r["status"], r["ok"]) == ("needed_retry", "ok", 200, False)
        assert r["error"].startswith("lost to a client that does not retry: ")
        assert "reused keep-alive connection" in r["retried"] and r["latency_ms"] is not None
    assert "lost to a client that does not retry" in s.describe() and "NOT zero-drop" in s.describe()


def test_a_fresh_connection_closed_without_an_answer_is_a_failure(tmp_path: Path, fresh_drop: ClosingServer) -> None:
    p = _probe(fresh_drop.port, tmp_path, 3)
    s = p.stop()
    assert s.failed == 3 and s.retried == 0, s.describe()
    assert {f["verdict"] for f in s.failures} == {"conn_error"}


def test_a_fresh_connection_after_a_connection_close_answer_is_not_taken_for_a_reused_one(tmp_path: Path) -> None:
    """After an answer that said `Connection: close` the next request goes out on a new connection: a
    failure there is the fresh connection's (conn_error), never 'a reused keep-alive connection'."""
    with ClosingServer(drop_at=0, close_first=True) as server:
        p = _probe(server.port, tmp_path, 2)
        s = p.stop()
    assert s.verdicts == {"ok": 1, "conn_error": 1} and s.retried == 0, s.describe()
