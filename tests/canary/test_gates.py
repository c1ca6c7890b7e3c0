"""The canary gates (runbook/canary/gates.py, window.py): a gate with too few requests is inconclusive, not
passed; FAIL needs the Wilson lower bound above the threshold; p95 as PromQL's histogram_quantile computes
it; a 2-minute burst of errors in a 30-minute run fails the moving window though the whole run is under 5%;
the reasons carry the figures."""

from __future__ import annotations

import math
import random

import pytest

from runbook.canary.gates import (
    error_rate_gate,
    histogram_quantile,
    latency_gate,
    percent,
    presence_gate,
    wilson_interval,
)
from runbook.canary.window import Counts, align, combine_counters, moving_window_error_gate

INF = math.inf


# --------------------------------------------------------------------------- Wilson bounds, error-rate gate
def test_wilson_interval_matches_the_textbook_figures() -> None:
    # 10 errors in 100 at a two-sided 95% (each side one-sided at 97.5%, z = 1.96): 5.52% .. 17.44%
    lower, upper = wilson_interval(10, 100, 0.975)
    assert lower == pytest.approx(0.05523, abs=1e-5) and upper == pytest.approx(0.17437, abs=1e-5)
    # zero errors: the upper bound is z^2 / (n + z^2), with the one-sided z = 1.6449 at 95%
    z2 = 1.6448536269514722**2
    assert wilson_interval(0, 6000) == (0.0, pytest.approx(z2 / (6000 + z2)))
    assert wilson_interval(7, 7)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("requests", [0, 1, 10, 51])
def test_too_few_requests_is_inconclusive_not_passed(requests: int) -> None:
    result = error_rate_gate(0, requests)
    assert result.verdict == "inconclusive" and not result.ok
    assert result.upper >= 0.05  # nothing below the threshold was shown


def test_zero_errors_pass_from_52_requests_at_the_defaults() -> None:
    # z^2 / (n + z^2) < 0.05  <=>  n > 19 z^2 = 51.4
    assert error_rate_gate(0, 51).verdict == "inconclusive"
    assert error_rate_gate(0, 52).verdict == "pass"


def test_fail_needs_the_lower_bound_above_the_threshold() -> None:
    few = error_rate_gate(4, 50)  # 8% observed, above 5%, but on 50 requests
    assert few.rate == pytest.approx(0.08) and few.lower <= 0.05 < few.upper
    assert few.verdict == "inconclusive"
    many = error_rate_gate(30, 200)  # 15% on 200 requests: the lower bound is above 5%
    assert many.lower > 0.05 and many.verdict == "fail" and not many.ok
    # a rate just under the threshold on many requests passes, on few it does not
    assert error_rate_gate(400, 10_000).verdict == "pass"
    assert error_rate_gate(4, 100).verdict == "inconclusive"


def test_the_reasons_carry_the_figures() -> None:
    assert error_rate_gate(0, 6000).reason == (
        "0 errors in 6,000 requests: error rate below 0.046% at 95% (threshold 5%)")
    assert error_rate_gate(412, 1200).reason == (
        "412 errors in 1,200 requests: error rate above 32% at 95% (threshold 5%)")
    assert error_rate_gate(3, 60).reason == (
        "3 errors in 60 requests: error rate between 2.0% and 12% at 95%, threshold 5%: too few requests to decide")
    assert error_rate_gate(0, 0).reason == (
        "0 errors in 0 requests: no requests: nothing to judge the error rate on (threshold 5%)")
    assert error_rate_gate(1, 1).reason.startswith("1 error in 1 request: ")
    assert error_rate_gate(0, 120.4, threshold=0.1, confidence=0.99).reason == (
        "0 errors in 120.4 requests: error rate below 4.4% at 99% (threshold 10%)")


def test_percent_rounds_bounds_outwards() -> None:
    assert percent(0.000451, rounding="up") == "0.046%"
    assert percent(0.3249, rounding="down") == "32%"
    assert percent(0.043, rounding="up") == "4.3%"  # no float noise pushes an exact figure up
    assert percent(0.0, rounding="up") == "0%"


def test_nonsense_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        error_rate_gate(5, 4)
    with pytest.raises(ValueError):
        error_rate_gate(0, 10, confidence=1.0)
    with pytest.raises(ValueError):
        error_rate_gate(0, 10, threshold=0)


