"""runbook.checks.hardfork: each check passes on what a good hard fork shows and fails on its trap (the names are
the ones the checks register as their negative tests)."""

from __future__ import annotations

from datetime import UTC, datetime

from runbook.adapters.base import ContainerStatus, JobCondition, JobPod, JobStatus, PodInfo
from runbook.checks import hardfork as hc
from runbook.procedures.framework import RunResult, StepOutcome
from runbook.procedures.hardfork_nodes import NodeView

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def pod(name: str, *, ip: str = "", ready: bool = True, state: str = "running", reason: str = "",
        restarts: int = 0, started: datetime = T0, phase: str = "Running") -> PodInfo:
    c = ContainerStatus(name="seid", kind="app", image="sei:v6.4.0", image_id="sha256:x", state=state,  # type: ignore[arg-type]
                        started_at=started, restart_count=restarts, ready=ready, reason=reason)
    return PodInfo(name=name, deployment="", phase=phase, containers=(c,), ip=ip, ready_condition=ready)


# ------------------------------------------------------------------------------------------- plan_ahead
def test_a_plan_ahead_of_the_chain_passes() -> None:
    assert hc.plan_ahead(("v6.4.0", 1000), tip=900).ok
    assert hc.plan_ahead(None, tip=900, halt_height=1000).ok
    assert hc.plan_ahead(("v6.4.0", 1000), tip=998, halt_height=1000).ok


def test_no_plan_and_no_height_is_refused() -> None:
    v = hc.plan_ahead(None, tip=900)
    assert not v.ok and "no upgrade plan" in v.problems[0]


def test_a_chain_past_h_minus_1_is_too_late() -> None:
    v = hc.plan_ahead(("v6.4.0", 1000), tip=999)
    assert not v.ok and "too late" in v.problems[0]


def test_a_given_height_that_differs_from_the_plan_is_refused() -> None:
    v = hc.plan_ahead(("v6.4.0", 1000), tip=900, halt_height=1200)
    assert not v.ok and "not the plan's (1000)" in v.problems[0]


# ------------------------------------------------------------------------------------------- bootstrap
def _job(**kw: object) -> JobStatus:
    base: dict[str, object] = {"name": "sei-rpc-v6-4-0-0-bootstrap", "active": 1, "succeeded": 0, "failed": 0}
    base.update(kw)
    return JobStatus(**base)  # type: ignore[arg-type]


def test_a_running_or_complete_bootstrap_is_not_failing() -> None:
    assert hc.bootstrap_not_failing("j", _job(), [pod("j-abc")]).ok
    done = _job(active=0, succeeded=1, conditions=(JobCondition("Complete", "True"),),
                pods=(JobPod("j-abc", "Succeeded", {"seid": 0}, {"seid": "Completed"}),))
    assert hc.bootstrap_not_failing("j", done, []).ok


def test_an_image_that_cannot_be_pulled_fails_the_bootstrap_at_once() -> None:
    v = hc.bootstrap_not_failing("j", _job(), [pod("j-abc", state="waiting", reason="ImagePullBackOff", ready=False,
                                                   phase="Pending")])
    assert not v.ok and "ImagePullBackOff" in v.problems[0]


def test_a_bootstrap_that_exited_1_fails() -> None:
    failed = _job(active=0, failed=1, conditions=(JobCondition("Failed", "True", "BackoffLimitExceeded",
                                                               "Job has reached the specified backoff limit"),),
                  pods=(JobPod("j-abc", "Failed", {"seid": 1}, {"seid": "Error"}),))
    v = hc.bootstrap_not_failing("j", failed, [])
    assert not v.ok
    assert any("BackoffLimitExceeded" in p for p in v.problems) and any("exited 1 (Error)" in p for p in v.problems)
    assert not hc.bootstrap_not_failing("j", None, []).ok


# ------------------------------------------------------------------------------------------- entrants_running
def _views(version: str = "v6.4.0", height: int = 1005, catching_up: bool = False) -> dict[str, NodeView]:
    return {n: NodeView(n, version, height, catching_up) for n in ("e-0", "e-1")}


def test_entrants_on_the_new_binary_past_h_with_the_mark_are_running() -> None:
    assert hc.entrants_running([pod("e-0"), pod("e-1")], _views(), replicas=2, version="v6.4.0", height=1000,
                               marks={"e-0": 1000, "e-1": 1000}).ok


