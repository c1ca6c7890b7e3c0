"""What an SRE looks at first when a step fails: pods and events, process logs, Caddy's config and stats.

Each collector reads the adapters of the failing test; registered by the procedures plugin.
"""

from __future__ import annotations

from typing import Any

from runbook.procedures.bluegreen import COLOURS


def _adapters(ctx: Any) -> Any:
    return ctx.fixture("adapters")


def pods(ctx: Any) -> dict[str, Any]:
    a = _adapters(ctx)
    out: dict[str, Any] = {}
    for colour in COLOURS:
        dep = a.env.deployments.colour(colour)
        for p in a.workloads.pods(dep.name):
            out[f"pod {p.name} ({colour})"] = {
                "phase": p.phase, "drift": p.drift,
                "containers": [{"name": c.name, "kind": c.kind, "image": c.image, "state": c.state,
                                "reason": c.reason, "restarts": c.restart_count, "startedAt": str(c.started_at)}
                               for c in p.containers]}
            out[f"events {p.name}"] = "\n".join(a.workloads.events(p.name)[-30:]) or "(none)"
    return out or {"pods": "no pod of either colour"}


def logs(ctx: Any) -> dict[str, Any]:
    a = _adapters(ctx)
    read = getattr(a.workloads, "logs", None)
    if read is None:
        return {"logs": "this workloads adapter does not read logs"}
    out = {}
    for colour in COLOURS:
        for p in a.workloads.pods(a.env.deployments.colour(colour).name):
            for c in p.containers:
                out[f"log {p.name}/{c.name} (last 40 lines)"] = read(p.name, c.name, 40)
    return out


def caddy(ctx: Any) -> dict[str, Any]:
    a = _adapters(ctx)
    return {"caddy upstream order": a.ingress.upstream_order(),
            "caddy upstream stats": [vars(u) for u in a.ingress.upstreams()],
            "caddy config": a.ingress.config()}


COLLECTORS = {"pods and events": pods, "process logs": logs, "caddy": caddy}
