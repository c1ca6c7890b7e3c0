"""The local kubelet's container shim: what containerd-shim + runc give a container, and nothing else.

    python -m runbook.testbed.shim --testbed STATE_DIR --id POD/CONTAINER CONFIG.json

``CONFIG.json`` is the container as the kubelet created it from the pod manifest::

    {"argv": [...], "env": {...}, "cwd": "...", "netns": "rbtb-..." | null, "isolate": true,
     "resolv_conf": "<file>" | null}

The shim (run by supervisord, which passes its own environment to it) starts the container process with
exactly ``env`` (the manifest's env plus the image's, as a kubelet does; nothing of the runner's) and:

- ``netns``: joins that named network namespace first (a host-network pod shares the node's);
- ``isolate``: its own mount namespace (a slave of the host's: HostToContainer) with its own ``/run`` (so a
  daemon's socket under ``/var/run`` is private to its container, as on biscayne) and its own PID namespace,
  in which the container's process is PID 1 with ``/proc`` mounted for that namespace. As root this uses the
  namespaces directly; otherwise it first makes a user namespace (root inside maps to the caller).

The shim stays as the parent (as containerd-shim does), forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to the
container (in a process group of its own: each stop signal arrives once) and exits with its status. If the
shim dies, the container gets SIGKILL (PR_SET_PDEATHSIG),
so nothing outlives the supervisor. The shim's command line names the testbed (``--testbed``), so the
testbed finds its own processes without marking the container's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND = 4096
MS_REC, MS_SLAVE = 16384, 1 << 19
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class ShimError(RuntimeError):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise ShimError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {fstype or source} on {target}")


def join_netns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns into network namespace {name}")
    finally:
        os.close(fd)


def isolate(resolv_conf: str | None = None) -> None:
    """Private mount + PID namespaces (and a user namespace when not root), ``resolv_conf`` over the container's
    /etc/resolv.conf. Call before fork."""
    flags = CLONE_NEWNS | CLONE_NEWPID
    if os.geteuid() != 0:
        uid, gid = os.geteuid(), os.getegid()
        _check(_libc.unshare(CLONE_NEWUSER | flags), "unshare(user, mount, pid)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    else:
        _check(_libc.unshare(flags), "unshare(mount, pid)")
    # slave, as a kubelet's HostToContainer propagation: our mounts stay ours, and an unmount on the host (of
    # a shared mount: the testbed's volumes and ramdisks are) reaches this namespace too, so a container
    # started while a volume was mounted does not keep its loop device busy after the host's umount
    _mount("none", "/", None, MS_REC | MS_SLAVE)
    # /run only: /tmp stays shared, because the testbed's volumes are the host's directories seen through
    # the container's root (a state dir under /tmp must stay visible), not bind mounts of its own
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    if resolv_conf:
        bind_resolv_conf(resolv_conf)


def bind_resolv_conf(source: str, target: str = "/etc/resolv.conf") -> None:
    """Bind-mount ``source`` over ``target`` in this (private) mount namespace. A symlink is followed (the mount
    lands on its target); one into the container's fresh ``/run`` gets an empty file there to mount on."""
    real = os.path.realpath(target)
    if not os.path.exists(real):
        if not (real == "/run" or real.startswith("/run/")):
            raise ShimError(f"cannot mount the pod's resolv.conf: {target} -> {real} does not exist")
        Path(real).parent.mkdir(parents=True, exist_ok=True)  # on the container's own /run tmpfs
        Path(real).touch()
    _mount(source, real, None, MS_BIND)


def _child(config: dict[str, Any], isolated: bool) -> None:
    """In the forked child (PID 1 of the new PID namespace when isolated): exec the container."""
    try:
        # its own process group: supervisord's group stop (stopasgroup) reaches the shim, which forwards it once,
        # as containerd signals a container's init once; the group's TERM and the forwarded one would otherwise
        # both arrive, and a second SIGTERM makes some servers (uvicorn) exit at once, dropping in-flight requests
        os.setpgid(0, 0)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if isolated:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.chdir(config.get("cwd") or "/")
        env = {str(k): str(v) for k, v in config["env"].items()}
        argv = [str(a) for a in config["argv"]]
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        sys.stderr.write(f"shim: cannot start {config['argv'][:1]}: {exc}\n")
        os._exit(127)


def run(config: dict[str, Any]) -> int:
    if config.get("netns"):
        join_netns(str(config["netns"]))
    isolated = bool(config.get("isolate"))
    if isolated:
        isolate(config.get("resolv_conf"))
    elif config.get("resolv_conf"):
        raise ShimError("resolv_conf needs isolate (a mount namespace of the container's own)")
    pid = os.fork()
    if pid == 0:
        _child(config, isolated)
    with contextlib.suppress(OSError):  # also from this side, so no group signal can reach it before the child's
        os.setpgid(pid, pid)
    def forward(signum: int, _frame: object) -> None:
        os.kill(pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)


def container_pid(shim_pid: int) -> int | None:
    """The container's process (host PID) under a running shim, read from the kernel."""
    try:
        children = Path(f"/proc/{shim_pid}/task/{shim_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="runbook.testbed.shim", description=__doc__.splitlines()[0])
    p.add_argument("--testbed", required=True, help="the testbed's state dir (identifies its processes)")
    p.add_argument("--id", required=True, help="POD/CONTAINER")
    p.add_argument("config", type=Path)
    args = p.parse_args(argv)
    try:
        config = json.loads(args.config.read_text())
        return run(config)
    except (OSError, ValueError, ShimError) as exc:
        sys.stderr.write(f"shim {args.id}: {exc}\n")
        return 126


if __name__ == "__main__":
    sys.exit(main())
