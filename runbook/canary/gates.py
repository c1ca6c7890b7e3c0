"""Promotion gates that never pass on too little data. Pure functions: counts in, a frozen result out.

Each gate returns ``pass``, ``fail`` or ``inconclusive``. Inconclusive means the data cannot decide either
way (too few requests, no baseline); it stops a promotion and never passes one. The peers' holes this
avoids: no data read as a pass (Flagger #1689; Kayenta leaves groups with no data out of the score), a point
threshold on a handful of requests (noise), a threshold over a whole run that hides a burst (k6 #2379; see
:mod:`runbook.canary.window`).

- :func:`error_rate_gate`: the Wilson score interval of the error rate from request counts. PASS when the
  upper bound is below the threshold, FAIL when the lower bound is above it, else INCONCLUSIVE.
- :func:`latency_gate`: a quantile (p95) of a Prometheus histogram, interpolated exactly as PromQL's
  ``histogram_quantile`` does (:func:`histogram_quantile`), against the production baseline measured
  before the rollout, with an allowed regression ratio.
- :func:`presence_gate`: a metric (``zai_proxy_tokens_total``) still exported and increasing while
  requests were served.

The reason strings carry the figures, e.g. ``0 errors in 6,000 requests: error rate below 0.046% at 95%
(threshold 5%)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

__all__ = ["ErrorRateResult", "GateVerdict", "LatencyResult", "PresenceResult", "error_rate_gate",
           "histogram_quantile", "latency_gate", "presence_gate", "wilson_bounds", "wilson_interval"]

GateVerdict = Literal["pass", "fail", "inconclusive"]
Buckets = Mapping[float, float] | Mapping[str, float] | Iterable[tuple[float | str, float]]


# --------------------------------------------------------------------------- formatting
def count(n: float) -> str:
    """``6,000``; a non-integer count (PromQL ``increase`` extrapolates) keeps one decimal."""
    return f"{n:,.0f}" if abs(n - round(n)) < 1e-9 else f"{n:,.1f}"


def percent(fraction: float, *, rounding: Literal["up", "down"]) -> str:
    """``fraction`` as a percentage with two significant digits, rounded ``up`` (for an upper bound, so
    "below X" stays true) or ``down`` (for a lower bound): 0.000451 -> ``0.046%`` up."""
    value = fraction * 100
    if value <= 0:
        return "0%"
    exponent = math.floor(math.log10(value))
    scale = 10.0 ** (exponent - 1)
    units = round(value / scale, 9)
    units = math.ceil(units) if rounding == "up" else math.floor(units)
    return f"{units * scale:.{max(0, 1 - exponent)}f}%"


def seconds(value: float) -> str:
    """A duration for a reason string: ``4.75 ms``, ``1.2 s``."""
    if math.isnan(value):
        return "n/a"
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


def _plural(n: float, noun: str) -> str:
    return f"{count(n)} {noun}{'' if n == 1 else 's'}"


def _plain_pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# --------------------------------------------------------------------------- error rate
def wilson_interval(errors: float, requests: float, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score bounds of the error rate ``errors / requests``, each one-sided at ``confidence``.

    z is the one-sided normal quantile ``NormalDist().inv_cdf(confidence)`` (1.645 at 95%): the true rate is
    below ``upper`` with probability ``confidence``, and above ``lower`` with the same probability. With
    ``p = errors/requests`` and ``n = requests``::

        centre = (p + z²/2n) / (1 + z²/n)
        half   = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
        (lower, upper) = (centre - half, centre + half), clamped to [0, 1]

    With no requests nothing is known: (0, 1). Zero errors in n requests gives ``upper = z²/(n+z²)``.
    """
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), not {confidence}")
    if requests < 0 or errors < 0 or errors > requests:
        raise ValueError(f"need 0 <= errors <= requests, got {errors} errors in {requests} requests")
    return wilson_bounds(errors, requests, NormalDist().inv_cdf(confidence))


def wilson_bounds(errors: float, requests: float, z: float) -> tuple[float, float]:
    """:func:`wilson_interval` for a given z, unchecked (the moving window computes z once)."""
    if requests == 0:
        return 0.0, 1.0
    n, p = float(requests), errors / requests
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    lower = 0.0 if errors == 0 else max(0.0, centre - half)
    upper = 1.0 if errors == requests else min(1.0, centre + half)
    return lower, upper


