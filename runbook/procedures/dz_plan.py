"""What ``runbook plan dz-upgrade`` shows: the checks before the patch, the patch of the running pod's
doublezerod image, the isolation proof after it, the rollback patch, and the drift check (nothing is run).

In plan mode :func:`dz_upgrade.prepare` reads nothing: the colour is assumed (``--live``, green), the pod is
``$POD`` (the header says how to find it), and the old image is deploy/k8s's (a run reads it from the pod)."""

from __future__ import annotations

import json

from runbook.env import Env
from runbook.manifests import APP_CONTAINER
from runbook.procedures import bluegreen as bg
from runbook.procedures.facts import DzFacts
from runbook.procedures.framework import Context
from runbook.procedures.planning import Planner, PlanRequest, kubectl, on_host, selector

POD = "$POD"
SESSION_UP = "BGP Session Up"


def _index(ctx: Context[DzFacts]) -> str:
    return "<i>" if ctx.facts.index is None else str(ctx.facts.index)


def _jsonpath(ctx: Context[DzFacts], expr: str) -> str:
    return f"{kubectl(ctx.env)} get pod {POD} -o jsonpath='{expr}'"


def _sidecar_status(ctx: Context[DzFacts]) -> str:
    return _jsonpath(ctx, f'{{.status.initContainerStatuses[?(@.name=="{ctx.env.doublezero.sidecar}")]}}')


def _app_status(ctx: Context[DzFacts]) -> str:
    return _jsonpath(ctx, f'{{.status.containerStatuses[?(@.name=="{APP_CONTAINER}")]}}')


def _exec(ctx: Context[DzFacts], *argv: str) -> str:
    return f"{kubectl(ctx.env)} exec {POD} -c {ctx.env.doublezero.sidecar} -- {' '.join(argv)}"


def _routes(ctx: Context[DzFacts], note: str) -> str:
    return on_host(ctx.env, [f"ip route show dev {ctx.env.doublezero.interface}"])[0] + f"   # {note}"


def patch(ctx: Context[DzFacts], image: str) -> str:
    ops = [{"op": "replace", "path": f"/spec/initContainers/{_index(ctx)}/image", "value": image}]
    return f"{kubectl(ctx.env)} patch pod {POD} --type=json -p '{json.dumps(ops, separators=(',', ':'))}'"


def restart_proof(ctx: Context[DzFacts], image: str, version: str) -> list[str]:
    env = ctx.env
    return [_sidecar_status(ctx) + f"   # poll, deadline {env.timeouts.sidecar_restart:.0f}s: restartCount before+1, "
            f"running {image}, imageID changed",
            _app_status(ctx) + "   # agave NOT restarted: same pod, startedAt, restartCount",
            _exec(ctx, "doublezero", "--version") + f"   # DoubleZero {bg.bare_version(version)}",
            _exec(ctx, "doublezero", "status") + f"   # {SESSION_UP} on {env.doublezero.expected_device}",
            _routes(ctx, "the same routes as before, and in every sample taken during the restart")]


def plan_check(ctx: Context[DzFacts]) -> list[str]:
    env = ctx.env
    return [_sidecar_status(ctx) + "   # before: restartCount, imageID, running; a native sidecar (restartPolicy "
            "Always)",
            _app_status(ctx) + "   # before: startedAt, restartCount",
            _exec(ctx, "doublezero", "status") + f"   # {SESSION_UP} on {env.doublezero.expected_device}",
            _routes(ctx, "the routes before (at least one)")]


def plan_patch(ctx: Context[DzFacts]) -> list[str]:
    return [patch(ctx, ctx.facts.target_image) + "   # nothing if it already runs it"]


def plan_verify(ctx: Context[DzFacts]) -> list[str]:
    return restart_proof(ctx, ctx.facts.target_image, ctx.facts.target_version)


def plan_rollback(ctx: Context[DzFacts]) -> list[str]:
    f = ctx.facts
    old = str(f.old_image)
    return [patch(ctx, old), *restart_proof(ctx, old, old.rsplit(":", 1)[-1])]


def plan_drift(ctx: Context[DzFacts]) -> list[str]:
    f = ctx.facts
    return [f"{kubectl(ctx.env)} get deployment {f.deployment} -o jsonpath='{{.spec.template.spec.initContainers"
            f"[{_index(ctx)}].image}}'   # still {f.old_image}: the pod drifts from its template, and the next "
            "rollout of the template reverts the sidecar (recorded loudly)"]


def header_lines(env: Env, req: PlanRequest, ctx: Context[DzFacts]) -> tuple[list[str], list[str], list[str]]:
    f = ctx.facts
    params = [f"  --target-version={f.target_version}   the sidecar runs {f.target_image} (the running "
              "image's repository, this tag; pytest's --dz-target-version)"]
    find_pod = (f"{kubectl(env)} get pods -l {selector(env, f.colour)} --field-selector=status.phase=Running "
                "-o jsonpath='{.items[0].metadata.name}'")
    assumed = [f"  colour        {f.colour} (--live; a run takes the colour serving the ingress, from the "
               f"{env.ingress.upstream_header} header of GET {env.ingress.url}/health)",
               f"  $POD          {f.deployment}'s running pod: POD=$({find_pod})",
               f"  old image     {f.old_image} (deploy/k8s's; a run reads it from the pod, and the index of "
               f"{env.doublezero.sidecar} in its initContainers, {_index(ctx)} here)"]
    on_failure = ["  the `rollback:` lines run (the old image patched back, verified the same way), then the "
                  f"sidecar must run {f.old_image} in the same pod, agave untouched, {SESSION_UP}"]
    return params, assumed, on_failure


PLANNER = Planner(facts=lambda ctx: None, header=header_lines)
