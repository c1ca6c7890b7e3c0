"""The testbed host's service manager: systemd-like unit files, enablement, and a ``systemctl`` stand-in.

The host port reads a host service the same way on biscayne and on the testbed: ``systemctl is-active X`` and
``systemctl is-enabled X`` run through :class:`~runbook.adapters.host.TestinfraHost`. Biscayne has systemd;
this machine has none, so the testbed's host gets this stand-in ``systemctl``, first on the PATH of its
commands (:class:`runbook.testbed.host.TestbedHost`, built only for a testbed by
:func:`runbook.adapters.factory.connect`; real hosts keep their own systemctl, unchanged).

State lives under ``<state dir>/systemd`` (removed with the testbed's other records by ``Testbed.up``):

- ``lib/<unit>.service``: unit files (the host's ``/lib/systemd/system``); ``Description=``,
  ``ExecStart=``, ``Environment=``, ``Restart=`` and ``[Install] WantedBy=`` are read;
- ``etc/<target>.wants/<unit>.service``: the symlink ``systemctl enable`` makes (``/etc/systemd/system``);
  a unit is enabled exactly while it exists;
- ``bin/systemctl``: the stand-in (``python -m runbook.testbed.systemd``).

A unit is active while its ``ExecStart`` runs as the supervisord program ``unit--<unit>`` (the testbed's real
supervisor): a real process on the host, outside any pod. With supervisord down (the testbed is down),
verbs needing the manager answer as systemctl does on a machine not booted with systemd.

Output words and exit codes are systemctl's (systemd 254+): ``is-active`` active 0, inactive/failed 3, unknown
unit ``inactive`` 4; ``is-enabled`` enabled 0, disabled 1, unknown unit ``not-found`` 4; ``status`` of an
unknown unit ``Unit X.service could not be found.`` 4; ``start``/``stop`` of one ``... not found.`` 5.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runbook.errors import TestbedError
from runbook.testbed.supervisor import Supervisor
from runbook.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from runbook.testbed.stack import Testbed

PROGRAM_PREFIX = "unit--"
MANAGER_UP = ("initializing", "starting", "running", "degraded", "maintenance", "stopping")
NOT_BOOTED = ("System has not been booted with systemd as init system (PID 1). Can't operate.\n"
              "Failed to connect to bus: Host is down")


def root(state_dir: Path) -> Path:
    return state_dir / "systemd"


def bin_dir(state_dir: Path) -> Path:
    """The directory the testbed host puts first on its commands' PATH (holds ``systemctl``)."""
    return root(state_dir) / "bin"


def unit_name(name: str) -> str:
    """``doublezerod`` -> ``doublezerod.service`` (systemctl's default suffix)."""
    return name if "." in name else f"{name}.service"


@dataclass(frozen=True)
class Unit:
    name: str  # with its suffix
    exec_start: tuple[str, ...]
    description: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    restart: bool = False
    wanted_by: str = "multi-user.target"


def parse_unit(name: str, text: str) -> Unit:
    """The keys this manager uses from a unit file (last one wins, ``Environment=`` accumulates)."""
    keys: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if key == "Environment":
            env.update(dict(item.split("=", 1) for item in shlex.split(value) if "=" in item))
        else:
            keys[key] = value
    return Unit(name=name, exec_start=tuple(shlex.split(keys.get("ExecStart", ""))),
                description=keys.get("Description", ""), environment=env,
                restart=keys.get("Restart", "no") not in ("no", ""),
                wanted_by=keys.get("WantedBy", "multi-user.target").split()[0])


def render_unit(description: str, exec_start: Sequence[str], *, environment: Mapping[str, str] | None = None,
                restart: str = "on-failure", wanted_by: str = "multi-user.target") -> str:
    env = "".join(f"Environment={shlex.quote(f'{k}={v}')}\n" for k, v in (environment or {}).items())
    return (f"[Unit]\nDescription={description}\n\n[Service]\nType=simple\nExecStart={shlex.join(exec_start)}\n"
            f"{env}Restart={restart}\n\n[Install]\nWantedBy={wanted_by}\n")


