"""The stand-in zai-proxy (runbook/testbed/zai_proxy.py) as a real process on loopback: OpenAI-compatible
completions with token usage, the seed's metrics in the Prometheus text format, the version in a header and
/version, the rate limit, and each failure mode (errors, a burst, added latency, token metrics missing)
seen through /metrics and judged by the gates."""

from __future__ import annotations

import math
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from runbook.canary.gates import latency_gate, presence_gate
from runbook.testbed.zai_proxy import Faults, count_tokens
from runbook.wait import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "Promote the canary, please."}]}
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Scrape:
    """The Prometheus text format, enough of it for these tests (prometheus_client is not installed)."""
    out: Scrape = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        assert m, f"not an exposition line: {line!r}"
        name, labels, value = m.groups()
        out[(name, frozenset(_PAIR.findall(labels or "")))] = float(value)
    return out


def value(scrape: Scrape, name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


def buckets(scrape: Scrape, variant: str) -> dict[float, float]:
    out = {}
    for (name, labels), v in scrape.items():
        d = dict(labels)
        if name == "zai_proxy_request_duration_seconds_bucket" and d["variant"] == variant:
            out[float(d["le"])] = v
    return out


@dataclass
class Proxy:
    popen: subprocess.Popen[bytes]
    url: str
    log: Path
    client: httpx.Client

    def chat(self, body: object = CHAT) -> httpx.Response:
        return self.client.post(f"{self.url}/v1/chat/completions", json=body)

    def scrape(self) -> Scrape:
        r = self.client.get(f"{self.url}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse_metrics(r.text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(*args: str, variant: str = "canary", version: str = "1.2.1-canary") -> Proxy:
        port = _free_port()
        log = tmp_path / f"zai-proxy-{len(started)}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen([sys.executable, "-m", "runbook.testbed.zai_proxy", "--variant", variant,
                                      "--port", str(port), "--version", version, *args],
                                     stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        p = Proxy(popen, f"http://127.0.0.1:{port}", log, httpx.Client(timeout=5.0))
        started.append(p)

        def health() -> int:
            if popen.poll() is not None:
                raise AssertionError(f"the proxy exited {popen.returncode}:\n{log.read_text()}")
            return p.client.get(f"{p.url}/health").status_code

        wait_for(health, lambda code: code == 200, timeout=10, interval=0.02, tolerate=(httpx.TransportError,),
                 what=f"the stand-in proxy on {p.url}")
        return p

    yield start
    for p in started:
        p.client.close()
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait(5)


def test_a_completion_with_usage_counted_in_the_metrics(proxy: Callable[..., Proxy]) -> None:
    p = proxy()
    answers = [p.chat() for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    body = answers[0].json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_tokens("Promote the canary, please.") == 6
    assert usage["completion_tokens"] == count_tokens(body["choices"][0]["message"]["content"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert answers[0].headers["x-zai-proxy-version"] == "1.2.1-canary"
    assert answers[0].headers["x-zai-proxy-variant"] == "canary"
    assert p.client.get(f"{p.url}/version").json() == {"version": "1.2.1-canary", "variant": "canary"}

    m = p.scrape()
    assert value(m, "zai_proxy_requests_total", variant="canary", status="200") == 5
    assert value(m, "zai_proxy_tokens_total", variant="canary", type="input") == 5 * usage["prompt_tokens"]
    assert value(m, "zai_proxy_tokens_total", variant="canary", type="output") == 5 * usage["completion_tokens"]
    hist = buckets(m, "canary")
    assert hist[float("inf")] == 5 == value(m, "zai_proxy_request_duration_seconds_count", variant="canary")
    counts = [hist[le] for le in sorted(hist)]
    assert counts == sorted(counts)  # cumulative
    assert value(m, "zai_proxy_build_info", variant="canary", version="1.2.1-canary") == 1
    assert "Token usage: input=6, output=" in p.log.read_text()


def test_bad_requests_are_answered_and_counted_as_4xx(proxy: Callable[..., Proxy]) -> None:
    p = proxy(variant="production", version="1.2.0")
    assert p.chat({"messages": []}).status_code == 400
    bad = p.client.post(f"{p.url}/v1/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert p.client.get(f"{p.url}/nowhere").status_code == 404  # not the API: not counted
    m = p.scrape()
    assert value(m, "zai_proxy_requests_total", variant="production", status="400") == 2
    assert value(m, "zai_proxy_requests_total", variant="production", status="200") is None


def test_an_error_rate_answers_exactly_that_fraction_with_500(proxy: Callable[..., Proxy]) -> None:
    p = proxy("--error-rate", "0.25")
    codes = [p.chat().status_code for _ in range(40)]
    assert codes.count(500) == 10 and codes.count(200) == 30
    m = p.scrape()
    assert value(m, "zai_proxy_requests_total", variant="canary", status="500") == 10
    assert value(m, "zai_proxy_requests_total", variant="canary", status="200") == 30


def test_errors_only_in_the_burst_window(proxy: Callable[..., Proxy]) -> None:
    p = proxy("--error-rate", "1", "--error-after", "3600", "--error-for", "120")  # the burst is an hour away
    assert {p.chat().status_code for _ in range(10)} == {200}
    now = [0.0]
    faults = Faults(error_rate=0.5, error_after=600, error_for=120, clock=lambda: now[0])
    seen = []
    for t in range(0, 900, 10):
        now[0] = float(t)
        seen.append((t, faults.fail_now()))
    assert {t for t, failed in seen if failed} == set(range(610, 720, 20))  # every other one in [600, 720)


def test_the_rate_limit_answers_429_with_retry_after(proxy: Callable[..., Proxy]) -> None:
    p = proxy("--rate-limit", "1")
    started = time.monotonic()
    answers = [p.chat() for _ in range(8)]
    elapsed = time.monotonic() - started
    codes = [a.status_code for a in answers]
    assert codes[0] == 200 and 429 in codes, codes
    assert codes.count(200) <= 1 + math.ceil(elapsed), codes  # a bucket of 1, refilled at 1 a second
    limited = answers[codes.index(429)]
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]["type"] == "rate_limit_error"
    m = p.scrape()
    assert value(m, "zai_proxy_requests_total", variant="canary", status="429") == codes.count(429)


def test_added_latency_fails_the_latency_gate_against_production(proxy: Callable[..., Proxy]) -> None:
    production = proxy(variant="production", version="1.2.0")
    canary = proxy("--latency", "0.12")
    for _ in range(6):
        assert production.chat().status_code == 200 and canary.chat().status_code == 200
    slow, base = buckets(canary.scrape(), "canary"), buckets(production.scrape(), "production")
    assert slow[0.1] == 0 and slow[0.25] == 6  # every canary answer took 120..250 ms
    result = latency_gate(slow, base, min_observations=6)
    assert result.verdict == "fail" and result.observed > 0.1 > result.limit, result.reason
    assert latency_gate(base, base, min_observations=6).verdict == "pass"


def test_missing_token_metrics_fail_the_presence_gate(proxy: Callable[..., Proxy]) -> None:
    p = proxy("--no-token-metrics")
    assert p.chat().json()["usage"]["total_tokens"] > 0  # it still answers with usage
    m = p.scrape()
    assert not [k for k in m if k[0] == "zai_proxy_tokens_total"]
    served = value(m, "zai_proxy_requests_total", variant="canary", status="200")
    assert served == 1
    assert presence_gate("zai_proxy_tokens_total", None, served).verdict == "fail"


def test_sigterm_exits_0(proxy: Callable[..., Proxy]) -> None:
    p = proxy()
    assert p.chat().status_code == 200
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(10) == 0
    assert "exiting with status 0" in p.log.read_text()


def _ask(sock: socket.socket) -> bytes:
    """One GET /version on a kept-alive connection, read to the end of its answer (b"" if the server closed)."""
    sock.sendall(b"GET /version HTTP/1.1\r\nHost: proxy\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _after_sigterm(p: Proxy, words: str) -> None:
    p.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: p.log.read_text(), lambda text: words in text, timeout=10, interval=0.02,
             what=f"{words!r} in the proxy's log")


def test_sigterm_drains_keep_alive_connections_instead_of_closing_them_under_a_request(
        proxy: Callable[..., Proxy]) -> None:
    """A pod deleted in a rollout keeps its clients' open connections: the one that sends on an idle
    connection as SIGTERM closes it loses that request. Draining answers it, with Connection: close."""
    p = proxy("--drain-idle", "2")
    busy, idle = (socket.create_connection(("127.0.0.1", int(p.url.rsplit(":", 1)[1])), timeout=10) for _ in "ab")
    with busy, idle:
        for sock in (busy, idle):
            first = _ask(sock)
            assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
        stopped = time.monotonic()
        _after_sigterm(p, "draining")
        second = _ask(busy)
        assert second.startswith(b"HTTP/1.1 200"), second
        assert b"connection: close" in second.lower()
        assert busy.recv(1) == b""  # closed after the answer, as it said
        assert idle.recv(1) == b""  # the idle one: closed once idle for --drain-idle, not at SIGTERM
        assert time.monotonic() - stopped >= 2.0
    assert p.popen.wait(10) == 0


def test_without_the_drain_an_idle_connection_is_closed_at_sigterm(proxy: Callable[..., Proxy]) -> None:
    """The keep-alive race the drain prevents, made certain: a request sent on a connection that was idle at
    SIGTERM gets no answer."""
    p = proxy("--drain-idle", "0")
    with socket.create_connection(("127.0.0.1", int(p.url.rsplit(":", 1)[1])), timeout=10) as sock:
        assert _ask(sock).startswith(b"HTTP/1.1 200")
        _after_sigterm(p, "Shutting down")
        try:
            answer = _ask(sock)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
        assert answer == b""
    assert p.popen.wait(10) == 0


def test_bad_flags_are_refused() -> None:
    run = subprocess.run([sys.executable, "-m", "runbook.testbed.zai_proxy", "--variant", "canary", "--port", "1",
                          "--version", "x", "--error-rate", "2"], capture_output=True, text=True, cwd=ROOT, timeout=10)
    assert run.returncode == 2 and "--error-rate must be in [0, 1]" in run.stderr
