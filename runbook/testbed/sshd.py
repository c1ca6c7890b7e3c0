"""A real sshd for the ssh runner model: the testbed's host reached as biscayne is, over ssh with sudo.

:class:`Sshd` runs Debian's sshd (openssh-server) on a loopback port, with its own host key, config, pid
file and log under ``state_dir``, for one non-root user (``runbook-op`` by default):

- the user is created when missing (``useradd -m -U``, password field ``*``: no password login, not locked),
  and removed at :meth:`Sshd.down` only when this class created it (``userdel -r``; a user that was there
  before is left, only our key line is taken out of its ``authorized_keys``);
- the runner's key is a generated ed25519 key in ``state_dir`` (mode 0600, never logged); its public half
  goes to the user's ``~/.ssh/authorized_keys``, where sshd looks on a real host (``StrictModes yes``);
- ``/etc/sudoers.d/runbook-sshd-<tag>`` (checked with ``visudo -cf`` before it is installed) lets that user
  run anything as root without a password: what ``sudo -n`` needs (the host adapter runs root commands as
  ``sudo -n -- timeout N sh -c '<command>'``, so a rule narrower than ALL cannot name them);
- ``ssh_config`` in ``state_dir`` names the host ``runbook-host`` (port, user, key, a ``known_hosts`` holding
  this sshd's host key: strict host key checking, as an operator's machine has), so the env's host URL is
  ``ssh://runbook-host?ssh_config=<state_dir>/ssh_config&sudo=true`` (:meth:`Sshd.host_url`).

:meth:`Sshd.down` stops the connection master, every process of our sshd and, for a user it created, that
user's processes (each by its PID), then removes the sudoers drop-in, the user, and the files it wrote.
``/run/sshd`` (sshd's privilege separation directory, which Debian's package creates at boot) is left.
State is kept in ``state_dir/sshd.json``, so another process (``runbook testbed down``) can tear it down.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from runbook.errors import TestbedError
from runbook.wait import wait_for

OP_USER = "runbook-op"
ALIAS = "runbook-host"
SSHD = "/usr/sbin/sshd"
SUDOERS_DIR = Path("/etc/sudoers.d")


def missing() -> str | None:
    """Why a real sshd cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (sshd logs users in; useradd and /etc/sudoers.d)"
    for what, path in (("sshd (openssh-server)", SSHD), ("ssh (openssh-client)", shutil.which("ssh")),
                       ("sudo", shutil.which("sudo")), ("visudo", shutil.which("visudo")),
                       ("useradd (passwd)", shutil.which("useradd"))):
        if not path or not os.path.exists(path):
            return f"{what} is not installed (.ci/setup installs openssh-server and sudo as root)"
    return None


