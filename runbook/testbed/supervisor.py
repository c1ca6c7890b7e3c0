"""A thin client for supervisord, the testbed's real process supervisor.

supervisord runs daemonized with its XML-RPC API on a loopback port; programs live in one file each
under ``programs/`` and are added/removed with ``reloadConfig`` + ``addProcessGroup`` /
``removeProcessGroup`` (what ``supervisorctl update`` does). No home-made process manager.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import xmlrpc.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook.errors import TestbedError, WaitTimeout
from runbook.wait import wait_for

TESTBED_MARK = "RUNBOOK_TESTBED"

_CONF = """\
[supervisord]
logfile={state}/logs/supervisord.log
pidfile={state}/supervisord.pid
childlogdir={state}/logs
directory={state}
identifier=runbook-testbed
nodaemon=false
silent=true
minfds=1024

[inet_http_server]
port=127.0.0.1:{port}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=http://127.0.0.1:{port}

[include]
files = {state}/programs/*.conf
"""


@dataclass(frozen=True)
class ProcState:
    """One program as supervisord reports it (getProcessInfo)."""

    name: str
    state: str  # STOPPED STARTING RUNNING BACKOFF STOPPING EXITED FATAL UNKNOWN
    pid: int
    start: float
    stop: float
    exitstatus: int
    spawnerr: str

    @property
    def running(self) -> bool:
        return self.state == "RUNNING" and self.pid > 0


def _quote_env(env: Mapping[str, str]) -> str:
    parts = []
    for k, v in env.items():
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
        parts.append(f'{k}="{escaped}"')
    return ",".join(parts)


class Supervisor:
    """supervisord for one testbed state directory."""

    def __init__(self, *, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        self.conf = state_dir / "supervisord.conf"
        self.programs = state_dir / "programs"
        self.logs = state_dir / "logs"
        self.pidfile = state_dir / "supervisord.pid"

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def rpc(self) -> Any:  # xmlrpc proxies are dynamically typed
        return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.port}/RPC2")

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def alive(self) -> bool:
        try:
            return str(self.rpc.supervisor.getState()["statename"]) == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def start(self, *, timeout: float = 20.0) -> None:
        if self.alive():
            return
        shutil.rmtree(self.programs, ignore_errors=True)  # a new supervisord starts with no programs
        self.programs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_CONF.format(state=self.state_dir.resolve(), port=self.port))
        exe = Path(sys.executable).parent / "supervisord"
        cmd = [str(exe) if exe.exists() else "supervisord", "-c", str(self.conf)]
        env = {**os.environ, TESTBED_MARK: str(self.state_dir.resolve())}
        errlog = self.logs / "supervisord.stderr"
        with errlog.open("w") as err:  # a file, not a pipe: the daemonized child must not hold our pipe open
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=timeout,
                                  check=False, env=env)
        if proc.returncode != 0:
            raise TestbedError(f"supervisord did not start: {errlog.read_text().strip()}")
        wait_for(self.alive, bool, timeout=timeout, interval=0.1, what=f"supervisord on 127.0.0.1:{self.port}")

    def shutdown(self, *, timeout: float = 30.0) -> None:
        """Stop every program (TERM, then KILL after stopwaitsecs) and supervisord itself."""
        pid = self.pid()
        if self.alive():
            try:
                self.rpc.supervisor.stopAllProcesses()
                self.rpc.supervisor.shutdown()
            except (OSError, xmlrpc.client.Error):
                pass
        if pid is not None:
            try:
                wait_gone(pid, timeout=timeout)
            except WaitTimeout:
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, timeout=5.0)
        self.pidfile.unlink(missing_ok=True)

    # -- programs --------------------------------------------------------------------------
    def add(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        directory: Path | None = None,
        autorestart: bool = True,
        startsecs: int = 1,
        startretries: int = 3,
        stopwaitsecs: int = 15,
        eventlistener: str | None = None,
    ) -> None:
        """Define a program and start it (replaces a program of the same name)."""
        section = f"eventlistener:{name}" if eventlistener else f"program:{name}"
        lines = [
            f"[{section}]",
            "command=" + " ".join(shlex.quote(a) for a in argv).replace("%", "%%"),
            f"directory={directory or self.state_dir.resolve()}",
            "autostart=true",
            f"autorestart={'true' if autorestart else 'false'}",
            f"startsecs={startsecs}",
            f"startretries={startretries}",
            "stopsignal=TERM",
            f"stopwaitsecs={stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
        ]
        if eventlistener:
            lines += [f"events={eventlistener}", f"stderr_logfile={self.logs / name}.log"]
        else:
            lines += [f"stdout_logfile={self.logs / name}.log", "redirect_stderr=true",
                      "stdout_logfile_maxbytes=10MB", "stdout_logfile_backups=1"]
        # Every process of this testbed carries its state dir, so leftovers can be found after a crash.
        lines.append("environment=" + _quote_env({**(env or {}), TESTBED_MARK: str(self.state_dir.resolve())}))
        conf = self.programs / f"{name}.conf"
        if conf.exists():
            self.remove(name)
        conf.write_text("\n".join(lines) + "\n")
        self.rpc.supervisor.reloadConfig()
        try:
            self.rpc.supervisor.addProcessGroup(name)
        except xmlrpc.client.Fault as exc:
            if "ALREADY_ADDED" not in exc.faultString:
                raise TestbedError(f"supervisord refused program {name}: {exc.faultString}") from exc

    def remove(self, name: str) -> None:
        """Stop a program (graceful TERM) and forget it."""
        try:
            self.rpc.supervisor.stopProcessGroup(name)
        except xmlrpc.client.Fault as exc:
            if "BAD_NAME" not in exc.faultString and "NOT_RUNNING" not in exc.faultString:
                raise
        try:
            self.rpc.supervisor.removeProcessGroup(name)
        except xmlrpc.client.Fault as exc:
            if "BAD_NAME" not in exc.faultString:
                raise TestbedError(f"supervisord could not remove {name}: {exc.faultString}") from exc
        (self.programs / f"{name}.conf").unlink(missing_ok=True)
        self.rpc.supervisor.reloadConfig()

    def stop(self, name: str) -> None:
        self.rpc.supervisor.stopProcess(name)

    def info(self, name: str) -> ProcState | None:
        try:
            i = self.rpc.supervisor.getProcessInfo(name)
        except xmlrpc.client.Fault:
            return None
        return ProcState(name=str(i["name"]), state=str(i["statename"]), pid=int(i["pid"]), start=float(i["start"]),
                         stop=float(i["stop"]), exitstatus=int(i["exitstatus"]), spawnerr=str(i["spawnerr"]))

    def all(self) -> list[ProcState]:
        if not self.alive():
            return []
        return [p for p in (self.info(str(i["name"])) for i in self.rpc.supervisor.getAllProcessInfo()) if p]

    def wait_running(self, name: str, *, timeout: float) -> ProcState:
        state = wait_for(lambda: self.info(name), lambda s: s is not None and (s.running or s.state == "FATAL"),
                         timeout=timeout, interval=0.05, what=f"program {name} RUNNING")
        assert state is not None
        if state.state == "FATAL":
            raise TestbedError(f"program {name} failed to start: {state.spawnerr or self.tail(name)}")
        return state

    def tail(self, name: str, lines: int = 20) -> str:
        log = self.logs / f"{name}.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_gone(pid: int, *, timeout: float) -> None:
    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    wait_for(alive, lambda a: not a, timeout=timeout, interval=0.05, what=f"pid {pid} to exit")
