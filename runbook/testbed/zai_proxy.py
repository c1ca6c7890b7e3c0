"""The stand-in zai-proxy (seed 004): an OpenAI-compatible proxy with the seed's Prometheus metrics, run as
``production`` and ``canary``::

    python -m runbook.testbed.zai_proxy --variant canary --port 18080 --version 1.2.1-canary \\
        [--bind 127.0.0.1] [--rate-limit 50] [--error-rate 0.2] [--error-after 60 --error-for 120] \\
        [--latency 0.2] [--no-token-metrics]

- ``POST /v1/chat/completions``: a chat completion (``chat.completion`` object) answered by the stand-in
  itself, with ``usage`` (prompt, completion and total tokens: words and punctuation marks counted); the
  proxy logs ``Token usage: input=X, output=Y`` as the seed's operators grep for. ``GET /v1/models``.
- ``GET /metrics`` (Prometheus text format 0.0.4): ``zai_proxy_requests_total{variant,status}``,
  ``zai_proxy_request_duration_seconds`` (a histogram: ``_bucket{variant,le}``, ``_sum``, ``_count``),
  ``zai_proxy_tokens_total{variant,type}`` (type: input or output) and ``zai_proxy_build_info{variant,version}``.
  Every answer to ``/v1/chat/completions`` is counted and timed, 4xx and 5xx included.
- ``GET /health`` (``ok``; HTTP 503 ``warming up`` for ``--warm-up`` seconds after start), ``GET /version``
  (JSON); every answer carries ``X-Zai-Proxy-Version`` and
  ``X-Zai-Proxy-Variant``.

Failure modes, chosen by flags: ``--error-rate F`` answers exactly that fraction of completions with HTTP 500
(evenly spread, not random: a run's error count is known), only between ``--error-after`` and
``--error-after + --error-for`` seconds after start when those are given (a burst); ``--latency S`` adds S
seconds to every completion; ``--no-token-metrics`` leaves ``zai_proxy_tokens_total`` out of ``/metrics``
(a build that lost it). ``--rate-limit R``: above R completions a second (a bucket of one second's worth)
the proxy answers 429 with ``Retry-After``. SIGTERM finishes in-flight requests and exits 0; it drains keep-alive
connections first (``--drain-idle``): a pod deleted in a rollout still holds its clients' connections (the Service
only stops sending new ones), and closing an idle one at SIGTERM loses a request the client sends on it then.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from runbook.testbed.cluster import run_server

log = logging.getLogger("zai-proxy")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # prometheus.DefBuckets (Go client)
MAX_BODY = 1 << 20
_TOKEN = re.compile(r"\w+|[^\w\s]")
_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_METRICS = b"text/plain; version=0.0.4; charset=utf-8"
DRAIN_IDLE = 5.0  # httpx's keepalive_expiry: a client of the proxy has dropped an idle connection by then


def count_tokens(text: str) -> int:
    """The stand-in's tokenizer: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value == int(value) else repr(value)


class Metrics:
    """The proxy's counters and histogram, rendered in the Prometheus text exposition format."""

    def __init__(self, variant: str, version: str, *, tokens: bool = True) -> None:
        self.variant, self.version, self.tokens_exported = variant, version, tokens
        self.requests: dict[str, int] = {}  # status -> count
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket (not cumulative); the last is +Inf
        self.duration_sum = 0.0
        self.tokens = {"input": 0, "output": 0}

    def observe(self, status: int, seconds: float) -> None:
        self.requests[str(status)] = self.requests.get(str(status), 0) + 1
        self.buckets[next((i for i, le in enumerate(BUCKETS) if seconds <= le), len(BUCKETS))] += 1
        self.duration_sum += seconds

    def render(self) -> bytes:
        v = f'variant="{_label(self.variant)}"'
        lines = ["# HELP zai_proxy_requests_total Requests answered by the proxy, by variant and HTTP status.",
                 "# TYPE zai_proxy_requests_total counter"]
        lines += [f'zai_proxy_requests_total{{status="{s}",{v}}} {n}' for s, n in sorted(self.requests.items())]
        lines += ["# HELP zai_proxy_request_duration_seconds Time to answer a request.",
                  "# TYPE zai_proxy_request_duration_seconds histogram"]
        cumulative = 0
        for le, n in zip((*BUCKETS, math.inf), self.buckets, strict=True):
            cumulative += n
            lines.append(f'zai_proxy_request_duration_seconds_bucket{{le="{_num(le)}",{v}}} {cumulative}')
        lines += [f"zai_proxy_request_duration_seconds_sum{{{v}}} {_num(self.duration_sum)}",
                  f"zai_proxy_request_duration_seconds_count{{{v}}} {cumulative}"]
        if self.tokens_exported:
            lines += ["# HELP zai_proxy_tokens_total Tokens counted in requests (input) and answers (output).",
                      "# TYPE zai_proxy_tokens_total counter"]
            lines += [f'zai_proxy_tokens_total{{type="{t}",{v}}} {n}' for t, n in sorted(self.tokens.items())]
        lines += ["# HELP zai_proxy_build_info The proxy's version.", "# TYPE zai_proxy_build_info gauge",
                  f'zai_proxy_build_info{{{v},version="{_label(self.version)}"}} 1']
        return ("\n".join(lines) + "\n").encode()


