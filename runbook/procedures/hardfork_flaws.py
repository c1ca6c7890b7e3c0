"""The hard fork as the seeds' earlier designs had it, for negative tests only (run through the hard-fork features
with ``--procedure-override hardfork-upgrade=<name>`` on a disposable env; refused elsewhere): each must fail the
scenario that targets it.

- ``hardfork-seed-order``: the seed's ordering: the Service's selector moves when the plan completes, after the
  incumbents are torn down (seed 001, "Traffic Switch Timing"), so for a while no pod is behind the Service.
- ``hardfork-halt-signal``: the 6-task plan's SubmitHaltSignal: a fire-and-forget SIGTERM to every incumbent's
  seid (through its container) once the entrants are created, so the incumbents stop (and restart) before
  the switch.
"""

from __future__ import annotations

import dataclasses

from runbook.procedures import hardfork as h
from runbook.procedures.framework import Procedure, Step

_ours = {s.name: s for s in h.PROCEDURE.steps}


def _halt_signal(ctx: h.Ctx) -> None:
    c = h.cfg(ctx)
    for p in h.pods_of(ctx, c.statefulset(ctx.facts.incumbent)):
        ctx.adapters.workloads.exec(p.name, c.container, ["kill", "-TERM", "1"], timeout=10.0)
    ctx.mark("halt signal", f"SIGTERM to every {c.statefulset(ctx.facts.incumbent)} pod's seid")


def _torn_down_only(ctx: h.Ctx) -> None:
    """The seed's TeardownNodes checks the nodes are gone, not what the Service has behind it."""
    if not h.torn_down(ctx):
        raise h.CheckFailed(f"statefulset {h.cfg(ctx).statefulset(ctx.facts.incumbent)} is still there")


SEED_ORDER = dataclasses.replace(
    h.PROCEDURE, name="hardfork-seed-order",
    summary="the seed's ordering: teardown of the incumbents, then the selector flip at the plan's end",
    steps=(_ours["create-entrants"], _ours["await-running"],
           dataclasses.replace(_ours["teardown"], verify=_torn_down_only), _ours["switch-traffic"]))

HALT_SIGNAL = dataclasses.replace(
    h.PROCEDURE, name="hardfork-halt-signal",
    summary="the 6-task plan: a halt signal (SIGTERM) to the incumbents after the entrants are created",
    steps=(_ours["create-entrants"],
           Step("submit-halt-signal", "SIGTERM to every incumbent's seid (fire and forget)", action=_halt_signal,
                verify=lambda ctx: None),
           _ours["await-running"], _ours["switch-traffic"], _ours["teardown"]))

FLAWED: tuple[Procedure, ...] = (SEED_ORDER, HALT_SIGNAL)
