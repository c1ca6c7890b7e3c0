"""The testbed's ZFS pool stand-in: an XFS filesystem with ``reflink=1`` on a zram device, in RAM.

zram costs RAM only for what is written (compressed), so a pool of many GiB holding sparse volumes is
cheap. :func:`up` adds a zram device (``/sys/class/zram-control/hot_add``), sets its ``disksize``, makes
XFS on it (``mkfs.xfs -m reflink=1``: copy-on-write ``cp --reflink``, the model's snapshots and clones)
labelled with a marker derived from the state directory, and mounts it. :func:`down` finds everything by
that marker and by the kernel's tables, so it also works after a crash that lost every record: mounts of
loop devices backed by files on the pool (the volumes), the loop devices, bind mounts of the pool's
directories, the pool's own mounts, then resets and removes the zram device. Both are idempotent.

This kernel loads no modules and has no device-mapper; zram and loop devices work (the probe in
:func:`available` tries them).

Mount namespaces: a process that enters a new mount namespace (a testbed container) gets a copy of every
mount there is at that moment, and a private copy keeps the filesystem busy after our own ``umount``
until it exits (a loop device then stays attached; the model reports that as busy, as ZFS would). The pool
and the model's mounts are made shared (``mount --make-shared``), so a namespace made with slave
propagation (``MS_REC | MS_SLAVE`` on ``/``, ``unshare --propagation slave``) sees our unmounts too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runbook.adapters import blockdev
from runbook.errors import CommandFailed, TestbedError, WaitTimeout
from runbook.testbed.loopfs import parse_size, run_local
from runbook.wait import wait_for

ZRAM_CONTROL = Path("/sys/class/zram-control")
TOOLS = ("mkfs.xfs", "xfs_freeze", "losetup", "mount", "umount", "blkid", "cp")
MIN_SIZE = 320 * 1024**2  # mkfs.xfs: at least 300 MiB


@dataclass(frozen=True)
class Pool:
    device: str  # /dev/zramN
    mountpoint: Path
    label: str  # the marker: XFS label of the pool
    size: int  # the zram disksize in bytes


def label_for(state_dir: Path) -> str:
    """The marker of the pool of ``state_dir``: ``rbzv`` + 8 hex digits (XFS labels hold 12 characters)."""
    return "rbzv" + hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]


def default_mountpoint(state_dir: Path) -> Path:
    return Path(state_dir).resolve() / "zvolpool"


def available() -> tuple[bool, str]:
    """Can this machine hold the pool? Root, the tools, XFS in the kernel, and zram hot_add."""
    if os.geteuid() != 0:
        return False, "not running as root (zram, loop devices and mounts need root)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return False, f"missing {', '.join(missing)} (install xfsprogs / util-linux)"
    with open("/proc/filesystems", encoding="utf-8") as f:
        if not any(line.split()[-1] == "xfs" for line in f if line.strip()):
            return False, "the kernel has no XFS (not in /proc/filesystems)"
    if not (ZRAM_CONTROL / "hot_add").exists():
        return False, "no zram in this kernel (/sys/class/zram-control/hot_add is missing)"
    if not Path("/dev/loop-control").exists():
        return False, "no loop devices (/dev/loop-control is missing)"
    return True, "root, xfsprogs and util-linux present, XFS, zram and loop devices in the kernel"


def _zram_devices() -> list[str]:
    return sorted(f"/dev/{p.name}" for p in Path("/sys/block").glob("zram*"))


def _label(device: str) -> str:
    try:
        p = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", device], capture_output=True, text=True,
                           timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout.strip()


def _disksize(device: str) -> int:
    try:
        return int((Path("/sys/block") / Path(device).name / "disksize").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def marked_devices(label: str) -> list[str]:
    """zram devices carrying the pool marker ``label`` (initialised ones only: disksize > 0)."""
    return [d for d in _zram_devices() if _disksize(d) > 0 and _label(d) == label]


def _majmin(device: str) -> str:
    return (Path("/sys/block") / Path(device).name / "dev").read_text().strip()


def find(state_dir: Path, *, mountpoint: Path | None = None) -> Pool | None:
    """The pool of ``state_dir`` when it is mounted at its mountpoint, else None."""
    mp = Path(mountpoint or default_mountpoint(state_dir)).resolve()
    label = label_for(state_dir)
    for dev in marked_devices(label):
        if any(m.target == str(mp) and m.source == dev and m.fsroot == "/" for m in blockdev.mounts()):
            return Pool(dev, mp, label, _disksize(dev))
    return None


def up(state_dir: Path, size: str | int, *, mountpoint: Path | None = None) -> Pool:
    """Make sure the pool of ``state_dir`` is mounted (default ``<state_dir>/zvolpool``); return it.

    An existing pool (same marker) is mounted again with its data, whatever ``size`` says; else a zram
    device of ``size`` (at least 320M) is added, formatted and mounted.
    """
    ok, why = available()
    if not ok:
        raise TestbedError(f"the zvol pool cannot work here: {why}")
    mp = Path(mountpoint or default_mountpoint(state_dir)).resolve()
    nbytes = parse_size(size)
    if nbytes < MIN_SIZE:
        raise TestbedError(f"zvol pool: {size} is too small (mkfs.xfs needs at least 320M)")
    if (pool := find(state_dir, mountpoint=mp)) is not None:
        return pool  # converge
    if any(m.target == str(mp) for m in blockdev.mounts()):
        raise TestbedError(f"{mp} already has something else mounted on it; not the zvol pool of {state_dir}")
    label = label_for(state_dir)
    mp.mkdir(parents=True, exist_ok=True)
    existing = marked_devices(label)
    dev = existing[0] if existing else _add_zram(nbytes, label)  # made before a crash: keep its data
    try:
        run_local(["mount", "-t", "xfs", dev, str(mp)], timeout=60)
        run_local(["mount", "--make-shared", str(mp)], timeout=60)  # see make_shared
    except CommandFailed as exc:
        if not existing:
            _remove_zram(dev)
        raise TestbedError(f"mounting the zvol pool {dev} at {mp} failed: {exc.stderr.strip()}") from exc
    return Pool(dev, mp, label, _disksize(dev))


def _add_zram(nbytes: int, label: str) -> str:
    number = (ZRAM_CONTROL / "hot_add").read_text().strip()  # reading it adds a device and names it
    dev = f"/dev/zram{number}"
    try:
        (Path("/sys/block") / f"zram{number}" / "disksize").write_text(str(nbytes))
        run_local(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", "-L", label, dev], timeout=120)
    except (OSError, CommandFailed) as exc:
        _remove_zram(dev)
        raise TestbedError(f"making the zvol pool on {dev} failed: {exc}") from exc
    return dev


def _remove_zram(dev: str) -> None:
    name = Path(dev).name
    with contextlib.suppress(OSError):
        (Path("/sys/block") / name / "reset").write_text("1")
    with contextlib.suppress(OSError):
        (ZRAM_CONTROL / "hot_remove").write_text(name.removeprefix("zram"))


def _umount(target: str, timeout: float) -> None:
    def gone() -> bool:
        if not any(m.target == target for m in blockdev.mounts()):
            return True
        try:
            run_local(["umount", target], timeout=60)
        except CommandFailed as exc:
            return "not mounted" in exc.stderr
        return not any(m.target == target for m in blockdev.mounts())

    try:
        wait_for(gone, bool, timeout=timeout, interval=0.2, what=f"{target} to unmount")
    except WaitTimeout as exc:
        raise TestbedError(f"cannot unmount {target} (busy? see `fuser -vm {target}`): {exc}") from exc


def detach(devices: list[str], *, timeout: float = 10.0) -> None:
    """Detach loop devices and wait until the kernel has let them go (detaching is lazy)."""
    def attached() -> list[str]:
        left = [d for d in devices if d in blockdev.loop_devices()]
        for dev in left:
            with contextlib.suppress(CommandFailed):
                run_local(["losetup", "-d", dev], timeout=30)
        return [d for d in devices if d in blockdev.loop_devices()]

    try:
        wait_for(attached, lambda left: not left, timeout=timeout, interval=0.1,
                 what=f"loop devices {devices} to detach")
    except WaitTimeout as exc:
        held = "; ".join(f"{d}: {blockdev.describe_holders(blockdev.device_majmin(d))}"
                         for d in devices if d in blockdev.loop_devices())
        raise TestbedError(f"loop devices still attached after {timeout:.0f} s: busy ({held}); a process that "
                           "entered a new mount namespace while the volume was mounted keeps it mounted there "
                           "until it exits") from exc


def leftovers(state_dir: Path) -> list[str]:
    """What of the pool of ``state_dir`` is still there: zram devices, loop devices and mounts."""
    label = label_for(state_dir)
    devs = marked_devices(label)
    majmins = {_majmin(d) for d in devs}
    loops = {dev for dev, (_, mm) in blockdev.loop_devices().items() if mm in majmins}
    out = [f"zram device: {d} (label {label})" for d in devs]
    out += [f"loop device: {d}" for d in sorted(loops)]
    out += [f"mount: {m.source} on {m.target}" for m in blockdev.mounts() if m.source in {*devs, *loops}]
    return out


def down(state_dir: Path, *, timeout: float = 10.0) -> None:
    """Remove the pool of ``state_dir``: volume mounts, loop devices, bind mounts, the pool, the zram device.

    Found by the marker and the kernel's tables (a loop device belongs to the pool when its backing file
    is on the pool's device), so it works after a crash and is safe to call twice. A busy mount is a
    :class:`TestbedError` naming it after ``timeout`` seconds.
    """
    mp = str(default_mountpoint(state_dir))
    at_mountpoint = {m.source for m in blockdev.mounts() if m.target == mp and m.source.startswith("/dev/zram")}
    for dev in sorted(set(marked_devices(label_for(state_dir))) | at_mountpoint):  # even if its label is unreadable
        majmin = _majmin(dev)
        loops = sorted(d for d, (_, mm) in blockdev.loop_devices().items() if mm == majmin)
        for target in sorted({m.target for m in blockdev.mounts() if m.source in loops}, key=len, reverse=True):
            _umount(target, timeout)
        if loops:
            detach(loops, timeout=timeout)
        for target in sorted({m.target for m in blockdev.mounts() if m.source == dev}, key=len, reverse=True):
            _umount(target, timeout)
        sysdir = Path("/sys/block", Path(dev).name)

        def removed(d: str = dev, sysdir: Path = sysdir) -> bool:
            _remove_zram(d)
            return not sysdir.exists()

        try:
            wait_for(removed, bool, timeout=timeout, interval=0.2, what=f"{dev} to be removed")
        except WaitTimeout as exc:
            raise TestbedError(f"cannot remove {dev} (busy: {blockdev.describe_holders(majmin)}; a process that "
                               "entered a new mount namespace while the pool was mounted keeps it until it exits); "
                               "run zvolpool.down again once it has") from exc
    if os.path.isdir(mp) and not any(m.target == mp for m in blockdev.mounts()):
        with contextlib.suppress(OSError):
            os.rmdir(mp)
