"""Did a procedure fail for the reason a scenario names? A rollback alone proves nothing: a failure at any
step is rolled back the same way (issue 8: on kind the never-catching-up build was never built, the upgrade
failed at ErrImagePull in deploy-idle, was rolled back, and the scenario passed for the wrong reason).

Read from what the framework records (:class:`runbook.procedures.framework.RunResult`): which step failed,
after how long, with which error; the error of a deadline is :class:`runbook.errors.WaitTimeout`'s, which
carries the last state observed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runbook.procedures.framework import RunResult, StepOutcome

DONE = ("done", "skipped (already done)")


@dataclass(frozen=True)
class ExpectedFailure:
    """The failure a scenario's Gherkin names: ``step`` of the procedure failed because its deadline of
    ``deadline`` seconds passed (not because anything before it, or anything else in it, failed), with the
    last state it observed matching ``last_state`` (a regex: what was still not true at the deadline)."""

    step: str
    deadline: float
    last_state: str = ""
    last_state_means: str = ""


def never_caught_up(deadline: float) -> ExpectedFailure:
    """The agave upgrade's catch-up deadline passed with the idle colour still not healthy (its last
    observation, a NodeState, not ``ok``): a build that never catches up."""
    return ExpectedFailure(step="catch-up", deadline=deadline, last_state=r"health='(behind|unknown|down|error)'",
                           last_state_means="the idle colour still not healthy")


def failure_cause_problems(result: RunResult | None, expected: ExpectedFailure) -> list[str]:
    """Why ``result`` is not a failure at ``expected.step`` caused by its deadline (empty: it is). Every
    step before it must have completed (the image pulled, the pod rolled out), the failed step must be that
    one, and it must have failed by timing out no sooner than its deadline."""
    if result is None:
        return ["the procedure did not finish (interrupted)"]
    failed = [s for s in result.steps if s.status == "failed"]
    if len(failed) != 1:
        return [f"{len(failed)} failed steps: {[s.name for s in failed]}"]
    bad: StepOutcome = failed[0]
    names = [s.name for s in result.steps]
    if bad.name != expected.step:
        return [f"failed at {bad.name}, not at {expected.step}: {bad.error}"]
    problems = [f"{s.name} did not complete ({s.status}) before {expected.step}"
                for s in result.steps[:names.index(bad.name)] if s.status not in DONE]
    if not bad.error.startswith("timed out waiting for"):
        problems.append(f"{bad.name} failed, but not by its deadline: {bad.error}")
    elif bad.seconds < expected.deadline:
        problems.append(f"{bad.name} timed out after {bad.seconds:.1f}s, before its {expected.deadline:g}s deadline")
    else:
        last = bad.error.partition("; last state: ")[2]
        if expected.last_state and not re.search(expected.last_state, last):
            means = expected.last_state_means or expected.last_state
            problems.append(f"{bad.name} timed out, but its last state was not {means}: {last or bad.error}")
    return problems