def test_an_entrant_below_h_or_on_the_old_binary_is_not_running() -> None:
    pods, marks = [pod("e-0"), pod("e-1")], {"e-0": 1000, "e-1": 1000}
    below = hc.entrants_running(pods, _views(height=999), replicas=2, version="v6.4.0", height=1000, marks=marks)
    old = hc.entrants_running(pods, _views(version="v6.3.0"), replicas=2, version="v6.4.0", height=1000, marks=marks)
    short = hc.entrants_running(pods[:1], _views(), replicas=2, version="v6.4.0", height=1000, marks=marks)
    unready = hc.entrants_running([pod("e-0", ready=False), pod("e-1")], _views(), replicas=2, version="v6.4.0",
                                  height=1000, marks=marks)
    assert not below.ok and "not past H = 1000" in below.problems[0]
    assert not old.ok and "runs v6.3.0" in old.problems[0]
    assert not short.ok and "1 entrant pods of 2" in short.problems[0]
    assert not unready.ok and "e-0 is not Ready" in unready.problems[0]


def test_an_entrant_without_the_handlers_mark_is_not_running() -> None:
    v = hc.entrants_running([pod("e-0"), pod("e-1")], _views(), replicas=2, version="v6.4.0", height=1000,
                            marks={"e-0": 1000, "e-1": None})
    assert not v.ok and v.problems == ("e-1: the upgrade handler's mark is None, not H = 1000",)


# ------------------------------------------------------------------------------------------- service_pins
def test_a_service_on_the_entrants_ready_pods_pins_them() -> None:
    pods = [pod("e-0", ip="10.0.0.5"), pod("e-1", ip="10.0.0.6")]
    assert hc.service_pins("sei-rpc", {"app": "sei-rpc", "rev": "b"}, ["10.0.0.6:26657", "10.0.0.5:26657"],
                           label="rev", revision="b", pods=pods).ok


def test_a_service_still_on_the_incumbents_does_not_pin_the_entrants() -> None:
    v = hc.service_pins("sei-rpc", {"app": "sei-rpc", "rev": "a"}, ["10.0.0.5:26657"], label="rev", revision="b",
                        pods=[pod("e-0", ip="10.0.0.5")])
    assert not v.ok and "selects rev=a, not b" in v.problems[0]


def test_endpoints_of_the_other_revision_or_none_fail() -> None:
    pods = [pod("e-0", ip="10.0.0.5")]
    other = hc.service_pins("s", {"rev": "b"}, ["10.0.0.9:26657"], label="rev", revision="b", pods=pods)
    none = hc.service_pins("s", {"rev": "b"}, [], label="rev", revision="b", pods=pods)
    assert not other.ok and "are not b's ready pods" in other.problems[0]
    assert not none.ok and "no ready endpoint" in none.problems[0]


# ------------------------------------------------------------------------------------------- incumbents_untouched
def _snap(*pods: PodInfo) -> dict[str, object]:
    return hc.incumbents_snapshot(list(pods))


def test_incumbents_as_they_were_are_untouched() -> None:
    before = _snap(pod("i-0"), pod("i-1"))
    assert hc.incumbents_untouched(before, _snap(pod("i-0"), pod("i-1"))).ok


def test_a_restarted_incumbent_was_touched() -> None:
    before = _snap(pod("i-0"), pod("i-1"))
    after = _snap(pod("i-0"), pod("i-1", restarts=1, started=datetime(2026, 11, 30, 6, 5, tzinfo=UTC)))
    v = hc.incumbents_untouched(before, after)
    assert not v.ok and "i-1/seid restarted (0 -> 1 restarts" in v.problems[0]


def test_a_missing_or_stopped_incumbent_was_touched() -> None:
    before = _snap(pod("i-0"), pod("i-1"))
    v = hc.incumbents_untouched(before, _snap(pod("i-0", state="terminated")))
    assert not v.ok and v.problems == ("i-0/seid is terminated", "pod i-1 is gone")
    assert not hc.incumbents_untouched({}, {}).ok


# ------------------------------------------------------------------------------------------- endpoints, leftovers
def test_a_sample_with_no_endpoint_fails() -> None:
    good = [(1.0, 2, "r1"), (1.2, 4, "r1"), (1.4, 2, "v6-4-0")]
    assert hc.never_without_endpoints("sei-rpc", good).ok
    bad = hc.never_without_endpoints("sei-rpc", [*good, (1.6, 0, "r1"), (1.8, 2, "v6-4-0")])
    assert not bad.ok and "1 of 5 samples with no ready endpoint, first at t=1.600 (selector on r1)" in bad.problems[0]
    assert not hc.never_without_endpoints("sei-rpc", []).ok


def test_entrant_objects_left_fail() -> None:
    assert hc.entrants_gone("v6-4-0", []).ok
    v = hc.entrants_gone("v6-4-0", ["pvc/data-sei-rpc-v6-4-0-0"])
    assert not v.ok and "data-sei-rpc-v6-4-0-0" in v.problems[0]


