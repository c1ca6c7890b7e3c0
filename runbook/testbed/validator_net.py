"""The stand-in validator's network side: the sockets it binds before it starts (gossip UDP + TCP listener,
dynamic ports), its gossip with the entrypoints (:mod:`runbook.testbed.gossip`) and agave's exit on a newer
instance of its identity, and ``--log``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from runbook.errors import ConfigError
from runbook.testbed import chain, gossip

log = logging.getLogger("validator")

# agave net-utils: a panic ("gossip_addr bind_to port P: <io error>"); agave-validator's panic hook
# (solana_metrics::set_panic_hook) then exits 1
EXIT_BIND = 1
# agave net-utils MINIMUM_VALIDATOR_PORT_RANGE_WIDTH (``--dynamic-port-range`` narrower than this is refused):
# 17 in 2.x (raised by one for vote over QUIC, anza-xyz/agave#3556, Nov 2024: 2.2 has it; taken for all of 2.x),
# 25 from v3.0.0 (it binds every port in the range, client ports too), 26 from v4.1.0 (CHANGELOG.md)
MINIMUM_VALIDATOR_PORT_RANGE_WIDTH = 25


def minimum_port_range_width(version: tuple[int, int, int]) -> int:
    if version < (3, 0, 0):
        return 17
    return MINIMUM_VALIDATOR_PORT_RANGE_WIDTH if version < (4, 1, 0) else 26


def dynamic_sockets(version: tuple[int, int, int]) -> int:
    """UDP sockets the stand-in takes from ``--dynamic-port-range``, standing in for agave's TVU/TPU/repair/...
    sockets: about the minimum width's worth (what the minimum is for), so two validators cannot share a range."""
    return minimum_port_range_width(version) - 1


class GossipBindError(ConfigError):
    """The gossip port (or a dynamic port) could not be bound; the message reads like agave's panic."""


def _bind_error(port: int, exc: OSError) -> GossipBindError:
    code = exc.errno or 0
    return GossipBindError(f"gossip_addr bind_to port {port}: {os.strerror(code)} (os error {code})")


def bind_gossip(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket on ``host:port`` (agave's ``bind_common``); port 0 picks a port
    free for both. Raises :class:`GossipBindError` worded as agave's panic (``gossip_addr bind_to port 8001:
    Address already in use (os error 98)``)."""
    for _ in range(1 if port else 20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port))
        except OSError as exc:
            udp.close()
            raise _bind_error(port, exc) from exc
        chosen = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind((host, chosen))
            tcp.listen(16)
        except OSError as exc:
            udp.close()
            tcp.close()
            if port or exc.errno != errno.EADDRINUSE:
                raise _bind_error(chosen, exc) from exc
            continue  # an ephemeral UDP port whose TCP twin is taken: try another
        return udp, tcp
    raise GossipBindError(f"gossip_addr bind_to port 0: no port free for both UDP and TCP on {host}")


def bind_gossip_in_range(host: str, lo: int, hi: int) -> tuple[socket.socket, socket.socket]:
    """agave's ``bind_common_in_range``: the first port in [lo, hi) free for both UDP and TCP."""
    for port in range(lo, hi):
        with contextlib.suppress(GossipBindError):
            return bind_gossip(host, port)
    raise GossipBindError(f"Failed to bind: no port in {lo}-{hi} free for both UDP and TCP on {host}")


def bind_dynamic(host: str, lo: int, hi: int, count: int) -> list[socket.socket]:
    """``count`` UDP sockets on the first free ports of [lo, hi), as agave's ``bind_in_range`` takes its
    TVU/TPU/repair sockets. Raises :class:`GossipBindError` when the range runs out."""
    taken: list[socket.socket] = []
    for port in range(lo, hi):
        if len(taken) == count:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            continue
        taken.append(s)
    if len(taken) < count:
        for s in taken:
            s.close()
        raise GossipBindError(f"multi_bind_in_range: only {len(taken)} of the {count} UDP ports this validator "
                              f"needs are free in --dynamic-port-range {lo}-{hi}")
    return taken


def parse_port_range(text: str, *, min_width: int = MINIMUM_VALIDATOR_PORT_RANGE_WIDTH) -> tuple[int, int]:
    """agave's ``--dynamic-port-range MIN_PORT-MAX_PORT`` check (validator/src/cli.rs ``port_range_validator``):
    a half-open range [lo, hi) at least ``min_width`` wide."""
    lo_s, sep, hi_s = text.partition("-")
    if not sep or not lo_s.isdigit() or not hi_s.isdigit() or int(lo_s) > int(hi_s) or int(hi_s) > 65535:
        raise ValueError("Invalid port range")
    lo, hi = int(lo_s), int(hi_s)
    if hi - lo < min_width:
        raise ValueError(f"Port range is too small.  Try --dynamic-port-range {lo}-{lo + min_width}")
    return lo, hi


class HasGossip(Protocol):
    gossip: gossip.ValidatorGossip | None


def fetch_genesis(entrypoints: list[str], *, timeout: float = 60.0) -> dict[str, Any]:
    """What the cluster behind ``entrypoints`` (the first that answers) tells a joining validator: its chain
    parameters, genesis hash and gossip timing. Retried until ``timeout``: a validator started before its
    cluster's entrypoint waits for it, as agave does."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "getGenesisParams"}
    last = "no answer"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ep in entrypoints:
            url = ep if "://" in ep else f"http://{ep}"
            try:
                r = httpx.post(url, json=body, timeout=2.0)
                r.raise_for_status()
                result = r.json()["result"]
                chain.ChainParams.from_dict(result)
                return dict(result)
            except (httpx.HTTPError, KeyError, ValueError, TypeError, ConfigError) as exc:
                last = f"{ep}: {exc}"
        log.info("waiting for the cluster entrypoint (%s)", last)
        time.sleep(1.0)
    raise ConfigError(f"no entrypoint answered within {timeout:.0f}s: {last}")


def join_cluster(entrypoints: list[str], *, timeout: float = 60.0) -> chain.ChainParams:
    """The chain parameters of the cluster behind ``entrypoints`` (see :func:`fetch_genesis`)."""
    return chain.ChainParams.from_dict(fetch_genesis(entrypoints, timeout=timeout))


def redirect_log(target: str | None) -> None:
    """agave's ``--log PATH``: stderr (every log line, uvicorn's too) appended to PATH; ``-`` keeps stderr."""
    if target in (None, "-"):
        return
    assert target is not None
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


@dataclass
class Sockets:
    """What the validator binds before it starts: gossip (UDP + TCP listener) and its dynamic ports."""

    gossip_udp: socket.socket | None = None
    gossip_tcp: socket.socket | None = None
    dynamic: list[socket.socket] | None = None

    @property
    def gossip_port(self) -> int | None:
        return None if self.gossip_udp is None else int(self.gossip_udp.getsockname()[1])


def bind_sockets(args: argparse.Namespace) -> Sockets:
    """Bind the gossip port (``--gossip-port``, else the first free one of ``--dynamic-port-range``, else any
    when there is an entrypoint to gossip with) and the dynamic ports. Raises GossipBindError."""
    out = Sockets()
    rng = args.dynamic_port_range
    if args.gossip_port is not None:
        out.gossip_udp, out.gossip_tcp = bind_gossip(args.bind_address, args.gossip_port)
    elif rng is not None:
        out.gossip_udp, out.gossip_tcp = bind_gossip_in_range(args.bind_address, *rng)
    elif args.entrypoint:
        out.gossip_udp, out.gossip_tcp = bind_gossip(args.bind_address, 0)
    if rng is not None:
        lo, hi = rng
        out.dynamic = bind_dynamic(args.bind_address, lo, hi, count=dynamic_sockets(chain.parse_version(args.version)))
    return out


async def _ip_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The gossip port's TCP listener (agave's ip-echo server): answers the caller's address, then closes."""
    peer = writer.get_extra_info("peername") or ("?", 0)
    with contextlib.suppress(OSError):
        writer.write(f"{peer[0]}\n".encode())
        await writer.drain()
    writer.close()


