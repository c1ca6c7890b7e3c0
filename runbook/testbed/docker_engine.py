"""A private Docker engine (Debian's ``docker.io``) for the container smoke suite.

``DockerEngine(root).start()`` runs a ``dockerd`` of its own: its own ``--data-root``, ``--exec-root``,
``--pidfile``, unix socket, config file (so ``/etc/docker/daemon.json`` is never read and its key file
stays under ``root``) and cgroup parent. It touches no host networking: ``--bridge=none``,
``--iptables=false``, ``--ip-forward=false``, ``--ip-masq=false`` (containers join a network namespace
the suite makes, see :mod:`runbook.testbed.docker_pods`; builds use ``--network host``).

``stop()`` removes every container, stops the daemon by its PID, ends what it left running (its
containerd and shims, found by command lines naming ``root``), unmounts everything under ``root``,
removes its cgroups and the empty directories the daemon creates outside ``root`` when they were not
there before, then ``root`` itself. :meth:`DockerEngine.leftovers` lists whatever is still there: the
suite asserts it is empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from runbook.errors import TestbedError
from runbook.wait import wait_for

# Directories dockerd 20.10, its managed containerd and the runc shims create outside --data-root and
# --exec-root (hard-coded there), deepest first. Removed on stop when they were absent before and are empty.
GLOBAL_DIRS = (Path("/opt/containerd/lib"), Path("/opt/containerd/bin"), Path("/opt/containerd"),
               Path("/run/docker/plugins"), Path("/run/docker"), Path("/run/containerd/s"),
               Path("/run/containerd"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
LOG_TAIL = 1500


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def unavailable_reason() -> str | None:
    """Why a private engine cannot run on this machine (None: it can)."""
    if os.geteuid() != 0:
        return "not root: a private dockerd needs root"
    if shutil.which("dockerd") is None:
        return "no dockerd on PATH (Debian's docker.io; `bash .ci/setup` installs it as root)"
    if _docker_cli() is None:
        return "no docker CLI on PATH"
    mounts = Path("/proc/self/mountinfo").read_text()
    if " - cgroup " not in mounts and " - cgroup2 " not in mounts:
        return "no cgroup filesystem mounted: containers cannot run here"
    return None


def _docker_cli() -> str | None:
    """The docker.io package's own CLI next to its dockerd (same API version), else any on PATH."""
    dockerd = shutil.which("dockerd")
    if dockerd:
        for candidate in (Path(dockerd).parent / "docker", Path("/usr/bin/docker")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("docker")


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    prefix = str(root.resolve() if root.exists() else root)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


class DockerEngine:
    """One private dockerd under ``root`` (which it owns and removes on :meth:`stop`)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.cgroup_parent = f"runbook-{self.root.name}"
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.log = self.root / "dockerd.log"
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._absent_before: list[Path] = []
        self._iptables_before: set[str] = set()
        self._bridge_before = True
        self._cli = _docker_cli() or "docker"

    # ---------------------------------------------------------------- environment of the CLI

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def cli_env(self) -> dict[str, str]:
        """The environment of every ``docker`` call: our socket, the legacy builder, a CLI config of ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_BUILDKIT="0", DOCKER_CONFIG=str(self.root / "cli"))
        return env

    def docker(self, *args: str, timeout: float = 60.0, stdin: bytes | None = None, check: bool = True,
               what: str = "") -> Result:
        """Run ``docker ARGS`` against this engine. ``check``: a non-zero exit raises, naming ``what``."""
        argv = (self._cli, *args)
        try:
            out = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=self.cli_env(),
                                 check=False)
        except subprocess.TimeoutExpired:
            raise TestbedError(f"{what or 'docker'}: `docker {' '.join(args[:4])} ...` took over {timeout:g}s",
                               obj=self.host) from None
        res = Result(argv, out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace"))
        if check and not res.ok:
            raise TestbedError(f"{what or 'docker'}: `docker {' '.join(args)}` exited {res.rc}: "
                               f"{res.stderr.strip()[-800:]}", obj=self.host)
        return res

    # ---------------------------------------------------------------- lifecycle

    def dockerd_argv(self) -> list[str]:
        r = self.root
        return ["dockerd", "--config-file", str(r / "daemon.json"), "--data-root", str(r / "data"),
                "--exec-root", str(r / "exec"), "--pidfile", str(self.pidfile), "-H", self.host,
                "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                "--ip-masq=false", "--userland-proxy=false", "--cgroup-parent", self.cgroup_parent,
                "--exec-opt", "native.cgroupdriver=cgroupfs", "--storage-driver", "overlay2",
                "--log-level", "warn"]

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the daemon and wait until it answers; a daemon that exits fails at once with its log."""
        reason = unavailable_reason()
        if reason:
            raise TestbedError(f"cannot start a private docker engine: {reason}")
        if self.running():
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "cli").mkdir(exist_ok=True)
        # deprecated-key-path: dockerd 20.10 would otherwise write /etc/docker/key.json
        (self.root / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        self._absent_before = [d for d in GLOBAL_DIRS if not d.exists()]
        self._iptables_before = set(_iptables_lines())
        self._bridge_before = Path("/sys/class/net/docker0").exists()
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(self.dockerd_argv(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._proc.pid

        def answer() -> str:
            if self._proc is not None and self._proc.poll() is not None:
                raise TestbedError(f"dockerd exited {self._proc.returncode} while starting: {self.log_tail()}",
                                   obj=self.host)
            res = self.docker("version", "--format", "{{.Server.Version}}", timeout=10.0, check=False)
            return res.stdout.strip() if res.ok else f"no answer: {res.stderr.strip()[-200:]}"

        try:
            wait_for(answer, lambda v: bool(v) and not v.startswith("no answer"), timeout=timeout, interval=0.2,
                     what=f"dockerd on {self.socket} to answer", obj=self.host)
        except BaseException:
            self.stop()
            raise

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def bounding_set(self) -> str:
        """The daemon's capability bounding set (hex, as /proc/PID/status gives it): what containers can get."""
        if self.pid is None:
            raise TestbedError("the engine is not running", obj=self.host)
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                return line.split()[1]
        raise TestbedError(f"no CapBnd in /proc/{self.pid}/status", obj=self.host)

    def server_version(self) -> str:
        return self.docker("version", "--format", "{{.Server.Version}}").stdout.strip()

    def stop(self, *, timeout: float = 60.0) -> None:
        """Stop everything this engine runs and remove every trace of it. Idempotent."""
        if self.running():
            ids = self.docker("ps", "-aq", check=False, timeout=30.0).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=timeout)
            assert self._proc is not None
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10.0)
        self._end_children()
        self._unmount_all()
        self._remove_cgroups()
        # deepest first, only empty ones: those we created, and any when no engine runs here any more (an
        # engine started while another's were there leaves them to the last one to stop)
        alone = not _engines_running()
        for d in GLOBAL_DIRS:
            if d in self._absent_before or alone:
                with contextlib.suppress(OSError):
                    d.rmdir()
        if self.root.exists():
            left = mounts_under(self.root)
            if left:
                raise TestbedError(f"cannot remove {self.root}: still mounted: {', '.join(left)}", obj=self.host)
            shutil.rmtree(self.root)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return "(no log)"

    # ---------------------------------------------------------------- cleanup and leftovers

    def our_processes(self) -> list[psutil.Process]:
        """dockerd, containerd and shims whose command line names our root (nothing else is ours)."""
        mine = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if p.pid != os.getpid() and any(str(self.root) in part for part in cmd):
                mine.append(p)
        return mine

    def _end_children(self) -> None:
        procs = self.our_processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10.0)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5.0)

    def _unmount_all(self) -> None:
        for _ in range(3):  # a lazy unmount can reveal a mount below it: a few bounded passes
            points = mounts_under(self.root)
            if not points:
                return
            for point in points:
                if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
                    subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def cgroups(self) -> list[Path]:
        """Our cgroup parent under every mounted hierarchy (v1 controllers and the unified one)."""
        if not CGROUP_ROOT.is_dir():
            return []
        found = [CGROUP_ROOT / self.cgroup_parent] if (CGROUP_ROOT / self.cgroup_parent).is_dir() else []
        for hierarchy in CGROUP_ROOT.iterdir():
            candidate = hierarchy / self.cgroup_parent
            if hierarchy.is_dir() and not hierarchy.is_symlink() and candidate.is_dir():
                found.append(candidate)
        return found

    def _remove_cgroups(self) -> None:
        for parent in self.cgroups():
            children = sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*children, parent]:  # a cgroup dir is removed with rmdir, leaf first
                with contextlib.suppress(OSError):
                    d.rmdir()

    def leftovers(self) -> list[str]:
        """Everything of this engine still on the machine (empty: it left nothing behind)."""
        out = [f"process {p.pid}: {' '.join(p.info['cmdline'] or [])[:160]}" for p in self.our_processes()]
        if self.pid is not None and psutil.pid_exists(self.pid):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(f"dockerd pid {self.pid} is still alive")
        out += [f"mount {m}" for m in mounts_under(self.root)]
        out += [f"cgroup {c}" for c in self.cgroups()]
        if not _engines_running():  # while another engine runs, these are in its use
            out += [f"directory {d}" for d in self._absent_before if d.exists()]
        if self.root.exists():
            out.append(f"directory {self.root}")
        out += [f"iptables: {line}" for line in _iptables_lines()
                if "DOCKER" in line and line not in self._iptables_before]
        if Path("/sys/class/net/docker0").exists() and not self._bridge_before:
            out.append("bridge docker0")
        return out


def _engines_running() -> bool:
    """Is any dockerd or containerd (ours or not) running on this machine?"""
    names = {"dockerd", "containerd"}
    return any(p.info["name"] in names for p in psutil.process_iter(["name"]))


def _iptables_lines() -> list[str]:
    """Every rule and chain of the filter and nat tables ([] where iptables is absent)."""
    if shutil.which("iptables") is None:
        return []
    lines: list[str] = []
    for table in ("filter", "nat"):
        res = subprocess.run(["iptables", "-w", "5", "-t", table, "-S"], capture_output=True, text=True, check=False)
        lines += res.stdout.splitlines()
    return lines


def wait_gone(engine: DockerEngine, *, timeout: float = 10.0) -> list[str]:
    """Leftovers after a stop, waited for briefly (the kernel frees a mount or cgroup asynchronously)."""
    return wait_for(engine.leftovers, lambda left: not left, timeout=timeout, interval=0.2,
                    what=f"engine {engine.root} to leave nothing behind", obj=engine.host)


__all__ = ["DockerEngine", "Result", "mounts_under", "unavailable_reason", "wait_gone"]
