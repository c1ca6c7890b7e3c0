"""Shared pieces of the storage backends: names, refusals, and where commands and files live.

A dataset is named like a ZFS dataset (``biscayne/DATA/volumes/solana``, ``volumes/solana``); a snapshot
is ``<dataset>@<snap>``. The directory backends run their commands and read their metadata through an
:class:`Fs`: :class:`LocalFs` (this machine, the testbed) or :class:`HostFs` (the host port, e.g. a kind
node), so one implementation serves both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from runbook.adapters.base import CommandResult, Host, Progress
from runbook.errors import AdapterError, CommandFailed, ConfigError, PreconditionFailed

PLAN_OPS = ("ensure_dataset", "snapshot", "clone", "destroy", "rollback", "promote", "copy_tree", "mount", "unmount",
            "free_space")

_DATASET = re.compile(r"^/?[A-Za-z0-9_.:+-]+(/[A-Za-z0-9_.:+-]+)*$")
_SNAP = re.compile(r"^[A-Za-z0-9_.:+-]+$")


class StorageRefused(PreconditionFailed):
    """A storage operation would destroy data or break a dependency; nothing was changed.

    ``blockers`` names what stands in the way (dependent clones, newer snapshots, child datasets).
    """

    def __init__(self, message: str, *, blockers: Sequence[str] = (), **ctx: Any) -> None:
        self.blockers = tuple(blockers)
        super().__init__(message, **ctx)


class NoSuchDataset(PreconditionFailed):
    """The dataset or snapshot an operation needs does not exist."""


def check_dataset(name: str) -> str:
    if "@" in name or not _DATASET.match(name) or any(p in (".", "..") for p in name.split("/")):
        raise ConfigError(f"not a dataset name: {name!r} (expected e.g. pool/volumes/solana)", obj=name)
    return name


def check_snap(snap: str) -> str:
    if not _SNAP.match(snap):
        raise ConfigError(f"not a snapshot name: {snap!r} (letters, digits, _ - . : + only)", obj=snap)
    return snap


def split_snapshot(name: str) -> tuple[str, str]:
    """``"pool/ds@snap"`` -> ``("pool/ds", "snap")``; anything else is a ConfigError."""
    ds, sep, snap = name.partition("@")
    if not sep:
        raise ConfigError(f"not a snapshot name: {name!r} (expected <dataset>@<snapshot>)", obj=name)
    return check_dataset(ds), check_snap(snap)


def is_snapshot(name: str) -> bool:
    return "@" in name


def plan_args(op: str, args: Sequence[str], count: int) -> None:
    if op not in PLAN_OPS:
        raise ConfigError(f"storage cannot plan {op!r}: known operations are {', '.join(PLAN_OPS)}")
    if len(args) != count:
        raise ConfigError(f"storage plan {op!r} takes {count} argument(s), got {len(args)}: {list(args)}")


def sh(argv: Sequence[str]) -> str:
    return shlex.join(argv)


class Fs(Protocol):
    """Where a directory backend's commands run and its metadata lives."""

    where: str

    def run(self, argv: Sequence[str], *, timeout: float = 3600.0) -> CommandResult: ...

    def read_text(self, path: str) -> str | None: ...

    def write_text(self, path: str, text: str) -> None: ...

    def existing_dirs(self, paths: Sequence[str]) -> set[str]: ...

    def exists(self, path: str) -> bool: ...

    def copy_tree(self, src: str, dst: str, *, progress: Progress | None = None) -> int: ...

    def lock(self, path: str) -> contextlib.AbstractContextManager[None]: ...


def run_local(argv: Sequence[str], *, timeout: float = 3600.0, what: str = "locally") -> CommandResult:
    """Run one command on this machine; a non-zero exit is :class:`CommandFailed`."""
    start = time.monotonic()
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandFailed(what, command=sh(argv), rc=-1, stderr=str(exc)) from exc
    result = CommandResult(sh(argv), p.returncode, p.stdout, p.stderr, time.monotonic() - start)
    if p.returncode != 0:
        raise CommandFailed(what, command=result.command, rc=p.returncode, stderr=p.stderr)
    return result


class LocalFs:
    """This machine's filesystem (the local testbed)."""

    where = "local"

    def run(self, argv: Sequence[str], *, timeout: float = 3600.0) -> CommandResult:
        return run_local(argv, timeout=timeout)

    def read_text(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_text(self, path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def existing_dirs(self, paths: Sequence[str]) -> set[str]:
        return {p for p in paths if os.path.isdir(p) and not os.path.islink(p)}

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def copy_tree(self, src: str, dst: str, *, progress: Progress | None = None) -> int:
        from runbook.adapters.storage_copytree import copy_tree

        return copy_tree(src, dst, progress=progress)

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class HostFs:
    """A filesystem reached through the host port (every access is a command on that host)."""

    def __init__(self, host: Host, *, timeout: float = 60.0, copy_timeout: float = 86400.0) -> None:
        self.host = host
        self.where = host.url
        self.timeout = timeout
        self.copy_timeout = copy_timeout

    def shell(self, command: str, *, timeout: float | None = None) -> CommandResult:
        r = self.host.run(command, check=False, timeout=timeout or self.timeout)
        if r.rc != 0:
            raise CommandFailed(f"on host {self.host.url}", command=command, rc=r.rc, stderr=r.stderr)
        return r

    def run(self, argv: Sequence[str], *, timeout: float = 3600.0) -> CommandResult:
        return self.shell(sh(argv), timeout=timeout)

    def read_text(self, path: str) -> str | None:
        q = shlex.quote(path)
        r = self.host.run(f"if [ -e {q} ]; then cat {q}; else exit 3; fi", check=False, timeout=self.timeout)
        if r.rc == 3:
            return None
        if r.rc != 0:
            raise CommandFailed(f"on host {self.host.url}", command=r.command, rc=r.rc, stderr=r.stderr)
        return r.stdout

    def write_text(self, path: str, text: str) -> None:
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        d, t, p = (shlex.quote(x) for x in (posixpath.dirname(path), tmp, path))
        self.shell(f"mkdir -p {d} && printf '%s' {shlex.quote(text)} > {t} && mv -f {t} {p}")

    def existing_dirs(self, paths: Sequence[str]) -> set[str]:
        if not paths:
            return set()
        quoted = " ".join(shlex.quote(p) for p in paths)
        r = self.shell(f"for p in {quoted}; do if [ -d \"$p\" ] && [ ! -L \"$p\" ]; then echo \"$p\"; fi; done")
        return {line for line in r.stdout.splitlines() if line}

    def exists(self, path: str) -> bool:
        q = shlex.quote(path)
        return self.host.run(f"[ -e {q} ] || [ -L {q} ]", check=False, timeout=self.timeout).rc == 0

    def copy_tree(self, src: str, dst: str, *, progress: Progress | None = None) -> int:
        from runbook.adapters.storage_copytree import remote_copy_tree

        return remote_copy_tree(self.shell, src, dst, progress=progress, timeout=self.copy_timeout,
                                fallback_cp=True)

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        yield  # one operator at a time on a real host; the testbed's LocalFs locks


def not_found(what: str, name: str, backend: str) -> NoSuchDataset:
    return NoSuchDataset(f"{backend}: no such {what} {name!r}", obj=name)


def adapter_error(message: str, name: str) -> AdapterError:
    return AdapterError(message, obj=name)
