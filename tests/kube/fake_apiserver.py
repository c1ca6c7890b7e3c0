"""A Kubernetes API mock server over real HTTP on loopback, for the kube adapter's tests.

REST calls go to pytest-httpserver (a maintained mock HTTP server: scripted responses, every request
recorded). Exec is a WebSocket upgrade, which that server cannot do, so :class:`ExecServer` answers it: a
small threaded server speaking the ``v4.channel.k8s.io`` protocol (channel byte + data, Status JSON on the
error channel), recording each request too.

Object builders return the JSON the API server sends (camelCase), so the adapter parses exactly what it
would parse from kind or biscayne.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from runbook.env import Env, KubeConfig, load_env

NS = "agave"
API = f"/api/v1/namespaces/{NS}"
APPS = f"/apis/apps/v1/namespaces/{NS}"
TOKEN = "test-token"


def write_kubeconfig(path: Path, server: str, *, context: str = "fake") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "runbook", "user": {"token": TOKEN}}],
        "contexts": [{"name": context, "context": {"cluster": "fake", "user": "runbook", "namespace": NS}}],
    }))
    return path


def make_env(kubeconfig: Path, *, context: str = "fake") -> Env:
    """The kind env, with its kube section pointing at a kubeconfig of the test's."""
    return load_env("kind").model_copy(
        update={"kube": KubeConfig(context=context, namespace=NS, kubeconfig=str(kubeconfig))})


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes Status object, as the API server sends with every error."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def pod_spec(*, sidecar_image: str = "laconicnetwork/doublezero:v0.6.0",
             app_image: str = "laconicnetwork/agave:v2.1.0") -> dict[str, Any]:
    return {
        "initContainers": [{"name": "doublezerod", "image": sidecar_image, "restartPolicy": "Always"}],
        "containers": [{"name": "agave-validator", "image": app_image}],
    }


def running(started: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"running": {"startedAt": started}}


def waiting(reason: str) -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": f"{reason} message"}}


def terminated(reason: str, code: int) -> dict[str, Any]:
    return {"terminated": {"reason": reason, "exitCode": code, "startedAt": "2026-01-01T00:00:00Z",
                           "finishedAt": "2026-01-01T00:01:00Z"}}


def cstatus(name: str, image: str, state: dict[str, Any], *, restarts: int = 0, ready: bool = True,
            image_id: str | None = None) -> dict[str, Any]:
    return {"name": name, "image": f"docker.io/{image}", "imageID": image_id or f"docker.io/{image}@sha256:aa",
            "state": state, "restartCount": restarts, "ready": ready, "started": "running" in state}


def pod(name: str, *, sidecar: dict[str, Any] | None = None, app: dict[str, Any] | None = None,
        phase: str = "Running", spec: dict[str, Any] | None = None, owner: str | None = "agave-green-5d9f",
        colour: str = "green", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS,
                            "labels": {"app.kubernetes.io/name": "agave", "runbook/colour": colour}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                                    "uid": "u1", "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:02:00Z"
    st: dict[str, Any] = {"phase": phase}
    if sidecar is not None:
        st["initContainerStatuses"] = [sidecar]
    if app is not None:
        st["containerStatuses"] = [app]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec or pod_spec(), "status": st}


def replicaset(name: str, deployment: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": NS, "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": "u0",
                 "controller": True}]}}


def deployment(name: str, *, generation: int = 2, observed: int = 2, available: int = 1,
               spec: dict[str, Any] | None = None, colour: str = "green") -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "agave", "runbook/colour": colour}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "generation": generation, "resourceVersion": "41"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "strategy": {"type": "Recreate"},
                 "template": {"metadata": {"labels": labels}, "spec": spec or pod_spec()}},
        "status": {"observedGeneration": observed, "replicas": 1, "updatedReplicas": available,
                   "availableReplicas": available, "readyReplicas": available},
    }


def requests_made(server: Any) -> list[Any]:
    """The requests a pytest-httpserver received, in order (werkzeug Request objects)."""
    return [req for req, _ in server.log]


def items(*objs: dict[str, Any], kind: str = "List") -> dict[str, Any]:
    return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": list(objs)}


# --------------------------------------------------------------------------- exec over WebSocket

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True)
class ExecReply:
    """What one exec answers: output per channel and the error-channel Status; or an HTTP refusal."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    refuse: int = 0  # an HTTP status to refuse the upgrade with (e.g. 403)
    status_message: str = ""

    def error_channel(self) -> str:
        if self.exit_code == 0:
            return json.dumps({"metadata": {}, "status": "Success"})
        if self.exit_code < 0:
            return json.dumps({"metadata": {}, "status": "Failure", "reason": "InternalError",
                               "message": self.status_message})
        return json.dumps({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: exit status {self.exit_code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(self.exit_code)}]}})


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


@dataclass
class ExecServer:
    """Answers ``GET .../pods/<pod>/exec`` WebSocket upgrades with a scripted :class:`ExecReply`."""

    reply: Callable[[str, dict[str, list[str]]], ExecReply]
    requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, sock: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode()
        request_line, *header_lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
        target = urlsplit(request_line.split(" ")[1])
        query = parse_qs(target.query)
        self.requests.append((target.path, query, headers))
        reply = self.reply(target.path, query)
        if reply.refuse:
            body = json.dumps(status(reply.refuse, "Forbidden", reply.status_message)).encode()
            sock.sendall(f"HTTP/1.1 {reply.refuse} Forbidden\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            return
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + _GUID).encode()).digest())
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n")
        for channel, text in ((1, reply.stdout), (2, reply.stderr), (3, reply.error_channel())):
            if text:
                sock.sendall(_frame(0x2, bytes([channel]) + text.encode()))
        sock.sendall(_frame(0x8, struct.pack("!H", 1000)))
        with contextlib.suppress(OSError):
            sock.recv(1024)  # the client's close frame
