"""runbook/testbed/prometheus.py without a server: the generated configuration, and the client's answers and
errors over a mock transport (what a real server answers is in test_prometheus_real.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from runbook.canary.promql import PrometheusError, instant
from runbook.errors import TestbedError
from runbook.testbed.prometheus import Prometheus, PrometheusClient, ScrapeJob, render_config


def test_the_config_scrapes_each_job_with_its_labels_and_a_timeout_within_the_interval() -> None:
    config = json.loads(render_config([ScrapeJob("prod", ("127.0.0.1:1", "127.0.0.1:2"), {"deployment": "p"}),
                                       ScrapeJob("canary", ("127.0.0.1:3",))], scrape_interval=1.0))
    assert config["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert [(j["job_name"], j["static_configs"]) for j in config["scrape_configs"]] == [
        ("prod", [{"targets": ["127.0.0.1:1", "127.0.0.1:2"], "labels": {"deployment": "p"}}]),
        ("canary", [{"targets": ["127.0.0.1:3"], "labels": {}}])]
    assert json.loads(render_config([ScrapeJob("a", ("h:1",))], scrape_interval=30))["global"]["scrape_timeout"] \
        == "10s"  # Prometheus's default timeout, never longer than the interval
    with pytest.raises(ValueError, match="unique"):
        render_config([ScrapeJob("a", ("h:1",)), ScrapeJob("a", ("h:2",))])
    with pytest.raises(ValueError, match="at least one"):
        render_config([])


def _client(handler: httpx.MockTransport) -> PrometheusClient:
    return PrometheusClient("http://prom.example:9090/", transport=handler)


def test_a_query_is_sent_as_the_api_call_and_parsed() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"status": "500"}, "value": [1700000000.5, "40"]}]}})

    with _client(httpx.MockTransport(answer)) as api:
        result = api.query('sum(x{variant="canary"})', at=1700000000.5)
    assert result.value() == 40.0
    assert str(seen[0].url) == "http://prom.example:9090" + instant('sum(x{variant="canary"})', at=1700000000.5) \
        .describe().removeprefix("GET ")


def test_an_error_names_the_url_the_call_and_prometheus_s_text() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"status": "error", "errorType": "bad_data",
                                         "error": "1:5: parse error: unclosed left parenthesis"})

    with _client(httpx.MockTransport(answer)) as api, pytest.raises(PrometheusError) as caught:
        api.query("sum(")
    text = str(caught.value)
    assert "http://prom.example:9090" in text and "GET /api/v1/query?query=sum%28" in text
    assert "unclosed left parenthesis" in text and caught.value.error_type == "bad_data"
    assert caught.value.status_code == 400


def test_an_unreachable_server_is_named() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(httpx.MockTransport(answer)) as api, pytest.raises(PrometheusError, match=r"prom\.example:9090"):
        api.query_range("up", start=0, end=60, step=15)


def test_without_a_binary_start_says_what_to_install(tmp_path: Path) -> None:
    prom = Prometheus([ScrapeJob("a", ("127.0.0.1:1",))], state_dir=tmp_path, binary="")
    prom.binary = None
    with pytest.raises(TestbedError, match="Debian's prometheus package"):
        prom.start()
    assert prom.popen is None
