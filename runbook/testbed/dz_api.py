"""The stand-in doublezerod's control API: HTTP/JSON on a unix socket (``GET /status``, ``GET /info``), as
the real daemon serves it to the ``doublezero`` CLI, and the socket file's lifecycle."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError

log = logging.getLogger("doublezerod")
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL; see socket_address()


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for ``bind``/``connect`` to ``path``, however long the path is.

    ``sun_path`` holds 107 bytes; testbed paths (through a container's rootfs) can be longer. Then the
    parent directory is opened and addressed as ``/proc/self/fd/N/<name>`` for the duration.
    """
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{fd}/{path.name}"
        if len(os.fsencode(short)) > MAX_SOCKET_PATH:
            raise RunbookError(f"socket file name too long: {path.name}", obj=str(path))
        yield short
    finally:
        os.close(fd)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: Path, daemon: Any) -> None:
        self.doublezerod = daemon
        super().__init__(str(path), _Handler, bind_and_activate=False)
        try:
            with socket_address(path) as address:
                self.socket.bind(address)
            self.server_activate()
        except BaseException:
            self.server_close()
            raise


class _Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "doublezerod-standin"
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        d = self.server.doublezerod
        routes = {"/status": d.status, "/info": d.info, "/v1/info": d.info}
        handler = routes.get(self.path.split("?", 1)[0])
        if handler is None:
            self._send(404, {"status": "error", "description": f"no such endpoint: {self.path}"})
            return
        try:
            self._send(200, handler())
        except Exception as exc:  # the API must answer, whatever went wrong inside
            log.exception("GET %s failed", self.path)
            self._send(500, {"status": "error", "description": str(exc)})

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:  # unix sockets have no peer address
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)


def claim_socket(path: Path) -> None:
    """Remove a stale socket file; refuse when another daemon is answering on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        with socket_address(path) as address:
            probe.connect(address)
    except OSError:
        path.unlink()  # nobody is listening: a stale file from a killed daemon
        return
    finally:
        probe.close()
    raise RunbookError(f"another doublezerod is already serving {path}", obj=str(path))


def release_socket(path: Path, inode: int) -> None:
    """Remove our socket file, unless a newer daemon has already replaced it."""
    try:
        if path.stat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass
