"""btrfs backend: datasets are subvolumes, snapshots are read-only subvolume snapshots, clones are
writable snapshots of a snapshot. Used by the local testbed on a loop image when running as root.

State is read from btrfs itself (``btrfs subvolume list``): which subvolumes exist, which are snapshots
(their place under ``<state>/snapshots``), their order (subvolume ids only grow), and a clone's origin
(its parent UUID is the UUID of the snapshot it was made from). The registry file only carries a
clone's origin across a rollback, which replaces the subvolume (the new one's parent is the dataset's
own snapshot).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from runbook.adapters.storage_common import StorageRefused, run_local
from runbook.adapters.storage_tree import Argv, TreeState, TreeStorage
from runbook.errors import AdapterError, ConfigError


@dataclass(frozen=True)
class Subvolume:
    id: int
    uuid: str
    parent_uuid: str | None
    path: str  # relative to the filesystem's top level


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    fsroot: str  # path inside the filesystem mounted there ("/" or a subvolume path)
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: str) -> MountInfo:
    """The mount that holds ``path`` (longest mountpoint prefix in /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best: MountInfo | None = None
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            mp = _unescape(parts[4])
            if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) >= len(best.mountpoint)
            ):
                best = MountInfo(mp, _unescape(parts[3]), rparts[0], _unescape(rparts[1]))
    if best is None:  # pragma: no cover - "/" is always mounted
        raise AdapterError(f"no mount holds {path}")
    return best


def parse_subvolume_list(text: str) -> list[Subvolume]:
    """Parse ``btrfs subvolume list -u -q``."""
    out = []
    for line in text.splitlines():
        head, sep, path = line.partition(" path ")
        if not sep:
            continue
        words = head.split()
        fields = {words[i]: words[i + 1] for i in range(len(words) - 1)}
        parent = fields.get("parent_uuid", "-")
        out.append(Subvolume(int(fields["ID"]), fields["uuid"], None if parent == "-" else parent, path))
    return out


class BtrfsStorage(TreeStorage):
    """Datasets as btrfs subvolumes under ``root`` (a btrfs mount, e.g. a loop image from loopfs)."""

    backend = "btrfs"
    atomic_copy = True

    def _argv_create(self, path: str) -> list[Argv]:
        return [["mkdir", "-p", "--", posixpath.dirname(path)], ["btrfs", "subvolume", "create", path]]

    def _argv_copy_to(self, src: str, dst: str, *, writable: bool) -> Argv:
        return ["btrfs", "subvolume", "snapshot", *(() if writable else ("-r",)), src, dst]

    def _argv_remove(self, path: str) -> list[Argv]:
        return [["btrfs", "subvolume", "delete", path]]

    def _argv_remove_stale(self, path: str) -> list[Argv]:
        if os.stat(path).st_ino == 256:  # a subvolume's root directory
            return self._argv_remove(path)
        return [["rm", "-rf", "--", path]]

    def _adopt(self, path: str, name: str) -> bool:
        if self.fs.existing_dirs([path]):
            raise StorageRefused(f"btrfs: {path} exists and is not a subvolume; refusing to make dataset "
                                 f"{name} over it", blockers=[path], obj=name)
        return False

    def _top_rel(self, path: str) -> str:
        m = mount_of(path)
        if m.fstype != "btrfs":
            raise ConfigError(f"btrfs storage: {path} is on {m.fstype} ({m.source} at {m.mountpoint}), not btrfs; "
                              "is the loop image mounted?", obj=path)
        return posixpath.normpath(posixpath.join(m.fsroot, posixpath.relpath(path, m.mountpoint))).strip("/")

    def identity(self, name: str) -> dict[str, str | int]:
        """The directory facts (:mod:`runbook.adapters.storage_facts`) plus the subvolume's ``uuid`` (a
        re-created or rolled-back subvolume has a new one) and ``gen_at_creation``. Not its current
        ``generation``: btrfs raises it when the subvolume is snapshotted or cloned from, and on an atime
        update, so it cannot tell a write from the upgrade's own snapshot (``newest_ctime`` can)."""
        facts = super().identity(name)
        show = run_local(["btrfs", "subvolume", "show", self.path(name)]).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in show.splitlines()) if v}
        return {**facts, "uuid": fields.get("UUID", ""), "gen_at_creation": int(fields.get("Gen at creation", 0))}

    def subvolumes(self) -> list[Subvolume]:
        if not os.path.isdir(self.root):
            raise ConfigError(f"btrfs storage root {self.root} does not exist (is the loop image mounted?)",
                              obj=self.root)
        return parse_subvolume_list(run_local(["btrfs", "subvolume", "list", "-u", "-q", self.root]).stdout)

    def _scan(self) -> TreeState:
        reg = self._load()
        root_rel, snap_rel = self._top_rel(self.root), posixpath.join(self._top_rel(self.state), "snapshots")
        names = {self.dataset_path(n): n for n in reg["datasets"]}  # keep the caller's spelling of a name

        def under(path: str, prefix: str) -> str | None:
            if not prefix or prefix == ".":
                return path
            return path[len(prefix) + 1:] if path.startswith(prefix + "/") else None

        datasets: dict[str, Subvolume] = {}
        snaps: dict[str, Subvolume] = {}
        for sv in self.subvolumes():
            if (rel := under(sv.path, snap_rel)) is not None:
                ds, sep, snap = rel.rpartition("@")
                if sep and not any(p.startswith(".") for p in ds.split("/")):
                    snaps[f"{names.get(posixpath.join(self.root, ds), ds)}@{snap}"] = sv
            elif (rel := under(sv.path, root_rel)) is not None and not any(p.startswith(".") for p in rel.split("/")):
                datasets[names.get(posixpath.join(self.root, rel), rel)] = sv
        by_uuid = {sv.uuid: full for full, sv in snaps.items()}
        origins: dict[str, str | None] = {}
        for name, sv in datasets.items():
            parent = by_uuid.get(sv.parent_uuid or "")
            if reg["datasets"].get(name, {}).get("promoted"):
                origins[name] = None  # promoted: no longer counted as its origin's clone
            elif parent is not None and parent.partition("@")[0] != name:
                origins[name] = parent  # real state: a writable snapshot of another dataset's snapshot
            else:
                recorded = reg["datasets"].get(name, {}).get("origin")
                origins[name] = recorded if recorded in snaps else None
        per_ds: dict[str, list[tuple[int, str]]] = {}
        for full, sv in snaps.items():
            per_ds.setdefault(full.partition("@")[0], []).append((sv.id, full))
        return TreeState(origins, {d: tuple(f for _, f in sorted(v)) for d, v in per_ds.items()})
