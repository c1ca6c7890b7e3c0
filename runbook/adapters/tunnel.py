"""Reaching the host's HTTP endpoints from wherever the runner runs.

The env names some endpoints as its host sees them: the ingress admin API (``ingress.admin``) and both
colours' RPC (:meth:`runbook.env.Env.rpc_url`), on the host's loopback. :func:`reach_for` gives the one
object the rest of the code turns such a host-side URL into a runner-side one with:

- ``local://`` (the runner is on the host) and ``docker://`` (kind maps the node's ports to the runner's
  loopback): :class:`Direct`, every URL unchanged;
- ``ssh://``: :class:`SshTunnels`. A URL whose host is a loopback name (``127.0.0.1``, ``localhost``,
  ``::1``) is served through an ssh tunnel to the host, opened on first use, one per host-side endpoint,
  listening on a free port of the runner's loopback; any other URL is unchanged (it is not on the host's
  loopback, so the runner reaches it as it is).

``Reach.url(host_url)`` returns the runner-side URL. ``Reach.transport()`` is an httpx transport that sends
each request through the tunnel of its URL while keeping the request's ``Host`` header the host-side one:
Caddy's admin API refuses any other Host (``403 host not allowed``), so the ingress adapter keeps its
host-side URL and takes this transport. The ingress's public URL (``ingress.url``) and the reference RPCs
(``cluster_rpc``) are reached as a client reaches them, never through a tunnel.

A tunnel is ``ssh -T -L <runner port>:<host>:<port> <host> 'echo ready; exec cat >/dev/null'`` with the env's
ssh options (user, port, ``ssh_config``, ``ssh_identity_file``), ``BatchMode``, ``ExitOnForwardFailure`` and
no connection sharing. ``ready`` is printed by the host only after ssh set up the forward, so the tunnel is
usable when it is read (no polling). It ends when :meth:`SshTunnels.close` closes its stdin, at the runner's
exit (``atexit``), and when the runner dies: the stdin pipe closes with it, the remote ``cat`` ends, and so
does the session.
"""

from __future__ import annotations

import atexit
import ipaddress
import select
import shlex
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from runbook.env import Env, HostTarget, parse_host, project_path
from runbook.errors import AdapterError

RUNNER_LOOPBACK = "127.0.0.1"
"""The runner's own loopback, where tunnels listen (never a host-side address)."""
READY = "runbook-tunnel-ready"
_BIND_RETRIES = 3


class Reach(Protocol):
    """Host-side URL -> runner-side URL (see the module docstring)."""

    def url(self, host_url: str) -> str: ...

    def transport(self) -> httpx.BaseTransport | None: ...

    def close(self) -> None: ...


def reach_for(env: Env) -> Reach:
    """How this env's runner reaches its host's endpoints: tunnels over ssh, directly otherwise."""
    target = env.host_target
    return SshTunnels(target, env_name=env.name) if target.remote else Direct()


def on_host_loopback(host_url: str) -> bool:
    """Whether ``host_url`` names the loopback of the machine it is resolved on (``localhost``, 127/8, ::1)."""
    name = urlsplit(host_url).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Direct:
    """The runner is where the endpoints are (``local://``), or they are mapped to it (kind): unchanged."""

    def url(self, host_url: str) -> str:
        return host_url

    def transport(self) -> httpx.BaseTransport | None:
        return None

    def close(self) -> None:
        pass


