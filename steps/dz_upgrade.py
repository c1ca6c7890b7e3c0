"""DoubleZero upgrade steps (spec step 2, procedure 1) -> runbook.procedures.dz_upgrade, runbook.checks.isolation.

Thin: parse, call the procedure module, record what was compared. Every step that patches the sidecar
registers a finalizer that patches the old image back if the scenario stops half-way, so later scenarios
see the testbed as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytest
from pytest_bdd import parsers, then, when

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks import isolation as iso
from runbook.errors import CheckFailed, PreconditionFailed
from runbook.evidence.recorder import Recorder
from runbook.procedures import dz_upgrade as dz
from runbook.procedures import journal_for
from runbook.procedures.framework import Context, Journal, RunResult
from runbook.testbed import netns
from runbook.testbed.stack import Testbed


@dataclass
class SidecarPatch:
    """One patch of the sidecar's image and what was observed around it."""

    ctx: Context
    before: iso.Observation
    after: iso.Observation
    samples: list[iso.Observation]
    image: str
    version: str


@dataclass
class DzRun:
    ctx: Context
    journal: Journal
    result: RunResult


def _skip_routes_reason(testbed: Testbed | None) -> str:
    if testbed is not None and testbed.netns is None:
        return (f"the local testbed has no network namespace ({netns.net_admin_reason()}): routes on the DoubleZero "
                "interface are not observable here")
    return ""


def _restore_at_teardown(request: pytest.FixtureRequest, ctx: Context) -> None:
    def restore() -> None:
        if ctx.facts.get("old_image") and ctx.facts.get("pod"):
            dz.roll_back_patch(ctx)  # a no-op when the sidecar already runs its old image

    request.addfinalizer(restore)


def _compare(evidence: Recorder, title: str, problems: list[iso.Problem], *, expected: object, observed: object,
             obj: str) -> None:
    evidence.compare(title, expected=expected, observed=observed, ok=not problems)
    iso.raise_problems(problems, title=title, obj=obj)


def _checked(evidence: Recorder, title: str, expected: object, check: Callable[[], object]) -> object:
    try:
        observed = check()
    except CheckFailed as exc:
        evidence.compare(title, expected=exc.expected, observed=exc.observed, ok=False)
        raise
    evidence.compare(title, expected=expected, observed=observed, ok=True)
    return observed


def _container(view: iso.ContainerView | None) -> dict[str, object] | None:
    return None if view is None else {"image": view.image, "imageID": view.image_id, "state": view.state,
                                      "startedAt": view.started_at, "restartCount": view.restart_count}


# ----------------------------------------------------------------------------------- spec step 2
@when(parsers.re(r"the doublezerod sidecar image is patched to (?P<version>v[\w.+-]+) in the running pod"),
      target_fixture="dz_patch")
def patch_sidecar(adapters: Adapters, testbed: Testbed | None, pod: PodInfo, version: str, evidence: Recorder,
                  request: pytest.FixtureRequest) -> SidecarPatch:
    ctx = dz.context(adapters, target_version=version, colour=dz.colour_of(adapters.env, pod.deployment),
                     skip_routes_reason=_skip_routes_reason(testbed), progress=evidence.note, record=evidence.attach)
    dz.prepare(ctx)
    if ctx.facts["already_at_target"]:
        raise PreconditionFailed(f"{pod.name} already runs {ctx.facts['target_image']}: a patch would restart nothing, "
                                 "so isolation could not be shown", obj=pod.name)
    dz.require_ready(ctx)
    _restore_at_teardown(request, ctx)
    dz.patch_sidecar(ctx)
    before = dz.before(ctx)
    after, samples = dz.wait_restart(ctx, before, image=ctx.facts["target_image"])
    evidence.call(f"pod {after.pod} after the patch", {"sidecar": _container(after.sidecar),
                                                       "agave": _container(after.app)})
    return SidecarPatch(ctx, before, after, samples, ctx.facts["target_image"], version)


@when("the sidecar is rolled back to its previous image", target_fixture="dz_patch")
def roll_back_sidecar(dz_patch: SidecarPatch, evidence: Recorder) -> SidecarPatch:
    ctx = dz_patch.ctx
    start = dz.patch_back(ctx)
    after, samples = dz.wait_restart(ctx, start, image=ctx.facts["old_image"])
    evidence.call(f"pod {after.pod} after the rollback", {"sidecar": _container(after.sidecar),
                                                          "agave": _container(after.app)})
    return SidecarPatch(ctx, start, after, samples, ctx.facts["old_image"], dz.old_version(ctx))


@then(parsers.parse("only the sidecar restarted, on the {which} image"))
def sidecar_restarted(dz_patch: SidecarPatch, which: str, evidence: Recorder) -> None:
    p = dz_patch
    b = p.before.sidecar
    expected = b and {"restartCount": b.restart_count + 1, "state": "running", "image": p.image,
                      "imageID": f"not {b.image_id}"}
    _compare(evidence, f"the sidecar restarted once, on the {which} image",
             iso.sidecar_problems(p.before, p.after, image=p.image), expected=expected,
             observed=_container(p.after.sidecar), obj=p.before.pod)
    _checked(evidence, "doublezero --version in the sidecar", p.version, lambda: dz.check_version(p.ctx, p.version))


@then("agave was not restarted")
def agave_not_restarted(dz_patch: SidecarPatch, evidence: Recorder) -> None:
    p = dz_patch
    now = dz.observe_now(p.ctx)
    _compare(evidence, "agave not restarted (same pod, startedAt, restartCount)", iso.app_problems(p.before, now),
             expected={"pod": p.before.pod, "template": p.before.template_image, **(_container(p.before.app) or {})},
             observed={"pods": list(now.pods), "template": now.template_image, **(_container(now.app) or {})},
             obj=p.before.pod)


