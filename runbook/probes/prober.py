"""The zero-drop prober: open-loop, constant-rate HTTP load through the public ingress, every request kept.

It runs in its own thread with its own event loop, so a synchronous procedure runs beside it::

    with Prober(url=env.ingress.url, rate=200, out_dir=evidence / "probe", max_duration=1800) as probe:
        ...                                   # the procedure, marking what it does:
        probe.event("shift", "green stopped gracefully")
    assert probe.summary is not None and probe.summary.ok, probe.summary.describe()

**Open loop.** Request ``i`` is due at ``t0 + i / rate`` and is sent then, whatever happened to earlier
ones (no coordinated omission). At most ``max_in_flight`` are outstanding; a request due while the cap is
reached is recorded as failed (``overload``) at its scheduled time, never delayed.

**Strict verdict: what a client that does not retry would lose.** A request that met a reused keep-alive
connection the server had closed (Caddy closes idle client connections at every config reload) is sent
again on a new connection, but only to keep measuring: it is recorded as failed (``needed_retry``, with the
reason), since a client that does not retry lost it. An answer later than ``client_timeout`` is failed too
(``late``): the client had given up. ``timeout`` (the transport's own, longer) only bounds how long the
prober waits, so a late answer is still measured (its latency, its upstream, what its body said).

**Lanes.** Each in-flight request has its own keep-alive connection (a one-connection httpcore pool, the
engine of httpx; idle lanes are reused warmest first). A single pool of hundreds of connections scans
and polls all of them on every request and collapses under load. Plain-HTTP lanes run on asyncio sockets
directly (:class:`AsyncioBackend`), about a third less CPU per request than anyio's streams; https uses
httpcore's default backend. Requests are prebuilt once per kind.

**Records** stream to ``requests.jsonl`` as requests complete (buffered, flushed every ``flush_interval``);
memory stays flat however long it runs. One JSON object per line::

    {"seq": 17, "sched": 0.034, "sent": 0.0342, "done": 0.0351, "latency_ms": 0.9, "kind": "POST getSlot",
     "status": 200, "upstream": "127.0.0.1:18899", "ok": true, "verdict": "ok", "error": ""}

A request failed by the strict verdict keeps what its answer said in ``answer`` (``"answer": "ok"``) and,
when it needed the prober's retry, why in ``retried``.

Times are seconds since ``t0`` on the monotonic clock (``prober.json`` has ``t0_monotonic`` and the wall
clock at t0); ``latency_ms`` is ``done - sent``; an ``overload`` record has ``sent`` and ``latency_ms``
null. Verdicts are explained in :func:`runbook.probes.summary.judge`. ``event(name, detail)`` appends
``{"t", "name", "detail"}`` to ``events.jsonl`` on the same clock; events split the summary into phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpcore
import httpx

from runbook.errors import ConfigError, RunbookError
from runbook.probes.lanes import AsyncioBackend, CoreLane, TransportLane
from runbook.probes.summary import (
    DEFAULT_MIX,
    EVENTS_FILE,
    KINDS,
    META_FILE,
    REQUESTS_FILE,
    ProbeSummary,
    judge,
    summarize,
    write_summary,
)

try:  # httpcore asks sniffio for the async library on every request; without sniffio each ask is a
    import sniffio  # noqa: F401  # failed import (a sys.path scan, ~0.1 ms). Remember the miss once.
except ImportError:  # pragma: no cover - depends on the environment
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

_WARM = ("anyio", "anyio._backends._asyncio", "h11", "httpcore._backends.anyio")
"""Imported lazily by a first request (tens of ms on a busy machine): imported before t0 instead."""
_ENCODER = json.JSONEncoder(separators=(",", ":"))
TIMEOUTS = (TimeoutError, httpcore.TimeoutException, httpx.TimeoutException)
CONN_ERRORS = (OSError, httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
               httpx.TransportError)


def _raise_priority() -> str:
    """Give the calling thread the lowest real-time priority, else nice -10; say which one it got."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(tid, os.SCHED_RR, os.sched_param(1))
        return "SCHED_RR 1"
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, -10)
        return "nice -10"
    return "default"


@dataclass(frozen=True)
class ProbeProgress:
    """Live counters (for predicates and progress lines; verdicts come from the records)."""

    scheduled: int
    completed: int
    failed: int
    in_flight: int
    last_ok: float | None  # done time (s since t0) of the latest success


