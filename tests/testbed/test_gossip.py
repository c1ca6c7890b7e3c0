"""Gossip through the cluster stand-in and agave's duplicate-instance rule, with real processes, real UDP
gossip and real HTTP: two identities coexist; a newer instance of an identity makes the older exit 1 with
agave's message (blue started with green's identity kills green); the gossip port and the dynamic port range
are bound and checked as agave does; nodes that stop announcing leave getClusterNodes."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbook.testbed import gossip
from runbook.testbed import validator_net as net
from runbook.testbed.keypair import write_keypair
from runbook.wait import wait_for
from tests.testbed import test_validator
from tests.testbed.test_validator import Proc, free_port, make_ledger

spawn = test_validator.spawn  # the fixture: stand-ins as real processes on free loopback ports

pytestmark = pytest.mark.integration

INTERVAL, TIMEOUT = 0.1, 1.0


def rpc(url: str, method: str) -> Any:
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method}, timeout=5.0)
    r.raise_for_status()
    body = r.json()
    if "error" in body:
        raise RuntimeError(f"{method}: {body['error']}")
    return body["result"]


def nodes_of(proc: Proc) -> dict[str, dict[str, Any]]:
    """getClusterNodes of a cluster or validator, by gossip address."""
    return {n["gossip"]: n for n in rpc(proc.url, "getClusterNodes")}


@pytest.fixture
def cluster(spawn: Callable[..., Proc]) -> Proc:
    c = spawn("cluster", "--rate-limit", "0", "--gossip-interval", str(INTERVAL), "--gossip-timeout", str(TIMEOUT))
    c.wait_serving()
    return c


@pytest.fixture
def node(spawn: Callable[..., Proc], cluster: Proc, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """A validator joined to ``cluster`` with its own ledger, identity file and gossip port."""
    count = [0]

    def _node(identity: Path, *args: str, gossip_port: int | None = None) -> Proc:
        count[0] += 1
        ledger = tmp_path / f"ledger-{count[0]}"
        make_ledger(ledger, behind=0, size_mb=0.1)
        port_args = ["--gossip-port", str(gossip_port or free_port())] if "--dynamic-port-range" not in args else []
        return spawn("validator", "--version", "2.1.0", "--ledger", str(ledger), "--accounts",
                     str(tmp_path / f"accounts-{count[0]}"), "--identity", str(identity), "--entrypoint",
                     f"127.0.0.1:{cluster.port}", "--full-rpc-api", *port_args, *args)

    yield _node


def keypair(tmp_path: Path, name: str, byte: int) -> tuple[Path, str]:
    path = tmp_path / f"{name}.json"
    return path, write_keypair(path, bytes([byte]) * 32)


def wait_listed(proc: Proc, gossip_addr: str, *, by: Proc) -> dict[str, Any]:
    """Wait until ``by``'s getClusterNodes lists ``gossip_addr`` (``proc`` must stay alive meanwhile)."""
    listed = wait_for(proc.alive(lambda: nodes_of(by)), lambda n: gossip_addr in n, timeout=10, interval=0.05,
                      what=f"{gossip_addr} in getClusterNodes of {by.url}", tolerate=(httpx.HTTPError, RuntimeError))
    return listed[gossip_addr]


def test_two_identities_coexist_and_both_are_cluster_nodes(
    node: Callable[..., Proc], cluster: Proc, tmp_path: Path
) -> None:
    (green_id, green_key), (blue_id, blue_key) = keypair(tmp_path, "green", 1), keypair(tmp_path, "blue", 2)
    gp, bp = free_port(), free_port()
    green = node(green_id, gossip_port=gp)
    blue = node(blue_id, "--private-rpc", gossip_port=bp)
    g = wait_listed(green, f"127.0.0.1:{gp}", by=cluster)
    b = wait_listed(blue, f"127.0.0.1:{bp}", by=cluster)
    assert (g["pubkey"], g["rpc"], g["version"]) == (green_key, f"127.0.0.1:{green.port}", "2.1.0")
    assert (b["pubkey"], b["rpc"], b["pubsub"]) == (blue_key, None, None)  # --private-rpc: not published
    # each validator has heard of the other (what a duplicate check runs on), and both still run
    wait_listed(green, f"127.0.0.1:{bp}", by=green)
    wait_listed(blue, f"127.0.0.1:{gp}", by=blue)
    assert green.popen.poll() is None and blue.popen.poll() is None
    assert "duplicate running instances" not in green.output() + blue.output()
    assert {n["pubkey"] for n in nodes_of(cluster).values()} == {green_key, blue_key}


