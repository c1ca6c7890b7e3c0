"""The mutating operations of :class:`~runbook.adapters.storage_zvol.ZvolStorage` and its ``plan``.

Every operation holds the pool's lock, reads the metadata, checks ZFS's rules and the kernel's mount
table, changes the files with reflink copies (``cp --reflink=always`` into a temporary name, renamed into
place, so a crash never leaves a half-made snapshot that looks complete) and records the result.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import shutil
import uuid
from typing import TYPE_CHECKING, Any

from runbook.adapters.base import Dataset
from runbook.adapters.storage_common import (
    NoSuchDataset,
    StorageRefused,
    check_dataset,
    check_snap,
    is_snapshot,
    plan_args,
    run_local,
    split_snapshot,
)
from runbook.adapters.storage_facts import df_argv
from runbook.errors import CommandFailed, TestbedError

if TYPE_CHECKING:
    from runbook.adapters.storage_zvol import ZvolStorage

VOLUME = "volume"


def _copy_argv(src: str, dst: str) -> list[str]:
    return ["cp", "-a", "--reflink=always", "-T", src, dst]


def _copy(src: str, dst: str) -> None:
    """Reflink copy ``src`` (image or directory) to ``dst``, atomically (temporary name, then rename)."""
    os.makedirs(posixpath.dirname(dst), exist_ok=True)
    tmp = posixpath.join(posixpath.dirname(dst), f".{posixpath.basename(dst)}.rbtmp")
    _remove(tmp)
    try:
        run_local(_copy_argv(src, tmp), timeout=3600)
    except CommandFailed:
        _remove(tmp)
        raise
    os.replace(tmp, dst)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _refuse_clones(st: ZvolStorage, meta: dict[str, Any], snaps: list[str]) -> None:
    deps = {s: c for s in snaps if (c := st._clones_of(meta, s))}
    if deps:
        which = "; ".join(f"{s} is the origin of {', '.join(c)}" for s, c in deps.items())
        raise StorageRefused(f"zvol: {which}: destroy the clone(s) first (zfs destroy -R would destroy them too, "
                             "which this runbook never does)", blockers=sorted({x for c in deps.values() for x in c}),
                             obj=next(iter(deps)))


def snapshot(st: ZvolStorage, dataset: str, snap: str, *, recursive: bool = False) -> str:
    """``zfs snapshot [-r] dataset@snap``: mounted volumes frozen (all of them first), reflink-copied, thawed."""
    check_snap(snap)
    full = f"{dataset}@{snap}"
    with st._locked() as meta:
        st._ds(meta, dataset)
        targets = st._tree(meta, dataset) if recursive else [dataset]
        missing = [d for d in targets if f"{d}@{snap}" not in meta["snapshots"]]
        if not missing:
            return full  # converge
        if len(missing) < len(targets):
            raise StorageRefused(f"zvol: @{snap} exists on part of {dataset}'s tree only; missing on "
                                 f"{', '.join(missing)}", blockers=missing, obj=full)
        frozen: list[str] = []
        made: list[str] = []
        try:
            for d in missing:
                entry = meta["datasets"][d]
                if entry["kind"] == VOLUME:
                    for target in st._mounts(entry)[0][:1]:
                        run_local(["xfs_freeze", "-f", target], timeout=600)
                        frozen.append(target)
            for d in missing:
                entry = meta["datasets"][d]
                sentry = {"kind": entry["kind"], "id": uuid.uuid4().hex, "dataset_id": entry["id"]}
                dst = st._file(sentry, "snap")
                _copy(st._file(entry, "data"), dst)
                made.append(dst)
                meta["seq"] += 1
                meta["snapshots"][f"{d}@{snap}"] = {**sentry, "seq": meta["seq"]}
        except BaseException:
            for path in made:
                _remove(path)
            raise
        finally:
            errors = []
            for target in reversed(frozen):
                try:
                    run_local(["xfs_freeze", "-u", target], timeout=600)
                except CommandFailed as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
    return full


def clone(st: ZvolStorage, snapshot: str, target: str) -> Dataset:
    """``zfs clone snapshot target``: a writable reflink copy of the snapshot (a volume: mount it, nouuid)."""
    with st._locked() as meta:
        sentry = st._snap(meta, snapshot)
        check_dataset(target)
        if target in meta["datasets"]:
            origin = meta["datasets"][target].get("origin")
            if origin == snapshot:
                return st._dataset(meta, target)  # converge
            raise StorageRefused(f"zvol: {target} exists and is not a clone of {snapshot} (origin: "
                                 f"{origin or 'none'}); destroy it first", blockers=[target], obj=target)
        entry = {"kind": sentry["kind"], "id": uuid.uuid4().hex, "origin": snapshot}
        _copy(st._file(sentry, "snap"), st._file(entry, "data"))
        meta["datasets"][target] = entry
    return st._dataset(st._load(), target)


def destroy(st: ZvolStorage, name: str, *, recursive: bool = False) -> None:
    """``zfs destroy [-r]``: never a snapshot with clones, never a mounted dataset, children only with -r."""
    with st._locked() as meta:
        if is_snapshot(name):
            ds, snap = split_snapshot(name)
            tree = st._tree(meta, ds) if recursive else [ds]
            hits = [f"{d}@{snap}" for d in tree if f"{d}@{snap}" in meta["snapshots"]]
            _refuse_clones(st, meta, hits)
            for full in hits:
                _remove(st._file(meta["snapshots"].pop(full), "snap"))
            return
        check_dataset(name)
        if name not in meta["datasets"]:
            return  # converge: already gone
        tree = st._tree(meta, name)
        children = [d for d in tree if d != name]
        snaps = [s for d in tree for s in st._snaps_of(meta, d)]
        if not recursive and (children or snaps):
            blockers = children + snaps
            raise StorageRefused(f"zvol: {name} has {'child datasets' if children else 'snapshots'} "
                                 f"({', '.join(blockers)}); destroy them first or destroy recursively",
                                 blockers=blockers, obj=name)
        st._refuse_mounted(meta, tree, f"destroy {name}")
        _refuse_clones(st, meta, snaps)
        for d in tree:
            loops = st._mounts(meta["datasets"][d])[1]
            if loops:  # attached, not mounted here (a crash, or a mount namespace that still holds it)
                try:
                    st._detach(loops)
                except TestbedError as exc:
                    raise StorageRefused(f"zvol: cannot destroy {d}: it is busy: {exc}", blockers=loops, obj=d) from exc
        for full in snaps:
            _remove(st._file(meta["snapshots"].pop(full), "snap"))
        for d in sorted(tree, key=len, reverse=True):
            _remove(st._file(meta["datasets"].pop(d), "data"))


def rollback(st: ZvolStorage, snapshot: str, *, destroy_newer: bool = False) -> None:
    """``zfs rollback [-r]``: the latest snapshot only unless asked; never under a mounted filesystem."""
    ds, _ = split_snapshot(snapshot)
    with st._locked() as meta:
        entry = st._ds(meta, ds)
        snaps = st._snaps_of(meta, ds)
        if snapshot not in snaps:
            raise NoSuchDataset(f"zvol: no such snapshot {snapshot!r} (snapshots of {ds}: "
                                f"{', '.join(snaps) or 'none'})", obj=snapshot)
        newer = snaps[snaps.index(snapshot) + 1:]
        if newer and not destroy_newer:
            raise StorageRefused(f"zvol: {snapshot} is not the latest snapshot of {ds}; newer: {', '.join(newer)}. "
                                 "zfs rollback -r would destroy them; destroy them first or ask for it explicitly "
                                 "(destroy_newer)", blockers=newer, obj=snapshot)
        _refuse_clones(st, meta, newer)
        st._refuse_mounted(meta, [ds], f"roll {ds} back under its mounted filesystem")
        for full in reversed(newer):
            _remove(st._file(meta["snapshots"].pop(full), "snap"))
        data = st._file(entry, "data")
        new = posixpath.join(posixpath.dirname(data), f".{posixpath.basename(data)}.rbnew")
        _copy(st._file(meta["snapshots"][snapshot], "snap"), new)
        if os.path.isdir(data):
            old = f"{data}.rbold"
            os.rename(data, old)
            os.rename(new, data)
            shutil.rmtree(old)
        else:
            os.replace(new, data)  # a new image (a new inode) in place of the old one


# -- plan ------------------------------------------------------------------------------------------------
def _sh(argv: list[str]) -> str:
    return shlex.join(argv)


def plan(st: ZvolStorage, op: str, *args: str, **options: bool) -> list[str]:
    """The command lines ``op`` would run now; files not made yet are named ``<new id>``."""
    meta = st._load()

    def data(name: str) -> tuple[str, str]:
        if name in meta["datasets"]:
            return st._file(meta["datasets"][name], "data"), meta["datasets"][name]["kind"]
        return posixpath.join(st.pool, "data", "<new id>.img"), VOLUME

    def snapfile(full: str) -> str:
        if full in meta["snapshots"]:
            return st._file(meta["snapshots"][full], "snap")
        return posixpath.join(st.pool, "snap", "<new id>.img")

    if op == "ensure_dataset":
        plan_args(op, args, 1)
        return [_sh(["mkdir", "-p", posixpath.join(st.pool, "data", "<new id>")])]
    if op == "snapshot":
        plan_args(op, args, 2)
        check_snap(args[1])
        tree = st._tree(meta, args[0]) if options.get("recursive") else [args[0]]
        mounted = [t for d in tree if d in meta["datasets"] and meta["datasets"][d]["kind"] == VOLUME
                   for t in st._mounts(meta["datasets"][d])[0][:1]]
        copies = [_sh(_copy_argv(data(d)[0], snapfile(f"{d}@{args[1]}"))) for d in tree]
        return ([_sh(["xfs_freeze", "-f", t]) for t in mounted] + copies
                + [_sh(["xfs_freeze", "-u", t]) for t in reversed(mounted)])
    if op == "clone":
        plan_args(op, args, 2)
        split_snapshot(args[0])
        return [_sh(_copy_argv(snapfile(args[0]), posixpath.join(st.pool, "data", "<new id>.img")))]
    if op == "destroy":
        plan_args(op, args, 1)
        path = snapfile(args[0]) if is_snapshot(args[0]) else data(args[0])[0]
        return [_sh(["rm", "-rf", path])]
    if op == "rollback":
        plan_args(op, args, 1)
        path = data(split_snapshot(args[0])[0])[0]
        return [_sh(_copy_argv(snapfile(args[0]), path + ".rbnew")), _sh(["mv", "-T", path + ".rbnew", path])]
    if op == "promote":
        plan_args(op, args, 1)
        return [f"# zvol: {args[0]} no longer counts as a clone (metadata only; its blocks are its own)"]
    if op == "mount":
        plan_args(op, args, 2)
        path, kind = data(args[0])
        if kind != VOLUME:
            return [_sh(["mount", "--bind", path, args[1]])]
        entry = meta["datasets"].get(args[0], {"origin": "(a clone, made by the procedure)"})
        opts = ["-o", "noatime,nouuid" if entry.get("origin") or entry.get("promoted") else "noatime"]
        return [_sh(["losetup", "--find", "--show", path]),
                _sh(["mount", "-t", "xfs", *opts, "<loop device>", args[1]])]
    if op == "unmount":
        plan_args(op, args, 1)
        if args[0] not in meta["datasets"]:
            return [f"# zvol: {args[0]} does not exist"]
        targets, loops = st._mounts(meta["datasets"][args[0]])
        return [_sh(["umount", t]) for t in targets] + [_sh(["losetup", "-d", d]) for d in loops]
    if op == "free_space":
        plan_args(op, args, 1)
        return [_sh(df_argv(st.pool))]
    plan_args(op, args, 2)
    return [f"copy_tree {args[0]} {args[1]}  # in-process copy; skips files identical by size+mtime"]
