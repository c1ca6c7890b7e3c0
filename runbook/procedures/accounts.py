"""The upgrade's accounts copy (the accounts live on a ramdisk, outside the dataset: copied, not cloned).

``rsync -aH --delete`` through the host port (:class:`runbook.adapters.accounts_copy.AccountsCopy`): hard links
kept (agave hard-links its snapshot directories; a copy without ``-H`` multiplies them), a re-run converges,
progress from rsync's own figures, RAM and space checked before it starts, and a rollback that removes the copy.
"Already done" is an observation (the copy matches the source), never a flag the run wrote.
"""

from __future__ import annotations

from runbook.adapters.accounts_copy import AccountsCopy, CopyProgress
from runbook.checks import upgrade_verify as uv
from runbook.procedures.facts import UpgradeFacts
from runbook.procedures.framework import Context
from runbook.procedures.planning import on_host

__all__ = ["BLUE_WITH_A_LIVE_COPY", "copied", "copy", "copy_present", "plan_copy", "plan_remove", "plan_verify",
           "remove", "remove_old", "verify"]

# What the idle colour does with accounts copied from a running validator (agave ledger/src/bank_forks_utils.rs,
# try_load_bank_forks_from_snapshot), for the evidence.
BLUE_WITH_A_LIVE_COPY = (
    "The copy is taken while the live colour runs, so its accounts/run state is mid-write. The idle colour never "
    "uses it as it is: at startup agave loads the highest bank snapshot (accounts/snapshot/<slot>, hard links into "
    "the copy) when it is at least as new as the newest snapshot archive (fastboot), and otherwise discards the run "
    "state and extracts the archive from the cloned ledger's snapshots: correct either way, slower in the second "
    "case. The accounts' path inside the container is the same for both colours, so each resolves its own copy.")


def _copier(ctx: Context[UpgradeFacts], *, plan: bool = False, old: bool = False) -> AccountsCopy:
    """live -> idle (the copy); ``old``: the other way round, to remove the old colour's accounts."""
    env = ctx.env
    src = env.deployments.colour(ctx.facts.colour("idle" if old else "live")).accounts
    dst = env.deployments.colour(ctx.facts.colour("live" if old else "idle")).accounts
    if plan:
        return AccountsCopy(None, src, dst)  # type: ignore[arg-type]  # plan_lines(sudo=...) never runs a command
    a = ctx.adapters
    return AccountsCopy(a.host, a.host_path(src), a.host_path(dst), accept_vanished=True)  # a live source


def copy(ctx: Context[UpgradeFacts]) -> None:
    c = _copier(ctx)
    pre = c.preflight()  # refuses (CopyRefused) with the figures when the destination or the RAM is short
    ctx.record("accounts copy: space and RAM before it starts", pre.figures())

    def progress(p: CopyProgress) -> None:
        ctx.progress(f"accounts: {p}")

    done = c.copy(progress, total=pre.source.data_bytes)
    ctx.record("accounts copied (rsync -aH --delete)",
               {"bytes transferred": done.bytes, "seconds": round(done.seconds, 3),
                "MiB/s": round(done.rate / 2**20, 1),
                "files vanished while copying": done.vanished})
    ctx.record("what the idle colour does with a copy taken from a running validator", BLUE_WITH_A_LIVE_COPY)


def verify(ctx: Context[UpgradeFacts]) -> None:
    """The copy matches the source (data bytes with each inode once, names, distinct inodes, dirs, symlinks): a
    copy without hard links has more inodes. A source that changed while it was copied gets one more pass."""
    c = _copier(ctx)
    v = c.verify()
    if not v.ok:
        ctx.progress(f"accounts: the copy differs from the source ({v.differences}): one more pass")
        c.copy(lambda p: ctx.progress(f"accounts (second pass): {p}"))
        v = c.verify()
    ctx.judge(uv.accounts_copy(None if v.copy is None else v.differences, src=str(c.src), dst=str(c.dst)))


def copied(ctx: Context[UpgradeFacts]) -> bool:
    return _copier(ctx).is_done()


def copy_present(ctx: Context[UpgradeFacts], *, old: bool = False) -> bool:
    """Anything left in the idle colour's accounts directory (the copy, or part of it); ``old``: in the old
    colour's (after --cleanup=destroy removed them)."""
    c = _copier(ctx, old=old)
    f = c.measure(c.dst)
    return f is not None and f.entries > 0


def remove(ctx: Context[UpgradeFacts]) -> None:
    _copier(ctx).remove()


def remove_old(ctx: Context[UpgradeFacts]) -> None:
    """--cleanup=destroy: the old colour's accounts go with its data (RAM on a ramdisk)."""
    _copier(ctx, old=True).remove()


def plan_copy(ctx: Context[UpgradeFacts]) -> list[str]:
    c = _copier(ctx, plan=True)
    return on_host(ctx.env, [*c.plan_lines("preflight", sudo=False), *c.plan_lines("copy", sudo=False)])


def plan_verify(ctx: Context[UpgradeFacts]) -> list[str]:
    return on_host(ctx.env, _copier(ctx, plan=True).plan_lines("verify", sudo=False))


def plan_remove(ctx: Context[UpgradeFacts], *, old: bool = False) -> list[str]:
    return on_host(ctx.env, _copier(ctx, plan=True, old=old).plan_lines("remove", sudo=False))