def test_blue_started_with_greens_identity_kills_green(
    node: Callable[..., Proc], cluster: Proc, tmp_path: Path
) -> None:
    """The trap: agave's gossip makes the OLDER instance of an identity exit, so a blue started with green's
    identity kills green, the one serving traffic. The stand-in does what agave does: message, exit 1."""
    green_id, key = keypair(tmp_path, "green", 1)
    gp, bp = free_port(), free_port()
    green = node(green_id, gossip_port=gp)
    green.wait_serving()
    wait_listed(green, f"127.0.0.1:{gp}", by=cluster)
    blue = node(green_id, gossip_port=bp)  # green's identity file: the mistake
    assert green.wait_exit(timeout=10) == gossip.EXIT_DUPLICATE_INSTANCE
    assert f"duplicate running instances of the same validator node: {key}" in green.output()
    assert f"127.0.0.1:{bp}" in green.output()  # it says where the newer instance runs
    blue.wait_serving()
    listed = wait_listed(blue, f"127.0.0.1:{bp}", by=cluster)
    assert listed["pubkey"] == key and f"127.0.0.1:{gp}" not in nodes_of(cluster)  # one entry: the newer
    assert blue.popen.poll() is None and "duplicate running instances" not in blue.output()
    assert rpc(blue.url, "getIdentity") == {"identity": key}


def test_a_node_that_stops_announcing_leaves_get_cluster_nodes(
    node: Callable[..., Proc], cluster: Proc, tmp_path: Path
) -> None:
    ident, _ = keypair(tmp_path, "green", 1)
    gp = free_port()
    green = node(ident, gossip_port=gp)
    wait_listed(green, f"127.0.0.1:{gp}", by=cluster)
    assert green.stop() == 0
    wait_for(lambda: nodes_of(cluster), lambda n: f"127.0.0.1:{gp}" not in n, timeout=TIMEOUT + 5, interval=0.1,
             what="the stopped node to leave getClusterNodes")


def test_a_gossip_port_in_use_is_refused_like_agave(node: Callable[..., Proc], tmp_path: Path) -> None:
    ident, _ = keypair(tmp_path, "green", 1)
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # agave binds both: either taken is fatal
        with socket.socket(socket.AF_INET, kind) as holder:
            holder.bind(("0.0.0.0", 0))
            if kind == socket.SOCK_STREAM:
                holder.listen()
            port = holder.getsockname()[1]
            proc = node(ident, gossip_port=port)
            assert proc.wait_exit() == net.EXIT_BIND
        assert f"gossip_addr bind_to port {port}: Address already in use (os error 98)" in proc.output()


def test_the_dynamic_port_range_is_checked_and_bound(
    node: Callable[..., Proc], cluster: Proc, tmp_path: Path
) -> None:
    ident, _ = keypair(tmp_path, "green", 1)
    other, _ = keypair(tmp_path, "blue", 2)
    width = net.minimum_port_range_width((2, 1, 0))  # these validators are 2.1.0: agave 2.x's minimum
    for bad, says in (("9000-9010", f"Port range is too small.  Try --dynamic-port-range 9000-{9000 + width}"),
                      ("9000", "Invalid port range"), ("9100-9000", "Invalid port range")):
        proc = node(ident, "--dynamic-port-range", bad)
        assert proc.wait_exit() == 2 and says in proc.output(), proc.output()
    lo = free_port_block(width + 2)
    rng = f"{lo}-{lo + width + 2}"
    inside = node(ident, "--dynamic-port-range", rng, "--gossip-port", str(lo + 3))
    assert inside.wait_exit() == 2 and f"contains --gossip-port {lo + 3}" in inside.output()
    # no --gossip-port: the first free port of the range (UDP + TCP), then the dynamic sockets after it
    green = node(ident, "--dynamic-port-range", rng)
    wait_listed(green, f"127.0.0.1:{lo}", by=cluster)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError):
        probe.bind(("127.0.0.1", lo + net.dynamic_sockets((2, 1, 0))))  # held by the validator
    # a second validator on the same minimal range finds too few ports, as agave would
    blue = node(other, "--dynamic-port-range", rng, "--gossip-port", str(free_port()))
    assert blue.wait_exit() == net.EXIT_BIND and "--dynamic-port-range" in blue.output()
    assert green.popen.poll() is None


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive ports free for UDP and TCP on all addresses (searched upward)."""
    for lo in range(30000, 60000, n):
        held: list[tuple[socket.socket, socket.socket]] = []
        try:
            for p in range(lo, lo + n):
                held.append(net.bind_gossip("0.0.0.0", p))
        except net.GossipBindError:
            continue
        finally:
            for udp, tcp in held:
                udp.close()
                tcp.close()
        return lo
    raise AssertionError("no free port block")
