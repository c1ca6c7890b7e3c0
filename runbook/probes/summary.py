"""What the prober's answers mean (verdicts) and what a run adds up to (the summary).

:func:`judge` gives one answer its verdict, as an RPC client would see it: ``/health`` must say ``ok``
(agave answers HTTP 200 when ``behind`` too), a JSON-RPC answer must carry a result and no error, and a
``getSlot`` must not be more than ``stale_slots`` below the highest slot seen so far.

:func:`summarize` reads ``requests.jsonl`` and ``events.jsonl`` from a prober's ``out_dir`` once, line by
line, so a six-hour run summarises in constant memory: latencies go into log-linear histograms (1 %
relative precision; ``max`` is exact), counts into counters, and only the first ``max_failures`` failed
records are kept whole.

Phases are the intervals between consecutive events: ``before <first>``, ``<first> -> <second>``, ...,
``after <last>`` (one phase, ``whole run``, when no event was marked). A request belongs to the phase its
*scheduled* time falls in. Each phase has its lost requests by cause (every verdict but ``ok``), its slowest
answer, and the longest gap between successful answers that overlaps it (a gap across a boundary shows
whole in both phases, never split). These are figures: the verdict over them is
:func:`runbook.checks.zero_drop.verdict`'s.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError

REQUESTS_FILE = "requests.jsonl"
EVENTS_FILE = "events.jsonl"
META_FILE = "prober.json"
SUMMARY_FILE = "summary.json"
NO_UPSTREAM = "-"
"""Key of requests that named no upstream (no response, or no upstream header) in per-upstream counts."""
VERDICTS = ("ok", "behind", "stale", "http_error", "conn_error", "timeout", "bad_body", "overload", "needed_retry",
            "late")
"""``needed_retry``: answered only on the prober's own retry (lost to a client that does not retry);
``late``: answered after the client's timeout; both set by the prober, see :mod:`runbook.probes.prober`."""
NODE_UNHEALTHY = -32005  # agave's RpcCustomError::NodeUnhealthy


# ------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class ProbeKind:
    """One kind of request the prober sends, as an RPC client would."""

    name: str  # "GET /health", "POST getSlot", ...
    method: str
    path: str
    rpc_method: str | None = None

    def body(self) -> bytes | None:
        if self.path == CHAT_PATH:
            return CHAT_BODY
        if self.rpc_method is None:
            return None
        return json.dumps({"jsonrpc": "2.0", "id": 1, "method": self.rpc_method}, separators=(",", ":")).encode()


CHAT_PATH = "/v1/chat/completions"  # seed 004's proxy: an OpenAI-compatible chat completion, as its workers send
CHAT_BODY = json.dumps({"model": "glm-4.6", "max_tokens": 8, "messages": [
    {"role": "user", "content": "zero-drop probe: answer in a word"}]}, separators=(",", ":")).encode()


# seeds 001/002's Sei node: Tendermint's URI RPC ``GET /status`` (``result.sync_info.latest_block_height``)
SEI_STATUS = "/status"

# seed 003's application through its gateway: a client's read of each service (the answer names its component)
META_PATHS = {"storage": "/storage/probe", "schema": "/schema/probe"}

KINDS: dict[str, ProbeKind] = {
    k.name: k
    for k in (
        ProbeKind("GET /health", "GET", "/health"),
        ProbeKind("POST getSlot", "POST", "/", "getSlot"),
        ProbeKind("POST getHealth", "POST", "/", "getHealth"),
        ProbeKind("POST /v1/chat/completions", "POST", CHAT_PATH),
        *(ProbeKind(f"GET {path}", "GET", path) for path in META_PATHS.values()),
        ProbeKind("GET /status", "GET", SEI_STATUS),
    )
}
CHAT_MIX: tuple[str, ...] = ("POST /v1/chat/completions",)
META_MIX: tuple[str, ...] = tuple(f"GET {path}" for path in META_PATHS.values())
SEI_MIX: tuple[str, ...] = ("GET /status",)
DEFAULT_MIX: tuple[str, ...] = ("GET /health", "POST getSlot")


def _snippet(body: bytes) -> str:
    return body[:120].decode("utf-8", "replace").strip()


