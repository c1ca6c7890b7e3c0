"""The accounts copy for the idle colour: real ``rsync`` on the host, measured before, verified after.

On biscayne the accounts live on a ramdisk (460 GB), outside the snapshotted dataset, so the idle colour
gets a copy. Agave hard-links every storage file from each ``accounts/snapshot/<slot>/`` directory, so
the copy keeps hard links (``-H``: without it every link becomes a full copy and the copy multiplies),
deletes what the source no longer has (``--delete``: a second run converges on the source) and keeps
numeric owners. Every command goes through the host port (``local://`` or ``ssh://``) and, except the
read of ``/proc/meminfo``, is asked as root (``root=True``: ``sudo -n --`` on a host whose URL says
``?sudo=true``, see :mod:`runbook.adapters.host`): the accounts live under root-owned directories.

- :meth:`AccountsCopy.preflight` measures the source (``du -sb``, which counts a hard-linked file once,
  and a ``find`` that counts names, distinct inodes, data bytes, directories and symlinks) and the
  destination's filesystem (``df -B1 --output=avail,fstype,source``); when the destination is RAM-backed
  (tmpfs, ramfs, a zram or brd device) also ``MemAvailable`` from the host's ``/proc/meminfo``. It
  refuses, with both figures, when either is short of what the copy needs (see :func:`needed_bytes`).
- :meth:`AccountsCopy.copy` runs ``rsync -aH --delete --numeric-ids --info=progress2 --no-inc-recursive``
  and streams rsync's own progress lines to a callback (at most every ``interval`` seconds, and once at
  the end with 100%), returning the final bytes, seconds and rate.
- :meth:`AccountsCopy.verify` compares the copy with the source: data bytes counting each inode once,
  regular-file names, distinct inodes, directories, symlinks. A copy made without ``-H`` has as many
  inodes as names and more data bytes, and fails. ``du -sb`` of both is reported but not compared: a
  directory's own size depends on the filesystem and its history (tmpfs and XFS differ), file data does not.
- :meth:`AccountsCopy.is_done` observes (copy present and verified), so a resumed run trusts no flag.
- :meth:`AccountsCopy.remove` empties the copy for a rollback: only the destination it was given, never
  ``/``, a top-level directory, the source, or a path with a symlink in it.

A copy taken from a running validator is not a point-in-time image: files appear and vanish while rsync
walks (rsync exits 24 for vanished files; ``accept_vanished`` accepts that) and the source measured after
the copy may already differ from it, so :meth:`verify` is exact only against a quiet source.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from runbook.adapters.base import CommandResult, Host
from runbook.adapters.host import as_root
from runbook.adapters.rsync_progress import RsyncProgress, stream_rsync
from runbook.errors import AdapterError, CheckFailed, PreconditionFailed

RSYNC_OPTIONS = "-aH --delete --numeric-ids --info=progress2 --no-inc-recursive"
BLOCK = 4096  # a file's last partial page or block: at most this much more than its data on the destination
MARGIN_FRACTION = 0.05  # of the bytes to copy: directories, rsync's temporary file, the validator's growth
MARGIN_MIN = 1 << 30
RAM_FSTYPES = ("tmpfs", "ramfs")
RAM_DEVICES = re.compile(r"^/dev/(zram|ram)\d+$")
RSYNC_EXITS = {1: "syntax or usage error", 2: "protocol incompatibility", 3: "errors selecting files",
               10: "error in socket I/O", 11: "error in file I/O (disk or ramdisk full?)",
               12: "error in the rsync protocol data stream", 20: "killed by a signal",
               23: "partial transfer due to an error", 24: "source files vanished during the transfer",
               30: "timeout in data send/receive", 124: "the copy's deadline passed (timeout)",
               127: "rsync is not installed on the host"}


class CopyRefused(PreconditionFailed):
    """Preflight or removal refused: nothing was changed."""


class CopyFailed(AdapterError):
    """rsync exited non-zero; carries its exit code and the last lines it wrote to stderr."""

    def __init__(self, message: str, *, rc: int, stderr_tail: list[str], command: str) -> None:
        self.rc, self.stderr_tail, self.command = rc, stderr_tail, command
        super().__init__(message, obj=command)


@dataclass(frozen=True)
class TreeFigures:
    path: str
    du_bytes: int  # du -sb: apparent size, a hard-linked file once, directories' own sizes included
    data_bytes: int  # regular files' sizes, each inode once
    files: int  # regular-file names
    inodes: int  # distinct regular-file inodes (fewer than files when hard links exist)
    dirs: int
    symlinks: int

    @property
    def entries(self) -> int:
        """What the tree holds below its top directory (find counts the directory itself)."""
        return self.files + self.symlinks + self.dirs - 1

    def differences(self, copy: TreeFigures) -> dict[str, tuple[int, int]]:
        keys = ("data_bytes", "files", "inodes", "dirs", "symlinks")
        return {k: (getattr(self, k), getattr(copy, k)) for k in keys if getattr(self, k) != getattr(copy, k)}


@dataclass(frozen=True)
class DestFigures:
    path: str  # the destination, or its nearest existing ancestor df measured
    avail: int  # df's available bytes (0 on ramfs, which has no limit)
    fstype: str
    source: str  # the filesystem's device
    ram_backed: bool
    mem_available: int | None  # the host's MemAvailable in bytes, read when ram_backed
    existing_bytes: int  # data already at the destination (a previous, partial copy)


@dataclass(frozen=True)
class Preflight:
    source: TreeFigures
    dest: DestFigures
    needed: int  # bytes the destination must still take, margin included
    margin: int
    short: tuple[str, ...]  # why it is refused; empty when it may go ahead

    @property
    def ok(self) -> bool:
        return not self.short

    def figures(self) -> dict[str, object]:
        return {"source": asdict(self.source), "dest": asdict(self.dest), "needed": self.needed,
                "margin": self.margin, "short": list(self.short)}


@dataclass(frozen=True)
class CopyProgress:
    bytes: int  # rsync's bytes transferred so far
    total: int | None  # the source's data bytes (hard links once), when measured
    percent: float  # of total (rsync's own when total is unknown); 100 on the final call
    rate: float  # bytes per second, rsync's
    eta: float | None  # seconds, against total (rsync's own when total is unknown)
    elapsed: float
    rsync_percent: int  # rsync's, which counts every hard-linked name
    final: bool = False

    def __str__(self) -> str:
        left = int(self.eta or 0)
        eta = "?" if self.eta is None else f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"
        of = f" of {self.total / 2**30:.2f}" if self.total is not None else ""
        return (f"{self.bytes / 2**30:.2f}{of} GiB ({self.percent:.1f}%), {self.rate / 2**20:.1f} MiB/s, "
                f"ETA {eta}")


@dataclass(frozen=True)
class CopyResult:
    bytes: int  # transferred in this run (0 when the copy already matched)
    seconds: float
    rate: float  # bytes per second over the whole run
    vanished: bool = False  # rsync exited 24 and accept_vanished allowed it


@dataclass(frozen=True)
class Verification:
    source: TreeFigures
    copy: TreeFigures | None  # None: the copy does not exist
    differences: dict[str, tuple[int, int]]

    @property
    def ok(self) -> bool:
        return self.copy is not None and not self.differences


def needed_bytes(source: TreeFigures, existing: int, *, margin_fraction: float = MARGIN_FRACTION,
                 margin_min: int = MARGIN_MIN, block: int = BLOCK) -> tuple[int, int]:
    """(bytes the destination must still take, the margin in it): the source's data counting hard links
    once, plus one ``block`` per inode (a file's last page on tmpfs or block on disk), less what a previous
    copy already holds, plus ``max(margin_fraction of that, margin_min)``."""
    base = max(0, source.data_bytes + source.inodes * block - existing)
    margin = max(int(base * margin_fraction), margin_min)
    return base + margin, margin


_COUNT = ("awk '$1==\"f\"{n++; if(!($2 in s)){s[$2]=1; u++; b+=$3}} $1==\"d\"{d++} $1==\"l\"{l++} "
          "END{printf \"%.0f %.0f %.0f %.0f %.0f\\n\", n, u, b, d, l}'")


def _norm(path: str) -> str:
    return posixpath.normpath(path) if path else path


class AccountsCopy:
    """Copy ``src`` to ``dst`` on ``host``; see the module docstring. ``interval``: seconds between progress
    callbacks; ``timeout``: the copy's deadline (rsync runs under ``timeout`` on the host, and the local
    end is killed too)."""

    def __init__(self, host: Host, src: str, dst: str, *, interval: float = 2.0,
                 timeout: float = 86400.0, measure_timeout: float = 3600.0, accept_vanished: bool = False,
                 margin_fraction: float = MARGIN_FRACTION, margin_min: int = MARGIN_MIN,
                 block: int = BLOCK) -> None:
        self.host, self.src, self.dst = host, _norm(src), _norm(dst)
        self.interval, self.timeout, self.measure_timeout = interval, timeout, measure_timeout
        self.accept_vanished = accept_vanished
        self.margin_fraction, self.margin_min, self.block = margin_fraction, margin_min, block
        self.last_preflight: Preflight | None = None

    def __repr__(self) -> str:
        return f"AccountsCopy({self.host.url}: {self.src} -> {self.dst})"

    # ------------------------------------------------------------------ commands (also the plan)
    def cmd_measure(self, path: str) -> str:
        """``du -sb`` (a hard-linked file once), then names, distinct inodes, data bytes, dirs, symlinks
        counted by awk from find's type, device:inode and size (awk needs no root)."""
        p = shlex.quote(path.rstrip("/") + "/")
        return f"du -sb -- {p} && find {p} -printf '%y %D:%i %s\\n' | {_COUNT}"

    def cmd_existing(self) -> str:
        return f"du -sb -- {shlex.quote(self.dst + '/')}"

    def cmd_df(self) -> str:
        return (f"d={shlex.quote(self.dst)}; while [ ! -e \"$d\" ]; do d=$(dirname \"$d\"); done; "
                "echo \"$d\"; df -B1 --output=avail,fstype,source \"$d\"")

    @staticmethod
    def cmd_meminfo() -> str:
        return "grep MemAvailable /proc/meminfo"

    def cmd_mkdir(self) -> str:
        return f"mkdir -p -- {shlex.quote(self.dst)}"

    def cmd_rsync(self) -> str:
        s, d = shlex.quote(self.src + "/"), shlex.quote(self.dst + "/")
        return f"timeout {int(max(1, self.timeout))} rsync {RSYNC_OPTIONS} {s} {d}"

    def cmd_resolve(self) -> str:
        return f"readlink -f -- {shlex.quote(self.dst)}"

    def cmd_remove(self) -> str:
        d = shlex.quote(self.dst)
        return f"find {d} -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {{}} +"

    def plan_lines(self, op: str = "copy", *, sudo: bool | None = None) -> list[str]:
        """The commands ``op`` runs on the host (preflight, copy, verify, remove, or all: the first three),
        those asked as root as the host port runs them: ``sudo -n -- sh -c '...'`` when ``sudo`` (default:
        the host's ``?sudo=true``), bare otherwise (for a renderer that adds sudo itself)."""
        use = bool(getattr(self.host, "sudo", False)) if sudo is None else sudo

        def root(c: str) -> str:
            return as_root(c, sudo=use)

        lines = {
            "preflight": [root(self.cmd_measure(self.src)), root(self.cmd_existing()), root(self.cmd_df()),
                          f"{self.cmd_meminfo()}  # when the destination is RAM-backed (tmpfs, ramfs, zram)"],
            "copy": [root(self.cmd_mkdir()), root(self.cmd_rsync())],
            "verify": [root(self.cmd_measure(self.src)), root(self.cmd_measure(self.dst))],
            "remove": [root(self.cmd_resolve()), root(self.cmd_remove())],
        }
        if op == "all":
            return [line for k in ("preflight", "copy", "verify") for line in lines[k]]
        return lines[op]

    # ------------------------------------------------------------------ measuring
    def _run(self, command: str, *, check: bool = True, timeout: float | None = None,
             root: bool = True) -> CommandResult:
        return self.host.run(command, check=check, timeout=timeout or self.measure_timeout, root=root)

    def measure(self, path: str) -> TreeFigures | None:
        """The tree's figures, or None when ``path`` is not a directory on the host. Files that vanish
        while du and find walk (a running validator's cleaning) are warnings, not failures; any other
        complaint (a permission denied) fails, as the counts would be short."""
        r = self._run(self.cmd_measure(path), check=False)
        lines = r.stdout.split("\n")
        try:
            du = int(lines[0].split()[0])
            files, inodes, data, dirs, links = (int(x) for x in lines[1].split())
        except (IndexError, ValueError):
            if "No such file" in r.stderr or "Not a directory" in r.stderr:
                return None
            raise AdapterError(f"measuring {path} on {self.host.url}: `{r.command}` exited {r.rc}: "
                               f"{r.stderr.strip()[-500:]}", obj=path) from None
        complaints = [x for x in r.stderr.splitlines() if x.strip() and "No such file or directory" not in x]
        if not r.ok and complaints:
            raise AdapterError(f"measuring {path} on {self.host.url}: `{r.command}` exited {r.rc}: "
                               + " | ".join(complaints[-5:]), obj=path)
        return TreeFigures(path, du, data, files, inodes, dirs, links)

    def _source(self) -> TreeFigures:
        figures = self.measure(self.src)
        if figures is None:
            raise CopyRefused(f"the accounts source {self.src} is not a directory on {self.host.url}", obj=self.src)
        return figures

    def _dest(self) -> DestFigures:
        r = self._run(self.cmd_existing(), check=False)
        existing = int(r.stdout.split()[0]) if r.ok and r.stdout.strip() else 0
        out = self._run(self.cmd_df()).stdout.strip().splitlines()
        where, (avail, fstype, device) = out[0], out[-1].split()[:3]
        ram = fstype in RAM_FSTYPES or bool(RAM_DEVICES.match(device))
        mem = None
        if ram:
            m = re.search(r"MemAvailable:\s+(\d+)\s*kB", self._run(self.cmd_meminfo(), root=False).stdout)
            if m is None:
                raise AdapterError(f"no MemAvailable in /proc/meminfo on {self.host.url}")
            mem = int(m.group(1)) * 1024
        return DestFigures(where, int(avail), fstype, device, ram, mem, existing)

    def preflight(self, *, check: bool = True) -> Preflight:
        """Measure the source and the destination; refuse (:class:`CopyRefused`) when the destination's
        filesystem or, on a RAM-backed destination, the host's available memory is short."""
        self._check_paths()
        source, dest = self._source(), self._dest()
        need, margin = needed_bytes(source, dest.existing_bytes, margin_fraction=self.margin_fraction,
                                    margin_min=self.margin_min, block=self.block)
        short = []
        gib = 2**30
        if dest.fstype != "ramfs" and dest.avail < need:  # ramfs has no limit: df says 0
            short.append(f"{dest.path} ({dest.fstype} on {dest.source}) has {dest.avail} bytes "
                         f"({dest.avail / gib:.2f} GiB) free; the copy needs {need} ({need / gib:.2f} GiB: "
                         f"{source.data_bytes} of data in {source.inodes} files, {dest.existing_bytes} already "
                         f"there, {margin} margin)")
        if dest.mem_available is not None and dest.mem_available < need:
            short.append(f"{dest.path} is RAM-backed ({dest.fstype} on {dest.source}) and {self.host.url} has "
                         f"MemAvailable {dest.mem_available} bytes ({dest.mem_available / gib:.2f} GiB); the copy "
                         f"needs {need} ({need / gib:.2f} GiB)")
        pf = Preflight(source, dest, need, margin, tuple(short))
        self.last_preflight = pf
        if check and short:
            raise CopyRefused(f"accounts copy {self.src} -> {self.dst} refused: " + "; ".join(short), obj=self.dst)
        return pf

    # ------------------------------------------------------------------ copying
    def copy(self, progress: Callable[[CopyProgress], None] | None = None, *, total: int | None = None) -> CopyResult:
        """Run rsync; ``progress`` gets :class:`CopyProgress` at most every ``interval`` seconds and at the
        end. ``total`` (default: the last preflight's source data bytes) is what percent and ETA count to."""
        self._check_paths()
        if total is None and self.last_preflight is not None:
            total = self.last_preflight.source.data_bytes
        self._run(self.cmd_mkdir())
        start = time.monotonic()
        last: list[RsyncProgress | None] = [None]
        emitted = [float("-inf")]

        def emit(p: RsyncProgress | None, final: bool = False) -> None:
            now = time.monotonic()
            if progress is None or (not final and now - emitted[0] < self.interval):
                return
            emitted[0] = now
            eta: float | None
            done = p.bytes if p else 0
            rate = p.rate if p else 0.0
            if final:
                pct, eta = 100.0, 0.0
            elif total:
                pct = min(99.9, 100.0 * done / total)
                eta = (total - done) / rate if rate > 0 and total > done else (p.eta if p else None)
            else:
                pct, eta = float(p.percent if p else 0), p.eta if p else None
            progress(CopyProgress(done, total, pct, rate, eta, now - start, p.percent if p else 0, final))

        def seen(p: RsyncProgress) -> None:
            last[0] = p
            emit(p)

        rc, tail = stream_rsync(self.host, self.cmd_rsync(), seen, timeout=self.timeout + 60, root=True)
        took = time.monotonic() - start
        vanished = rc == 24 and self.accept_vanished
        if rc != 0 and not vanished:
            why = RSYNC_EXITS.get(rc, "see rsync(1) EXIT VALUES")
            raise CopyFailed(f"accounts copy {self.src} -> {self.dst} on {self.host.url}: rsync exited {rc} "
                             f"({why}): " + (" | ".join(tail) or "nothing on stderr"),
                             rc=rc, stderr_tail=tail, command=self.cmd_rsync())
        emit(last[0], final=True)
        done = last[0].bytes if last[0] else 0
        return CopyResult(done, took, done / max(took, 1e-6), vanished)

    # ------------------------------------------------------------------ verifying, observing, removing
    def verify(self, *, check: bool = False) -> Verification:
        """Compare the copy with the source now; ``check=True`` raises :class:`CheckFailed` on a difference."""
        source, copy = self._source(), self.measure(self.dst)
        diff = source.differences(copy) if copy is not None else {}
        v = Verification(source, copy, diff)
        if check and not v.ok:
            what = "does not exist" if copy is None else ", ".join(
                f"{k} {a} in the source, {b} in the copy" for k, (a, b) in diff.items())
            hint = " (a copy without hard links has one inode per name)" if "inodes" in diff else ""
            raise CheckFailed(f"the accounts copy {self.dst} does not match {self.src}: {what}{hint}",
                              expected=asdict(source), observed=asdict(copy) if copy else None, obj=self.dst)
        return v

    def is_done(self) -> bool:
        """The copy exists and matches the source (observed, not remembered)."""
        return self.verify().ok

    def _check_paths(self) -> None:
        for name, p in (("source", self.src), ("destination", self.dst)):
            if not p.startswith("/") or p != _norm(p):
                raise CopyRefused(f"the accounts {name} {p!r} is not an absolute, normalised path", obj=p)
        if len([c for c in self.dst.split("/") if c]) < 2:
            raise CopyRefused(f"refusing {self.dst!r} as the accounts copy: / or a top-level directory", obj=self.dst)
        inside = (self.src == self.dst or self.src.startswith(self.dst + "/") or self.dst.startswith(self.src + "/"))
        if inside:
            raise CopyRefused(f"the accounts copy {self.dst} overlaps its source {self.src}", obj=self.dst)

    def remove(self, path: str | None = None) -> None:
        """Empty the copy (its directory stays, it may be a mount point). ``path``, when given, must be the
        destination this copy was made for; a destination reached through a symlink is refused."""
        if path is not None and _norm(path) != self.dst:
            raise CopyRefused(f"refusing to remove {path!r}: this accounts copy is {self.dst}", obj=path)
        self._check_paths()
        r = self._run(self.cmd_resolve(), check=False)
        real = r.stdout.strip()
        if not r.ok or not real:  # readlink -f fails when a parent is missing: there is nothing to remove
            return
        if real != self.dst:
            raise CopyRefused(f"refusing to remove {self.dst}: it resolves to {real} (a symlink on the way)",
                              obj=self.dst)
        r = self._run(self.cmd_remove(), check=False, timeout=self.measure_timeout)
        if not r.ok and "No such file" not in r.stderr:
            raise AdapterError(f"removing the accounts copy {self.dst} on {self.host.url}: `{r.command}` exited "
                               f"{r.rc}: {r.stderr.strip()[-500:]}", obj=self.dst)
