"""The cutover timeline: exact counts, honest percentiles, every failure, a small DOM for a long run."""

from __future__ import annotations

import json
import math
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from runbook.errors import RunbookError
from runbook.evidence.timeline import read_probe
from runbook.evidence.timeline_svg import render_timeline, timeline_page
from runbook.wait import wait_for
from tests.evidence.conftest import BIG_FAILURES, BIG_REQUESTS
from tests.evidence.probegen import BLUE, GREEN, Failure, ProbeSpec, Truth, write_probe

CUTOVER = ["blue healthy", "upstreams reordered", "green stopped"]
EVENTS = ((1.0, "probe started", ""), (4.0, "blue healthy", "blue answered ok"),
          (5.0, "upstreams reordered", "blue first"), (6.0, "green stopped", "SIGTERM"))


class _Count(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements = 0
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements += 1
        self.tags.add(tag)


def dom(html: str) -> _Count:
    c = _Count()
    c.feed(html)
    return c


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Truth]:
    spec = ProbeSpec(duration_s=10.0, rate=200.0, shift_at=5.0, events=EVENTS, truncated_last_line=True,
                     failures=(Failure(1001, "conn_error", "connection reset by peer", None, GREEN),
                               Failure(1003, "http_error", "502 Bad Gateway", 502, None),
                               Failure(1500, "timeout", "no answer within 2s", None, None)))
    return tmp_path, write_probe(tmp_path, spec, keep_latencies=True)


def test_counts_phases_and_failures_are_exact(small: tuple[Path, Truth]) -> None:
    d, truth = small
    s = read_probe(d, cutover_events=CUTOVER)
    assert (s.requests, s.failures_total, s.ok) == (2000, 3, 1997)
    assert s.malformed == 1 and s.malformed_examples[0].startswith('{"seq": 999999999')  # the cut-off last line
    assert s.cutover == (4.0, 6.0)
    before, during, after = s.phases
    assert (before.requests, during.requests, after.requests) == (800, 401, 799)  # by schedule: 4.000 <= t <= 6.000
    assert (before.failures, during.failures, after.failures) == (0, 2, 1)
    by = {u.upstream: u for u in s.upstreams}
    assert by[GREEN].requests == truth.by_upstream[GREEN] and by[BLUE].requests == truth.by_upstream[BLUE]
    assert by[GREEN].last < 5.0 + 0.01 and by[BLUE].first >= 5.0
    assert [f.seq for f in s.failures] == [1001, 1003, 1500]
    assert s.failures[1].status == 502 and s.verdicts == {"ok": 1997, "conn_error": 1, "http_error": 1, "timeout": 1}
    assert sum(sum(c) for c in s.buckets.counts.values()) == 2000 and sum(s.buckets.failures) == 3


def test_percentiles_match_nearest_rank(small: tuple[Path, Truth]) -> None:
    d, truth = small
    s = read_probe(d, cutover_events=CUTOVER)
    for q, got in ((50, s.overall.p50), (90, s.overall.p90), (99, s.overall.p99), (99.9, s.overall.p999)):
        exact = nearest_rank(truth.latencies, q)
        assert got is not None and abs(got - exact) <= 0.003 * exact, (q, got, exact)
    assert s.overall.max == max(truth.latencies)
    assert s.overall.lag_p99 is not None and abs(s.overall.lag_p99 - 0.08) < 0.011  # 80 us send lag


def test_during_is_first_to_last_cutover_event(small: tuple[Path, Truth]) -> None:
    d, _ = small
    only_shift = read_probe(d, cutover_events=["upstreams reordered"])
    assert only_shift.cutover == (5.0, 5.0) and only_shift.phases[1].requests == 1  # the one due at 5.000
    everything = read_probe(d)  # every event counts: 1.0 to 6.0
    assert everything.cutover == (1.0, 6.0)
    none = read_probe(d, cutover_events=[])
    assert none.cutover is None and [p.name for p in none.phases] == ["run"] and none.phases[0].requests == 2000