def judge(kind: ProbeKind, status: int, body: bytes, *, max_slot: int, stale_slots: int) -> tuple[str, str, int | None]:
    """(verdict, error, slot) of one answer; ``slot`` is a getSlot result that counts as seen."""
    if status != 200:
        return "http_error", f"HTTP {status}: {_snippet(body)!r}", None
    if kind.path == CHAT_PATH:
        return _judge_chat(body)
    if kind.path == SEI_STATUS:
        return _judge_sei_status(body)
    component = next((c for c, path in META_PATHS.items() if path == kind.path), None)
    if component is not None:
        return _judge_meta(component, body)
    if kind.rpc_method is None:
        text = body.strip()
        if text == b"ok":
            return "ok", "", None
        if text in (b"behind", b"unknown"):
            return "behind", f"/health answered {text.decode()!r}", None
        return "bad_body", f"unexpected /health body {_snippet(body)!r}", None
    try:
        doc = json.loads(body)
    except ValueError:
        return "bad_body", f"not JSON: {_snippet(body)!r}", None
    if not isinstance(doc, dict):
        return "bad_body", f"not a JSON-RPC response: {_snippet(body)!r}", None
    error = doc.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        return ("behind" if code == NODE_UNHEALTHY else "bad_body"), f"JSON-RPC error {code}: {message}", None
    result = doc.get("result")
    if kind.rpc_method == "getSlot":
        if not isinstance(result, int) or isinstance(result, bool):
            return "bad_body", f"getSlot result is not a slot: {_snippet(body)!r}", None
        if result < max_slot - stale_slots:
            return "stale", (f"slot {result} is {max_slot - result} behind the highest seen ({max_slot}; "
                             f"stale_slots={stale_slots})"), None
        return "ok", "", result
    if kind.rpc_method == "getHealth" and result != "ok":
        return "bad_body", f"getHealth answered {result!r}", None
    if "result" not in doc:
        return "bad_body", f"no result in {_snippet(body)!r}", None
    return "ok", "", None


def _judge_sei_status(body: bytes) -> tuple[str, str, int | None]:
    """A node's /status: Tendermint's ``{"result": {"sync_info": {"latest_block_height": "N", ...}}}`` (an error
    page with status 200, or a body without a height, is not an answer)."""
    try:
        height = int(json.loads(body)["result"]["sync_info"]["latest_block_height"])
    except (ValueError, KeyError, TypeError):
        return "bad_body", f"not a Tendermint /status: {_snippet(body)!r}", None
    if height <= 0:
        return "bad_body", f"/status at height {height}", None
    return "ok", "", None


def _judge_meta(component: str, body: bytes) -> tuple[str, str, int | None]:
    """A service's answer through the gateway names the component asked for (a gateway routing to the wrong
    Service, or an error page with status 200, is not an answer)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "bad_body", f"not JSON: {_snippet(body)!r}", None
    if not isinstance(doc, dict) or doc.get("component") != component:
        return "bad_body", f"not an answer of {component}: {_snippet(body)!r}", None
    return "ok", "", None


def _judge_chat(body: bytes) -> tuple[str, str, int | None]:
    """A chat completion is answered when it holds a choice and its token usage (what a worker reads)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "bad_body", f"not JSON: {_snippet(body)!r}", None
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not doc.get("choices") or not isinstance(usage, dict):
        return "bad_body", f"not a chat completion with usage: {_snippet(body)!r}", None
    return "ok", "", None


# ------------------------------------------------------------------------------------- summary

_STEP = math.log1p(0.01)  # histogram buckets 1 % wide
_FLOOR_MS = 0.001  # values below 1 us share bucket 0


