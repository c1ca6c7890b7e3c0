"""The cutover timeline's data: a prober directory read by streaming, into a summary of bounded size.

A prober directory holds ``requests.jsonl`` (one line per request: seq, sched, sent, done, latency_ms,
kind, status, upstream, ok, verdict, error) and ``events.jsonl`` (the procedure's events: t, name,
detail), on one clock in seconds since the probe started. A six-hour run at a few hundred requests per
second has millions of lines; this module reads them once, line by line, and keeps:

- time buckets whose width doubles whenever there are too many of them (``target_buckets`` to twice
  that), each with a count per serving upstream, failures and the maximum latency per upstream;
- latency histograms before, during and after the cutover (logarithmic bins 0.5 % wide, so a
  percentile is within 0.25 % of the exact value), and the same for the send lag (sent - sched: an
  open-loop prober that falls behind its schedule shows it here instead of hiding it in the latency);
- every failed request (up to ``max_failures``; the count is always exact), first and last time each
  upstream answered, and the count of each verdict.

"During" is from the first cutover event to the last; cutover events are those named in
``cutover_events`` (every event when it is None). Memory is flat in the number of requests.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError

REQUESTS = "requests.jsonl"
EVENTS = "events.jsonl"
PHASES = ("before", "during", "after")

# The fields the aggregation needs, found without a full JSON parse (a regex is 3x faster than
# json.loads). A key cannot occur inside a JSON string unescaped, so a match is always a real field;
# a line the regex cannot read completely is parsed with json.loads, and counted if that fails too.
_FIELDS = re.compile(rb'"(sched|sent|latency_ms|upstream|ok)"\s*:\s*("(?:[^"\\]|\\.)*"|[^,}\s]+)')
_LOG_R = math.log(1.005)


class LogHistogram:
    """Counts in logarithmic bins 0.5 % wide: percentiles within 0.25 %, memory a few thousand ints at most."""

    __slots__ = ("bins", "count", "max", "min")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0
        self.max = 0.0
        self.min = math.inf

    def add(self, value: float) -> None:
        b = int(math.log(value) / _LOG_R) if value > 0.001 else -1386  # 0.001 ms floor
        self.bins[b] = self.bins.get(b, 0) + 1
        self.count += 1
        if value > self.max:
            self.max = value
        if value < self.min:
            self.min = value

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100): the geometric middle of the bin holding it, clamped to min/max."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= rank:
                return min(max(math.exp((b + 0.5) * _LOG_R), self.min), self.max)
        return self.max


@dataclass(frozen=True)
class ProbeEvent:
    t: float
    name: str
    detail: str = ""
    cutover: bool = False


@dataclass(frozen=True)
class FailedRequest:
    seq: int | None
    t: float
    kind: str
    verdict: str
    status: int | None
    error: str
    upstream: str | None
    latency_ms: float | None


@dataclass(frozen=True)
class PhaseStats:
    """Latency (done - sent, answered requests) and send lag (sent - sched) of one phase, in ms."""

    name: str
    start: float | None
    end: float | None
    requests: int
    ok: int
    failures: int
    p50: float | None
    p90: float | None
    p99: float | None
    p999: float | None
    max: float | None
    lag_p99: float | None
    lag_max: float | None
    by_upstream: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class UpstreamStats:
    upstream: str | None
    requests: int
    ok: int
    first: float
    last: float


@dataclass(frozen=True)
class Buckets:
    """Equal-width time buckets from ``origin``: per upstream (None: no upstream answered) a count and a max latency."""

    origin: float
    width: float
    n: int
    counts: dict[str | None, list[int]]
    max_latency: dict[str | None, list[float]]
    failures: list[int]


@dataclass(frozen=True)
class ProbeSummary:
    source: str
    requests: int
    ok: int
    failures_total: int
    start: float
    end: float
    events: tuple[ProbeEvent, ...]
    cutover: tuple[float, float] | None
    phases: tuple[PhaseStats, ...]
    overall: PhaseStats
    upstreams: tuple[UpstreamStats, ...]
    verdicts: dict[str, int]
    failures: tuple[FailedRequest, ...]
    malformed: int
    malformed_examples: tuple[str, ...]
    buckets: Buckets = field(repr=False)

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the evidence bundle (the buckets are drawn in the timeline, not repeated here)."""
        d = asdict(self)
        d.pop("buckets")
        d["cutover"] = list(self.cutover) if self.cutover else None
        d["buckets"] = {"origin": self.buckets.origin, "width_s": self.buckets.width, "n": self.buckets.n}
        return d


