"""Rollback of the agave upgrade, from wherever it stopped.

- Before cleanup (the upgrade's journal is running, failed or interrupted): undo, in reverse, every step
  that acted: the old colour comes back if it was stopped, the idle deployment is deleted, its clone and
  the snapshot are destroyed. The live colour's data was never written to.
- After cleanup (the upgrade finished): the old colour's data is rolled back to the pre-upgrade
  snapshot and it is redeployed with its old version; once it is caught up and answers `ok`, the new
  colour is stopped gracefully (the ingress retries onto the old one), the upstream order is restored
  and the clone and the pre-upgrade snapshot are destroyed. These steps are not rolled back in turn: a
  failure stops, loudly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runbook.adapters.caddy_config import same_upstreams
from runbook.checks import upgrade_verify as uv
from runbook.errors import PreconditionFailed, RunbookError
from runbook.images import same_image
from runbook.procedures import accounts, catch_up
from runbook.procedures import agave_plan as pl
from runbook.procedures import agave_upgrade as up
from runbook.procedures import bluegreen as bg
from runbook.procedures.facts import UpgradeFacts
from runbook.procedures.framework import Context, Journal, Procedure, Step, StepOutcome
from runbook.wait import wait_for


# The facts are the upgrade's: "live" is the colour that was live before it, "idle" the one it made live.
def _swapped(ctx: Context[UpgradeFacts]) -> Context[UpgradeFacts]:
    """The upgrade's context seen from the rollback: the colour it made live is the one to stop."""
    swapped = dataclasses.replace(ctx.facts, live=ctx.facts.idle, idle=ctx.facts.live)
    return Context(adapters=ctx.adapters, params=ctx.params, facts=swapped)


def _preflight(ctx: Context[UpgradeFacts]) -> None:
    """Checked before anything changes: the old colour is not running (its data cannot be rolled back under
    it), and the ingress retries, which the shift back needs (not found out after the old colour caught up)."""
    if ctx.adapters.workloads.pods(up._live(ctx).name):
        raise PreconditionFailed(f"{up._live(ctx).name} is running: its data cannot be rolled back under it")
    up.require_ingress_retries(_swapped(ctx), doing="start the rollback")


def restore_data(ctx: Context[UpgradeFacts]) -> None:
    """Never under a mounted filesystem: a volume is unmounted (its colour is stopped: the preflight), rolled
    back, and mounted again where its Deployment reads it."""
    st, live = ctx.adapters.storage, up._live(ctx)
    if live.mount and st.mounted_at(live.data) is not None:
        st.unmount(live.data)
    st.rollback(up._snapshot(ctx))
    check_at_snapshot(ctx)  # before the mount: mounting XFS writes its log
    if live.mount:
        st.mount(live.data, live.mount)
    ctx.record("data rolled back", up._snapshot(ctx))


# Facts a rollback to the snapshot changes, in the order they are trusted: ZFS's and the volume model's
# ``written`` (bytes since the latest snapshot: it only grows, until a rollback to it), btrfs's subvolume
# ``uuid`` (a rollback puts a new snapshot of the snapshot in place), the directory backends' ``inode`` (a
# rollback renames a fresh copy into place; a subvolume's root inode is always 256, hence uuid first).
_SAME = ("guid", "id", "createtxg")  # the same dataset, not one destroyed and re-created under its name


def rolled_back_since_stop(stopped: dict[str, Any], now: dict[str, Any]) -> tuple[bool, str]:
    """Whether the storage facts ``now`` of a dataset show a rollback since ``stopped`` (its facts when its
    colour stopped), and how that was read. Not rolled back when the facts cannot say."""
    moved = [k for k in _SAME if k in stopped and k in now and stopped[k] != now[k]]
    if moved:
        return False, f"another dataset than the one stopped ({', '.join(moved)} differ)"
    if "written" in stopped and "written" in now:
        ok = int(now["written"]) < int(stopped["written"])
        return ok, f"written {now['written']} {'<' if ok else '>='} {stopped['written']} when it stopped"
    for key in ("uuid", "inode"):
        if key in stopped and key in now:
            ok = now[key] != stopped[key]
            return ok, f"{key} {'changed' if ok else 'unchanged'} since it stopped"
    return False, "no storage fact that a rollback changes"


