"""The PromQL the canary gates need, for the proxy's metrics (seed 004), and a parser of Prometheus's HTTP
API answers into plain values.

The metrics (as the proxy exports them): ``zai_proxy_requests_total{variant, status}`` (status: the HTTP
code), ``zai_proxy_request_duration_seconds_bucket{variant, le}`` and ``zai_proxy_tokens_total{variant}``.
Every query builder takes the variant (``production`` or ``canary``), a window (seconds, rendered as a
PromQL duration) and optional extra label matchers (``{"namespace": "mcp"}``).

The gates take counts, not ratios: :func:`requests_by_status` (read by :func:`error_counts`) feeds
:func:`~runbook.canary.gates.error_rate_gate` (or :func:`requests_increase` and :func:`errors_increase`);
:func:`latency_buckets` gives the histogram for :func:`~runbook.canary.gates.latency_gate` (``sum by (le)
(increase(...))``); :func:`tokens_increase` feeds :func:`~runbook.canary.gates.presence_gate`. The raw
counters (:func:`requests_counter`, :func:`errors_counter`) read over ``/api/v1/query_range`` feed the moving
window (:func:`runbook.canary.window.counts_from_series`). :func:`error_ratio` and :func:`latency_quantile`
are the seed's own queries.

The parser follows the documented API (prometheus docs/querying/api.md): an envelope ``{"status":
"success"|"error", "data": ..., "errorType", "error", "warnings", "infos"}`` and, in ``data``,
``{"resultType": "vector"|"matrix"|"scalar"|"string", "result": ...}``; sample values are strings (``"NaN"``,
``"+Inf"`` included), timestamps Unix seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from runbook.errors import AdapterError

__all__ = ["DURATION", "REQUESTS", "TOKENS", "ApiCall", "PrometheusError", "QueryResult", "Sample", "Series",
           "buckets_from_vector", "duration", "error_counts", "error_ratio", "errors_counter", "errors_increase",
           "instant", "latency_buckets", "latency_quantile", "parse_response", "range_query", "request_rate",
           "requests_by_status", "requests_counter", "requests_increase", "scalar_value", "selector",
           "tokens_increase", "tokens_series", "tokens_series_selector"]

REQUESTS = "zai_proxy_requests_total"
DURATION = "zai_proxy_request_duration_seconds"
TOKENS = "zai_proxy_tokens_total"
ERROR_STATUS = "5.."  # what the seed counts as an error: status=~"5.." (a 429 is the rate limit, not an error)
QUERY_PATH = "/api/v1/query"
QUERY_RANGE_PATH = "/api/v1/query_range"


# --------------------------------------------------------------------------- query builders
def duration(window: float) -> str:
    """A PromQL duration for ``window`` seconds: ``300`` -> ``5m``, ``90`` -> ``90s``, ``7200`` -> ``2h``."""
    if not window > 0 or math.isinf(window):
        raise ValueError(f"a window must be a positive number of seconds, not {window}")
    ms = round(window * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _quote(value: str) -> str:
    return json.dumps(value)  # a PromQL double-quoted string takes the same escapes


def selector(metric: str, variant: str, labels: Mapping[str, str] | None = None, *,
             status: str | None = None) -> str:
    """``metric{variant="canary",...,status=~"5.."}``: the variant, the extra matchers, a status regex."""
    matchers = [f"variant={_quote(variant)}"]
    matchers += [f"{name}={_quote(value)}" for name, value in sorted((labels or {}).items())]
    if status is not None:
        matchers.append(f"status=~{_quote(status)}")
    return f"{metric}{{{','.join(matchers)}}}"


def requests_increase(variant: str, window: float, labels: Mapping[str, str] | None = None) -> str:
    """Requests served over the window (every status)."""
    return f"sum(increase({selector(REQUESTS, variant, labels)}[{duration(window)}]))"


def requests_by_status(variant: str, window: float, labels: Mapping[str, str] | None = None) -> str:
    """Requests over the window by status, in one query: :func:`error_counts` takes errors and requests from
    the same extrapolation, so errors never exceed requests (two separate ``increase`` queries may)."""
    return f"sum by (status) (increase({selector(REQUESTS, variant, labels)}[{duration(window)}]))"


def errors_increase(variant: str, window: float, labels: Mapping[str, str] | None = None) -> str:
    """5xx answers over the window; an empty result (no 5xx series exists) is 0 errors."""
    return f"sum(increase({selector(REQUESTS, variant, labels, status=ERROR_STATUS)}[{duration(window)}]))"


def request_rate(variant: str, window: float, labels: Mapping[str, str] | None = None) -> str:
    """The seed's query 1: requests a second, by variant."""
    return f"sum by (variant) (rate({selector(REQUESTS, variant, labels)}[{duration(window)}]))"


