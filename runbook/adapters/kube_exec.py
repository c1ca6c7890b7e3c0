"""Exec in a container over the Kubernetes WebSocket protocol, with one deadline over every phase.

The official client's ``kubernetes.stream.stream`` opens the WebSocket without a socket timeout: its
``_request_timeout`` bounds only the wait for frames once the handshake is done, so an API server (or a
kubelet behind it) that accepts the connection and never answers the upgrade hangs the caller for ever.
Here the request is serialised by the client itself (``ApiClient.param_serialize``: same URL, same auth
headers, same TLS and proxy settings as every other call), the socket is opened with the deadline left, and
every frame is read with the deadline left. Past the deadline the connection is dropped and
:class:`ExecDeadline` says how long was allowed.

Protocol: ``v5.channel.k8s.io`` (preferred) or ``v4.channel.k8s.io``; each binary message is a channel byte
and data: 1 stdout, 2 stderr, 3 the exec's ``Status`` as JSON; v5 adds 255, a channel-close signal.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import certifi
import websocket
from kubernetes import client as k8s
from kubernetes.stream import ws_client

SUBPROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDOUT, STDERR, ERROR, CLOSE = 1, 2, 3, 255
EXEC_PATH = "/api/v1/namespaces/{namespace}/pods/{name}/exec"


class ExecDeadline(Exception):
    """The exec did not end within its deadline (``phase``: connecting, the upgrade, or the command)."""

    def __init__(self, phase: str, timeout: float) -> None:
        self.phase = phase
        self.timeout = timeout
        super().__init__(f"{phase}: no end within the {timeout:g}s deadline")


@dataclass(frozen=True)
class ExecOutput:
    stdout: str
    stderr: str
    status: str  # the error channel: a Kubernetes Status in JSON ("" when the stream ended without one)
    subprotocol: str


def exec_request(api_client: k8s.ApiClient, namespace: str, pod: str, container: str,
                 argv: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The WebSocket URL and headers of ``pods/exec``, serialised by the client as its own calls are."""
    _, url, headers, _, _ = api_client.param_serialize(
        method="GET", resource_path=EXEC_PATH, path_params={"namespace": namespace, "name": pod},
        query_params=[("command", list(argv)), ("container", container), ("stderr", True), ("stdin", False),
                      ("stdout", True), ("tty", False)],
        header_params={}, auth_settings=["BearerToken"], collection_formats={"command": "multi"})
    return ws_client.get_websocket_url(url), dict(headers or {})


def _ssl_options(cfg: k8s.Configuration, url: str) -> dict[str, Any]:
    """TLS settings from the client configuration, as ``kubernetes.stream.ws_client`` derives them."""
    opts: dict[str, Any]
    if url.startswith("wss://") and cfg.verify_ssl:
        opts = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": cfg.ssl_ca_cert or certifi.where()}
        if cfg.assert_hostname is not None:
            opts["check_hostname"] = cfg.assert_hostname
    else:
        opts = {"cert_reqs": ssl.CERT_NONE}
    if cfg.cert_file:
        opts["certfile"] = cfg.cert_file
    if cfg.key_file:
        opts["keyfile"] = cfg.key_file
    if cfg.tls_server_name:
        opts["server_hostname"] = cfg.tls_server_name
    return opts


def _left(deadline: float, phase: str, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ExecDeadline(phase, timeout)
    return left


def run_exec(api_client: k8s.ApiClient, namespace: str, pod: str, container: str, argv: Sequence[str], *,
             timeout: float) -> ExecOutput:
    """Run ``argv`` in the container and collect its output and Status, all within ``timeout`` seconds.

    Raises :class:`ExecDeadline` past the deadline, ``websocket.WebSocketBadStatusException`` when the API
    server refuses the upgrade (its status and body say why), and ``OSError`` when it cannot be reached.
    """
    deadline = time.monotonic() + timeout
    url, headers = exec_request(api_client, namespace, pod, container, argv)
    cfg = api_client.configuration
    header = [f"authorization: {headers['authorization']}"] if "authorization" in headers else []
    options: dict[str, Any] = {"header": header, "subprotocols": list(SUBPROTOCOLS),
                               "timeout": _left(deadline, "connecting", timeout)}
    if cfg.proxy or cfg.proxy_headers:
        options = ws_client.websocket_proxycare(options, cfg, url, headers)
    ws = websocket.WebSocket(sslopt=_ssl_options(cfg, url), skip_utf8_validation=False)
    try:
        try:
            ws.connect(url, **options)
        except (TimeoutError, websocket.WebSocketTimeoutException):
            raise ExecDeadline("waiting for the API server to accept the exec", timeout) from None
        chunks: dict[int, list[bytes]] = {STDOUT: [], STDERR: [], ERROR: []}
        while True:
            ws.settimeout(_left(deadline, "waiting for the command to end", timeout))
            try:
                opcode, frame = ws.recv_data_frame(True)
            except (TimeoutError, websocket.WebSocketTimeoutException):
                raise ExecDeadline("waiting for the command to end", timeout) from None
            except websocket.WebSocketConnectionClosedException:
                break  # dropped without a close frame: whatever the error channel holds tells
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            data = bytes(frame.data or b"")
            if opcode in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT) and data:
                channel = data[0]
                if channel in chunks:
                    chunks[channel].append(data[1:])
                # CLOSE (v5): the server closed one channel; nothing to keep
        text = {ch: b"".join(parts).decode("utf-8", "replace") for ch, parts in chunks.items()}
        return ExecOutput(stdout=text[STDOUT], stderr=text[STDERR], status=text[ERROR],
                          subprotocol=str(ws.getsubprotocol() or ""))
    finally:
        ws.shutdown()


def refusal(exc: websocket.WebSocketBadStatusException) -> k8s.ApiException:
    """An upgrade the API server refused, as the ApiException a REST call would have raised."""
    body = exc.resp_body.decode("utf-8", "replace") if isinstance(exc.resp_body, bytes) else exc.resp_body
    return k8s.ApiException(status=exc.status_code, reason=str(exc.status_message or ""), body=body)
