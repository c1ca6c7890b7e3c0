"""The promotion's gates read from Prometheus: counts from range queries of the raw counters, never a ratio
and never ``increase()`` (which drops what a series counted before its first scrape: a new pod's, or the
``status="500"`` series the first error creates). Every counter series (one per pod, status or ``le``) is
combined from the span's start (:func:`runbook.canary.window.combine_counters`), so a pod that appears
during the rollout counts from 0 and a pod that goes keeps what it counted.

- :func:`measure_baseline`: production's latency histogram and traffic before the rollout.
- :func:`evaluate`: the three gates over a span of the new version's series: the error rate in a moving
  window (:func:`~runbook.canary.window.moving_window_error_gate`), the latency quantile against the baseline
  (:func:`~runbook.canary.gates.latency_gate`), the token counter's presence
  (:func:`~runbook.canary.gates.presence_gate`).
- :func:`calls`: the API calls both make, for ``runbook plan``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from runbook.canary import promql
from runbook.canary.gates import LatencyResult, PresenceResult, latency_gate, presence_gate
from runbook.canary.promql import ApiCall, QueryResult, Series
from runbook.canary.window import WindowResult, combine_counters, counts_from_series, moving_window_error_gate
from runbook.env_canary import CanaryGates

__all__ = ["Baseline", "GateReport", "calls", "evaluate", "measure_baseline", "requests_between", "tokens_presence"]

_ERROR = re.compile(promql.ERROR_STATUS)


class Queries(Protocol):
    def query_range(self, query: str, *, start: float, end: float, step: float) -> QueryResult: ...


def _series(prom: Queries, query: str, start: float, end: float, step: float) -> tuple[Series, ...]:
    return prom.query_range(query, start=start, end=max(end, start + step), step=step).matrix


def _total(series: Sequence[Series], start: float) -> float:
    combined = combine_counters([s.values for s in series], start=start)
    return combined[-1][1] if combined else 0.0


def _buckets(series: Sequence[Series], start: float) -> dict[float, float]:
    """``le`` -> cumulative count over the span, each ``le``'s series (one per pod) combined from ``start``."""
    by_le: dict[float, list[Series]] = {}
    for s in series:
        le = s.labels.get("le")
        if le is None:
            continue
        by_le.setdefault(float(le.replace("Inf", "inf")), []).append(s)
    return {le: _total(group, start) for le, group in sorted(by_le.items())}


def _requests(series: Sequence[Series], start: float) -> tuple[float, float]:
    """(requests, errors) over the span from the request counters (every status; errors: 5xx)."""
    errors = [s for s in series if _ERROR.fullmatch(s.labels.get("status", ""))]
    return _total(series, start), _total(errors, start)


def requests_between(prom: Queries, variant: str, *, start: float, end: float, step: float,
                     labels: Mapping[str, str] | None = None) -> float:
    """Requests ``variant`` answered from ``start`` to ``end`` (every status), counted as the gates count."""
    return _total(_series(prom, promql.requests_counter(variant, labels), start, end, step), start)


@dataclass(frozen=True)
class Baseline:
    """Production before the rollout: its latency histogram and traffic over ``[start, end]``."""

    start: float
    end: float
    buckets: dict[float, float]
    requests: float
    errors: float
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "requests": self.requests, "errors": self.errors,
                "labels": self.labels, "buckets": [[_le(k), v] for k, v in sorted(self.buckets.items())]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Baseline:
        return cls(float(data["start"]), float(data["end"]),
                   {float(str(le).replace("Inf", "inf")): float(v) for le, v in data["buckets"]},
                   float(data["requests"]), float(data["errors"]), dict(data.get("labels") or {}))


def _le(value: float) -> str:
    return "+Inf" if math.isinf(value) else f"{value:g}"


def measure_baseline(prom: Queries, gates: CanaryGates, *, variant: str, labels: Mapping[str, str],
                     end: float) -> Baseline:
    start = end - gates.baseline
    buckets = _buckets(_series(prom, promql.selector(promql.DURATION + "_bucket", variant, labels), start, end,
                               gates.step), start)
    requests, errors = _requests(_series(prom, promql.requests_counter(variant, labels), start, end, gates.step),
                                 start)
    return Baseline(start, end, buckets, requests, errors, dict(labels))


