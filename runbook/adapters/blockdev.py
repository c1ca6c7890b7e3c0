"""Kernel facts the zvol model reads: the mount table, loop devices and a file's extents (FIEMAP).

All read from the kernel of this machine (``/proc/self/mountinfo``, ``/sys/block/loop*``, the FS_IOC_FIEMAP
ioctl, the same call ``xfs_io -c fiemap`` and ``filefrag -v`` make), never from a record of our own, so
they are right after a crash too.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import re
import struct
import subprocess
from dataclasses import dataclass

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1  # flush the file's dirty pages first
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNWRITTEN = 0x800  # allocated, never written: reads as zeros (XFS does not share these)
FIEMAP_EXTENT_SHARED = 0x2000
_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, reserved64[2], flags, reserved[3]
_BATCH = 512


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    flags: int

    @property
    def shared(self) -> bool:
        return bool(self.flags & FIEMAP_EXTENT_SHARED)


@dataclass(frozen=True)
class MountEntry:
    source: str
    target: str
    fstype: str
    fsroot: str  # the path inside the source filesystem that is mounted (a bind mount's directory)
    device: str  # major:minor of the mounted filesystem


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[MountEntry]:
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            out.append(MountEntry(_unescape(rparts[1]), _unescape(parts[4]), rparts[0], _unescape(parts[3]), parts[2]))
    return out


def loop_devices() -> dict[str, tuple[str, str]]:
    """Attached loop devices -> (backing file as attached, ``major:minor`` of the device holding that file),
    from ``losetup --list --json`` (the kernel's LOOP_GET_STATUS64)."""
    try:
        p = subprocess.run(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE,BACK-MAJ:MIN"], capture_output=True,
                           text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if p.returncode != 0 or not p.stdout.strip():
        return {}
    rows = json.loads(p.stdout).get("loopdevices", [])
    return {r["name"]: ((r.get("back-file") or "").removesuffix(" (deleted)").strip(),
                        (r.get("back-maj:min") or "").strip()) for r in rows}


def loops_of(image: str) -> list[str]:
    """Loop devices attached to ``image`` (what ``losetup -j <image>`` lists)."""
    real = os.path.realpath(image)
    return sorted(dev for dev, (backing, _) in loop_devices().items() if backing in (real, image))


def mounts_of_devices(devices: list[str]) -> list[str]:
    return [m.target for m in mounts() if m.source in devices]


def extents(path: str, *, sync: bool = True) -> list[Extent]:
    """Every extent of the file at ``path`` (FS_IOC_FIEMAP, with FIEMAP_FLAG_SYNC by default)."""
    out: list[Extent] = []
    start = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            buf = bytearray(_HEADER.size + _EXTENT.size * _BATCH)
            _HEADER.pack_into(buf, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC if sync else 0, 0, _BATCH, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = _HEADER.unpack_from(buf, 0)[3]
            if mapped == 0:
                return out
            for i in range(mapped):
                lo, ph, ln, _, _, fl, _, _, _ = _EXTENT.unpack_from(buf, _HEADER.size + i * _EXTENT.size)
                out.append(Extent(lo, ph, ln, fl))
            last = out[-1]
            if last.flags & FIEMAP_EXTENT_LAST:
                return out
            start = last.logical + last.length
    finally:
        os.close(fd)


def bytes_not_in(path: str, other: str) -> int:
    """Bytes of ``path``'s data whose physical blocks are not blocks of ``other``: after a reflink copy
    ``other`` of ``path``, the bytes ``path`` has been written with since (ZFS's ``written@<snap>``).
    Unwritten (preallocated) extents hold no data, read as zeros, and are not shared by a reflink copy
    (the copy has a hole there, which reads as zeros too): they do not count."""
    theirs = sorted((e.physical, e.physical + e.length) for e in extents(other))
    merged: list[list[int]] = []
    for a, b in theirs:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = [m[0] for m in merged]
    total = 0
    for e in extents(path):
        if e.flags & FIEMAP_EXTENT_UNWRITTEN:
            continue
        a, b = e.physical, e.physical + e.length
        i, covered = max(0, bisect.bisect_right(starts, a) - 1), 0
        while i < len(merged) and merged[i][0] < b:
            covered += max(0, min(b, merged[i][1]) - max(a, merged[i][0]))
            i += 1
        total += e.length - covered
    return total


def holders(majmin: str) -> dict[str, list[int]]:
    """Mount namespaces (by ``/proc/<pid>/ns/mnt`` link) holding a mount of the filesystem on device
    ``majmin`` (``7:3``), each with the pids in it: who keeps a volume busy after our own umount (a
    container started while it was mounted got a private copy of the mount table)."""
    out: dict[str, list[int]] = {}
    for proc in os.scandir("/proc"):
        if not proc.name.isdigit():
            continue
        try:
            with open(f"/proc/{proc.name}/mountinfo", encoding="utf-8") as f:
                held = any(line.split()[2] == majmin for line in f if line.strip())
            ns = os.readlink(f"/proc/{proc.name}/ns/mnt") if held else ""
        except OSError:
            continue  # gone, or not ours to read
        if held:
            out.setdefault(ns, []).append(int(proc.name))
    return out


def describe_holders(majmin: str) -> str:
    found = holders(majmin)
    if not found:
        return "no mount namespace holds it"
    return "; ".join(f"mount namespace {ns} (pids {', '.join(map(str, sorted(p)[:5]))})" for ns, p in found.items())


def device_majmin(device: str) -> str:
    st = os.stat(device)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def allocated_bytes(path: str) -> int:
    return os.stat(path).st_blocks * 512
