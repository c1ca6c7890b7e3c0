"""rsync's own progress, read from its ``--info=progress2`` lines as rsync prints them (:func:`stream_rsync`).

rsync rewrites one status line with ``\\r``; read through a text pipe (universal newlines) each rewrite
is a line of its own, e.g.::

         20,000,000   6%   45.12MB/s    0:00:00 (xfr#1, to-chk=4/20)
         43,997,696  14%   40.05MB/s    0:00:06

The first figure is the bytes transferred so far in this run (grouped with ``,`` or, in some locales,
``.``), then rsync's percent, its rate (``kB/s``, ``MB/s``, ``GB/s``: powers of 1024, as rsync's
progress.c divides by 1024) and its ETA (``H:MM:SS``). After a file completes rsync adds how many files
it transferred and how many are left to check (``xfer#``/``to-check=`` before rsync 3.1).

rsync's percent and ETA are measured against the sum of every *name*'s size: a file hard-linked from
three directories counts three times although ``-H`` transfers it once. On agave's accounts (every
snapshot directory hard-links the storage files) rsync's percent stops far below 100 and its ETA
overstates, so :mod:`runbook.adapters.accounts_copy` keeps rsync's bytes and rate and computes the
percent and ETA against the source's size counted with hard links once.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from runbook.adapters.base import Host

_LINE = re.compile(
    r"^\s*(?P<bytes>\d[\d.,]*)(?P<bsuffix>[KMGT]?)\s+(?P<pct>\d+)%\s+"
    r"(?P<rate>\d[\d.,]*)(?P<unit>[kKMGT]?B)/s\s+(?P<eta>\d+:\d\d:\d\d|\?+:\?+:\?+)"
    r"(?:\s+\(xfe?r#(?P<xfr>\d+),\s*(?:ir|to)-ch(?:ec)?k=(?P<left>\d+)/(?P<files>\d+)\))?\s*$"
)
_RATE_UNITS = {"B": 1, "kB": 1024, "KB": 1024, "MB": 2**20, "GB": 2**30, "TB": 2**40}
_SIZE_SUFFIX = {"K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}  # --human-readable=2 counts in 1000s


@dataclass(frozen=True)
class RsyncProgress:
    """One progress2 line, as numbers."""

    bytes: int  # transferred so far in this run
    percent: int  # rsync's own (every hard-linked name counted)
    rate: float  # bytes per second, rsync's figure
    eta: float | None  # seconds, rsync's figure; None when rsync prints ??:??:??
    transferred_files: int | None = None  # xfr#N, on lines printed after a file completes
    to_check: int | None = None  # files rsync still has to look at
    files: int | None = None  # files in rsync's list (every name, directories included)


def _integer(text: str) -> int:
    return int(re.sub(r"[.,]", "", text))


def _decimal(text: str) -> float:
    if "," in text and "." in text:  # grouped and decimal: the last separator is the decimal one
        grouping = "," if text.rfind(".") > text.rfind(",") else "."
        text = text.replace(grouping, "")
    return float(text.replace(",", "."))


def parse_progress2(line: str) -> RsyncProgress | None:
    """The figures on one ``--info=progress2`` line, or None for anything else (blank lines, messages)."""
    m = _LINE.match(line)
    if m is None:
        return None
    raw = m["bytes"]
    # a suffix comes with --human-readable=2 or more (e.g. from a popt alias): 1.23G
    done = int(_decimal(raw) * _SIZE_SUFFIX[m["bsuffix"]]) if m["bsuffix"] else _integer(raw)
    eta: float | None = None
    if "?" not in m["eta"]:
        h, mm, ss = (int(x) for x in m["eta"].split(":"))
        eta = float(h * 3600 + mm * 60 + ss)
    return RsyncProgress(
        bytes=done,
        percent=int(m["pct"]),
        rate=_decimal(m["rate"]) * _RATE_UNITS[m["unit"]],
        eta=eta,
        transferred_files=int(m["xfr"]) if m["xfr"] else None,
        to_check=int(m["left"]) if m["left"] else None,
        files=int(m["files"]) if m["files"] else None,
    )


def last_progress(output: str) -> RsyncProgress | None:
    """The last progress2 figures in a whole captured output (``\\r`` and ``\\n`` both end a line)."""
    found = None
    for line in re.split(r"[\r\n]", output):
        p = parse_progress2(line)
        if p is not None:
            found = p
    return found


def stream_rsync(host: Host, command: str, seen: Callable[[RsyncProgress], None], *,
                 timeout: float, root: bool = False) -> tuple[int, list[str]]:
    """Run an rsync ``command`` on ``host``, calling ``seen`` for each progress line as rsync prints it;
    return (exit code, its last 10 stderr lines). A host with ``spawn`` (TestinfraHost: local, ssh,
    docker) streams; any other host port runs the command to its end and reports its last figures once.
    ``root``: asked as root (the host port's ``sudo -n`` on a ``?sudo=true`` host).
    After ``timeout`` seconds the local end (the process group spawn started: rsync, or ssh) is killed."""
    spawn = getattr(host, "spawn", None)
    if spawn is None:
        r = host.run(command, check=False, timeout=timeout, root=root)
        p = last_progress(r.stdout)
        if p is not None:
            seen(p)
        return r.rc, r.stderr.strip().splitlines()[-10:]
    proc: subprocess.Popen[str] = spawn(command, root=root)
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    proc.stdin.close()  # rsync reads nothing; a closed stdin never holds the ssh session open
    tail: collections.deque[str] = collections.deque(maxlen=10)
    errs = proc.stderr

    def drain() -> None:
        for line in errs:
            if line.strip():
                tail.append(line.rstrip())

    reader = threading.Thread(target=drain, name="rsync-stderr", daemon=True)
    reader.start()
    killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.daemon = True
    killer.start()
    try:
        for line in proc.stdout:  # text mode: rsync's \r rewrites arrive as lines
            p = parse_progress2(line)
            if p is not None:
                seen(p)
        rc = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group (spawn starts a new session)
        proc.wait()
        raise
    finally:
        killer.cancel()
        reader.join(timeout=10)
    return rc, list(tail)
