"""The zero-drop prober against real loopback upstreams (an asyncio HTTP server in a thread of the test).

Every wait polls a predicate (runbook.wait.wait_for); no assertion depends on how fast this machine is:
speed belongs to bench/prober_bench.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbook.errors import ConfigError, RunbookError
from runbook.probes.prober import Prober
from runbook.probes.summary import KINDS, judge, read_jsonl, summarize
from runbook.wait import wait_for


@dataclass
class Behaviour:
    """What the upstream answers; changed by the tests while it serves."""

    health: bytes = b"ok"
    slot: int = 10_000
    status: int = 200
    upstream: str = "up-a:1"
    hang: bool = False
    delay: float = 0.0  # seconds before each answer
    rpc_error: int | None = None


class _Http(asyncio.Protocol):
    def __init__(self, server: Upstream) -> None:
        self.server = server
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.conns.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end]
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            size = end + 4 + (int(m.group(1)) if m else 0)
            if len(self.buf) < size:
                return
            self.buf = self.buf[size:]
            b = self.server.behaviour
            if b.hang:
                continue
            if head.startswith(b"GET"):
                body = b.health
            elif b.rpc_error is not None:
                body = b'{"jsonrpc":"2.0","id":1,"error":{"code":%d,"message":"nope"}}' % b.rpc_error
            else:
                body = b'{"jsonrpc":"2.0","id":1,"result":%d}' % b.slot
            answer = (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Upstream: %s\r\n\r\n%s"
                      % (b.status, len(body), b.upstream.encode(), body))
            if b.delay:
                asyncio.get_running_loop().call_later(b.delay, self.transport.write, answer)
            else:
                self.transport.write(answer)


class Upstream:
    """A keep-alive HTTP/1.1 upstream on loopback that can refuse connections on demand."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.conns: set[asyncio.Transport] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._call(self.loop.create_server(lambda: _Http(self), "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def down(self) -> float:
        """Stop listening and reset every connection; returns the monotonic time it happened."""

        async def go() -> float:
            self.server.close()
            for t in list(self.conns):
                t.abort()
            return time.monotonic()

        return float(self._call(go()))

    def up(self) -> float:
        async def go() -> float:
            self.server = await self.loop.create_server(lambda: _Http(self), "127.0.0.1", self.port)
            return time.monotonic()

        return float(self._call(go()))

    def close(self) -> None:
        async def go() -> None:
            self.server.close()
            for t in list(self.conns):
                t.abort()

        self._call(go())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Prober]]:
    probers: list[Prober] = []

    def factory(**kw: Any) -> Prober:
        kw.setdefault("out_dir", tmp_path / "probe")
        kw.setdefault("isolate", False)
        kw.setdefault("timeout", 2.0)
        p = Prober(**kw)
        probers.append(p)
        return p

    yield factory
    for p in probers:  # never leave a prober thread behind a failed test
        if p._thread is not None and p.summary is None:
            p.stop()


def until(observe: Callable[[], Any], predicate: Callable[[Any], bool], what: str) -> Any:
    return wait_for(observe, predicate, timeout=15, interval=0.005, what=what)


def records(p: Prober) -> list[dict[str, Any]]:
    return list(read_jsonl(p.out_dir / "requests.jsonl"))


# ---------------------------------------------------------------------------------- runs
def test_all_ok_run_records_exactly_the_scheduled_requests(upstream: Upstream, make: Callable[..., Prober]) -> None:
    p = make(url=upstream.url, rate=200, max_requests=60, isolate=True).start()
    assert p.wait(15), "the prober did not stop by itself after max_requests"
    summary = p.stop()
    recs = sorted(records(p), key=lambda r: r["seq"])
    assert [r["seq"] for r in recs] == list(range(60))
    assert summary.total == 60 and summary.failed == 0 and summary.ok
    assert summary.verdicts == {"ok": 60}
    assert summary.upstreams == {"up-a:1": 60}
    for r in recs:
        assert r["kind"] == ("GET /health" if r["seq"] % 2 == 0 else "POST getSlot")
        assert r["sched"] == pytest.approx(r["seq"] / 200, abs=1e-6)
        assert r["sent"] >= r["sched"] and r["done"] >= r["sent"]
        assert (r["status"], r["upstream"], r["ok"], r["verdict"], r["error"]) == (200, "up-a:1", True, "ok", "")
        assert r["latency_ms"] == pytest.approx((r["done"] - r["sent"]) * 1000, abs=0.01)
    assert summary.send_lag.count == 60 and summary.latency.count == 60
    assert 0 < summary.latency.p50 <= summary.latency.p90 <= summary.latency.p99 <= summary.latency.max
    meta = json.loads((p.out_dir / "prober.json").read_text())
    assert meta["url"] == upstream.url and meta["rate"] == 200