def test_other_clock_origin(tmp_path: Path) -> None:
    lines = [{"seq": i, "sched": 5000.0 + i / 10, "sent": 5000.0 + i / 10, "done": 5000.01 + i / 10,
              "latency_ms": 10.0, "kind": "GET /health", "status": 200, "upstream": GREEN, "ok": True,
              "verdict": "ok", "error": None} for i in range(100)]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = read_probe(tmp_path)
    assert s.requests == 100 and s.buckets.n < 1300 and abs(s.start - 5000.0) < 1e-9
    assert "<svg" in render_timeline(s)


def test_not_a_probe_directory(tmp_path: Path) -> None:
    with pytest.raises(RunbookError, match=r"requests\.jsonl"):
        read_probe(tmp_path)


def test_render_lists_every_failure_and_needs_nothing_external(small: tuple[Path, Truth]) -> None:
    d, _ = small
    s = read_probe(d, cutover_events=CUTOVER)
    html = render_timeline(s, upstream_names={GREEN: "green", BLUE: "blue"})
    for f in s.failures:
        assert f"<td>{f.seq}</td>" in html
    assert "502 Bad Gateway" in html and "green (127.0.0.1:18899)" in html and "#2da44e" in html
    for name in CUTOVER:
        assert f">{name}<title>" in html
    page = timeline_page(s)
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "p99" in html and "send lag" in html


def _peak(d: Path, seconds: float) -> int:
    write_probe(d, ProbeSpec(duration_s=seconds, rate=100.0, events=EVENTS))
    tracemalloc.start()
    try:
        read_probe(d)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_number_of_requests(tmp_path: Path) -> None:
    small, large = _peak(tmp_path / "s", 20.0), _peak(tmp_path / "l", 200.0)  # 2,000 and 20,000 requests
    assert large < small * 1.3 + 300_000, (small, large)  # buckets and histograms, nothing per request


def test_six_hours_stay_small(big_probe: tuple[Path, Truth]) -> None:
    d, _ = big_probe
    s = read_probe(d, cutover_events=CUTOVER)  # speed is a benchmark figure (~6 s), not asserted here
    html = render_timeline(s)
    assert s.requests == BIG_REQUESTS and s.failures_total == len(BIG_FAILURES)
    assert s.buckets.n <= 1200 and s.buckets.width >= 6 * 3600 / 1200
    counted = dom(html)
    assert counted.elements < 5000, counted.elements
    assert {"svg", "path", "table"} <= counted.tags
    for f in BIG_FAILURES:
        assert f"<td>{f.seq}</td>" in html
    assert len(html) < 600_000
    during = s.phases[1]
    assert during.max is not None and during.max >= 250.0  # the one-second spike at the shift is seen


def test_reads_what_the_real_prober_writes(tmp_path: Path) -> None:
    prober = pytest.importorskip("runbook.probes.prober")
    served = {"n": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        served["n"] += 1
        upstream = GREEN if served["n"] <= 60 else BLUE
        if served["n"] == 50:
            raise httpx.ConnectError("connection reset by peer")
        if request.method == "GET":
            return httpx.Response(200, text="ok", headers={"X-Upstream": upstream})
        return httpx.Response(200, json={"jsonrpc": "2.0", "result": 1000 + served["n"], "id": 1},
                              headers={"X-Upstream": upstream})

    p = prober.Prober(url="http://127.0.0.1:9", rate=200, out_dir=tmp_path, max_duration=0.6, isolate=False,
                      transport=httpx.MockTransport(answer))
    with p:
        wait_for(lambda: p.progress.completed, lambda n: n >= 50, timeout=10, interval=0.01,
                 what="the first 50 answers")
        p.event("upstreams reordered", "blue first")
        p.wait(10)
    s = read_probe(tmp_path, cutover_events=["upstreams reordered"])
    assert s.requests == 120 and s.failures_total == 1 and s.malformed == 0
    assert s.failures[0].verdict == "conn_error" and {u.upstream for u in s.upstreams} == {GREEN, BLUE, None}
    assert s.cutover is not None and "<svg" in render_timeline(s)