def data_restored(ctx: Context[UpgradeFacts]) -> bool:
    """Already done, observed: the old colour runs its old image (a later step redeployed it on its data,
    which cannot be rolled back under it), or the storage shows its data rolled back since it stopped
    (:func:`rolled_back_since_stop` against the facts the upgrade recorded then, ``stopped_data``) and,
    for a volume, mounted where its Deployment reads it. When the storage cannot say, it is not done: the
    step acts again, and a second rollback to the same snapshot of a stopped colour's data is harmless."""
    if old_deployed(ctx):
        return True
    live, st = up._live(ctx), ctx.adapters.storage
    stopped = ctx.facts.stopped_data or {}
    if stopped.get("colour") != ctx.facts.live or up._dataset(ctx, live.data) is None:
        return False
    ok, how = rolled_back_since_stop(stopped.get("facts") or {}, st.identity(live.data))
    mounted = not live.mount or st.mounted_at(live.data) == live.mount
    ctx.progress(f"{live.data}: {how}; {'mounted' if mounted else 'not mounted'} at {live.mount or 'its path'}")
    return ok and mounted


def verify_restored(ctx: Context[UpgradeFacts]) -> None:
    """The old colour's data is back where its Deployment reads it (a volume: mounted at its mount)."""
    live = up._live(ctx)
    if live.mount:
        ctx.judge(uv.mounted_at(live.data, ctx.adapters.storage.mounted_at(live.data), mount=live.mount),
                  precondition=True)


def check_at_snapshot(ctx: Context[UpgradeFacts]) -> None:
    """The storage says the old colour's data is its snapshot again: nothing written since (ZFS's
    ``written@<snap>``, the volume model's ``written``), read right after the rollback and before any mount. A
    backend without such a fact says so in the evidence."""
    facts = ctx.adapters.storage.identity(up._live(ctx).data)
    ctx.record(f"storage facts of {up._live(ctx).data} after the rollback to {up._snapshot(ctx)}", facts)
    ctx.judge(uv.at_snapshot(up._live(ctx).data, up._snapshot(ctx), facts), precondition=True)


def old_deployed(ctx: Context[UpgradeFacts]) -> bool:
    pods = ctx.adapters.workloads.pods(up._live(ctx).name)
    return any(same_image(p.spec_images.get(up.APP_CONTAINER, ""), ctx.facts.live_image) for p in pods)


def redeploy_old(ctx: Context[UpgradeFacts]) -> None:
    up.restore_live_object(ctx)


def old_caught_up(ctx: Context[UpgradeFacts]) -> None:
    colour = ctx.facts.live
    ctx.adapters.workloads.wait_rollout(up._live(ctx).name, timeout=ctx.env.timeouts.rollout)
    want = bg.bare_version(ctx.facts.live_image.rsplit(":", 1)[-1])
    st, _ = catch_up.wait_caught_up(ctx, colour, want, step="redeploy-old", procedure="agave-rollback")
    ctx.record(f"{colour} caught up", st.as_dict())


def shift_back(ctx: Context[UpgradeFacts]) -> None:
    ctx.mark("shift back", f"stopping {ctx.facts.idle} gracefully")
    ctx.adapters.workloads.delete_deployment(up._idle(ctx).name)
    ctx.mark(f"{ctx.facts.idle} stopped", up._idle(ctx).name)


def served_by_old(ctx: Context[UpgradeFacts]) -> None:
    old = ctx.facts.live
    wait_for(lambda: bg.served_by(ctx.env, adapters=ctx.adapters), lambda c: c == old,
             timeout=ctx.env.timeouts.healthy, interval=0.1, what=f"the ingress to serve from {old} again",
             env=ctx.env.name, step="shift-back")


def _require_old_ok(ctx: Context[UpgradeFacts]) -> None:
    """The retrying ingress, and the old colour answering ok, before the new one is stopped."""
    up.require_retrying_ingress(_swapped(ctx))


def old_order(ctx: Context[UpgradeFacts]) -> list[str]:
    return list(reversed(up.new_order(ctx)))


def order_restored(ctx: Context[UpgradeFacts]) -> bool:
    return same_upstreams(ctx.adapters.ingress.upstream_order(), old_order(ctx))


def verify_order_restored(ctx: Context[UpgradeFacts]) -> None:
    ctx.judge(uv.upstream_order(ctx.adapters.ingress.upstream_order(), old_order(ctx), when="after the shift back"),
              precondition=True)


def clone_gone(ctx: Context[UpgradeFacts]) -> bool:
    return up._dataset(ctx, up._idle(ctx).data) is None


def verify_clone_gone(ctx: Context[UpgradeFacts]) -> None:
    ctx.judge(uv.gone(up._idle(ctx).data, not clone_gone(ctx)), precondition=True)


def verify_snapshot_gone(ctx: Context[UpgradeFacts]) -> None:
    ctx.judge(uv.gone(up._snapshot(ctx), up.snapshot_exists(ctx)), precondition=True)