def test_an_outage_shows_failures_and_a_gap_as_long_as_the_outage(
    upstream: Upstream, make: Callable[..., Prober]
) -> None:
    p = make(url=upstream.url, rate=200, max_duration=30).start()
    until(lambda: p.progress.completed, lambda n: n >= 40, "40 answers before the outage")
    down = upstream.down()
    until(lambda: p.progress.failed, lambda n: n >= 60, "60 failed requests during the outage")
    up = upstream.up()
    until(lambda: p.progress.last_ok, lambda t: t is not None and t > up - p.t0 + 0.1, "successes after the outage")
    summary = p.stop()

    assert not summary.ok and summary.failed >= 60
    assert set(summary.verdicts) == {"ok", "conn_error"}
    start, end = down - p.t0, up - p.t0
    assert not [r for r in records(p) if r["ok"] and start <= r["sent"] <= end], "a request sent while down succeeded"
    outage, gap = up - down, summary.longest_gap
    assert gap.start <= end <= gap.end  # the longest gap is the outage (a success answered late can shorten it)
    assert 0.5 * outage <= gap.seconds <= outage + 1.0
    assert summary.failure_span is not None
    first, last = summary.failure_span
    assert start - 1.0 <= first and last <= end  # failed: in flight at the reset, or sent while down
    failed = [r for r in records(p) if not r["ok"]]
    assert len(failed) == summary.failed and all(r["upstream"] is None for r in failed)
    text = summary.describe()
    assert "NOT zero-drop" in text and f"#{summary.failures[0]['seq']} " in text and "conn_error" in text


def test_a_behind_health_body_is_a_failure_though_http_200(upstream: Upstream, make: Callable[..., Prober]) -> None:
    upstream.behaviour.health = b"behind"
    p = make(url=upstream.url, rate=200, max_requests=10, mix=["GET /health"]).start()
    assert p.wait(15)
    summary = p.stop()
    assert summary.verdicts == {"behind": 10} and not summary.ok
    assert all(r["status"] == 200 and r["error"] == "/health answered 'behind'" for r in records(p))


def test_a_stale_slot_is_a_failure(upstream: Upstream, make: Callable[..., Prober]) -> None:
    p = make(url=upstream.url, rate=200, max_duration=30, mix=["POST getSlot"], stale_slots=150).start()
    until(lambda: p.progress.completed, lambda n: n >= 10, "answers at slot 10,000")
    upstream.behaviour.slot = 9_900  # 100 below the highest seen: within stale_slots
    until(lambda: p.progress.completed, lambda n: n >= 30, "answers at slot 9,900")
    upstream.behaviour.slot = 9_000  # 1,000 below: stale
    until(lambda: p.progress.failed, lambda n: n >= 5, "stale answers")
    summary = p.stop()
    assert set(summary.verdicts) == {"ok", "stale"}
    stale = [r for r in records(p) if r["verdict"] == "stale"]
    assert stale and "slot 9000 is 1000 behind the highest seen (10000" in stale[0]["error"]


def test_an_answer_later_than_the_client_timeout_is_failed_but_measured(upstream: Upstream,
                                                                        make: Callable[..., Prober]) -> None:
    upstream.behaviour.delay = 0.3
    p = make(url=upstream.url, rate=50, max_requests=4, mix=["GET /health"], timeout=2.0, client_timeout=0.1).start()
    assert p.wait(15)
    summary = p.stop()
    assert summary.verdicts == {"late": 4} and summary.lost == {"late": 4} and not summary.ok
    assert summary.client_timeout == 0.1 and summary.slowest_ms >= 300
    for r in records(p):
        assert (r["status"], r["answer"], r["upstream"]) == (200, "ok", "up-a:1") and r["latency_ms"] >= 300
        assert "later than a client's 0.1 s timeout" in r["error"]
    (phase,) = summary.phases
    assert phase.lost == {"late": 4} and phase.slowest_ms == summary.slowest_ms
    assert phase.longest_gap.seconds >= 0.3  # no success at all: the whole run is one gap
    # the same answers within a patient client's timeout are ok (the protection: a late answer fails)
    q = make(url=upstream.url, rate=50, max_requests=4, mix=["GET /health"], timeout=2.0, client_timeout=1.0,
             out_dir=p.out_dir.parent / "q").start()
    assert q.wait(15)
    assert q.stop().verdicts == {"ok": 4}