class Histogram:
    """Log-linear histogram of non-negative millisecond values: constant memory, 1 % precision."""

    def __init__(self) -> None:
        self.count = 0
        self.max = 0.0
        self._buckets: Counter[int] = Counter()

    def add(self, ms: float) -> None:
        self.count += 1
        if ms > self.max:
            self.max = ms
        self._buckets[0 if ms < _FLOOR_MS else int(math.log(ms / _FLOOR_MS) / _STEP) + 1] += 1

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile; the bucket's upper edge, never above the exact maximum."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                edge = 0.0 if index == 0 else _FLOOR_MS * math.exp(index * _STEP)
                return min(edge, self.max)
        return self.max  # pragma: no cover - rank <= count

    def percentiles(self) -> Percentiles:
        return Percentiles(
            count=self.count,
            p50=round(self.quantile(0.50), 3),
            p90=round(self.quantile(0.90), 3),
            p99=round(self.quantile(0.99), 3),
            max=round(self.max, 3),
        )


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    def __str__(self) -> str:
        return f"p50 {self.p50:.2f} / p90 {self.p90:.2f} / p99 {self.p99:.2f} / max {self.max:.2f} ms"


@dataclass(frozen=True)
class Gap:
    """The longest time without a successful response, between the ``done`` times bounding it (s)."""

    seconds: float
    start: float
    end: float


@dataclass(frozen=True)
class Event:
    t: float
    name: str
    detail: str = ""


def lost_by_cause(verdicts: Mapping[str, int]) -> dict[str, int]:
    """The failed requests of a verdict count, by cause (every verdict but ``ok``)."""
    return {v: n for v, n in sorted(verdicts.items()) if v != "ok" and n}


@dataclass(frozen=True)
class Phase:
    name: str
    start: float | None  # s since start; None: the run's beginning
    end: float | None  # None: the run's end
    total: int
    failed: int
    verdicts: Mapping[str, int]
    upstreams: Mapping[str, int]
    latency: Percentiles
    slowest_ms: float = 0.0  # the slowest answer (a response of any status, late ones included)
    longest_gap: Gap = Gap(0.0, 0.0, 0.0)  # the longest gap between successes overlapping the phase

    @property
    def lost(self) -> dict[str, int]:
        return lost_by_cause(self.verdicts)


@dataclass(frozen=True)
class ProbeSummary:
    """What a prober saw. ``ok`` is true only when every request succeeded."""

    url: str
    rate: float
    started_at: float  # wall clock (epoch seconds) at t = 0
    duration: float  # s, from t = 0 to the last completion
    total: int
    failed: int
    verdicts: Mapping[str, int]
    failures: tuple[Mapping[str, Any], ...]  # the first failed records, whole
    latency: Percentiles
    send_lag: Percentiles  # sent - sched
    send_lag_within_5ms: float  # share of sent requests
    achieved_rate: float  # requests sent per second, first to last send
    longest_gap: Gap
    failure_span: tuple[float, float] | None  # sched of the first and last failed request
    upstreams: Mapping[str, int]
    phases: tuple[Phase, ...]
    events: tuple[Event, ...] = field(default=())
    retried: int = 0  # needed a retry: the server had closed a reused connection (config reload); failed
    retries: tuple[Mapping[str, Any], ...] = field(default=())  # the first such records, whole
    slowest_ms: float = 0.0  # the slowest answer of the run
    client_timeout: float = 0.0  # s: answers later than this are failed (``late``); from prober.json

    @property
    def lost(self) -> dict[str, int]:
        return lost_by_cause(self.verdicts)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.total > 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def describe(self, *, max_listed: int = 20) -> str:
        """Human summary: totals, latency, gap, per-phase upstreams, and every listed failed request."""
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(self.verdicts.items()))
        gap = self.longest_gap
        lines = [
            f"prober {self.url}: {self.total} requests at {self.rate:g}/s over {self.duration:.1f} s "
            f"(achieved {self.achieved_rate:.1f}/s); {self.failed} failed"
            + ("" if self.ok else " -- NOT zero-drop"),
            f"  verdicts: {verdicts or 'none'}",
            f"  latency: {self.latency}; slowest answer {self.slowest_ms:.1f} ms (client timeout "
            f"{self.client_timeout * 1000:.0f} ms)",
            f"  send lag: {self.send_lag}; {self.send_lag_within_5ms:.2%} within 5 ms",
            f"  longest gap between successes: {gap.seconds * 1000:.1f} ms (t={gap.start:.3f}..{gap.end:.3f} s)",
            "  upstreams: " + _counts(self.upstreams),
        ]
        if self.retried:
            lines.append(f"  {self.retried} request(s) met a keep-alive connection the server had closed (a Caddy "
                         "config reload closes idle client connections): lost to a client that does not retry:")
            lines += [f"    #{r.get('seq')} t={float(r.get('sched') or 0):.3f}s {r.get('kind')}: {r.get('retried')}"
                      for r in self.retries[:max_listed]]
        for ph in self.phases:
            lost = ", ".join(f"{k} {v}" for k, v in ph.lost.items()) or "none"
            lines.append(f"  phase {ph.name!r} ({_span(ph.start, ph.end)}): {ph.total} requests, {ph.failed} lost "
                         f"({lost}); slowest answer {ph.slowest_ms:.1f} ms; longest gap "
                         f"{ph.longest_gap.seconds * 1000:.1f} ms; upstreams {_counts(ph.upstreams)}; "
                         f"latency {ph.latency}")
        if self.failures:
            lines.append("  failed requests (seq, t, kind, verdict, upstream, error):")
            lines += failed_requests(self.failures, self.failed, max_listed=max_listed)
        return "\n".join(lines)


