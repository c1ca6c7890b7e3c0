"""ReferenceTip against real local HTTP servers (keep-alive HTTP/1.1, scripted answers: 429 with
Retry-After, 5xx, JSON-RPC errors) on a clock the test moves: the poll interval, one connection per
reference, back-off honouring Retry-After (capped), fail-over, the estimate between answers and the bound
after which it is never trusted. No mock of httpx: every call crosses a socket."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from runbook.adapters.reference import MAX_BACKOFF, ReferenceTip
from runbook.adapters.rpc import retry_after_seconds

POLL = 2.0


@dataclass
class Answer:
    status: int = 200
    slot: int | None = None  # getSlot result (200)
    headers: dict[str, str] = field(default_factory=dict)
    rpc_error: int | None = None  # a JSON-RPC error code in the body


@dataclass
class Reference:
    """One scripted reference: answers from ``script`` in order, then ``then`` for ever."""

    server: ThreadingHTTPServer
    script: list[Answer] = field(default_factory=list)
    then: Answer = field(default_factory=lambda: Answer(slot=1000))
    requests: int = 0
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def next_answer(self) -> Answer:
        self.requests += 1
        return self.script.pop(0) if self.script else self.then


def _handler(ref: Reference) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a public RPC

        def setup(self) -> None:
            super().setup()
            ref.connections += 1

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            a = ref.next_answer()
            if a.rpc_error is not None or a.status != 200:
                body: dict[str, Any] = {"jsonrpc": "2.0", "error": {"code": a.rpc_error or a.status,
                                                                     "message": "Too many requests"},
                                        "id": request.get("id")}
            else:
                body = {"jsonrpc": "2.0", "result": a.slot, "id": request.get("id")}
            data = json.dumps(body).encode()
            self.send_response(a.status)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **a.headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def references() -> Iterator[list[Reference]]:
    """Call ``references[i]`` after appending: up to three servers, started lazily by ``make``."""
    made: list[Reference] = []
    yield made
    for ref in made:
        ref.server.shutdown()
        ref.server.server_close()


def make(made: list[Reference], **kw: Any) -> Reference:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    ref = Reference(server, **kw)
    server.RequestHandlerClass = _handler(ref)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    made.append(ref)
    return ref


class Clock:
    """Monotonic time the test sets: ``at(t)`` is ``t`` seconds after the test's start."""

    START = 1000.0

    def __init__(self) -> None:
        self.t = self.START

    def __call__(self) -> float:
        return self.t

    def at(self, t: float) -> None:
        self.t = self.START + t


def tip(*refs: Reference, clock: Clock, **kw: Any) -> ReferenceTip:
    return ReferenceTip([r.url for r in refs], poll=POLL, clock=clock, timeout=5.0, **kw)


def read_at(ref_tip: ReferenceTip, clock: Clock, *times: float) -> None:
    for t in times:
        clock.at(t)
        ref_tip.read()


def test_one_call_per_poll_over_one_kept_alive_connection(references: list[Reference]) -> None:
    a = make(references)
    clock = Clock()
    with tip(a, clock=clock) as ref:
        for _ in range(10):  # the catch-up reads every 0.25s: within one poll only the first calls
            ref.read()
        assert a.requests == 1
        read_at(ref, clock, 0.25, 1.0, 1.99)
        assert a.requests == 1
        read_at(ref, clock, 2.0, 2.5, 4.0, 6.0, 8.0)
        assert a.requests == 5
        assert a.connections == 1
        stats = ref.stats()
    assert stats["calls"] == 5 and stats["most calls in one second"] == 1 and stats["429s"] == 0


def test_a_429_is_left_alone_for_its_retry_after(references: list[Reference]) -> None:
    a = make(references, script=[Answer(status=429, headers={"Retry-After": "7"})])
    clock = Clock()
    with tip(a, clock=clock) as ref:
        assert ref.read() is None  # no tip from a 429
        read_at(ref, clock, 2.0, 4.0, 6.0, 6.9)
        assert a.requests == 1, "asked again before its Retry-After"
        clock.at(7.0)
        reading = ref.read()
        assert a.requests == 2 and reading is not None and reading.answered == 1000
        stats = ref.stats()
    assert stats["429s"] == 1 and stats["errors"] == 0
    assert stats["per reference"][a.url]["last problem"].startswith(f"RPC getSlot at {a.url}: HTTP 429")