def test_a_gap_overlapping_two_phases_counts_whole_in_both(upstream: Upstream, make: Callable[..., Prober]) -> None:
    p = make(url=upstream.url, rate=100, max_duration=30, mix=["GET /health"]).start()
    until(lambda: p.progress.completed, lambda n: n >= 10, "10 answers")
    upstream.behaviour.health = b"behind"
    mark = p.progress.scheduled
    until(lambda: p.progress.completed, lambda n: n >= mark + 10, "10 behind answers")
    p.event("half way")
    mark = p.progress.scheduled
    until(lambda: p.progress.completed, lambda n: n >= mark + 10, "10 more behind answers")
    upstream.behaviour.health = b"ok"
    mark = p.progress.scheduled
    until(lambda: p.progress.completed, lambda n: n >= mark + 10, "answers ok again")
    summary = p.stop()
    before, after = summary.phases
    gap = summary.longest_gap
    assert gap.seconds >= 0.15 and gap.start < summary.events[0].t < gap.end
    assert before.longest_gap == after.longest_gap == gap
    assert before.lost == {"behind": before.failed} and after.lost == {"behind": after.failed}


def test_a_client_timeout_longer_than_the_transport_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client_timeout"):
        Prober(url="http://127.0.0.1:1", rate=1, out_dir=tmp_path, timeout=1.0, client_timeout=2.0)


def test_http_errors_and_json_rpc_errors_are_failures(upstream: Upstream, make: Callable[..., Prober]) -> None:
    upstream.behaviour.status = 502
    p = make(url=upstream.url, rate=200, max_requests=4).start()
    assert p.wait(15)
    assert p.stop().verdicts == {"http_error": 4}
    upstream.behaviour.status = 200
    upstream.behaviour.rpc_error = -32005
    q = make(url=upstream.url, rate=200, max_requests=4, mix=["POST getSlot"], out_dir=p.out_dir.parent / "q").start()
    assert q.wait(15)
    assert q.stop().verdicts == {"behind": 4}


def test_the_upstream_header_is_recorded_and_events_split_phases(
    upstream: Upstream, make: Callable[..., Prober]
) -> None:
    p = make(url=upstream.url, rate=200, max_duration=30).start()
    until(lambda: p.progress.completed, lambda n: n >= 20, "20 answers from up-a")
    upstream.behaviour.upstream = "up-b:2"
    p.event("shift", "to b")
    mark = p.progress.scheduled
    until(lambda: p.progress.completed, lambda n: n >= mark + 20, "20 answers after the shift")
    p.event("green stopped")
    mark = p.progress.scheduled
    until(lambda: p.progress.completed, lambda n: n >= mark + 20, "20 answers after green stopped")
    summary = p.stop()

    assert summary.ok
    assert [e.name for e in summary.events] == ["shift", "green stopped"] and summary.events[0].detail == "to b"
    before, during, after = summary.phases
    assert (before.name, during.name, after.name) == ("before shift", "shift -> green stopped", "after green stopped")
    assert before.start is None and before.end == during.start == summary.events[0].t
    assert during.end == after.start == summary.events[1].t and after.end is None
    assert sum(ph.total for ph in summary.phases) == summary.total
    assert before.upstreams.get("up-a:1", 0) >= 20  # a request sent before the event may be answered by b
    assert set(during.upstreams) == set(after.upstreams) == {"up-b:2"}
    assert summary.upstreams == {k: before.upstreams.get(k, 0) + during.upstreams.get(k, 0) + after.upstreams.get(k, 0)
                                 for k in summary.upstreams}
    events = [json.loads(line) for line in (p.out_dir / "events.jsonl").read_text().splitlines()]
    assert [e["name"] for e in events] == ["shift", "green stopped"] and events[0]["t"] < events[1]["t"]