class _Phase:
    __slots__ = ("by_upstream", "end", "failures", "lag", "latency", "ok", "requests", "start")

    def __init__(self) -> None:
        self.latency = LogHistogram()
        self.lag = LogHistogram()
        self.requests = 0
        self.ok = 0
        self.failures = 0
        self.start: float | None = None
        self.end: float | None = None
        self.by_upstream: dict[str | None, int] = {}

    def stats(self, name: str) -> PhaseStats:
        lat, lag = self.latency, self.lag
        return PhaseStats(
            name=name, start=self.start, end=self.end, requests=self.requests, ok=self.ok, failures=self.failures,
            p50=lat.percentile(50), p90=lat.percentile(90), p99=lat.percentile(99), p999=lat.percentile(99.9),
            max=lat.max if lat.count else None, lag_p99=lag.percentile(99), lag_max=lag.max if lag.count else None,
            by_upstream={_name(k): v for k, v in sorted(self.by_upstream.items(), key=lambda kv: -kv[1])},
        )


def _name(upstream: str | None) -> str:
    return upstream if upstream is not None else "(none)"


def read_events(path: Path, cutover_events: Sequence[str] | None = None) -> tuple[list[ProbeEvent], int]:
    """Events sorted by time, each marked when it belongs to the cutover; and the count of unreadable lines."""
    events: list[ProbeEvent] = []
    bad = 0
    if not path.is_file():
        return events, 0
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                name = str(rec["name"])
                detail = rec.get("detail")
                text = "" if detail is None else detail if isinstance(detail, str) else json.dumps(detail)
                events.append(ProbeEvent(t=float(rec["t"]), name=name, detail=text,
                                         cutover=cutover_events is None or name in cutover_events))
            except (ValueError, KeyError, TypeError):
                bad += 1
    return sorted(events, key=lambda e: e.t), bad


class _Aggregator:
    def __init__(self, *, origin: float, target_buckets: int, cutover: tuple[float, float] | None,
                 max_failures: int) -> None:
        self.origin = origin
        self.cap = max(2, 2 * target_buckets)
        self.width = 0.001
        self.used = 0
        self.counts: dict[str | None, list[int]] = {}
        self.maxlat: dict[str | None, list[float]] = {}
        self.fails = [0] * self.cap
        self.cutover = cutover
        self.phases = {name: _Phase() for name in (PHASES if cutover else ("run",))}
        self.overall = _Phase()
        self.seen: dict[str | None, list[float]] = {}  # upstream -> [requests, ok, first, last]
        self.verdicts: dict[str, int] = {}
        self.failures: list[FailedRequest] = []
        self.failures_total = 0
        self.max_failures = max_failures
        self.start = math.inf
        self.end = -math.inf

    def _merge(self) -> None:
        half = self.cap // 2
        pad = [0] * half
        for up, c in self.counts.items():
            self.counts[up] = [a + b for a, b in zip(c[0::2], c[1::2], strict=True)] + pad
            m = self.maxlat[up]
            self.maxlat[up] = [a if a > b else b for a, b in zip(m[0::2], m[1::2], strict=True)] + [0.0] * half
        f = self.fails
        self.fails = [a + b for a, b in zip(f[0::2], f[1::2], strict=True)] + pad
        self.width *= 2
        self.used = (self.used + 1) // 2

    def add(self, t: float, sched: float | None, latency: float | None, upstream: str | None, ok: bool,
            verdict: str, failure: FailedRequest | None) -> None:
        if t < self.start:
            self.start = t
        if t > self.end:
            self.end = t
        idx = int((t - self.origin) / self.width) if t > self.origin else 0
        while idx >= self.cap:
            self._merge()
            idx = int((t - self.origin) / self.width)
        if idx >= self.used:
            self.used = idx + 1
        counts = self.counts.get(upstream)
        if counts is None:
            counts = self.counts[upstream] = [0] * self.cap
            self.maxlat[upstream] = [0.0] * self.cap
        counts[idx] += 1
        if latency is not None and latency > self.maxlat[upstream][idx]:
            self.maxlat[upstream][idx] = latency
        cut = self.cutover
        if cut is None:
            phase = self.phases["run"]
        else:
            phase = self.phases["before" if t < cut[0] else "during" if t <= cut[1] else "after"]
        for p in (phase, self.overall):
            p.requests += 1
            if p.start is None:
                p.start = t
            p.end = t
            p.by_upstream[upstream] = p.by_upstream.get(upstream, 0) + 1
            if ok:
                p.ok += 1
                if latency is not None:
                    p.latency.add(latency)
            else:
                p.failures += 1
            if sched is not None:
                p.lag.add(max(0.0, (t - sched) * 1000.0))
        s = self.seen.get(upstream)
        if s is None:
            self.seen[upstream] = [1, 1 if ok else 0, t, t]
        else:
            s[0] += 1
            s[1] += ok
            s[2] = min(s[2], t)
            s[3] = max(s[3], t)
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        if not ok:
            self.fails[idx] += 1
            self.failures_total += 1
            if failure is not None and len(self.failures) < self.max_failures:
                self.failures.append(failure)


def _num(raw: bytes | None) -> float | None:
    if raw is None or raw == b"null":
        return None
    return float(raw)


