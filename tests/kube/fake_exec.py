"""``pods/exec`` of the Kubernetes API mock server: the WebSocket upgrade and the channel protocol.

As the real API server: the client offers subprotocols (the Python client: ``v5.channel.k8s.io,
v4.channel.k8s.io``) and the server picks the first it supports (here v5 and v4 only); each binary message
is a channel byte then data (1 stdout, 2 stderr); the exec's ``Status`` goes on channel 3 as JSON
(``Success``, or ``NonZeroExitCode`` with the code in ``details.causes``, or ``InternalError`` when the
command cannot start); then the server closes the WebSocket. A refused exec (no such pod or container, a
container that does not run) is a plain HTTP error with a ``Status`` body, before any upgrade.

The command runs as a process on this machine (argv as given, ``HOSTNAME`` the pod's name, as in a
container), so its output, exit code and duration are real. A client that goes away stops it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED = ("v5.channel.k8s.io", "v4.channel.k8s.io")


@dataclass(frozen=True)
class ExecCall:
    namespace: str
    pod: str
    container: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ExecReply:
    """What one exec answers: output per channel and the exit code (None: the command could not start)."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = 0
    start_error: str = ""

    def status(self, call: ExecCall) -> dict[str, object]:
        if self.exit_code == 0:
            return {"metadata": {}, "status": "Success"}
        if self.exit_code is None:
            message = (f'failed to exec in container: failed to start exec "{call.pod}": OCI runtime exec failed: '
                       f"exec failed: unable to start container process: {self.start_error}: unknown")
            return {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
                    "details": {"causes": [{"message": message}]}, "code": 500}
        return {"metadata": {}, "status": "Failure",
                "message": f"command terminated with non-zero exit code: exit status {self.exit_code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(self.exit_code)}]}}


# runner(call, client_gone) -> the reply, or None when the client went away before the end
Runner = Callable[[ExecCall, Callable[[], bool]], "ExecReply | None"]


def local_runner(call: ExecCall, client_gone: Callable[[], bool]) -> ExecReply | None:
    """Run the argv as a local process, the stand-in for the container's."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": call.pod, "HOME": "/root"}
    try:
        proc = subprocess.Popen(list(call.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except FileNotFoundError:
        return ExecReply(exit_code=None, start_error=f'exec: "{call.argv[0]}": executable file not found in $PATH')
    except PermissionError:
        return ExecReply(exit_code=None, start_error=f'exec: "{call.argv[0]}": permission denied')
    while True:
        try:
            out, err = proc.communicate(timeout=0.05)
            return ExecReply(out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode)
        except subprocess.TimeoutExpired:
            if client_gone():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                return None


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked (server to client) WebSocket frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def choose_protocol(offered: str) -> str | None:
    for p in (x.strip() for x in offered.split(",")):
        if p in SUPPORTED:
            return p
    return None


def upgrade_response(key: str, protocol: str) -> bytes:
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n").encode()


def _gone(sock: socket.socket) -> Callable[[], bool]:
    """Whether the client closed the connection or sent a close frame (it never sends stdin here)."""
    state = {"gone": False}

    def check() -> bool:
        if state["gone"]:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                data = sock.recv(4096)
                state["gone"] = not data or (data[0] & 0x0F) == 0x8
        except OSError:
            state["gone"] = True
        return state["gone"]

    return check


def serve_exec(sock: socket.socket, call: ExecCall, key: str, protocol: str, runner: Runner) -> None:
    """Upgrade, run, stream the reply, close."""
    sock.sendall(upgrade_response(key, protocol))
    sock.sendall(frame(0x2, bytes([1])))  # an empty message on stdout: "connected" (as the kubelet does)
    reply = runner(call, _gone(sock))
    if reply is None:
        return
    try:
        for channel, text in ((1, reply.stdout), (2, reply.stderr)):
            data = text.encode()
            for i in range(0, len(data), 32 * 1024):
                sock.sendall(frame(0x2, bytes([channel]) + data[i:i + 32 * 1024]))
        sock.sendall(frame(0x2, bytes([3]) + json.dumps(reply.status(call)).encode()))
        sock.sendall(frame(0x8, struct.pack("!H", 1000)))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # the client's close frame, then EOF
            readable, _, _ = select.select([sock], [], [], deadline - time.monotonic())
            if not readable or not sock.recv(4096):
                break
    except OSError:
        pass


def stall(sock: socket.socket, stopping: Callable[[], bool]) -> None:
    """Never answer the upgrade: hold the connection until the client gives up or the server stops."""
    gone = _gone(sock)
    while not stopping() and not gone():
        time.sleep(0.02)


def argv_of(query: dict[str, list[str]]) -> Sequence[str]:
    return query.get("command") or []
