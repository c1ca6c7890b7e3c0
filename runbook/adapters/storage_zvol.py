"""The testbed's model of a ZFS pool with zvols, with real block-level copy-on-write (backend ``zvol``).

The pool is an XFS filesystem with ``reflink=1`` (on zram: :mod:`runbook.testbed.zvolpool`). A **volume**
is an image file in it carrying XFS, attached with ``losetup`` and mounted where its user needs it, so
mount, ``nouuid`` and unmount are real. A **directory** dataset (the parent holding config) is a directory
in it, bind-mounted where needed. Layout under the pool::

    .zvol/meta.json         names, kinds, creation ids, origins, snapshot order (a new process sees it)
    data/<id>.img | <id>/   datasets, keyed by creation id (names are only in meta.json)
    snap/<id>.img | <id>/   snapshots

ZFS's rules hold (see :mod:`runbook.adapters.storage_zfs`): snapshots are ``<dataset>@<name>``; a clone
depends on its snapshot, which cannot be destroyed before it; a dataset with snapshots or children is
destroyed only recursively; rollback goes to the latest snapshot unless asked; snapshot, clone and create
converge. As on biscayne: a mounted volume cannot be destroyed or rolled back (the model checks the
kernel's mount table and ``losetup -j``, since a loop device would otherwise go away lazily and the
destroy would "work"); a snapshot of a mounted volume is ``xfs_freeze -f`` + ``cp --reflink=always`` +
``xfs_freeze -u``; a clone is a reflink copy of the snapshot, and mounting it beside its origin needs
``-o nouuid`` (without it the kernel refuses: same XFS UUID). A recursive snapshot freezes every mounted
volume of the tree first, copies everything, then thaws (directories are copied, not frozen).

Identity facts (:meth:`ZvolStorage.identity`): a volume: ``id`` (creation id), ``inode`` of its image (a
rollback puts a new image in place), ``volsize``, ``written`` (bytes of the image whose blocks are not
blocks of its latest snapshot, read with FIEMAP: ZFS's ``written``); a volume snapshot ``ds@s``: ``id``,
``inode`` and ``written`` = bytes of ``ds`` not in ``s`` (ZFS's ``written@s``: 0 right after the snapshot
and after a rollback to it, growing with each write to ``ds``). Directory datasets and their snapshots: the
directory facts of :mod:`runbook.adapters.storage_facts`.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runbook.adapters import blockdev
from runbook.adapters.base import Dataset, Progress
from runbook.adapters.storage_common import (
    LocalFs,
    NoSuchDataset,
    StorageRefused,
    check_dataset,
    is_snapshot,
    run_local,
    split_snapshot,
)
from runbook.adapters.storage_copytree import copy_tree
from runbook.adapters.storage_facts import du_used, tree_facts
from runbook.errors import AdapterError, CommandFailed, ConfigError

VOLUME, DIRECTORY = "volume", "directory"


class ZvolStorage:
    """Datasets in the pool mounted at ``pool`` (see the module docstring)."""

    backend = "zvol"

    def __init__(self, pool: str | Path, *, timeout: float = 10.0) -> None:
        self.pool = str(Path(pool).resolve())
        self.timeout = timeout
        self.fs = LocalFs()

    def __repr__(self) -> str:
        return f"ZvolStorage({self.pool!r})"

    # -- metadata ------------------------------------------------------------------------------
    def _meta_path(self) -> str:
        return posixpath.join(self.pool, ".zvol", "meta.json")

    def _load(self) -> dict[str, Any]:
        if not os.path.ismount(self.pool) and not os.path.isdir(posixpath.join(self.pool, ".zvol")):
            raise ConfigError(f"zvol storage: no pool at {self.pool} (is it up? runbook.testbed.zvolpool.up)",
                              obj=self.pool)
        text = self.fs.read_text(self._meta_path())
        meta: dict[str, Any] = json.loads(text) if text else {}
        for key in ("datasets", "snapshots"):
            meta.setdefault(key, {})
        meta.setdefault("seq", 0)
        return meta

    def _save(self, meta: dict[str, Any]) -> None:
        self.fs.write_text(self._meta_path(), json.dumps(meta, indent=1, sort_keys=True))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The metadata under the pool's lock; saved when the block ends without an exception."""
        with self.fs.lock(posixpath.join(self.pool, ".zvol", "lock")):
            meta = self._load()
            yield meta
            self._save(meta)

    def _file(self, entry: dict[str, Any], where: str) -> str:
        suffix = ".img" if entry["kind"] == VOLUME else ""
        return posixpath.join(self.pool, where, f"{entry['id']}{suffix}")

    def _ds(self, meta: dict[str, Any], name: str) -> dict[str, Any]:
        check_dataset(name)
        if name not in meta["datasets"]:
            raise NoSuchDataset(f"zvol: no such dataset {name!r}", obj=name)
        return dict(meta["datasets"][name])

    def _snap(self, meta: dict[str, Any], full: str) -> dict[str, Any]:
        split_snapshot(full)
        if full not in meta["snapshots"]:
            raise NoSuchDataset(f"zvol: no such snapshot {full!r}", obj=full)
        return dict(meta["snapshots"][full])

    def _snaps_of(self, meta: dict[str, Any], name: str) -> list[str]:
        rows = [(s["seq"], full) for full, s in meta["snapshots"].items() if full.partition("@")[0] == name]
        return [full for _, full in sorted(rows)]

    def _clones_of(self, meta: dict[str, Any], full: str) -> list[str]:
        return sorted(n for n, d in meta["datasets"].items() if d.get("origin") == full)

    def _tree(self, meta: dict[str, Any], name: str) -> list[str]:
        return sorted(n for n in meta["datasets"] if n == name or n.startswith(name + "/"))

    # -- the kernel's view: where a dataset is mounted ---------------------------------------------
    def _mounts(self, entry: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(mount targets, loop devices) of a dataset: its image's loop devices, or bind mounts of its dir."""
        path = self._file(entry, "data")
        if entry["kind"] == VOLUME:
            loops = blockdev.loops_of(path)
            return blockdev.mounts_of_devices(loops), loops
        rel = "/" + posixpath.relpath(path, self.pool)
        pool_dev = next((m.device for m in blockdev.mounts() if m.target == self.pool), None)
        return [m.target for m in blockdev.mounts() if m.device == pool_dev and m.fsroot == rel], []

    def _refuse_mounted(self, meta: dict[str, Any], names: list[str], what: str) -> None:
        mounted = {n: t for n in names if (t := self._mounts(meta["datasets"][n])[0])}
        if mounted:
            where = "; ".join(f"{n} is mounted at {', '.join(t)}" for n, t in mounted.items())
            raise StorageRefused(f"zvol: cannot {what}: {where}: unmount it first (the dataset is busy)",
                                 blockers=[x for t in mounted.values() for x in t], obj=names[0])

    # -- creating --------------------------------------------------------------------------------
    def ensure_volume(self, name: str, size: str | int) -> Dataset:
        """A volume of ``size`` bytes (``"8G"`` too): a sparse image carrying a fresh XFS (``zfs create -V``)."""
        from runbook.testbed.loopfs import parse_size

        nbytes = parse_size(size)
        with self._locked() as meta:
            if name not in meta["datasets"]:
                check_dataset(name)
                entry = {"kind": VOLUME, "id": uuid.uuid4().hex, "origin": None, "volsize": nbytes}
                img = self._file(entry, "data")
                os.makedirs(posixpath.dirname(img), exist_ok=True)
                with open(img, "wb") as f:
                    f.truncate(nbytes)
                try:
                    run_local(["mkfs.xfs", "-q", "-f", img], timeout=120)
                except CommandFailed:
                    os.unlink(img)
                    raise
                meta["datasets"][name] = entry
            elif meta["datasets"][name]["kind"] != VOLUME:
                raise StorageRefused(f"zvol: {name} exists and is a directory dataset, not a volume",
                                     blockers=[name], obj=name)
        return self._dataset(self._load(), name)

    def ensure_dataset(self, name: str) -> Dataset:
        """A directory dataset (``zfs create`` without ``-V``); an existing dataset of either kind is kept."""
        with self._locked() as meta:
            if name not in meta["datasets"]:
                check_dataset(name)
                entry = {"kind": DIRECTORY, "id": uuid.uuid4().hex, "origin": None}
                os.makedirs(self._file(entry, "data"))
                meta["datasets"][name] = entry
        return self._dataset(self._load(), name)

    # -- reading -----------------------------------------------------------------------------------
    def _dataset(self, meta: dict[str, Any], name: str) -> Dataset:
        entry = self._ds(meta, name)
        targets, _ = self._mounts(entry)
        path = targets[0] if targets else ("" if entry["kind"] == VOLUME else self._file(entry, "data"))
        return Dataset(name=name, path=path, origin=entry.get("origin"), snapshots=tuple(self._snaps_of(meta, name)))

    def datasets(self) -> list[Dataset]:
        meta = self._load()
        return [self._dataset(meta, n) for n in sorted(meta["datasets"])]

    def kind(self, name: str) -> str:
        """``volume`` or ``directory`` (what ``zfs get type`` says: ``volume`` or ``filesystem``)."""
        meta = self._load()
        return str((self._snap(meta, name) if is_snapshot(name) else self._ds(meta, name))["kind"])

    def image(self, name: str) -> str:
        """The file (or directory) holding a dataset's or snapshot's data in the pool."""
        meta = self._load()
        if is_snapshot(name):
            return self._file(self._snap(meta, name), "snap")
        return self._file(self._ds(meta, name), "data")

    def path(self, name: str) -> str:
        """Where the files are: a mounted volume's mountpoint; a directory dataset's mount or its directory."""
        meta = self._load()
        if is_snapshot(name):
            entry = self._snap(meta, name)
            if entry["kind"] == VOLUME:
                raise AdapterError(f"zvol: {name} is a snapshot of a volume: clone it and mount the clone to read "
                                   "it", obj=name)
            return self._file(entry, "snap")
        entry = self._ds(meta, name)
        targets, _ = self._mounts(entry)
        if targets:
            return targets[0]
        if entry["kind"] == VOLUME:
            raise AdapterError(f"zvol: volume {name} is not mounted: mount it first (a clone mounts with -o "
                               "nouuid)", obj=name)
        return self._file(entry, "data")

    def mounted_at(self, name: str) -> str | None:
        meta = self._load()
        if name not in meta["datasets"]:
            return None
        targets, _ = self._mounts(meta["datasets"][name])
        return targets[0] if targets else None

    # -- mounting ----------------------------------------------------------------------------------
    def mount(self, name: str, path: str, *, nouuid: bool | None = None) -> None:
        """A volume: ``losetup --find --show <image>`` + ``mount -t xfs -o noatime[,nouuid] <loop> <path>``; a
        directory: ``mount --bind``. ``nouuid`` defaults to True for a clone (or a promoted one: it still
        carries its origin's XFS UUID) and False for a volume created here, which is mounted as biscayne's
        fstab mounts green: registered under its UUID. ``nouuid=False`` on a clone mounts as a plain
        ``mount`` would, which the kernel refuses beside its mounted origin; the loop device is detached.
        Always ``noatime`` (as a validator's ledger is mounted): a read then writes nothing, so the identity
        facts move only when data is written."""
        path = str(Path(path).resolve())
        meta = self._load()
        entry = self._ds(meta, name)
        targets, loops = self._mounts(entry)
        if path in targets:
            return  # converge
        if targets:
            raise StorageRefused(f"zvol: {name} is already mounted at {', '.join(targets)}; unmount it before "
                                 f"mounting it at {path}", blockers=targets, obj=name)
        os.makedirs(path, exist_ok=True)
        if entry["kind"] == DIRECTORY:
            run_local(["mount", "--bind", self._file(entry, "data"), path], timeout=60)
            run_local(["mount", "--make-shared", path], timeout=60)  # slave namespaces see the unmount
            return
        if loops:  # attached but not mounted (a crash between the two): start clean
            self._detach(loops)
        if nouuid is None:
            nouuid = bool(entry.get("origin") or entry.get("promoted"))
        dev = run_local(["losetup", "--find", "--show", self._file(entry, "data")], timeout=30).stdout.strip()
        try:
            run_local(["mount", "-t", "xfs", "-o", "noatime,nouuid" if nouuid else "noatime", dev, path], timeout=60)
            run_local(["mount", "--make-shared", path], timeout=60)  # slave namespaces see the unmount
        except CommandFailed:
            self._detach([dev])
            raise

    def _detach(self, loops: list[str]) -> None:
        from runbook.testbed.zvolpool import detach

        detach(loops, timeout=self.timeout)

    def unmount(self, name: str) -> None:
        """``umount`` every mount of the dataset, then detach its loop devices and wait until they are gone."""
        meta = self._load()
        targets, loops = self._mounts(self._ds(meta, name))
        for target in targets:
            try:
                run_local(["umount", target], timeout=60)
            except CommandFailed as exc:
                raise AdapterError(f"zvol: cannot unmount {name} at {target} (busy? see `fuser -vm {target}`): "
                                   f"{exc.stderr.strip()}", obj=name) from exc
        if loops:
            self._detach(loops)

    # -- space -------------------------------------------------------------------------------------
    def free_bytes(self, name: str) -> int:
        """Free bytes of the pool (``statvfs``): what new snapshots, clones and writes can still take."""
        st = os.statvfs(self.pool)
        return st.f_bavail * st.f_frsize

    def used_bytes(self, name: str) -> int:
        """Allocated bytes of a volume's image (shared blocks count fully: ZFS's ``referenced``), or ``du`` of
        a directory dataset."""
        path = self.image(name)
        return blockdev.allocated_bytes(path) if path.endswith(".img") else du_used(self.fs, path)

    def space(self, name: str) -> dict[str, int | None]:
        """``available`` (pool), ``used``, ``volsize`` (None for a directory) of a dataset or snapshot."""
        path = self.image(name)
        volsize = os.stat(path).st_size if path.endswith(".img") else None
        return {"available": self.free_bytes(name), "used": self.used_bytes(name), "volsize": volsize}

    # -- identity ----------------------------------------------------------------------------------
    def identity(self, name: str) -> dict[str, str | int]:
        """Facts proving the data was not rewritten (module docstring)."""
        meta = self._load()
        if is_snapshot(name):
            entry, ds = self._snap(meta, name), name.partition("@")[0]
            path = self._file(entry, "snap")
            if entry["kind"] == DIRECTORY:
                return {"id": entry["id"], **tree_facts(self.fs, path)}
            origin = self._file(self._ds(meta, ds), "data") if ds in meta["datasets"] else None
            self._sync(meta, ds)
            written = blockdev.bytes_not_in(origin, path) if origin else 0
            return {"id": entry["id"], "inode": os.stat(path).st_ino, "written": written}
        entry = self._ds(meta, name)
        path = self._file(entry, "data")
        if entry["kind"] == DIRECTORY:
            return {"id": entry["id"], **tree_facts(self.fs, path)}
        self._sync(meta, name)
        snaps = self._snaps_of(meta, name)
        latest = self._file(meta["snapshots"][snaps[-1]], "snap") if snaps else None
        written = blockdev.bytes_not_in(path, latest) if latest else blockdev.allocated_bytes(path)
        return {"id": entry["id"], "inode": os.stat(path).st_ino, "volsize": os.stat(path).st_size, "written": written}

    def _sync(self, meta: dict[str, Any], name: str) -> None:
        """Flush a mounted volume's filesystem to its image, so FIEMAP sees every write made so far."""
        if name in meta["datasets"]:
            for target in self._mounts(meta["datasets"][name])[0]:
                run_local(["sync", "-f", target], timeout=120)

    # -- snapshot, clone, destroy, rollback, promote, plan: runbook.adapters.storage_zvol_ops --------
    def snapshot(self, dataset: str, snap: str, *, recursive: bool = False) -> str:
        from runbook.adapters import storage_zvol_ops as ops

        return ops.snapshot(self, dataset, snap, recursive=recursive)

    def clone(self, snapshot: str, target: str) -> Dataset:
        from runbook.adapters import storage_zvol_ops as ops

        return ops.clone(self, snapshot, target)

    def destroy(self, name: str, *, recursive: bool = False) -> None:
        from runbook.adapters import storage_zvol_ops as ops

        ops.destroy(self, name, recursive=recursive)

    def rollback(self, snapshot: str, *, destroy_newer: bool = False) -> None:
        from runbook.adapters import storage_zvol_ops as ops

        ops.rollback(self, snapshot, destroy_newer=destroy_newer)

    def promote(self, clone: str) -> None:
        """Make a clone independent of its origin snapshot (its blocks already are its own)."""
        with self._locked() as meta:
            entry = self._ds(meta, clone)
            if entry.get("origin"):
                meta["datasets"][clone] = {**entry, "origin": None, "promoted": True}

    def copy_tree(self, src: str, dst: str, *, progress: Progress | None = None) -> int:
        return copy_tree(src, dst, progress=progress)

    def plan(self, op: str, *args: str, **options: bool) -> list[str]:
        """The command lines ``op`` would run now (reads state to name files and mounts; changes nothing)."""
        from runbook.adapters import storage_zvol_ops as ops

        return ops.plan(self, op, *args, **options)
