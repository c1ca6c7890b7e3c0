"""Directory backends of the storage port: datasets are directories under a root.

Layout under ``root`` (a dataset named ``volumes/solana``; a leading ``/`` in a name is ignored, so with
``root="/"`` the name ``/srv/solana`` is the directory ``/srv/solana``)::

    <root>/volumes/solana                         the dataset
    <state>/snapshots/volumes/solana@<snap>       its snapshots (state defaults to <root>/.storage)
    <state>/registry.json                         datasets, clone origins, snapshot order

The rules are ZFS's (design trap 8), so a procedure behaves the same on every backend: a snapshot with
dependent clones cannot be destroyed (destroy the clone first); a dataset with snapshots is destroyed
only when asked recursively; rollback goes to the latest snapshot only, and newer snapshots are named,
not silently destroyed. Snapshot and clone converge: an existing one is left alone.

:class:`CopyStorage` copies with ``cp -a``; :class:`ReflinkStorage` with ``cp -a --reflink=always``
(copy-on-write, needs btrfs/xfs/...). Both build the copy under a hidden name and rename it into place,
so a crash never leaves a half-made snapshot that looks complete. Copies are not atomic against
concurrent writers (ZFS and btrfs snapshots are): snapshot a dataset nobody is writing.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.adapters.base import Dataset, Progress
from runbook.adapters.storage_common import (
    Fs,
    LocalFs,
    StorageRefused,
    check_dataset,
    check_snap,
    is_snapshot,
    not_found,
    plan_args,
    sh,
    split_snapshot,
)
from runbook.adapters.storage_facts import TreeFacts
from runbook.errors import ConfigError

Argv = list[str]


@dataclass(frozen=True)
class TreeState:
    """What exists: datasets (name -> origin snapshot) and snapshots per dataset, oldest first."""

    datasets: Mapping[str, str | None] = field(default_factory=dict)
    snapshots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def has_snapshot(self, full: str) -> bool:
        ds, _, _ = full.partition("@")
        return full in self.snapshots.get(ds, ())

    def clones_of(self, full: str) -> list[str]:
        return sorted(d for d, origin in self.datasets.items() if origin == full)


def _rel(name: str) -> str:
    check_dataset(name)
    rel = name.strip("/")
    if any(part.startswith(".") for part in rel.split("/")):
        raise ConfigError(f"dataset name {name!r}: no path component may start with '.'", obj=name)
    return rel


class TreeStorage(TreeFacts):
    """Shared logic; subclasses say how a dataset is created, copied and removed. Mounts, space figures and
    identity facts: :class:`~runbook.adapters.storage_facts.TreeFacts`."""

    backend = "tree"
    atomic_copy = False  # True: the copy primitive is atomic (btrfs), no hidden temporary + rename

    def __init__(self, root: str | Path, *, state_dir: str | Path | None = None, fs: Fs | None = None) -> None:
        self.fs: Fs = fs or LocalFs()
        local = isinstance(self.fs, LocalFs)
        self.root = str(Path(root).resolve()) if local else posixpath.normpath(str(root))
        state = state_dir if state_dir is not None else posixpath.join(self.root, ".storage")
        self.state = str(Path(state).resolve()) if local else posixpath.normpath(str(state))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"

    # -- primitives (overridden per backend) --------------------------------------------------
    def _argv_create(self, path: str) -> list[Argv]:
        return [["mkdir", "-p", "--", path]]

    def _argv_copy_to(self, src: str, dst: str, *, writable: bool) -> Argv:
        """One command copying (or snapshotting) ``src`` to the new path ``dst``."""
        raise NotImplementedError

    def _argv_copy(self, src: str, dst: str, *, writable: bool) -> list[Argv]:
        mkdir = ["mkdir", "-p", "--", posixpath.dirname(dst)]
        if self.atomic_copy:
            return [mkdir, self._argv_copy_to(src, dst, writable=writable)]
        tmp = self._sibling(dst, "rbtmp")
        return [mkdir, self._argv_copy_to(src, tmp, writable=writable), ["mv", "-T", "--", tmp, dst]]

    def _argv_remove(self, path: str) -> list[Argv]:
        return [["rm", "-rf", "--", path]]

    def _argv_remove_stale(self, path: str) -> list[Argv]:
        return self._argv_remove(path)

    def _scan(self) -> TreeState:
        reg = self._load()
        ds_paths = {n: self.dataset_path(n) for n in reg["datasets"]}
        snap_paths = {s: self.snapshot_path(s) for s in reg["snapshots"]}
        present = self.fs.existing_dirs([*ds_paths.values(), *snap_paths.values()])
        snaps: dict[str, list[tuple[int, str]]] = {}
        for s, p in snap_paths.items():
            if p in present:
                snaps.setdefault(s.partition("@")[0], []).append((int(reg["snapshots"][s].get("seq", 0)), s))
        alive = {s for s, p in snap_paths.items() if p in present}
        datasets = {n: (o if (o := reg["datasets"][n].get("origin")) in alive else None)
                    for n, p in ds_paths.items() if p in present}
        return TreeState(datasets, {d: tuple(s for _, s in sorted(v)) for d, v in snaps.items()})

    # -- paths and registry --------------------------------------------------------------------
    def dataset_path(self, name: str) -> str:
        return posixpath.join(self.root, _rel(name))

    def snapshot_path(self, full: str) -> str:
        ds, snap = split_snapshot(full)
        return posixpath.join(self.state, "snapshots", f"{_rel(ds)}@{snap}")

    def _any_path(self, name: str) -> str:
        return self.snapshot_path(name) if is_snapshot(name) else self.dataset_path(name)

    def _load(self) -> dict[str, Any]:
        text = self.fs.read_text(posixpath.join(self.state, "registry.json"))
        reg: dict[str, Any] = json.loads(text) if text else {}
        reg.setdefault("datasets", {})
        reg.setdefault("snapshots", {})
        reg.setdefault("seq", 0)
        return reg

    def _update(self, **changes: Any) -> None:
        """Apply ``datasets={name: entry|None}``, ``snapshots={full: entry|None}`` to the registry."""
        reg = self._load()
        for section, entries in changes.items():
            for key, value in entries.items():
                if value is None:
                    reg[section].pop(key, None)
                else:
                    if section == "snapshots":
                        reg["seq"] += 1
                        value = {**value, "seq": reg["seq"]}
                    reg[section][key] = value
        self.fs.write_text(posixpath.join(self.state, "registry.json"), json.dumps(reg, indent=1, sort_keys=True))

    def _lock(self) -> Any:
        return self.fs.lock(posixpath.join(self.state, "lock"))

    def _run(self, argvs: Sequence[Argv]) -> None:
        for argv in argvs:
            self.fs.run(argv)

    def _sibling(self, path: str, tag: str) -> str:
        return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{tag}")

    def _recover(self, *paths: str) -> None:
        """Finish or undo what a crashed copy or rollback left next to ``paths``."""
        sib = {p: [self._sibling(p, t) for t in ("rbtmp", "rbnew", "rbold")] for p in paths}
        here = self.fs.existing_dirs([x for p in paths for x in (p, *sib[p])])
        for path, (tmp, new, old) in sib.items():
            if old in here and path not in here:
                self.fs.run(["mv", "-T", "--", old, path])  # crashed mid-rollback: the original comes back
                here = here - {old} | {path}
            for stale in (tmp, new, old):
                if stale in here:
                    self._run(self._argv_remove_stale(stale))

    def _begin(self, *paths: str) -> TreeState:
        """Start a mutation (under the lock): repair crash leftovers of every dataset, then read state."""
        self._recover(*{self.dataset_path(n) for n in self._load()["datasets"]}, *paths)
        return self._scan()

    def _dataset(self, st: TreeState, name: str) -> Dataset:
        return Dataset(name=name, path=self.dataset_path(name), origin=st.datasets.get(name),
                       snapshots=st.snapshots.get(name, ()))

    def _check_free(self, st: TreeState, name: str) -> None:
        rel = _rel(name)
        for other in st.datasets:
            o = _rel(other)
            if o != rel and (o.startswith(rel + "/") or rel.startswith(o + "/")):
                raise StorageRefused(f"{self.backend}: {name} would nest with dataset {other}; nested datasets "
                                     "are not supported by the directory backends", blockers=[other], obj=name)

    # -- the Storage protocol ------------------------------------------------------------------
    def ensure_dataset(self, name: str) -> Dataset:
        with self._lock():
            st = self._begin(self.dataset_path(name))
            if name not in st.datasets:
                self._check_free(st, name)
                path = self.dataset_path(name)
                if not self._adopt(path, name):
                    self._run(self._argv_create(path))
                self._update(datasets={name: {"origin": None, "id": uuid.uuid4().hex}})
                st = self._scan()
            return self._dataset(st, name)

    def _adopt(self, path: str, name: str) -> bool:
        """An existing plain directory becomes the dataset (copy/reflink); btrfs refuses instead."""
        return bool(self.fs.existing_dirs([path]))

    def path(self, name: str) -> str:
        st = self._scan()
        if is_snapshot(name):
            if not st.has_snapshot(name):
                raise not_found("snapshot", name, self.backend)
            return self.snapshot_path(name)
        if name not in st.datasets:
            raise not_found("dataset", name, self.backend)
        return self.dataset_path(name)

    def datasets(self) -> list[Dataset]:
        st = self._scan()
        return [self._dataset(st, n) for n in sorted(st.datasets)]

    def snapshot(self, dataset: str, snap: str, *, recursive: bool = False) -> str:
        check_snap(snap)
        with self._lock():
            st = self._begin()
            if dataset not in st.datasets:
                raise not_found("dataset", dataset, self.backend)
            targets = [dataset] + ([d for d in sorted(st.datasets) if d.startswith(dataset + "/")] if recursive else [])
            for ds in targets:
                full = f"{ds}@{snap}"
                if st.has_snapshot(full):
                    continue  # converge: an existing snapshot is left alone
                path = self.snapshot_path(full)
                self._recover(path)
                if not self.fs.existing_dirs([path]):  # present but unrecorded: renamed into place, complete
                    self._run(self._argv_copy(self.dataset_path(ds), path, writable=False))
                self._update(snapshots={full: {"dataset": ds}})
            return f"{dataset}@{snap}"

    def clone(self, snapshot: str, target: str) -> Dataset:
        split_snapshot(snapshot)
        with self._lock():
            st = self._begin(self.dataset_path(target))
            if not st.has_snapshot(snapshot):
                raise not_found("snapshot", snapshot, self.backend)
            if target in st.datasets:
                if st.datasets[target] == snapshot:
                    return self._dataset(st, target)  # converge
                raise StorageRefused(f"{self.backend}: {target} exists and is not a clone of {snapshot} "
                                     f"(origin: {st.datasets[target] or 'none'}); destroy it first",
                                     blockers=[target], obj=target)
            self._check_free(st, target)
            path = self.dataset_path(target)
            if self.fs.existing_dirs([path]):
                raise StorageRefused(f"{self.backend}: {path} exists and is not a dataset; refusing to "
                                     f"clone {snapshot} over it", blockers=[path], obj=target)
            self._run(self._argv_copy(self.snapshot_path(snapshot), path, writable=True))
            self._update(datasets={target: {"origin": snapshot, "id": uuid.uuid4().hex}})
            return self._dataset(self._scan(), target)

    def destroy(self, name: str, *, recursive: bool = False) -> None:
        with self._lock():
            st = self._begin(*(() if is_snapshot(name) else (self.dataset_path(name),)))
            if is_snapshot(name):
                split_snapshot(name)
                if not st.has_snapshot(name):
                    return  # converge: already gone
                self._refuse_clones(st, [name])
                self._run(self._argv_remove(self.snapshot_path(name)))
                self._update(snapshots={name: None})
                return
            if name not in st.datasets:
                return  # converge: already gone
            snaps = list(st.snapshots.get(name, ()))
            if snaps and not recursive:
                raise StorageRefused(f"{self.backend}: {name} has snapshots ({', '.join(snaps)}); destroy them "
                                     "first or destroy recursively", blockers=snaps, obj=name)
            self._refuse_clones(st, snaps)
            for s in reversed(snaps):
                self._run(self._argv_remove(self.snapshot_path(s)))
                self._update(snapshots={s: None})
            self._run(self._argv_remove(self.dataset_path(name)))
            self._update(datasets={name: None})

    def promote(self, clone: str) -> None:
        """Make a clone independent of its origin snapshot. Its data already is (a full or reflinked copy,
        or a btrfs subvolume); what changes is that the origin no longer counts as having a clone, so the old
        dataset and its snapshot can be destroyed, as after ``zfs promote``."""
        with self._lock():
            st = self._begin(self.dataset_path(clone))
            if clone not in st.datasets:
                raise not_found("dataset", clone, self.backend)
            if st.datasets[clone] is None:
                return  # converge
            entry = self._load()["datasets"].get(clone, {})
            self._update(datasets={clone: {**entry, "origin": None, "promoted": True}})

    def _refuse_clones(self, st: TreeState, snaps: Sequence[str]) -> None:
        deps = {s: st.clones_of(s) for s in snaps if st.clones_of(s)}
        if deps:
            which = "; ".join(f"{s} is the origin of {', '.join(c)}" for s, c in deps.items())
            clones = sorted({c for cs in deps.values() for c in cs})
            raise StorageRefused(f"{self.backend}: {which}: destroy the clone(s) first (zfs would need -R, "
                                 "which destroys them too)", blockers=clones, obj=next(iter(deps)))

    def rollback(self, snapshot: str, *, destroy_newer: bool = False) -> None:
        ds, _ = split_snapshot(snapshot)
        with self._lock():
            st = self._begin(self.dataset_path(ds))
            newer = self._newer(st, snapshot)
            if newer and not destroy_newer:
                raise StorageRefused(f"{self.backend}: {snapshot} is not the latest snapshot of {ds}; newer: "
                                     f"{', '.join(newer)}. Destroy them first or ask to destroy newer snapshots "
                                     "(zfs rollback -r)", blockers=newer, obj=snapshot)
            self._refuse_clones(st, newer)
            path = self.dataset_path(ds)
            for s in reversed(newer):
                self._run(self._argv_remove(self.snapshot_path(s)))
                self._update(snapshots={s: None})
            self._run(self._rollback_argv(path, self.snapshot_path(snapshot)))

    def _newer(self, st: TreeState, snapshot: str) -> list[str]:
        ds, _ = split_snapshot(snapshot)
        if ds not in st.datasets:
            raise not_found("dataset", ds, self.backend)
        snaps = list(st.snapshots.get(ds, ()))
        if snapshot not in snaps:
            raise not_found("snapshot", snapshot, self.backend)
        return snaps[snaps.index(snapshot) + 1:]

    def _rollback_argv(self, path: str, snap_path: str) -> list[Argv]:
        new, old = self._sibling(path, "rbnew"), self._sibling(path, "rbold")
        return [self._argv_copy_to(snap_path, new, writable=True), ["mv", "-T", "--", path, old],
                ["mv", "-T", "--", new, path], *self._argv_remove(old)]

    def copy_tree(self, src: str, dst: str, *, progress: Progress | None = None) -> int:
        return self.fs.copy_tree(src, dst, progress=progress)

    def plan(self, op: str, *args: str, **options: bool) -> list[str]:
        """The command lines ``op`` would run now. Reads state (to name snapshots), changes nothing."""
        argvs: list[Argv]
        if op == "ensure_dataset":
            plan_args(op, args, 1)
            argvs = self._argv_create(self.dataset_path(args[0]))
        elif op == "snapshot":
            plan_args(op, args, 2)
            full = f"{args[0]}@{check_snap(args[1])}"
            argvs = self._argv_copy(self.dataset_path(args[0]), self.snapshot_path(full), writable=False)
        elif op == "clone":
            plan_args(op, args, 2)
            argvs = self._argv_copy(self.snapshot_path(args[0]), self.dataset_path(args[1]), writable=True)
        elif op == "destroy":
            plan_args(op, args, 1)
            snaps = [] if is_snapshot(args[0]) or not options.get("recursive") else \
                list(self._scan().snapshots.get(args[0], ()))
            argvs = [a for s in reversed(snaps) for a in self._argv_remove(self.snapshot_path(s))]
            argvs += self._argv_remove(self._any_path(args[0]))
        elif op == "promote":
            plan_args(op, args, 1)
            return [f"# {self.backend}: {args[0]} no longer counts as a clone (registry only; its data is its own)"]
        elif op == "rollback":
            plan_args(op, args, 1)
            newer = self._newer(self._scan(), args[0]) if options.get("destroy_newer") else []
            argvs = [a for s in reversed(newer) for a in self._argv_remove(self.snapshot_path(s))]
            ds, _ = split_snapshot(args[0])
            argvs += self._rollback_argv(self.dataset_path(ds), self.snapshot_path(args[0]))
        elif op in ("mount", "unmount", "free_space"):
            plan_args(op, args, 2 if op == "mount" else 1)
            return self.plan_facts(op, args)
        else:
            plan_args(op, args, 2)
            if isinstance(self.fs, LocalFs):
                return [f"copy_tree {args[0]} {args[1]}  # in-process copy; skips files identical by size+mtime"]
            from runbook.adapters.storage_copytree import remote_copy_lines

            return remote_copy_lines(args[0], args[1], fallback_cp=True)
        return [sh(a) for a in argvs]


class CopyStorage(TreeStorage):
    """Snapshots and clones are full copies (``cp -a``). Works on any filesystem."""

    backend = "copy"
    cp_flags: tuple[str, ...] = ()

    def _argv_copy_to(self, src: str, dst: str, *, writable: bool) -> Argv:
        return ["cp", "-a", *self.cp_flags, "-T", "--", src, dst]


class ReflinkStorage(CopyStorage):
    """Snapshots and clones share blocks (``cp -a --reflink=always``): copy-on-write, near-instant."""

    backend = "reflink"
    cp_flags = ("--reflink=always",)