def error_ratio(variant: str, window: float, labels: Mapping[str, str] | None = None) -> str:
    """The seed's query 2 (summed on both sides, so several pods and statuses give one ratio). For display:
    a ratio hides how many requests it rests on; the gate uses the counts."""
    w = duration(window)
    errors = f"sum by (variant) (rate({selector(REQUESTS, variant, labels, status=ERROR_STATUS)}[{w}]))"
    return f"{errors} / sum by (variant) (rate({selector(REQUESTS, variant, labels)}[{w}]))"


def latency_buckets(variant: str, window: float, labels: Mapping[str, str] | None = None) -> str:
    """The request-duration histogram over the window, one sample per ``le``: the gate's input."""
    return f"sum by (le) (increase({selector(DURATION + '_bucket', variant, labels)}[{duration(window)}]))"


def latency_quantile(q: float, variant: str, window: float, labels: Mapping[str, str] | None = None) -> str:
    """The seed's query 3: ``histogram_quantile`` computed by Prometheus (to cross-check the gate's own)."""
    return (f"histogram_quantile({q:g}, sum by (le) "
            f"(rate({selector(DURATION + '_bucket', variant, labels)}[{duration(window)}])))")


def tokens_increase(variant: str, window: float, labels: Mapping[str, str] | None = None) -> str:
    """Tokens counted over the window; an empty result means the metric is not exported."""
    return f"sum(increase({selector(TOKENS, variant, labels)}[{duration(window)}]))"


def tokens_series(variant: str, labels: Mapping[str, str] | None = None) -> str:
    """How many token series exist now (empty: none is exported)."""
    return f"count({selector(TOKENS, variant, labels)})"


def tokens_series_selector(variant: str, labels: Mapping[str, str] | None = None) -> str:
    """The raw token counters (one series per pod and type), for a range query."""
    return selector(TOKENS, variant, labels)


def requests_counter(variant: str, labels: Mapping[str, str] | None = None) -> str:
    """The raw request counters (one series per pod and status), for a range query and the moving window."""
    return selector(REQUESTS, variant, labels)


def errors_counter(variant: str, labels: Mapping[str, str] | None = None) -> str:
    """The raw 5xx counters (one series per pod and status), for a range query and the moving window."""
    return selector(REQUESTS, variant, labels, status=ERROR_STATUS)


@dataclass(frozen=True)
class ApiCall:
    """One Prometheus API call: what a plan prints and an adapter sends (``GET path?params``)."""

    path: str
    params: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return f"GET {self.path}?{urlencode(self.params)}"


def instant(query: str, *, at: float | None = None) -> ApiCall:
    """``/api/v1/query`` for ``query`` at ``at`` (Unix seconds; the server's now when None)."""
    params = [("query", query)] + ([("time", f"{at:.3f}")] if at is not None else [])
    return ApiCall(QUERY_PATH, tuple(params))


def range_query(query: str, *, start: float, end: float, step: float) -> ApiCall:
    """``/api/v1/query_range`` for ``query`` from ``start`` to ``end`` every ``step`` seconds."""
    if end < start or step <= 0:
        raise ValueError(f"need start <= end and step > 0, got start={start} end={end} step={step}")
    return ApiCall(QUERY_RANGE_PATH, (("query", query), ("start", f"{start:.3f}"), ("end", f"{end:.3f}"),
                                      ("step", f"{step:g}")))


# --------------------------------------------------------------------------- the API's answers
class PrometheusError(AdapterError):
    """Prometheus answered with an error, or with something that is not its API's format."""

    def __init__(self, message: str, *, error_type: str = "", status_code: int | None = None, **ctx: Any) -> None:
        self.error_type = error_type
        self.status_code = status_code
        super().__init__(message, **ctx)


@dataclass(frozen=True)
class Sample:
    """One sample of an instant vector."""

    labels: Mapping[str, str]
    t: float
    value: float


@dataclass(frozen=True)
class Series:
    """One series of a range vector (matrix): its samples in time order."""

    labels: Mapping[str, str]
    values: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class QueryResult:
    """A parsed answer: ``vector`` for an instant vector, ``matrix`` for a range vector, ``scalar`` for a
    scalar or string (``(t, value)``), with the warnings and infos Prometheus attached."""

    result_type: str
    vector: tuple[Sample, ...] = ()
    matrix: tuple[Series, ...] = ()
    scalar: tuple[float, float | str] | None = None
    warnings: tuple[str, ...] = field(default=())

    def value(self) -> float | None:
        """The single value of a one-sample vector or a scalar; None for an empty vector (no series: no data,
        which a gate must not read as 0 unless it knows better)."""
        if self.result_type == "scalar" and self.scalar is not None:
            return float(self.scalar[1])
        if self.result_type != "vector":
            raise PrometheusError(f"expected a vector or scalar, got a {self.result_type}")
        if len(self.vector) > 1:
            raise PrometheusError(f"expected one sample, got {len(self.vector)}: aggregate the query (sum)")
        return self.vector[0].value if self.vector else None