@then("the doublezero0 routes survived")
def routes_survived(dz_patch: SidecarPatch, evidence: Recorder) -> None:
    p = dz_patch
    reason = str(p.ctx.params.get("skip_routes_reason", ""))
    if reason:
        evidence.note(f"route check skipped: {reason}")
        pytest.skip(reason)
    status = dz.check_session_up(p.ctx)
    evidence.compare("doublezero status after the restart", expected="BGP Session Up",
                     observed={"session": status.session, "device": status.device}, ok=True)
    interface = p.ctx.env.doublezero.interface
    now = dz.observe_now(p.ctx)
    _compare(evidence, f"routes on {interface} (before vs after, and in {len(p.samples)} samples during the restart)",
             dz.route_problems_throughout(p.before, p.samples, now, interface),
             expected=list(p.before.routes or []), observed=list(now.routes or []), obj=interface)


@then("the pod's drift from its Deployment template is recorded")
def drift_recorded(dz_patch: SidecarPatch, evidence: Recorder) -> None:
    f, sidecar = dz_patch.ctx.facts, dz_patch.ctx.env.doublezero.sidecar
    # record_drift says it loudly (WARNING DRIFT ... the next rollout reverts the sidecar) in the evidence
    _checked(evidence, "drift from the Deployment template", {sidecar: [f["old_image"], f["target_image"]]},
             lambda: {k: list(v) for k, v in dz.record_drift(dz_patch.ctx).items()})


@then("the pod no longer drifts from its Deployment template")
def no_drift(adapters: Adapters, dz_patch: SidecarPatch, evidence: Recorder) -> None:
    pod = adapters.workloads.pod(dz_patch.ctx.facts["pod"])
    drift = {k: list(v) for k, v in pod.drift.items()}
    evidence.compare("drift from the Deployment template", expected={}, observed=drift, ok=not drift)
    if drift:
        raise CheckFailed(f"pod {pod.name} still drifts from its template: expected no drift, observed {drift}",
                          expected={}, observed=drift, obj=pod.name)


# ----------------------------------------------------------------------------------- procedure 1
@when(parsers.re(r"the dz-upgrade procedure runs to (?P<version>v[\w.+-]+)"), target_fixture="dz_run")
def run_procedure(adapters: Adapters, testbed: Testbed | None, version: str, evidence: Recorder,
                  request: pytest.FixtureRequest) -> DzRun:
    ctx = dz.context(adapters, target_version=version, skip_routes_reason=_skip_routes_reason(testbed),
                     progress=evidence.note, record=evidence.attach)
    journal = journal_for(adapters.env, dz.NAME)
    _restore_at_teardown(request, ctx)
    result = dz.PROCEDURE.run(ctx, journal=journal)
    evidence.call(f"runbook run {dz.NAME} --target-version={version} (journal {journal.path})",
                  [asdict(s) for s in result.steps])
    return DzRun(ctx, journal, result)


@then("every step of the procedure passed")
def procedure_passed(dz_run: DzRun, evidence: Recorder) -> None:
    r = dz_run.result
    observed = {s.name: s.status for s in r.steps}
    expected = {s.name: "done" for s in dz.PROCEDURE.steps}
    evidence.compare(f"{dz.NAME} step outcomes", expected=expected, observed=observed, ok=r.ok and observed == expected)
    if not r.ok or observed != expected:
        raise CheckFailed(f"{dz.NAME} did not pass: expected {expected}, observed {observed}: {r.error}",
                          expected=expected, observed=observed, procedure=dz.NAME)


@then(parsers.re(r"the sidecar runs (?P<version>v[\w.+-]+) in the same pod, and agave was not restarted"))
def upgraded_in_place(dz_run: DzRun, pod: PodInfo, version: str, evidence: Recorder) -> None:
    ctx = dz_run.ctx
    before, now = dz.before(ctx), dz.observe_now(ctx)
    problems = iso.app_problems(before, now) + iso.sidecar_problems(before, now, image=ctx.facts["target_image"])
    if ctx.facts["pod"] != pod.name:
        problems.append(iso.Problem("the procedure upgraded another pod than the scenario's", pod.name,
                                    ctx.facts["pod"]))
    _compare(evidence, f"after {dz.NAME} to {version}", problems,
             expected={"pod": pod.name, "sidecar image": ctx.facts["target_image"], "agave": _container(before.app)},
             observed={"pods": list(now.pods), "sidecar": _container(now.sidecar), "agave": _container(now.app)},
             obj=pod.name)


@when("the dz-upgrade procedure is rolled back")
def roll_back_procedure(dz_run: DzRun, evidence: Recorder) -> None:
    dz.PROCEDURE.roll_back(dz_run.ctx, dz_run.journal)
    evidence.call(f"runbook rollback {dz.NAME}", dz_run.journal.load().get("status"))


@then("the sidecar runs its previous image in the same pod, and agave was not restarted")
def restored_in_place(dz_run: DzRun, evidence: Recorder) -> None:
    ctx = dz_run.ctx
    before, now = dz.before(ctx), dz.observe_now(ctx)
    want = {**(_container(before.sidecar) or {}), "restartCount": "before + 2"}
    _compare(evidence, f"after rolling {dz.NAME} back",
             iso.app_problems(before, now) + iso.sidecar_back_problems(before, now, restarts=2),
             expected={"sidecar": want, "agave": _container(before.app)},
             observed={"sidecar": _container(now.sidecar), "agave": _container(now.app)}, obj=before.pod)