class Prober:
    """An open-loop, constant-rate prober in a background thread. Keyword-only; ``transport`` is for tests.

    ``isolate`` keeps the schedule honest on a busy machine and in a busy Python process while it runs:
    the prober's thread (only it) gets the lowest real-time priority (``SCHED_RR`` 1; else nice -10; else
    nothing, where not permitted), so Caddy and the stand-ins on the same cores cannot delay its sends;
    one full garbage collection then ``gc.freeze()`` (no 50 ms collections of old objects); a 1 ms GIL
    switch interval. ``stop()`` undoes the last two. The thread uses a bounded share of one core (its rate).
    """

    def __init__(
        self,
        *,
        url: str,
        rate: float,
        out_dir: Path,
        upstream_header: str = "X-Upstream",
        mix: Sequence[str] = DEFAULT_MIX,
        timeout: float = 2.0,
        client_timeout: float | None = None,
        max_requests: int = 1_000_000,
        max_duration: float = 600.0,
        stale_slots: int = 150,
        max_in_flight: int | None = None,
        max_failures_listed: int = 50,
        flush_interval: float = 0.2,
        isolate: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        keep_alive: bool = True,
    ) -> None:
        unknown = [k for k in mix if k not in KINDS]
        problems = [
            *(["url must start with http:// or https://"] if not url.startswith(("http://", "https://")) else []),
            *(["rate must be > 0"] if not rate > 0 else []),
            *(["timeout must be > 0"] if not timeout > 0 else []),
            *([f"client_timeout must be > 0 and <= timeout ({timeout:g} s): the transport must wait longer than "
               "a client so a late answer is still measured"]
              if client_timeout is not None and not 0 < client_timeout <= timeout else []),
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
        self.client_timeout = float(client_timeout) if client_timeout is not None else self.timeout
        self.max_requests = int(max_requests)
        self.max_duration = float(max_duration)
        self.stale_slots = int(stale_slots)
        self.max_in_flight = max_in_flight or max(64, math.ceil(self.rate * 0.5))
        self.max_failures_listed = max_failures_listed
        self.flush_interval = flush_interval
        self.isolate = isolate
        # False: a connection per request, as a client like `seid status` or curl opens one (no reused connection
        # to lose at a server's close of its idle ones)
        self.keep_alive = keep_alive
        self._transport = transport
        # request i is due at t0 + i / rate, for i < n_total
        self.n_total = min(self.max_requests, max(1, math.ceil(self.max_duration * self.rate - 1e-9)))
        self.t0 = 0.0  # monotonic, set when the loop starts
        self.started_at = 0.0  # wall clock at t0
        self.summary: ProbeSummary | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._events_fh: IO[str] | None = None
        self._events_lock = threading.Lock()
        self._switch_interval = sys.getswitchinterval()
        self.thread_priority = "default"
        # state of the loop thread
        self._next = self._completed = self._failed = self._in_flight = 0
        self._last_ok: float | None = None
        self._max_slot = -1
        self._halting = False
        self._timer: asyncio.TimerHandle | None = None
        self._halted: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fh: IO[str] | None = None
        self._lanes: list[CoreLane] = []
        self._idle: list[CoreLane | TransportLane] = []  # a stack: the warmest connection on top
        self._new_lane: Any = None

    def __repr__(self) -> str:
        return f"Prober(url={self.url!r}, rate={self.rate:g}, out_dir={str(self.out_dir)!r})"

    # ------------------------------------------------------------------ public surface
    def start(self) -> Prober:
        if self._thread is not None:
            raise RunbookError("prober already started", obj=self.url)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._fh = (self.out_dir / REQUESTS_FILE).open("w", encoding="utf-8", buffering=1 << 20)
        self._events_fh = (self.out_dir / EVENTS_FILE).open("w", encoding="utf-8")
        if self.isolate:
            gc.collect()
            gc.freeze()
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(0.001)
        self._thread = threading.Thread(target=self._thread_main, name=f"prober {self.url}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            self._restore()
            raise RunbookError(f"prober failed to start: {self._error!r}", obj=self.url) from self._error
        (self.out_dir / META_FILE).write_text(json.dumps({
            "url": self.url, "rate": self.rate, "t0_monotonic": self.t0, "started_at": self.started_at,
            "mix": [k.name for k in self.mix], "timeout": self.timeout,
            "client_timeout": self.client_timeout, "max_requests": self.max_requests,
            "max_duration": self.max_duration, "stale_slots": self.stale_slots, "max_in_flight": self.max_in_flight,
            "upstream_header": self.upstream_header, "isolate": self.isolate, "thread_priority": self.thread_priority,
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
        self._restore()
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

    def _restore(self) -> None:
        if self.isolate:
            gc.unfreeze()
            sys.setswitchinterval(self._switch_interval)

    # ------------------------------------------------------------------ the loop thread
    def _thread_main(self) -> None:
        if self.isolate:
            self.thread_priority = _raise_priority()
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            if self._fh is not None and not self._fh.closed:
                self._fh.close()
            self._started.set()
            self._finished.set()

    def _prepare(self) -> None:
        """Requests, lanes' factory and lazy imports: everything a first request would otherwise pay for."""
        for module in _WARM:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        timeouts = {"connect": self.timeout, "read": self.timeout, "write": self.timeout, "pool": self.timeout}
        requests = [httpx.Request(k.method, self.url + k.path, content=k.body(), extensions={"timeout": timeouts},
                                  headers={"user-agent": "runbook-prober/1", "accept": "*/*",
                                           **({"content-type": "application/json"} if k.body() is not None else {})})
                    for k in self.mix]
        if self._transport is not None:
            self._idle = [TransportLane(self._transport, requests, self.upstream_header)] * self.max_in_flight
            return
        core = [httpcore.Request(r.method, httpcore.URL(scheme=r.url.raw_scheme, host=r.url.raw_host,
                                                        port=r.url.port, target=r.url.raw_path),
                                 headers=r.headers.raw, content=r.content, extensions=r.extensions)
                for r in requests]
        https = requests[0].url.scheme == "https"
        context = httpx.create_ssl_context() if https else None
        header = self.upstream_header.lower().encode()

        def new_lane() -> CoreLane:
            pool = httpcore.AsyncConnectionPool(
                ssl_context=context, max_connections=1, max_keepalive_connections=1 if self.keep_alive else 0,
                keepalive_expiry=5.0,
                retries=0, network_backend=None if https else AsyncioBackend())
            lane = CoreLane(pool, core, header)
            self._lanes.append(lane)
            return lane

        self._new_lane = new_lane

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._prepare()
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
            for lane in self._lanes:
                with contextlib.suppress(Exception):
                    await lane.aclose()
            assert self._fh is not None
            self._fh.flush()

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
            if self._idle:
                lane = self._idle.pop()
            elif self._in_flight < self.max_in_flight and self._new_lane is not None:
                lane = self._new_lane()
            else:
                self._record(seq, None, now, None, None, "overload",
                             f"{self._in_flight} requests in flight (max_in_flight={self.max_in_flight})")
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
        if self._fh is not None and not self._fh.closed and not self._halting:
            self._fh.flush()
            asyncio.get_running_loop().call_later(self.flush_interval, self._flush_tick)

    async def _one(self, seq: int, lane: CoreLane | TransportLane) -> None:
        index = seq % len(self.mix)
        status: int | None = None
        upstream: str | None = None
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                status, upstream, body = await lane.fetch(index)
            verdict, error, slot = judge(self.mix[index], status, body, max_slot=self._max_slot,
                                         stale_slots=self.stale_slots)
            if slot is not None and slot > self._max_slot:
                self._max_slot = slot
        except TIMEOUTS as exc:
            verdict, error = "timeout", f"{type(exc).__name__}: no answer within {self.timeout:g} s"
        except CONN_ERRORS as exc:
            verdict, error = "conn_error", f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            verdict, error = "timeout", "cancelled: the prober stopped before an answer"
        except Exception as exc:  # anything else is still a failed request, never a crashed prober
            verdict, error = "conn_error", f"{type(exc).__name__}: {exc}"
        done = time.monotonic()
        self._in_flight -= 1
        self._idle.append(lane)
        retried = getattr(lane, "retried", "")
        answer = ""
        if verdict == "ok" and retried:  # answered, but only on the prober's own retry
            answer, verdict = verdict, "needed_retry"
            error = f"lost to a client that does not retry: {retried}"
        elif verdict == "ok" and done - sent > self.client_timeout:
            answer, verdict = verdict, "late"
            error = (f"answered after {done - sent:.3f} s, later than a client's {self.client_timeout:g} s timeout "
                     "(the client had given up)")
        self._record(seq, sent, done, status, upstream, verdict, error, retried=retried, answer=answer)

    def _record(self, seq: int, sent: float | None, done: float, status: int | None, upstream: str | None,
                verdict: str, error: str, retried: str = "", answer: str = "") -> None:
        t0 = self.t0
        ok = verdict == "ok"
        self._completed += 1
        if ok:
            self._last_ok = done - t0
        else:
            self._failed += 1
        rec: dict[str, Any] = {
            "seq": seq, "sched": round(seq / self.rate, 6), "sent": None if sent is None else round(sent - t0, 6),
            "done": round(done - t0, 6), "latency_ms": None if sent is None else round((done - sent) * 1000.0, 3),
            "kind": self.mix[seq % len(self.mix)].name, "status": status, "upstream": upstream, "ok": ok,
            "verdict": verdict, "error": error,
        }
        if retried:
            rec["retried"] = retried
        if answer:
            rec["answer"] = answer
        assert self._fh is not None
        self._fh.write(_ENCODER.encode(rec) + "\n")
