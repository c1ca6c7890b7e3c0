"""The zero-drop prober: open-loop, constant-rate HTTP load through the public ingress, every request kept.

It runs in its own thread with its own event loop, so a synchronous procedure runs beside it::

    with Prober(url=env.ingress.url, rate=200, out_dir=evidence / "probe", max_duration=1800) as probe:
        ...                                  # the procedure; it marks what it does:
        probe.event("shift", "green stopped gracefully")
    summary = probe.summary                  # stop() returns it too
    assert summary.ok, summary.describe()

**Open loop.** Request ``i`` is due at ``t0 + i / rate`` and is sent then, whatever happened to earlier
ones: a slow or failing ingress never slows the schedule down (no coordinated omission). At most
``max_in_flight`` requests are outstanding; a request due while the cap is reached is recorded as failed
(``overload``) at its scheduled time instead of being delayed. Requests go out on a keep-alive pool as
large as that cap, through httpx's transport with prebuilt requests (no per-request URL parsing or
client machinery), and nothing is retried: a reset keep-alive connection is a failed request.

**Records** stream to ``out_dir/requests.jsonl`` as requests complete (buffered, flushed every
``flush_interval``), one JSON object per line; memory stays flat however long it runs::

    {"seq": 17, "sched": 0.085, "sent": 0.0852, "done": 0.0861, "latency_ms": 0.9, "kind": "POST getSlot",
     "status": 200, "upstream": "127.0.0.1:18899", "ok": true, "verdict": "ok", "error": ""}

Times are seconds since ``t0`` on the monotonic clock (``prober.json`` holds ``t0`` and the wall clock at
``t0``); ``latency_ms`` is ``done - sent``. An ``overload`` record has ``sent`` and ``latency_ms`` null.
Verdicts: ``ok``, ``behind`` (``/health`` answered ``behind``/``unknown``, or JSON-RPC "node is
unhealthy"), ``stale`` (a ``getSlot`` more than ``stale_slots`` below the highest slot seen so far),
``http_error`` (status not 200), ``conn_error``, ``timeout``, ``bad_body`` (unexpected body or another
JSON-RPC error), ``overload``. ``event(name, detail)`` appends ``{"t", "name", "detail"}`` to
``out_dir/events.jsonl`` on the same clock; events split the summary into phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import math
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from runbook.errors import ConfigError, RunbookError
from runbook.probes.summary import EVENTS_FILE, META_FILE, REQUESTS_FILE, ProbeSummary, summarize, write_summary

_WARM = ("httpcore", "httpcore._backends.anyio", "anyio", "anyio._backends._asyncio", "h11")
"""Imported lazily by the first request (tens of ms on a busy machine): imported before t0 instead."""

try:  # httpcore asks sniffio for the async library on every request; a missing sniffio costs a failed
    import sniffio  # noqa: F401  # import (a sys.path scan, ~0.1 ms) per ask. Remember the miss once.
except ImportError:  # pragma: no cover - depends on the environment
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

NODE_UNHEALTHY = -32005  # agave's RpcCustomError::NodeUnhealthy
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_JSON = {"content-type": "application/json"}
_ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)


@dataclass(frozen=True)
class ProbeKind:
    """One kind of request the prober sends, as an RPC client would."""

    name: str  # "GET /health", "POST getSlot", ...
    method: str
    path: str
    rpc_method: str | None = None

    def body(self) -> bytes | None:
        if self.rpc_method is None:
            return None
        return _ENCODER.encode({"jsonrpc": "2.0", "id": 1, "method": self.rpc_method}).encode()


KINDS: dict[str, ProbeKind] = {
    k.name: k
    for k in (
        ProbeKind("GET /health", "GET", "/health"),
        ProbeKind("POST getSlot", "POST", "/", "getSlot"),
        ProbeKind("POST getHealth", "POST", "/", "getHealth"),
    )
}
DEFAULT_MIX: tuple[str, ...] = ("GET /health", "POST getSlot")


@dataclass(frozen=True)
class ProbeProgress:
    """Live counters (read from any thread; for predicates and progress lines, not for verdicts)."""

    scheduled: int
    completed: int
    failed: int
    in_flight: int
    last_ok: float | None  # done time (s since t0) of the latest success


def _snippet(body: bytes) -> str:
    return body[:120].decode("utf-8", "replace").strip()


class Prober:
    """An open-loop, constant-rate prober in a background thread. Keyword-only; ``transport`` is for tests."""

    def __init__(
        self,
        *,
        url: str,
        rate: float,
        out_dir: Path,
        upstream_header: str = "X-Upstream",
        mix: Sequence[str] = DEFAULT_MIX,
        timeout: float = 2.0,
        max_requests: int = 1_000_000,
        max_duration: float = 600.0,
        stale_slots: int = 150,
        max_in_flight: int | None = None,
        max_failures_listed: int = 50,
        flush_interval: float = 0.2,
        freeze_gc: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        unknown = [k for k in mix if k not in KINDS]
        problems = [
            *(["rate must be > 0"] if not rate > 0 else []),
            *(["timeout must be > 0"] if not timeout > 0 else []),
            *(["max_requests must be >= 1"] if max_requests < 1 else []),
            *(["max_duration must be > 0"] if not max_duration > 0 else []),
            *(["mix is empty"] if not mix else []),
            *([f"unknown request kinds {unknown} (known: {sorted(KINDS)})"] if unknown else []),
        ]
        if problems:
            raise ConfigError("prober: " + "; ".join(problems), obj=url)
        self.url = url.rstrip("/")
        self.rate = float(rate)
        self.out_dir = Path(out_dir)
        self.upstream_header = upstream_header
        self.mix = tuple(KINDS[k] for k in mix)
        self.timeout = float(timeout)
        self.max_requests = int(max_requests)
        self.max_duration = float(max_duration)
        self.stale_slots = int(stale_slots)
        self.max_in_flight = max_in_flight or max(64, math.ceil(self.rate * 0.5))
        self.max_failures_listed = max_failures_listed
        self.flush_interval = flush_interval
        self.freeze_gc = freeze_gc
        self._transport = transport
        # the schedule: request i is due at t0 + i / rate, for i < n_total
        self.n_total = min(self.max_requests, max(1, math.ceil(self.max_duration * self.rate - 1e-9)))
        self.t0 = 0.0  # monotonic, set by start()
        self.started_at = 0.0  # wall clock at t0
        self.summary: ProbeSummary | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._events_fh: IO[str] | None = None
        self._events_lock = threading.Lock()
        # loop-thread state
        self._next = 0
        self._completed = 0
        self._failed = 0
        self._in_flight = 0
        self._last_ok: float | None = None
        self._max_slot = -1
        self._halting = False
        self._timer: asyncio.TimerHandle | None = None
        self._halted: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fh: IO[str] | None = None
        self._requests: list[httpx.Request] = []
        self._ssl: ssl.SSLContext | None = None
        self._lanes: list[httpx.AsyncHTTPTransport] = []
        self._idle: list[httpx.AsyncBaseTransport] = []  # a stack: the warmest connection first

    def __repr__(self) -> str:
        return f"Prober(url={self.url!r}, rate={self.rate:g}, out_dir={str(self.out_dir)!r})"

    # ------------------------------------------------------------------ public surface
    def start(self) -> Prober:
        if self._thread is not None:
            raise RunbookError("prober already started", obj=self.url)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._fh = (self.out_dir / REQUESTS_FILE).open("w", encoding="utf-8", buffering=1 << 20)
        self._events_fh = (self.out_dir / EVENTS_FILE).open("w", encoding="utf-8")
        if self.freeze_gc:  # a full collection now, then none of today's objects scanned again: no 50 ms pauses
            gc.collect()
            gc.freeze()
        self._thread = threading.Thread(target=self._thread_main, name=f"prober {self.url}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise RunbookError(f"prober failed to start: {self._error!r}", obj=self.url) from self._error
        (self.out_dir / META_FILE).write_text(json.dumps({
            "url": self.url, "rate": self.rate, "t0_monotonic": self.t0, "started_at": self.started_at,
            "mix": [k.name for k in self.mix], "timeout": self.timeout, "max_requests": self.max_requests,
            "max_duration": self.max_duration, "stale_slots": self.stale_slots,
            "max_in_flight": self.max_in_flight, "upstream_header": self.upstream_header,
        }, indent=1))
        return self

    def now(self) -> float:
        """Seconds since t0 on the prober's clock (the records' and events' clock)."""
        return time.monotonic() - self.t0

    def event(self, name: str, detail: str = "") -> None:
        """Mark a procedure event on the timeline (thread-safe; written at once)."""
        with self._events_lock:
            if self._events_fh is None or self._events_fh.closed:
                raise RunbookError(f"prober event {name!r}: the prober is not running", obj=self.url)
            self._events_fh.write(_ENCODER.encode({"t": round(self.now(), 6), "name": name, "detail": detail}) + "\n")
            self._events_fh.flush()

    @property
    def progress(self) -> ProbeProgress:
        return ProbeProgress(scheduled=self._next, completed=self._completed, failed=self._failed,
                             in_flight=self._in_flight, last_ok=self._last_ok)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the schedule ran out by itself (max_requests / max_duration); True if it did."""
        return self._finished.wait(timeout)

    def stop(self) -> ProbeSummary:
        """Stop scheduling, let in-flight requests finish (each within ``timeout``), summarise from disk."""
        if self.summary is not None:
            return self.summary
        if self._thread is None:
            raise RunbookError("prober was never started", obj=self.url)
        loop = self._loop
        if loop is not None and not self._finished.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: it finished by itself
                loop.call_soon_threadsafe(self._halt)
        self._thread.join(self.timeout + 30.0)
        if self._thread.is_alive():
            raise RunbookError("prober thread did not stop within its timeout", obj=self.url)
        if self.freeze_gc:
            gc.unfreeze()
        with self._events_lock:
            if self._events_fh is not None:
                self._events_fh.close()
        if self._error is not None:
            raise RunbookError(f"prober crashed: {self._error!r}", obj=self.url) from self._error
        self.summary = summarize(self.out_dir, max_failures=self.max_failures_listed)
        write_summary(self.summary, self.out_dir)
        return self.summary

    def __enter__(self) -> Prober:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop thread
    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                if self._fh is not None and not self._fh.closed:
                    self._fh.close()
                self._started.set()
                self._finished.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        timeouts = {"connect": self.timeout, "read": self.timeout, "write": self.timeout, "pool": self.timeout}
        self._requests = [
            httpx.Request(k.method, self.url + k.path, content=k.body(),
                          headers={"user-agent": "runbook-prober/1", **(_JSON if k.rpc_method else {})},
                          extensions={"timeout": timeouts})
            for k in self.mix
        ]
        self._ssl = httpx.create_ssl_context()  # once: each lane would load the CA bundle again
        for module in _WARM:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        self._halted = loop.create_future()
        try:
            self.t0 = time.monotonic() + 0.005  # the first request is due a moment after start() returns
            self.started_at = time.time() + 0.005
            self._started.set()
            self._timer = loop.call_at(loop.time() + 0.005, self._tick)
            loop.call_later(self.flush_interval, self._flush_tick)
            await self._halted
            if self._tasks:  # each request ends within its timeout
                await asyncio.wait(set(self._tasks), timeout=self.timeout + 5.0)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:  # cancelled requests are recorded as timeouts
                await asyncio.wait(set(self._tasks), timeout=1.0)
        finally:
            if self._transport is None:
                for lane in self._lanes:
                    await lane.aclose()
            assert self._fh is not None
            self._fh.flush()

    def _lane(self) -> httpx.AsyncBaseTransport | None:
        """An idle lane (one keep-alive connection), a new one while under the cap, or None (overload).

        One connection per lane keeps httpcore's pool bookkeeping O(1) per request: a single pool of
        hundreds of connections scans (and polls) every connection on each request and collapses.
        """
        if self._idle:
            return self._idle.pop()
        if self._in_flight >= self.max_in_flight:
            return None
        if self._transport is not None:
            return self._transport
        assert self._ssl is not None
        lane = httpx.AsyncHTTPTransport(verify=self._ssl, retries=0, limits=_ONE_CONNECTION)
        self._lanes.append(lane)
        return lane

    def _halt(self) -> None:
        self._halting = True
        if self._timer is not None:
            self._timer.cancel()
        if self._halted is not None and not self._halted.done():
            self._halted.set_result(None)

    def _tick(self) -> None:
        """Launch every request that is due, then sleep until the next one is."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        t0, rate, n_total = self.t0, self.rate, self.n_total
        while self._next < n_total and t0 + self._next / rate <= now:
            seq = self._next
            self._next += 1
            lane = self._lane()
            if lane is None:
                self._record(seq, seq / rate, None, now, seq % len(self.mix), None, None,
                             "overload", f"{self._in_flight} requests in flight (max_in_flight)")
                continue
            self._in_flight += 1
            task = loop.create_task(self._one(seq, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._next >= n_total or self._halting:
            self._halt()
            return
        due = t0 + self._next / rate
        self._timer = loop.call_at(loop.time() + (due - time.monotonic()), self._tick)

    def _flush_tick(self) -> None:
        if self._fh is not None and not self._fh.closed and not self._finished.is_set():
            self._fh.flush()
            asyncio.get_running_loop().call_later(self.flush_interval, self._flush_tick)

    async def _one(self, seq: int, lane: httpx.AsyncBaseTransport) -> None:
        index = seq % len(self.mix)
        status: int | None = None
        upstream: str | None = None
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                response = await lane.handle_async_request(self._requests[index])
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
            status = response.status_code
            upstream = response.headers.get(self.upstream_header)
            verdict, error = self._judge(self.mix[index], status, body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            verdict, error = "timeout", f"{type(exc).__name__}: no answer within {self.timeout:g} s"
        except httpx.TransportError as exc:
            verdict, error = "conn_error", f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            verdict, error = "timeout", "cancelled: the prober stopped before an answer"
        except Exception as exc:  # anything else is still a failed request, never a crashed prober
            verdict, error = "conn_error", f"{type(exc).__name__}: {exc}"
        done = time.monotonic()
        self._in_flight -= 1
        if lane is not self._transport:
            self._idle.append(lane)
        self._record(seq, seq / self.rate, sent - self.t0, done, index, status, upstream, verdict, error)

    def _record(self, seq: int, sched: float, sent: float | None, done_abs: float, index: int,
                status: int | None, upstream: str | None, verdict: str, error: str) -> None:
        done = done_abs - self.t0
        ok = verdict == "ok"
        self._completed += 1
        if ok:
            self._last_ok = done
        else:
            self._failed += 1
        rec: dict[str, Any] = {
            "seq": seq, "sched": round(sched, 6), "sent": None if sent is None else round(sent, 6),
            "done": round(done, 6), "latency_ms": None if sent is None else round((done - sent) * 1000.0, 3),
            "kind": self.mix[index].name, "status": status, "upstream": upstream, "ok": ok,
            "verdict": verdict, "error": error,
        }
        assert self._fh is not None
        self._fh.write(_ENCODER.encode(rec) + "\n")

    # ------------------------------------------------------------------ verdicts
    def _judge(self, kind: ProbeKind, status: int, body: bytes) -> tuple[str, str]:
        if status != 200:
            return "http_error", f"HTTP {status}: {_snippet(body)!r}"
        if kind.rpc_method is None:
            text = body.strip()
            if text == b"ok":
                return "ok", ""
            if text in (b"behind", b"unknown"):
                return "behind", f"/health answered {text.decode()!r}"
            return "bad_body", f"unexpected /health body {_snippet(body)!r}"
        try:
            doc = json.loads(body)
        except ValueError:
            return "bad_body", f"not JSON: {_snippet(body)!r}"
        if not isinstance(doc, dict):
            return "bad_body", f"not a JSON-RPC response: {_snippet(body)!r}"
        error = doc.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            verdict = "behind" if code == NODE_UNHEALTHY else "bad_body"
            return verdict, f"JSON-RPC error {code}: {message}"
        result = doc.get("result")
        if kind.rpc_method == "getSlot":
            if not isinstance(result, int) or isinstance(result, bool):
                return "bad_body", f"getSlot result is not a slot: {_snippet(body)!r}"
            if result < self._max_slot - self.stale_slots:
                return "stale", (f"slot {result} is {self._max_slot - result} behind the highest seen "
                                 f"({self._max_slot}; stale_slots={self.stale_slots})")
            self._max_slot = max(self._max_slot, result)
            return "ok", ""
        if kind.rpc_method == "getHealth" and result != "ok":
            return "bad_body", f"getHealth answered {result!r}"
        return "ok", ""
