"""The procedure journal: where it is kept, how it is read, and the lock that allows one run per env.

A journal is one JSON document per env and procedure. Where it lives is a :class:`JournalStore`, so the
framework does not care:

- :class:`LocalStore`: a directory on the runner (the testbed's state dir; kind's ``$XDG_STATE_HOME``);
  the lock is ``flock`` on ``<dir>/lock``, held by this process and released by the kernel when it exits,
  crash or not.
- :class:`HostStore`: a directory on the env's host (biscayne: ``/var/lib/runbook/<env>/``, over ssh), read
  and written through the host adapter, with ``sudo`` when the env's host URL says ``?sudo=true``. The
  lock is ``flock`` taken *on the host* by a shell that holds it while its stdin stays open: the runner
  keeps that ssh session open for the run, and when the runner exits (or dies) the session closes and the
  host releases the lock. Every operator of the env, from any machine, sees the same journal and lock.

Either lock is one per env (every procedure, run or rollback) and re-entrant within a process (a failed
run's automatic rollback runs under the run's lock). The lock file records its holder (user, host, pid,
procedure, since when), which a refused run names.
"""

from __future__ import annotations

import base64
import fcntl
import getpass
import json
import os
import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from runbook.errors import AdapterError, RunbookError

STATUSES = ("running", "done", "failed", "rolled back", "rollback failed")
LOCK_NAME = "lock"


class JournalCorrupt(RunbookError):
    """The journal exists but cannot be read as one: never taken for "nothing to resume or roll back"."""


class Locked(RunbookError):
    """Another run or rollback holds the env's lock."""


def holder_info(procedure: str, action: str) -> dict[str, Any]:
    return {"user": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid(), "procedure": procedure,
            "action": action, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return (f"{h['procedure']} {h['action']} by {h['user']}@{h['host']} (pid {h['pid']}) since {h['since']}")
    except (ValueError, KeyError, TypeError):
        return f"a process that has not said who it is yet ({text.strip()[:200]!r})"


def _refused(holder_text: str, where: str, procedure: str, action: str) -> Locked:
    return Locked(f"refused: {procedure} {action} cannot start, the env's lock {where} is held by "
                  f"{describe_holder(holder_text)}. Wait until that run ends, then try again (the lock is released "
                  f"when its process exits, even if it crashes)",
                  procedure=procedure, obj=where)


class JournalStore(Protocol):
    """Where an env's journals and its lock live."""

    directory: PurePosixPath

    def where(self, name: str) -> str: ...

    def read(self, name: str) -> str | None: ...

    def write(self, name: str, text: str) -> None: ...

    def remove(self, name: str) -> None: ...

    def names(self) -> list[str]: ...

    def lock_key(self) -> str: ...

    def acquire(self, holder: dict[str, Any]) -> Any: ...  # a handle for release(), or raises Locked

    def release(self, handle: Any) -> None: ...


# ------------------------------------------------------------------------------------------- local
class LocalStore:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory)
        self.directory = PurePosixPath(self.path)

    def where(self, name: str) -> str:
        return str(self.path / name)

    def read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            where = str(self.path / name)
            raise JournalCorrupt(f"cannot read the journal {where}: {exc}", obj=where) from exc

    def write(self, name: str, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(self.path / name)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.path.glob("*.json")) if self.path.is_dir() else []

    def lock_key(self) -> str:
        return f"local:{(self.path / LOCK_NAME).resolve()}"

    def acquire(self, holder: dict[str, Any]) -> Any:
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the run; O_CLOEXEC: children never hold it
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read()
            f.close()
            raise _refused(text, str(self.path / LOCK_NAME), holder["procedure"], holder["action"]) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder))
        f.flush()
        return f

    def release(self, handle: Any) -> None:
        handle.seek(0)
        handle.truncate()
        handle.flush()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


# ------------------------------------------------------------------------------------------- on the host
_MISSING = 3
_BUSY = 75

# Holds flock on <dir>/lock while stdin is open; says LOCKED, or BUSY and the holder. `>>` opens without
# truncating, so a refused run can still read who holds it; the holder is written once the lock is ours.
_HOLD = """d={dir}; mkdir -p "$d" || exit 4
exec 9>>"$d/lock" || exit 4
if ! flock -n 9; then echo BUSY; cat "$d/lock"; exit {busy}; fi
printf '%s' {holder} > "$d/lock"; echo LOCKED
cat >/dev/null
: > "$d/lock"
"""


