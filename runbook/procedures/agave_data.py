"""The agave upgrade's data steps: the snapshot, the idle colour's clone (mounted where its Deployment reads it
when the data is a volume), free space, and retiring the old colour's data when the operator chose to.
The procedure's step table is in :mod:`runbook.procedures.agave_upgrade`."""

from __future__ import annotations

from typing import Any

from runbook.checks import upgrade_verify as uv
from runbook.errors import CheckFailed, PreconditionFailed
from runbook.procedures import accounts
from runbook.procedures.facts import UpgradeFacts
from runbook.procedures.framework import Context


def _live(ctx: Context[UpgradeFacts]) -> Any:
    return ctx.env.deployments.colour(ctx.facts.live)


def _idle(ctx: Context[UpgradeFacts]) -> Any:
    return ctx.env.deployments.colour(ctx.facts.idle)


def _snapshot(ctx: Context[UpgradeFacts]) -> str:
    return f"{_live(ctx).data}@{ctx.facts.snapshot}"


def _dataset(ctx: Context[UpgradeFacts], name: str) -> Any:
    return next((d for d in ctx.adapters.storage.datasets() if d.name == name), None)


# ------------------------------------------------------------------------------------------- prepare
def snapshot_exists(ctx: Context[UpgradeFacts]) -> bool:
    """This run's snapshot (the name in its journal's facts) exists; no other snapshot counts."""
    ds = _dataset(ctx, _live(ctx).data)
    return ds is not None and _snapshot(ctx) in ds.snapshots


def stale_snapshots(ctx: Context[UpgradeFacts]) -> list[str]:
    """Pre-upgrade snapshots of the live data that are not this run's: left alone, never cloned."""
    ds = _dataset(ctx, _live(ctx).data)
    mine, prefix = _snapshot(ctx), f"{_live(ctx).data}@{ctx.env.storage.snapshot_prefix}-"
    return [s for s in (ds.snapshots if ds else ()) if s.startswith(prefix) and s != mine]


def take_snapshot(ctx: Context[UpgradeFacts]) -> None:
    stale = stale_snapshots(ctx)
    if stale:
        ctx.progress(f"left alone: {', '.join(stale)} (earlier runs' pre-upgrade snapshots; this run takes and "
                     f"clones its own, {_snapshot(ctx)})")
        ctx.record("earlier pre-upgrade snapshots, not used", stale)
    root = ctx.env.storage.snapshot_root
    name = ctx.adapters.storage.snapshot(root or _live(ctx).data, ctx.facts.snapshot, recursive=bool(root))
    ctx.record("snapshot" + (f" (recursive from {root}: the configs with the ledger)" if root else ""), name)


def verify_snapshot(ctx: Context[UpgradeFacts]) -> None:
    if not snapshot_exists(ctx):
        raise CheckFailed(f"snapshot {_snapshot(ctx)} not found after taking it", obj=_snapshot(ctx))


def drop_snapshot(ctx: Context[UpgradeFacts]) -> None:
    if snapshot_exists(ctx):
        root = ctx.env.storage.snapshot_root
        target = f"{root}@{ctx.facts.snapshot}" if root else _snapshot(ctx)
        ctx.adapters.storage.destroy(target, recursive=bool(root))


def clone_exists(ctx: Context[UpgradeFacts]) -> bool:
    ds = _dataset(ctx, _idle(ctx).data)
    return ds is not None and ds.origin == _snapshot(ctx)


def clone_ready(ctx: Context[UpgradeFacts]) -> bool:
    """This run's clone exists and, for a volume, is mounted where the idle colour's Deployment reads it."""
    mount = _idle(ctx).mount
    return clone_exists(ctx) and (mount is None or ctx.adapters.storage.mounted_at(_idle(ctx).data) == mount)