def exit_duplicate(me: str, newer: gossip.ContactInfo) -> None:
    """agave gossip/src/cluster_info.rs: log the message and ``std::process::exit(1)``: no graceful shutdown."""
    log.info("gossip: a newer instance of this identity runs at %s (instance %s, outset %d, version %s)",
             newer.gossip, newer.token, newer.outset, newer.version)
    log.error(gossip.DUPLICATE_INSTANCE_MESSAGE.format(me))
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(gossip.EXIT_DUPLICATE_INSTANCE)


async def run_gossip(node: HasGossip, sockets: Sockets, me: gossip.ContactInfo | None, entrypoints: list[str],
                     interval: float, timeout: float) -> None:
    """Serve the gossip sockets (and push to the entrypoints) until cancelled."""
    loop = asyncio.get_running_loop()
    closers: list[Any] = []
    try:
        if sockets.gossip_tcp is not None:
            server = await asyncio.start_server(_ip_echo, sock=sockets.gossip_tcp)
            closers.append(server)
        if sockets.gossip_udp is not None and me is not None and entrypoints:
            proto = gossip.ValidatorGossip(me, entrypoints, interval=interval, timeout=timeout,
                                           on_duplicate=lambda newer: exit_duplicate(me.pubkey, newer))
            transport, _ = await loop.create_datagram_endpoint(lambda: proto, sock=sockets.gossip_udp)
            closers.append(transport)
            node.gossip = proto
            log.info("gossip: pushing to %s every %gs as instance %s (outset %d)", ", ".join(entrypoints), interval,
                     me.token, me.outset)
            await proto.run()
        else:
            await asyncio.Event().wait()
    finally:
        for c in closers:
            c.close()


def contact_info(args: argparse.Namespace, sockets: Sockets, genesis: dict[str, Any] | None,
                 outset: int) -> gossip.ContactInfo | None:
    """What this instance announces (None without a gossip socket). An unspecified bind address is announced
    as 0.0.0.0, which the cluster replaces by the address it sees (agave learns it from the ip-echo server);
    the RPC address has the gossip address's IP, as agave's, and is left out with ``--private-rpc``."""
    if sockets.gossip_port is None:
        return None
    host = args.bind_address or "0.0.0.0"
    return gossip.ContactInfo.new(
        args.identity, gossip=f"{host}:{sockets.gossip_port}",
        rpc=None if args.private_rpc else f"{host}:{args.rpc_port}",
        version=".".join(map(str, chain.parse_version(args.version))), feature_set=chain.feature_set(args.version),
        shred_version=int((genesis or {}).get("shred_version", 0)), outset=outset)
