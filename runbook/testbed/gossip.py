"""Gossip between the stand-in validators, through the cluster stand-in, over real UDP: agave's ContactInfo
reduced to what the runbook's traps need, and agave's duplicate-instance rule.

Each validator binds its gossip port (UDP, plus a TCP listener on the same port, as agave's gossip socket
and ip-echo listener) and pushes its :class:`ContactInfo` to the UDP port of each ``--entrypoint`` every
``interval`` seconds. The cluster (:class:`ClusterGossip`) keeps one entry per identity, the one with the
larger ``(outset, wallclock)`` (agave's ``ContactInfo::overrides``), answers each push with what it knows
(a pull response), forwards a new instance's ContactInfo to every live node at once, and drops entries not
refreshed within ``timeout`` (its ``getClusterNodes``). One JSON object per datagram::

    validator -> entrypoint:  {"type": "push", "from": ContactInfo}
    cluster -> validator:     {"type": "pull_response", "nodes": [ContactInfo, ...]}   (the reply to a push)
                              {"type": "push", "from": ContactInfo}                    (a new instance)
    ContactInfo: {"pubkey", "outset" (µs since the epoch at instance start), "token" (random, per instance),
                  "wallclock" (ms), "gossip": "ip:port", "rpc": "ip:port" | null, "version", "feature_set",
                  "shred_version"}

An unspecified address (``0.0.0.0``) in a push is replaced by the datagram's source address, as agave learns
its public address from the entrypoint's ip-echo server.

The rule (agave ``gossip/src/contact_info.rs`` ``ContactInfo::check_duplicate``: same pubkey and a larger
``outset``; applied by ``gossip/src/cluster_info.rs`` to every pull response and push message, with
``should_check_duplicate_instance: true`` always in agave-validator): an instance that receives a ContactInfo
of its own identity with a later outset logs ``duplicate running instances of the same validator node:
<pubkey>`` and calls ``std::process::exit(1)`` (no graceful shutdown). :class:`ValidatorGossip` calls
``on_duplicate``; the validator does the exit (:mod:`runbook.testbed.validator_net`, which also binds the
sockets).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import base58

log = logging.getLogger("gossip")

# agave gossip/src/cluster_info.rs (GossipService's listen loop): the message and std::process::exit(1)
DUPLICATE_INSTANCE_MESSAGE = "duplicate running instances of the same validator node: {}"
EXIT_DUPLICATE_INSTANCE = 1
DEFAULT_INTERVAL = 0.5  # seconds between pushes (agave pushes every 100 ms; the testbed compresses time anyway)
DEFAULT_TIMEOUT = 5.0  # seconds without a push before the cluster forgets a node
MAX_DATAGRAM = 65507
_NODES_PER_DATAGRAM = 50


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class ContactInfo:
    pubkey: str
    outset: int  # µs since the epoch when this instance started: identifies duplicate running instances
    token: str  # random per instance (the stand-in's name for an instance in logs and tests)
    wallclock: int  # ms since the epoch when this value was made
    gossip: str  # "ip:port"
    rpc: str | None  # "ip:port", None with --private-rpc
    version: str
    feature_set: int
    shred_version: int = 0

    @classmethod
    def new(cls, pubkey: str, *, gossip: str, rpc: str | None, version: str, feature_set: int,
            shred_version: int = 0, outset: int | None = None) -> ContactInfo:
        return cls(pubkey=pubkey, outset=_now_us() if outset is None else outset, token=secrets.token_hex(8),
                   wallclock=time.time_ns() // 1_000_000, gossip=gossip, rpc=rpc, version=version,
                   feature_set=feature_set, shred_version=shred_version)

    def check_duplicate(self, other: ContactInfo) -> bool:
        """agave ``ContactInfo::check_duplicate``: ``other`` is a newer running instance of this node."""
        return self.pubkey == other.pubkey and self.outset < other.outset

    def overrides(self, other: ContactInfo) -> bool | None:
        """agave ``ContactInfo::overrides``: None for another pubkey, else whether (outset, wallclock) is larger
        (None when equal)."""
        if self.pubkey != other.pubkey:
            return None
        mine, theirs = (self.outset, self.wallclock), (other.outset, other.wallclock)
        return None if mine == theirs else mine > theirs

    def same_instance(self, other: ContactInfo) -> bool:
        return (self.pubkey, self.outset, self.token) == (other.pubkey, other.outset, other.token)

    def refreshed(self) -> ContactInfo:
        return replace(self, wallclock=time.time_ns() // 1_000_000)

    def with_source(self, ip: str) -> ContactInfo:
        """Unspecified addresses replaced by ``ip`` (the address the cluster saw the push come from)."""
        def fill(addr: str | None) -> str | None:
            if addr is None:
                return None
            host, port = split_host_port(addr)
            return f"{ip}:{port}" if host in ("", "0.0.0.0") else addr
        return replace(self, gossip=fill(self.gossip) or self.gossip, rpc=fill(self.rpc))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ContactInfo:
        if not isinstance(data, dict):
            raise ValueError("a ContactInfo is a JSON object")
        try:
            ci = cls(pubkey=str(data["pubkey"]), outset=int(data["outset"]), token=str(data["token"]),
                     wallclock=int(data["wallclock"]), gossip=str(data["gossip"]),
                     rpc=None if data.get("rpc") is None else str(data["rpc"]), version=str(data["version"]),
                     feature_set=int(data["feature_set"]), shred_version=int(data.get("shred_version", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed ContactInfo: {exc}") from exc
        if len(base58.b58decode(ci.pubkey)) != 32:
            raise ValueError(f"malformed ContactInfo: pubkey {ci.pubkey!r} is not 32 bytes")
        split_host_port(ci.gossip)
        return ci

    def rpc_contact_info(self) -> dict[str, Any]:
        """The element of JSON-RPC ``getClusterNodes`` (agave's RpcContactInfo) for this node."""
        pubsub = None
        if self.rpc is not None:
            host, port = split_host_port(self.rpc)
            pubsub = f"{host}:{port + 1}"  # agave's default: the RPC port + 1
        return {"pubkey": self.pubkey, "gossip": self.gossip, "tvu": None, "tpu": None, "tpuQuic": None,
                "tpuForwards": None, "tpuForwardsQuic": None, "tpuVote": None, "serveRepair": None,
                "rpc": self.rpc, "pubsub": pubsub, "version": self.version, "featureSet": self.feature_set,
                "shredVersion": self.shred_version}


def split_host_port(addr: str) -> tuple[str, int]:
    """``"host:port"`` (or a URL ``scheme://host:port[/...]``) -> (host, port)."""
    rest = addr.split("://", 1)[1] if "://" in addr else addr
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {addr!r}")
    return host.strip("[]"), int(port)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> tuple[str, list[ContactInfo]]:
    """(type, ContactInfos) of a datagram; ValueError when it is not one of ours."""
    try:
        msg = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "push":
        return kind, [ContactInfo.from_dict(msg.get("from"))]
    if kind == "pull_response" and isinstance(msg.get("nodes"), list):
        return kind, [ContactInfo.from_dict(n) for n in msg["nodes"]]
    raise ValueError(f"unknown gossip message type {kind!r}")


def pull_responses(nodes: list[ContactInfo]) -> Iterable[bytes]:
    """``nodes`` as one or more pull-response datagrams (an empty table is one empty response)."""
    for i in range(0, max(1, len(nodes)), _NODES_PER_DATAGRAM):
        yield encode({"type": "pull_response", "nodes": [n.to_dict() for n in nodes[i:i + _NODES_PER_DATAGRAM]]})


# --------------------------------------------------------------------------- the cluster's side


class GossipTable:
    """One ContactInfo per pubkey (the newest instance), with when it was last refreshed (monotonic)."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout, self.clock = timeout, clock
        self.entries: dict[str, tuple[ContactInfo, float]] = {}

    def insert(self, ci: ContactInfo) -> tuple[bool, ContactInfo | None]:
        """Store ``ci`` if it overrides what the table holds for its pubkey. Returns (a new instance was
        stored, the instance it replaced or None)."""
        now = self.clock()
        self.purge(now)
        current = self.entries.get(ci.pubkey)
        if current is None:
            self.entries[ci.pubkey] = (ci, now)
            return True, None
        if ci.overrides(current[0]) is not True:
            return False, None  # an older instance, or a replay: dropped (it learns of the newer one)
        self.entries[ci.pubkey] = (ci, now)
        if ci.same_instance(current[0]):
            return False, None
        return True, current[0]

    def purge(self, now: float | None = None) -> None:
        t = self.clock() if now is None else now
        for pubkey in [k for k, (_, seen) in self.entries.items() if t - seen > self.timeout]:
            log.info("gossip: %s stopped announcing (%.1fs): dropped", pubkey, t - self.entries[pubkey][1])
            del self.entries[pubkey]

    def live(self) -> list[ContactInfo]:
        self.purge()
        return [ci for ci, _ in self.entries.values()]

    def cluster_nodes(self) -> list[dict[str, Any]]:
        """JSON-RPC ``getClusterNodes``."""
        return [ci.rpc_contact_info() for ci in self.live()]


class ClusterGossip(asyncio.DatagramProtocol):
    """The entrypoint's gossip: keeps the table, answers pushes with pull responses, forwards new instances."""

    def __init__(self, table: GossipTable) -> None:
        self.table = table
        self.transport: asyncio.DatagramTransport | None = None
        self.rejected = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            kind, values = decode(data)
        except ValueError as exc:
            self.rejected += 1
            log.debug("gossip: dropped a datagram from %s: %s", addr, exc)
            return
        if kind != "push":
            return
        ci = values[0].with_source(str(addr[0]))
        new, replaced = self.table.insert(ci)
        if new:
            log.info("gossip: %s instance %s (outset %d) at gossip %s rpc %s, version %s%s", ci.pubkey, ci.token,
                     ci.outset, ci.gossip, ci.rpc, ci.version,
                     f"; replaces instance {replaced.token} at {replaced.gossip}" if replaced else "")
            targets = {split_host_port(n.gossip) for n in self.table.live() if not n.same_instance(ci)}
            if replaced is not None:
                targets.add(split_host_port(replaced.gossip))
            push = encode({"type": "push", "from": ci.to_dict()})
            for target in targets:
                self.send(push, target)
        for datagram in pull_responses(self.table.live()):
            self.send(datagram, (str(addr[0]), int(addr[1])))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable from a node that went away
        log.debug("gossip: %s", exc)


# --------------------------------------------------------------------------- the validator's side


class ValidatorGossip(asyncio.DatagramProtocol):
    """A validator's gossip: pushes ``me`` to the entrypoints, keeps the cluster's view, applies the rule."""

    def __init__(self, me: ContactInfo, entrypoints: list[str], *, interval: float,
                 on_duplicate: Callable[[ContactInfo], None], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.me, self.interval, self.on_duplicate, self.timeout = me, interval, on_duplicate, timeout
        self.entrypoints = [split_host_port(ep) for ep in entrypoints]
        self.view: dict[str, tuple[ContactInfo, float]] = {}  # pubkey -> (newest instance, when heard, monotonic)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            _, values = decode(data)
        except ValueError as exc:
            log.debug("gossip: dropped a datagram from %s: %s", addr, exc)
            return
        for ci in values:  # agave checks every value of a pull response or push before using any
            if self.me.check_duplicate(ci):
                self.on_duplicate(ci)
                return
        now = time.monotonic()
        for ci in values:
            held = self.view.get(ci.pubkey)
            if held is None or ci.overrides(held[0]) is not False:
                self.view[ci.pubkey] = (ci, now)

    def error_received(self, exc: Exception) -> None:  # the entrypoint is not up (yet)
        log.debug("gossip: %s", exc)

    def cluster_nodes(self) -> list[dict[str, Any]]:
        """What this node knows of the cluster (its ``getClusterNodes``): entries heard within ``timeout``."""
        now = time.monotonic()
        return [ci.rpc_contact_info() for ci, heard in self.view.values() if now - heard <= self.timeout]

    async def run(self) -> None:
        """Push every ``interval`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        resolved: dict[tuple[str, int], tuple[str, int]] = {}
        warned: set[tuple[str, int]] = set()
        while True:
            self.me = self.me.refreshed()
            push = encode({"type": "push", "from": self.me.to_dict()})
            for ep in self.entrypoints:
                if ep not in resolved:
                    try:
                        infos = await loop.getaddrinfo(ep[0], ep[1], family=socket.AF_INET, type=socket.SOCK_DGRAM)
                        resolved[ep] = infos[0][4][:2]
                    except OSError as exc:
                        if ep not in warned:
                            warned.add(ep)
                            log.warning("gossip: entrypoint %s:%d does not resolve: %s", ep[0], ep[1], exc)
                        continue
                if self.transport is not None:
                    self.transport.sendto(push, resolved[ep])
            await asyncio.sleep(self.interval)
