"""The gateway of seed 003's application "meta": the client that reads the common ConfigMap ``demo-common``
as the application's clients do, and routes to the colour it names::

    python -m runbook.testbed.meta_gateway [serve] --port 8080 [--bind 127.0.0.1] \\
        [--config /etc/meta/config.properties] [--upstream-port 8080] [--admin-port 8081] [--poll 0.5] \\
        [--timeout 10] [--version 1.0.0]
    python -m runbook.testbed.meta_gateway config [--admin HOST:PORT]     # the image's `meta-gateway config`

Serving:

- ``config.properties`` (``STORAGE_SERVICE_HOST=meta-storage-blue``, ``SCHEMA_SERVICE_HOST=meta-schema-blue``)
  is read at start and re-read when it changes: every ``--poll`` seconds the file's identity (its resolved
  path through the ConfigMap volume's ``..data`` symlink, inode, size, mtime) is compared, as a client
  watching a mounted ConfigMap does. A changed file that lacks a key or cannot be read keeps the config
  loaded before (the error is reported by the admin endpoint).
- ``/storage/<path>`` goes to ``http://$STORAGE_SERVICE_HOST:<upstream-port>/<path>``, ``/schema/<path>`` to
  ``$SCHEMA_SERVICE_HOST`` (query string, method and body passed on), the names resolved by ordinary DNS.
  The upstream's status, body and headers are passed on (hop-by-hop headers excepted), with
  ``X-Meta-Upstream: <host used>`` added. An upstream that cannot be resolved, connected to or read from is
  HTTP 502 whose body says why (``X-Meta-Upstream`` still set). Stale pooled connections: an idempotent
  request is retried once on a connection the upstream closed.
- ``GET /healthz``: ``ok`` once a config is loaded (503 ``no config: <why>`` before).
- The admin endpoint, loopback only: ``GET /config`` on ``<admin host>:--admin-port``, where the admin host is
  the serving address when that is a loopback address (the local testbed's pods each have one), else
  127.0.0.1 (a pod's own loopback). It answers the config this process has loaded, as JSON:
  ``{"storage", "schema", "loaded_at" (unix time), "reloads", "config" (the path), "error", "version"}``.
- SIGTERM finishes in-flight requests and exits 0.

``config`` (the CLI): GETs the admin endpoint of the gateway in this pod and prints its JSON on one line
(exit 0; exit 1 with the reason on stderr when the gateway does not answer). The address: ``--admin``, else
``$META_GATEWAY_ADMIN``, else ``$POD_IP`` if it is a loopback address, else 127.0.0.1, with port 8081 (the
default ``--admin-port``): what the gateway derives from its ``--bind $(POD_IP)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import httpx

from runbook.testbed.cluster import RequestExit, run_server
from runbook.testbed.meta_service import parse_properties

log = logging.getLogger("meta-gateway")

DEFAULT_CONFIG = "/etc/meta/config.properties"
ADMIN_PORT = 8081
KEYS = {"storage": "STORAGE_SERVICE_HOST", "schema": "SCHEMA_SERVICE_HOST"}
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
              b"transfer-encoding", b"upgrade", b"content-length", b"date", b"server"}
MAX_BODY = 1 << 20
_TEXT = b"text/plain; charset=utf-8"


@dataclass
class Loaded:
    """The config the process routes by (what ``meta-gateway config`` reports)."""

    storage: str = ""
    schema: str = ""
    loaded_at: float | None = None
    reloads: int = 0
    config: str = ""
    error: str | None = None
    version: str = ""


def admin_host(bind: str) -> str:
    """The admin endpoint's address: the serving address when it is a loopback one, else 127.0.0.1."""
    try:
        return bind if ipaddress.ip_address(bind).is_loopback else "127.0.0.1"
    except ValueError:
        return "127.0.0.1"


