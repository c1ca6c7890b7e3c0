"""Our release procedure with one known flaw each, for negative tests only (run through the release features with
``--procedure-override release=<name>`` on a disposable env; refused elsewhere): each must fail the scenario that
targets it.

- ``release-early-switch``: switches as soon as the new colour is ready, without the grace period.
- ``release-rollback-deletes-active``: the automatic rollback deletes the active colour as well as the new one.
- ``release-deadline-resets``: the failure check waits for readiness with a deadline counted from the newest
  container start and reads no waiting reason or restart count (Argo Rollouts #3765: a crash loop resets it).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

from runbook.procedures import release as r
from runbook.procedures import release_colours as rcol
from runbook.procedures.framework import Procedure
from runbook.wait import wait_for

_ours = {s.name: s for s in r.PROCEDURE.steps}


def _await_ready_no_grace(ctx: r.Ctx) -> None:
    f = ctx.facts
    wait_for(lambda: rcol.observe_colour(ctx, f.pending, max_restarts=r.cfg(ctx).max_restarts)[0], lambda v: v.ok,
             timeout=r.cfg(ctx).ready_timeout, interval=0.5, what=f"colour {f.pending} ready", env=ctx.env.name)
    st = r.state(ctx)
    st.phase = "Switching"
    r.save(ctx, st, "ready", f"colour {f.pending} ready (no grace period)")


def _undeploy_both(ctx: r.Ctx) -> None:
    r.undeploy(ctx)
    if ctx.facts.active:
        rcol.delete_colour(ctx, ctx.facts.active)


def _newest_start(ctx: r.Ctx) -> float:
    starts = [c.started_at for ps in rcol.pods(ctx, ctx.facts.pending).values() for p in ps for c in p.containers
              if c.started_at is not None]
    return max((s.timestamp() for s in starts), default=0.0)


def _await_ready_resetting(ctx: r.Ctx) -> None:
    c, f = r.cfg(ctx), ctx.facts
    created = r.state(ctx).pending_deployed_at
    while True:
        start = max(created, _newest_start(ctx))
        remaining = start + c.ready_timeout - time.time()
        if remaining <= 0:
            break
        ready = r.rc.colour_ready(f.pending, rcol.statuses(ctx, f.pending))
        if ready.ok:
            ctx.progress(f"[{r.NAME}] colour {f.pending} ready at {datetime.now(UTC):%H:%M:%S}")
            break
        time.sleep(0.5)
    ctx.judge(r.rc.colour_ready(f.pending, rcol.statuses(ctx, f.pending)))
    time.sleep(c.grace)
    st = r.state(ctx)
    st.phase = "Switching"
    r.save(ctx, st, "ready", f"colour {f.pending} ready")


def _flawed(name: str, summary: str, step: str, **changes: Any) -> Procedure:
    steps = tuple(dataclasses.replace(s, **changes) if s.name == step else s for s in r.PROCEDURE.steps)
    return dataclasses.replace(r.PROCEDURE, name=name, summary=f"{summary} (for negative tests only)", steps=steps)


EARLY_SWITCH = _flawed("release-early-switch", "our release, switching without the grace period", "await-ready",
                       action=_await_ready_no_grace)
ROLLBACK_DELETES_ACTIVE = _flawed("release-rollback-deletes-active", "our release, whose rollback deletes the "
                                  "active colour too", "deploy", rollback=_undeploy_both)
DEADLINE_RESETS = _flawed("release-deadline-resets", "our release, with a failure deadline a crash restarts",
                          "await-ready", action=_await_ready_resetting)
FLAWED = (EARLY_SWITCH, ROLLBACK_DELETES_ACTIVE, DEADLINE_RESETS)
__all__ = ["DEADLINE_RESETS", "EARLY_SWITCH", "FLAWED", "ROLLBACK_DELETES_ACTIVE"]
