"""Seed 004's rollback to a specific version: ``kubectl rollout undo deployment/zai-proxy --to-revision=N``, as a
procedure with a precondition, a verification and its own rollback.

Steps:
  undo   precondition: revision N is in production's rollout history (the error lists those there are).
         Action: ``rollout undo --to-revision=N`` (nothing when production's template already is N's: kubectl's
         "skipped rollback"). Verify, with the rollout's deadline: every pod Ready on N's image with N's version
         label, and the newest revision in the history carries N's template. Rollback: undo back to the revision
         production ran before.

Parameters: ``to_revision`` (required), ``plan``.
"""

from __future__ import annotations

from typing import Any

from runbook.checks import canary as cc
from runbook.errors import PreconditionFailed
from runbook.procedures import canary_promote as cp
from runbook.procedures.facts import CanaryFacts
from runbook.procedures.framework import Context, Procedure, Step
from runbook.procedures.planning import kubectl

NAME = "canary-undo"


def prepare(ctx: Context[CanaryFacts]) -> None:
    c, f = cp.cfg(ctx), ctx.facts
    try:
        f.to_revision = int(ctx.params["to_revision"])
    except (KeyError, TypeError, ValueError):
        raise PreconditionFailed(f"{NAME} needs to_revision, a revision number from `kubectl rollout history "
                                 f"deployment/{c.production}`", env=ctx.env.name, procedure=NAME) from None
    if ctx.params.get("plan"):
        f.old_revision, f.old_image, f.target_image = 0, "$CURRENT_IMAGE", f"<revision {f.to_revision}'s image>"
        return
    r = ctx.adapters.rollouts
    history = r.rollout_history(c.production)
    wanted = next((rev for rev in history if rev.number == f.to_revision), None)
    if wanted is None:
        raise PreconditionFailed(f"deployment {c.production} has no revision {f.to_revision}: its history holds "
                                 f"{[rev.number for rev in history]}", env=ctx.env.name, procedure=NAME,
                                 obj=c.production)
    dep = ctx.adapters.workloads.deployment(c.production)
    f.old_revision = r.rollout_status(c.production).revision
    f.old_image, f.old_version = cp.template_image(dep, c.container), cp.template_label(dep, cp.VERSION_LABEL)
    f.target_image = wanted.images.get(c.container, "")
    f.target_version = wanted.labels.get(cp.VERSION_LABEL, "")
    ctx.record("rollout history before the undo", [
        {"revision": rev.number, "images": rev.images, "version": rev.labels.get(cp.VERSION_LABEL),
         "cause": rev.change_cause} for rev in history])


def _at_target(ctx: Context[CanaryFacts]) -> bool:
    c, f = cp.cfg(ctx), ctx.facts
    return cp.template_image(ctx.adapters.workloads.deployment(c.production), c.container) == f.target_image


def _undo(ctx: Context[CanaryFacts]) -> None:
    c, f = cp.cfg(ctx), ctx.facts
    ctx.mark("undo", f"rollout undo {c.production} --to-revision={f.to_revision}")
    ctx.adapters.rollouts.rollout_undo(c.production, to_revision=f.to_revision)


def _verify(ctx: Context[CanaryFacts]) -> None:
    c, f, r = cp.cfg(ctx), ctx.facts, ctx.adapters.rollouts
    cp.on_version(ctx, f.target_image, f.target_version)
    ctx.judge(cc.revision_current(r.rollout_history(c.production), r.rollout_status(c.production),
                                  images={c.container: f.target_image}))


def _rollback(ctx: Context[CanaryFacts]) -> None:
    c, f = cp.cfg(ctx), ctx.facts
    if cp.template_image(ctx.adapters.workloads.deployment(c.production), c.container) != f.old_image:
        ctx.adapters.rollouts.rollout_undo(c.production, to_revision=f.old_revision)
    cp.on_version(ctx, f.old_image, f.old_version)


def _plan(ctx: Context[Any]) -> list[str]:
    c, f = cp.cfg(ctx), ctx.facts
    k = kubectl(ctx.env)
    return [f"{k} rollout undo deployment/{c.production} --to-revision={f.to_revision}"]


def _plan_check(ctx: Context[Any]) -> list[str]:
    c, f = cp.cfg(ctx), ctx.facts
    return [f"{kubectl(ctx.env)} rollout history deployment/{c.production}   # revision {f.to_revision} is there; "
            "$CURRENT: the revision production runs now"]


def _plan_verify(ctx: Context[Any]) -> list[str]:
    c, f = cp.cfg(ctx), ctx.facts
    k = kubectl(ctx.env)
    return [f"{k} rollout status deployment/{c.production}   # deadline {c.rollout:g}s",
            f"{k} get pods -l app=zai-proxy,variant=production -o json   # every pod Ready on revision "
            f"{f.to_revision}'s image and version label",
            f"{k} rollout history deployment/{c.production}   # the newest revision carries {f.to_revision}'s template"]


def _plan_rollback(ctx: Context[Any]) -> list[str]:
    c = cp.cfg(ctx)
    return [f"{kubectl(ctx.env)} rollout undo deployment/{c.production} --to-revision=$CURRENT"]


PROCEDURE = Procedure(
    name=NAME,
    summary="roll production back to a named revision of its rollout history (kubectl rollout undo --to-revision)",
    facts=CanaryFacts,
    prepare=prepare,
    steps=(Step("undo", "production's template back to the named revision", action=_undo, verify=_verify,
                is_done=_at_target, rollback=_rollback, plan_check=_plan_check, plan=_plan, plan_verify=_plan_verify,
                plan_rollback=_plan_rollback),),
)
