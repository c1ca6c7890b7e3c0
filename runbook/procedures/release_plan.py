"""What ``runbook plan release`` shows: every object read and written and every API call, in order, with what
each must show. Nothing is read: the active colour is assumed (``--live``, else blue) and the header says so."""

from __future__ import annotations

from typing import Any

from runbook.env import Env
from runbook.env_release import COLOURS, ReleaseConfig
from runbook.procedures.facts import ReleaseFacts
from runbook.procedures.framework import Context
from runbook.procedures.planning import Planner, PlanRequest, kubectl

Ctx = Context[ReleaseFacts]


def _cfg(ctx: Context[Any]) -> ReleaseConfig:
    c: ReleaseConfig = ctx.adapters.release  # an env without the section: a ConfigError naming it
    return c


def assume(ctx: Ctx) -> None:
    c, f = _cfg(ctx), ctx.facts
    f.version = str(ctx.params.get("target_version") or ctx.params.get("version") or "$VERSION")
    f.tags = {comp: f.version for comp in c.components}
    f.active = str(ctx.params.get("live") or COLOURS[0])
    f.pending = COLOURS[1] if f.active == COLOURS[0] else COLOURS[0]


def _names(ctx: Ctx, colour: str, kind: str) -> list[str]:
    c = _cfg(ctx)
    return [c.name(comp, colour) for comp in c.components]


def read_state(ctx: Ctx) -> list[str]:
    c, k = _cfg(ctx), kubectl(ctx.env)
    return [f"{k} get configmap {c.state} -o json   # state.json (phase, active, pending, target), history.json; "
            f"none: the first release",
            "# phase Deploying/Switching/Cleanup with another target: refused (finish that release first); with "
            "this target: resumed at that phase, its deadline unchanged",
            f"{k} get deployment,configmap,service -l app={c.app},colour={ctx.facts.active} -o json   "
            f"# the active colour, snapshotted (uid, resourceVersion, pods, restarts)"]


def deploy(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    lines = [f"{k} replace configmap {c.state}   # phase Deploying, pending {f.pending}, pending_deployed_at "
             f"$NOW, target {f.version} (on the resourceVersion read: a conflict means another runner)"]
    for kind in ("configmap", "service", "deployment"):
        for n in _names(ctx, f.active, kind):
            new = n.rsplit("-", 1)[0] + f"-{f.pending}"
            extra = ""
            if kind == "deployment":
                comp = n.split("-")[-2]
                extra = f", image {c.images.get(comp, '?')}:{f.tags.get(comp, f.version)}"
            lines.append(f"{k} create {kind} {new}   # from {kind} {n} (live; the template {c.template} on the "
                         f"first release): colour={f.pending}, version={f.version}{extra}")
    lines.append(f"# a deployment whose selector (immutable) differs: {k} delete deployment <name> --wait, "
                 "then create")
    return lines


def deploy_verify(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} get deployment,configmap,service -l app={c.app},colour={f.pending}   # all "
            f"{len(c.components) * 3} objects exist"]


def undeploy(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} delete deployment,service,configmap " + " ".join(_names(ctx, f.pending, "")) + "   --wait",
            f"{k} replace configmap {c.state}   # phase Stable, a Failed record for {f.version}",
            f"{k} get deployment,configmap,service,pods -l app={c.app},colour={f.active}   # untouched: same uids, "
            "resourceVersions, pods, restart counts",
            "# on a first release (no active colour): nothing deleted; the record Failed, phase Failed"]


def await_ready(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    names = " ".join(_names(ctx, f.pending, ""))
    return [f"every 0.5s: {k} get deployment {names} -o json   # readyReplicas == spec.replicas, "
            f"observedGeneration >= generation",
            f"every 0.5s: {k} get pods -l app={c.app},colour={f.pending} -o json   # a container waiting "
            f"ImagePullBackOff, ErrImagePull, CrashLoopBackOff, ... or restarted {c.max_restarts} times: "
            "failed at once",
            f"# ready without a break for {c.grace:g}s (the grace period); deadline pending_deployed_at + "
            f"{c.ready_timeout:g}s (a resume or a crash never restarts it)",
            f"{k} replace configmap {c.state}   # phase Switching"]


def await_ready_verify(ctx: Ctx) -> list[str]:
    return [f"{kubectl(ctx.env)} get deployment " + " ".join(_names(ctx, ctx.facts.pending, "")) +
            "   # ready replicas == spec"]


def switch(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    props = " ".join(f"{comp.upper()}_SERVICE_HOST={c.name(comp, f.pending)}" for comp in c.components)
    return [f"{k} replace configmap {c.common}   # config.properties: {props}",
            f"{k} replace configmap {c.state}   # history: {f.version} on {f.pending} Active, the last Active "
            f"Superseded, {c.history} kept; active {f.pending}, old {f.active}, phase Cleanup"]


def switch_verify(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} get configmap {c.common} -o json   # names {f.pending}'s Services",
            f"every 0.5s, each pod of deployment {c.gateway}: {k} exec <pod> -c {c.gateway_container} -- "
            f"meta-gateway config   # the process has loaded {f.pending}'s Services (deadline {c.switch_timeout:g}s)"]


def unswitch(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} replace configmap {c.common}   # back on {f.active}'s Services",
            f"{k} replace configmap {c.state}   # {f.version} Failed, the superseded record Active again",
            f"each pod of {c.gateway}: {k} exec <pod> -c {c.gateway_container} -- meta-gateway config   "
            f"# back on {f.active}"]


def cleanup(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    names = " ".join(_names(ctx, f.active, ""))
    return [f"{k} get deployment,service,configmap {names} -o json   # saved (the rollback re-creates them)",
            f"{k} delete deployment {names} --wait; {k} delete service,configmap {names}",
            f"{k} replace configmap {c.state}   # phase Stable"]


def cleanup_verify(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} get deployment,configmap,service -l app={c.app},colour={f.active}   # none left",
            f"{k} get configmap {c.state}   # Stable, {f.pending} active, the Active record {f.version}"]


def uncleanup(ctx: Ctx) -> list[str]:
    f, k = ctx.facts, kubectl(ctx.env)
    return [f"{k} create -f <the saved objects of {f.active}>   # then ready again"]


def header(env: Env, req: PlanRequest, ctx: Ctx) -> tuple[list[str], list[str], list[str]]:
    c, f = _cfg(ctx), ctx.facts
    return ([f"  release {f.version}: " + ", ".join(f"{c.images[comp]}:{f.tags[comp]}" for comp in c.components),
             f"  grace {c.grace:g}s, ready deadline {c.ready_timeout:g}s, switch deadline {c.switch_timeout:g}s, "
             f"history {c.history}"],
            [f"  active colour {f.active} (--live), so the release goes to {f.pending}; the run reads the state "
             f"ConfigMap {c.state}"],
            ["  a failure before the switch: the new colour deleted, the release Failed, the active colour checked "
             "untouched; after the switch: the common ConfigMap back first"])


PLANNER = Planner(facts=assume, header=header)
