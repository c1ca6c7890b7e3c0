"""Seed 003's colours, as the release procedure reads and changes them through the ports: a colour's objects
(present, snapshot, created, deleted), its readiness and failure (:mod:`runbook.checks.release`), the common
ConfigMap its clients read, and what each client process has loaded. Used by :mod:`runbook.procedures.release`
and by the release steps; nothing here keeps state of its own."""

from __future__ import annotations

import json
from typing import Any

from runbook.checks import release as rc
from runbook.checks.core import Verdict
from runbook.env_release import ReleaseConfig
from runbook.errors import AdapterError, KubeError, RunbookError
from runbook.procedures import release_state as rs
from runbook.procedures.framework import Context
from runbook.wait import wait_for

NAME = "release"


def cfg(ctx: Context[Any]) -> ReleaseConfig:
    c: ReleaseConfig = ctx.adapters.release
    return c


def hosts(c: ReleaseConfig, colour: str) -> dict[str, str]:
    """The common ConfigMap's keys for a colour (the seed's switchCommonConfigMap)."""
    return {f"{comp.upper()}_SERVICE_HOST": c.name(comp, colour) for comp in c.components}


def client_hosts(c: ReleaseConfig, colour: str) -> dict[str, str]:
    """What a client that has loaded the colour reports (component -> Service)."""
    return {comp: c.name(comp, colour) for comp in c.components}


def read(ctx: Context[Any], kind: str, name: str) -> dict[str, Any] | None:
    """One object of a colour as the platform returns it (a Deployment through the workloads port, a ConfigMap or
    Service through the objects port), or None."""
    if kind == "Deployment":
        return ctx.adapters.workloads.deployment(name)
    return ctx.adapters.objects.get_object(kind, name)


def snapshot(ctx: Context[Any], colour: str) -> dict[str, Any]:
    c = cfg(ctx)
    found: dict[str, dict[str, Any] | None] = {}
    pods = []
    for kind, name in rs.colour_names(c, colour):
        found[f"{kind}/{name}"] = read(ctx, kind, name)
        if kind == "Deployment":
            pods += ctx.adapters.rollouts.pods_of(name)
    return rc.snapshot(found, pods)


def present(ctx: Context[Any], colour: str) -> list[str]:
    return [f"{kind}/{name}" for kind, name in rs.colour_names(cfg(ctx), colour)
            if read(ctx, kind, name) is not None]


def apply(ctx: Context[Any], obj: dict[str, Any]) -> None:
    """Create or replace one object of the new colour; an immutable field (a Deployment's selector) changed:
    delete it, then create it (only ever the new colour's objects come here)."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind != "Deployment":
        ctx.adapters.objects.apply_object(obj)
        return
    w = ctx.adapters.workloads
    try:
        w.apply_deployment(obj)
    except KubeError as exc:
        if exc.status != 422 or "field is immutable" not in str(exc):
            raise
        ctx.progress(f"[{NAME}] deployment {name}: an immutable field changed; deleting and re-creating it")
        ctx.record(f"deployment {name} re-created", str(exc))
        w.delete_deployment(name, wait=True)
        w.apply_deployment(obj)


def delete_colour(ctx: Context[Any], colour: str) -> None:
    c, objs, w = cfg(ctx), ctx.adapters.objects, ctx.adapters.workloads
    for kind, name in reversed(rs.colour_names(c, colour)):
        if kind == "Deployment":
            w.delete_deployment(name, wait=True)
        else:
            objs.delete_object(kind, name)
    ctx.judge(rc.colour_gone(colour, present(ctx, colour)))


def serving(ctx: Context[Any], colour: str) -> list[Verdict]:
    """The common ConfigMap names the colour's Services, and every client process has loaded them."""
    c = cfg(ctx)
    return [rc.common_names(ctx.adapters.objects.get_object("ConfigMap", c.common), hosts=hosts(c, colour)),
            rc.clients_switched(loaded_by_clients(ctx), hosts=client_hosts(c, colour))]


def statuses(ctx: Context[Any], colour: str) -> dict[str, Any]:
    c, w, r = cfg(ctx), ctx.adapters.workloads, ctx.adapters.rollouts
    out: dict[str, Any] = {}
    for comp in c.components:
        name = c.name(comp, colour)
        out[name] = r.rollout_status(name) if w.deployment(name) is not None else None
    return out


def pods(ctx: Context[Any], colour: str) -> dict[str, Any]:
    c = cfg(ctx)
    return {c.name(comp, colour): ctx.adapters.rollouts.pods_of(c.name(comp, colour)) for comp in c.components}


def observe_colour(ctx: Context[Any], colour: str, *, max_restarts: int) -> tuple[Verdict, Verdict]:
    """(ready, not failing) for the colour, now."""
    return (rc.colour_ready(colour, statuses(ctx, colour)),
            rc.colour_not_failing(colour, pods(ctx, colour), max_restarts=max_restarts))


def point_common(ctx: Context[Any], colour: str) -> None:
    """The seed's switchCommonConfigMap: ``config.properties`` names the colour's Services (other keys kept)."""
    c, objs = cfg(ctx), ctx.adapters.objects
    cm = objs.get_object("ConfigMap", c.common)
    if cm is None:
        raise AdapterError(f"the common ConfigMap {c.common} does not exist: clients read it", env=ctx.env.name,
                           procedure=NAME, obj=c.common)
    body = rs.strip_server_fields(cm)
    body["metadata"]["resourceVersion"] = cm["metadata"].get("resourceVersion")
    body.setdefault("data", {})["config.properties"] = "".join(f"{k}={v}\n" for k, v in hosts(c, colour).items())
    objs.apply_object(body)


def loaded_by_clients(ctx: Context[Any]) -> dict[str, Any]:
    """What each client process (gateway pod) has loaded: ``meta-gateway config`` exec'd in each."""
    c, w = cfg(ctx), ctx.adapters.workloads
    out: dict[str, Any] = {}
    for pod in ctx.adapters.rollouts.pods_of(c.gateway):
        try:
            res = w.exec(pod.name, c.gateway_container, ["meta-gateway", "config"], timeout=10.0)
            out[pod.name] = json.loads(res.stdout) if res.ok else f"`meta-gateway config` exited {res.rc}"
        except (AdapterError, ValueError) as exc:
            out[pod.name] = f"cannot read its config: {exc}"
    return out


def wait_clients(ctx: Context[Any], colour: str) -> None:
    c = cfg(ctx)
    want = client_hosts(c, colour)
    try:
        seen = wait_for(lambda: rc.clients_switched(loaded_by_clients(ctx), hosts=want), lambda v: v.ok,
                        timeout=c.switch_timeout, interval=0.5, what=f"every client on colour {colour}",
                        on_progress=lambda v, t: ctx.progress(f"[{NAME}] clients: {'; '.join(v.problems)}"),
                        progress_every=3.0, env=ctx.env.name, obj=c.gateway)
    except RunbookError:
        ctx.judge(rc.clients_switched(loaded_by_clients(ctx), hosts=want))
        raise
    ctx.judge(seen)
    ctx.mark("clients switched", f"every client on {colour}")
