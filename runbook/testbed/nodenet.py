"""The local testbed's node network: the network namespace its host-network pods, Caddy and the cluster
stand-in run in, and the port mappings that reach it from the runner's loopback (kind's extraPortMappings).

    runner 127.0.0.1:P --(nat OUTPUT DNAT)--> veth --> node eth0 --(nat PREROUTING DNAT)--> node 127.0.0.1:P

Everything is kernel state: a veth pair with a /30 derived from the namespace's name, DNAT/SNAT rules in
two iptables chains of our own (jumped to from ``OUTPUT`` and ``POSTROUTING``), ``route_localnet`` on our
veth only (never the machine-wide setting). A service in the node bound to its loopback or to all
addresses is reachable at the same port on the runner's loopback; nothing else of the runner's network
is visible in the node, and the node's ``doublezero0`` and routes never touch the runner's namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from runbook.errors import CommandFailed, TestbedError
from runbook.testbed import netns

_POOL = ipaddress.ip_network("10.213.0.0/16")
_TIMEOUT = 15.0


def _run(argv: Sequence[str], *, what: str, ok: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    if proc.returncode != 0 and not ok:
        raise CommandFailed(what, command=" ".join(argv), rc=proc.returncode, stderr=proc.stderr)
    return proc


@dataclass(frozen=True)
class NodeNetwork:
    """The node network of the testbed whose network namespace is ``name``."""

    name: str

    @property
    def _tag(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:8]

    @property
    def veth(self) -> str:
        return f"rb{self._tag}"  # the runner's end (<= 15 chars); the node's end is eth0

    @property
    def chains(self) -> tuple[str, str]:
        return f"RBTB-{self._tag}-OUT", f"RBTB-{self._tag}-POST"

    @property
    def addresses(self) -> tuple[str, str]:
        """(runner side, node side) of the /30."""
        block = int(self._tag, 16) % (_POOL.num_addresses // 4)
        base = _POOL.network_address + block * 4
        return str(base + 1), str(base + 2)

    # -------------------------------------------------------------------------------- up / down
    def up(self, ports: Sequence[int]) -> None:
        if shutil.which("iptables") is None:
            raise TestbedError("the testbed's node network needs iptables (Debian package iptables; "
                               ".ci/setup installs it) to map the env's ports into the node")
        outer, inner = self.addresses
        netns.create(self.name)
        ns = ["ip", "netns", "exec", self.name]
        if netns.interface(None, self.veth) is None:
            _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.name],
                 what=f"create the node link of {self.name}")
        _run(["ip", "addr", "replace", f"{outer}/30", "dev", self.veth], what="address the runner's end")
        _run(["ip", "link", "set", self.veth, "up"], what="bring up the runner's end")
        _run(["ip", "-n", self.name, "addr", "replace", f"{inner}/30", "dev", "eth0"], what="address the node")
        for link in ("lo", "eth0"):
            _run(["ip", "-n", self.name, "link", "set", link, "up"], what=f"bring up {link} in the node")
        _run(["sysctl", "-qw", f"net.ipv4.conf.{self.veth}.route_localnet=1"], what="route_localnet on our veth")
        _run([*ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"], what="route_localnet in the node")
        rule = ["PREROUTING", "-d", f"{inner}/32", "-p", "tcp", "-j", "DNAT", "--to-destination", "127.0.0.1"]
        if _run([*ns, "iptables", "-t", "nat", "-C", *rule], what="", ok=True).returncode != 0:
            _run([*ns, "iptables", "-t", "nat", "-A", *rule], what="map the node's address to its loopback")
        out, post = self.chains
        self.down_rules()
        _run(["iptables", "-t", "nat", "-N", out], what=f"create chain {out}")
        _run(["iptables", "-t", "nat", "-N", post], what=f"create chain {post}")
        _run(["iptables", "-t", "nat", "-A", "OUTPUT", "-j", out], what=f"jump to {out}")
        _run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-j", post], what=f"jump to {post}")
        for port in sorted(set(ports)):
            _run(["iptables", "-t", "nat", "-A", out, "-d", "127.0.0.1/32", "-p", "tcp", "--dport", str(port),
                  "-j", "DNAT", "--to-destination", inner], what=f"map port {port} into the node")
        _run(["iptables", "-t", "nat", "-A", post, "-s", "127.0.0.1/32", "-d", f"{inner}/32", "-j", "SNAT",
              "--to-source", outer], what="return path from the node")

    def down_rules(self) -> None:
        """Remove our chains and the jumps to them (idempotent)."""
        out, post = self.chains
        for parent, chain in (("OUTPUT", out), ("POSTROUTING", post)):
            while _run(["iptables", "-t", "nat", "-D", parent, "-j", chain], what="", ok=True).returncode == 0:
                pass
            _run(["iptables", "-t", "nat", "-F", chain], what="", ok=True)
            _run(["iptables", "-t", "nat", "-X", chain], what="", ok=True)

    def down(self) -> None:
        if shutil.which("iptables") is not None:
            self.down_rules()
        _run(["ip", "link", "del", self.veth], what="", ok=True)  # also gone with the namespace

    def leftovers(self) -> list[str]:
        out = []
        if netns.interface(None, self.veth) is not None:
            out.append(f"network link {self.veth}")
        if shutil.which("iptables") is not None:
            listing = _run(["iptables", "-t", "nat", "-S"], what="list nat rules", ok=True).stdout
            out += [f"iptables chain {c}" for c in self.chains if f"-N {c}" in listing]
        return out