def install(state_dir: Path, supervisor_port: int) -> Path:
    """Write the ``systemctl`` stand-in (idempotent); return the directory holding it."""
    from runbook.env import PROJECT_ROOT  # not at the top: every systemctl call would pay for the env model

    bindir = bin_dir(state_dir)
    bindir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "runbook.testbed.systemd", "--state-dir", str(state_dir),
            "--supervisor-port", str(supervisor_port)]
    script = f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(PROJECT_ROOT))} exec {shlex.join(argv)} \"$@\"\n"
    target = bindir / "systemctl"
    if not target.is_file() or target.read_text() != script:
        tmp = target.with_suffix(".tmp")
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(target)
    return bindir


HOST_DOUBLEZERO_VERSION = "0.6.0"  # what the host's doublezero package installed before the sidecar took over


def up(tb: Testbed, progress: Callable[[str], None]) -> Path:
    """The testbed host's service manager: the ``systemctl`` stand-in, and the unit the host's doublezero
    package installed (``doublezero.host_service``), disabled and not running, as on biscayne after the
    required change. Its daemon holds a throwaway identity of its own (so starting it never resets green's
    session; the identity fight is :mod:`runbook.checks.dz_handover`'s) and its socket under the state dir.
    Returns the directory to put first on the host's PATH."""
    from runbook.env import PROJECT_ROOT
    from runbook.testbed import keypair

    bindir = install(tb.state_dir, tb.tb.supervisor_port)
    units = Units(tb.state_dir, tb.supervisor)
    name = tb.env.doublezero.host_service
    if units.unit(name) is None:
        home = root(tb.state_dir) / "doublezero"
        keypair.write_keypair(home / "id.json", keypair.colour_seed(bytes.fromhex(tb.tb.identity_seed), "host"))
        argv = tb.in_node([sys.executable, "-m", "runbook.testbed.doublezerod", "--version", HOST_DOUBLEZERO_VERSION,
                           "--config-dir", str(home), "--socket", str(home / "doublezerod.sock")])
        units.write(name, render_unit("DoubleZero daemon (the host package's unit)", argv,
                                      environment={"PYTHONPATH": str(PROJECT_ROOT)}))
        progress(f"host unit {unit_name(name)} installed, disabled and inactive (systemctl: {bindir})")
    return bindir


class Units:
    """The unit store and the manager's verbs (what the ``systemctl`` stand-in runs)."""

    def __init__(self, state_dir: Path, supervisor: Supervisor) -> None:
        self.root = root(state_dir)
        self.sup = supervisor

    def _file(self, name: str) -> Path:
        return self.root / "lib" / unit_name(name)

    def write(self, name: str, text: str) -> Path:
        """Install a unit file (as a package does: disabled, not started)."""
        path = self._file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def unit(self, name: str) -> Unit | None:
        try:
            return parse_unit(unit_name(name), self._file(name).read_text())
        except FileNotFoundError:
            return None

    def _link(self, unit: Unit) -> Path:
        return self.root / "etc" / f"{unit.wanted_by}.wants" / unit.name

    def is_enabled(self, unit: Unit) -> bool:
        return self._link(unit).is_symlink()

    def enable(self, unit: Unit) -> str:
        link = self._link(unit)
        if link.is_symlink():
            return ""
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self._file(unit.name))
        return f"Created symlink {link} → {self._file(unit.name)}."

    def disable(self, unit: Unit) -> str:
        link = self._link(unit)
        if not link.is_symlink():
            return ""
        link.unlink()
        return f'Removed "{link}".'

    def manager_up(self) -> bool:
        return self.sup.alive()

    @staticmethod
    def program(unit: Unit) -> str:
        return PROGRAM_PREFIX + unit.name.removesuffix(".service")

    def active_state(self, unit: Unit) -> str:
        """systemd's ActiveState, from the supervisord program's state."""
        info = self.sup.info(self.program(unit))
        if info is None:
            return "inactive"
        exited = "failed" if info.state == "EXITED" and info.exitstatus else "inactive"
        return {"RUNNING": "active", "STARTING": "activating", "BACKOFF": "activating", "STOPPING": "deactivating",
                "FATAL": "failed"}.get(info.state, exited)

    def start(self, unit: Unit) -> None:
        """Start ``ExecStart`` under supervisord and wait (Type=simple) until it was spawned."""
        if not unit.exec_start:
            raise TestbedError(f"{unit.name} has no ExecStart=")
        if self.active_state(unit) in ("active", "activating"):
            return
        prog = self.program(unit)
        self.sup.add(prog, list(unit.exec_start), env=unit.environment, autorestart=unit.restart, startsecs=0)
        wait_for(lambda: self.sup.info(prog), lambda i: i is not None and i.state != "STARTING", timeout=10,
                 interval=0.05, what=f"{unit.name} to be spawned")

    def stop(self, unit: Unit) -> None:
        self.sup.remove(self.program(unit))