AFTER_CLEANUP = Procedure(
    facts=UpgradeFacts,
    name="agave-rollback",
    summary="roll the agave upgrade back after its cleanup: old data, old version, old colour serving",
    steps=(
        Step("restore-data", "roll the old colour's data back to the pre-upgrade snapshot", restore_data,
             verify_restored, is_done=data_restored, precondition=_preflight,
             plan_check=lambda c: [*pl.plan_old_gone(c), pl.audit_retries(c)], plan=pl.plan_restore_data),
        Step("redeploy-old", "redeploy the old colour with its old version; wait until caught up", redeploy_old,
             old_caught_up, is_done=old_deployed, plan=pl.plan_redeploy_old, plan_verify=pl.plan_redeploy_verify),
        Step("shift-back", "stop the new colour gracefully; the ingress retries onto the old one", shift_back,
             served_by_old, is_done=lambda ctx: not ctx.adapters.workloads.pods(up._idle(ctx).name),
             precondition=_require_old_ok, plan_check=pl.plan_shift_back_check, plan=pl.plan_shift_back,
             plan_verify=lambda c: [pl.served_by(c, "live")]),
        Step("restore-order", "put the old colour first in the upstream order again", up.restore_order,
             verify_order_restored, is_done=order_restored, plan=lambda c: pl.set_order(c, "live"),
             plan_verify=pl.plan_restore_order_verify),
        Step("destroy-clone", "unmount and destroy the new colour's clone",
             lambda ctx: up.unmount_and_destroy(ctx, up._idle(ctx).data), verify_clone_gone,
             is_done=clone_gone, plan=lambda c: pl.unmount_destroy(c, "idle"),
             plan_verify=lambda c: [f"# the storage no longer lists {up._idle(c).data}"]),
        Step("remove-accounts", "remove the new colour's accounts copy (RAM on a ramdisk)", accounts.remove,
             lambda ctx: None, is_done=lambda ctx: not accounts.copy_present(ctx), plan=accounts.plan_remove),
        Step("drop-snapshot", "destroy the pre-upgrade snapshot: the old data is live again, and a stale rollback "
             "point would be cloned by the next upgrade", up.drop_snapshot, verify_snapshot_gone,
             is_done=lambda ctx: not up.snapshot_exists(ctx),
             plan=pl.plan_drop_snapshot,
             plan_verify=lambda c: [f"# the storage no longer lists {up._snapshot(c)}"]),
    ),
)


def rollback(ctx: Context[UpgradeFacts], upgrade_journal: Journal, rollback_journal: Journal) -> list[StepOutcome]:
    """Roll the upgrade back from wherever its journal says it stopped, under the env's lock. The snapshot
    restored and destroyed is the one the upgrade's journal records (that run's, by its run id)."""
    with upgrade_journal.lock(up.PROCEDURE.name, "rollback"):
        return _rollback(ctx, upgrade_journal, rollback_journal)


def _rollback(ctx: Context[UpgradeFacts], upgrade_journal: Journal, rollback_journal: Journal) -> list[StepOutcome]:
    up.PROCEDURE.adopt_facts(ctx)
    state = upgrade_journal.load()
    if not state or state.get("procedure") != up.PROCEDURE.name:
        raise RunbookError("no agave-upgrade in the journal: nothing to roll back", obj=upgrade_journal.where)
    ctx.facts.load(state.get("facts", {}))
    if state.get("status") == "rolled back":
        ctx.progress("the upgrade was already rolled back")
        return []
    # observed, not a flag: the old data gone, or after cleanup the snapshot the rollback restores from
    if up._dataset(ctx, up._live(ctx).data) is None or (state.get("status") == "done" and not up.snapshot_exists(ctx)):
        raise RunbookError("cannot roll back: the old colour's data and its snapshot were destroyed at cleanup "
                           "(cleanup=destroy); the new colour is the only copy", procedure=up.PROCEDURE.name)
    if state.get("status") != "done":
        up.PROCEDURE.roll_back(ctx, upgrade_journal)
        return [StepOutcome("(rollback before cleanup)", "rolled back")]
    prior = rollback_journal.load()
    if prior.get("status") == "failed":  # `runbook rollback` again retries it: its steps skip what is done
        rollback_journal.save({**prior, "status": "running"})
    # no parameters: the same run whether the CLI or a scenario resumes it (the facts are the upgrade's)
    result = AFTER_CLEANUP.run(dataclasses.replace(ctx, params={}), journal=rollback_journal, rollback="none")
    if not result.ok:
        raise RunbookError(f"ROLLBACK AFTER CLEANUP FAILED: {result.error}", procedure=AFTER_CLEANUP.name)
    state["status"] = "rolled back"
    upgrade_journal.save(state)
    rollback_journal.clear()
    return result.steps