@dataclass
class Sshd:
    state_dir: Path
    user: str = OP_USER
    alias: str = ALIAS
    listen: str = "127.0.0.1"
    port: int = 0  # 0: a free port, chosen at up()

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        tag = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]
        self.sudoers = SUDOERS_DIR / f"runbook-sshd-{tag}"  # no dot: sudo skips files with one
        self.key_marker = f"runbook-sshd-{tag}"

    # ------------------------------------------------------------------ paths

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def client_key(self) -> Path:
        return self.state_dir / "runner_ed25519"

    @property
    def _state(self) -> Path:
        return self.state_dir / "sshd.json"

    def host_url(self, *, sudo: bool = True) -> str:
        """The env ``host`` URL reaching this sshd (``sudo=True``: root commands with ``sudo -n``)."""
        return f"ssh://{self.alias}?ssh_config={self.ssh_config}" + ("&sudo=true" if sudo else "")

    # ------------------------------------------------------------------ up

    def running(self) -> bool:
        state = self._read_state()
        return bool(state) and _our_sshd(state.get("pid"), self.state_dir) is not None

    def up(self, *, timeout: float = 20.0) -> Sshd:
        """Start it (or find it running): user, keys, sudoers drop-in, config, sshd listening."""
        if (why := missing()) is not None:
            raise TestbedError(f"cannot run a real sshd: {why}")
        if self.running():
            self.port = int(str(self._read_state()["port"]))
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        state: dict[str, object] = {"user": self.user, "user_created": False, "sudoers": str(self.sudoers)}
        self._write_state(state)  # from here on, down() knows what to undo
        state["user_created"] = self._ensure_user()
        self._write_state(state)
        self._keys()
        self._authorize()
        self._install_sudoers()
        self.port = self.port or _free_port(self.listen)
        state["port"] = self.port
        config = self.state_dir / "sshd_config"
        config.write_text(self._sshd_config())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        _run([SSHD, "-t", "-f", str(config)], "check the sshd config")
        _run([SSHD, "-f", str(config), "-E", str(self.state_dir / "sshd.log")], "start sshd")
        pid = wait_for(lambda: _pid(self.state_dir / "sshd.pid"), lambda p: p is not None, timeout=timeout,
                       interval=0.05, what="sshd to write its pid file")
        state["pid"] = pid
        self._write_state(state)
        wait_for(lambda: _banner(self.listen, self.port), bool, timeout=timeout, interval=0.05,
                 what=f"sshd to answer on {self.listen}:{self.port}")
        self._client_config()
        return self

    def _ensure_user(self) -> bool:
        try:
            pwd.getpwnam(self.user)
            return False
        except KeyError:
            pass
        _run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", self.user], f"create {self.user}")
        _run(["usermod", "-p", "*", self.user], f"unlock {self.user} for key logins")  # '!' would refuse sshd
        return True

    def _keys(self) -> None:
        for key in (self.state_dir / "ssh_host_ed25519_key", self.client_key):
            if not key.exists():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.key_marker, "-f", str(key)],
                     f"generate {key.name}")

    def _authorized_keys(self) -> Path:
        return Path(pwd.getpwnam(self.user).pw_dir) / ".ssh" / "authorized_keys"

    def _authorize(self) -> None:
        pw = pwd.getpwnam(self.user)
        ak = self._authorized_keys()
        ak.parent.mkdir(mode=0o700, exist_ok=True)
        os.chown(ak.parent, pw.pw_uid, pw.pw_gid)
        line = (self.client_key.with_suffix(".pub")).read_text().strip()
        kept = [x for x in (ak.read_text().splitlines() if ak.exists() else []) if not x.endswith(self.key_marker)]
        ak.write_text("\n".join([*kept, line]) + "\n")
        os.chmod(ak, 0o600)
        os.chown(ak, pw.pw_uid, pw.pw_gid)

    def _install_sudoers(self) -> None:
        tmp = self.state_dir / "sudoers.check"
        tmp.write_text(f"# runbook testbed: {self.user} runs root commands with `sudo -n` ({self.state_dir})\n"
                       f"{self.user} ALL=(root) NOPASSWD: ALL\n")
        os.chmod(tmp, 0o440)
        _run(["visudo", "-cf", str(tmp)], "check the sudoers drop-in")
        shutil.move(str(tmp), self.sudoers)

    def _sshd_config(self) -> str:
        return "\n".join([
            f"Port {self.port}", f"ListenAddress {self.listen}",
            f"HostKey {self.state_dir / 'ssh_host_ed25519_key'}", f"PidFile {self.state_dir / 'sshd.pid'}",
            f"AllowUsers {self.user}", "AuthorizedKeysFile .ssh/authorized_keys", "StrictModes yes",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin no", "UsePAM no", "AllowTcpForwarding local", "X11Forwarding no",
            "AllowAgentForwarding no", "PermitTunnel no", "LogLevel VERBOSE", ""])

    def _client_config(self) -> None:
        host_key = (self.state_dir / "ssh_host_ed25519_key.pub").read_text().split()
        (self.state_dir / "known_hosts").write_text(f"{self.alias} {host_key[0]} {host_key[1]}\n")
        self.ssh_config.write_text("\n".join([
            f"Host {self.alias}", f"  HostName {self.listen}", f"  Port {self.port}", f"  User {self.user}",
            f"  IdentityFile {self.client_key}", "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.state_dir / 'known_hosts'}", "  GlobalKnownHostsFile /dev/null",
            f"  HostKeyAlias {self.alias}", "  StrictHostKeyChecking yes", "  BatchMode yes", "  LogLevel ERROR",
            f"  ControlPath /tmp/runbook-ssh-{self.key_marker[-8:]}-%C", ""]))

    # ------------------------------------------------------------------ down

    def down(self) -> list[str]:
        """Tear everything down (see the module docstring); what was removed, one line each."""
        state = self._read_state()
        if not state:
            return []
        done = []
        if self.ssh_config.exists():
            subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", self.alias], capture_output=True,
                           check=False, timeout=10)
        sshd = _our_sshd(state.get("pid"), self.state_dir)
        if sshd is not None:
            _stop([*sshd.children(recursive=True), sshd])
            done.append(f"sshd (pid {sshd.pid}) and its sessions")
        user, created = str(state.get("user", self.user)), bool(state.get("user_created"))
        if created:
            _stop([p for p in psutil.process_iter(["username"]) if p.info["username"] == user])
        sudoers = Path(str(state.get("sudoers", self.sudoers)))
        if sudoers.exists():
            sudoers.unlink()
            done.append(str(sudoers))
        if created and _user_exists(user):
            subprocess.run(["userdel", "--remove", user], capture_output=True, check=False, timeout=30)
            if _user_exists(user):
                raise TestbedError(f"could not remove the user {user} this testbed created (userdel --remove)")
            done.append(f"user {user}")
        elif _user_exists(user):
            self.user = user
            ak = self._authorized_keys()
            if ak.exists():
                ak.write_text("".join(x + "\n" for x in ak.read_text().splitlines() if not x.endswith(self.key_marker)))
                done.append(f"our key in {ak}")
        for name in ("sshd_config", "ssh_config", "known_hosts", "sshd.pid", "runner_ed25519", "runner_ed25519.pub",
                     "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "sudoers.check", "sshd.log", "sshd.json"):
            (self.state_dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()  # only when nothing else is in it
        return done

    def leftovers(self) -> list[str]:
        """What of this sshd is still on the machine (empty after :meth:`down`)."""
        out = []
        state = self._read_state()
        if state and _our_sshd(state.get("pid"), self.state_dir) is not None:
            out.append(f"sshd pid {state.get('pid')}")
        if self.sudoers.exists():
            out.append(str(self.sudoers))
        if state.get("user_created") and _user_exists(str(state.get("user"))):
            out.append(f"user {state.get('user')}")
        return out

    def _read_state(self) -> dict[str, object]:
        try:
            data = json.loads(self._state.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, state: dict[str, object]) -> None:
        self._state.write_text(json.dumps(state))


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if r.returncode != 0:
        raise TestbedError(f"cannot {what}: `{' '.join(argv)}` exited {r.returncode}: {r.stderr.strip()[:400]}")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            return s.recv(4) == b"SSH-"
    except OSError:
        return False


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _our_sshd(pid: object, state_dir: Path) -> psutil.Process | None:
    """The sshd listener with ``pid`` if it is ours (its command line names our config), else None."""
    if not isinstance(pid, int):
        return None
    try:
        p = psutil.Process(pid)
        return p if str(state_dir / "sshd_config") in " ".join(p.cmdline()) else None
    except psutil.Error:
        return None


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def _stop(procs: list[psutil.Process], timeout: float = 5.0) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)
