"""Real Prometheus (runbook/testbed/prometheus.py, Debian's prometheus binary) scraping real stand-in proxies
(runbook/testbed/zai_proxy.py) every second: runbook.canary.promql's queries, sent through the client, give
the exact counts the stand-ins served; Prometheus's own histogram_quantile agrees with the gates' one on the
same buckets; the error-rate gate passes production and fails a canary with 20% errors; the token counter's
presence gate passes, and fails for a stand-in that leaves the counter out."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from runbook.canary import promql
from runbook.canary.gates import error_rate_gate, histogram_quantile, latency_gate, presence_gate
from runbook.errors import TestbedError
from runbook.testbed.prometheus import Prometheus, PrometheusClient, ScrapeJob, find_binary
from runbook.wait import wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(find_binary() is None, reason="no prometheus binary: Debian's prometheus "
                                 "package is not installed (.ci/setup installs it)")]

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "Promote the canary, please."}]}
SENT = 200  # requests to production and to the canary
SENT_NO_TOKENS = 60
ERROR_RATE = 0.2  # the canary's: exactly 40 of 200 answer 500
WINDOW = 120.0  # seconds: covers the whole test
# each stand-in its own job, so the canary without token metrics (also variant="canary") is told apart
JOBS = {"production": "zai-production", "canary": "zai-canary", "no-tokens": "zai-canary-no-tokens"}


@dataclass
class Proxy:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxies() -> Iterator[dict[str, Proxy]]:
    tmp_dir = tempfile.TemporaryDirectory(prefix="zai-proxies-")  # removed in teardown, failure or not
    tmp = Path(tmp_dir.name)
    flags = {"production": ("--variant", "production", "--version", "1.2.0"),
             "canary": ("--variant", "canary", "--version", "1.2.1-canary", "--error-rate", str(ERROR_RATE),
                        "--latency", "0.03"),
             "no-tokens": ("--variant", "canary", "--version", "1.2.1-canary", "--no-token-metrics")}
    started: dict[str, Proxy] = {}
    try:
        for name, args in flags.items():
            port, log = _free_port(), tmp / f"{name}.log"
            with open(log, "wb") as fh:
                popen = subprocess.Popen([sys.executable, "-m", "runbook.testbed.zai_proxy", "--port", str(port),
                                          *args], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
            started[name] = Proxy(name, popen, port, log)
        with httpx.Client(timeout=2.0) as client:
            for p in started.values():
                def health(p: Proxy = p) -> int:
                    if p.popen.poll() is not None:
                        raise AssertionError(f"{p.name} exited {p.popen.returncode}:\n{p.log.read_text()}")
                    return client.get(f"{p.url}/health").status_code

                wait_for(health, lambda code: code == 200, timeout=15, interval=0.05,
                         tolerate=(httpx.TransportError,), what=f"the {p.name} stand-in on {p.url}")
        yield started
    finally:
        for p in started.values():
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in started.values():
            try:
                p.popen.wait(5)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)
        tmp_dir.cleanup()


@dataclass
class Scraped:
    api: PrometheusClient
    served: dict[str, dict[str, int]]  # stand-in -> status -> count, as the clients saw the answers
    at: float  # a time at which Prometheus had scraped every final count
    prometheus: Prometheus


def _send(url: str, n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    with httpx.Client(timeout=5.0) as client, ThreadPoolExecutor(max_workers=10) as pool:
        for r in pool.map(lambda _: client.post(f"{url}/v1/chat/completions", json=CHAT), range(n)):
            counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
    return counts


@pytest.fixture(scope="module")
def scraped(proxies: dict[str, Proxy]) -> Iterator[Scraped]:
    jobs = [ScrapeJob(JOBS[name], (f"127.0.0.1:{p.port}",), {"stand_in": name}) for name, p in proxies.items()]
    with tempfile.TemporaryDirectory(prefix="prometheus-") as state, \
            Prometheus(jobs, state_dir=Path(state), scrape_interval=1.0, start_timeout=20) as prom, \
            prom.client() as api:
        served = {name: _send(p.url, SENT_NO_TOKENS if name == "no-tokens" else SENT)
                  for name, p in proxies.items()}

        def totals() -> dict[str, float]:
            out = {}
            for name in proxies:
                value = api.query(f"sum({promql.requests_counter(_variant(name), _labels(name))})").value()
                out[name] = value if value is not None else 0.0
            return out

        want = {name: float(sum(c.values())) for name, c in served.items()}
        wait_for(totals, lambda got: got == want, timeout=10, interval=0.2,
                 what="Prometheus to scrape every request the stand-ins served")
        yield Scraped(api, served, time.time(), prom)
        assert prom.stop() == 0, f"Prometheus did not exit 0 on SIGTERM:\n{prom.log_tail()}"


def _labels(name: str) -> dict[str, str]:
    return {"job": JOBS[name]}


def _variant(name: str) -> str:
    return "production" if name == "production" else "canary"


def test_prometheus_started_and_scrapes_every_stand_in(scraped: Scraped) -> None:
    assert scraped.prometheus.started_in is not None and scraped.prometheus.started_in < 20
    targets = scraped.api.targets()
    assert sorted(t["labels"]["job"] for t in targets) == sorted(JOBS.values())
    assert {t["health"] for t in targets} == {"up"}


def test_error_counts_equal_what_the_stand_ins_served(scraped: Scraped) -> None:
    for name in ("production", "canary"):
        result = scraped.api.query(promql.requests_counter(_variant(name), _labels(name)), at=scraped.at)
        errors, requests = promql.error_counts(result.vector)
        served = scraped.served[name]
        assert requests == SENT == sum(served.values())
        assert errors == sum(n for status, n in served.items() if status.startswith("5"))
        only_errors = scraped.api.query(f"sum({promql.errors_counter(_variant(name), _labels(name))})",
                                        at=scraped.at).value()
        assert (only_errors or 0.0) == errors
    assert scraped.served["production"] == {"200": SENT}
    assert scraped.served["canary"] == {"200": SENT - round(SENT * ERROR_RATE), "500": round(SENT * ERROR_RATE)}


def test_prometheus_histogram_quantile_agrees_with_the_gates(scraped: Scraped) -> None:
    for name in ("production", "canary"):
        variant, labels = _variant(name), _labels(name)
        theirs = scraped.api.query(promql.latency_quantile(0.95, variant, WINDOW, labels), at=scraped.at).value()
        buckets = promql.buckets_from_vector(
            scraped.api.query(promql.latency_buckets(variant, WINDOW, labels), at=scraped.at).vector)
        assert math.isinf(max(buckets)) and buckets[math.inf] > 0
        ours = histogram_quantile(0.95, buckets)
        assert theirs is not None and math.isfinite(ours)
        assert math.isclose(theirs, ours, rel_tol=1e-9, abs_tol=1e-12), (name, theirs, ours, buckets)
    # and the canary's added 30 ms shows against production's baseline
    base = promql.buckets_from_vector(scraped.api.query(
        promql.latency_buckets("production", WINDOW, _labels("production")), at=scraped.at).vector)
    canary = promql.buckets_from_vector(scraped.api.query(
        promql.latency_buckets("canary", WINDOW, _labels("canary")), at=scraped.at).vector)
    verdict = latency_gate(canary, base, min_observations=50)
    assert verdict.verdict == "fail", verdict.reason


def test_the_error_rate_gate_on_prometheus_numbers(scraped: Scraped) -> None:
    verdicts = {}
    for name in ("production", "canary"):
        result = scraped.api.query(promql.requests_counter(_variant(name), _labels(name)), at=scraped.at)
        verdicts[name] = error_rate_gate(*promql.error_counts(result.vector), threshold=0.05)
    assert verdicts["production"].verdict == "pass", verdicts["production"].reason
    assert verdicts["canary"].verdict == "fail", verdicts["canary"].reason
    assert verdicts["canary"].reason.startswith("40 errors in 200 requests")


def test_the_token_counter_presence_gate(scraped: Scraped) -> None:
    for name, expected in (("production", "pass"), ("canary", "pass"), ("no-tokens", "fail")):
        variant, labels = _variant(name), _labels(name)
        series = scraped.api.query(promql.tokens_series(variant, labels), at=scraped.at).value()
        increase = scraped.api.query(promql.tokens_increase(variant, WINDOW, labels), at=scraped.at).value()
        ok = float(scraped.served[name].get("200", 0))
        verdict = presence_gate(promql.TOKENS, increase, ok)
        assert verdict.verdict == expected, (name, verdict.reason)
        if expected == "pass":
            assert series == 2 and increase is not None and increase > 0  # input and output
        else:
            assert series is None and increase is None and "is not exported" in verdict.reason


def test_an_error_answer_names_the_url_and_prometheus_s_text(scraped: Scraped) -> None:
    with pytest.raises(promql.PrometheusError) as caught:
        scraped.api.query("sum(")
    assert scraped.api.url in str(caught.value) and "parse error" in str(caught.value)
    assert caught.value.error_type == "bad_data" and caught.value.status_code == 400


def test_a_target_that_is_down_fails_the_start_naming_it() -> None:
    port = _free_port()  # nothing listens there
    with tempfile.TemporaryDirectory(prefix="prometheus-") as state:
        prom = Prometheus([ScrapeJob("nobody", (f"127.0.0.1:{port}",))], state_dir=Path(state), start_timeout=8)
        with pytest.raises(TestbedError) as caught:
            prom.start()
        assert prom.popen is None  # stopped after the failed start
    text = str(caught.value)
    assert f"http://127.0.0.1:{port}/metrics: down" in text and "connection refused" in text, text


def test_a_port_in_use_fails_the_start_with_prometheus_s_log() -> None:
    with socket.socket() as busy, tempfile.TemporaryDirectory(prefix="prometheus-") as state:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        prom = Prometheus([ScrapeJob("self", ("127.0.0.1:1",))], state_dir=Path(state),
                          port=busy.getsockname()[1], start_timeout=10)
        with pytest.raises(TestbedError, match="address already in use"):
            prom.start()
        assert prom.popen is None