class ConfigWatcher:
    """Reads ``path`` and re-reads it whenever its identity changes (polled)."""

    def __init__(self, path: Path, loaded: Loaded) -> None:
        self.path, self.loaded = path, loaded
        self.seen: tuple[Any, ...] | None = None

    def identity(self) -> tuple[Any, ...] | None:
        try:
            st = self.path.stat()  # follows the volume's symlinks (config.properties -> ..data/...)
            return os.path.realpath(self.path), st.st_ino, st.st_size, st.st_mtime_ns
        except OSError:
            return None

    def poll(self) -> bool:
        """Re-read when changed; True when a new config was loaded."""
        ident = self.identity()
        if ident == self.seen and ident is not None:
            return False
        if ident is None:
            if self.seen is not None or self.loaded.error is None:
                self.loaded.error = f"{self.path} cannot be read"
                log.warning("%s", self.loaded.error)
            self.seen = None
            return False
        self.seen = ident
        try:
            props = parse_properties(self.path.read_text())
        except OSError as exc:
            self.loaded.error = f"{self.path}: {exc}"
            log.warning("%s", self.loaded.error)
            return False
        missing = [k for k in KEYS.values() if not props.get(k)]
        if missing:
            self.loaded.error = f"{self.path} has no {', '.join(missing)}: keeping the config loaded before"
            log.warning("%s", self.loaded.error)
            return False
        before = (self.loaded.storage, self.loaded.schema)
        self.loaded.storage, self.loaded.schema = props[KEYS["storage"]], props[KEYS["schema"]]
        self.loaded.loaded_at, self.loaded.error = time.time(), None
        self.loaded.reloads += 1
        log.info("config %s: storage=%s schema=%s (was %s)", "loaded" if self.loaded.reloads == 1 else "reloaded",
                 self.loaded.storage, self.loaded.schema, "/".join(before) if any(before) else "none")
        return True


class GatewayApp:
    """ASGI: ``/storage/...``, ``/schema/...``, ``/healthz`` (see the module's docstring)."""

    def __init__(self, loaded: Loaded, *, upstream_port: int = 8080, timeout: float = 10.0) -> None:
        self.loaded, self.upstream_port = loaded, upstream_port
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 2.0))
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # in the serving loop; trust_env off: no proxy from the environment
            self._client = httpx.AsyncClient(
                timeout=self.timeout, trust_env=False, follow_redirects=False,
                transport=httpx.AsyncHTTPTransport(retries=1, limits=httpx.Limits(max_connections=256,
                                                                                   max_keepalive_connections=64)))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/healthz":
            ok = self.loaded.loaded_at is not None
            await _send(send, 200 if ok else 503, b"ok\n" if ok else f"no config: {self.loaded.error}\n".encode())
            return
        component, _, rest = path.lstrip("/").partition("/")
        if component not in KEYS:
            await _send(send, 404, f"no route for {path}: /storage/... or /schema/...\n".encode())
            return
        host = getattr(self.loaded, component)
        if not host:
            await _send(send, 503, f"no config: {self.loaded.error}\n".encode())
            return
        await self.forward(scope, receive, send, host, "/" + rest)

    async def forward(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any],
                      host: str, path: str) -> None:
        method: str = scope["method"]
        query = scope.get("query_string", b"").decode(errors="replace")
        url = f"http://{host}:{self.upstream_port}{path}" + (f"?{query}" if query else "")
        body = await _read_body(receive)
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in HOP_BY_HOP | {b"host"}]
        used = [(b"x-meta-upstream", host.encode())]
        attempts = 2 if method in ("GET", "HEAD", "OPTIONS") else 1
        for attempt in range(attempts):
            try:
                r = await self.client.request(method, url, content=body, headers=headers)
                break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt + 1 < attempts:  # a pooled connection the upstream had closed: once more
                    continue
                await _send(send, 502, _reason(host, self.upstream_port, exc), used)
                return
            except httpx.HTTPError as exc:
                await _send(send, 502, _reason(host, self.upstream_port, exc), used)
                return
        # httpx has decoded the body: its content-encoding no longer applies
        passed = [(k, v) for k, v in r.headers.raw if k.lower() not in HOP_BY_HOP | {b"content-encoding"}]
        await _send(send, r.status_code, r.content, [*passed, *used], ctype=None, head=method == "HEAD")