def require_space(ctx: Context[UpgradeFacts], doing: str = "snapshot") -> None:
    """Free space in the pool before the snapshot and the clone, with figures: the clone shares every block
    until the idle colour writes, and its catch-up writes need room (a tenth of the live data's size, and
    ``storage.min_free_mb`` at least), or both colours stop on a full pool."""
    st, live = ctx.adapters.storage, _live(ctx).data
    free, used = st.free_bytes(live), st.used_bytes(live)
    need = max(ctx.env.storage.min_free_mb * 2**20, used // 10)
    figures = {"free bytes": free, "live data bytes": used, "needed bytes": need}
    ctx.record(f"space before the {doing}", figures)
    if free < need:
        raise PreconditionFailed(f"refusing to {doing}: {free / 2**30:.1f} GiB free in the pool of {live}, "
                                 f"{need / 2**30:.1f} GiB needed (a tenth of its {used / 2**30:.1f} GiB, "
                                 f"storage.min_free_mb {ctx.env.storage.min_free_mb} at least) for the idle colour's "
                                 "writes", env=ctx.env.name, obj=live)


def make_clone(ctx: Context[UpgradeFacts]) -> None:
    st, idle = ctx.adapters.storage, _idle(ctx)
    if not clone_exists(ctx):
        ds = st.clone(_snapshot(ctx), idle.data)
        ctx.record("clone", {"dataset": ds.name, "origin": ds.origin})
    if idle.mount:  # a zvol's XFS: mounted with nouuid (the origin's UUID is mounted beside it)
        st.mount(idle.data, idle.mount)
        ctx.record("clone mounted", {"dataset": idle.data, "at": st.mounted_at(idle.data)})
    ctx.mark("clone done", idle.data)


def verify_clone(ctx: Context[UpgradeFacts]) -> None:
    if not clone_exists(ctx):
        raise CheckFailed(f"{_idle(ctx).data} is not a clone of {_snapshot(ctx)}", obj=_idle(ctx).data)
    if not clone_ready(ctx):
        raise CheckFailed(f"{_idle(ctx).data} is not mounted at {_idle(ctx).mount}", expected=_idle(ctx).mount,
                          observed=ctx.adapters.storage.mounted_at(_idle(ctx).data), obj=_idle(ctx).data)


def unmount_and_destroy(ctx: Context[UpgradeFacts], dataset: str) -> None:
    """A volume is unmounted first (a mounted zvol cannot be destroyed, and must not be under a running pod)."""
    st = ctx.adapters.storage
    if st.mounted_at(dataset) is not None:
        st.unmount(dataset)
    st.destroy(dataset, recursive=True)


def destroy_clone(ctx: Context[UpgradeFacts]) -> None:
    """Only this run's clone: a dataset of the idle colour that is not a clone of this run's snapshot (the old
    data a previous upgrade kept, say) made the clone step fail, and is not this rollback's to destroy."""
    if clone_exists(ctx):
        unmount_and_destroy(ctx, _idle(ctx).data)


# ------------------------------------------------------------------------------------------- retire the old data
def destroy_old_chosen(ctx: Context[UpgradeFacts]) -> bool:
    return str(ctx.params.get("cleanup", "keep")) == "destroy"


def require_destroy_confirmed(ctx: Context[UpgradeFacts]) -> None:
    """On a production env, --cleanup=destroy goes ahead only when the operator named the dataset it destroys
    (``confirm_destroy``) and it is the live colour's: checked when the run starts, before anything changes."""
    if not destroy_old_chosen(ctx) or not ctx.env.production or ctx.params.get("plan"):
        return
    old = _live(ctx).data
    if ctx.params.get("confirm_destroy") != old:
        raise PreconditionFailed(
            f"--cleanup=destroy on production env {ctx.env.name} would destroy {old} and {_snapshot(ctx)} after the "
            f"upgrade ({ctx.facts.live} is live), and rolling back to the old data would no longer be possible: "
            f"confirm with --confirm-destroy={old} (given: {ctx.params.get('confirm_destroy') or 'nothing'})",
            env=ctx.env.name, procedure="agave-upgrade", obj=old)


def old_retired(ctx: Context[UpgradeFacts]) -> bool:
    """Nothing to do when the operator keeps the old data (the default: it is the rollback point); else done
    only when all of it is gone, as observed: the old dataset, the snapshot (where promote moved it) and the
    old colour's accounts (a run interrupted half-way through retiring acts again)."""
    if not destroy_old_chosen(ctx):
        return True
    moved = f"{_idle(ctx).data}@{ctx.facts.snapshot}"
    return (_dataset(ctx, _live(ctx).data) is None
            and not any(moved in d.snapshots for d in ctx.adapters.storage.datasets())
            and not accounts.copy_present(ctx, old=True))


def retire_old(ctx: Context[UpgradeFacts]) -> None:
    """The operator chose to destroy the old colour's data: the clone is promoted so it no longer depends
    on the snapshot, then the old dataset and the snapshot go. No rollback to the old data after this."""
    st = ctx.adapters.storage
    st.promote(_idle(ctx).data)
    unmount_and_destroy(ctx, _live(ctx).data)
    moved = f"{_idle(ctx).data}@{ctx.facts.snapshot}"  # where zfs promote moves the snapshot
    if any(moved in d.snapshots for d in st.datasets()):
        st.destroy(moved)
    accounts.remove_old(ctx)
    ctx.facts.old_destroyed = True
    ctx.progress(f"destroyed {_live(ctx).data}, its snapshot and the accounts in {_live(ctx).accounts}: rolling back "
                 "to the old data is no longer possible")


def verify_retired(ctx: Context[UpgradeFacts]) -> None:
    ctx.judge(uv.old_data(_live(ctx).data, destroy=destroy_old_chosen(ctx),
                          present=_dataset(ctx, _live(ctx).data) is not None))
