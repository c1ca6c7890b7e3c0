"""Seeds 001/002's hard-fork checks: each from what was observed (the network's RPC, each node's own ``seid status``,
Jobs', StatefulSets' and pods' status through the ports, the Service and its endpoints, an independent watcher's
samples), never from what the procedure says it did.

Before: :func:`plan_ahead` (an upgrade plan, and the chain still below H-1). While bootstrapping:
:func:`bootstrap_not_failing` (the Job's Failed condition, its pod's waiting reason or exit code: a bad image or
no peers fail the plan at once). Running: :func:`entrants_running` (every entrant Ready on the new binary, past
H, the handler's mark at H). At the switch: :func:`service_pins`. Throughout: :func:`incumbents_untouched`
(never restarted or halted before the teardown) and, from the watcher, :func:`never_without_endpoints`. After a
rollback: :func:`entrants_gone`, :func:`failed_at`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runbook.adapters.base import JobStatus, PodInfo
from runbook.checks.core import Verdict, check, verdict
from runbook.checks.release import FAILING_REASONS
from runbook.procedures.framework import RunResult

__all__ = ["bootstrap_not_failing", "bootstraps_completed", "entrants_gone", "entrants_running", "failed_at",
           "incumbents_gone", "incumbents_snapshot", "incumbents_untouched", "interrupted_after",
           "never_without_endpoints", "plan_ahead", "resumed_from", "service_pins", "waited_with_eta"]

T = "tests/checks/test_hardfork.py::"


@check(negative=[T + "test_no_plan_and_no_height_is_refused", T + "test_a_chain_past_h_minus_1_is_too_late",
                 T + "test_a_given_height_that_differs_from_the_plan_is_refused"])
def plan_ahead(plan: tuple[str, int] | None, *, tip: int, halt_height: int | None = None) -> Verdict:
    """An upgrade plan on chain (its height the operator's, when given) and the chain below H-1: a bootstrap
    to H-1 can still halt there."""
    problems = []
    height = plan[1] if plan else halt_height
    if plan is None and halt_height is None:
        problems.append("no upgrade plan on chain and no halt height given: nothing to fork at")
    if plan is not None and halt_height is not None and halt_height != plan[1]:
        problems.append(f"the halt height given ({halt_height}) is not the plan's ({plan[1]})")
    if height is not None and tip >= height - 1:
        problems.append(f"the chain is at {tip}, not below H-1 = {height - 1}: too late for a bootstrap to H-1")
    observed = {"plan": f"{plan[0]} at {plan[1]}" if plan else "none", "tip": tip,
                "halt height given": halt_height if halt_height is not None else "-"}
    return verdict("the hard fork is ahead", expected="an upgrade plan at H, the chain below H-1",
                   observed=observed, problems=problems)


@check(negative=[T + "test_an_image_that_cannot_be_pulled_fails_the_bootstrap_at_once",
                 T + "test_a_bootstrap_that_exited_1_fails"])
def bootstrap_not_failing(job: str, status: JobStatus | None, pods: Sequence[PodInfo]) -> Verdict:
    """The bootstrap Job exists, has no Failed condition, no failed pod, and no container waits for a reason
    that needs a change (ErrImagePull, ImagePullBackOff, ...): read from the Job's and its pods' status."""
    problems = []
    observed: dict[str, Any] = {}
    if status is None:
        problems.append(f"job {job} does not exist")
    else:
        observed["job"] = f"active {status.active}, succeeded {status.succeeded}, failed {status.failed}"
        cond = status.condition("Failed")
        if cond is not None:
            problems.append(f"job {job} Failed: {cond.reason} {cond.message}".strip())
        for p in status.pods:
            bad = {c: code for c, code in p.exit_codes.items() if code not in (None, 0)}
            if p.phase == "Failed" or bad:
                why = ", ".join(f"{c} exited {code} ({p.reasons.get(c, '')})" for c, code in bad.items())
                problems.append(f"pod {p.name} failed{': ' + why if why else ''}")
    for pod in pods:
        for c in pod.containers:
            observed[f"{pod.name}/{c.name}"] = c.state + (f":{c.reason}" if c.reason else "")
            if c.state == "waiting" and c.reason in FAILING_REASONS:
                problems.append(f"pod {pod.name} container {c.name} is {c.reason}")
    return verdict(f"bootstrap {job} not failing", expected="no Failed condition, no failed pod, no container in "
                   f"{', '.join(FAILING_REASONS[:3])}...", observed=observed, problems=problems, obj=job)


@check(negative=[T + "test_an_entrant_below_h_or_on_the_old_binary_is_not_running",
                 T + "test_an_entrant_without_the_handlers_mark_is_not_running"])
def entrants_running(pods: Sequence[PodInfo], views: Mapping[str, Any], *, replicas: int, version: str,
                     height: int, marks: Mapping[str, int | None]) -> Verdict:
    """Every entrant pod is Ready, its node reports the new version, is past H and not catching up, and the
    upgrade handler's mark is at H (the new binary processed H: the seed's PhaseRunning)."""
    problems = []
    observed: dict[str, Any] = {}
    if len(pods) != replicas:
        problems.append(f"{len(pods)} entrant pods of {replicas}")
    for p in pods:
        v = views.get(p.name)
        mark = marks.get(p.name)
        observed[p.name] = (f"{'Ready' if p.ready else 'not ready'}, "
                            f"{v.describe().split(': ', 1)[1] if v is not None else 'no status'}, mark {mark}")
        if not p.ready:
            problems.append(f"{p.name} is not Ready")
        if v is None:
            problems.append(f"{p.name}: seid status does not answer")
            continue
        if v.version != version:
            problems.append(f"{p.name} runs {v.version or '?'}, not {version}")
        if v.height < height or v.catching_up:
            problems.append(f"{p.name} at {v.height}{' catching up' if v.catching_up else ''}: not past H = {height}")
        if mark != height:
            problems.append(f"{p.name}: the upgrade handler's mark is {mark}, not H = {height}")
    return verdict("entrants Running", expected=f"{replicas} pods Ready on {version}, past {height}, mark at {height}",
                   observed=observed, problems=problems)


@check(negative=[T + "test_a_service_still_on_the_incumbents_does_not_pin_the_entrants",
                 T + "test_endpoints_of_the_other_revision_or_none_fail"])
def service_pins(service: str, selector: Mapping[str, str] | None, endpoints: Sequence[str], *, label: str,
                 revision: str, pods: Sequence[PodInfo]) -> Verdict:
    """The Service's selector pins ``revision``, and its ready endpoints (``ip:port``) are exactly that revision's
    ready pods."""
    ips = sorted(p.ip for p in pods if p.ip and p.ready)
    problems = []
    pinned = (selector or {}).get(label)
    if pinned != revision:
        problems.append(f"service {service} selects {label}={pinned}, not {revision}")
    if not endpoints:
        problems.append(f"service {service} has no ready endpoint")
    elif sorted(e.rsplit(":", 1)[0] for e in endpoints) != ips:
        problems.append(f"endpoints {sorted(endpoints)} are not {revision}'s ready pods {ips}")
    return verdict(f"service {service} on {revision}", expected=f"{label}={revision}, endpoints {ips}",
                   observed={"selector": dict(selector or {}), "endpoints": sorted(endpoints)}, problems=problems,
                   obj=service)


def incumbents_snapshot(pods: Sequence[PodInfo]) -> dict[str, Any]:
    """What must not change while the incumbents serve: each pod's containers' start and restarts, its phase."""
    return {p.name: {"phase": p.phase, "containers": {c.name: [str(c.started_at), c.restart_count, c.state]
                                                      for c in p.containers}} for p in pods}


@check(negative=[T + "test_a_restarted_incumbent_was_touched", T + "test_a_missing_or_stopped_incumbent_was_touched"])
def incumbents_untouched(before: Mapping[str, Any], after: Mapping[str, Any]) -> Verdict:
    """Every incumbent pod there at the start is there until the teardown, running, its containers neither
    restarted nor halted (same start time and restart count): no halt signal reached them."""
    problems = []
    for pod, b in before.items():
        a = after.get(pod)
        if a is None:
            problems.append(f"pod {pod} is gone")
            continue
        for c, (started, restarts, _state) in b["containers"].items():
            now = a["containers"].get(c)
            if now is None:
                problems.append(f"{pod}/{c} is gone")
                continue
            if now[1] != restarts or now[0] != started:
                problems.append(f"{pod}/{c} restarted ({restarts} -> {now[1]} restarts, started {started} -> {now[0]})")
            elif now[2] != "running":
                problems.append(f"{pod}/{c} is {now[2]}")
    if not before:
        problems.append("no incumbent pod was recorded at the start")
    return verdict("incumbents untouched", expected="same pods, running, no restart, until the teardown",
                   observed={"before": dict(before), "after": dict(after)}, problems=problems)


@check(negative=T + "test_a_sample_with_no_endpoint_fails")
def never_without_endpoints(service: str, samples: Sequence[tuple[float, int, str]]) -> Verdict:
    """In every watcher sample from the start to the end of the run, the Service had a ready endpoint
    (``(t, endpoints, revision selected)``)."""
    problems = []
    empty = [s for s in samples if s[1] == 0]
    if not samples:
        problems.append("the watcher took no sample")
    if empty:
        problems.append(f"{len(empty)} of {len(samples)} samples with no ready endpoint, first at t={empty[0][0]:.3f} "
                        f"(selector on {empty[0][2]}), last at t={empty[-1][0]:.3f}")
    return verdict(f"service {service} never without endpoints", expected=">= 1 ready endpoint in every sample",
                   observed={"samples": len(samples), "min endpoints": min((s[1] for s in samples), default=0),
                             "revisions selected": sorted({s[2] for s in samples})}, problems=problems, obj=service)


@check(negative=T + "test_entrant_objects_left_fail")
def entrants_gone(revision: str, present: Sequence[str]) -> Verdict:
    """No StatefulSet, bootstrap Job or claim of the entrant revision is left (a rollback deletes them)."""
    return verdict(f"entrant {revision} gone", expected="no StatefulSet, Job or claim of it", observed=list(present),
                   problems=[f"left: {', '.join(present)}"] if present else [], obj=revision)


@check(negative=[T + "test_a_run_that_passed_or_failed_elsewhere_fails", T + "test_a_failure_after_the_deadline_fails"])
def failed_at(result: RunResult | None, *, step: str, reason: str, within: float | None = None,
              seconds: float | None = None) -> Verdict:
    """The run failed at ``step`` naming ``reason`` and was rolled back (within ``within`` seconds of the step's
    start when given: a deadline that fired, or a failure seen at once)."""
    problems = []
    out = next((s for s in result.steps if s.name == step), None) if result else None
    if result is None:
        problems.append("no run result")
    elif result.ok:
        problems.append("the run passed")
    elif out is None or out.status != "failed":
        failed = [s.name for s in result.steps if s.status == "failed"]
        problems.append(f"the run failed at {failed or 'no step'}, not {step}")
    elif reason.lower() not in out.error.lower():
        problems.append(f"{step}'s error does not name {reason!r}: {out.error[:300]}")
    if result is not None and not result.ok and not result.rolled_back:
        problems.append("it was not rolled back")
    took = out.seconds if out is not None else seconds
    if within is not None and took is not None and took > within:
        problems.append(f"{step} took {took:.1f}s, over {within:g}s")
    return verdict(f"failed at {step} for {reason}", expected=f"failed at {step} naming {reason!r}, rolled back"
                   + (f", within {within:g}s" if within is not None else ""),
                   observed={"ok": result.ok if result else None, "step": out.status if out else None,
                             "error": (out.error[:300] if out else ""), "seconds": round(took or 0, 1)},
                   problems=problems)


@check(negative=T + "test_a_bootstrap_missing_or_not_exiting_0_did_not_complete")
def bootstraps_completed(jobs: Mapping[str, Any], *, replicas: int) -> Verdict:
    """One bootstrap Job per entrant pod completed, each pod's containers exiting 0 (seid exits 0 only once it
    halted at --halt-height H-1: the incumbent binary took the entrant to H-1). ``jobs``: job -> its
    ``exit codes`` (one mapping per pod) as AwaitRunning recorded them when it saw the Job Complete."""
    problems = []
    if len(jobs) != replicas:
        problems.append(f"{len(jobs)} completed bootstrap Jobs of {replicas}")
    for job, seen in jobs.items():
        codes = [code for pod in seen.get("exit codes", []) for code in pod.values()]
        if not codes or any(code != 0 for code in codes):
            problems.append(f"job {job}: exit codes {codes or 'none recorded'}")
    return verdict("bootstraps completed", expected=f"{replicas} Jobs, every pod exited 0", observed=dict(jobs),
                   problems=problems)


@check(negative=T + "test_an_incumbent_statefulset_or_pod_left_is_not_gone")
def incumbents_gone(statefulset: str, *, exists: bool, pods: Sequence[str]) -> Verdict:
    """The incumbents' StatefulSet and every pod of it are gone (their claims may stay)."""
    problems = ([f"statefulset {statefulset} still exists"] if exists else []) + [f"pod {p} still exists" for p in pods]
    return verdict(f"incumbents {statefulset} gone", expected="no StatefulSet, no pod",
                   observed={"statefulset": exists, "pods": list(pods)}, problems=problems, obj=statefulset)