@dataclass
class Tunnel:
    """One open forward: ``runner_port`` on the runner's loopback -> ``host``:``port`` as the host sees it."""

    host: str
    port: int
    runner_port: int
    proc: subprocess.Popen[str]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class SshTunnels:
    """:class:`Reach` over ssh: one tunnel per host-side endpoint, opened on demand, closed at exit."""

    def __init__(self, target: HostTarget | str, *, env_name: str = "", connect_timeout: float = 30.0) -> None:
        self.target = parse_host(target) if isinstance(target, str) else target
        if not self.target.remote:
            raise AdapterError(f"{self.target.display}: tunnels need an ssh:// host", env=env_name)
        self.env_name = env_name
        self.connect_timeout = connect_timeout
        self._tunnels: dict[tuple[str, int], Tunnel] = {}
        self._lock = threading.Lock()
        atexit.register(self.close)

    # ------------------------------------------------------------------ the Reach API

    def url(self, host_url: str) -> str:
        if not on_host_loopback(host_url):
            return host_url
        parts = urlsplit(host_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        tunnel = self.tunnel(parts.hostname or "", port)
        return parts._replace(netloc=f"{RUNNER_LOOPBACK}:{tunnel.runner_port}").geturl()

    def transport(self) -> httpx.BaseTransport:
        return ThroughTunnels(self)

    def close(self) -> None:
        with self._lock:
            tunnels, self._tunnels = list(self._tunnels.values()), {}
        for t in tunnels:
            _stop(t.proc)

    # ------------------------------------------------------------------ tunnels

    def tunnels(self) -> list[Tunnel]:
        with self._lock:
            return list(self._tunnels.values())

    def tunnel(self, host: str, port: int) -> Tunnel:
        """The open tunnel to ``host``:``port`` on the host, opened now if there is none (or it died)."""
        with self._lock:
            t = self._tunnels.get((host, port))
            if t is None or not t.alive:
                t = self._open(host, port)
                self._tunnels[(host, port)] = t
            return t

    def ssh_argv(self) -> list[str]:
        """``ssh`` with the env's connection options (user, port, config, identity), without a destination."""
        argv = ["ssh"]
        if cfg := self.target.option("ssh_config"):
            argv += ["-F", str(_abs(cfg))]
        if ident := self.target.option("ssh_identity_file"):
            argv += ["-i", str(_abs(ident))]
        if self.target.user:
            argv += ["-l", self.target.user]
        if self.target.port:
            argv += ["-p", str(self.target.port)]
        return [*argv, "-o", f"ConnectTimeout={int(self.target.option('timeout') or 10)}"]

    def _open(self, host: str, port: int) -> Tunnel:
        remote = f"[{host}]" if ":" in host else host
        last = ""
        for _ in range(_BIND_RETRIES):  # a free port can be taken between choosing it and ssh binding it
            runner_port = _free_port()
            argv = [*self.ssh_argv(), "-T", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                    "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ServerAliveInterval=15",
                    "-L", f"{RUNNER_LOOPBACK}:{runner_port}:{remote}:{port}", self.target.name,
                    f"echo {READY}; exec cat >/dev/null"]
            with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: ssh's later messages never block it
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                        start_new_session=True)
                if _ready(proc, self.connect_timeout):
                    return Tunnel(host, port, runner_port, proc)
                _stop(proc)
                err.seek(0)
                last = err.read().strip()
            if "Address already in use" not in last and "cannot listen" not in last:
                break
        raise AdapterError(f"cannot open an ssh tunnel to {host}:{port} on {self.target.display}: "
                           f"{last or 'no answer within ' + str(self.connect_timeout) + 's'} "
                           f"(`{shlex.join(self.ssh_argv())} -L ... {self.target.name}`)", env=self.env_name)


class ThroughTunnels(httpx.BaseTransport):
    """Sends each request to ``reach.url(request.url)``, its headers (``Host`` included) as they were."""

    def __init__(self, reach: Reach, inner: httpx.BaseTransport | None = None) -> None:
        self._reach = reach
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        routed = self._reach.url(str(request.url))
        if routed != str(request.url):
            request.url = httpx.URL(routed)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def _abs(path: str) -> str:
    return str(project_path(path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((RUNNER_LOOPBACK, 0))
        return int(s.getsockname()[1])


def _ready(proc: subprocess.Popen[str], timeout: float) -> bool:
    """Whether the host printed READY (the forward is set up) before ``timeout`` or ssh's exit."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            return False
        line = proc.stdout.readline()
        if not line:
            return False  # ssh exited
        if line.strip() == READY:
            return True
    return False


def _stop(proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
    """End a tunnel: EOF on its stdin ends the remote ``cat`` and the session; then signals if it lingers."""
    if proc.poll() is None:
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()
