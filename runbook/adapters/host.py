"""The host port on testinfra: ``local://`` (the runner is on the host), ``ssh://[user@]host[:port]`` (an
operator's machine reaching the host), ``docker://<kind node>``. See :class:`runbook.env.HostTarget`.

One verb underneath, ``run``, returning :class:`~runbook.adapters.base.CommandResult`; everything else
(processes, services, routes, checksums) is built on it, so it works the same over every backend.

Root: a caller says a command needs root with ``run(command, root=True)`` (``spawn(command, root=True)``).
On a host whose URL says ``?sudo=true`` (the connection's user is not root) that command runs as
``sudo -n -- timeout N sh -c '<command>'``: never a password prompt; a refusal by sudo is an
:class:`AdapterError` naming the sudoers rule the host needs, whatever ``check`` says (it is not the
command's answer). Without ``sudo=true`` the command runs as the connection's user (root on the testbed and
in a kind node). Every other command runs as the connection's user, never through sudo.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time

import testinfra
from testinfra.backend.ssh import SshBackend

from runbook.adapters.base import CommandResult, ProcessInfo, ServiceState
from runbook.env import parse_host
from runbook.errors import AdapterError, CommandFailed

SUDO = "sudo -n --"
"""How a command asked as root is prefixed on a ``?sudo=true`` host: non-interactive, so a missing rule fails
at once instead of waiting for a password nobody types."""
_SUDO_REFUSED = ("a password is required", "is not in the sudoers file", "is not allowed to execute",
                 "may not run sudo", "a terminal is required", "sudo: command not found", "sudo: not found")
_DENIED = ("Permission denied", "Operation not permitted", "must be superuser", "only root can")


def as_root(command: str, *, sudo: bool) -> str:
    """The command line that runs ``command`` (a shell command) as root on a host with or without ``sudo``."""
    return f"{SUDO} sh -c {shlex.quote(command)}" if sudo else command


class TestinfraHost:
    """A host reached through a testinfra backend URL."""

    __test__ = False

    def __init__(self, url: str, *, netns: str | None = None, env_name: str = "") -> None:
        self.url = url
        self.netns = netns  # the testbed's stand-in for the host network (routes live there)
        self.env_name = env_name
        try:
            self.target = parse_host(url)
            self._host = testinfra.get_host(self.target.testinfra_url())
        except Exception as exc:  # testinfra raises bare RuntimeError/ValueError for bad URLs
            raise AdapterError(f"cannot reach host {url}: {exc}", env=env_name) from exc
        self.sudo = self.target.sudo  # commands asked as root run with `sudo -n`

    def root_command(self, command: str) -> str:
        """How ``run(command, root=True)`` runs it here (for plans and messages)."""
        return as_root(command, sudo=self.sudo)

    def run(self, command: str, *, check: bool = True, timeout: float = 60.0, root: bool = False) -> CommandResult:
        """Run a shell command on the host (under ``timeout``); ``root=True``: as root (module docstring)."""
        start = time.monotonic()
        line = f"timeout {int(max(1, timeout))} sh -c {shlex.quote(command)}"
        if root and self.sudo:
            line = f"{SUDO} {line}"
        try:
            r = self._host.run(line)
        except Exception as exc:
            raise AdapterError(f"host {self.url}: could not run `{command}`: {exc}", env=self.env_name) from exc
        result = CommandResult(command, r.rc, r.stdout, r.stderr, time.monotonic() - start)
        if root and self.sudo and r.rc != 0 and any(s in r.stderr for s in _SUDO_REFUSED):
            raise AdapterError(f"host {self.target.display}: sudo refused `{command}`: {r.stderr.strip()[:300]} (the "
                               f"host needs a sudoers rule letting {self._who()} run it as root without a "
                               "password, e.g. /etc/sudoers.d/runbook: `<user> ALL=(root) NOPASSWD: ALL`)",
                               env=self.env_name)
        if check and r.rc != 0:
            raise CommandFailed(f"on host {self.url}{self._hint(root, r.stderr)}", command=command, rc=r.rc,
                                stderr=r.stderr, env=self.env_name)
        return result

    def _who(self) -> str:
        return self.target.user or "the ssh user"

    def _hint(self, root: bool, stderr: str) -> str:
        """Why a denied command may have been denied: where it ran as the connection's user."""
        if not any(s in stderr for s in _DENIED) or (root and self.sudo) or self.target.scheme == "docker":
            return ""
        if root:
            return f" (asked as root, ran as {self._who()}: add ?sudo=true to the env's host URL)"
        return f" (ran as {self._who()}, without sudo: a command that needs root must be run with root=True)"

    def spawn(self, command: str, *, root: bool = False) -> subprocess.Popen[str]:
        """Start ``command`` on the host and leave it running, its stdin, stdout and stderr piped to us: it
        ends when we close its stdin or exit (the ssh session closes). ``root=True``: as :meth:`run`.
        In its own session, so the operator's Ctrl-C reaches us, not it."""
        backend = self._host.backend
        remote = backend.get_command(self.root_command(command) if root else command)
        if isinstance(backend, SshBackend):
            cmd, args = backend._build_ssh_command(remote)  # testinfra's own ssh options (user, port, config)
            local = backend.quote(" ".join(cmd), *args)
        elif backend.NAME == "local":
            local = remote
        elif backend.NAME == "docker":
            local = backend.quote("docker exec -i %s /bin/sh -c %s", backend.name, remote)
        else:
            raise AdapterError(f"host {self.url}: cannot keep a command running over the {backend.NAME} backend",
                               env=self.env_name)
        return subprocess.Popen(["/bin/sh", "-c", local], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def processes(self, name: str) -> list[ProcessInfo]:
        """Processes whose program is ``name`` (by comm or by the program word of the command line), with
        their PID namespace and cgroup as the host itself lists them (never read from the runner's /proc)."""
        out = self.run("ps -ww -eo pid=,ppid=,pidns=,cgroup=,comm=,args=", check=True).stdout
        word = re.compile(rf"(^|[\s/.]){re.escape(name)}(\s|$)")
        found = []
        for line in out.splitlines():
            parts = line.split(None, 5)
            if len(parts) < 6:
                continue
            pid, ppid, pidns, cgroup, comm, args = int(parts[0]), int(parts[1]), *parts[2:]
            program = " ".join(args.split()[:3])  # interpreter, -m, module for the stand-ins
            if comm == name or word.search(program):
                found.append(ProcessInfo(pid=pid, ppid=ppid, name=comm, cmdline=args,
                                         pidns="" if pidns == "-" else pidns, cgroup="" if cgroup == "-" else cgroup))
        return found

    def service(self, name: str) -> ServiceState:
        """A unit's state as ``systemctl is-active``/``is-enabled`` word it, on a host with a service manager:
        one booted with systemd (``/run/systemd/system``, systemd's own test), or else whose ``systemctl``
        says its manager runs (``is-system-running``: the testbed's, :mod:`runbook.testbed.systemd`).
        A host without one (no systemctl, or systemctl answering ``offline``) is ``None``/``None``."""
        probe = self.run("command -v systemctl >/dev/null || exit 127; test -d /run/systemd/system && exit 0; "
                         "systemctl is-system-running", check=False)
        word = probe.stdout.strip()
        manager_up = ("initializing", "starting", "running", "degraded", "maintenance", "stopping")
        if not ((probe.rc == 0 and not word) or word in manager_up):
            return ServiceState(name, active=None, enabled=None, detail="no systemd on this host")
        active = self.run(f"systemctl is-active {shlex.quote(name)}", check=False)
        enabled = self.run(f"systemctl is-enabled {shlex.quote(name)}", check=False)
        state_a, state_e = active.stdout.strip(), enabled.stdout.strip()
        return ServiceState(
            name,
            active=state_a in ("active", "reloading", "refreshing"),  # what is-active exits 0 on
            enabled=state_e in ("enabled", "enabled-runtime", "static", "alias", "indirect", "generated"),  # rc 0
            detail=f"is-active: {state_a or active.stderr.strip()}; is-enabled: {state_e or enabled.stderr.strip()}",
        )

    def routes(self, interface: str, *, netns: str | None = None) -> list[str]:
        ns = netns or self.netns
        prefix = f"ip -n {shlex.quote(ns)} " if ns else "ip "
        # entering another network namespace (ip -n) needs root; the host's own routes do not
        r = self.run(f"{prefix}route show dev {shlex.quote(interface)}", check=False, root=bool(ns))
        if not r.ok:
            if "Cannot find device" in r.stderr or "does not exist" in r.stderr:
                return []
            raise CommandFailed(f"on host {self.url}", command=r.command, rc=r.rc, stderr=r.stderr,
                                env=self.env_name)
        return [line.strip() for line in r.stdout.splitlines() if line.strip()]

    def file_sha256(self, path: str) -> str | None:
        r = self.run(f"sha256sum {shlex.quote(path)}", check=False)
        return r.stdout.split()[0] if r.ok and r.stdout else None
