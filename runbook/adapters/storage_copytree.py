"""Copying a directory tree that is not on the snapshot filesystem (the accounts ramdisk).

:func:`copy_tree` copies locally with progress and rsync's quick check: a file whose destination
already has the same size and mtime is skipped, so a re-run after an interruption resumes instead of
starting over. Each file is written to a hidden temporary name and renamed into place, so a half-copied
file never looks complete. :func:`remote_copy_tree` does the same on a host through ``rsync``.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runbook.adapters.base import CommandResult, Progress
from runbook.errors import AdapterError

CHUNK = 8 * 1024 * 1024
_PARTIAL = ".rbpart"


@dataclass(frozen=True)
class _Entry:
    rel: str
    st: os.stat_result


def _scan(src: Path) -> tuple[list[_Entry], list[_Entry], list[_Entry]]:
    dirs: list[_Entry] = []
    files: list[_Entry] = []
    links: list[_Entry] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(src / rel if rel else src) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    dirs.append(_Entry(r, st))
                    stack.append(r)
                elif stat.S_ISREG(st.st_mode):
                    files.append(_Entry(r, st))
                elif stat.S_ISLNK(st.st_mode):
                    links.append(_Entry(r, st))
                # sockets, fifos and devices are not data: skipped
    dirs.sort(key=lambda d: d.rel)
    return dirs, files, links


def _same(dst: Path, st: os.stat_result) -> bool:
    try:
        d = dst.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(d.st_mode) and d.st_size == st.st_size and d.st_mtime_ns == st.st_mtime_ns


def _owner(path: Path, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.lchown(path, st.st_uid, st.st_gid)


def _copy_file(src: Path, dst: Path, st: os.stat_result, tick: Callable[[int], None]) -> None:
    tmp = dst.with_name(f".{dst.name}{_PARTIAL}")
    fin = os.open(src, os.O_RDONLY)
    try:
        fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _copy_fd(fin, fout, tick)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    _owner(tmp, st)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, dst)


def _copy_fd(fin: int, fout: int, tick: Callable[[int], None]) -> None:
    use_range = True
    while True:
        if use_range:
            try:
                n = os.copy_file_range(fin, fout, CHUNK)
            except OSError:  # EXDEV, EOPNOTSUPP, ENOSYS...: plain read/write from the same offset
                use_range = False
                continue
        else:
            buf = os.read(fin, CHUNK)
            n = len(buf)
            view = memoryview(buf)
            while view:
                view = view[os.write(fout, view):]
        if n == 0:
            return
        tick(n)


def copy_tree(src: str | Path, dst: str | Path, *, progress: Progress | None = None) -> int:
    """Copy the tree at ``src`` into ``dst`` (created if absent); return the bytes actually copied.

    ``progress(bytes_done, bytes_total)`` is called at the start, after every chunk and at the end;
    ``bytes_done`` counts skipped (already identical) files too, so it always ends at ``bytes_total``.
    Files present in ``dst`` but not in ``src`` are left alone (like rsync without --delete).
    """
    s, d = Path(src), Path(dst)
    if not s.is_dir():
        raise AdapterError(f"copy_tree: source {s} is not a directory", obj=str(s))
    dirs, files, links = _scan(s)
    total = sum(f.st.st_size for f in files)
    done = 0
    copied = 0

    def report() -> None:
        if progress is not None:
            progress(done, total)

    def tick(n: int) -> None:
        nonlocal done, copied
        done += n
        copied += n
        report()

    report()
    d.mkdir(parents=True, exist_ok=True)
    for e in dirs:
        (d / e.rel).mkdir(exist_ok=True)
    for e in files:
        target = d / e.rel
        if _same(target, e.st):
            done += e.st.st_size
            report()
            continue
        _copy_file(s / e.rel, target, e.st, tick)
    for e in links:
        target = d / e.rel
        want = os.readlink(s / e.rel)
        if target.is_symlink() and os.readlink(target) == want:
            continue
        if target.is_symlink() or target.is_file():
            target.unlink()
        os.symlink(want, target)
        _owner(target, e.st)
    for e in [*reversed(dirs), _Entry("", s.stat())]:  # deepest first: children change parents' mtime
        path = d / e.rel if e.rel else d
        _owner(path, e.st)
        os.chmod(path, stat.S_IMODE(e.st.st_mode))
        os.utime(path, ns=(e.st.st_atime_ns, e.st.st_mtime_ns))
    report()
    return copied


Shell = Callable[..., CommandResult]
_TRANSFERRED = re.compile(r"Total transferred file size:\s*([\d,.]+)")


def remote_copy_lines(src: str, dst: str, *, fallback_cp: bool = False) -> list[str]:
    """The exact command lines :func:`remote_copy_tree` runs (for ``plan``)."""
    s, dd = shlex.quote(src.rstrip("/") + "/"), shlex.quote(dst.rstrip("/") + "/")
    size = f"find {shlex.quote(src)} -type f -printf '%s\\n' | awk '{{s+=$1}} END {{print s+0}}'"
    rsync = f"mkdir -p {shlex.quote(dst)} && rsync -a --inplace --stats {s} {dd}"
    if fallback_cp:
        cp = f"cp -a {shlex.quote(src.rstrip('/') + '/.')} {shlex.quote(dst)}"
        rsync = f"mkdir -p {shlex.quote(dst)} && if command -v rsync >/dev/null; then " \
                f"rsync -a --inplace --stats {s} {dd}; else {cp}; fi"
    return [size, rsync]


def remote_copy_tree(shell: Shell, src: str, dst: str, *, progress: Progress | None = None,
                     timeout: float = 86400.0, fallback_cp: bool = False) -> int:
    """Copy on a host with rsync (quick check by size and mtime, resumes); return bytes transferred.

    Progress is reported at the start and the end only: the host port returns output when the
    command ends.
    """
    size_cmd, copy_cmd = remote_copy_lines(src, dst, fallback_cp=fallback_cp)
    total = int(shell(size_cmd).stdout.strip() or 0)
    if progress is not None:
        progress(0, total)
    out = shell(copy_cmd, timeout=timeout).stdout
    m = _TRANSFERRED.search(out)
    copied = int(re.sub(r"[,.]", "", m.group(1))) if m else total
    if progress is not None:
        progress(total, total)
    return copied
