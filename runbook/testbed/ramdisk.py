"""RAM-backed devices for the testbed's accounts directories, as biscayne's accounts sit on a ramdisk.

This kernel has no ``brd`` (and loads no modules), so a "ramdisk" is a zram device with an ext4 filesystem:
it costs RAM for what is written, like a ramdisk, and is a real block device with a real mount. :func:`up`
adds one (``/sys/class/zram-control/hot_add``), sets its ``disksize``, makes ext4 labelled with a marker
derived from the state directory and an index, mounts it and makes the mount shared (so a container's
slave mount namespace sees the unmount). :func:`down` finds every device of a state directory by that
marker (``blkid``), so it also works after a crash; :func:`leftovers` lists them. Both are idempotent.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from runbook.adapters import blockdev
from runbook.errors import CommandFailed, TestbedError, WaitTimeout
from runbook.testbed import zvolpool
from runbook.testbed.loopfs import parse_size, run_local
from runbook.wait import wait_for

MIN_SIZE = 16 * 1024**2


def label_prefix(state_dir: Path) -> str:
    """``rbrd`` + 8 hex digits of the state directory (ext4 labels hold 16 characters), then ``-<index>``."""
    return "rbrd" + hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8] + "-"


def devices(state_dir: Path) -> dict[str, str]:
    """This state directory's ramdisks: device -> label."""
    prefix = label_prefix(state_dir)
    found = {}
    for dev in zvolpool._zram_devices():
        if zvolpool._disksize(dev) > 0 and (label := zvolpool._label(dev)).startswith(prefix):
            found[dev] = label
    return found


def up(state_dir: Path, index: int, size: str | int, mountpoint: Path) -> str:
    """A zram device of ``size`` with ext4 mounted at ``mountpoint`` (found again when already there); its device."""
    nbytes = parse_size(size)
    if nbytes < MIN_SIZE:
        raise TestbedError(f"ramdisk: {size} is too small (at least 16M)")
    mp, label = str(Path(mountpoint).resolve()), f"{label_prefix(state_dir)}{index}"
    existing = [d for d, lab in devices(state_dir).items() if lab == label]
    if existing and any(m.target == mp and m.source == existing[0] for m in blockdev.mounts()):
        return existing[0]
    Path(mp).mkdir(parents=True, exist_ok=True)
    if existing:
        dev = existing[0]
    else:
        number = (zvolpool.ZRAM_CONTROL / "hot_add").read_text().strip()
        dev = f"/dev/zram{number}"
        try:
            (Path("/sys/block") / f"zram{number}" / "disksize").write_text(str(nbytes))
            run_local(["mkfs.ext4", "-q", "-F", "-L", label, dev], timeout=120)
        except (OSError, CommandFailed) as exc:
            zvolpool._remove_zram(dev)
            raise TestbedError(f"making the ramdisk {dev} failed: {exc}") from exc
    try:
        run_local(["mount", "-t", "ext4", "-o", "noatime", dev, mp], timeout=60)
        run_local(["mount", "--make-shared", mp], timeout=60)  # a slave namespace sees the unmount
    except CommandFailed as exc:
        zvolpool._remove_zram(dev)
        raise TestbedError(f"mounting the ramdisk {dev} at {mp} failed: {exc.stderr.strip()}") from exc
    return dev


def leftovers(state_dir: Path) -> list[str]:
    devs = devices(state_dir)
    out = [f"zram ramdisk: {d} (label {lab})" for d, lab in sorted(devs.items())]
    out += [f"mount: {m.source} on {m.target}" for m in blockdev.mounts() if m.source in devs]
    return out


def down(state_dir: Path, *, timeout: float = 10.0) -> None:
    """Unmount and remove every ramdisk of ``state_dir``; a busy one is a TestbedError naming its holders."""
    for dev in sorted(devices(state_dir)):
        for target in sorted({m.target for m in blockdev.mounts() if m.source == dev}, key=len, reverse=True):
            zvolpool._umount(target, timeout)
        sysdir = Path("/sys/block", Path(dev).name)

        def removed(d: str = dev, sysdir: Path = sysdir) -> bool:
            zvolpool._remove_zram(d)
            return not sysdir.exists()

        majmin = blockdev.device_majmin(dev)
        try:
            wait_for(removed, bool, timeout=timeout, interval=0.2, what=f"ramdisk {dev} to be removed")
        except WaitTimeout as exc:
            raise TestbedError(f"cannot remove the ramdisk {dev} (busy: {blockdev.describe_holders(majmin)})") from exc
