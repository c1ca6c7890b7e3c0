"""The local testbed's kube-proxy: a Service's port on the host, forwarded at L4 to its ready endpoints.

Run under the testbed's supervisord (:func:`proxy_program`)::

    python -m runbook.testbed.kube_proxy --kube-dir <state>/kube \\
        --listen zai-proxy=127.0.0.1:30080 [--listen <service>[:<port>]=<host:port> ...] \\
        [--scrape-targets <state>/prometheus/pods.json]

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
from typing import Any

from runbook.errors import AdapterError, ConfigError
from runbook.testbed.kube_services import LocalServices

log = logging.getLogger("kube-proxy")

REFRESH = 0.05  # seconds between endpoint reads: the proxy's staleness bound plus one read
CONNECT_TIMEOUT = 5.0
CHUNK = 65536


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


def proxy_program(kube_dir: Path, listens: Mapping[str, str] | Sequence[str], scrape_targets: Path | None = None,
                  *, name: str = "kube-proxy", namespace: str | None = None,
                  refresh: float = REFRESH) -> tuple[str, list[str]]:
    """The supervisord program for this proxy: ``(name, argv)``. ``listens``: ``{"<service>[:<port>]":
    "host:port"}`` or ``["<service>=host:port", ...]``. Its environment needs this project on PYTHONPATH."""
    items = [f"{k}={v}" for k, v in listens.items()] if isinstance(listens, Mapping) else list(listens)
    argv = [sys.executable, "-m", "runbook.testbed.kube_proxy", "--kube-dir", str(kube_dir), "--refresh", str(refresh)]
    for item in items:
        Listen.parse(item)  # refused here, not in the program's log
        argv += ["--listen", item]
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

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
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
                 refresh: float = REFRESH) -> None:
        self.services = services
        self.forwarders = [Forwarder(services, lst) for lst in listens]
        self.scrape_targets = scrape_targets
        self.refresh = refresh
        self._targets: str | None = None

    async def tick(self) -> None:
        pods = self.services.pods()
        for f in self.forwarders:
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
            for f in self.forwarders:
                await f.close()
            log.info("stopped: %s", "; ".join(f"{f.listen}: {f.forwarded} forwarded, {f.refused} refused"
                                              for f in self.forwarders))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runbook.testbed.kube_proxy", description=__doc__.split("\n")[0])
    ap.add_argument("--kube-dir", type=Path, required=True, help="the local kubelet's store (<state>/kube)")
    ap.add_argument("--listen", action="append", default=[], metavar="SERVICE[:PORT]=HOST:PORT")
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
    if not listens and args.scrape_targets is None:
        ap.error("nothing to do: give --listen and/or --scrape-targets")
    proxy = KubeProxy(LocalServices(args.kube_dir, namespace=args.namespace), listens,
                      scrape_targets=args.scrape_targets, refresh=args.refresh)

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
