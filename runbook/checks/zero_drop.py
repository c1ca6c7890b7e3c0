"""Zero-drop verdicts over a prober's records: nothing failed, and who served which phase."""

from __future__ import annotations

from runbook.errors import CheckFailed
from runbook.probes.summary import ProbeSummary


def check_no_failures(summary: ProbeSummary) -> None:
    """Every request answered, with a good body (a `behind` or stale answer is a failure too)."""
    if summary.total == 0:
        raise CheckFailed("the prober sent no request: a zero-drop verdict on nothing proves nothing",
                          expected=">0 requests", observed=0)
    if summary.failed:
        raise CheckFailed(f"{summary.failed} of {summary.total} requests failed through the ingress:\n"
                          + summary.describe(), expected=0, observed=summary.failed)


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


def check_served_only_by(counts: dict[str, int], upstream: str, *, when: str) -> None:
    others = {u: n for u, n in counts.items() if u != upstream}
    if not counts.get(upstream) or others:
        raise CheckFailed(f"{when}: expected every request served by {upstream}, saw {counts}",
                          expected={upstream: "all"}, observed=counts)
