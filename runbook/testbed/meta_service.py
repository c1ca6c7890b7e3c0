"""The stand-in storage and schema services of seed 003's application "meta", released blue-green::

    python -m runbook.testbed.meta_service --component storage|schema --port 8080 [--bind 127.0.0.1] \\
        [--config /etc/meta-service/service.properties] [--version 1.1.0] [--pod NAME] \\
        [--crash-after 0.5] [--warm-up 8]

- ``GET /health``: ``ok`` (HTTP 503 ``warming up`` for ``--warm-up`` seconds after start: the readiness
  probe keeps the pod out of its Service that long).
- ``GET /<anything else>``: 200, JSON ``{"component", "colour", "version", "pod", "path"}``. A query
  ``?delay=S`` (at most 10) answers S seconds later: an in-flight request for graceful-stop tests.
- Every answer carries ``X-Meta-Version`` and ``X-Meta-Colour`` (and ``X-Meta-Component``, ``X-Meta-Pod``).
  Other methods than GET/HEAD: 405.

The version is the image's: ``--version``, else ``$RUNBOOK_IMAGE_VERSION`` (the image sets it; the local
kubelet gives it from the images map). The colour is read once, at start, from the mounted
``service.properties`` (``COLOUR=blue``; its ConfigMap is the colour's ``meta-<component>-<colour>``); a
config that cannot be read is exit 2, as a misconfigured service fails. The pod is ``--pod``, else
``$POD_NAME`` (the downward API), else the host name.

Failure builds: ``--crash-after S`` exits 1 S seconds after start (CrashLoopBackOff on a kubelet);
``--warm-up S`` is a slow readiness. SIGTERM finishes in-flight requests and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

from runbook.testbed.cluster import RequestExit, run_server

log = logging.getLogger("meta-service")

COMPONENTS = ("storage", "schema")
DEFAULT_CONFIG = "/etc/meta-service/service.properties"
MAX_DELAY = 10.0
_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


def parse_properties(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (Java properties as the seed's services read them: ``#``/``!`` comments, blank
    lines, ``:`` as a separator too, whitespace around keys and values trimmed)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        key, value = (line[:cut], line[cut + 1:]) if cut >= 0 else (line, "")
        out[key.strip()] = value.strip()
    return out


class ServiceApp:
    """ASGI: the service's endpoints (see the module's docstring)."""

    def __init__(self, *, component: str, colour: str, version: str, pod: str, warm_up: float = 0.0) -> None:
        self.component, self.colour, self.version, self.pod = component, colour, version, pod
        self.ready_at = time.monotonic() + warm_up
        self.headers = [(b"x-meta-version", version.encode()), (b"x-meta-colour", colour.encode()),
                        (b"x-meta-component", component.encode()), (b"x-meta-pod", pod.encode())]

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await self._send(send, 405, f"method {method} not allowed\n".encode(), _TEXT, head=False,
                             extra=[(b"allow", b"GET, HEAD")])
        elif path == "/health":
            warming = time.monotonic() < self.ready_at
            await self._send(send, 503 if warming else 200, b"warming up\n" if warming else b"ok\n", _TEXT, head)
        else:
            query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
            try:
                delay = min(MAX_DELAY, max(0.0, float(query.get("delay", ["0"])[0])))
            except ValueError:
                await self._send(send, 400, b"delay must be a number of seconds\n", _TEXT, head)
                return
            if delay:
                log.info("answering %s in %gs (?delay)", path, delay)
                await asyncio.sleep(delay)
            body = {"component": self.component, "colour": self.colour, "version": self.version, "pod": self.pod,
                    "path": path}
            await self._send(send, 200, json.dumps(body).encode(), _JSON, head)

    async def _send(self, send: Callable[..., Any], status: int, body: bytes, ctype: bytes, head: bool,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *self.headers,
                   *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})


def crash_after(seconds: float) -> Callable[[RequestExit], Any]:
    async def crash(request_exit: RequestExit) -> None:
        await asyncio.sleep(seconds)
        log.error("crashing %gs after start (injected: --crash-after)", seconds)
        request_exit(1)
    return crash


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    p = argparse.ArgumentParser(prog="runbook.testbed.meta_service", description=__doc__.split("\n\n")[0])
    p.add_argument("--component", required=True, choices=COMPONENTS)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="service.properties (COLOUR=...), read at start")
    p.add_argument("--version", default=os.environ.get("RUNBOOK_IMAGE_VERSION", ""),
                   help="the image's version (default: $RUNBOOK_IMAGE_VERSION)")
    p.add_argument("--pod", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="the pod's name (default: $POD_NAME, the downward API's metadata.name)")
    p.add_argument("--crash-after", type=float, default=None, metavar="SECONDS", help="exit 1 this long after start")
    p.add_argument("--warm-up", type=float, default=0.0, metavar="SECONDS",
                   help="/health answers 503 this long after start")
    args = p.parse_args(argv)
    if not args.version:
        p.error("no version: --version or $RUNBOOK_IMAGE_VERSION")
    try:
        props = parse_properties(Path(args.config).read_text())
    except OSError as exc:
        log.error("cannot read the service's config %s: %s", args.config, exc)
        return 2
    colour = props.get("COLOUR", "")
    if not colour:
        log.error("%s has no COLOUR", args.config)
        return 2
    if props.get("COMPONENT", args.component) != args.component:
        log.warning("%s says COMPONENT=%s, this is %s", args.config, props["COMPONENT"], args.component)
    app = ServiceApp(component=args.component, colour=colour, version=args.version, pod=args.pod,
                     warm_up=args.warm_up)
    log.info("meta %s %s (%s) on %s:%d as pod %s%s%s", args.component, args.version, colour, args.bind, args.port,
             args.pod, f", warming up for {args.warm_up:g}s" if args.warm_up else "",
             f", crashing after {args.crash_after:g}s" if args.crash_after is not None else "")
    background = crash_after(args.crash_after) if args.crash_after is not None else None
    # run_server serves any ASGI app; its annotation names the two JSON-RPC apps it was written for
    code = run_server(cast(Any, app), host=args.bind, port=args.port, name="meta-service", background=background)
    log.info("exiting with status %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
