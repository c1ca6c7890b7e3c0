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

A request's place on the time axis (and so its bucket and phase) is when it was scheduled, as in an
open-loop prober's own summary; a request never sent (``overload``) has no other time. "During" is from
the first cutover event to the last; cutover events are those named in ``cutover_events`` (every event
when it is None). Memory is flat in the number of requests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from runbook.evidence.histogram import INV_LOG_R, LOG_FLOOR, Histogram

REQUESTS = "requests.jsonl"
EVENTS = "events.jsonl"
PHASES = ("before", "during", "after")

_DECODER = json.JSONDecoder()
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
        self.latency = Histogram()
        self.lag = Histogram(log=False)
        self.requests = 0
        self.ok = 0
        self.failures = 0
        self.start = math.inf
        self.end = -math.inf
        self.by_upstream: dict[str | None, int] = {}

    def merge(self, other: _Phase) -> None:
        self.latency.merge(other.latency)
        self.lag.merge(other.lag)
        self.requests += other.requests
        self.ok += other.ok
        self.failures += other.failures
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        for k, v in other.by_upstream.items():
            self.by_upstream[k] = self.by_upstream.get(k, 0) + v

    def stats(self, name: str) -> PhaseStats:
        lat, lag = self.latency, self.lag
        return PhaseStats(
            name=name, start=self.start if self.requests else None, end=self.end if self.requests else None,
            requests=self.requests, ok=self.ok, failures=self.failures,
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
    """The per-request hot path (a few microseconds per line: millions of lines): kept flat on purpose."""

    def __init__(self, *, origin: float, target_buckets: int, cutover: tuple[float, float] | None,
                 max_failures: int) -> None:
        self.origin = origin
        self.cap = max(2, 2 * target_buckets)
        self.width = 0.001
        self.counts: dict[str | None, list[int]] = {}
        self.maxlat: dict[str | None, list[float]] = {}
        self.fails = [0] * self.cap
        self.cutover = cutover
        self.phases = {name: _Phase() for name in (PHASES if cutover else ("run",))}
        phases = list(self.phases.values()) * 3
        self._before, self._during, self._after = phases[0], phases[1], phases[2]
        self._c0, self._c1 = cutover if cutover else (math.inf, math.inf)
        self.seen: dict[str | None, list[float]] = {}  # upstream -> [requests, ok, first, last]
        self.verdicts: dict[str, int] = {}
        self.failures: list[FailedRequest] = []
        self.failures_total = 0
        self.max_failures = max_failures

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

    def add(self, t: float, sent: float | None, latency: float | None, upstream: str | None, ok: bool,
            verdict: str, failure: FailedRequest | None) -> None:
        idx = int((t - self.origin) / self.width) if t > self.origin else 0
        while idx >= self.cap:
            self._merge()
            idx = int((t - self.origin) / self.width)
        counts = self.counts.get(upstream)
        if counts is None:
            counts = self.counts[upstream] = [0] * self.cap
            self.maxlat[upstream] = [0.0] * self.cap
        counts[idx] += 1
        p = self._before if t < self._c0 else self._during if t <= self._c1 else self._after
        p.requests += 1
        if t < p.start:
            p.start = t
        if t > p.end:
            p.end = t
        bu = p.by_upstream
        bu[upstream] = bu.get(upstream, 0) + 1
        if ok:
            p.ok += 1
            if latency is not None:
                ml = self.maxlat[upstream]
                if latency > ml[idx]:
                    ml[idx] = latency
                h = p.latency
                b = int(math.log(latency) * INV_LOG_R) if latency > 0.001 else LOG_FLOOR
                h.bins[b] = h.bins.get(b, 0) + 1
                h.count += 1
                if latency > h.max:
                    h.max = latency
                if latency < h.min:
                    h.min = latency
        else:
            p.failures += 1
        if sent is not None:
            lag = (sent - t) * 1000.0 if sent > t else 0.0
            g = p.lag
            b = int(lag * 100.0)
            g.bins[b] = g.bins.get(b, 0) + 1
            g.count += 1
            if lag > g.max:
                g.max = lag
            if lag < g.min:
                g.min = lag
        s = self.seen.get(upstream)
        if s is None:
            self.seen[upstream] = [1, 1 if ok else 0, t, t]
        else:
            s[0] += 1
            if ok:
                s[1] += 1
            if t < s[2]:
                s[2] = t
            elif t > s[3]:
                s[3] = t
        if ok:
            return
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        self.fails[idx] += 1
        self.failures_total += 1
        if failure is not None and len(self.failures) < self.max_failures:
            self.failures.append(failure)

    def overall(self) -> _Phase:
        total = _Phase()
        for p in self.phases.values():
            total.merge(p)
        return total


def _failure(rec: dict[str, Any], t: float) -> FailedRequest:
    status = rec.get("status")
    lat = rec.get("latency_ms")
    return FailedRequest(
        seq=rec.get("seq") if isinstance(rec.get("seq"), int) else None, t=t, kind=str(rec.get("kind") or ""),
        verdict=str(rec.get("verdict") or "failed"), status=status if isinstance(status, int) else None,
        error=str(rec.get("error") or ""),
        upstream=rec.get("upstream") if isinstance(rec.get("upstream"), str) else None,
        latency_ms=float(lat) if isinstance(lat, int | float) else None,
    )


def read_probe(directory: str | Path, *, cutover_events: Sequence[str] | None = None, target_buckets: int = 600,
               max_failures: int = 10_000) -> ProbeSummary:
    """Read a prober directory by streaming (memory flat in the number of requests) into a :class:`ProbeSummary`."""
    d = Path(directory)
    req_path = d / REQUESTS
    if not req_path.is_file():
        raise RunbookError(f"not a prober directory: {d} has no {REQUESTS}", obj=str(d))
    events, malformed = read_events(d / EVENTS, cutover_events)
    cut_times = [e.t for e in events if e.cutover]
    cutover = (min(cut_times), max(cut_times)) if cut_times else None
    examples: list[str] = []
    agg: _Aggregator | None = None
    scan = _DECODER.scan_once  # type: ignore[attr-defined]  # the C scanner without json.loads' wrappers: 2x faster on short lines
    with req_path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                rec, _ = scan(line, 0)
                sched_v, sent_v, lat = rec.get("sched"), rec.get("sent"), rec.get("latency_ms")
                t = float(sched_v if sched_v is not None else sent_v)  # a request's place: when it was due
                sent = float(sent_v) if sent_v is not None else None
                latency = float(lat) if lat is not None else None
                upstream = rec.get("upstream")
                if upstream is not None and not isinstance(upstream, str):
                    upstream = str(upstream)
                ok = rec.get("ok") is True
                if ok:
                    verdict, failure = "ok", None
                else:
                    verdict = str(rec.get("verdict") or "failed")
                    failure = _failure(rec, t)
            except (StopIteration, ValueError, TypeError, AttributeError):
                if not line.strip():
                    continue
                malformed += 1
                if len(examples) < 5:
                    examples.append(line[:300].rstrip())
                continue
            if agg is None:
                # "seconds since start" puts the axis origin at 0; any other clock starts just before the first request
                origin = 0.0 if 0.0 <= t < 1e6 else t - 30.0
                agg = _Aggregator(origin=min([origin, *(e.t for e in events)]), target_buckets=target_buckets,
                                  cutover=cutover, max_failures=max_failures)
            agg.add(t, sent, latency, upstream, ok, verdict, failure)
    if agg is None:
        agg = _Aggregator(origin=min([0.0, *(e.t for e in events)]), target_buckets=target_buckets,
                          cutover=cutover, max_failures=max_failures)
    return _summary(str(d), agg, events, cutover, malformed, examples)


def _summary(source: str, agg: _Aggregator, events: list[ProbeEvent], cutover: tuple[float, float] | None,
             malformed: int, examples: list[str]) -> ProbeSummary:
    overall = agg.overall()
    n = min(agg.cap, int((overall.end - agg.origin) / agg.width) + 1) if overall.requests else 0
    times = [e.t for e in events] + ([overall.start, overall.end] if overall.requests else [])
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
    verdicts = {"ok": overall.ok} if overall.ok else {}
    verdicts.update(sorted(agg.verdicts.items(), key=lambda kv: -kv[1]))
    return ProbeSummary(
        source=source, requests=overall.requests, ok=overall.ok, failures_total=agg.failures_total,
        start=min(times, default=0.0), end=max(times, default=0.0), events=tuple(events), cutover=cutover,
        phases=tuple(p.stats(name) for name, p in agg.phases.items()), overall=overall.stats("overall"),
        upstreams=upstreams, verdicts=verdicts, failures=tuple(sorted(agg.failures, key=lambda f: f.t)),
        malformed=malformed, malformed_examples=tuple(examples), buckets=buckets,
    )