# --------------------------------------------------------------------------- histogram_quantile, latency gate
def test_p95_interpolates_within_the_bucket_as_promql_does() -> None:
    # by hand: 100 observations, rank 0.95 * 100 = 95 falls in (0.25, 0.5] holding 98 - 90 = 8 of them,
    # 5 into it: 0.25 + (0.5 - 0.25) * 5 / 8 = 0.40625
    buckets = {"0.1": 60, "0.25": 90, "0.5": 98, "1": 100, "+Inf": 100}
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.40625)
    # the lowest bucket interpolates from 0: rank 50 of 60 in (0, 0.1]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 * 50 / 60)
    # order of the input and duplicated bounds do not matter (coalesced, as Prometheus does)
    assert histogram_quantile(0.95, [(INF, 100), (0.5, 98), (1.0, 60), (1.0, 40), (0.25, 90), (0.1, 60)]) == \
        pytest.approx(0.40625)
    # the example ClickHouse documents for its port of histogram_quantile
    assert histogram_quantile(0.5, {0: 6, 0.5: 11, 1: 14, INF: 19}) == pytest.approx(0.35)


def test_histogram_quantile_special_cases_follow_prometheus() -> None:
    assert histogram_quantile(0.95, {0.1: 10, INF: 100}) == 0.1  # in +Inf: the highest finite bound
    assert math.isnan(histogram_quantile(0.95, {0.1: 10, 1: 100}))  # no +Inf bucket
    assert math.isnan(histogram_quantile(0.95, {0.1: 0, INF: 0}))  # no observations
    assert math.isnan(histogram_quantile(0.95, {INF: 10}))  # fewer than two buckets
    assert histogram_quantile(-0.1, {0.1: 1, INF: 1}) == -INF and histogram_quantile(1.1, {0.1: 1, INF: 1}) == INF
    assert histogram_quantile(0.5, {0.1: 10, 0.2: 8, INF: 10}) == pytest.approx(0.05)  # forced monotonic


# production before the rollout: rank 950 in (5 ms, 10 ms] holding 80, 50 into it: p95 = 5 + 5 * 50/80 = 8.125 ms
BASE = {0.005: 900, 0.01: 980, 0.025: 1000, INF: 1000}


def test_latency_gate_passes_a_canary_like_the_baseline() -> None:
    result = latency_gate({0.005: 450, 0.01: 492, 0.025: 500, INF: 500}, BASE)
    assert result.verdict == "pass" and result.observed == pytest.approx(result.baseline, rel=0.05)
    assert result.baseline == pytest.approx(0.008125) and result.limit == pytest.approx(0.00975)
    assert result.reason == ("p95 7.98 ms over 500 requests, baseline 8.12 ms over 1,000: "
                             "within the limit 9.75 ms (1.2x the baseline)")


def test_latency_gate_fails_a_regression_with_its_figures() -> None:
    slow = {0.005: 0, 0.01: 0, 0.1: 0, 0.25: 300, INF: 300}  # every request took 100..250 ms
    result = latency_gate(slow, BASE)
    assert result.verdict == "fail" and result.observed == pytest.approx(0.2425)
    assert result.limit == pytest.approx(result.baseline * 1.2)
    assert result.reason == ("p95 242 ms over 300 requests, baseline 8.12 ms over 1,000: "
                             "above the limit 9.75 ms (1.2x the baseline)")


def test_latency_gate_is_inconclusive_on_too_few_observations() -> None:
    result = latency_gate({0.005: 0, 0.25: 20, INF: 20}, BASE)  # slow, but 20 requests
    assert result.verdict == "inconclusive" and "too few observations" in result.reason
    assert latency_gate({0.005: 0, INF: 0}, BASE).verdict == "inconclusive"  # none at all: NaN, not a pass
    assert latency_gate(BASE, {0.005: 10, INF: 10}).verdict == "inconclusive"  # no usable baseline


def test_latency_gate_in_the_overflow_bucket() -> None:
    beyond = {0.005: 0, 0.025: 0, INF: 500}  # p95 above 25 ms, the highest finite bound
    assert latency_gate(beyond, BASE).verdict == "fail"  # 25 ms already above the 9.75 ms limit
    assert latency_gate(beyond, BASE, max_ratio=5).verdict == "inconclusive"  # limit 41 ms: cannot tell
    assert latency_gate(BASE, beyond).verdict == "inconclusive"  # the baseline itself is unknown


