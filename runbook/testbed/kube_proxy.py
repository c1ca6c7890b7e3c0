"""The local testbed's kube-proxy: a Service's port on the host, forwarded at L4 to its ready endpoints.

Run under the testbed's supervisord (:func:`proxy_program`)::

    python -m runbook.testbed.kube_proxy --kube-dir <state>/kube \\
        --listen zai-proxy=127.0.0.1:30080 [--listen <service>[:<port>]=<host:port> ...] \\
        [--listens-file <state>/kube/kube-proxy-listens] [--cluster-ips] \\
        [--scrape-targets <state>/prometheus/pods.json]

What it serves: the fixed ``--listen`` host ports (a NodePort as kind maps it to the host); the host ports in
``--listens-file`` (same syntax, one a line, ``#`` comments), re-read every refresh, so a part of the testbed
adds a Service's host port to the one running kube-proxy (:func:`add_listens`, :func:`ensure_proxy`) without a
second one; and with ``--cluster-ips`` every ClusterIP/NodePort Service's ``clusterIP:port`` (TCP), from the
moment the Service has a clusterIP until it is deleted (headless Services are not proxied).

What it keeps of kube-proxy in iptables mode (on kind the same Service is a NodePort the kind config maps to
the host; the local env maps nodePort -> a loopback port the same way):

- each new TCP connection is sent to one of the Service's ready endpoints chosen at random (the ``statistic
  --mode random`` rules), as bytes both ways (DNAT: no HTTP parsing, no retry on another endpoint);
- the endpoints are re-read every ``--refresh`` seconds (0.05 by default; the informer's watch is as fresh);
- a connection stays with the pod it was sent to until either side closes (conntrack), also after the pod
  turns not-ready or terminating;
- a Service with no ready endpoint refuses new connections: its port is not listening, so a client's SYN gets
  a reset (kube-proxy's REJECT rule: the client sees "connection refused"); a connection accepted as the last
  endpoint went away, or sent to an endpoint that refuses it, is reset;
- ``--scrape-targets``: Prometheus's file_sd file of :meth:`LocalServices.scrape_targets`, rewritten atomically
  (a rename in its directory) whenever the targets change; file_sd watches it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.errors import AdapterError, ConfigError
from runbook.testbed.kube_services import HEADLESS, SERVED_TYPES, LocalServices

if TYPE_CHECKING:
    from runbook.testbed.supervisor import Supervisor

log = logging.getLogger("kube-proxy")

REFRESH = 0.05  # seconds between endpoint reads: the proxy's staleness bound plus one read
CONNECT_TIMEOUT = 5.0
CHUNK = 65536
LISTENS_FILE = "kube-proxy-listens"  # under the kube dir: host listens added while the proxy runs


@dataclass(frozen=True)
class Listen:
    """``<service>[:<port name or number>]=<host>:<port>``: where one Service port is served on the host."""

    service: str
    port: int | str | None  # the Service's port (name or number); None: its first
    host: str
    listen_port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        left, sep, right = text.partition("=")
        host, colon, port = right.rpartition(":")
        service, _, sport = left.partition(":")
        if not sep or not colon or not service or not host or not port.isdigit():
            raise ConfigError(f"--listen {text!r}: expected <service>[:<port>]=<host>:<port>")
        svc_port: int | str | None = int(sport) if sport.isdigit() else (sport or None)
        return cls(service, svc_port, host.strip("[]"), int(port))

    def __str__(self) -> str:
        which = f":{self.port}" if self.port is not None else ""
        return f"{self.service}{which}={self.host}:{self.listen_port}"


def _items(listens: Mapping[str, str] | Sequence[str]) -> list[str]:
    items = [f"{k}={v}" for k, v in listens.items()] if isinstance(listens, Mapping) else list(listens)
    for item in items:
        Listen.parse(item)  # refused here, not in the program's log
    return items


def listens_file(kube_dir: Path) -> Path:
    """Where the testbed's kube-proxy reads the host listens added while it runs."""
    return Path(kube_dir) / LISTENS_FILE


