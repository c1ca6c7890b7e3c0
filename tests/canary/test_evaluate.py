"""The gates as the promotion reads them from Prometheus (runbook/canary/evaluate.py), fed by a fake that
answers range queries from counter series built here: a pod running before the rollout, a new pod that appears
after its start with counts in its first sample (counted from 0, unlike PromQL's increase()), a status="500"
series first seen mid-span, a pod that goes away (keeping what it counted). The fake selects series by the
query's label matchers, so a query for the wrong labels gets nothing, and it records the API calls sent."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pytest

from runbook.canary import evaluate as ev
from runbook.canary import promql
from runbook.canary.promql import ApiCall, QueryResult, Series
from runbook.env_canary import CanaryGates

STEP = 5.0
START, END = 1000.0, 1060.0  # the rollout's start, and now
GATES = CanaryGates(min_requests=200, window=30, step=STEP, baseline=30)
OLD, NEW = {"app_version": "1.2.0"}, {"app_version": "1.3.0"}
# the cumulative fraction of requests under each le
FAST = ((0.005, 0.5), (0.01, 0.9), (0.025, 0.99), (0.05, 1.0))
SLOW = ((0.05, 0.1), (0.1, 0.5), (0.25, 0.9), (0.5, 1.0))
_MATCHER = re.compile(r'(\w+)(=~|=)("(?:[^"\\]|\\.)*")')


class FakePrometheus:
    """``query_range`` over fixed series: the selector's matchers pick series, samples within [start, end]."""

    def __init__(self, series: Sequence[Series]) -> None:
        self.series = list(series)
        self.sent: list[ApiCall] = []

    def query_range(self, query: str, *, start: float, end: float, step: float) -> QueryResult:
        self.sent.append(promql.range_query(query, start=start, end=end, step=step))
        m = re.fullmatch(r"(\w+)\{(.*)\}", query)
        assert m, f"not a plain selector: {query}"
        matchers = [("__name__", "=", m.group(1))] + [(k, op, json.loads(v)) for k, op, v in
                                                      _MATCHER.findall(m.group(2))]
        out = []
        for s in self.series:
            if all((re.fullmatch(v, s.labels.get(k, "")) if op == "=~" else s.labels.get(k) == v)
                   for k, op, v in matchers):
                values = tuple((t, v) for t, v in s.values if start <= t <= end)
                if values:
                    out.append(Series(s.labels, values))
        return QueryResult("matrix", matrix=tuple(out))


@dataclass(frozen=True)
class Pod:
    """One pod's counters: it serves ``ok`` requests a second from ``born`` and fails ``errors`` a second from
    ``errors_from`` (default: ``born``); Prometheus scrapes it every STEP from ``seen`` to ``gone``, and its
    status="500" series exists from the first scrape after its first error."""

    name: str
    version: dict[str, str]
    born: float
    seen: float
    gone: float = END
    ok: float = 10.0
    errors: float = 0.0
    errors_from: float | None = None
    latency: tuple[tuple[float, float], ...] = FAST
    tokens: bool = True

    def series(self) -> list[Series]:
        labels = {"variant": "production", "pod": self.name, **self.version}
        times = [self.seen + STEP * k for k in range(int((self.gone - self.seen) / STEP) + 1)]
        served = {t: (t - self.born) * self.ok for t in times}
        failed = {t: max(0.0, t - (self.born if self.errors_from is None else self.errors_from)) * self.errors
                  for t in times}
        total = {t: served[t] + failed[t] for t in times}

        def counter(name: str, value: Mapping[float, float], **more: str) -> Series:
            return Series({"__name__": name, **labels, **more}, tuple(sorted(value.items())))

        out = [counter(promql.REQUESTS, served, status="200")]
        if self.errors:
            out.append(counter(promql.REQUESTS, {t: v for t, v in failed.items() if v > 0}, status="500"))
        for le, fraction in [*self.latency, (math.inf, 1.0)]:
            out.append(counter(promql.DURATION + "_bucket", {t: total[t] * fraction for t in times},
                               le="+Inf" if math.isinf(le) else f"{le:g}"))
        if self.tokens:
            out.append(counter(promql.TOKENS, {t: served[t] * 30 for t in times}, type="total"))
        return out


