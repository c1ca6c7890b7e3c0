"""DoubleZero upgrade steps (spec step 2, procedure 1) -> runbook.procedures.dz_upgrade, runbook.checks.isolation.

Thin: parse, call the procedure module, record what was compared. Every step that patches the sidecar
registers a finalizer that patches the old image back if the scenario stops half-way, so later scenarios
see the testbed as it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
from pytest_bdd import parsers, then, when

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks import isolation as iso
from runbook.checks import outcome
from runbook.checks.core import judge
from runbook.errors import PreconditionFailed, StepRefused
from runbook.evidence.recorder import Recorder
from runbook.procedures import dz_upgrade as dz
from runbook.procedures import journal_for
from runbook.procedures.framework import Context, Journal, RunResult
from runbook.testbed.stack import Testbed
from steps.dz_handover import skip_routes_reason


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


def _restore_at_teardown(request: pytest.FixtureRequest, ctx: Context) -> None:
    def restore() -> None:
        if ctx.facts.old_image and ctx.facts.pod:
            dz.roll_back_patch(ctx)  # a no-op when the sidecar already runs its old image

    request.addfinalizer(restore)


# ----------------------------------------------------------------------------------- spec step 2
@when(parsers.re(r"the doublezerod sidecar image is patched to (?P<version>v[\w.+-]+) in the running pod"),
      target_fixture="dz_patch")
def patch_sidecar(adapters: Adapters, testbed: Testbed | None, pod: PodInfo, version: str, evidence: Recorder,
                  request: pytest.FixtureRequest) -> SidecarPatch:
    ctx = dz.context(adapters, target_version=version, colour=dz.colour_of(adapters.env, pod.deployment),
                     skip_routes_reason=skip_routes_reason(testbed), progress=evidence.note, record=evidence.attach,
                     verdicts=evidence.verdict)
    dz.prepare(ctx)
    if ctx.facts.already_at_target:
        raise PreconditionFailed(f"{pod.name} already runs {ctx.facts.target_image}: a patch would restart nothing, "
                                 "so isolation could not be shown", obj=pod.name)
    dz.require_ready(ctx)
    _restore_at_teardown(request, ctx)
    dz.patch_sidecar(ctx)
    before = dz.before(ctx)
    after, samples = dz.wait_restart(ctx, before, image=ctx.facts.target_image)
    evidence.call(f"pod {after.pod} after the patch", {"sidecar": iso._container(after.sidecar),
                                                       "agave": iso._container(after.app)})
    return SidecarPatch(ctx, before, after, samples, ctx.facts.target_image, version)


@when("the sidecar is rolled back to its previous image", target_fixture="dz_patch")
def roll_back_sidecar(dz_patch: SidecarPatch, evidence: Recorder) -> SidecarPatch:
    ctx = dz_patch.ctx
    start = dz.patch_back(ctx)
    after, samples = dz.wait_restart(ctx, start, image=ctx.facts.old_image)
    evidence.call(f"pod {after.pod} after the rollback", {"sidecar": iso._container(after.sidecar),
                                                          "agave": iso._container(after.app)})
    return SidecarPatch(ctx, start, after, samples, ctx.facts.old_image, dz.old_version(ctx))


@then(parsers.parse("only the sidecar restarted, on the {which} image"))
def sidecar_restarted(dz_patch: SidecarPatch, which: str, evidence: Recorder) -> None:
    p = dz_patch
    images = {"new": p.ctx.facts.target_image, "previous": p.ctx.facts.old_image}
    if which not in images:
        raise StepRefused(f"unknown image {which!r} in the step: say 'new' or 'previous'")
    if images[which] != p.image:
        raise StepRefused(f"the step says the {which} image ({images[which]}), but the scenario's last patch was to "
                          f"{p.image}")
    judge(evidence, iso.sidecar_restarted(p.before, p.after, image=p.image, which=which))
    dz.check_version(p.ctx, p.version)  # polls `doublezero --version`; its verdict goes to the evidence


@then("agave was not restarted")
def agave_not_restarted(dz_patch: SidecarPatch, evidence: Recorder) -> None:
    judge(evidence, iso.app_untouched(dz_patch.before, dz.observe_now(dz_patch.ctx)))


@then("the doublezero0 routes survived")
def routes_survived(dz_patch: SidecarPatch, evidence: Recorder) -> None:
    """The session is up again and the routes stayed. Without CAP_NET_ADMIN the route check alone is skipped
    (shown with its reason); the session check and the rest of the scenario still run."""
    p = dz_patch
    status = dz.check_session_up(p.ctx)  # polls to its deadline; its verdict goes to the evidence (ctx.judge)
    evidence.call("doublezero status after the restart", status.raw)
    skip = str(p.ctx.params.get("skip_routes_reason", ""))
    judge(evidence, iso.routes_kept(p.before, p.samples, dz.observe_now(p.ctx),
                                    interface=p.ctx.env.doublezero.interface, skip_reason=skip))


@then("the pod's drift from its Deployment template is recorded")
def drift_recorded(dz_patch: SidecarPatch, evidence: Recorder) -> None:
    # record_drift judges the drift (template kept, pod on the new image) and says it loudly (WARNING DRIFT ...
    # the next rollout reverts the sidecar) in the evidence
    dz.record_drift(dz_patch.ctx)


@then("the pod no longer drifts from its Deployment template")
def no_drift(adapters: Adapters, dz_patch: SidecarPatch, evidence: Recorder) -> None:
    pod = adapters.workloads.pod(dz_patch.ctx.facts.pod)
    judge(evidence, iso.no_drift(pod.name, {k: list(v) for k, v in pod.drift.items()}))


# ----------------------------------------------------------------------------------- procedure 1
@when(parsers.re(r"the dz-upgrade procedure runs to (?P<version>v[\w.+-]+)"), target_fixture="dz_run")
def run_procedure(adapters: Adapters, testbed: Testbed | None, version: str, evidence: Recorder,
                  request: pytest.FixtureRequest) -> DzRun:
    ctx = dz.context(adapters, target_version=version, skip_routes_reason=skip_routes_reason(testbed),
                     progress=evidence.note, record=evidence.attach,
                     verdicts=evidence.verdict)
    journal = journal_for(adapters.env, dz.NAME)
    _restore_at_teardown(request, ctx)
    result = dz.PROCEDURE.run(ctx, journal=journal)
    evidence.call(f"runbook run {dz.NAME} --target-version={version} (journal {journal.path})",
                  [asdict(s) for s in result.steps])
    return DzRun(ctx, journal, result)


@then("every step of the procedure passed")
def procedure_passed(dz_run: DzRun, evidence: Recorder) -> None:
    judge(evidence, outcome.completed(dz_run.result, procedure=dz.NAME, steps=[s.name for s in dz.PROCEDURE.steps]))


@then(parsers.re(r"the sidecar runs (?P<version>v[\w.+-]+) in the same pod, and agave was not restarted"))
def upgraded_in_place(dz_run: DzRun, pod: PodInfo, version: str, evidence: Recorder) -> None:
    ctx = dz_run.ctx
    if ctx.params["target_version"] != version:
        raise StepRefused(f"the step names {version}, but the procedure ran to {ctx.params['target_version']}")
    judge(evidence, iso.upgraded_in_place(dz.before(ctx), dz.observe_now(ctx), image=ctx.facts.target_image,
                                          pod=pod.name, upgraded=ctx.facts.pod))


@when("the dz-upgrade procedure is rolled back")
def roll_back_procedure(dz_run: DzRun, evidence: Recorder) -> None:
    dz.PROCEDURE.roll_back(dz_run.ctx, dz_run.journal)
    evidence.call(f"runbook rollback {dz.NAME}", dz_run.journal.load().get("status"))


@then("the sidecar runs its previous image in the same pod, and agave was not restarted")
def restored_in_place(dz_run: DzRun, evidence: Recorder) -> None:
    ctx = dz_run.ctx
    judge(evidence, iso.restored_in_place(dz.before(ctx), dz.observe_now(ctx), restarts=2))
