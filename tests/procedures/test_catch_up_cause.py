"""The stuck-build scenario passes only for the reason its Gherkin names: the clone never catches up within
the catch-up deadline. Before, "the upgrade failed and was rolled back automatically" held for any failure:
on kind, where the stuck image was never built, the upgrade failed at ErrImagePull in deploy-idle, was
rolled back, and the scenario passed for the wrong reason.

Unit tests on the recorded outcomes, and one run on the local testbed of an upgrade to an image that does
not exist (ImagePullBackOff at deploy-idle): that run must not satisfy the scenario's Then step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.factory import Adapters
from runbook.checks.failure_cause import ExpectedFailure, failure_cause_problems, never_caught_up
from runbook.errors import CheckFailed, StepRefused
from runbook.evidence.recorder import Recorder
from runbook.procedures import agave_upgrade as up
from runbook.procedures import journal_for
from runbook.procedures.bluegreen import image_with_tag
from runbook.procedures.framework import Context, RunResult, StepOutcome
from steps.upgrade import UpgradeRun, failed_and_rolled_back
from tests.baseline_fakes import make_env

CATCH_UP = never_caught_up(12.0)  # what the stuck scenario's When step expects
BEFORE = [StepOutcome(n, "done", 0.2) for n in ("snapshot", "clone", "copy-accounts", "deploy-idle")]
TIMEOUT_AT_CATCH_UP = StepOutcome(
    "catch-up", "failed", 12.3, "timed out waiting for blue to catch up (health ok, within 30 slots, version 2.2.1) "
    "(waited 12.0s; last state: NodeState(colour='blue', health='behind', ...)) [env=local, procedure=agave-upgrade, "
    "step=catch-up]")
IMAGE_PULL_AT_DEPLOY = StepOutcome(
    "deploy-idle", "failed", 300.4, "timed out waiting for rollout of deployment agave-blue (waited 300.0s; last "
    "state: agave-blue-1 Pending agave-validator=waiting:ImagePullBackOff) [env=kind, obj=deployment/agave-blue]")
ROLLED_BACK = StepOutcome("(rollback)", "rolled back")


def result(*steps: StepOutcome) -> RunResult:
    failed = next(s for s in steps if s.status == "failed")
    return RunResult("agave-upgrade", False, list(steps), failed.error, rolled_back=True)


def test_a_catch_up_deadline_is_the_named_cause() -> None:
    assert failure_cause_problems(result(*BEFORE, TIMEOUT_AT_CATCH_UP, ROLLED_BACK), CATCH_UP) == []


def test_an_image_pull_failure_at_deploy_is_not() -> None:
    problems = failure_cause_problems(result(*BEFORE[:3], IMAGE_PULL_AT_DEPLOY, ROLLED_BACK), CATCH_UP)
    assert len(problems) == 1 and problems[0].startswith("failed at deploy-idle, not at catch-up: timed out waiting "
                                                         "for rollout")


def test_a_catch_up_that_fails_before_its_deadline_is_not() -> None:
    early = dataclasses.replace(TIMEOUT_AT_CATCH_UP, seconds=3.0,
                                error="blue answers 'down' [env=local, procedure=agave-upgrade, step=catch-up]")
    assert failure_cause_problems(result(*BEFORE, early, ROLLED_BACK), CATCH_UP) == [
        "catch-up failed, but not by its deadline: blue answers 'down' [env=local, procedure=agave-upgrade, "
        "step=catch-up]"]
    short = dataclasses.replace(TIMEOUT_AT_CATCH_UP, seconds=5.0)
    assert failure_cause_problems(result(*BEFORE, short, ROLLED_BACK), CATCH_UP) == [
        "catch-up timed out after 5.0s, before its 12s deadline"]


def test_a_catch_up_timeout_with_the_clone_healthy_is_not() -> None:
    """Healthy and close to the tip, yet the wait timed out (e.g. on the version): not a build that never
    catches up."""
    healthy = dataclasses.replace(TIMEOUT_AT_CATCH_UP, error=TIMEOUT_AT_CATCH_UP.error.replace("health='behind'",
                                                                                               "health='ok'"))
    problems = failure_cause_problems(result(*BEFORE, healthy, ROLLED_BACK), CATCH_UP)
    assert len(problems) == 1 and problems[0].startswith(
        "catch-up timed out, but its last state was not the idle colour still not healthy: NodeState(colour='blue', "
        "health='ok'")
    assert ExpectedFailure("catch-up", 12.0) != CATCH_UP and failure_cause_problems(
        result(*BEFORE, healthy, ROLLED_BACK), ExpectedFailure("catch-up", 12.0)) == []


@dataclasses.dataclass
class _Env:
    env: Any


def _then(tmp_path: Path, run: RunResult, expected: ExpectedFailure | None) -> Recorder:
    env = make_env(tmp_path)
    journal_for(env, "agave-upgrade").save({"procedure": "agave-upgrade", "status": "rolled back"})
    upgrade = UpgradeRun(Context(adapters=_Env(env), params={}), result=run, expected_failure=expected)
    evidence = Recorder("then")
    failed_and_rolled_back(upgrade, _Env(env), evidence)  # type: ignore[arg-type]
    return evidence


def test_the_then_step_refuses_a_rollback_caused_by_an_image_pull_failure(tmp_path: Path) -> None:
    wrong = result(*BEFORE[:3], IMAGE_PULL_AT_DEPLOY, ROLLED_BACK)
    with pytest.raises(StepRefused, match="needs a When step that names the failure it provokes"):
        _then(tmp_path, wrong, None)  # the old step: any automatic rollback passed
    with pytest.raises(CheckFailed, match=r"what failed, and the rollback: failed at deploy-idle, not at catch-up"):
        _then(tmp_path, wrong, CATCH_UP)
    evidence = _then(tmp_path, result(*BEFORE, TIMEOUT_AT_CATCH_UP, ROLLED_BACK), CATCH_UP)
    compares = [e.data for e in evidence.current.entries if e.kind == "compare"]
    assert compares[-1]["expected"] == ("catch-up failed at its 12s deadline, the idle colour still not healthy; "
                                        "then rolled back")
    assert compares[-1]["observed"]["steps"] == [
        "snapshot: done (0.2s)", "clone: done (0.2s)", "copy-accounts: done (0.2s)", "deploy-idle: done (0.2s)",
        f"catch-up: failed (12.3s) {TIMEOUT_AT_CATCH_UP.error}", "(rollback): rolled back (0.0s)"]
    assert (compares[-1]["ok"], compares[-1]["check"]) == (True, "outcome.failed_and_rolled_back")


@pytest.mark.mutating
@pytest.mark.integration
@pytest.mark.slow
def test_a_real_image_pull_failure_does_not_satisfy_the_stuck_scenario(adapters: Adapters, tmp_path: Path) -> None:
    """On the local testbed: the upgrade to an image no registry has fails at deploy-idle (ImagePullBackOff),
    is rolled back automatically, and the stuck scenario's Then step refuses it."""
    env = adapters.env
    short = dataclasses.replace(adapters, env=env.model_copy(update={"timeouts": env.timeouts.model_copy(
        update={"rollout": 4.0})}))

    def prepare_missing_image(ctx: Context) -> None:
        up.prepare(ctx)
        ctx.facts.target_image = image_with_tag("laconicnetwork/agave-nosuch:v0", ctx.facts.target_version)

    proc = dataclasses.replace(up.PROCEDURE, prepare=prepare_missing_image)
    journal = journal_for(env, proc.name)
    journal.clear()
    notes: list[str] = []
    ran = proc.run(Context(adapters=short, params={"target_version": "v2.2.1"}, progress=notes.append),
                   journal=journal)
    assert not ran.ok and ran.rolled_back, ran
    failed = next(s for s in ran.steps if s.status == "failed")
    assert failed.name == "deploy-idle" and "ImagePullBackOff" in failed.error, failed
    with pytest.raises(CheckFailed, match="failed at deploy-idle, not at catch-up"):
        failed_and_rolled_back(UpgradeRun(Context(adapters=short, params={}), result=ran, expected_failure=CATCH_UP),
                               short, Recorder("then"))