def failed_requests(records: Sequence[Mapping[str, Any]], count: int, *, max_listed: int = 20) -> list[str]:
    """One line per failed request (seq, scheduled time, kind, verdict, upstream, status, error), the first
    ``max_listed`` of ``records``, then how many of the ``count`` failed were left out."""
    lines = [f"    #{rec.get('seq')} t={float(rec.get('sched') or 0):.3f}s {rec.get('kind')} "
             f"{rec.get('verdict')} upstream={rec.get('upstream') or NO_UPSTREAM} "
             f"status={rec.get('status')}: {rec.get('error') or ''}" for rec in records[:max_listed]]
    more = count - len(lines)
    if more > 0:
        lines.append(f"    ... and {more} more (all in {REQUESTS_FILE})")
    return lines


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def _span(start: float | None, end: float | None) -> str:
    a = "start" if start is None else f"{start:.3f}s"
    b = "end" if end is None else f"{end:.3f}s"
    return f"{a}..{b}"


class _Acc:
    """Running totals of one phase (or of the whole run)."""

    def __init__(self) -> None:
        self.total = 0
        self.failed = 0
        self.verdicts: Counter[str] = Counter()
        self.upstreams: Counter[str] = Counter()
        self.latency = Histogram()
        self.slowest = 0.0
        self.gap = Gap(0.0, 0.0, 0.0)

    def add(self, rec: Mapping[str, Any]) -> None:
        self.total += 1
        if not rec.get("ok"):
            self.failed += 1
        self.verdicts[str(rec.get("verdict"))] += 1
        self.upstreams[rec.get("upstream") or NO_UPSTREAM] += 1
        latency = rec.get("latency_ms")
        if latency is not None:
            self.latency.add(float(latency))
            if rec.get("status") is not None and float(latency) > self.slowest:
                self.slowest = float(latency)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file, one at a time; a torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            yield json.loads(line)


def read_events(out_dir: Path) -> tuple[Event, ...]:
    events = [Event(t=float(e["t"]), name=str(e["name"]), detail=str(e.get("detail", "")))
              for e in read_jsonl(out_dir / EVENTS_FILE)]
    return tuple(sorted(events, key=lambda e: e.t))


def phase_names(events: tuple[Event, ...]) -> list[str]:
    if not events:
        return ["whole run"]
    names = [f"before {events[0].name}"]
    names += [f"{a.name} -> {b.name}" for a, b in pairwise(events)]
    names.append(f"after {events[-1].name}")
    return names


