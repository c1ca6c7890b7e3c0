"""The error-rate gate over a window that moves, so a burst is seen (k6 #2379: a threshold over the whole
run hides one). Pure functions over cumulative counters; no I/O.

A 2-minute burst of errors inside a 30-minute run fails a 2-minute window although the whole run's rate is
under 5%. Work is linear in samples plus windows: two pointers walk the samples as the windows move.

The counters come from Prometheus as cumulative series (``zai_proxy_requests_total``, one per pod and
status). :func:`combine_counters` sums such series into one reset-corrected cumulative count, and
:func:`align` joins the requests and errors counts into :class:`Counts` samples for
:func:`moving_window_error_gate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, NamedTuple

from runbook.canary.gates import ErrorRateResult, GateVerdict, count, error_rate_gate, wilson_bounds

__all__ = ["Counts", "WindowResult", "align", "combine_counters", "counts_from_series", "moving_window_error_gate"]

_EPS = 1e-9


class Counts(NamedTuple):
    """Cumulative counts at time ``t`` (seconds): requests served and, of them, errors."""

    t: float
    requests: float
    errors: float


def combine_counters(series: Iterable[Sequence[tuple[float, float]]], *,
                     start: float | None = None) -> list[tuple[float, float]]:
    """Sum cumulative counter series (each ``[(t, value), ...]`` sorted by t) into one cumulative count from
    ``start`` (default: the earliest sample), at every timestamp any series has.

    Per series, as Prometheus's ``increase`` does: a decrease is a counter reset (a restarted pod), counted as
    a restart from 0. Unlike ``increase``, a series first seen after ``start`` is counted from 0, not from
    its first value: a new pod's counter, or the ``status="500"`` series the first error creates, starts at
    0 and its first scrape already holds what it counted. A series that stops (a pod gone) keeps its count.
    """
    events: list[tuple[float, float]] = []
    runs = [list(s) for s in series]
    t0 = start if start is not None else min((s[0][0] for s in runs if s), default=0.0)
    for samples in runs:
        previous = None
        for t, value in samples:
            if t <= t0 + _EPS:  # at or before the start: what it counted so far is not the run's
                delta = 0.0
            elif previous is None:
                delta = value  # first seen after the start: counted from 0
            else:
                delta = value - previous if value >= previous else value  # a reset: restarted from 0
            previous = value
            events.append((max(t, t0), delta))
    events.sort(key=lambda e: e[0])
    out: list[tuple[float, float]] = []
    total = 0.0
    for t, delta in events:
        total += delta
        if out and abs(out[-1][0] - t) < _EPS:
            out[-1] = (out[-1][0], total)
        else:
            out.append((t, total))
    return out


def align(requests: Sequence[tuple[float, float]], errors: Sequence[tuple[float, float]]) -> list[Counts]:
    """Join two cumulative series on the union of their timestamps, each read as a step function (its last
    value at or before t; 0 before its first sample). No errors series at all (no 5xx series exists) is 0."""
    times = sorted({t for t, _ in requests} | {t for t, _ in errors})
    out: list[Counts] = []
    i = j = 0
    req = err = 0.0
    for t in times:
        while i < len(requests) and requests[i][0] <= t + _EPS:
            req = requests[i][1]
            i += 1
        while j < len(errors) and errors[j][0] <= t + _EPS:
            err = errors[j][1]
            j += 1
        out.append(Counts(t, req, err))
    return out


def counts_from_series(requests: Iterable[Sequence[tuple[float, float]]],
                       errors: Iterable[Sequence[tuple[float, float]]], *, start: float) -> list[Counts]:
    """The moving window's samples from a range query's series: every request counter series (all statuses)
    and the error series (5xx), both combined from the same ``start`` (the range query's start), so an error
    series first seen later is counted from 0 (:func:`combine_counters`)."""
    return align(combine_counters(requests, start=start), combine_counters(errors, start=start))


@dataclass(frozen=True)
class WindowResult:
    """The moving window's verdict: FAIL when any window failed, else the whole run's verdict (a window with
    too few requests to decide neither passes nor fails the run)."""

    verdict: GateVerdict
    window: float  # seconds
    step: float  # seconds
    windows: int
    failed: int
    inconclusive: int
    worst: ErrorRateResult  # the window with the highest lower bound
    worst_start: float  # its start, seconds from the first sample
    worst_end: float
    whole: ErrorRateResult  # the whole run
    reason: str
    gate: str = "error rate, moving window"

    @property
    def ok(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clock(offset: float) -> str:
    m, s = divmod(round(offset), 60)
    return f"+{m}m{s:02d}s"


def _corrected(samples: Iterable[Counts | tuple[float, float, float]]) -> list[Counts]:
    """Sorted samples with counter resets corrected (a decrease restarts from 0)."""
    out: list[Counts] = []
    prev: Counts | None = None
    req_off = err_off = 0.0
    for raw in samples:
        s = Counts(*raw)
        if prev is not None:
            if s.t <= prev.t:
                raise ValueError(f"samples must have increasing timestamps: {s.t} after {prev.t}")
            if s.requests < prev.requests:
                req_off += prev.requests
            if s.errors < prev.errors:
                err_off += prev.errors
        prev = s
        fixed = Counts(s.t, s.requests + req_off, s.errors + err_off)
        if fixed.errors > fixed.requests + _EPS:
            raise ValueError(f"more errors than requests at t={s.t}: {s.errors} > {s.requests}")
        out.append(fixed)
    return out


def moving_window_error_gate(samples: Iterable[Counts | tuple[float, float, float]], *, window: float,
                             step: float, threshold: float = 0.05, confidence: float = 0.95,
                             min_requests: float = 0) -> WindowResult:
    """The error-rate gate (:func:`~runbook.canary.gates.error_rate_gate`) over every window of ``window``
    seconds, starting at the first sample and moving by ``step``, plus one ending at the last sample; the
    counts at a window's edge are the cumulative counts of the last sample at or before it.

    FAIL when any window fails (its Wilson lower bound above ``threshold``): the reason names the worst
    window, where it lies in the run, and the whole run's figures. Otherwise the whole run's gate decides
    (PASS or INCONCLUSIVE). A run shorter than ``window`` is one window: the whole run.

    Many windows are many tests: when the true rate sits right at the threshold, some window may fail by
    chance; raise ``confidence`` to make that rarer. Samples: ``(t, requests, errors)`` cumulative, sorted by
    t; a decrease is a counter reset (:func:`combine_counters` first when several pods report).
    ``min_requests``: the whole run passes only with at least that many requests (else INCONCLUSIVE).
    """
    if window <= 0 or step <= 0:
        raise ValueError(f"window and step must be positive, got window={window} step={step}")
    data = _corrected(samples)
    if not data:
        empty = error_rate_gate(0, 0, threshold=threshold, confidence=confidence)
        return WindowResult("inconclusive", window, step, 0, 0, 0, empty, 0.0, 0.0, empty,
                            f"no samples: {empty.reason}")
    t0, t_end = data[0].t, data[-1].t
    whole = error_rate_gate(data[-1].errors - data[0].errors, data[-1].requests - data[0].requests,
                            threshold=threshold, confidence=confidence, min_requests=min_requests)
    span = min(window, t_end - t0)
    starts: list[float] = []
    k = 0
    while t0 + k * step + span <= t_end + _EPS:
        starts.append(t0 + k * step)
        k += 1
    if not starts or starts[-1] + span < t_end - _EPS:
        starts.append(t_end - span)  # the tail the steps did not reach
    z = NormalDist().inv_cdf(confidence)
    lo = hi = 0  # data[lo] / data[hi]: the last sample at or before a window's start / end
    worst: tuple[tuple[float, float], float, float, float, float] | None = None  # bounds, start, end, counts
    failed = inconclusive = 0
    for start in starts:  # each window as error_rate_gate judges it; its result is built for the worst only
        end = start + span
        while lo + 1 < len(data) and data[lo + 1].t <= start + _EPS:
            lo += 1
        while hi + 1 < len(data) and data[hi + 1].t <= end + _EPS:
            hi += 1
        requests = data[hi].requests - data[lo].requests
        errors = min(requests, data[hi].errors - data[lo].errors)
        bounds = wilson_bounds(errors, requests, z)
        if requests == 0 or bounds[1] >= threshold:
            if bounds[0] > threshold and requests > 0:
                failed += 1
            else:
                inconclusive += 1
        if worst is None or bounds > worst[0]:
            worst = (bounds, start - t0, end - t0, errors, requests)
    assert worst is not None
    _, w_start, w_end, w_errors, w_requests = worst
    w = error_rate_gate(w_errors, w_requests, threshold=threshold, confidence=confidence)
    size = f"{span:g} s" if span < 60 or span % 60 else f"{span / 60:g} min"
    tally = f"{len(starts)} window{'s' if len(starts) != 1 else ''} of {size}"
    rate = "n/a" if whole.rate is None else f"{whole.rate * 100:.2g}%"
    run = f"whole run: {count(whole.errors)} errors in {count(whole.requests)} requests ({rate})"
    verdict: GateVerdict
    if failed:
        verdict = "fail"
        reason = (f"a burst from {_clock(w_start)} to {_clock(w_end)}: {w.reason}; {failed} of {tally} failed; "
                  f"{run}")
    else:
        verdict = whole.verdict
        reason = (f"no window above {whole.threshold * 100:g}% at {whole.confidence * 100:g}% ({tally}, "
                  f"{inconclusive} too small to decide); {run}: {whole.reason.split(': ', 1)[1]}")
    if t_end - t0 < window - _EPS:
        reason += " (the run is shorter than the window: one window)"
    return WindowResult(verdict, window, step, len(starts), failed, inconclusive, w, w_start, w_end, whole, reason)