class HostStore:
    """Journals in a directory on the env's host, through its host adapter (``run``, and ``spawn`` to hold
    the lock). ``host`` may be a callable returning it, so nothing connects until a journal is used."""

    def __init__(self, host: Any, directory: str, *, connect_timeout: float = 60.0) -> None:
        self._host = host
        self.directory = PurePosixPath(directory)
        self.connect_timeout = connect_timeout

    @property
    def host(self) -> Any:
        if callable(self._host):
            self._host = self._host()
        return self._host

    @property
    def host_name(self) -> str:
        """The host URL without its query (``ssh://biscayne``, not its ssh_config or sudo options)."""
        return str(self.host.url).split("?", 1)[0]

    def where(self, name: str) -> str:
        return f"{self.host_name}:{self.directory / name}"

    def _run(self, command: str, what: str, *, ok: tuple[int, ...] = (0,)) -> Any:
        r = self.host.run(command, check=False, timeout=60.0, root=True)
        if r.rc not in ok:
            said = r.stderr.strip() or r.stdout.strip()
            raise AdapterError(f"cannot {what} in {self.host_name}:{self.directory}: {said} (rc {r.rc}; the host "
                               f"user needs write access there: create the directory, or add ?sudo=true to the "
                               f"env's host URL)", obj=str(self.directory))
        return r

    def read(self, name: str) -> str | None:
        p = shlex.quote(str(self.directory / name))
        r = self._run(f"test -e {p} || exit {_MISSING}; cat {p}", f"read the journal {name}", ok=(0, _MISSING))
        return None if r.rc == _MISSING else str(r.stdout)

    def write(self, name: str, text: str) -> None:
        d, p = shlex.quote(str(self.directory)), shlex.quote(str(self.directory / name))
        tmp = shlex.quote(str(self.directory / f".{name}.tmp"))
        b64 = base64.b64encode(text.encode()).decode()
        self._run(f"mkdir -p {d} && printf %s {b64} | base64 -d > {tmp} && mv -f {tmp} {p}",
                  f"write the journal {name}")

    def remove(self, name: str) -> None:
        self._run(f"rm -f {shlex.quote(str(self.directory / name))}", f"remove the journal {name}")

    def names(self) -> list[str]:
        r = self._run(f"ls -1 {shlex.quote(str(self.directory))} 2>/dev/null || true", "list the journals")
        return sorted(n for n in str(r.stdout).split() if n.endswith(".json"))

    def lock_key(self) -> str:
        return f"host:{self.host.url}:{self.directory / LOCK_NAME}"

    def acquire(self, holder: dict[str, Any]) -> Any:
        where = f"{self.host_name}:{self.directory / LOCK_NAME}"
        script = _HOLD.format(dir=shlex.quote(str(self.directory)), busy=_BUSY, holder=shlex.quote(json.dumps(holder)))
        proc = self.host.spawn(script, root=True)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self.connect_timeout)
        first = proc.stdout.readline().strip() if ready else ""
        if first == "LOCKED":
            return proc
        if first == "BUSY":
            text = proc.stdout.read()
            proc.wait(timeout=30)
            raise _refused(text, where, holder["procedure"], holder["action"])
        proc.kill()
        _, err = proc.communicate(timeout=30)
        why = err.strip() or f"no answer within {self.connect_timeout:g}s"
        raise AdapterError(f"cannot take the lock {where}: {why} (rc {proc.returncode})", obj=where)

    def release(self, handle: Any) -> None:
        proc: subprocess.Popen[str] = handle
        if proc.stdin is not None:
            proc.stdin.close()  # the holder's `cat` ends, the host's shell exits: the lock is free
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------- the journal
_held: dict[str, list[Any]] = {}  # lock key -> [depth, store, handle]: re-entrant within this process
_held_guard = threading.Lock()


class Journal:
    """What a procedure completed on an env, persisted after every step. ``Journal(path)`` is a local file."""

    def __init__(self, path: Path | str | None = None, *, store: JournalStore | None = None, name: str = "") -> None:
        if store is None:
            if path is None:
                raise ValueError("Journal needs a path or a store and a name")
            store, name = LocalStore(Path(path).parent), Path(path).name
        self.store: JournalStore = store
        self.name = name

    @property
    def path(self) -> Path:
        """Where the file is in its store's filesystem (on the host for a HostStore: see ``where``)."""
        return Path(str(self.store.directory / self.name))

    @property
    def where(self) -> str:
        return self.store.where(self.name)

    def load(self) -> dict[str, Any]:
        """The journal, or {} when there is none. Unreadable or not a journal: :class:`JournalCorrupt`."""
        text = self.store.read(self.name)
        if text is None:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._corrupt(f"not JSON ({exc})") from None
        problem = shape_problem(data)
        if problem:
            raise self._corrupt(problem)
        return dict(data)

    def _corrupt(self, why: str) -> JournalCorrupt:
        return JournalCorrupt(
            f"the journal {self.where} is corrupt: {why}. Nothing was run or rolled back: the journal is what "
            f"says which steps acted. Look at it and at the env's real state (`runbook status`): repair the "
            f"file if you can read what it held; else move it aside (keep it: it is that run's record) and undo "
            f"by hand what `runbook status` shows, with the commands `runbook plan` prints", obj=self.where)

    def save(self, data: dict[str, Any]) -> None:
        """Write ``data``; typed facts (:class:`runbook.procedures.facts.Facts`) as their JSON."""
        facts = data.get("facts")
        if facts is not None and hasattr(facts, "to_json"):
            data = {**data, "facts": facts.to_json()}
        self.store.write(self.name, json.dumps(data, indent=1, default=str))

    def clear(self) -> None:
        self.store.remove(self.name)

    @contextmanager
    def lock(self, procedure: str, action: str) -> Iterator[None]:
        """The env's lock for ``procedure``'s ``action`` (run, rollback); re-entrant within this process."""
        key = self.store.lock_key()
        with _held_guard:
            held = _held.get(key)
            if held is not None:
                held[0] += 1
            else:
                _held[key] = [1, self.store, self.store.acquire(holder_info(procedure, action))]
        try:
            yield
        finally:
            with _held_guard:
                entry = _held[key]
                entry[0] -= 1
                if entry[0] == 0:
                    del _held[key]
                    entry[1].release(entry[2])


def shape_problem(data: Any) -> str:
    """What makes ``data`` not a journal ("" when it is one)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, found {type(data).__name__}"
    if not isinstance(data.get("procedure"), str) or not data["procedure"]:
        return "no procedure name"
    if data.get("status") not in STATUSES:
        return f"status {data.get('status')!r} is none of {', '.join(STATUSES)}"
    for key in ("completed", "acted"):
        if key in data and not (isinstance(data[key], list) and all(isinstance(s, str) for s in data[key])):
            return f"{key!r} is not a list of step names"
    for key in ("facts", "params"):
        if key in data and not isinstance(data[key], dict):
            return f"{key!r} is not an object"
    return ""