def summarize(out_dir: Path, *, max_failures: int = 50) -> ProbeSummary:
    """Summarise a prober's records (running or finished) by one streaming pass over its files."""
    out_dir = Path(out_dir)
    if not (out_dir / REQUESTS_FILE).exists():
        raise RunbookError(f"no prober records in {out_dir} ({REQUESTS_FILE} is missing)", obj=str(out_dir))
    meta: dict[str, Any] = {}
    if (out_dir / META_FILE).exists():
        meta = json.loads((out_dir / META_FILE).read_text())
    events = read_events(out_dir)
    bounds = [e.t for e in events]
    accs = [_Acc() for _ in range(len(events) + 1)]
    overall = _Acc()
    lag = Histogram()
    lag_within_5ms = 0
    failures: list[Mapping[str, Any]] = []
    retries: list[Mapping[str, Any]] = []
    retried = 0
    first_fail: float | None = None
    last_fail: float | None = None
    first_sent: float | None = None
    last_sent = 0.0
    last_ok = 0.0  # the gap before the first success counts from t = 0
    gap = Gap(0.0, 0.0, 0.0)
    end = 0.0
    for rec in read_jsonl(out_dir / REQUESTS_FILE):
        sched = float(rec["sched"])
        overall.add(rec)
        accs[bisect_right(bounds, sched)].add(rec)
        done = float(rec["done"])
        end = max(end, done)
        sent = rec.get("sent")
        if sent is not None:
            sent = float(sent)
            lag_ms = max(0.0, (sent - sched) * 1000.0)
            lag.add(lag_ms)
            lag_within_5ms += lag_ms <= 5.0
            first_sent = sent if first_sent is None else min(first_sent, sent)
            last_sent = max(last_sent, sent)
        if rec.get("retried"):
            retried += 1
            if len(retries) < max_failures:
                retries.append(rec)
        if rec.get("ok"):
            if done - last_ok > gap.seconds:
                gap = Gap(round(done - last_ok, 6), round(last_ok, 6), round(done, 6))
            if done > last_ok:
                _gap_into_phases(accs, bounds, last_ok, done)
            last_ok = max(last_ok, done)
        else:
            first_fail = sched if first_fail is None else min(first_fail, sched)
            last_fail = sched if last_fail is None else max(last_fail, sched)
            if len(failures) < max_failures:
                failures.append(rec)
    if end - last_ok > gap.seconds:  # the run ended without a success since last_ok
        gap = Gap(round(end - last_ok, 6), round(last_ok, 6), round(end, 6))
    if end > last_ok:
        _gap_into_phases(accs, bounds, last_ok, end)
    names = phase_names(events)
    phases = tuple(
        Phase(
            name=names[i],
            start=None if i == 0 else bounds[i - 1],
            end=None if i == len(bounds) else bounds[i],
            total=acc.total,
            failed=acc.failed,
            verdicts=dict(acc.verdicts),
            upstreams=dict(acc.upstreams),
            latency=acc.latency.percentiles(),
            slowest_ms=round(acc.slowest, 3),
            longest_gap=acc.gap,
        )
        for i, acc in enumerate(accs)
    )
    span = last_sent - first_sent if first_sent is not None else 0.0
    return ProbeSummary(
        url=str(meta.get("url", "")),
        rate=float(meta.get("rate", 0.0)),
        started_at=float(meta.get("started_at", 0.0)),
        duration=round(end, 6),
        total=overall.total,
        failed=overall.failed,
        verdicts=dict(overall.verdicts),
        failures=tuple(failures),
        latency=overall.latency.percentiles(),
        send_lag=lag.percentiles(),
        send_lag_within_5ms=round(lag_within_5ms / lag.count, 6) if lag.count else 1.0,
        achieved_rate=round((lag.count - 1) / span, 3) if span > 0 else 0.0,
        longest_gap=gap,
        failure_span=None if first_fail is None or last_fail is None else (first_fail, last_fail),
        upstreams=dict(overall.upstreams),
        phases=phases,
        events=events,
        retried=retried,
        retries=tuple(retries),
        slowest_ms=round(overall.slowest, 3),
        client_timeout=float(meta.get("client_timeout", meta.get("timeout", 0.0))),
    )


def _gap_into_phases(accs: list[_Acc], bounds: list[float], start: float, end: float) -> None:
    """The gap between successes ``start..end`` counts, whole, in every phase it overlaps."""
    seconds = end - start
    for i in range(bisect_right(bounds, start), min(bisect_right(bounds, end), len(bounds)) + 1):
        if seconds > accs[i].gap.seconds:
            accs[i].gap = Gap(round(seconds, 6), round(start, 6), round(end, 6))


def write_summary(summary: ProbeSummary, out_dir: Path) -> Path:
    path = Path(out_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary.to_dict(), indent=1, sort_keys=True))
    return path