def _float(text: Any, where: str) -> float:
    if isinstance(text, str) and text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    try:
        return float(text)
    except (TypeError, ValueError) as exc:
        raise PrometheusError(f"not a sample value in {where}: {text!r}") from exc


def _pair(raw: Any, where: str) -> tuple[float, float]:
    if not (isinstance(raw, list) and len(raw) == 2):
        raise PrometheusError(f"not a [time, value] pair in {where}: {raw!r}")
    return _float(raw[0], where), _float(raw[1], where)


def _labels(item: Mapping[str, Any], where: str) -> dict[str, str]:
    metric = item.get("metric")
    if not isinstance(metric, dict):
        raise PrometheusError(f"a {where} item has no metric labels: {item!r}")
    if "histogram" in item or "histograms" in item:
        raise PrometheusError(f"{where}: native histograms are not supported (query the classic _bucket series)")
    return {str(k): str(v) for k, v in metric.items()}


def parse_response(body: bytes | str | Mapping[str, Any], *, status_code: int | None = None) -> QueryResult:
    """Parse an ``/api/v1/query`` or ``/api/v1/query_range`` answer; raise :class:`PrometheusError` for an
    error answer (with its ``errorType``) or anything not in the API's format."""
    where = f"HTTP {status_code}" if status_code is not None else "the answer"
    if isinstance(body, bytes | str):
        try:
            doc = json.loads(body)
        except ValueError as exc:
            text = body if isinstance(body, str) else body.decode(errors="replace")
            raise PrometheusError(f"not a Prometheus API answer ({where}): {text[:200]!r}",
                                  status_code=status_code) from exc
    else:
        doc = body
    if not isinstance(doc, Mapping) or doc.get("status") not in ("success", "error"):
        raise PrometheusError(f"not a Prometheus API answer ({where}): no status", status_code=status_code)
    if doc["status"] == "error":
        kind = str(doc.get("errorType", ""))
        raise PrometheusError(f"prometheus: {kind or 'error'}: {doc.get('error', '')}", error_type=kind,
                              status_code=status_code)
    warnings = tuple(str(w) for w in [*(doc.get("warnings") or []), *(doc.get("infos") or [])])
    data = doc.get("data")
    if not isinstance(data, Mapping) or "resultType" not in data or "result" not in data:
        raise PrometheusError(f"a success answer without data.resultType/result ({where})", status_code=status_code)
    kind, result = data["resultType"], data["result"]
    if kind == "vector":
        if not isinstance(result, list):
            raise PrometheusError("a vector result is not a list")
        samples = []
        for item in result:
            labels = _labels(item, "vector")
            t, v = _pair(item.get("value"), "vector")
            samples.append(Sample(labels, t, v))
        return QueryResult("vector", vector=tuple(samples), warnings=warnings)
    if kind == "matrix":
        if not isinstance(result, list):
            raise PrometheusError("a matrix result is not a list")
        series = []
        for item in result:
            labels = _labels(item, "matrix")
            values = item.get("values")
            if not isinstance(values, list):
                raise PrometheusError(f"a matrix series has no values: {item!r}")
            series.append(Series(labels, tuple(_pair(p, "matrix") for p in values)))
        return QueryResult("matrix", matrix=tuple(series), warnings=warnings)
    if kind == "scalar":
        return QueryResult("scalar", scalar=_pair(result, "scalar"), warnings=warnings)
    if kind == "string":
        if not (isinstance(result, list) and len(result) == 2):
            raise PrometheusError(f"not a [time, string] pair: {result!r}")
        return QueryResult("string", scalar=(_float(result[0], "string"), str(result[1])), warnings=warnings)
    raise PrometheusError(f"unknown resultType {kind!r}")


def scalar_value(body: bytes | str | Mapping[str, Any], *, default: float | None = None) -> float | None:
    """The one value of a ``sum(...)``-style instant query; ``default`` when the vector is empty."""
    value = parse_response(body).value()
    return default if value is None else value


def error_counts(samples: Sequence[Sample], *, errors: str = ERROR_STATUS) -> tuple[float, float]:
    """(errors, requests) from a :func:`requests_by_status` vector: the samples whose ``status`` matches the
    ``errors`` pattern (``5..``: a 5xx), and all of them. An empty vector is (0, 0): no requests."""
    pattern = re.compile(errors)
    total = bad = 0.0
    for s in samples:
        if "status" not in s.labels:
            raise PrometheusError(f"a request count without a status label: {dict(s.labels)}")
        total += s.value
        if pattern.fullmatch(s.labels["status"]):
            bad += s.value
    return bad, total


def buckets_from_vector(samples: Sequence[Sample]) -> dict[float, float]:
    """A histogram (``le`` -> cumulative count) from a ``sum by (le) (...)`` vector, for the latency gate."""
    out: dict[float, float] = {}
    for s in samples:
        if "le" not in s.labels:
            raise PrometheusError(f"a bucket sample without an le label: {dict(s.labels)}")
        out[_float(s.labels["le"], "le")] = s.value
    return out
