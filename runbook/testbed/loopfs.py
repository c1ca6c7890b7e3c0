"""A btrfs filesystem in a sparse image file, mounted through a loop device (the testbed's "ZFS pool").

``up`` creates the image (sparse: it costs only what is written), formats it and mounts it; ``down``
unmounts, detaches every loop device still backed by the image and removes the image. Both are
idempotent, and ``down`` reads what to undo from the kernel (``/proc/self/mountinfo`` and
``/sys/block/loop*/loop/backing_file``), so it also works after a crash left the image mounted.
:func:`leftovers` lists any mount or loop device still pointing into a directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import CommandFailed, TestbedError, WaitTimeout
from runbook.wait import wait_for

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
BTRFS_MAGIC_OFFSET = 0x10040
BTRFS_MAGIC = b"_BHRfS_M"
MIN_SIZE = 120 * 1024**2  # mkfs.btrfs refuses much smaller images with default settings


@dataclass(frozen=True)
class LoopMount:
    image: Path
    mountpoint: Path
    device: str
    size: int


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str


def run_local(argv: list[str], *, timeout: float = 60.0) -> str:
    """Run a command here; a non-zero exit (or no such program) is :class:`CommandFailed`."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandFailed("loopfs", command=shlex.join(argv), rc=-1, stderr=str(exc)) from exc
    if p.returncode != 0:
        raise CommandFailed("loopfs", command=shlex.join(argv), rc=p.returncode, stderr=p.stderr)
    return p.stdout


