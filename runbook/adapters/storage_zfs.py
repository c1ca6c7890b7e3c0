"""ZFS backend: every operation is a ``zfs`` command run through the host port.

ZFS semantics are kept, and the two that lose data silently are refused instead (design trap 8):

- ``zfs snapshot ds@name`` snapshots one dataset; ``-r`` only when asked.
- ``zfs clone`` is not recursive: it clones one snapshot into one dataset.
- A snapshot with dependent clones cannot be destroyed without ``-R``, which destroys the clones too.
  We never pass ``-R``: destroy the clone first, or get :class:`StorageRefused` naming the clones.
- ``zfs rollback`` goes to the latest snapshot only; ``-r`` destroys the newer ones. We refuse and name
  them unless ``destroy_newer=True`` is passed explicitly (then ``-r``, still never ``-R``).

Zvols (``type`` ``volume``, biscayne's ledger, carrying XFS) are block devices at ``/dev/zvol/<name>``:
``mount`` mounts one with ``-o nouuid`` (a clone carries its origin's XFS UUID); ``destroy`` of a mounted
volume and ``rollback`` of a mounted volume are refused (unmount first). A recursive snapshot of a
parent (``zfs snapshot -r biscayne/DATA@x``, as the seed does) snapshots its volumes and filesystems
atomically. Space figures come from ``zfs get -Hp available,used,...``; identity facts from ``guid``,
``createtxg`` and ``written@<snap>``. Every command that changes something (``zfs`` create, snapshot,
clone, destroy, rollback, promote; ``mkdir``, ``mount``, ``umount``) runs with ``root=True`` through the
host port (``sudo -n`` on a host whose URL says ``?sudo=true``); reads (``zfs list``/``get``, ``findmnt``)
run as the connection's user.

Snapshot, clone and create converge (an existing one is left alone), so a procedure can be re-run.
``plan(op, ...)`` renders the exact mutating command lines and runs nothing.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from runbook.adapters.base import CommandResult, Dataset, Host, Progress
from runbook.adapters.storage_common import (
    NoSuchDataset,
    StorageRefused,
    check_dataset,
    check_snap,
    is_snapshot,
    plan_args,
    split_snapshot,
)
from runbook.adapters.storage_copytree import remote_copy_lines, remote_copy_tree
from runbook.adapters.storage_zfs_zvol import SPACE_PROPS, ZvolOps, cmd_mount, cmd_props, cmd_umount, cmd_volumes
from runbook.errors import AdapterError, CommandFailed

_MISSING = ("does not exist", "no such pool", "no such dataset")


def q(word: str) -> str:
    return shlex.quote(word)


# -- the command lines (one place, shared by the operations and by plan) -----------------------
def cmd_create(name: str) -> str:
    return f"zfs create -p {q(name)}"


def cmd_snapshot(dataset: str, snap: str, *, recursive: bool = False) -> str:
    return f"zfs snapshot {'-r ' if recursive else ''}{q(f'{dataset}@{snap}')}"


def cmd_clone(snapshot: str, target: str) -> str:
    return f"zfs clone {q(snapshot)} {q(target)}"


def cmd_destroy(name: str, *, recursive: bool = False) -> str:
    return f"zfs destroy {'-r ' if recursive else ''}{q(name)}"


def cmd_rollback(snapshot: str, *, destroy_newer: bool = False) -> str:
    return f"zfs rollback {'-r ' if destroy_newer else ''}{q(snapshot)}"


def cmd_promote(name: str) -> str:
    return f"zfs promote {q(name)}"


def cmd_get(prop: str, name: str) -> str:
    return f"zfs get -H -o value {prop} {q(name)}"


def cmd_snapshots(dataset: str, *, descendants: bool = False) -> str:
    depth = "-r" if descendants else "-d 1"
    return f"zfs list -H -o name,clones -t snapshot -s createtxg {depth} {q(dataset)}"


def cmd_tree(dataset: str) -> str:
    return f"zfs list -H -o name -t filesystem,volume -r {q(dataset)}"


@dataclass(frozen=True)
class SnapshotRow:
    name: str
    clones: tuple[str, ...]


def _clones(value: str) -> tuple[str, ...]:
    return tuple(c for c in value.strip().split(",") if c and c != "-")


class ZfsStorage(ZvolOps):
    """ZFS datasets on a host (``biscayne/DATA/volumes/solana``), driven by the ``zfs`` CLI."""

    backend = "zfs"

    def __init__(self, host: Host, *, root: str | None = None, timeout: float = 120.0,
                 copy_timeout: float = 86400.0) -> None:
        self.host = host
        self.root = root  # limits datasets() to this subtree
        self.timeout = timeout
        self.copy_timeout = copy_timeout

    def __repr__(self) -> str:
        return f"ZfsStorage({self.host.url!r})"

    # -- running -------------------------------------------------------------------------------
    def _run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """A command that changes something: as root (``sudo -n`` on a ``?sudo=true`` host)."""
        r = self.host.run(command, check=False, timeout=timeout or self.timeout, root=True)
        if r.rc != 0:
            raise CommandFailed(f"zfs on {self.host.url}", command=command, rc=r.rc, stderr=r.stderr)
        return r

    def _query(self, command: str) -> CommandResult | None:
        """A read whose 'does not exist' answer is None; any other failure is raised."""
        r = self.host.run(command, check=False, timeout=self.timeout)
        if r.rc == 0:
            return r
        if any(m in r.stderr.lower() for m in _MISSING):
            return None
        raise CommandFailed(f"zfs on {self.host.url}", command=command, rc=r.rc, stderr=r.stderr)

    def _get(self, prop: str, name: str) -> str | None:
        r = self._query(cmd_get(prop, name))
        return None if r is None else r.stdout.strip()

    def _snapshot_rows(self, dataset: str, *, descendants: bool = False) -> list[SnapshotRow] | None:
        r = self._query(cmd_snapshots(dataset, descendants=descendants))
        if r is None:
            return None
        rows = [line.split("\t") for line in r.stdout.splitlines() if line.strip()]
        return [SnapshotRow(cols[0], _clones(cols[1] if len(cols) > 1 else "")) for cols in rows]

    def _tree(self, dataset: str) -> list[str] | None:
        r = self._query(cmd_tree(dataset))
        return None if r is None else [line.strip() for line in r.stdout.splitlines() if line.strip()]

    def _refuse_clones(self, rows: Sequence[SnapshotRow]) -> None:
        deps = [r for r in rows if r.clones]
        if deps:
            which = "; ".join(f"{r.name} is the origin of {', '.join(r.clones)}" for r in deps)
            raise StorageRefused(f"zfs: {which}: destroy the clone(s) first (zfs destroy -R would destroy "
                                 "them too, which this runbook never does)",
                                 blockers=sorted({c for r in deps for c in r.clones}), obj=deps[0].name)

    def _dataset(self, name: str) -> Dataset:
        r = self._query(f"zfs list -H -o name,type,mountpoint,origin {q(name)}")
        if r is None:
            raise NoSuchDataset(f"zfs: no such dataset {name!r}", obj=name)
        _, _, mountpoint, origin = (r.stdout.strip().split("\t") + ["-"] * 4)[:4]
        snaps = self._snapshot_rows(name) or []
        return Dataset(name=name, path=mountpoint if mountpoint.startswith("/") else "",
                       origin=None if origin in ("-", "") else origin, snapshots=tuple(s.name for s in snaps))

    # -- the Storage protocol ------------------------------------------------------------------
    def ensure_dataset(self, name: str) -> Dataset:
        check_dataset(name)
        if self._query(f"zfs list -H -o name {q(name)}") is None:
            self._run(cmd_create(name))
        return self._dataset(name)

    def path(self, name: str) -> str:
        """The directory holding the data: the mountpoint (``zfs get -H -o value mountpoint``).

        A zvol (``-``) or a legacy mount has no mountpoint property; it is found with ``findmnt``.
        """
        if is_snapshot(name):
            ds, snap = split_snapshot(name)
            if self._query(f"zfs list -H -o name -t snapshot {q(name)}") is None:
                raise NoSuchDataset(f"zfs: no such snapshot {name!r}", obj=name)
            if not (self._get("mountpoint", ds) or "").startswith("/"):
                raise AdapterError(f"zfs: {name} is a snapshot of a zvol or legacy mount: it has no .zfs "
                                   "directory; clone it and mount the clone to read it", obj=name)
            return f"{self.path(ds).rstrip('/')}/.zfs/snapshot/{snap}"
        check_dataset(name)
        mountpoint = self._get("mountpoint", name)
        if mountpoint is None:
            raise NoSuchDataset(f"zfs: no such dataset {name!r}", obj=name)
        if mountpoint.startswith("/"):
            return mountpoint
        if mountpoint == "none":
            raise AdapterError(f"zfs: {name} has mountpoint=none; it holds no files", obj=name)
        source = f"/dev/zvol/{name}" if mountpoint == "-" else name
        r = self.host.run(f"findmnt -n -o TARGET --source {q(source)}", check=False, timeout=self.timeout)
        targets = [t for t in r.stdout.splitlines() if t.strip()]
        if not targets:
            kind = "zvol" if mountpoint == "-" else "legacy-mounted dataset"
            hint = " (an xfs clone of a zvol mounts with -o nouuid)" if mountpoint == "-" else ""
            raise AdapterError(f"zfs: {kind} {name} is not mounted: mount {source} first{hint}", obj=name)
        return targets[0].strip()

    def datasets(self) -> list[Dataset]:
        scope = f" -r {q(self.root)}" if self.root else ""
        listing = self._run(f"zfs list -H -o name,type,mountpoint,origin -t filesystem,volume{scope}").stdout
        snaps = self._run(f"zfs list -H -o name -t snapshot -s createtxg{scope}").stdout.split()
        out = []
        for line in listing.splitlines():
            if not line.strip():
                continue
            name, _, mountpoint, origin = (line.split("\t") + ["-"] * 4)[:4]
            out.append(Dataset(name=name, path=mountpoint if mountpoint.startswith("/") else "",
                               origin=None if origin in ("-", "") else origin,
                               snapshots=tuple(s for s in snaps if s.partition("@")[0] == name)))
        return out

    def snapshot(self, dataset: str, snap: str, *, recursive: bool = False) -> str:
        check_dataset(dataset)
        check_snap(snap)
        full = f"{dataset}@{snap}"
        if recursive:
            tree = self._tree(dataset)
            if tree is None:
                raise NoSuchDataset(f"zfs: no such dataset {dataset!r}", obj=dataset)
            have = {r.name for r in self._snapshot_rows(dataset, descendants=True) or []}
            missing = [d for d in tree if f"{d}@{snap}" not in have]
            if not missing:
                return full  # converge
            if len(missing) < len(tree):
                raise StorageRefused(f"zfs: @{snap} exists on part of {dataset}'s tree only; missing on "
                                     f"{', '.join(missing)}", blockers=missing, obj=full)
        elif self._query(f"zfs list -H -o name -t snapshot {q(full)}") is not None:
            return full  # converge: an existing snapshot is left alone
        self._run(cmd_snapshot(dataset, snap, recursive=recursive))
        return full

    def clone(self, snapshot: str, target: str) -> Dataset:
        split_snapshot(snapshot)
        check_dataset(target)
        origin = self._get("origin", target)
        if origin is not None:
            if origin == snapshot:
                return self._dataset(target)  # converge
            raise StorageRefused(f"zfs: {target} exists and is not a clone of {snapshot} (origin: "
                                 f"{origin if origin not in ('-', '') else 'none'}); destroy it first",
                                 blockers=[target], obj=target)
        if self._query(f"zfs list -H -o name -t snapshot {q(snapshot)}") is None:
            raise NoSuchDataset(f"zfs: no such snapshot {snapshot!r}", obj=snapshot)
        self._run(cmd_clone(snapshot, target))
        return self._dataset(target)

    def destroy(self, name: str, *, recursive: bool = False) -> None:
        if is_snapshot(name):
            ds, snap = split_snapshot(name)
            rows = self._snapshot_rows(ds, descendants=recursive)
            hits = [r for r in rows or [] if r.name == name or (recursive and r.name.endswith(f"@{snap}"))]
            if not hits:
                return  # converge: already gone
            self._refuse_clones(hits)
            self._run(cmd_destroy(name, recursive=recursive))
            return
        check_dataset(name)
        tree = self._tree(name)
        if tree is None:
            return  # converge: already gone
        children = [d for d in tree if d != name]
        vols = self._query(cmd_volumes(name))
        self._refuse_mounted([v.strip() for v in (vols.stdout if vols else "").splitlines() if v.strip()],
                             f"destroy {name}")
        snaps = self._snapshot_rows(name, descendants=True) or []
        if not recursive and (children or snaps):
            blockers = children + [s.name for s in snaps]
            raise StorageRefused(f"zfs: {name} has {'child datasets' if children else 'snapshots'} "
                                 f"({', '.join(blockers)}); destroy them first or destroy recursively",
                                 blockers=blockers, obj=name)
        self._refuse_clones(snaps)
        self._run(cmd_destroy(name, recursive=recursive))

    def promote(self, clone: str) -> None:
        """Make a clone independent of its origin snapshot (``zfs promote``: the snapshot moves to it and
        the old origin dataset becomes the clone), so the old dataset can be destroyed."""
        check_dataset(clone)
        origin = self._get("origin", clone)
        if origin is None:
            raise NoSuchDataset(f"zfs: no such dataset {clone!r}", obj=clone)
        if origin in ("-", ""):
            return  # converge: not a clone (any more)
        self._run(cmd_promote(clone))

    def rollback(self, snapshot: str, *, destroy_newer: bool = False) -> None:
        ds, _ = split_snapshot(snapshot)
        rows = self._snapshot_rows(ds)
        if rows is None:
            raise NoSuchDataset(f"zfs: no such dataset {ds!r}", obj=ds)
        names = [r.name for r in rows]
        if snapshot not in names:
            raise NoSuchDataset(f"zfs: no such snapshot {snapshot!r} (snapshots of {ds}: "
                                f"{', '.join(names) or 'none'})", obj=snapshot)
        newer = rows[names.index(snapshot) + 1:]
        if newer and not destroy_newer:
            raise StorageRefused(f"zfs: {snapshot} is not the latest snapshot of {ds}; newer: "
                                 f"{', '.join(r.name for r in newer)}. zfs rollback -r would destroy them; "
                                 "destroy them first or ask for it explicitly (destroy_newer)",
                                 blockers=[r.name for r in newer], obj=snapshot)
        self._refuse_clones(newer)
        if self._type(ds) == "volume":  # XFS on it would see its blocks change underneath: corruption
            self._refuse_mounted([ds], f"roll {ds} back under its mounted filesystem")
        self._run(cmd_rollback(snapshot, destroy_newer=destroy_newer))

    def copy_tree(self, src: str, dst: str, *, progress: Progress | None = None) -> int:
        """Copy a directory on the host with rsync (resumes: identical files are skipped)."""
        return remote_copy_tree(self._run, src, dst, progress=progress, timeout=self.copy_timeout)

    def plan(self, op: str, *args: str, **options: bool) -> list[str]:
        """The exact mutating command lines ``op`` runs (reads that decide convergence are not listed)."""
        if op == "ensure_dataset":
            plan_args(op, args, 1)
            return [cmd_create(check_dataset(args[0]))]
        if op == "snapshot":
            plan_args(op, args, 2)
            return [cmd_snapshot(check_dataset(args[0]), check_snap(args[1]),
                                 recursive=options.get("recursive", False))]
        if op == "clone":
            plan_args(op, args, 2)
            split_snapshot(args[0])
            return [cmd_clone(args[0], check_dataset(args[1]))]
        if op == "destroy":
            plan_args(op, args, 1)
            if is_snapshot(args[0]):
                split_snapshot(args[0])
            else:
                check_dataset(args[0])
            return [cmd_destroy(args[0], recursive=options.get("recursive", False))]
        if op == "promote":
            plan_args(op, args, 1)
            return [cmd_promote(check_dataset(args[0]))]
        if op == "rollback":
            plan_args(op, args, 1)
            split_snapshot(args[0])
            return [cmd_rollback(args[0], destroy_newer=options.get("destroy_newer", False))]
        if op == "mount":
            plan_args(op, args, 2)
            return cmd_mount(check_dataset(args[0]), args[1])
        if op == "unmount":
            plan_args(op, args, 1)
            return [cmd_umount(check_dataset(args[0]))]
        if op == "free_space":
            plan_args(op, args, 1)
            return [cmd_props(SPACE_PROPS, args[0])]
        plan_args(op, args, 2)
        return remote_copy_lines(args[0], args[1])