def read_listens(path: Path) -> list[Listen]:
    """The listens in a listens file (none when it is missing); a bad line raises ConfigError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [Listen.parse(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _edit_listens(kube_dir: Path, change: Any) -> None:
    import fcntl

    path = listens_file(kube_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(f".{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        items = [str(x) for x in read_listens(path)]
        write_atomically(path, "".join(f"{x}\n" for x in change(items)))


def add_listens(kube_dir: Path, listens: Mapping[str, str] | Sequence[str]) -> None:
    """Serve more Service ports on host ports (``{"meta-gateway:http": "127.0.0.1:18280"}``): written to the
    listens file, which the running kube-proxy re-reads every refresh (and a kube-proxy started later reads).
    Adding one already there converges."""
    new = [str(Listen.parse(x)) for x in _items(listens)]
    _edit_listens(kube_dir, lambda items: items + [x for x in new if x not in items])


def remove_listens(kube_dir: Path, listens: Mapping[str, str] | Sequence[str]) -> None:
    """Stop serving host ports added by :func:`add_listens` (the proxy closes them within a refresh)."""
    gone = {str(Listen.parse(x)) for x in _items(listens)}
    _edit_listens(kube_dir, lambda items: [x for x in items if x not in gone])


def ensure_proxy(supervisor: Supervisor, kube_dir: Path, listens: Mapping[str, str] | Sequence[str] = (),
                 *, name: str = "kube-proxy") -> None:
    """The testbed's one kube-proxy, serving ``listens`` besides every clusterIP: the listens are added to its
    listens file, and the program is started under ``supervisor`` unless one is defined there already (the
    canary part's, say: it reads the same file)."""
    from runbook.env import PROJECT_ROOT

    add_listens(kube_dir, listens)
    if supervisor.info(name) is None:
        program, argv = proxy_program(kube_dir, [], name=name)
        supervisor.add(program, argv, env={"PYTHONPATH": str(PROJECT_ROOT)})


def cluster_listens(services: LocalServices) -> list[Listen]:
    """Every ClusterIP/NodePort Service's TCP ports on its clusterIP (headless and unallocated ones: none)."""
    out = []
    for name in services.names():
        spec = (services.get(name) or {}).get("spec") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == HEADLESS or spec.get("type", "ClusterIP") not in SERVED_TYPES:
            continue
        out += [Listen(name, p.get("name") or p["port"], ip, int(p["port"])) for p in spec.get("ports") or []
                if p.get("protocol", "TCP") == "TCP"]
    return out


def proxy_program(kube_dir: Path, listens: Mapping[str, str] | Sequence[str], scrape_targets: Path | None = None,
                  *, name: str = "kube-proxy", namespace: str | None = None, refresh: float = REFRESH,
                  cluster_ips: bool = True) -> tuple[str, list[str]]:
    """The supervisord program for this proxy: ``(name, argv)``. ``listens``: ``{"<service>[:<port>]":
    "host:port"}`` or ``["<service>=host:port", ...]``; it also serves the listens file of ``kube_dir``
    (:func:`add_listens`) and, with ``cluster_ips``, every Service's clusterIP. Its environment needs this
    project on PYTHONPATH."""
    argv = [sys.executable, "-m", "runbook.testbed.kube_proxy", "--kube-dir", str(kube_dir), "--refresh", str(refresh),
            "--listens-file", str(listens_file(kube_dir))]
    for item in _items(listens):
        argv += ["--listen", item]
    if cluster_ips:
        argv.append("--cluster-ips")
    if scrape_targets is not None:
        argv += ["--scrape-targets", str(scrape_targets)]
    if namespace:
        argv += ["--namespace", namespace]
    return name, argv


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a REJECT rule or a closed port answers."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, then half-close ``dst`` (a FIN passes through DNAT); a reset on either side resets
    the other."""
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof() and not dst.is_closing():
            dst.write_eof()
    except (ConnectionError, OSError):
        _reset(dst)
        _reset(other)


class Forwarder:
    """One Service port served on one host address."""

    def __init__(self, services: LocalServices, listen: Listen) -> None:
        self.services = services
        self.listen = listen
        self.endpoints: list[str] = []
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()
        self.forwarded = 0
        self.refused = 0

    async def update(self, pods: list[dict[str, Any]]) -> None:
        try:
            eps = self.services.endpoints(self.listen.service, self.listen.port, pods=pods)
        except AdapterError as exc:  # the Service lost that port: as good as no endpoint
            if self.endpoints or self.server is not None:
                log.warning("%s: %s", self.listen, exc)
            eps = []
        if eps != self.endpoints:
            log.info("%s: endpoints %s", self.listen, ", ".join(eps) or "none")
        self.endpoints = eps
        if eps and self.server is None:
            try:
                self.server = await asyncio.start_server(self._handle, self.listen.host, self.listen.listen_port,
                                                         reuse_address=True)
                log.info("%s: listening", self.listen)
            except OSError as exc:
                log.error("%s: cannot listen: %s (retrying)", self.listen, exc)
        elif not eps and self.server is not None:
            self.server.close()  # new connections are refused by the kernel; open ones stay (conntrack)
            self.server = None
            log.info("%s: no ready endpoint: not listening (new connections refused)", self.listen)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            if task is not None:
                self.connections.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.endpoints:
            self.refused += 1
            _reset(writer)
            return
        endpoint = random.choice(self.endpoints)
        host, _, port = endpoint.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:  # the pod's answer to the SYN, passed on
            log.warning("%s: endpoint %s: %s", self.listen, endpoint, exc)
            self.refused += 1
            _reset(writer)
            return
        self.forwarded += 1
        try:
            await asyncio.gather(_pipe(reader, up_writer, writer), _pipe(up_reader, writer, up_writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    async def close(self, *, cancel: bool = True) -> None:
        """Stop listening; ``cancel``: also end the connections it forwards (else they run to their end)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if not cancel:
            return
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by a rename in its directory: a reader (file_sd) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class KubeProxy:
    def __init__(self, services: LocalServices, listens: Sequence[Listen], *, scrape_targets: Path | None = None,
                 refresh: float = REFRESH, listens_file: Path | None = None, cluster_ips: bool = False) -> None:
        self.services = services
        self.static = list(listens)
        self.listens_file = listens_file
        self.cluster_ips = cluster_ips
        self.forwarders: dict[Listen, Forwarder] = {}
        self.retired: list[Forwarder] = []  # a listen no longer wanted: its open connections stay (conntrack)
        self.scrape_targets = scrape_targets
        self.refresh = refresh
        self._targets: str | None = None
        self._file_error = ""

    def wanted(self) -> list[Listen]:
        out = list(self.static)
        if self.listens_file is not None:
            try:
                out += read_listens(self.listens_file)
                self._file_error = ""
            except (OSError, ConfigError) as exc:  # keeps serving what it served from the file
                if str(exc) != self._file_error:
                    log.error("%s: %s", self.listens_file, exc)
                self._file_error = str(exc)
                out += [lst for lst in self.forwarders if lst not in self.static]
        if self.cluster_ips:
            out += cluster_listens(self.services)
        return list(dict.fromkeys(out))

    async def tick(self) -> None:
        pods = self.services.pods()
        wanted = self.wanted()
        for lst in [x for x in self.forwarders if x not in wanted]:
            f = self.forwarders.pop(lst)
            await f.close(cancel=False)
            self.retired.append(f)
            log.info("%s: no longer served", lst)
        for lst in wanted:
            self.forwarders.setdefault(lst, Forwarder(self.services, lst))
        for f in self.forwarders.values():
            await f.update(pods)
        if self.scrape_targets is not None:
            text = json.dumps(self.services.scrape_targets(pods=pods), indent=1, sort_keys=True) + "\n"
            if text != self._targets:
                write_atomically(self.scrape_targets, text)
                self._targets = text
                log.info("scrape targets: %d pods -> %s", text.count('"pod"'), self.scrape_targets)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.refresh)
        finally:
            every = [*self.forwarders.values(), *self.retired]
            for f in every:
                await f.close()
            log.info("stopped: %s", "; ".join(f"{f.listen}: {f.forwarded} forwarded, {f.refused} refused"
                                              for f in every))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runbook.testbed.kube_proxy", description=__doc__.split("\n")[0])
    ap.add_argument("--kube-dir", type=Path, required=True, help="the local kubelet's store (<state>/kube)")
    ap.add_argument("--listen", action="append", default=[], metavar="SERVICE[:PORT]=HOST:PORT")
    ap.add_argument("--listens-file", type=Path, help="more --listen lines, one a line, re-read every refresh")
    ap.add_argument("--cluster-ips", action="store_true", help="serve every Service's clusterIP:port too")
    ap.add_argument("--scrape-targets", type=Path, help="Prometheus file_sd file to keep up to date")
    ap.add_argument("--namespace", default="default", help="the pods' namespace label in scrape targets")
    ap.add_argument("--refresh", type=float, default=REFRESH, help="seconds between endpoint reads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        listens = [Listen.parse(x) for x in args.listen]
    except ConfigError as exc:
        ap.error(str(exc))
    if not (listens or args.scrape_targets or args.listens_file or args.cluster_ips):
        ap.error("nothing to do: give --listen, --listens-file, --cluster-ips and/or --scrape-targets")
    proxy = KubeProxy(LocalServices(args.kube_dir, namespace=args.namespace), listens,
                      scrape_targets=args.scrape_targets, refresh=args.refresh, listens_file=args.listens_file,
                      cluster_ips=args.cluster_ips)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await proxy.run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
