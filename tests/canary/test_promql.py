"""The canary's PromQL (runbook/canary/promql.py): the queries for the proxy's metrics, and the parser of
Prometheus's HTTP API answers, on answers shaped as docs/querying/api.md documents them."""

from __future__ import annotations

import json
import math

import pytest

from runbook.canary import promql
from runbook.canary.gates import histogram_quantile
from runbook.canary.promql import PrometheusError, parse_response
from runbook.canary.window import align, combine_counters, counts_from_series, moving_window_error_gate


# --------------------------------------------------------------------------- queries
def test_the_gate_queries_for_the_seed_metrics() -> None:
    assert promql.requests_increase("canary", 300) == 'sum(increase(zai_proxy_requests_total{variant="canary"}[5m]))'
    assert promql.errors_increase("production", 120) == (
        'sum(increase(zai_proxy_requests_total{variant="production",status=~"5.."}[2m]))')
    assert promql.latency_buckets("canary", 300) == (
        'sum by (le) (increase(zai_proxy_request_duration_seconds_bucket{variant="canary"}[5m]))')
    assert promql.tokens_increase("canary", 60) == 'sum(increase(zai_proxy_tokens_total{variant="canary"}[1m]))'
    assert promql.tokens_series("canary") == 'count(zai_proxy_tokens_total{variant="canary"})'
    assert promql.requests_counter("canary") == 'zai_proxy_requests_total{variant="canary"}'
    assert promql.errors_counter("canary") == 'zai_proxy_requests_total{variant="canary",status=~"5.."}'


def test_the_seed_queries() -> None:
    # the seed's queries 1 to 3, for the production variant
    assert promql.request_rate("production", 60) == (
        'sum by (variant) (rate(zai_proxy_requests_total{variant="production"}[1m]))')
    assert promql.error_ratio("production", 300) == (
        'sum by (variant) (rate(zai_proxy_requests_total{variant="production",status=~"5.."}[5m])) / '
        'sum by (variant) (rate(zai_proxy_requests_total{variant="production"}[5m]))')
    assert promql.latency_quantile(0.95, "production", 300) == (
        'histogram_quantile(0.95, sum by (le) '
        '(rate(zai_proxy_request_duration_seconds_bucket{variant="production"}[5m])))')


def test_extra_matchers_are_sorted_and_quoted() -> None:
    q = promql.requests_increase("canary", 30, {"namespace": "mcp", "job": 'zai "proxy"'})
    assert q == r'sum(increase(zai_proxy_requests_total{variant="canary",job="zai \"proxy\"",namespace="mcp"}[30s]))'


@pytest.mark.parametrize(("seconds", "text"), [(300, "5m"), (90, "90s"), (7200, "2h"), (15, "15s"), (1.5, "1500ms"),
                                               (86400, "24h")])
def test_durations(seconds: float, text: str) -> None:
    assert promql.duration(seconds) == text


@pytest.mark.parametrize("bad", [0, -5, math.inf, math.nan])
def test_a_window_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError):
        promql.duration(bad)


def test_api_calls_are_printable() -> None:
    call = promql.range_query(promql.requests_counter("canary"), start=1000, end=1900, step=15)
    assert call.path == "/api/v1/query_range"
    assert call.describe() == ("GET /api/v1/query_range?query=zai_proxy_requests_total%7Bvariant%3D%22canary%22%7D"
                               "&start=1000.000&end=1900.000&step=15")
    assert promql.instant("up").describe() == "GET /api/v1/query?query=up"
    assert dict(promql.instant("up", at=1.5).params)["time"] == "1.500"
    with pytest.raises(ValueError):
        promql.range_query("up", start=10, end=5, step=15)


# --------------------------------------------------------------------------- answers
VECTOR = {  # the documented example of /api/v1/query
    "status": "success",
    "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "up", "job": "prometheus", "instance": "localhost:9090"},
         "value": [1435781451.781, "1"]},
        {"metric": {"__name__": "up", "job": "node", "instance": "localhost:9100"},
         "value": [1435781451.781, "0"]},
    ]},
}

MATRIX = {  # /api/v1/query_range of the raw request counters: one series per pod and status
    "status": "success",
    "data": {"resultType": "matrix", "result": [
        {"metric": {"__name__": "zai_proxy_requests_total", "variant": "canary", "status": "200", "pod": "a"},
         "values": [[1700000000, "100"], [1700000015, "250"], [1700000030, "400"]]},
        {"metric": {"__name__": "zai_proxy_requests_total", "variant": "canary", "status": "500", "pod": "a"},
         "values": [[1700000015, "2"], [1700000030, "90"]]},
    ]},
    "warnings": ["something odd"],
    "infos": ["PromQL info: metric might not be a counter"],
}