def parse_size(size: str | int) -> int:
    """``"1G"``, ``"256M"``, ``"300MiB"`` or a number of bytes -> bytes."""
    if isinstance(size, int):
        return size
    m = _SIZE.match(size)
    if not m:
        raise TestbedError(f"not a size: {size!r} (use e.g. 256M, 1G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def mounts() -> list[Mount]:
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            out.append(Mount(_unescape(rparts[1]), _unescape(parts[4]), rparts[0]))
    return out


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def loop_devices() -> dict[str, str]:
    """Attached loop devices -> backing file (as the kernel reports it, `` (deleted)`` stripped)."""
    out = {}
    for sysdir in Path("/sys/block").glob("loop*"):
        try:
            backing = (sysdir / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue  # not attached
        out[f"/dev/{sysdir.name}"] = backing.removesuffix(" (deleted)")
    return out


def _is_btrfs_image(image: Path) -> bool:
    try:
        with open(image, "rb") as f:
            f.seek(BTRFS_MAGIC_OFFSET)
            return f.read(len(BTRFS_MAGIC)) == BTRFS_MAGIC
    except OSError:
        return False


def _devices_for(image: Path) -> list[str]:
    real = str(image.resolve())
    return sorted(dev for dev, backing in loop_devices().items() if backing in (real, str(image)))


def _mounted_at(mountpoint: Path) -> Mount | None:
    target = str(mountpoint.resolve())
    found = [m for m in mounts() if m.target == target]
    return found[-1] if found else None


def up(*, image: Path, mountpoint: Path, size: str | int = "256M", label: str = "runbook") -> LoopMount:
    """Make sure a btrfs image of ``size`` is mounted at ``mountpoint``; return what is mounted."""
    image, mountpoint = Path(image).absolute(), Path(mountpoint).absolute()
    nbytes = parse_size(size)
    if nbytes < MIN_SIZE:
        raise TestbedError(f"loop image {image}: {size} is too small for btrfs (at least 120M)")
    mountpoint.mkdir(parents=True, exist_ok=True)
    current = _mounted_at(mountpoint)
    if current is not None:
        if current.source in _devices_for(image):
            return LoopMount(image, mountpoint, current.source, image.stat().st_size)  # converge
        raise TestbedError(f"{mountpoint} already has {current.source} ({current.fstype}) mounted on it, "
                           f"not the loop image {image}")
    image.parent.mkdir(parents=True, exist_ok=True)
    devices = _devices_for(image)
    elsewhere = sorted({m.target for m in mounts() if m.source in devices})
    if elsewhere:  # a second loop device on the same btrfs image would corrupt it
        raise TestbedError(f"{image} is already mounted at {', '.join(elsewhere)}; bring that down first")
    for dev in devices:  # attached by a crashed run but not mounted: reuse nothing stale
        run_local(["losetup", "-d", dev], timeout=30)
    if not image.exists() or not _is_btrfs_image(image):
        with open(image, "wb") as f:
            f.truncate(nbytes)  # sparse
        try:
            run_local(["mkfs.btrfs", "-q", "-f", "-L", label, str(image)], timeout=120)
        except CommandFailed as exc:
            image.unlink(missing_ok=True)
            raise TestbedError(f"mkfs.btrfs {image} failed: {exc.stderr.strip()}") from exc
    try:
        run_local(["mount", "-t", "btrfs", "-o", "loop", str(image), str(mountpoint)], timeout=60)
    except CommandFailed as exc:
        _detach(image)
        raise TestbedError(f"mounting {image} at {mountpoint} failed: {exc.stderr.strip()}") from exc
    m = _mounted_at(mountpoint)
    if m is None or m.fstype != "btrfs":
        raise TestbedError(f"{image} did not appear mounted at {mountpoint}")
    return LoopMount(image, mountpoint, m.source, image.stat().st_size)


def _detach(image: Path, *, timeout: float = 10.0) -> None:
    def attached() -> list[str]:
        devs = _devices_for(image)
        for dev in devs:
            with contextlib.suppress(CommandFailed):  # autoclear may be racing us; look again
                run_local(["losetup", "-d", dev], timeout=30)
        return _devices_for(image)

    wait_for(attached, lambda devs: not devs, timeout=timeout, interval=0.1,
             what=f"loop devices of {image} to detach")


def down(*, image: Path, mountpoint: Path, remove_image: bool = True, timeout: float = 10.0) -> None:
    """Unmount ``mountpoint`` (if the image is mounted there), detach the loop device(s), remove the image.

    Safe to call twice and after a crash. A mountpoint still busy (a process has files open in it) is
    a :class:`TestbedError` naming it, after retrying for ``timeout`` seconds.
    """
    image, mountpoint = Path(image).absolute(), Path(mountpoint).absolute()
    devices = set(_devices_for(image))
    targets = [m.target for m in mounts() if m.source in devices or (
        m.target == str(mountpoint.resolve()) and m.source.startswith("/dev/loop") and not devices)]
    for target in reversed(targets):  # the newest (innermost) mount first

        def unmount(t: str = target) -> bool:
            if not any(m.target == t for m in mounts()):
                return True
            try:
                run_local(["umount", t], timeout=60)
            except CommandFailed as exc:
                if "not mounted" not in exc.stderr:
                    return False
            return True

        try:
            wait_for(unmount, bool, timeout=timeout, interval=0.2, what=f"{target} to unmount")
        except WaitTimeout as exc:
            raise TestbedError(f"cannot unmount {target} (busy? see `fuser -vm {target}`): {exc}") from exc
    _detach(image, timeout=timeout)
    if remove_image:
        image.unlink(missing_ok=True)
    if mountpoint.is_dir() and not _mounted_at(mountpoint):
        with contextlib.suppress(OSError):  # not empty: a plain directory with contents; leave it
            mountpoint.rmdir()


def leftovers(state_dir: Path) -> list[str]:
    """Mounts and loop devices still pointing into ``state_dir`` (empty when nothing is left behind)."""
    root = str(Path(state_dir).resolve())

    def inside(path: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")

    loops = loop_devices()
    out = []
    for m in mounts():
        if inside(m.target) or (m.source in loops and inside(loops[m.source])):
            out.append(f"mount: {m.source} on {m.target} ({m.fstype})")
    for dev, backing in sorted(loops.items()):
        if inside(backing) or inside(os.path.realpath(backing)):
            out.append(f"loop device: {dev} backed by {backing}")
    return out
