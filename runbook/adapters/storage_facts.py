"""Mounts, space figures and identity facts of the directory backends (copy, reflink, btrfs).

A directory dataset has no device: it lives at its own path, always "mounted" there. ``mount(name, path)``
with that path is a no-op and any other path is refused (the caller hands blue's Deployment
``storage.path(name)`` instead); ``unmount`` is a no-op. Space figures come from ``df``/``du`` through the
backend's :class:`~runbook.adapters.storage_common.Fs`, so they work locally and through the host port.

Identity facts (:meth:`TreeFacts.identity`) of a dataset or snapshot directory:

- ``id``: the creation id the registry gave the dataset when it was created or cloned (a dataset destroyed
  and re-created under the same name gets a new one; snapshots: the registry's sequence number);
- ``inode``: the directory's inode (a rollback renames a fresh copy into place: a new inode);
- ``newest_ctime``: the newest status-change time of anything in the tree (``find -printf %C@``). Every
  write, create, delete, rename or chmod sets ctime to now and nothing can set it back, so an unchanged
  value proves no file was touched (a walk of the tree's metadata, not a hash of its data);
- ``entries``: how many files, directories and links the tree holds.

btrfs adds its own facts (see :mod:`runbook.adapters.storage_btrfs`).
"""

from __future__ import annotations

import posixpath
from typing import Any

from runbook.adapters.storage_common import Fs, NoSuchDataset, StorageRefused, is_snapshot, sh
from runbook.errors import AdapterError


def df_avail(fs: Fs, path: str) -> int:
    """Free bytes (for an unprivileged writer) of the filesystem holding ``path``: ``df -B1 --output=avail``."""
    return _last_int(fs.run(df_argv(path)).stdout, f"df {path}")


def df_argv(path: str) -> list[str]:
    return ["df", "-B1", "--output=avail", path]


def du_used(fs: Fs, path: str) -> int:
    """Bytes the tree at ``path`` occupies on disk (``du -s -B1 -x``: shared reflinked blocks count fully)."""
    out = fs.run(["du", "-s", "-B1", "-x", path]).stdout.split()
    if not out or not out[0].isdigit():
        raise AdapterError(f"du {path}: unexpected output {out!r}", obj=path)
    return int(out[0])


def _last_int(text: str, what: str) -> int:
    words = text.split()
    if not words or not words[-1].isdigit():
        raise AdapterError(f"{what}: unexpected output {text!r}")
    return int(words[-1])


def tree_facts(fs: Fs, path: str) -> dict[str, str | int]:
    """``inode``, ``newest_ctime`` and ``entries`` of the tree at ``path`` (one ``stat`` and one ``find``)."""
    inode = fs.run(["stat", "-c", "%i", path]).stdout.strip()
    times = fs.run(["find", path, "-printf", "%C@\\n"]).stdout.split()
    newest = max(times, key=lambda t: tuple(int(x or 0) for x in t.partition(".")[::2])) if times else ""
    return {"inode": int(inode), "newest_ctime": newest, "entries": max(0, len(times) - 1)}


class TreeFacts:
    """The mount/space/identity part of the Storage protocol for :class:`~runbook.adapters.storage_tree.TreeStorage`."""

    backend: str
    root: str
    state: str
    fs: Fs

    def path(self, name: str) -> str:  # pragma: no cover - TreeStorage's
        raise NotImplementedError

    def _load(self) -> dict[str, Any]:  # pragma: no cover - TreeStorage's
        raise NotImplementedError

    def mount(self, name: str, path: str) -> None:
        here = self.path(name)
        if posixpath.normpath(path) != here:
            raise StorageRefused(f"{self.backend}: {name} is a directory at {here}; this backend cannot mount it "
                                 f"at {path} (give the Deployment storage.path({name!r}) instead)",
                                 blockers=[path], obj=name)

    def unmount(self, name: str) -> None:
        self.path(name)  # must exist; a directory dataset stays where it is

    def mounted_at(self, name: str) -> str | None:
        try:
            return self.path(name)
        except NoSuchDataset:
            return None

    def _nearest(self, name: str) -> str:
        try:
            return self.path(name)
        except NoSuchDataset:
            return self.state if is_snapshot(name) and self.fs.exists(self.state) else self.root

    def free_bytes(self, name: str) -> int:
        """Free bytes of the filesystem holding ``name`` (or the backend's root when ``name`` does not exist yet)."""
        return df_avail(self.fs, self._nearest(name))

    def used_bytes(self, name: str) -> int:
        return du_used(self.fs, self.path(name))

    def identity(self, name: str) -> dict[str, str | int]:
        """``id``, ``inode``, ``newest_ctime``, ``entries`` (see the module docstring)."""
        path = self.path(name)
        reg = self._load()
        if is_snapshot(name):
            ident: str | int = int(reg["snapshots"].get(name, {}).get("seq", 0))
        else:
            ident = str(reg["datasets"].get(name, {}).get("id", ""))
        return {"id": ident, **tree_facts(self.fs, path)}

    def plan_facts(self, op: str, args: tuple[str, ...]) -> list[str]:
        """Plan lines of ``mount``, ``unmount`` and ``free_space`` (nothing to mount for a directory)."""
        if op == "free_space":
            return [sh(df_argv(self.root))]
        return [f"# {self.backend}: {args[0]} is a directory dataset at its own path; nothing to {op}"]