def _failure(rec: dict[str, Any], t: float) -> FailedRequest:
    status = rec.get("status")
    lat = rec.get("latency_ms")
    return FailedRequest(
        seq=rec.get("seq") if isinstance(rec.get("seq"), int) else None, t=t, kind=str(rec.get("kind") or ""),
        verdict=str(rec.get("verdict") or "failed"), status=status if isinstance(status, int) else None,
        error=str(rec.get("error") or ""), upstream=rec.get("upstream") if isinstance(rec.get("upstream"), str) else None,
        latency_ms=float(lat) if isinstance(lat, int | float) else None,
    )


def _records(path: Path) -> Iterable[tuple[bytes, dict[bytes, bytes]]]:
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield line, dict(_FIELDS.findall(line))


def read_probe(directory: str | Path, *, cutover_events: Sequence[str] | None = None, target_buckets: int = 600,
               max_failures: int = 10_000) -> ProbeSummary:
    """Read a prober directory by streaming (memory flat in the number of requests) into a :class:`ProbeSummary`."""
    d = Path(directory)
    req_path = d / REQUESTS
    if not req_path.is_file():
        raise RunbookError(f"not a prober directory: {d} has no {REQUESTS}", obj=str(d))
    events, bad_events = read_events(d / EVENTS, cutover_events)
    cut_times = [e.t for e in events if e.cutover]
    cutover = (min(cut_times), max(cut_times)) if cut_times else None
    origin = 0.0
    malformed = bad_events
    examples: list[str] = []
    agg: _Aggregator | None = None
    for line, f in _records(req_path):
        ok_raw = f.get(b"ok")
        upstream_raw = f.get(b"upstream")
        try:
            if ok_raw == b"true" and (b"sent" in f or b"sched" in f):
                sched = _num(f.get(b"sched"))
                sent = _num(f.get(b"sent"))
                t = sent if sent is not None else sched
                if t is None:
                    raise ValueError("no time")
                latency = _num(f.get(b"latency_ms"))
                upstream = None if upstream_raw is None or upstream_raw == b"null" else json.loads(upstream_raw)
                ok, verdict, failure = True, "ok", None
            else:
                rec = json.loads(line)
                sched = rec.get("sched")
                sent = rec.get("sent")
                t = float(sent if sent is not None else sched)
                sched = float(sched) if sched is not None else None
                lat = rec.get("latency_ms")
                latency = float(lat) if lat is not None else None
                upstream = rec.get("upstream") if isinstance(rec.get("upstream"), str) else None
                ok = rec.get("ok") is True
                verdict = str(rec.get("verdict") or ("ok" if ok else "failed"))
                failure = None if ok else _failure(rec, t)
        except (ValueError, TypeError, AttributeError):
            malformed += 1
            if len(examples) < 5:
                examples.append(line[:300].decode("utf-8", "replace").rstrip())
            continue
        if agg is None:
            if not (0.0 <= t < 1e6):  # not "seconds since start": start the axis just before the first request
                origin = min([t - 30.0, *(e.t for e in events)])
            origin = min([origin, *(e.t for e in events)])
            agg = _Aggregator(origin=origin, target_buckets=target_buckets, cutover=cutover,
                              max_failures=max_failures)
        agg.add(t, sched, latency, upstream, ok, verdict, failure)
    if agg is None:
        agg = _Aggregator(origin=origin, target_buckets=target_buckets, cutover=cutover, max_failures=max_failures)
    return _summary(str(d), agg, events, cutover, malformed, examples)


def _summary(source: str, agg: _Aggregator, events: list[ProbeEvent], cutover: tuple[float, float] | None,
             malformed: int, examples: list[str]) -> ProbeSummary:
    n = agg.used
    times = [e.t for e in events]
    start = min([agg.start, *times]) if (agg.overall.requests or times) else 0.0
    end = max([agg.end, *times]) if (agg.overall.requests or times) else 0.0
    buckets = Buckets(
        origin=agg.origin, width=agg.width, n=n,
        counts={k: v[:n] for k, v in agg.counts.items()},
        max_latency={k: v[:n] for k, v in agg.maxlat.items()},
        failures=agg.fails[:n],
    )
    upstreams = tuple(
        UpstreamStats(upstream=k, requests=int(v[0]), ok=int(v[1]), first=v[2], last=v[3])
        for k, v in sorted(agg.seen.items(), key=lambda kv: kv[1][2])
    )
    return ProbeSummary(
        source=source, requests=agg.overall.requests, ok=agg.overall.ok, failures_total=agg.failures_total,
        start=start, end=end, events=tuple(events), cutover=cutover,
        phases=tuple(p.stats(name) for name, p in agg.phases.items()), overall=agg.overall.stats("overall"),
        upstreams=upstreams, verdicts=dict(sorted(agg.verdicts.items(), key=lambda kv: -kv[1])),
        failures=tuple(sorted(agg.failures, key=lambda f: f.t)), malformed=malformed,
        malformed_examples=tuple(examples), buckets=buckets,
    )
