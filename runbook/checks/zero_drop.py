"""The zero-drop verdict over a prober's run, computed once (:func:`verdict`), and who served which phase.

Strict: it counts what a client that does not retry would lose. Per request (the prober's records): a
failed answer, no answer, an answer that needed the prober's own retry (``needed_retry``: a keep-alive
connection the server closed, e.g. at a Caddy config reload), an answer later than the client's timeout
(``late``). Over time: a gap between successful answers longer than ``max_gap`` (a stall is downtime, even
when every request is answered in the end). Per phase (the summary's, between the procedure's events): the
lost count by cause, the slowest answer against the client's timeout, the longest gap against its bound.
The lost requests are named one by one (the first :data:`LISTED`, then how many more), as the prober's
summary names them.

The :class:`Verdict` is what the report shows, as computed here (:meth:`Verdict.rows`); nothing re-derives it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runbook.adapters.caddy_config import upstream_key
from runbook.checks import core
from runbook.checks.core import check, check_rows
from runbook.errors import CheckFailed
from runbook.probes.summary import Gap, ProbeSummary, failed_requests, lost_by_cause

VERDICT_FILE = "verdict.json"
LISTED = 20
"""Lost requests named one by one in the verdict (the rest are counted; all are in the prober's records)."""


@dataclass(frozen=True)
class PhaseVerdict:
    name: str
    start: float | None
    end: float | None
    requests: int
    lost: dict[str, int]  # cause (the prober's verdict) -> count
    slowest_ms: float
    longest_gap: Gap
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Verdict:
    client_timeout: float  # s: the prober's (it judged each answer against it)
    max_gap: float  # s
    total: int
    phases: tuple[PhaseVerdict, ...]
    overall: PhaseVerdict
    lost_requests: tuple[str, ...] = ()  # the first LISTED lost requests, one line each, then how many more

    @property
    def ok(self) -> bool:
        return self.overall.ok and all(p.ok for p in self.phases)

    @property
    def lost(self) -> int:
        return sum(self.overall.lost.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "lost_total": self.lost}

    def bounds(self) -> dict[str, str]:
        return {"lost": "0", "slowest answer": f"<= {self.client_timeout * 1000:.0f} ms (client timeout)",
                "longest gap between successes": f"<= {self.max_gap * 1000:.0f} ms"}

    def rows(self) -> list[tuple[str, dict[str, str], dict[str, Any], bool]]:
        """(title, expected, observed, ok) per phase then overall: the report's table, as computed."""
        out = []
        for p in (*self.phases, self.overall):
            span = "" if p is self.overall else f" ({_t(p.start, 'start')}..{_t(p.end, 'end')})"
            gap = p.longest_gap
            observed = {"requests": p.requests,
                        "lost": sum(p.lost.values()), "lost by cause": p.lost or "none",
                        "slowest answer": f"{p.slowest_ms:.1f} ms",
                        "longest gap between successes": f"{gap.seconds * 1000:.1f} ms "
                                                         f"(t={gap.start:.3f}..{gap.end:.3f} s)"}
            out.append((f"zero-drop, phase {p.name!r}{span}", self.bounds(), observed, p.ok))
        return out

    def describe(self) -> str:
        head = (f"zero-drop verdict: {'PASS' if self.ok else 'FAIL'}: {self.lost} of {self.total} requests lost to a "
                f"client that does not retry, with a {self.client_timeout:g} s timeout; gap bound {self.max_gap:g} s")
        lines = [head]
        for title, _, seen, ok in self.rows():
            lines.append(f"  {'ok  ' if ok else 'FAIL'} {title}: lost {seen['lost']} ({seen['lost by cause']}), "
                         f"slowest {seen['slowest answer']}, longest gap {seen['longest gap between successes']}")
        for p in (*self.phases, self.overall):
            lines += [f"    {p.name}: {problem}" for problem in p.problems]
        if self.lost_requests:
            lines.append("  lost requests (seq, t, kind, verdict, upstream, status: error):")
            lines += self.lost_requests
        return "\n".join(lines)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / VERDICT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path


def _t(value: float | None, default: str) -> str:
    return default if value is None else f"{value:.3f}s"


def _judge(name: str, start: float | None, end: float | None, requests: int, verdicts: dict[str, int],
           slowest_ms: float, gap: Gap, *, client_timeout: float, max_gap: float) -> PhaseVerdict:
    lost = lost_by_cause(verdicts)
    problems = []
    if lost:
        problems.append(f"{sum(lost.values())} request(s) lost: " + ", ".join(f"{k} {v}" for k, v in lost.items()))
    if slowest_ms > client_timeout * 1000:
        problems.append(f"slowest answer {slowest_ms:.1f} ms, later than the client's {client_timeout:g} s timeout")
    if gap.seconds > max_gap:
        problems.append(f"{gap.seconds * 1000:.1f} ms without a successful answer (t={gap.start:.3f}..{gap.end:.3f} "
                        f"s), longer than the {max_gap:g} s bound")
    return PhaseVerdict(name, start, end, requests, lost, slowest_ms, gap, tuple(problems))


def verdict(summary: ProbeSummary, *, max_gap: float) -> Verdict:
    """The strict verdict of a run (the client timeout is the one the prober judged each answer with)."""
    bounds = {"client_timeout": summary.client_timeout, "max_gap": max_gap}
    phases = tuple(_judge(p.name, p.start, p.end, p.total, dict(p.verdicts), p.slowest_ms, p.longest_gap, **bounds)
                   for p in summary.phases)
    overall = _judge("whole run", None, None, summary.total, dict(summary.verdicts), summary.slowest_ms,
                     summary.longest_gap, **bounds)
    if summary.total == 0:
        overall = PhaseVerdict(overall.name, None, None, 0, {}, 0.0, overall.longest_gap,
                               ("the prober sent no request: a zero-drop verdict on nothing proves nothing",))
    listed = tuple(failed_requests(summary.failures, summary.failed, max_listed=LISTED))
    return Verdict(summary.client_timeout, max_gap, summary.total, phases, overall, listed)


@check_rows(negative=("tests/probes/test_zero_drop_verdict.py::test_one_lost_request_fails_its_phase_by_cause",
                      "tests/probes/test_zero_drop_verdict.py::test_a_stall_answered_within_the_client_timeout_fails_on_the_gap",
                      "tests/probes/test_zero_drop_verdict.py::test_no_request_is_no_verdict",
                      "tests/probes/test_verdict_caddy.py::test_a_config_reload_that_costs_a_request_is_caught"))
def no_request_lost(v: Verdict) -> list[core.Verdict]:
    """Zero drop, per phase and over the whole run: nothing lost to a client that does not retry, no answer
    later than its timeout, no gap between successes over the bound (the verdict computed once, shown per row;
    the lost requests named in the last row)."""
    out = []
    for (title, expected, observed, _), p in zip(v.rows(), (*v.phases, v.overall), strict=True):
        if p is v.overall and v.lost_requests:
            observed = {**observed, "lost requests": list(v.lost_requests)}
        out.append(core.verdict(title, expected=expected, observed=observed, problems=p.problems, obj=p.name))
    return out


def served_before_and_after(summary: ProbeSummary, *, cut_start: str, cut_end: str) -> tuple[dict[str, int],
                                                                                            dict[str, int]]:
    """Upstream counts of the phases wholly before the ``cut_start`` event and wholly after ``cut_end``."""
    times = {e.name: e.t for e in summary.events}
    missing = [n for n in (cut_start, cut_end) if n not in times]
    if missing:
        raise CheckFailed(f"the prober recorded no {missing} event", expected=[cut_start, cut_end],
                          observed=sorted(times))
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    for phase in summary.phases:
        if phase.end is not None and phase.end <= times[cut_start]:
            for up, n in phase.upstreams.items():
                before[up] = before.get(up, 0) + n
        if phase.start is not None and phase.start >= times[cut_end]:
            for up, n in phase.upstreams.items():
                after[up] = after.get(up, 0) + n
    return before, after


def served_only_by(counts: dict[str, int], upstream: str) -> bool:
    """Every request of ``counts`` (X-Upstream value -> requests) served by ``upstream``, at least one; loopback
    spellings are one host (Caddy's header names the upstream as its config writes it: ``localhost:8899``)."""
    mine = sum(n for u, n in counts.items() if upstream_key(u) == upstream_key(upstream))
    return bool(mine) and all(upstream_key(u) == upstream_key(upstream) for u in counts)


@check(negative=("tests/test_zero_drop_upstreams.py::test_the_other_colour_still_fails",
                 "tests/test_zero_drop_upstreams.py::test_none_served_fails"))
def served_only(counts: dict[str, int], upstream: str, *, when: str, colour: str = "") -> core.Verdict:
    """Every request of a phase served by one upstream, at least one request (loopback spellings one host)."""
    ok = served_only_by(counts, upstream)
    return core.verdict(f"served {when}", expected={upstream + (f" ({colour})" if colour else ""): "all"},
                        observed=counts, obj=upstream,
                        problems=[] if ok else [f"{when}: expected every request served by {upstream}, saw {counts}"])