@check(negative=T + "test_a_wait_without_an_eta_was_not_shown")
def waited_with_eta(lines: Sequence[str], *, target: int) -> Verdict:
    """While the chain was below the bootstrap's target (H-1), the run printed its progress toward it with an
    ETA, at least twice (a wait, shown, not a silent hang nor a failure)."""
    etas = [ln for ln in lines if f"H-1 = {target}" in ln and " in ~" in ln]
    return verdict("progress toward H shown", expected=">= 2 progress lines with the tip and an ETA to H-1",
                   observed=etas[:2] + etas[-1:] if len(etas) > 2 else etas,
                   problems=[] if len(etas) >= 2 else [f"{len(etas)} progress line(s) with an ETA"])


@check(negative=T + "test_a_run_that_finished_or_failed_was_not_interrupted")
def interrupted_after(interrupted: str, result: RunResult | None) -> Verdict:
    """The run was interrupted (the operator's Ctrl-C, or a lost runner) and did not finish or fail."""
    problems = [] if interrupted and result is None else [
        "the run was not interrupted" if not interrupted else "the run has a result"]
    return verdict("the run was interrupted", expected="interrupted, no result", observed=interrupted or "not",
                   problems=problems)


@check(negative=T + "test_a_second_run_that_acted_again_or_failed_did_not_resume")
def resumed_from(result: RunResult | None, *, step: str, steps: Sequence[str]) -> Verdict:
    """A second run finished the procedure, found every step before ``step`` done (from its journal and the live
    objects: skipped, not acted again) and ran ``step`` and the rest."""
    problems = []
    observed = {s.name: s.status for s in result.steps} if result else {}
    if result is None or not result.ok:
        problems.append(f"the second run did not finish: {result.error if result else 'no result'}")
    i = list(steps).index(step)
    problems += [f"{s}: {observed.get(s)}, not skipped (already done)" for s in steps[:i]
                 if observed.get(s) != "skipped (already done)"]
    problems += [f"{s}: {observed.get(s)}, not done" for s in steps[i:] if observed.get(s) != "done"]
    return verdict(f"resumed from {step}", expected={"skipped": list(steps[:i]), "done": list(steps[i:])},
                   observed=observed, problems=problems)