@dataclass(frozen=True)
class ErrorRateResult:
    """The error-rate gate's verdict with its figures: observed rate, the bounds and what they were held to."""

    verdict: GateVerdict
    errors: float
    requests: float
    rate: float | None  # observed errors/requests; None without requests
    lower: float  # Wilson lower bound, one-sided at ``confidence``
    upper: float  # Wilson upper bound, one-sided at ``confidence``
    threshold: float
    confidence: float
    reason: str
    gate: str = "error rate"

    @property
    def ok(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_rate_gate(errors: float, requests: float, *, threshold: float = 0.05,
                    confidence: float = 0.95, min_requests: float = 0) -> ErrorRateResult:
    """Judge an error rate from request counts (e.g. 5xx answers among all, over the gate's window).

    - PASS when the Wilson upper bound is below ``threshold``: the rate is below it at ``confidence``.
    - FAIL when the Wilson *lower* bound is above ``threshold``: the rate is above it at ``confidence``. A
      rate observed above the threshold on too few requests to be sure of it is INCONCLUSIVE, not FAIL.
    - INCONCLUSIVE otherwise: too few requests to decide either way (no requests at all included).

    Zero errors pass from 52 requests at the defaults (``z²/(n+z²) < 0.05``). ``min_requests`` raises that
    floor: below it a pass is INCONCLUSIVE (a fail stands: its lower bound is already above the threshold).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), not {threshold}")
    lower, upper = wilson_interval(errors, requests, confidence)
    what = f"{_plural(errors, 'error')} in {_plural(requests, 'request')}"
    at, limit = _plain_pct(confidence), _plain_pct(threshold)
    verdict: GateVerdict
    if requests == 0:
        verdict, why = "inconclusive", f"no requests: nothing to judge the error rate on (threshold {limit})"
    elif upper < threshold and requests < min_requests:
        verdict = "inconclusive"
        why = (f"error rate below {percent(upper, rounding='up')} at {at}, but at least {count(min_requests)} "
               f"requests are needed to pass (threshold {limit})")
    elif upper < threshold:
        verdict, why = "pass", f"error rate below {percent(upper, rounding='up')} at {at} (threshold {limit})"
    elif lower > threshold:
        verdict, why = "fail", f"error rate above {percent(lower, rounding='down')} at {at} (threshold {limit})"
    else:
        verdict = "inconclusive"
        why = (f"error rate between {percent(lower, rounding='down')} and {percent(upper, rounding='up')} at "
               f"{at}, threshold {limit}: too few requests to decide")
    return ErrorRateResult(verdict, errors, requests, errors / requests if requests else None, lower, upper,
                           threshold, confidence, f"{what}: {why}")


# --------------------------------------------------------------------------- histogram quantile
def _bucket_list(buckets: Buckets) -> list[tuple[float, float]]:
    items = buckets.items() if isinstance(buckets, Mapping) else buckets
    return sorted((float(le), float(c)) for le, c in items)


def _quantile(q: float, buckets: Buckets) -> tuple[float, bool, float]:
    """(value, in the +Inf bucket, observations): Prometheus's ``bucketQuantile`` (promql/quantile.go)."""
    b = _bucket_list(buckets)
    observations = b[-1][1] if b else 0.0
    if math.isnan(q) or not b or not math.isinf(b[-1][0]):
        return math.nan, False, observations
    if q < 0:
        return -math.inf, False, observations
    if q > 1:
        return math.inf, False, observations
    merged: list[list[float]] = []  # coalesceBuckets: equal upper bounds add up
    for le, c in b:
        if merged and merged[-1][0] == le:
            merged[-1][1] += c
        else:
            merged.append([le, c])
    prev = merged[0][1]  # correctPrecisionErrors (1e-12), then ensureMonotonic (the running maximum)
    for m in merged[1:]:
        if m[1] != prev and m[1] != 0 and abs(m[1] - prev) / abs(m[1]) <= 1e-12:
            m[1] = prev
        elif m[1] != prev:
            prev = m[1]
    highest = merged[0][1]
    for m in merged[1:]:
        highest = m[1] = max(highest, m[1])
    observations = merged[-1][1]
    if len(merged) < 2 or observations == 0:
        return math.nan, False, observations
    rank = q * observations
    i = next(k for k in range(len(merged)) if k == len(merged) - 1 or merged[k][1] >= rank)
    if i == len(merged) - 1:  # in the +Inf bucket: the highest finite bound (the true value is above it)
        return merged[-2][0], True, observations
    if i == 0 and merged[0][0] <= 0:
        return merged[0][0], False, observations
    start, end, in_bucket = 0.0, merged[i][0], merged[i][1]
    if i > 0:
        start = merged[i - 1][0]
        in_bucket -= merged[i - 1][1]
        rank -= merged[i - 1][1]
    return start + (end - start) * (rank / in_bucket), False, observations


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """PromQL's ``histogram_quantile(q, ...)`` on one classic histogram: ``buckets`` maps each ``le`` upper
    bound (a float or its label text, ``"+Inf"``) to its cumulative count.

    As Prometheus's ``bucketQuantile`` (promql/quantile.go) and its documentation of histogram_quantile: the
    buckets are sorted by bound, equal bounds are merged, counts made monotonic; the rank ``q * count`` is
    found in the first bucket whose cumulative count reaches it and the value interpolated linearly between
    that bucket's lower bound (the previous bucket's ``le``; 0 for the lowest bucket when its bound is
    positive) and its upper bound. In the ``+Inf`` bucket the highest finite bound is returned. NaN without
    a ``+Inf`` bucket, with fewer than two buckets or with no observations; -Inf for q < 0, +Inf for q > 1.
    """
    return _quantile(q, buckets)[0]


@dataclass(frozen=True)
class LatencyResult:
    """The latency gate's verdict: the quantile observed during the rollout against the baseline's."""

    verdict: GateVerdict
    quantile: float  # 0.95
    observed: float  # seconds, NaN without observations
    baseline: float  # seconds, the same quantile of production before the rollout
    limit: float  # seconds: max(baseline * max_ratio, baseline + tolerance)
    max_ratio: float
    observations: float
    baseline_observations: float
    min_observations: float
    reason: str
    gate: str = "latency"

    @property
    def ok(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_gate(observed: Buckets, baseline: Buckets, *, quantile: float = 0.95, max_ratio: float = 1.2,
                 tolerance: float = 0.0, min_observations: float = 100) -> LatencyResult:
    """Judge a latency quantile against the baseline: both arguments are histograms (``le`` -> cumulative
    count, e.g. ``sum by (le) (increase(..._bucket[w]))``), ``baseline`` measured on production before the
    rollout.

    The limit is ``max(baseline * max_ratio, baseline + tolerance)``: ``tolerance`` (seconds) keeps a
    regression of a fraction of a bucket on a millisecond baseline from failing. FAIL when the observed
    quantile is above the limit (also when it lies in the +Inf bucket and the highest finite bound is already
    above the limit); PASS when it is at or below; INCONCLUSIVE with fewer than ``min_observations`` on either
    side, or when the baseline's or the observed quantile lies in the +Inf bucket and nothing can be compared.
    """
    if max_ratio < 1:
        raise ValueError(f"max_ratio must be at least 1, not {max_ratio}")
    name = f"p{quantile * 100:g}"
    value, overflow, n = _quantile(quantile, observed)
    base, base_overflow, base_n = _quantile(quantile, baseline)
    limit = max(base * max_ratio, base + tolerance) if not math.isnan(base) else math.nan
    head = f"{name} {seconds(value)} over {count(n)} requests, baseline {seconds(base)} over {count(base_n)}"
    verdict: GateVerdict
    if n < min_observations or base_n < min_observations or math.isnan(value) or math.isnan(base):
        verdict = "inconclusive"
        why = f"too few observations to compare (at least {count(min_observations)} on each side)"
    elif base_overflow:
        verdict, why = "inconclusive", f"the baseline's {name} is above the highest bucket ({seconds(base)})"
    elif overflow and value <= limit:
        verdict = "inconclusive"
        why = f"{name} is above the highest bucket ({seconds(value)}), which is within the limit {seconds(limit)}"
    elif value > limit:
        above = "above the highest bucket, " if overflow else ""
        verdict, why = "fail", f"{above}above the limit {seconds(limit)} ({max_ratio:g}x the baseline)"
    else:
        verdict, why = "pass", f"within the limit {seconds(limit)} ({max_ratio:g}x the baseline)"
    return LatencyResult(verdict, quantile, value, base, limit, max_ratio, n, base_n, min_observations,
                         f"{head}: {why}")


# --------------------------------------------------------------------------- presence
@dataclass(frozen=True)
class PresenceResult:
    """Whether a metric was still exported and increasing while requests were served."""

    verdict: GateVerdict
    metric: str
    increase: float | None  # None: the metric is not exported (no series)
    requests: float
    min_requests: float
    reason: str
    gate: str = "presence"

    @property
    def ok(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def presence_gate(metric: str, increase: float | None, requests: float, *,
                  min_requests: float = 1) -> PresenceResult:
    """``increase``: how much ``metric`` rose over the window (None when no series of it exists);
    ``requests``: the requests served successfully over the same window, each of which should have moved it.

    INCONCLUSIVE below ``min_requests`` (nothing was served that would move it); FAIL when the metric is
    missing or did not increase; PASS when it rose.
    """
    served = _plural(requests, "request")
    verdict: GateVerdict
    if requests < min_requests:
        verdict = "inconclusive"
        reason = f"only {served} served (at least {count(min_requests)} needed): cannot tell whether {metric} moves"
    elif increase is None:
        verdict, reason = "fail", f"{metric} is not exported while {served} were served"
    elif increase <= 0:
        verdict, reason = "fail", f"{metric} did not increase while {served} were served"
    else:
        verdict, reason = "pass", f"{metric} rose by {count(increase)} while {served} were served"
    return PresenceResult(verdict, metric, increase, requests, min_requests, reason)