class Faults:
    """The failure modes: an exact error fraction (optionally only in a burst window), added latency."""

    def __init__(self, *, error_rate: float = 0.0, error_after: float = 0.0, error_for: float | None = None,
                 latency: float = 0.0, error_status: int = 500, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= error_rate <= 1:
            raise ValueError(f"--error-rate must be in [0, 1], not {error_rate}")
        self.error_rate, self.error_after, self.error_for = error_rate, error_after, error_for
        self.latency, self.error_status, self.clock = latency, error_status, clock
        self.started = clock()
        self._owed = 0.0  # accumulated error fraction: an error each time it reaches 1

    def fail_now(self) -> bool:
        elapsed = self.clock() - self.started
        if elapsed < self.error_after or (self.error_for is not None and elapsed >= self.error_after + self.error_for):
            return False
        self._owed += self.error_rate
        if self._owed >= 1 - 1e-9:
            self._owed -= 1
            return True
        return False


class TokenBucket:
    """At most ``rate`` requests a second, a bucket of one second's worth; None: admitted, else the wait."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.burst = max(1.0, rate)
        self.tokens, self.then = self.burst, clock()

    def admit(self) -> float | None:
        if self.rate <= 0:
            return None
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.then) * self.rate)
        self.then = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


def _openai_error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ProxyApp:
    """ASGI: the proxy's endpoints (see the module's docstring)."""

    def __init__(self, *, variant: str, version: str, faults: Faults | None = None, rate_limit: float = 0.0,
                 token_metrics: bool = True, model: str = "glm-4.6", warm_up: float = 0.0) -> None:
        self.variant, self.version, self.model = variant, version, model
        self.ready_at = time.monotonic() + warm_up  # /health answers 503 until then (still warming up)
        self.faults = faults or Faults()
        self.limiter = TokenBucket(rate_limit)
        self.metrics = Metrics(variant, version, tokens=token_metrics)
        self.headers = [(b"x-zai-proxy-version", version.encode()), (b"x-zai-proxy-variant", variant.encode())]

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/v1/chat/completions" and method == "POST":
            started = time.perf_counter()
            status, body, extra = await self.complete(receive)
            self.metrics.observe(status, time.perf_counter() - started)
            await self._send(send, status, json.dumps(body).encode(), _JSON, extra)
        elif path == "/v1/models" and method == "GET":
            models = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "zai"}]}
            await self._send(send, 200, json.dumps(models).encode(), _JSON)
        elif path == "/metrics" and method == "GET":
            await self._send(send, 200, self.metrics.render(), _METRICS)
        elif path == "/health" and method == "GET":
            warming = time.monotonic() < self.ready_at
            await self._send(send, 503 if warming else 200, b"warming up" if warming else b"ok", _TEXT)
        elif path == "/version" and method == "GET":
            info = {"version": self.version, "variant": self.variant}
            await self._send(send, 200, json.dumps(info).encode(), _JSON)
        else:
            await self._send(send, 404, json.dumps(_openai_error(f"no route {method} {path}", "not_found")).encode(),
                             _JSON)

    async def complete(self, receive: Callable[..., Any]) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        raw = await _read_body(receive)
        wait = self.limiter.admit()
        if wait is not None:
            message = f"rate limit reached: at most {self.limiter.rate:g} requests a second"
            return 429, _openai_error(message, "rate_limit_error", "rate_limit_exceeded"), [
                (b"retry-after", str(max(1, math.ceil(wait))).encode())]
        try:
            request = json.loads(raw) if raw is not None else None
            if not isinstance(request, dict):
                raise ValueError("the body is not a JSON object")
            messages = request["messages"]
            prompt = " ".join(str(m["content"]) for m in messages)
            max_tokens = int(request.get("max_tokens") or 64)
        except (ValueError, TypeError, KeyError) as exc:
            return 400, _openai_error(f"invalid request: {exc}", "invalid_request_error"), []
        if not messages:
            return 400, _openai_error("messages must not be empty", "invalid_request_error"), []
        if request.get("stream"):
            return 400, _openai_error("stream is not supported by the stand-in", "invalid_request_error"), []
        if self.faults.latency > 0:
            await asyncio.sleep(self.faults.latency)
        if self.faults.fail_now():
            injected = _openai_error("upstream error (injected: --error-rate)", "server_error")
            return self.faults.error_status, injected, []
        words = _TOKEN.findall(prompt)
        reply = " ".join(["ok:", *words][: max(1, max_tokens)])
        usage = {"prompt_tokens": len(words), "completion_tokens": count_tokens(reply)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self.metrics.tokens["input"] += usage["prompt_tokens"]
        self.metrics.tokens["output"] += usage["completion_tokens"]
        log.info("Token usage: input=%d, output=%d", usage["prompt_tokens"], usage["completion_tokens"])
        return 200, {
            "id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
            "model": str(request.get("model") or self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        }, []

    async def _send(self, send: Callable[..., Any], status: int, body: bytes, ctype: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *self.headers,
                   *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Callable[..., Any]) -> bytes | None:
    """The request body; None when it is larger than MAX_BODY or the client went away."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    p = argparse.ArgumentParser(prog="runbook.testbed.zai_proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--variant", required=True, choices=("production", "canary"))
    p.add_argument("--version", required=True, help="reported in /version, X-Zai-Proxy-Version, build_info")
    p.add_argument("--model", default="glm-4.6", help="the model /v1/models lists")
    p.add_argument("--rate-limit", type=float, default=0.0, metavar="PER_SECOND",
                   help="completions a second before HTTP 429 (0: no limit)")
    p.add_argument("--error-rate", type=float, default=0.0, metavar="FRACTION",
                   help="this fraction of completions answers --error-status, evenly spread")
    p.add_argument("--error-status", type=int, default=500)
    p.add_argument("--error-after", type=float, default=0.0, metavar="SECONDS", help="errors only after this")
    p.add_argument("--error-for", type=float, default=None, metavar="SECONDS", help="errors only for this long")
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="added to every completion")
    p.add_argument("--no-token-metrics", action="store_true", help="leave zai_proxy_tokens_total out of /metrics")
    p.add_argument("--warm-up", type=float, default=0.0, metavar="SECONDS",
                   help="/health answers 503 this long after start (readiness keeps the pod out of its Service)")
    p.add_argument("--drain-idle", type=float, default=DRAIN_IDLE, metavar="SECONDS",
                   help="on SIGTERM, answer with Connection: close and close a keep-alive connection only after it "
                        "was idle this long (0: close idle connections at once, the keep-alive race)")
    args = p.parse_args(argv)
    if not 0 <= args.error_rate <= 1:
        p.error(f"--error-rate must be in [0, 1], not {args.error_rate}")
    if not 500 <= args.error_status <= 599:
        p.error(f"--error-status must be a 5xx code, not {args.error_status}")
    faults = Faults(error_rate=args.error_rate, error_after=args.error_after, error_for=args.error_for,
                    latency=args.latency, error_status=args.error_status)
    app = ProxyApp(variant=args.variant, version=args.version, faults=faults, rate_limit=args.rate_limit,
                   token_metrics=not args.no_token_metrics, model=args.model, warm_up=args.warm_up)
    log.info("zai-proxy %s (%s) on %s:%d: error rate %g%s, added latency %gs, rate limit %s, token metrics %s",
             args.version, args.variant, args.bind, args.port, args.error_rate,
             f" from +{args.error_after:g}s for {args.error_for:g}s" if args.error_for is not None else "",
             args.latency, f"{args.rate_limit:g}/s" if args.rate_limit > 0 else "none",
             "off" if args.no_token_metrics else "on")
    # run_server serves any ASGI app; its annotation names the two JSON-RPC apps it was written for
    code = run_server(cast(Any, app), host=args.bind, port=args.port, name="zai-proxy", drain_idle=args.drain_idle)
    log.info("exiting with status %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