def _prom(*pods: Pod) -> FakePrometheus:
    old = [Pod("zai-proxy-4b7a-a1", OLD, born=800, seen=800), Pod("zai-proxy-4b7a-b2", OLD, born=810, seen=810)]
    return FakePrometheus([s for p in (*old, *pods) for s in p.series()])


def _new_pods(*, ok: float = 10.0, errors: float = 0.0, latency: tuple[tuple[float, float], ...] = FAST,
              tokens: bool = True) -> tuple[Pod, ...]:
    """Three pods of the new version: one running before the rollout's start, one appearing at +15 s whose
    first sample already holds 3 s of requests, one gone after +40 s. 148 s of requests from the start."""
    pod = Pod("zai-proxy-5c8d-a1", NEW, born=990, seen=990, ok=ok, errors=errors, latency=latency, tokens=tokens)
    return (pod, replace(pod, name="zai-proxy-5c8d-b2", born=1012, seen=1015),
            replace(pod, name="zai-proxy-5c8d-c3", born=995, seen=995, gone=1040))


def _evaluate(prom: FakePrometheus) -> ev.GateReport:
    base = ev.measure_baseline(prom, GATES, variant="production", labels=OLD, end=START)
    prom.sent.clear()
    return ev.evaluate(prom, GATES, variant="production", labels=NEW, start=START, end=END, baseline=base)


# --------------------------------------------------------------------------- counting
def test_the_baseline_counts_only_its_span() -> None:
    prom = _prom()
    base = ev.measure_baseline(prom, GATES, variant="production", labels=OLD, end=START)
    assert (base.start, base.end, base.requests, base.errors) == (970.0, 1000.0, 600.0, 0.0)  # 2 pods, 10/s, 30 s
    assert base.buckets == pytest.approx({0.005: 300.0, 0.01: 540.0, 0.025: 594.0, 0.05: 600.0, math.inf: 600.0})
    assert ev.Baseline.from_json(json.loads(json.dumps(base.to_json()))) == base


def test_new_pods_and_a_late_error_series_are_counted_from_zero() -> None:
    late = Pod("zai-proxy-5c8d-a1", NEW, born=990, seen=990, errors=0.5, errors_from=1026)
    report = _evaluate(_prom(late, *_new_pods()[1:]))
    # a1: 600 ok in the span; b2: 480, all of it (its first sample holds 30); c3: 400 until it went away.
    # a1's first error at +26 s creates its 500 series, first scraped at +30 s holding 2 errors, 17 by the end:
    # all 17 count (increase() would keep 15, and none of b2's first 30 requests)
    assert report.requests == 600 + 480 + 400 + 17 and report.errors == 17
    assert report.passed, report.line()
    assert report.error_rate.whole.errors == 17 and report.error_rate.whole.requests == report.requests


# --------------------------------------------------------------------------- the gates' verdicts
def test_all_good_passes_every_gate() -> None:
    report = _evaluate(_prom(*_new_pods()))
    assert report.passed and report.failed == []
    assert [r.verdict for r in report.results] == ["pass", "pass", "pass"]
    assert report.requests == 1480 and report.errors == 0
    assert "0 errors in 1,480 requests" in report.error_rate.reason
    assert report.latency.observed == pytest.approx(report.latency.baseline)
    assert report.tokens.increase == 1480 * 30


def test_a_fifth_of_requests_failing_fails_the_error_gate() -> None:
    report = _evaluate(_prom(*_new_pods(ok=8.0, errors=2.0)))
    assert report.error_rate.verdict == "fail" and not report.passed
    assert (report.requests, report.errors) == (1480, 296)  # 120 + 96 + 80 errors, each pod's from its start
    assert report.failed == [f"error rate, moving window: {report.error_rate.reason}"]
    assert "a burst from +" in report.error_rate.reason and "(20%)" in report.error_rate.reason
    assert report.latency.verdict == "pass" and report.tokens.verdict == "pass"  # only the error gate


