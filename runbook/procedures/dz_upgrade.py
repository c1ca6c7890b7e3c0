"""Procedure 1: the DoubleZero binary upgrade, zero downtime, in the running pod.

doublezerod is a native sidecar (an initContainer with ``restartPolicy: Always``). Patching its image in
the *running pod* restarts only that container (Kubernetes >= 1.32; design trap 5); the GRE tunnel and
its BGP routes live in the kernel and survive the daemon's restart. Patching the Deployment *template*
instead would replace the whole pod, agave included: never do that here.

Steps:
  patch-sidecar  precondition: the colour's pod runs, doublezerod is a native sidecar in it, the BGP session
                 is up, routes are on doublezero0. Action: patch the pod's sidecar image (nothing if it is
                 already at the target). Verify, with deadlines: the sidecar restarted exactly once and runs
                 the target image (new imageID), ``doublezero --version`` reports the target,
                 ``doublezero status`` is back to BGP Session Up on the expected device, agave was NOT
                 restarted (same pod, startedAt, restartCount), the routes are the same set as before.
                 Rollback: patch the old image back, verified the same way.
  record-drift   the pod now drifts from its Deployment template: the next rollout of the template (an
                 apply, a restart, the agave upgrade's redeploy) REVERTS the sidecar image. Recorded loudly.

Parameters: ``target_version`` (``v0.6.1``), ``colour`` (default: the colour serving the ingress),
``skip_routes_reason`` (non-empty: routes are not observable here, e.g. a testbed without a network
namespace; the route checks are skipped with that reason), ``plan`` (render without reading anything).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runbook.adapters.base import PodInfo
from runbook.checks import doublezero as dzc
from runbook.checks import isolation as iso
from runbook.checks import required
from runbook.checks.core import Verdict
from runbook.checks.workloads import running_pod
from runbook.errors import AdapterError, CheckFailed, PreconditionFailed, WaitTimeout
from runbook.images import same_image
from runbook.manifests import APP_CONTAINER, render_deployment
from runbook.procedures import bluegreen as bg
from runbook.procedures import dz_plan
from runbook.procedures.facts import DzFacts
from runbook.procedures.framework import Context, Procedure, Step
from runbook.wait import wait_for

NAME = "dz-upgrade"
SESSION_UP = dzc.SESSION_UP


# ------------------------------------------------------------------------------------------- facts
def context(adapters: Any, *, target_version: str, colour: str | None = None, skip_routes_reason: str = "",
            progress: Callable[[str], None] = print, record: Callable[[str, Any], None] = lambda t, d: None,
            verdicts: Callable[[Verdict], None] = lambda v: None) -> Context[DzFacts]:
    """A Context for this procedure (what steps and tests build)."""
    params: dict[str, Any] = {"target_version": target_version}
    if colour:
        params["colour"] = colour
    if skip_routes_reason:
        params["skip_routes_reason"] = skip_routes_reason
    return PROCEDURE.context(adapters, params, progress=progress, record=record, verdicts=verdicts)


def colour_of(env: Any, deployment: str) -> str:
    for colour in bg.COLOURS:
        if env.deployments.colour(colour).name == deployment:
            return colour
    raise PreconditionFailed(f"deployment {deployment} is neither colour's (green, blue)", env=env.name, obj=deployment)


def prepare(ctx: Context[DzFacts]) -> None:
    """Derive the facts from real state: pod, images, sidecar index, and the "before" observation."""
    env, a = ctx.env, ctx.adapters
    target = str(ctx.params["target_version"])
    sidecar = env.doublezero.sidecar
    if ctx.params.get("plan"):
        colour = str(ctx.params.get("colour") or ctx.params.get("live") or "green")  # `runbook plan --live`
        dep = env.deployments.colour(colour)
        manifest = render_deployment(env, colour)
        inits = [c["name"] for c in manifest["spec"]["template"]["spec"].get("initContainers", [])]
        old = next(c["image"] for c in manifest["spec"]["template"]["spec"]["initContainers"] if c["name"] == sidecar)
        f = ctx.facts
        f.colour, f.deployment, f.pod, f.target_version = colour, dep.name, f"<the running pod of {dep.name}>", target
        f.index = inits.index(sidecar) if sidecar in inits else None
        f.old_image, f.target_image, f.already_at_target, f.before = old, bg.image_with_tag(old, target), False, {}
        return
    colour = str(ctx.params.get("colour") or bg.served_by(env, adapters=ctx.adapters) or "")
    if colour not in bg.COLOURS:
        raise PreconditionFailed(f"the ingress {env.ingress.url} is not served by green or blue: refusing to guess "
                                 "which pod to upgrade (pass colour)", env=env.name, procedure=NAME)
    dep = env.deployments.colour(colour)
    pod = running_pod(a.workloads, dep.name)
    old = pod.spec_images.get(sidecar)
    if not old:
        raise PreconditionFailed(f"pod {pod.name} has no {sidecar} container (observed {sorted(pod.spec_images)})",
                                 env=env.name, procedure=NAME, obj=pod.name)
    target_image = bg.image_with_tag(old, target)
    f = ctx.facts
    f.colour, f.deployment, f.pod, f.target_version = colour, dep.name, pod.name, target
    f.index, f.old_image, f.target_image = iso.sidecar_index(pod, sidecar), old, target_image
    f.already_at_target = old == target_image
    ctx.facts.before = observe_now(ctx).as_dict()
    ctx.record("before the upgrade", ctx.facts.before)


def _interface(ctx: Context[DzFacts]) -> str | None:
    return None if ctx.params.get("skip_routes_reason") else str(ctx.env.doublezero.interface)


def observe_now(ctx: Context[DzFacts]) -> iso.Observation:
    f = ctx.facts
    return iso.observe(ctx.adapters.workloads, ctx.adapters.host, deployment=f.deployment, pod=f.pod,
                       sidecar=ctx.env.doublezero.sidecar, app=APP_CONTAINER, interface=_interface(ctx))


def before(ctx: Context[DzFacts]) -> iso.Observation:
    return iso.Observation.from_dict(ctx.facts.before)


def _pod(ctx: Context[DzFacts]) -> PodInfo:
    return ctx.adapters.workloads.pod(ctx.facts.pod)


def _where(ctx: Context[DzFacts], step: str) -> dict[str, Any]:
    return {"env": ctx.env.name, "procedure": NAME, "step": step, "obj": str(ctx.facts.pod)}


# ------------------------------------------------------------------------------------------- checks
def check_version(ctx: Context[DzFacts], version: str) -> str:
    """``doublezero --version`` in the sidecar reports ``version`` (polled: the container may be starting)."""
    f, sidecar, want = ctx.facts, ctx.env.doublezero.sidecar, bg.bare_version(version)

    def observe() -> str:
        r = ctx.adapters.workloads.exec(f.pod, sidecar, ["doublezero", "--version"])
        return r.stdout.strip() if r.ok else f"exit {r.rc}: {(r.stderr or r.stdout).strip()}"

    try:
        out = wait_for(observe, lambda o: iso.sidecar_version(o, expected=want).ok,
                       timeout=ctx.env.timeouts.sidecar_restart, interval=0.2, tolerate=(AdapterError,),
                       what=f"`doublezero --version` to report {want}", **_where(ctx, "verify"))
    except WaitTimeout as exc:
        out = str(exc.last_state)
    ctx.record(f"exec {f.pod}/{sidecar}: doublezero --version", out)
    ctx.judge(iso.sidecar_version(out, expected=want))
    return out


def check_session_up(ctx: Context[DzFacts]) -> dzc.DzStatus:
    """``doublezero status`` back to BGP Session Up on the expected device (polled with a deadline)."""
    f, sidecar, device = ctx.facts, ctx.env.doublezero.sidecar, ctx.env.doublezero.expected_device
    try:
        st = wait_for(lambda: dzc.sidecar_status(ctx.adapters.workloads, f.pod, sidecar),
                      lambda s: dzc.session(s, device=device).ok,
                      timeout=ctx.env.timeouts.sidecar_restart, interval=0.2, tolerate=(AdapterError,),
                      what=f"{SESSION_UP} on {device}", **_where(ctx, "verify"))
    except WaitTimeout as exc:
        last = exc.last_state
        if isinstance(last, dzc.DzStatus):
            ctx.judge(dzc.session(last, device=device))
        raise CheckFailed(f"`doublezero status` in {f.pod}/{sidecar}: expected {SESSION_UP!r} on {device!r}, "
                          f"observed {last!r}", expected=SESSION_UP, observed=str(last),
                          **_where(ctx, "verify")) from None
    ctx.record(f"exec {f.pod}/{sidecar}: doublezero status", st.raw)
    ctx.judge(dzc.session(st, device=device))
    return st


def wait_restart(ctx: Context[DzFacts], start: iso.Observation, *,
                 image: str) -> tuple[iso.Observation, list[iso.Observation]]:
    """Poll until the sidecar is back on ``image`` after a restart, or agave was disturbed, or the deadline:
    returns the last observation (the checks judge it) and every sample taken (routes throughout)."""
    samples: list[iso.Observation] = []

    def observe() -> iso.Observation:
        samples.append(observe_now(ctx))
        return samples[-1]

    try:
        last = wait_for(observe, lambda o: iso.restart_settled(start, o, image=image),
                        timeout=ctx.env.timeouts.sidecar_restart, interval=0.2, tolerate=(AdapterError,),
                        what=f"the {ctx.env.doublezero.sidecar} sidecar to restart on {image}", **_where(ctx, "verify"))
    except WaitTimeout:
        last = observe_now(ctx)
        ctx.progress(f"[{NAME}] the sidecar did not restart on {image} within {ctx.env.timeouts.sidecar_restart:.0f}s")
    return last, samples


def verify_restart(ctx: Context[DzFacts], start: iso.Observation, *, image: str, version: str,
                   title: str) -> iso.Observation:
    """The whole isolation proof after a patch to ``image``, one check at a time (each verdict recorded):
    the sidecar restarted once on it, agave untouched, its version and session, routes kept throughout."""
    after, samples = wait_restart(ctx, start, image=image)
    ctx.judge(iso.app_untouched(start, after))  # first: agave disturbed is the failure that matters most
    ctx.judge(iso.sidecar_restarted(start, after, image=image, which=title))
    check_version(ctx, version)
    check_session_up(ctx)
    end = observe_now(ctx)
    ctx.judge(iso.app_untouched(start, end))
    ctx.judge(iso.routes_kept(start, samples, end, interface=str(ctx.env.doublezero.interface),
                              skip_reason=str(ctx.params.get("skip_routes_reason") or "")))
    ctx.record(f"{title}: restart isolation", {"before": start.as_dict(), "after": end.as_dict(),
                                                "route samples": len(samples)})
    return end


# ------------------------------------------------------------------------------------------- patch-sidecar
def sidecar_at(ctx: Context[DzFacts], image: str) -> bool:
    pod = _pod(ctx)
    c = pod.container(ctx.env.doublezero.sidecar)
    return same_image(pod.spec_images.get(c.name, ""), image) and same_image(c.image, image) and c.state == "running"


def sidecar_at_target(ctx: Context[DzFacts]) -> bool:
    return sidecar_at(ctx, ctx.facts.target_image)


def require_ready(ctx: Context[DzFacts]) -> None:
    """The pod runs, doublezerod is a native sidecar in it; before patching: session up, routes present."""
    pod = _pod(ctx)
    required.native_sidecar(pod, ctx.env.doublezero.sidecar).require(precondition=True)
    if sidecar_at_target(ctx):
        return  # converged already (a resumed run): the verification checks the rest
    st = dzc.sidecar_status(ctx.adapters.workloads, pod.name, ctx.env.doublezero.sidecar)
    if st.session != SESSION_UP or st.device != ctx.env.doublezero.expected_device:
        raise PreconditionFailed(f"the DoubleZero session is not up before the upgrade: expected {SESSION_UP!r} on "
                                 f"{ctx.env.doublezero.expected_device!r}, observed {st.session!r} on {st.device!r}",
                                 **_where(ctx, "patch-sidecar"))
    if _interface(ctx) is not None and not before(ctx).routes:
        raise PreconditionFailed(f"no routes on {_interface(ctx)} before the upgrade: expected the tunnel's routes, "
                                 "observed none, so their survival could not be shown", **_where(ctx, "patch-sidecar"))


def patch_sidecar(ctx: Context[DzFacts]) -> None:
    f = ctx.facts
    ctx.mark("dz sidecar patch", f"{f.pod}: {f.old_image} -> {f.target_image}")
    ctx.adapters.workloads.patch_pod_container_image(f.pod, ctx.env.doublezero.sidecar, f.target_image)
    ctx.record("patched the running pod's sidecar image", {"pod": f.pod, "container": ctx.env.doublezero.sidecar,
                                                          "from": f.old_image, "to": f.target_image})


def verify_upgrade(ctx: Context[DzFacts]) -> None:
    f = ctx.facts
    if f.already_at_target:
        ctx.progress(f"[{NAME}] {f.pod} already ran {f.target_image}: nothing was patched, nothing restarted")
        if not sidecar_at_target(ctx):
            raise CheckFailed(f"{ctx.env.doublezero.sidecar} is not running {f.target_image}",
                              expected=f.target_image, observed=_pod(ctx).spec_images, **_where(ctx, "verify"))
        check_version(ctx, f.target_version)
        check_session_up(ctx)
        return
    verify_restart(ctx, before(ctx), image=f.target_image, version=f.target_version, title="upgrade")


def old_version(ctx: Context[DzFacts]) -> str:
    return str(ctx.facts.old_image).rsplit(":", 1)[-1]


def patch_back(ctx: Context[DzFacts]) -> iso.Observation:
    """Patch the old image back into the running pod; returns the observation taken just before."""
    f = ctx.facts
    start = observe_now(ctx)
    ctx.mark("dz sidecar rollback", f"{f.pod}: -> {f.old_image}")
    ctx.adapters.workloads.patch_pod_container_image(f.pod, ctx.env.doublezero.sidecar, f.old_image)
    ctx.record("patched the old sidecar image back", {"pod": f.pod, "to": f.old_image})
    return start


def roll_back_patch(ctx: Context[DzFacts]) -> None:
    """Patch the old image back into the running pod, verified like the upgrade (isolation, version, session)."""
    f = ctx.facts
    if sidecar_at(ctx, f.old_image):
        ctx.progress(f"[{NAME}] {f.pod} already runs {f.old_image}: nothing to roll back")
        return
    start = patch_back(ctx)
    verify_restart(ctx, start, image=f.old_image, version=old_version(ctx), title="rollback")


def sidecar_restored(ctx: Context[DzFacts]) -> None:
    """Steady state after a rollback: the same pod, agave untouched, the sidecar on its old image, session up."""
    ctx.judge(iso.back_on(before(ctx), observe_now(ctx), image=ctx.facts.old_image))
    check_session_up(ctx)


# ------------------------------------------------------------------------------------------- record-drift
def drift_message(pod: str, deployment: str, sidecar: str, template: str, running: str) -> str:
    return (f"DRIFT: pod {pod} runs {sidecar} {running} but Deployment {deployment}'s template says {template}. "
            f"The NEXT ROLLOUT of the template (an apply, a restart, an agave upgrade's redeploy) REVERTS the "
            f"sidecar to {template}: put {running} in the template (deploy/k8s) before then.")


def record_drift(ctx: Context[DzFacts]) -> dict[str, tuple[str, str]]:
    """Record (loudly) how the pod differs from its Deployment template; the template must be untouched."""
    f, sidecar = ctx.facts, ctx.env.doublezero.sidecar
    pod = _pod(ctx)
    drift = pod.drift
    template, running = pod.template_images.get(sidecar, ""), pod.spec_images.get(sidecar, "")
    ctx.judge(iso.drift(pod=pod.name, template=template, running=running, want_template=before(ctx).template_image,
                        want_running=f.target_image))
    if sidecar in drift:
        msg = drift_message(pod.name, f.deployment, sidecar, template, running)
        ctx.progress(f"[{NAME}] WARNING {msg}")
        ctx.mark("drift", msg)
    else:
        msg = f"no drift: Deployment {f.deployment}'s template already has {running}"
        ctx.progress(f"[{NAME}] {msg}")
    ctx.record("drift from the Deployment template", {"drift": {k: list(v) for k, v in drift.items()}, "note": msg})
    ctx.facts.drift = {k: list(v) for k, v in drift.items()}
    return drift


def verify_drift(ctx: Context[DzFacts]) -> None:
    record_drift(ctx)


PROCEDURE = Procedure(
    facts=DzFacts,
    name=NAME,
    summary="DoubleZero binary upgrade: patch the running pod's doublezerod sidecar only, zero downtime",
    prepare=prepare,
    steady_state=sidecar_restored,
    steps=(
        Step("patch-sidecar", "patch the running pod's doublezerod image (only the sidecar restarts)", patch_sidecar,
             verify_upgrade, is_done=sidecar_at_target, precondition=require_ready, rollback=roll_back_patch,
             plan_check=dz_plan.plan_check, plan=dz_plan.plan_patch, plan_verify=dz_plan.plan_verify,
             plan_rollback=dz_plan.plan_rollback),
        Step("record-drift", "record the pod's drift from its Deployment template (the next rollout reverts it)",
             lambda ctx: None, verify_drift, plan=lambda ctx: ["# nothing: a record"], plan_verify=dz_plan.plan_drift),
    ),
)