def _reason(host: str, port: int, exc: Exception) -> bytes:
    """What went wrong, the causes included (httpx's "All connection attempts failed" wraps the errno)."""
    said: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(said) < 4:
        text = str(cause).strip()
        if text and text not in said:
            said.append(text)
        cause = cause.__cause__ or cause.__context__
    return f"bad gateway: upstream {host}:{port}: {type(exc).__name__}: {': '.join(said) or 'no reason'}\n".encode()


async def _read_body(receive: Callable[..., Any]) -> bytes:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)[:MAX_BODY]


async def _send(send: Callable[..., Any], status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None,
                *, ctype: bytes | None = _TEXT, head: bool = False) -> None:
    headers = [(b"content-length", str(len(body)).encode()), *(extra or [])]
    if ctype is not None:
        headers.insert(0, (b"content-type", ctype))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _admin(loaded: Loaded, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A one-request HTTP/1.0 answer: ``GET /config`` -> the loaded config."""
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        line = request.split(b"\r\n", 1)[0].split()
        ok = len(line) >= 2 and line[0] == b"GET" and line[1] == b"/config"
        body = json.dumps(asdict(loaded), sort_keys=True).encode() if ok else b"GET /config only\n"
        status = b"200 OK" if ok else b"404 Not Found"
        ctype = b"application/json" if ok else _TEXT
        writer.write(b"HTTP/1.0 " + status + b"\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        pass
    finally:
        writer.close()


def background_task(watcher: ConfigWatcher, *, admin: tuple[str, int], poll: float) -> Callable[[RequestExit], Any]:
    async def run(request_exit: RequestExit) -> None:
        server = await asyncio.start_server(lambda r, w: _admin(watcher.loaded, r, w), admin[0], admin[1])
        log.info("admin endpoint on http://%s:%d/config", *admin)
        try:
            while True:
                watcher.poll()
                await asyncio.sleep(poll)
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
    return run


def serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="runbook.testbed.meta_gateway", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config.properties (the common ConfigMap's key)")
    p.add_argument("--upstream-port", type=int, default=8080, help="the services' port")
    p.add_argument("--admin-port", type=int, default=ADMIN_PORT, help="the loopback admin endpoint's port")
    p.add_argument("--poll", type=float, default=0.5, metavar="SECONDS", help="how often the config is checked")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="an upstream request's timeout")
    p.add_argument("--version", default=os.environ.get("RUNBOOK_IMAGE_VERSION", ""),
                   help="the gateway's version (default: $RUNBOOK_IMAGE_VERSION)")
    args = p.parse_args(argv)
    loaded = Loaded(config=args.config, version=args.version)
    watcher = ConfigWatcher(Path(args.config), loaded)
    watcher.poll()  # before serving: a pod is ready with its config
    app = GatewayApp(loaded, upstream_port=args.upstream_port, timeout=args.timeout)
    admin = (admin_host(args.bind), args.admin_port)
    log.info("meta-gateway %s on %s:%d, config %s, upstream port %d", args.version or "(no version)", args.bind,
             args.port, args.config, args.upstream_port)
    code = run_server(cast(Any, app), host=args.bind, port=args.port, name="meta-gateway",
                      background=background_task(watcher, admin=admin, poll=args.poll), on_stop=app.close)
    log.info("exiting with status %d", code)
    return code


def default_admin(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    explicit = environ.get("META_GATEWAY_ADMIN")
    return explicit or f"{admin_host(environ.get('POD_IP', ''))}:{ADMIN_PORT}"


def config_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="meta-gateway config",
                                description="print the config the running gateway has loaded, as JSON")
    p.add_argument("--admin", default=default_admin(), metavar="HOST:PORT",
                   help="the gateway's admin endpoint (default: $META_GATEWAY_ADMIN, else $POD_IP if loopback, "
                        f"else 127.0.0.1; port {ADMIN_PORT})")
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    url = f"http://{args.admin}/config"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=args.timeout) as r:
            data = json.loads(r.read())
    except (OSError, ValueError) as exc:
        print(f"meta-gateway config: no answer from the gateway at {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["config"]:
        return config_cli(args[1:])
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    return serve(args[1:] if args[:1] == ["serve"] else args)


if __name__ == "__main__":
    sys.exit(main())
