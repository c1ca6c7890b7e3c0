"""The storage port: snapshots, copy-on-write clones, destroy, rollback, listing and copying.

One protocol (:class:`runbook.adapters.base.Storage`), four backends with the same rules (ZFS's):

- :class:`ZfsStorage` (biscayne): the ``zfs`` CLI through the host port.
- :class:`BtrfsStorage` (testbed as root): subvolumes on a loop image (see ``runbook.testbed.loopfs``).
- :class:`ReflinkStorage`: directories, ``cp -a --reflink=always`` (copy-on-write where supported).
- :class:`CopyStorage`: directories, plain ``cp -a``; works anywhere.
- :class:`ZvolStorage` (testbed as root): the model of a ZFS pool with zvols: XFS volume images on a
  reflink XFS pool in zram, attached with losetup and mounted (``runbook.testbed.zvolpool`` makes the pool).

:func:`choose_backend` resolves ``storage.backend`` (``auto`` included) for a local root and says why;
:func:`make_storage` builds a local backend; :func:`storage_for` builds the backend of a real env.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from runbook.adapters.base import Host, Storage
from runbook.adapters.storage_btrfs import BtrfsStorage, mount_of
from runbook.adapters.storage_common import HostFs, NoSuchDataset, StorageRefused, run_local
from runbook.adapters.storage_copytree import copy_tree
from runbook.adapters.storage_tree import CopyStorage, ReflinkStorage, TreeStorage
from runbook.adapters.storage_zfs import ZfsStorage
from runbook.adapters.storage_zvol import ZvolStorage
from runbook.env import Env
from runbook.errors import CommandFailed, ConfigError

__all__ = [
    "BACKENDS",
    "BtrfsStorage",
    "CopyStorage",
    "NoSuchDataset",
    "ReflinkStorage",
    "StorageRefused",
    "ZfsStorage",
    "ZvolStorage",
    "btrfs_available",
    "choose_backend",
    "copy_tree",
    "make_storage",
    "reflink_supported",
    "storage_for",
]

BACKENDS = ("zfs", "zvol", "btrfs", "reflink", "copy", "auto")
REMOTE_STATE_DIR = "/var/lib/runbook/storage"


def btrfs_available(root: Path) -> tuple[bool, str]:
    """Can the testbed put a btrfs loop image at ``root``? Tries a real loop device attach."""
    if os.geteuid() != 0:
        return False, "not running as root (mounting a loop image needs root)"
    missing = [t for t in ("mkfs.btrfs", "btrfs", "losetup", "mount", "umount") if shutil.which(t) is None]
    if missing:
        return False, f"missing {', '.join(missing)} (install btrfs-progs / util-linux)"
    with open("/proc/filesystems", encoding="utf-8") as f:
        known = any(line.split()[-1] == "btrfs" for line in f if line.strip())
    if not known and shutil.which("modprobe") is not None:
        try:
            run_local(["modprobe", "btrfs"], timeout=30)
            known = True
        except CommandFailed:
            pass
    if not known:
        return False, "the kernel has no btrfs support (not in /proc/filesystems, modprobe btrfs failed)"
    root.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".loop-probe-", dir=root)
    try:
        os.ftruncate(fd, 1024 * 1024)
        os.close(fd)
        dev = run_local(["losetup", "--find", "--show", probe], timeout=30).stdout.strip()
        run_local(["losetup", "-d", dev], timeout=30)
    except CommandFailed as exc:
        return False, f"loop devices do not work here: {exc.stderr.strip() or exc}"
    finally:
        os.unlink(probe)
    return True, "running as root, mkfs.btrfs present, a loop device attached and detached"


def reflink_supported(root: Path) -> tuple[bool, str]:
    """Does the filesystem under ``root`` support ``cp --reflink=always``? Tries it."""
    root.mkdir(parents=True, exist_ok=True)
    fstype = mount_of(str(root)).fstype
    with tempfile.TemporaryDirectory(prefix=".reflink-probe-", dir=root) as d:
        (Path(d) / "a").write_bytes(b"reflink probe\n" * 512)
        try:
            run_local(["cp", "--reflink=always", str(Path(d) / "a"), str(Path(d) / "b")], timeout=30)
        except CommandFailed as exc:
            return False, f"{fstype} under {root} does not support reflinks ({exc.stderr.strip()})"
    return True, f"{fstype} under {root} supports cp --reflink=always (copy-on-write copies)"


def choose_backend(requested: str, root: Path) -> tuple[str, str]:
    """Resolve ``requested`` for a local ``root``: ``(backend, reason)``; the reason is shown to the user.

    ``auto``: btrfs when running as root with mkfs.btrfs and working loop devices, else reflink if the
    filesystem under ``root`` supports it (tested), else copy. A backend named explicitly that cannot
    work here is a :class:`ConfigError` saying why.
    """
    req = requested.strip().lower()
    if req == "zfs":
        return "zfs", "requested by the environment (the zfs CLI through the host port)"
    if req == "copy":
        return "copy", "requested by the environment (plain copies: work anywhere, not copy-on-write)"
    if req == "zvol":
        from runbook.testbed import zvolpool

        ok, why = zvolpool.available()
        if not ok:
            raise ConfigError(f"storage backend zvol was requested but cannot work here: {why}", obj=str(root))
        return "zvol", f"requested by the environment; {why}: XFS volumes on a reflink XFS pool in zram"
    if req == "btrfs":
        ok, why = btrfs_available(root)
        if not ok:
            raise ConfigError(f"storage backend btrfs was requested but cannot work here: {why}", obj=str(root))
        return "btrfs", f"requested by the environment; {why}"
    if req == "reflink":
        ok, why = reflink_supported(root)
        if not ok:
            raise ConfigError(f"storage backend reflink was requested but {why}", obj=str(root))
        return "reflink", f"requested by the environment; {why}"
    if req != "auto":
        raise ConfigError(f"unknown storage backend {requested!r}: expected one of {', '.join(BACKENDS)}")
    ok, why = btrfs_available(root)
    if ok:
        return "btrfs", f"auto: {why}: btrfs subvolume snapshots on a loop image"
    rok, rwhy = reflink_supported(root)
    if rok:
        return "reflink", f"auto: no btrfs ({why}); {rwhy}"
    return "copy", f"auto: no btrfs ({why}); no reflink ({rwhy}); plain copies"


def make_storage(backend: str, root: Path) -> Storage:
    """A local backend rooted at ``root`` (for btrfs: the mounted loop image; for zvol: the mounted pool,
    see :func:`runbook.testbed.zvolpool.up`)."""
    if backend == "zvol":
        return ZvolStorage(root)
    kinds: dict[str, type[TreeStorage]] = {"btrfs": BtrfsStorage, "reflink": ReflinkStorage, "copy": CopyStorage}
    if backend not in kinds:
        hint = "zfs needs a host: use storage_for()" if backend == "zfs" else "resolve it with choose_backend()"
        raise ConfigError(f"no local storage backend {backend!r} ({hint})")
    return kinds[backend](root)


def storage_for(env: Env, host: Host) -> Storage:
    """The storage of a real environment: zfs on the host, or copy/reflink through the host port.

    With copy/reflink, dataset names are paths on the host (``/srv/solana``) and snapshots live under
    ``/var/lib/runbook/storage``.
    """
    backend = env.storage.backend
    if backend == "zfs":
        return ZfsStorage(host)
    if backend in ("copy", "reflink"):
        kind = CopyStorage if backend == "copy" else ReflinkStorage
        return kind("/", state_dir=REMOTE_STATE_DIR, fs=HostFs(host))
    raise ConfigError(f"env {env.name}: storage backend {backend!r} is for the local testbed only; "
                      "name zfs, copy or reflink", env=env.name)