def test_max_requests_and_max_duration_bound_the_run(upstream: Upstream, make: Callable[..., Prober]) -> None:
    p = make(url=upstream.url, rate=500, max_requests=25, max_duration=60).start()
    assert p.wait(15) and not p.running
    assert p.stop().total == 25
    q = make(url=upstream.url, rate=100, max_duration=0.2, out_dir=p.out_dir.parent / "q").start()
    assert q.wait(15) and not q.running
    summary = q.stop()
    assert summary.total == 20 and max(r["sched"] for r in records(q)) < 0.2


def test_requests_beyond_max_in_flight_are_recorded_as_overload_not_delayed(
    upstream: Upstream, make: Callable[..., Prober]
) -> None:
    upstream.behaviour.hang = True
    p = make(url=upstream.url, rate=200, max_requests=20, max_in_flight=4, timeout=0.5).start()
    assert p.wait(15)
    summary = p.stop()
    assert summary.total == 20
    assert summary.verdicts.get("timeout", 0) >= 4 and summary.verdicts.get("overload", 0) >= 10
    overload = [r for r in records(p) if r["verdict"] == "overload"]
    assert all(r["sent"] is None and r["latency_ms"] is None and r["done"] >= r["sched"] for r in overload)
    assert summary.send_lag.count == 20 - len(overload)


def test_stop_early_and_the_summary_on_disk_match(upstream: Upstream, make: Callable[..., Prober]) -> None:
    with make(url=upstream.url, rate=300, max_duration=30) as p:
        until(lambda: p.progress.completed, lambda n: n >= 30, "30 answers")
        p.event("half way")
    assert p.summary is not None and p.summary.total >= 30 and p.summary.ok and not p.running
    assert p.stop() is p.summary  # idempotent
    assert summarize(p.out_dir) == p.summary
    on_disk = json.loads((p.out_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(p.summary.to_dict())) and on_disk["ok"] is True
    assert len(records(p)) == p.summary.total
    with pytest.raises(RunbookError, match="not running"):
        p.event("too late")


def test_an_httpx_transport_can_stand_in_for_the_network(make: Callable[..., Prober]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "GET":
            return httpx.Response(200, text="ok", headers={"X-Upstream": "mock"})
        assert json.loads(request.content)["method"] == "getSlot"
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": 5}, headers={"X-Upstream": "mock"})

    p = make(url="http://mock.invalid", rate=1000, max_requests=50, transport=httpx.MockTransport(handler)).start()
    assert p.wait(15)
    summary = p.stop()
    assert summary.verdicts == {"ok": 50} and summary.upstreams == {"mock": 50} and len(seen) == 50


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rate must be > 0"):
        Prober(url="http://127.0.0.1:1", rate=0, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown request kinds"):
        Prober(url="http://127.0.0.1:1", rate=1, out_dir=tmp_path, mix=["GET /nope"])
    with pytest.raises(RunbookError, match="not running"):
        Prober(url="http://127.0.0.1:1", rate=1, out_dir=tmp_path).event("early")


# ---------------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize(
    ("kind", "status", "body", "verdict"),
    [
        ("GET /health", 200, b"ok", "ok"),
        ("GET /health", 200, b"ok\n", "ok"),
        ("GET /health", 200, b"behind", "behind"),
        ("GET /health", 200, b"unknown", "behind"),
        ("GET /health", 200, b"<html>", "bad_body"),
        ("GET /health", 503, b"ok", "http_error"),
        ("POST getSlot", 200, b'{"jsonrpc":"2.0","id":1,"result":1000}', "ok"),
        ("POST getSlot", 200, b'{"jsonrpc":"2.0","id":1,"result":849}', "stale"),
        ("POST getSlot", 200, b'{"jsonrpc":"2.0","id":1,"result":850}', "ok"),
        ("POST getSlot", 200, b'{"jsonrpc":"2.0","id":1,"result":true}', "bad_body"),
        ("POST getSlot", 200, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"Node is unhealthy"}}',
         "behind"),
        ("POST getSlot", 200, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}', "bad_body"),
        ("POST getSlot", 200, b"not json", "bad_body"),
        ("POST getHealth", 200, b'{"jsonrpc":"2.0","id":1,"result":"ok"}', "ok"),
    ],
)
def test_judge(kind: str, status: int, body: bytes, verdict: str) -> None:
    got, error, _ = judge(KINDS[kind], status, body, max_slot=1000, stale_slots=150)
    assert got == verdict
    assert (error == "") == (verdict == "ok")