def test_latency_tolerance_absorbs_a_sub_bucket_shift() -> None:
    shifted = {0.005: 300, 0.01: 470, 0.025: 500, INF: 500}  # p95 = 10 + 15 * 5/30 = 12.5 ms: 1.5x
    assert latency_gate(shifted, BASE).verdict == "fail"
    assert latency_gate(shifted, BASE).observed == pytest.approx(0.0125)
    assert latency_gate(shifted, BASE, tolerance=0.005).verdict == "pass"  # limit: baseline + 5 ms


# --------------------------------------------------------------------------- presence
def test_presence_gate() -> None:
    ok = presence_gate("zai_proxy_tokens_total", 5321, 120)
    assert ok.verdict == "pass" and ok.reason == "zai_proxy_tokens_total rose by 5,321 while 120 requests were served"
    missing = presence_gate("zai_proxy_tokens_total", None, 120)
    assert missing.verdict == "fail" and missing.reason == (
        "zai_proxy_tokens_total is not exported while 120 requests were served")
    assert presence_gate("zai_proxy_tokens_total", 0, 120).verdict == "fail"
    idle = presence_gate("zai_proxy_tokens_total", None, 0)
    assert idle.verdict == "inconclusive" and not idle.ok


# --------------------------------------------------------------------------- the moving window
def _run(burst_at: float | None, *, minutes: int = 30, per_step: int = 150, burst_errors: int = 60) -> list[Counts]:
    """A run at 10 requests/s sampled every 15 s: 1 error per 15 s, and ``burst_errors`` per 15 s during two
    minutes from ``burst_at`` seconds."""
    samples, requests, errors = [Counts(1_000.0, 0, 0)], 0, 0
    for k in range(1, minutes * 4 + 1):
        t = 1_000.0 + 15 * k
        requests += per_step
        in_burst = burst_at is not None and burst_at < t - 1_000.0 <= burst_at + 120
        errors += burst_errors if in_burst else 1
        samples.append(Counts(t, requests, errors))
    return samples


def test_a_two_minute_burst_fails_the_moving_window_though_the_whole_run_is_under_5_percent() -> None:
    samples = _run(burst_at=600)
    result = moving_window_error_gate(samples, window=120, step=15)
    assert result.whole.rate is not None and result.whole.rate < 0.05
    assert result.whole.verdict == "pass"  # the whole run alone would promote this canary
    assert result.verdict == "fail" and not result.ok
    assert (result.worst_start, result.worst_end) == (600, 720)
    assert result.worst.errors == 480 and result.worst.requests == 1200
    assert result.windows == (1800 - 120) // 15 + 1 and result.failed >= 1
    assert result.reason.startswith("a burst from +10m00s to +12m00s: 480 errors in 1,200 requests: "
                                    "error rate above 37% at 95% (threshold 5%); ")
    assert result.reason.endswith("whole run: 592 errors in 18,000 requests (3.3%)")


def test_the_same_run_without_the_burst_passes() -> None:
    result = moving_window_error_gate(_run(burst_at=None), window=120, step=15)
    assert result.verdict == "pass" and result.failed == 0
    assert result.reason.startswith("no window above 5% at 95% (113 windows of 2 min, ")


def test_a_quiet_run_is_inconclusive_in_every_window_and_overall() -> None:
    quiet = [Counts(1_000.0 + 15 * k, k, 0) for k in range(21)]  # one request per 15 s for 5 minutes
    result = moving_window_error_gate(quiet, window=120, step=15)
    assert result.verdict == "inconclusive" and result.inconclusive == result.windows


def test_a_counter_reset_is_a_restart_not_a_negative_count() -> None:
    samples = [Counts(0, 0, 0), Counts(15, 1000, 0), Counts(30, 2000, 1), Counts(45, 500, 0), Counts(60, 1500, 0)]
    result = moving_window_error_gate(samples, window=30, step=15)
    assert result.whole.requests == 3500 and result.whole.errors == 1 and result.verdict == "pass"


