"""What a procedure run came to, read from what the framework recorded (its :class:`RunResult` and journal).

A failed run that was rolled back proves nothing by itself: every failure is rolled back the same way, so
:func:`failed_and_rolled_back` needs the failure the scenario provoked (:class:`ExpectedFailure`) and fails
when the run failed at another step or for another reason (issue 8: a bad image failed deploy-idle, was
rolled back, and a "never catches up" scenario passed for the wrong reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runbook.checks.core import Verdict, check, verdict
from runbook.checks.failure_cause import ExpectedFailure, failure_cause_problems
from runbook.procedures.framework import RunResult

__all__ = ["completed", "failed_and_rolled_back", "refused"]


def _steps(result: RunResult | None) -> list[str]:
    return [f"{s.name}: {s.status} ({s.seconds:.1f}s) {s.error}".strip() for s in (result.steps if result else [])]


@check(negative="tests/checks/test_outcome.py::test_a_run_that_stopped_or_failed_is_not_complete")
def completed(result: RunResult | None, *, procedure: str, steps: Sequence[str], interrupted: str = "") -> Verdict:
    """Every step of the procedure ran to done (or was found done on a resume), in its order, and nothing
    failed."""
    observed = {s.name: s.status for s in result.steps} if result else {"interrupted": interrupted}
    expected = {name: "done" for name in steps}
    problems = []
    if result is None:
        problems.append(f"{procedure} did not finish: {interrupted or 'no result'}")
    else:
        if not result.ok:
            problems.append(f"{procedure} failed: {result.error}")
        missing = [n for n in steps if observed.get(n) not in ("done", "skipped (already done)")]
        if missing:
            problems.append(f"steps not done: {missing}")
    return verdict(f"{procedure} step outcomes", expected=expected, observed=observed, problems=problems,
                   obj=procedure)


@check(negative=("tests/checks/test_outcome.py::test_a_rollback_for_another_reason_fails",
                 "tests/checks/test_outcome.py::test_no_named_failure_is_refused"))
def failed_and_rolled_back(result: RunResult | None, journal: Mapping[str, Any],
                           expected: ExpectedFailure | None) -> Verdict:
    """The run failed for the reason the scenario provoked (that step, past its deadline, with the last state
    it names), then its rollback ran and the journal says rolled back. Without a named failure the check
    refuses: "failed and rolled back" alone passes for any failure."""
    if expected is None:
        raise TypeError("failed_and_rolled_back needs the failure the scenario provoked (an ExpectedFailure): "
                        "a rollback after any failure proves nothing")
    named = (f"{expected.step} failed at its {expected.deadline:g}s deadline"
             + (f", {expected.last_state_means}" if expected.last_state_means else "") + "; then rolled back")
    problems = []
    if result is None:
        problems.append("the procedure did not finish (interrupted)")
    else:
        if result.ok:
            problems.append("the procedure succeeded")
        if not result.rolled_back:
            problems.append("no automatic rollback ran")
        problems += failure_cause_problems(result, expected)
    if journal.get("status") != "rolled back":
        problems.append(f"the journal says {journal.get('status')!r}, not 'rolled back'")
    return verdict("procedure result: what failed, and the rollback", expected=named,
                   observed={"error": result.error if result else None, "steps": _steps(result),
                             "journal": journal.get("status")}, problems=problems, obj=expected.step)


@check(negative="tests/checks/test_outcome.py::test_a_rollback_that_ran_is_not_refused")
def refused(error: BaseException | None, *, what: str, because: str) -> Verdict:
    """``what`` was refused with an error saying ``because`` (None: it ran)."""
    said = str(error) if error is not None else "ran"
    problems = [] if error is not None and because in said else [
        f"{what} was not refused for {because!r}: {said}"]
    return verdict(what, expected=f"refused: {because}", observed=said, problems=problems)