@dataclass(frozen=True)
class GateReport:
    """One evaluation of the three gates over ``[start, end]`` of the series ``labels`` select."""

    start: float
    end: float
    labels: dict[str, str]
    requests: float
    errors: float
    error_rate: WindowResult
    latency: LatencyResult
    tokens: PresenceResult

    @property
    def results(self) -> tuple[WindowResult, LatencyResult, PresenceResult]:
        return (self.error_rate, self.latency, self.tokens)

    @property
    def failed(self) -> list[str]:
        return [f"{r.gate}: {r.reason}" for r in self.results if r.verdict == "fail"]

    @property
    def passed(self) -> bool:
        return all(r.verdict == "pass" for r in self.results)

    def line(self) -> str:
        """One progress line: each gate's verdict and its figures."""
        return "; ".join(f"{r.gate} {r.verdict.upper()}: {r.reason}" for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "labels": self.labels, "requests": self.requests,
                "errors": self.errors, "passed": self.passed,
                "gates": [{"gate": r.gate, "verdict": r.verdict, "reason": r.reason} for r in self.results]}


def evaluate(prom: Queries, gates: CanaryGates, *, variant: str, labels: Mapping[str, str], start: float,
             end: float, baseline: Baseline) -> GateReport:
    """The gates over the new version's series from ``start`` (the rollout's start) to ``end``."""
    req_series = _series(prom, promql.requests_counter(variant, labels), start, end, gates.step)
    err_series = [s for s in req_series if _ERROR.fullmatch(s.labels.get("status", ""))]
    requests, errors = _requests(req_series, start)
    samples = counts_from_series([s.values for s in req_series], [s.values for s in err_series], start=start)
    window = moving_window_error_gate(samples, window=gates.window, step=gates.step,
                                      threshold=gates.max_error_rate, confidence=gates.confidence,
                                      min_requests=gates.min_requests)
    buckets = _buckets(_series(prom, promql.selector(promql.DURATION + "_bucket", variant, labels), start, end,
                               gates.step), start)
    latency = latency_gate(buckets, baseline.buckets, quantile=gates.latency_quantile, max_ratio=gates.latency_ratio,
                           tolerance=gates.latency_tolerance, min_observations=gates.min_requests)
    token_series = _series(prom, promql.tokens_series_selector(variant, labels), start, end, gates.step)
    served = requests - errors
    tokens = presence_gate(promql.TOKENS, _total(token_series, start) if token_series else None, served,
                           min_requests=gates.min_requests)
    return GateReport(start, end, dict(labels), requests, errors, window, latency, tokens)


def calls(gates: CanaryGates, *, variant: str, labels: Mapping[str, str], start: float, end: float) -> list[ApiCall]:
    """The range queries :func:`evaluate` sends, in its order (:func:`measure_baseline` sends the first two, the
    histogram before the requests, over the baseline's span)."""
    step = gates.step
    return [promql.range_query(q, start=start, end=end, step=step) for q in (
        promql.requests_counter(variant, labels),
        promql.selector(promql.DURATION + "_bucket", variant, labels),
        promql.tokens_series_selector(variant, labels))]


def tokens_presence(prom: Queries, gates: CanaryGates, *, variant: str, end: float,
                    labels: Mapping[str, str] | None = None) -> PresenceResult:
    """Whether ``variant``'s token counter rose over the baseline span before ``end`` while it served
    requests (the checklist's "token counting verified on canary"); a handful of requests is enough to tell
    (one answered completion must move it)."""
    start = end - gates.baseline
    req = _series(prom, promql.requests_counter(variant, labels), start, end, gates.step)
    requests, errors = _requests(req, start)
    tok = _series(prom, promql.tokens_series_selector(variant, labels), start, end, gates.step)
    return presence_gate(promql.TOKENS, _total(tok, start) if tok else None, requests - errors, min_requests=1)
