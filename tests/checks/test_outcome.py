"""Procedure outcomes: each check fails on its trap (runbook.checks.outcome)."""

from __future__ import annotations

import pytest

from runbook.checks import outcome
from runbook.checks.failure_cause import never_caught_up
from runbook.errors import RunbookError
from runbook.procedures.framework import RunResult, StepOutcome

STEPS = ["snapshot", "clone", "deploy-idle", "catch-up", "shift"]
TIMEOUT = "timed out waiting for agave-blue to catch up (waited 30.0s; last state: NodeState(health='behind'))"


def test_a_run_that_stopped_or_failed_is_not_complete() -> None:
    done = RunResult("agave-upgrade", True, [StepOutcome(s, "done") for s in STEPS])
    assert outcome.completed(done, procedure="agave-upgrade", steps=STEPS).ok
    resumed = RunResult("agave-upgrade", True, [StepOutcome(s, "skipped (already done)") for s in STEPS])
    assert outcome.completed(resumed, procedure="agave-upgrade", steps=STEPS).ok
    short = RunResult("agave-upgrade", True, [StepOutcome(s, "done") for s in STEPS[:3]])
    assert "steps not done: ['catch-up', 'shift']" in outcome.completed(short, procedure="agave-upgrade",
                                                                         steps=STEPS).problems
    failed = RunResult("agave-upgrade", False, [StepOutcome("snapshot", "failed", error="x")], error="x")
    assert not outcome.completed(failed, procedure="agave-upgrade", steps=STEPS).ok
    assert not outcome.completed(None, procedure="agave-upgrade", steps=STEPS, interrupted="after clone").ok


def _failed_at(step: str, error: str, seconds: float = 31.0) -> RunResult:
    steps = [StepOutcome(s, "done") for s in STEPS[:STEPS.index(step)]]
    return RunResult("agave-upgrade", False, [*steps, StepOutcome(step, "failed", seconds, error),
                                               StepOutcome("(rollback)", "rolled back")], error, rolled_back=True)


def test_a_rollback_for_another_reason_fails() -> None:
    want = never_caught_up(30.0)
    rolled = {"status": "rolled back"}
    assert outcome.failed_and_rolled_back(_failed_at("catch-up", TIMEOUT), rolled, want).ok
    pull = outcome.failed_and_rolled_back(_failed_at("deploy-idle", "ErrImagePull"), rolled, want)
    assert any("failed at deploy-idle, not at catch-up" in p for p in pull.problems), pull
    early = outcome.failed_and_rolled_back(_failed_at("catch-up", TIMEOUT, seconds=3.0), rolled, want)
    assert any("before its 30s deadline" in p for p in early.problems)
    not_rolled = outcome.failed_and_rolled_back(_failed_at("catch-up", TIMEOUT), {"status": "failed"}, want)
    assert any("journal says 'failed'" in p for p in not_rolled.problems)
    ok_run = RunResult("agave-upgrade", True, [StepOutcome(s, "done") for s in STEPS])
    assert "the procedure succeeded" in outcome.failed_and_rolled_back(ok_run, rolled, want).problems


def test_no_named_failure_is_refused() -> None:
    with pytest.raises(TypeError, match="proves nothing"):
        outcome.failed_and_rolled_back(_failed_at("catch-up", TIMEOUT), {"status": "rolled back"}, None)


def test_a_rollback_that_ran_is_not_refused() -> None:
    assert outcome.refused(RunbookError("cannot roll back: gone"), what="rollback", because="cannot roll back").ok
    assert not outcome.refused(None, what="rollback", because="cannot roll back").ok
    assert not outcome.refused(RunbookError("lock held"), what="rollback", because="cannot roll back").ok