# ------------------------------------------------------------------------------------------- failed_at
def _result(ok: bool, step: str = "await-running", error: str = "AwaitRunning deadline: ...",
            seconds: float = 40.0, rolled_back: bool = True) -> RunResult:
    steps = [StepOutcome("create-entrants", "done", 0.1), StepOutcome(step, "done" if ok else "failed", seconds,
                                                                      "" if ok else error)]
    return RunResult("hardfork-upgrade", ok, steps, "" if ok else error, rolled_back=rolled_back and not ok)


def test_a_run_that_failed_at_the_step_for_the_reason_passes() -> None:
    assert hc.failed_at(_result(False), step="await-running", reason="deadline", within=60).ok


def test_a_run_that_passed_or_failed_elsewhere_fails() -> None:
    assert "the run passed" in hc.failed_at(_result(True), step="await-running", reason="deadline").problems[0]
    other = hc.failed_at(_result(False, step="switch-traffic"), step="await-running", reason="deadline")
    assert not other.ok and "not await-running" in other.problems[0]
    why = hc.failed_at(_result(False, error="bootstrap j: pod failed"), step="await-running", reason="deadline")
    assert not why.ok and "does not name 'deadline'" in why.problems[0]
    kept = hc.failed_at(_result(False, rolled_back=False), step="await-running", reason="deadline")
    assert not kept.ok and kept.problems == ("it was not rolled back",)


def test_a_failure_after_the_deadline_fails() -> None:
    v = hc.failed_at(_result(False, seconds=95.0), step="await-running", reason="deadline", within=60)
    assert not v.ok and "took 95.0s, over 60s" in v.problems[0]


# ------------------------------------------------------------------------------------------- completion, progress
def test_every_bootstrap_exiting_0_completed() -> None:
    jobs = {"j0": {"exit codes": [{"seid": 0}]}, "j1": {"exit codes": [{"seid": 0}]}}
    assert hc.bootstraps_completed(jobs, replicas=2).ok


def test_a_bootstrap_missing_or_not_exiting_0_did_not_complete() -> None:
    missing = hc.bootstraps_completed({"j0": {"exit codes": [{"seid": 0}]}}, replicas=2)
    assert not missing.ok and "1 completed bootstrap Jobs of 2" in missing.problems[0]
    sdk = hc.bootstraps_completed({"j0": {"exit codes": [{"seid": 130}]}}, replicas=1)
    assert not sdk.ok and "exit codes [130]" in sdk.problems[0]
    assert not hc.bootstraps_completed({"j0": {"exit codes": []}}, replicas=1).ok


def test_an_incumbent_statefulset_or_pod_left_is_not_gone() -> None:
    assert hc.incumbents_gone("sei-rpc-r1", exists=False, pods=[]).ok
    v = hc.incumbents_gone("sei-rpc-r1", exists=True, pods=["sei-rpc-r1-0"])
    assert not v.ok and v.problems == ("statefulset sei-rpc-r1 still exists", "pod sei-rpc-r1-0 still exists")


def test_a_wait_without_an_eta_was_not_shown() -> None:
    shown = ["[x] bootstrap to H-1 = 999: tip 900; ...; H-1 in ~20s",
             "[x] bootstrap to H-1 = 999: tip 910; H-1 in ~18s"]
    assert hc.waited_with_eta(shown, target=999).ok
    v = hc.waited_with_eta([*shown[:1], "[x] bootstrap to H-1 = 999: tip 920; H-1 in unknown yet"], target=999)
    assert not v.ok and "1 progress line(s)" in v.problems[0]


# ------------------------------------------------------------------------------------------- resume
STEPS = ["create-entrants", "await-running", "switch-traffic", "teardown"]


def test_a_run_that_finished_or_failed_was_not_interrupted() -> None:
    assert hc.interrupted_after("interrupted after await-running", None).ok
    assert not hc.interrupted_after("", None).ok
    assert not hc.interrupted_after("", _result(True)).ok


def _second(statuses: list[str], ok: bool = True) -> RunResult:
    return RunResult("hardfork-upgrade", ok, [StepOutcome(n, st) for n, st in zip(STEPS, statuses, strict=True)])


def test_a_second_run_that_skipped_what_was_done_resumed() -> None:
    run = _second(["skipped (already done)", "skipped (already done)", "done", "done"])
    assert hc.resumed_from(run, step="switch-traffic", steps=STEPS).ok


def test_a_second_run_that_acted_again_or_failed_did_not_resume() -> None:
    again = hc.resumed_from(_second(["skipped (already done)", "done", "done", "done"]), step="switch-traffic",
                            steps=STEPS)
    assert not again.ok and again.problems == ("await-running: done, not skipped (already done)",)
    failed = hc.resumed_from(_second(["skipped (already done)"] * 2 + ["done", "failed"], ok=False),
                             step="switch-traffic", steps=STEPS)
    assert not failed.ok and "teardown: failed, not done" in failed.problems
