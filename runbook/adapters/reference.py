"""The cluster tip from public reference RPCs (``cluster_rpc``), polled the way a public RPC tolerates.

api.mainnet-beta.solana.com rate-limits per client address and answers HTTP 429 with a ``Retry-After``
header above a few requests a second (design trap 13). A catch-up that lasts hours must not hammer it::

    with ReferenceTip(["https://api.mainnet-beta.solana.com", "https://other.example"], poll=2.0) as ref:
        reading = ref.read()          # None until a reference answered
        reading.slot, reading.trusted

- at most one reference call per ``poll`` seconds (plus the fail-over calls of that poll), each reference
  over one kept-alive connection (one :class:`~runbook.adapters.rpc.RpcClient`, i.e. one httpx.Client);
- a reference that answers 429, 5xx, anything unreadable or nothing is left alone for its ``Retry-After``
  (or ``poll`` doubled per consecutive failure without one), capped at ``max_backoff``; the next reference
  in the list is asked in its place (fail-over); the first one is preferred again once its back-off ends;
- between answers the tip is estimated from the last answer and the slot rate measured between answers
  (the cluster's own pace, not a configured slot time). A reading is *trusted* (may declare a node caught
  up) only when the slot rate is measured (two answers) and its last answer is at most ``fresh`` seconds
  old (default two polls: one missed poll tolerated); an older estimate is shown, never acted on;
- :meth:`ReferenceTip.stats` says what this cost the references: calls, calls per minute, 429s, errors.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from runbook.adapters.rpc import HttpStatusError, RpcClient, RpcError
from runbook.errors import AdapterError

MAX_BACKOFF = 60.0  # a Retry-After longer than this is capped: the catch-up keeps trying other references
RATE_WINDOW = 60.0  # the slot rate is measured over the answers of the last minute
RATE_LIMITED = 429  # HTTP status, and the JSON-RPC error code some providers put in a 200's body


@dataclass(frozen=True)
class TipReading:
    """The cluster tip at the moment of :meth:`ReferenceTip.read`."""

    slot: int  # answered, or estimated from the last answer and the measured slot rate
    answered: int  # the slot the last answer gave
    age: float  # seconds since that answer
    url: str  # which reference gave it
    trusted: bool  # slot rate measured and the answer at most ``fresh`` seconds old

    @property
    def estimated(self) -> bool:
        return self.slot != self.answered


@dataclass
class _Reference:
    url: str
    client: RpcClient
    calls: int = 0
    answers: int = 0
    rate_limited: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    resume_at: float = 0.0  # monotonic time before which this reference is left alone (its back-off)
    last_problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "answers": self.answers, "429s": self.rate_limited, "errors": self.errors,
                **({"last problem": self.last_problem} if self.last_problem else {})}


@dataclass
class ReferenceTip:
    """The cluster tip from ``urls`` (in order of preference); see the module docstring."""

    urls: Sequence[str]
    poll: float
    fresh: float | None = None
    timeout: float = 5.0
    max_backoff: float = MAX_BACKOFF
    clock: Callable[[], float] = time.monotonic
    transport: httpx.BaseTransport | None = None  # tests only
    _refs: list[_Reference] = field(init=False)
    _answers: collections.deque[tuple[float, int, str]] = field(init=False)
    _call_times: list[float] = field(init=False, default_factory=list)
    _next_poll: float = field(init=False, default=0.0)
    _started: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("ReferenceTip needs at least one reference URL")
        if self.poll <= 0:
            raise ValueError(f"poll must be positive, got {self.poll}")
        if self.fresh is None:
            self.fresh = 2 * self.poll
        self._refs = [_Reference(u, RpcClient(url=u, timeout=self.timeout, transport=self.transport))
                      for u in self.urls]
        self._answers = collections.deque()
        self._started = self.clock()

    @classmethod
    def for_env(cls, env: Any) -> ReferenceTip:
        """The env's references (``cluster_rpc``) at its ``reference_poll``."""
        return cls(list(env.cluster_rpc), poll=float(env.reference_poll))

    # ---- lifecycle
    def close(self) -> None:
        for ref in self._refs:
            ref.client.close()

    def __enter__(self) -> ReferenceTip:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- reading
    def read(self) -> TipReading | None:
        """The tip now: a reference is asked only when a poll is due, else the last answer is extrapolated."""
        now = self.clock()
        if now >= self._next_poll and self._ask(now):
            self._next_poll = now + self.poll  # a poll that asked no one (all backing off) stays due
        return self.reading()

    def reading(self) -> TipReading | None:
        """The tip estimated from what the references answered so far (no call)."""
        if not self._answers:
            return None
        now = self.clock()
        t, slot, url = self._answers[-1]
        age = max(0.0, now - t)
        rate = self.slot_rate()
        estimate = slot + int(rate * age) if rate is not None else slot
        assert self.fresh is not None
        return TipReading(slot=estimate, answered=slot, age=age, url=url,
                          trusted=rate is not None and age <= self.fresh)

    def slot_rate(self) -> float | None:
        """Slots per second between the oldest answer of the last minute and the newest; None until two
        answers at least half a poll apart."""
        if len(self._answers) < 2:
            return None
        t1, s1, _ = self._answers[-1]
        t0, s0, _ = next(a for a in self._answers if t1 - a[0] <= RATE_WINDOW)
        if t1 - t0 < self.poll / 2:
            return None
        return max(0.0, (s1 - s0) / (t1 - t0))

    def _ask(self, now: float) -> bool:
        """Ask the first reference not backing off, then the next on failure; False if none was asked."""
        asked = False
        for ref in self._refs:
            if now < ref.resume_at:
                continue
            ref.calls += 1
            asked = True
            self._call_times.append(now)
            try:
                slot = ref.client.get_slot()
            except AdapterError as exc:
                self._failed(ref, exc, self.clock())
                now = self.clock()
                continue  # fail over to the next reference
            ref.answers += 1
            ref.consecutive_failures = 0
            answered_at = self.clock()
            self._answers.append((answered_at, slot, ref.url))
            while self._answers and answered_at - self._answers[0][0] > RATE_WINDOW + self.poll:
                self._answers.popleft()
            break
        return asked

    def _failed(self, ref: _Reference, exc: AdapterError, now: float) -> None:
        ref.consecutive_failures += 1
        retry_after: float | None = None
        if isinstance(exc, HttpStatusError) and exc.status_code == RATE_LIMITED:
            ref.rate_limited += 1
            retry_after = exc.retry_after
        elif isinstance(exc, RpcError) and exc.code == RATE_LIMITED:  # some providers: HTTP 200, error 429
            ref.rate_limited += 1
        else:
            ref.errors += 1
        backoff = retry_after if retry_after is not None else self.poll * 2 ** (ref.consecutive_failures - 1)
        ref.resume_at = now + min(max(backoff, self.poll), self.max_backoff)
        ref.last_problem = str(exc)[:300]

    # ---- what it cost
    def stats(self) -> dict[str, Any]:
        """Calls made, per minute over the time since the first read, the busiest minute and second, 429s."""
        now = self.clock()
        calls = len(self._call_times)
        span = max(now - self._started, 1e-6)
        return {
            "references": [r.url for r in self._refs],
            "poll (s)": self.poll,
            "seconds": round(span, 1),
            "calls": calls,
            "calls per minute": round(calls * 60.0 / max(span, self.poll), 1),
            "most calls in one minute": _busiest(self._call_times, 60.0),
            "most calls in one second": _busiest(self._call_times, 1.0),
            "429s": sum(r.rate_limited for r in self._refs),
            "errors": sum(r.errors for r in self._refs),
            "per reference": {r.url: r.as_dict() for r in self._refs},
        }

    def summary(self) -> str:
        s = self.stats()
        return (f"reference: {s['calls']} calls ({s['calls per minute']:g}/min, poll {self.poll:g}s), "
                f"{s['429s']} answered 429, {s['errors']} errors")


def _busiest(times: Sequence[float], window: float) -> int:
    """Most entries of the sorted ``times`` within any ``window`` seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def backoff_cap_note(poll: float) -> str:
    return f"every {poll:g}s at most, back-off on 429/5xx honouring Retry-After (capped at {MAX_BACKOFF:g}s)"