# --------------------------------------------------------------------------- the systemctl stand-in


def systemctl(units: Units, verb: str, names: Sequence[str], *, quiet: bool = False, now: bool = False
              ) -> tuple[int, str, str]:
    """(rc, stdout, stderr) of ``systemctl [--quiet] [--now] VERB NAMES...``."""
    out: list[str] = []
    err: list[str] = []
    if verb == "daemon-reload":
        return 0, "", ""
    if verb == "is-system-running":
        return (0, "running\n", "") if units.manager_up() else (1, "offline\n", "")
    if verb not in ("is-active", "is-enabled", "status", "start", "stop", "restart", "enable", "disable"):
        return 1, "", f"Unknown command verb '{verb}'.\n"
    if not names:
        return 1, "", "Too few arguments.\n"
    if (verb in ("is-active", "status", "start", "stop", "restart") or now) and not units.manager_up():
        return 1, "", NOT_BOOTED + "\n"
    known = [(n, units.unit(n)) for n in names]
    rc = 0
    if verb in ("is-active", "is-enabled"):
        good = False
        for _n, u in known:
            if verb == "is-active":
                word = units.active_state(u) if u else "inactive"
                good |= word == "active"
            else:
                word = ("enabled" if units.is_enabled(u) else "disabled") if u else "not-found"
                good |= word == "enabled"
            out.append(word)
        if good:
            rc = 0
        elif all(u is None for _, u in known):
            rc = 4
        else:
            rc = 3 if verb == "is-active" else 1
        return rc, "" if quiet else "".join(f"{w}\n" for w in out), ""
    for n, u in known:
        full = unit_name(n)
        if u is None:
            if verb == "status":
                err.append(f"Unit {full} could not be found.")
                rc = max(rc, 4)
            elif verb in ("enable", "disable"):
                err.append(f"Failed to {verb} unit: Unit file {full} does not exist.")
                rc = max(rc, 1)
            else:
                err.append(f"Failed to {verb} {full}: Unit {full} {'not loaded' if verb == 'stop' else 'not found'}.")
                rc = max(rc, 5)
            continue
        if verb == "status":
            state = units.active_state(u)
            info = units.sup.info(units.program(u))
            pid = f"\n   Main PID: {info.pid}" if info and info.running else ""
            out.append(f"{'●' if state == 'active' else '○'} {full} - {u.description}\n     Loaded: loaded "
                       f"({units._file(full)}; {'enabled' if units.is_enabled(u) else 'disabled'})\n"
                       f"     Active: {state}{pid}")
            rc = max(rc, 0 if state == "active" else 3)
        elif verb in ("enable", "disable"):
            msg = units.enable(u) if verb == "enable" else units.disable(u)
            if msg:
                err.append(msg)
            if now:
                (units.start if verb == "enable" else units.stop)(u)
        else:
            if verb in ("stop", "restart"):
                units.stop(u)
            if verb in ("start", "restart"):
                units.start(u)
    return rc, "".join(f"{line}\n" for line in out), "".join(f"{line}\n" for line in err)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="systemctl", description="the testbed host's systemctl (runbook.testbed)")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--supervisor-port", type=int, required=True)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--now", action="store_true")
    p.add_argument("--no-pager", action="store_true")
    p.add_argument("--no-ask-password", action="store_true")
    p.add_argument("--system", action="store_true")
    p.add_argument("verb", nargs="?", default="list-units")
    p.add_argument("units", nargs="*")
    ns = p.parse_intermixed_args(argv)  # options anywhere, as systemctl takes them
    units = Units(ns.state_dir, Supervisor(state_dir=ns.state_dir, port=ns.supervisor_port))
    try:
        rc, out, err = systemctl(units, ns.verb, ns.units, quiet=ns.quiet, now=ns.now)
    except (TestbedError, OSError) as exc:
        rc, out, err = 1, "", f"Failed to {ns.verb} {' '.join(ns.units)}: {exc}\n"
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