def test_a_run_shorter_than_the_window_is_one_window_and_the_tail_is_covered() -> None:
    short = moving_window_error_gate([Counts(0, 0, 0), Counts(60, 600, 0)], window=300, step=30)
    assert short.windows == 1 and short.reason.endswith("(the run is shorter than the window: one window)")
    # 100 s with 30 s windows every 40 s: [0,30], [40,70], and the tail [70,100] where the errors are
    tail = [Counts(t, t * 10, 0 if t < 80 else (t - 70) * 10) for t in range(0, 101, 10)]
    result = moving_window_error_gate(tail, window=30, step=40)
    assert result.windows == 3 and result.verdict == "fail" and (result.worst_start, result.worst_end) == (70, 100)


def test_samples_must_be_ordered_and_consistent() -> None:
    with pytest.raises(ValueError):
        moving_window_error_gate([Counts(10, 5, 0), Counts(5, 6, 0)], window=10, step=5)
    with pytest.raises(ValueError):
        moving_window_error_gate([Counts(0, 5, 6)], window=10, step=5)
    assert moving_window_error_gate([], window=10, step=5).verdict == "inconclusive"


def test_combine_counters_per_pod_with_a_restart_and_a_late_series() -> None:
    pod_a = [(0.0, 100.0), (15.0, 150.0), (30.0, 20.0), (45.0, 70.0)]  # restarted between 15 and 30
    pod_b = [(30.0, 40.0), (45.0, 90.0)]  # a new pod, first scraped at 30 with 40 already counted
    assert combine_counters([pod_a, pod_b]) == [(0.0, 0.0), (15.0, 50.0), (30.0, 110.0), (45.0, 210.0)]
    # the status="500" series appears with the first errors: counted from 0, not from its first value
    errors = combine_counters([[(30.0, 3.0), (45.0, 5.0)]], start=0.0)
    assert errors == [(30.0, 3.0), (45.0, 5.0)]
    joined = align(combine_counters([pod_a, pod_b]), errors)
    assert joined == [Counts(0.0, 0.0, 0.0), Counts(15.0, 50.0, 0.0), Counts(30.0, 110.0, 3.0),
                      Counts(45.0, 210.0, 5.0)]
    assert align([(0.0, 0.0), (15.0, 9.0)], []) == [Counts(0.0, 0.0, 0.0), Counts(15.0, 9.0, 0.0)]


def test_each_window_is_judged_as_the_error_rate_gate_judges_it() -> None:
    rng = random.Random(14)
    for _ in range(30):
        samples, requests, errors = [], 0, 0
        for k in range(rng.randint(1, 40)):
            new = rng.choice([0, 5, 40, 200])
            requests, errors = requests + new, errors + rng.randint(0, new // rng.choice([1, 4, 50]))
            samples.append(Counts(10.0 * k, requests, errors))
        window, step = rng.choice([10, 30, 60]), rng.choice([10, 20])
        result = moving_window_error_gate(samples, window=window, step=step)
        by_hand = []  # every window, judged by error_rate_gate on the counts at its edges
        t0, t_end = samples[0].t, samples[-1].t
        span = min(window, t_end - t0)
        starts = [t0 + k * step for k in range(int((t_end - t0 - span) // step) + 1)]
        if starts[-1] + span < t_end:
            starts.append(t_end - span)
        for s in starts:
            at = [c for c in samples if c.t <= s][-1], [c for c in samples if c.t <= s + span][-1]
            by_hand.append(error_rate_gate(at[1].errors - at[0].errors, at[1].requests - at[0].requests))
        assert result.windows == len(by_hand)
        assert result.failed == sum(r.verdict == "fail" for r in by_hand)
        assert result.inconclusive == sum(r.verdict == "inconclusive" for r in by_hand)
        assert result.worst.lower == max(r.lower for r in by_hand)


def test_min_requests_turns_a_thin_pass_into_inconclusive_but_keeps_a_fail() -> None:
    thin = error_rate_gate(0, 100, min_requests=200)  # 0 errors pass from 52 requests without the floor
    assert error_rate_gate(0, 100).verdict == "pass"
    assert thin.verdict == "inconclusive" and "at least 200 requests are needed to pass" in thin.reason
    assert error_rate_gate(0, 200, min_requests=200).verdict == "pass"
    assert error_rate_gate(40, 100, min_requests=200).verdict == "fail"  # 40%: a fail stands on 100
    run = [(t, t * 10.0, 0.0) for t in range(0, 11)]  # 100 requests, no error
    assert moving_window_error_gate(run, window=5, step=1, min_requests=200).verdict == "inconclusive"
    assert moving_window_error_gate(run, window=5, step=1).verdict == "pass"