def test_a_vector_answer() -> None:
    result = parse_response(json.dumps(VECTOR).encode())
    assert result.result_type == "vector" and len(result.vector) == 2
    first = result.vector[0]
    assert first.labels == {"__name__": "up", "job": "prometheus", "instance": "localhost:9090"}
    assert (first.t, first.value) == (1435781451.781, 1.0) and result.vector[1].value == 0.0
    with pytest.raises(PrometheusError, match="expected one sample"):
        result.value()  # two samples are not one figure


def test_a_matrix_answer_feeds_the_moving_window() -> None:
    result = parse_response(json.dumps(MATRIX))
    assert result.result_type == "matrix" and result.warnings == ("something odd",
                                                                  "PromQL info: metric might not be a counter")
    ok, errors = result.matrix
    assert ok.labels["status"] == "200" and ok.values[1] == (1700000015.0, 250.0)
    samples = counts_from_series([s.values for s in result.matrix], [errors.values], start=1700000000)
    assert samples == align(combine_counters([s.values for s in result.matrix]),
                            combine_counters([errors.values], start=1700000000))
    gate = moving_window_error_gate(samples, window=15, step=15)
    assert gate.whole.requests == 390 and gate.whole.errors == 90
    assert gate.verdict == "fail" and (gate.worst.errors, gate.worst.requests) == (88, 238)


def test_scalar_string_and_special_values() -> None:
    scalar = parse_response({"status": "success", "data": {"resultType": "scalar", "result": [1.5, "NaN"]}})
    assert scalar.scalar is not None and math.isnan(scalar.scalar[1])
    text = parse_response({"status": "success", "data": {"resultType": "string", "result": [2, "hello"]}})
    assert text.scalar == (2.0, "hello")
    inf = parse_response({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1, "+Inf"]}]}})
    assert inf.value() == math.inf


def test_an_empty_vector_is_no_data_not_zero() -> None:
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    assert parse_response(empty).value() is None
    assert promql.scalar_value(empty) is None and promql.scalar_value(empty, default=0.0) == 0.0
    one = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "6000"]}]}}
    assert promql.scalar_value(one) == 6000.0


def test_an_error_answer_raises_with_its_type() -> None:
    body = {"status": "error", "errorType": "bad_data",
            "error": 'invalid parameter "query": 1:9: parse error: unexpected end of input'}
    with pytest.raises(PrometheusError) as caught:
        parse_response(json.dumps(body), status_code=400)
    assert caught.value.error_type == "bad_data" and caught.value.status_code == 400
    assert "prometheus: bad_data: invalid parameter" in str(caught.value)
    timeout = {"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"}
    with pytest.raises(PrometheusError, match="timeout"):
        parse_response(timeout, status_code=503)


@pytest.mark.parametrize("body", [
    b"<html>502 Bad Gateway</html>",
    b'{"data": {}}',
    b'{"status": "success"}',
    b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1]}]}}',
    b'{"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "2"]}]}}',
    b'{"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}}]}}',
    b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]}}',
    b'{"status": "success", "data": {"resultType": "table", "result": []}}',
    b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "histogram": [1, {}]}]}}',
])
def test_anything_else_is_refused(body: bytes) -> None:
    with pytest.raises(PrometheusError):
        parse_response(body)


def test_bucket_answer_to_histogram_quantile() -> None:
    answer = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"le": le}, "value": [1, count]}
        for le, count in [("0.1", "60"), ("0.25", "90"), ("0.5", "98"), ("1", "100"), ("+Inf", "100")]]}}
    buckets = promql.buckets_from_vector(parse_response(answer).vector)
    assert buckets[math.inf] == 100 and histogram_quantile(0.95, buckets) == pytest.approx(0.40625)
    with pytest.raises(PrometheusError, match="le"):
        promql.buckets_from_vector(parse_response(VECTOR).vector)


def test_errors_and_requests_from_one_query_by_status() -> None:
    assert promql.requests_by_status("canary", 300) == (
        'sum by (status) (increase(zai_proxy_requests_total{variant="canary"}[5m]))')
    answer = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"status": code}, "value": [1, n]} for code, n in [("200", "5900"), ("429", "40"),
                                                                     ("500", "45"), ("502", "15")]]}}
    assert promql.error_counts(parse_response(answer).vector) == (60.0, 6000.0)  # a 429 is not an error
    assert promql.error_counts(()) == (0.0, 0.0)
    with pytest.raises(PrometheusError, match="status"):
        promql.error_counts(parse_response(VECTOR).vector)
