"""Seed 003's release checks: each from what was observed (Deployments' and pods' status through the workloads
port, the objects through the objects port, what each client process has loaded, the release state ConfigMap,
an independent watcher's timeline), never from what the procedure says it did.

While deploying: :func:`colour_ready` (the seed's isStrategyReady: ready replicas equal the spec for every
Deployment), :func:`colour_not_failing` (waiting reasons and restart counts read directly, so a crash loop
that would reset a progress deadline is seen), :func:`ready_held`. At the switch: :func:`common_names` and
:func:`clients_switched`. After: :func:`colour_gone`, :func:`untouched`, :func:`released`, :func:`history_is`.
From the watcher: :func:`switched_after_grace`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from runbook.adapters.base import PodInfo, RolloutStatus
from runbook.checks.core import Verdict, check, verdict
from runbook.procedures.framework import RunResult
from runbook.procedures.release_state import Record, State

__all__ = ["FAILING_REASONS", "clients_switched", "colour_gone", "colour_not_failing", "colour_ready",
           "common_names", "first_release_failed", "history_is", "phase_is", "ready_held", "released", "resumed",
           "rolled_back_for", "snapshot", "switched_after_grace", "untouched"]

T = "tests/checks/test_release.py::"
# the kubelet's waiting reasons that mean a container will not start without a change (the seed's checkPodStatus)
FAILING_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
                   "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "ErrImageNeverPull")


@check(negative=T + "test_a_colour_with_a_deployment_short_of_ready_replicas_is_not_ready")
def colour_ready(colour: str, statuses: Mapping[str, RolloutStatus | None]) -> Verdict:
    """Every Deployment of the colour exists, its spec observed, and its ready replicas equal its spec."""
    observed: dict[str, Any] = {}
    problems = []
    for name, s in statuses.items():
        if s is None:
            observed[name] = "missing"
            problems.append(f"deployment {name} does not exist")
            continue
        observed[name] = f"{s.ready}/{s.desired} ready"
        if s.observed_generation < s.generation:
            problems.append(f"deployment {name}: generation {s.generation} not yet observed")
        elif s.ready != s.desired:
            problems.append(f"deployment {name}: {s.ready} of {s.desired} replicas ready")
    return verdict(f"colour {colour} ready", expected="ready replicas == spec.replicas for every Deployment",
                   observed=observed, problems=problems, obj=colour)


@check(negative=[T + "test_an_image_that_cannot_be_pulled_is_a_failure",
                 T + "test_a_crash_loop_is_a_failure_by_its_restart_count_whatever_its_current_state"])
def colour_not_failing(colour: str, pods: Mapping[str, Sequence[PodInfo]], *, max_restarts: int) -> Verdict:
    """No container of the colour's pods waits for a reason that needs a change (ImagePullBackOff,
    CrashLoopBackOff, ...), and none restarted ``max_restarts`` times: read from each container's status,
    never from a deadline a restart resets."""
    observed: dict[str, Any] = {}
    problems = []
    for dep, ps in pods.items():
        for p in ps:
            for c in p.containers:
                state = c.state + (f":{c.reason}" if c.reason else "")
                observed[f"{p.name}/{c.name}"] = f"{state}, {c.restart_count} restarts"
                if c.state == "waiting" and c.reason in FAILING_REASONS:
                    loop = " (crash loop)" if c.reason == "CrashLoopBackOff" else ""
                    problems.append(f"{dep}: pod {p.name} container {c.name} is {c.reason}{loop}")
                elif c.restart_count >= max_restarts:
                    problems.append(f"{dep}: pod {p.name} container {c.name} restarted {c.restart_count} times "
                                    f"(crash loop; limit {max_restarts})")
    return verdict(f"colour {colour} not failing", expected=f"no container in {', '.join(FAILING_REASONS[:4])}..., "
                   f"fewer than {max_restarts} restarts", observed=observed, problems=problems, obj=colour)


@check(negative=T + "test_ready_for_less_than_the_grace_period_is_not_held")
def ready_held(colour: str, *, ready_since: float | None, now: float, grace: float) -> Verdict:
    """The colour has been ready without a break for the grace period (the seed's 2 minutes)."""
    held = 0.0 if ready_since is None else max(0.0, now - ready_since)
    problems = [] if ready_since is not None and held >= grace else [
        f"ready for {held:.1f}s of the {grace:g}s grace period" if ready_since is not None else "not ready"]
    return verdict(f"colour {colour} ready for the grace period", expected=f">= {grace:g}s ready without a break",
                   observed=f"{held:.1f}s", problems=problems, obj=colour)


def _properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            out[key.strip()] = value.strip()
    return out


@check(negative=T + "test_a_common_configmap_naming_the_old_colour_fails")
def common_names(common: Mapping[str, Any] | None, *, hosts: Mapping[str, str]) -> Verdict:
    """The common ConfigMap's ``config.properties`` names exactly these service hosts (KEY -> Service)."""
    if common is None:
        return verdict("common ConfigMap names the colour", expected=dict(hosts), observed="missing",
                       problems=["the common ConfigMap does not exist"])
    props = _properties(str((common.get("data") or {}).get("config.properties", "")))
    seen = {k: props.get(k, "") for k in hosts}
    problems = [f"{k}={seen[k] or '(unset)'}, not {v}" for k, v in hosts.items() if seen[k] != v]
    return verdict(f"common ConfigMap {common.get('metadata', {}).get('name', '')} names the colour",
                   expected=dict(hosts), observed=seen, problems=problems)


@check(negative=T + "test_a_client_still_on_the_old_colour_has_not_switched")
def clients_switched(loaded: Mapping[str, Mapping[str, str] | str], *, hosts: Mapping[str, str]) -> Verdict:
    """Every client process (each gateway pod) has loaded the hosts (component -> Service); an error reading
    one is a problem, as is no client at all."""
    problems = [] if loaded else ["no client pod to ask"]
    observed: dict[str, Any] = {}
    for pod, cfg in loaded.items():
        observed[pod] = cfg
        if isinstance(cfg, str):
            problems.append(f"{pod}: {cfg}")
            continue
        wrong = {k: cfg.get(k, "") for k, v in hosts.items() if cfg.get(k, "") != v}
        if wrong:
            problems.append(f"{pod} still uses {wrong}")
    return verdict("every client on the new colour's Services", expected=dict(hosts), observed=observed,
                   problems=problems)


@check(negative=T + "test_a_colour_with_an_object_left_is_not_gone")
def colour_gone(colour: str, present: Sequence[str]) -> Verdict:
    """None of the colour's Deployments, ConfigMaps and Services exists (``present``: those found)."""
    return verdict(f"colour {colour} deleted", expected="no object left", observed=list(present) or "none",
                   problems=[f"{p} still exists" for p in present], obj=colour)


def snapshot(objects: Mapping[str, Mapping[str, Any] | None], pods: Sequence[PodInfo]) -> dict[str, Any]:
    """What :func:`untouched` compares: each object's uid and resourceVersion, each pod and its restarts."""
    out: dict[str, Any] = {}
    for key, obj in objects.items():
        meta = (obj or {}).get("metadata") or {}
        out[key] = f"{meta.get('uid', '')}@{meta.get('resourceVersion', '')}" if obj else "missing"
    for p in pods:
        out[f"pod/{p.name}"] = {c.name: c.restart_count for c in p.containers}
    return out


@check(negative=[T + "test_an_active_colour_with_a_deleted_object_was_touched",
                 T + "test_an_active_pod_replaced_or_restarted_was_touched"])
def untouched(colour: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> Verdict:
    """The colour's objects (same uid, same resourceVersion), pods (same names) and restart counts are as they
    were: nothing deleted, re-created, changed or restarted."""
    problems = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key, "missing"), after.get(key, "missing")
        if b != a:
            problems.append(f"{key}: {b} -> {a}")
    return verdict(f"colour {colour} untouched", expected=dict(before), observed=dict(after), problems=problems,
                   obj=colour)


@check(negative=T + "test_a_state_still_deploying_is_not_released")
def released(state: State, *, version: str, colour: str) -> Verdict:
    """The state machine is Stable with ``colour`` active and the Active record at ``version`` on it."""
    rec = state.active_record
    observed = {"phase": state.phase, "active": state.active,
                "active record": f"{rec.version} on {rec.colour}" if rec else "none"}
    problems = []
    if state.phase != "Stable":
        problems.append(f"phase {state.phase}, not Stable")
    if state.active != colour:
        problems.append(f"active colour {state.active or '(none)'}, not {colour}")
    if rec is None or (rec.version, rec.colour) != (version, colour):
        problems.append(f"the Active record is {observed['active record']}, not {version} on {colour}")
    return verdict(f"release {version} active on {colour}", expected={"phase": "Stable", "active": colour,
                   "active record": f"{version} on {colour}"}, observed=observed, problems=problems)


@check(negative=T + "test_a_history_with_a_wrong_status_or_length_fails")
def history_is(history: Sequence[Record], expected: Sequence[tuple[str, str]]) -> Verdict:
    """The release history, oldest first, is exactly these (version, status) pairs."""
    seen = [(r.version, r.status) for r in history]
    problems = [] if seen == list(expected) else [f"history is {seen}, expected {list(expected)}"]
    return verdict("release history", expected=[f"{v} {s}" for v, s in expected],
                   observed=[f"{r.version} {r.colour} {r.status} {r.time}" for r in history], problems=problems)


@check(negative=T + "test_a_switch_before_the_grace_period_is_caught_from_the_watchers_timeline")
def switched_after_grace(samples: Sequence[tuple[float, bool]], *, switched_at: float | None, grace: float,
                         colour: str) -> Verdict:
    """From an independent watcher's samples (time, every Deployment of the new colour ready): before the common
    ConfigMap named the new colour, the colour had been ready without a break for the grace period."""
    if switched_at is None:
        return verdict(f"switch to {colour} after the grace period", expected="a switch", observed="no switch seen",
                       problems=["the watcher saw no switch"])
    before = [(t, ok) for t, ok in samples if t <= switched_at]
    since = None
    for t, ok in before:
        if ok and since is None:
            since = t
        elif not ok:
            since = None
    held = 0.0 if since is None else switched_at - since
    # the watcher samples at an interval: a sample's worth of slack, never more
    gap = max((b[0] - a[0] for a, b in itertools.pairwise(before)), default=0.0)
    problems = [] if since is not None and held + gap >= grace else [
        f"switched to {colour} after it had been ready for {held:.1f}s (grace {grace:g}s)" if since is not None
        else f"switched to {colour} while it was not ready"]
    return verdict(f"switch to {colour} after the grace period", expected=f"ready for >= {grace:g}s before the switch",
                   observed=f"ready for {held:.1f}s before the switch ({len(before)} samples)", problems=problems,
                   obj=colour)


@check(negative=[T + "test_a_rollback_for_another_step_or_reason_fails",
                 T + "test_a_failure_found_after_the_deadline_fails"])
def rolled_back_for(result: RunResult | None, journal: Mapping[str, Any], *, step: str, reason: str,
                    within: float) -> Verdict:
    """The run failed at ``step``, its error naming ``reason`` (the waiting reason or restart count that was
    read), within ``within`` seconds of that step's start (a deadline no crash resets), then rolled back."""
    problems = []
    observed: dict[str, Any] = {"journal": journal.get("status")}
    if result is None:
        problems.append("the release did not finish (interrupted)")
    else:
        observed["steps"] = [f"{s.name}: {s.status} ({s.seconds:.1f}s) {s.error}".strip() for s in result.steps]
        failed = [s for s in result.steps if s.status == "failed"]
        if result.ok or not failed:
            problems.append("the release did not fail")
        elif failed[0].name != step:
            problems.append(f"failed at {failed[0].name}, not at {step}: {failed[0].error}")
        else:
            if reason not in failed[0].error:
                problems.append(f"{step} failed without naming {reason}: {failed[0].error}")
            if failed[0].seconds > within:
                problems.append(f"{step} failed after {failed[0].seconds:.1f}s, past {within:g}s")
        if not result.rolled_back:
            problems.append("no automatic rollback ran")
    if journal.get("status") != "rolled back":
        problems.append(f"the journal says {journal.get('status')!r}, not 'rolled back'")
    return verdict(f"failed at {step} for {reason} within {within:g}s, then rolled back",
                   expected={"step": step, "reason": reason, "within": within}, observed=observed, problems=problems)


@check(negative=T + "test_a_failed_first_release_that_was_deleted_or_not_recorded_fails")
def first_release_failed(state: State, *, version: str, colour: str, present: Sequence[str],
                         expected: Sequence[str]) -> Verdict:
    """A first release that failed: the state Failed, its record Failed, and nothing rolled back (there is no
    colour to go back to): every object it created still there for the operator."""
    rec = state.history[-1] if state.history else None
    problems = []
    if state.phase != "Failed":
        problems.append(f"phase {state.phase}, not Failed")
    if rec is None or (rec.version, rec.colour, rec.status) != (version, colour, "Failed"):
        problems.append(f"the newest record is {f'{rec.version} {rec.colour} {rec.status}' if rec else 'none'}, "
                        f"not {version} {colour} Failed")
    missing = [e for e in expected if e not in present]
    if missing:
        problems.append(f"deleted, though there was nothing to roll back to: {missing}")
    return verdict(f"first release {version} Failed, nothing rolled back", expected={"phase": "Failed",
                   "record": f"{version} {colour} Failed", "objects": list(expected)},
                   observed={"phase": state.phase, "objects": list(present)}, problems=problems, obj=colour)


@check(negative=T + "test_a_run_that_was_not_stopped_at_that_phase_fails")
def phase_is(state: State, *, phase: str, interrupted: str) -> Verdict:
    """The run was interrupted, and the state kept in the cluster is at ``phase``."""
    problems = [] if interrupted else ["the run was not interrupted"]
    if state.phase != phase:
        problems.append(f"the release state is at {state.phase}, not {phase}")
    return verdict(f"release stopped at {phase}", expected=phase, observed={"phase": state.phase,
                   "interrupted": interrupted or "no"}, problems=problems)


@check(negative=T + "test_a_second_run_that_repeated_a_step_did_not_resume")
def resumed(result: RunResult | None, journal: Mapping[str, Any], *, before: Sequence[str]) -> Verdict:
    """A second run (its own journal: another machine) finished the release without acting again in the steps
    ``before`` the phase the first reached: it read the phase from the cluster."""
    acted = list(journal.get("acted", []))
    problems = [] if result is not None and result.ok else [f"the second run did not finish: "
                                                            f"{result.error if result else 'interrupted'}"]
    problems += [f"{s} acted again" for s in before if s in acted]
    return verdict("the second run resumed at the phase reached", expected={"not repeated": list(before)},
                   observed={"acted": acted, "journal": journal.get("status")}, problems=problems)