def test_a_long_retry_after_is_capped(references: list[Reference]) -> None:
    a = make(references, script=[Answer(status=429, headers={"Retry-After": "3600"})])
    clock = Clock()
    with tip(a, clock=clock) as ref:
        ref.read()
        read_at(ref, clock, MAX_BACKOFF - 0.1)
        assert a.requests == 1
        read_at(ref, clock, MAX_BACKOFF)
        assert a.requests == 2


def test_5xx_without_retry_after_backs_off_doubling(references: list[Reference]) -> None:
    a = make(references, script=[Answer(status=503)] * 3)
    clock = Clock()
    with tip(a, clock=clock) as ref:
        # failures at 0, 2 (backoff 2), 6 (backoff 4), then 14 (backoff 8) answers
        calls_at = []
        for step in range(0, 31):
            clock.at(step * 0.5)
            before = a.requests
            ref.read()
            if a.requests > before:
                calls_at.append(step * 0.5)
        stats = ref.stats()
    assert calls_at[:4] == [0.0, 2.0, 6.0, 14.0]
    assert stats["errors"] == 3 and stats["429s"] == 0


def test_a_json_rpc_429_in_a_200_is_rate_limiting_too(references: list[Reference]) -> None:
    a = make(references, script=[Answer(status=200, rpc_error=429)])
    clock = Clock()
    with tip(a, clock=clock) as ref:
        ref.read()
        read_at(ref, clock, 1.0)  # back-off of poll * 2**0: not yet
        assert a.requests == 1
        read_at(ref, clock, 2.0)
        stats = ref.stats()
    assert stats["429s"] == 1 and a.requests == 2


def test_fails_over_to_the_next_reference_and_back(references: list[Reference]) -> None:
    a = make(references, script=[Answer(status=429, headers={"Retry-After": "10"})], then=Answer(slot=2000))
    b = make(references, then=Answer(slot=1990))
    clock = Clock()
    with tip(a, b, clock=clock) as ref:
        first = ref.read()
        assert first is not None and first.url == b.url and (a.requests, b.requests) == (1, 1)
        read_at(ref, clock, 2.0, 4.0, 8.0)
        assert (a.requests, b.requests) == (1, 4), "a reference in back-off was asked"
        read_at(ref, clock, 10.0)
        back = ref.reading()
        assert back is not None and back.url == a.url and (a.requests, b.requests) == (2, 4)
        stats = ref.stats()
    assert stats["calls"] == 6 and stats["per reference"][b.url]["answers"] == 4


def test_the_tip_is_estimated_between_answers_and_trusted_only_while_fresh(references: list[Reference]) -> None:
    a = make(references, script=[Answer(slot=1000), Answer(slot=1020)],
             then=Answer(status=429, headers={"Retry-After": "30"}))
    clock = Clock()
    with tip(a, clock=clock) as ref:
        one = ref.read()
        assert one is not None and one.slot == 1000 and not one.trusted, "trusted without a measured slot rate"
        read_at(ref, clock, 2.0)  # second answer: 10 slots/s
        clock.at(3.0)
        est = ref.read()
        assert est is not None and (est.slot, est.answered, est.estimated, est.trusted) == (1030, 1020, True, True)
        clock.at(5.5)  # the third call answers 429: no answer for 3.5s, within two polls
        fresh = ref.read()
        assert fresh is not None and fresh.trusted and fresh.slot == 1055
        clock.at(6.5)  # 4.5s since the last answer: shown, never acted on
        stale = ref.read()
        assert stale is not None and stale.slot == 1065 and not stale.trusted
    assert a.requests == 3


def test_calls_per_minute_are_counted() -> None:
    with socket.socket() as s:  # a port nothing listens on: every call fails, back-off doubles up to the cap
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    clock = Clock()
    ref = ReferenceTip([f"http://127.0.0.1:{closed}"], poll=POLL, clock=clock, timeout=0.5)
    for i in range(30):
        clock.at(i * 10)
        ref.read()
    stats = ref.stats()
    ref.close()
    assert stats["errors"] == stats["calls"] and stats["calls"] < 30
    assert stats["most calls in one minute"] <= 60 / POLL
    assert stats["calls per minute"] == round(stats["calls"] * 60 / 290, 1)


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