def test_too_few_requests_is_inconclusive_never_a_pass() -> None:
    thin = Pod("zai-proxy-5c8d-a1", NEW, born=990, seen=990, ok=1.5)  # 90 requests, 200 needed
    report = _evaluate(_prom(thin))
    assert report.requests == 90 and report.errors == 0
    assert [r.verdict for r in report.results] == ["inconclusive"] * 3
    assert not report.passed and report.failed == []
    assert "at least 200 requests are needed to pass" in report.error_rate.reason
    assert "too few observations to compare" in report.latency.reason


def test_a_slow_new_version_fails_latency_against_the_baseline() -> None:
    report = _evaluate(_prom(*_new_pods(latency=SLOW)))
    assert report.latency.verdict == "fail" and report.error_rate.verdict == "pass"
    assert report.latency.baseline == pytest.approx(0.01 + 0.015 * 0.05 / 0.09)  # the old pods' p95
    assert report.latency.observed == pytest.approx(0.25 + 0.25 * 0.05 / 0.1)
    assert report.failed == [f"latency: {report.latency.reason}"]
    assert "above the limit 23.3 ms" in report.latency.reason


def test_no_token_series_fails_presence() -> None:
    report = _evaluate(_prom(*_new_pods(tokens=False)))
    assert report.tokens.verdict == "fail" and report.tokens.increase is None
    assert report.failed == [f"presence: {promql.TOKENS} is not exported while 1,480 requests were served"]


def test_tokens_presence_on_the_canary() -> None:
    canary = {"variant": "canary"}

    def prom(ok: float = 0.2, tokens: bool = True) -> FakePrometheus:
        pod = Pod("zai-proxy-test-7f9c-a1", {}, born=900, seen=900, ok=ok, tokens=tokens)
        return FakePrometheus([Series({**s.labels, **canary}, s.values) for s in pod.series()])

    good = ev.tokens_presence(prom(), GATES, variant="canary", end=START)
    assert good.verdict == "pass" and good.requests == 6 and good.increase == 180
    missing = ev.tokens_presence(prom(tokens=False), GATES, variant="canary", end=START)
    assert missing.verdict == "fail" and "is not exported while 6 requests" in missing.reason
    idle = ev.tokens_presence(prom(ok=0.0), GATES, variant="canary", end=START)
    assert idle.verdict == "inconclusive" and idle.reason.startswith("only 0 requests served")
    wrong = ev.tokens_presence(prom(), GATES, variant="production", end=START)  # another variant's series
    assert wrong.verdict == "inconclusive"


# --------------------------------------------------------------------------- what a run sends
def test_the_queries_sent_are_the_ones_the_plan_lists() -> None:
    prom = _prom(*_new_pods())
    ev.evaluate(prom, GATES, variant="production", labels=NEW, start=START, end=END,
                baseline=ev.measure_baseline(_prom(), GATES, variant="production", labels=OLD, end=START))
    listed = ev.calls(GATES, variant="production", labels=NEW, start=START, end=END)
    assert prom.sent == listed
    assert [c.params[0][1] for c in listed] == [
        'zai_proxy_requests_total{variant="production",app_version="1.3.0"}',
        'zai_proxy_request_duration_seconds_bucket{variant="production",app_version="1.3.0"}',
        'zai_proxy_tokens_total{variant="production",app_version="1.3.0"}']
    base = _prom()
    ev.measure_baseline(base, GATES, variant="production", labels=OLD, end=START)
    ev.tokens_presence(base, GATES, variant="production", end=START, labels=OLD)
    before = ev.calls(GATES, variant="production", labels=OLD, start=START - GATES.baseline, end=START)
    assert set(base.sent) <= set(before) and {c.params[0][1] for c in base.sent} == {c.params[0][1] for c in before}
