"""The testbed's network namespace: where the stand-in ``doublezero0`` tunnel and its routes live.

On biscayne, doublezerod builds a GRE tunnel (``doublezero0``) and installs BGP-learned routes into the
kernel; both outlive the daemon. This kernel has no ``gre`` or ``dummy`` link type, so the stand-in is a
veth pair created entirely inside a namespace owned by the testbed:

    netns <name>
      doublezero0   169.254.0.1/31   the "tunnel" (what the runbook checks)
      dz-device0    (no address)     its veth peer, standing in for the DZ switch; keeps the carrier up
      routes        <prefix> via 169.254.0.0 dev doublezero0 proto bgp   (BGP-learned /32s)

Addresses and prefixes are restricted to link-local and documentation ranges, so nothing here can ever
shadow a routable destination. Everything is done with ``ip`` (iproute2) and explicit argv; a failing
command raises :class:`~runbook.errors.CommandFailed` with the command line and its stderr.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from runbook.errors import CommandFailed, ConfigError

DEFAULT_INTERFACE = "doublezero0"
DEFAULT_PEER = "dz-device0"
DEFAULT_ADDRESS = "169.254.0.1/31"
DEFAULT_GATEWAY = "169.254.0.0"  # the switch side of the /31: next hop of every route
ROUTE_PROTO = "bgp"

# Only these ranges may be used for addresses and routes: link-local and the RFC 5737 documentation nets.
SAFE_RANGES = tuple(
    ipaddress.IPv4Network(n) for n in ("169.254.0.0/16", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)

_NS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ - 1 = 15 characters
_TIMEOUT = 10.0
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class Interface:
    """A link inside a namespace, as the kernel reports it."""

    netns: str | None  # None: the namespace the caller runs in
    name: str
    ifindex: int
    up: bool
    addresses: tuple[str, ...]  # CIDR, IPv4 only
    created: bool = False  # True when ensure_interface created it on this call


class NetAdmin(NamedTuple):
    """Whether this process can create network namespaces, and if not, why.

    Unpacks as ``ok, reason = has_net_admin()`` and is truthy only when ``ok``.
    """

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


# --------------------------------------------------------------------------- commands


def _run(argv: Sequence[str], *, what: str, ok_if: str | None = None) -> str:
    """Run ``argv``; return stdout. ``ok_if``: a stderr fragment that counts as success (idempotence)."""
    command = shlex.join(argv)
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise CommandFailed(what, command=command, rc=127, stderr=f"{argv[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(what, command=command, rc=-1, stderr=f"timed out after {_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        if ok_if is not None and ok_if in proc.stderr:
            return proc.stdout
        raise CommandFailed(what, command=command, rc=proc.returncode, stderr=proc.stderr, obj=_obj(argv))
    return proc.stdout


def _ip(ns: str | None, *flags: str) -> list[str]:
    """``ip [flags] -n NS`` for a named namespace; ``ip [flags]`` for the caller's own (``ns`` None)."""
    return ["ip", *flags, "-n", _check_ns(ns)] if ns is not None else ["ip", *flags]


def _obj(argv: Sequence[str]) -> str | None:
    return f"netns {argv[argv.index('-n') + 1]}" if "-n" in argv else None


def _json(out: str) -> list[dict[str, Any]]:
    out = out.strip()
    if not out:
        return []
    data = json.loads(out)
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _check_ns(name: str) -> str:
    if not _NS_NAME.match(name):
        raise ConfigError(f"invalid network namespace name {name!r}", obj=name)
    return name


def _check_if(name: str) -> str:
    if not _IF_NAME.match(name):
        raise ConfigError(f"invalid interface name {name!r} (at most 15 of [A-Za-z0-9_.-])", obj=name)
    return name


def _safe_network(value: str, *, strict: bool) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(value, strict=strict)
    except ValueError as exc:
        raise ConfigError(f"not an IP prefix: {value!r} ({exc})") from None
    if not isinstance(net, ipaddress.IPv4Network) or not any(net.subnet_of(r) for r in SAFE_RANGES):
        allowed = ", ".join(str(r) for r in SAFE_RANGES)
        raise ConfigError(f"{value} is outside the testbed's safe ranges ({allowed})", obj=value)
    return net


def _normalise(prefix: str) -> str:
    """``192.0.2.10`` -> ``192.0.2.10/32`` (ip prints host routes without a length)."""
    try:
        return str(ipaddress.ip_network(prefix, strict=False))
    except ValueError:
        return prefix  # "default" and friends


# --------------------------------------------------------------------------- namespaces


def list_names() -> list[str]:
    """Names of the network namespaces ``ip netns`` knows."""
    return [str(d["name"]) for d in _json(_run(["ip", "-j", "netns", "list"], what="list namespaces"))]


def exists(name: str) -> bool:
    return _check_ns(name) in list_names()


def create(name: str) -> bool:
    """Create the namespace (with ``lo`` up) if missing. True when it was created by this call."""
    _check_ns(name)
    if exists(name):
        return False
    _run(["ip", "netns", "add", name], what=f"create netns {name}", ok_if="File exists")
    _run(["ip", "-n", name, "link", "set", "dev", "lo", "up"], what=f"bring up lo in netns {name}")
    return True


def delete(name: str) -> bool:
    """Delete the namespace and every link in it. True when it existed."""
    _check_ns(name)
    if not exists(name):
        return False
    _run(["ip", "netns", "del", name], what=f"delete netns {name}", ok_if="No such file")
    return True


@functools.cache
def net_admin() -> NetAdmin:
    """Can this process create network namespaces? Checked once per process (capabilities, then a probe)."""
    if shutil.which("ip") is None:
        return NetAdmin(False, "iproute2's `ip` is not on PATH")
    caps = _effective_caps()
    if caps is not None:
        needed = (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
        missing = [n for n, bit in needed if not caps >> bit & 1]
        if missing:
            return NetAdmin(
                False, f"missing {', '.join(missing)} (creating a network namespace needs both; run as root)"
            )
    probe = f"rbprobe-{os.getpid()}"
    try:
        create(probe)
    except CommandFailed as exc:
        return NetAdmin(False, f"cannot create a network namespace: {exc.stderr.strip() or exc}")
    finally:
        with contextlib.suppress(CommandFailed):
            delete(probe)
    return NetAdmin(True)


def has_net_admin() -> NetAdmin:
    """``ok, reason = has_net_admin()``, or ``if has_net_admin(): ...`` (cached; see :func:`net_admin`)."""
    return net_admin()


def net_admin_reason() -> str:
    """Why network-namespace checks cannot run here ('' when they can)."""
    return net_admin().reason


def _effective_caps() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        return None
    return None


# --------------------------------------------------------------------------- links


def interface(ns: str | None, name: str) -> Interface | None:
    """The link ``name`` in ``ns`` as the kernel reports it, or None when it does not exist."""
    _check_if(name)
    argv = [*_ip(ns, "-j"), "addr", "show", "dev", name]
    out = _run(argv, what=f"show {name} in netns {ns}", ok_if="does not exist")
    links = _json(out)
    if not links:
        return None
    link = links[0]
    addrs = tuple(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("family") == "inet")
    up = "UP" in link.get("flags", []) and link.get("operstate") in ("UP", "UNKNOWN")
    return Interface(netns=ns, name=name, ifindex=int(link["ifindex"]), up=up, addresses=addrs)


def ensure_interface(
    ns: str | None,
    name: str = DEFAULT_INTERFACE,
    *,
    address: str = DEFAULT_ADDRESS,
    peer: str = DEFAULT_PEER,
    peer_address: str | None = None,
) -> Interface:
    """Converge: a veth pair ``name``/``peer`` in ``ns`` (created with the namespace if that is missing),
    both up, ``name`` holding ``address`` (and ``peer`` holding ``peer_address`` when one is given).

    An existing link is never re-created (its ifindex, and the routes through it, survive); only what is
    missing is added. Safe to call from two processes at once.
    """
    _check_if(name)
    _check_if(peer)
    _safe_network(address, strict=False)
    if peer_address is not None:
        _safe_network(peer_address, strict=False)
    if ns is not None:
        create(ns)
    created = False
    if interface(ns, name) is None:
        _run(
            [*_ip(ns), "link", "add", name, "type", "veth", "peer", "name", peer],
            what=f"create {name} in netns {ns}",
            ok_if="File exists",
        )
        created = True
    for link, cidr in ((peer, peer_address), (name, address)):
        current = interface(ns, link)
        if current is None:
            raise CommandFailed(f"{link} vanished from netns {ns}", command=f"ip -n {ns} link show dev {link}", rc=1)
        if cidr is not None and cidr not in current.addresses:
            _run(
                [*_ip(ns), "addr", "add", cidr, "dev", link],
                what=f"address {link} in netns {ns}",
                ok_if="File exists",
            )
        if not current.up:
            _run([*_ip(ns), "link", "set", "dev", link, "up"], what=f"bring up {link} in netns {ns}")
    final = interface(ns, name)
    if final is None:
        raise CommandFailed(f"{name} vanished from netns {ns}", command=f"ip -n {ns} link show dev {name}", rc=1)
    return Interface(
        netns=final.netns,
        name=final.name,
        ifindex=final.ifindex,
        up=final.up,
        addresses=final.addresses,
        created=created,
    )


# --------------------------------------------------------------------------- routes


def routes(ns: str | None, iface: str) -> list[str]:
    """Destination prefixes routed through ``iface`` in ``ns`` (``ip -n NS route show dev IFACE``),
    normalised to CIDR, in kernel order. Includes the interface's connected prefix."""
    return [_normalise(str(r["dst"])) for r in route_table(ns, iface)]


def route_table(ns: str | None, iface: str) -> list[dict[str, Any]]:
    """The kernel's JSON view of the routes through ``iface`` (dst, gateway, protocol, scope, flags)."""
    _check_if(iface)
    argv = [*_ip(ns, "-j"), "route", "show", "dev", iface]
    return _json(_run(argv, what=f"list routes via {iface} in netns {ns}"))


def ensure_routes(
    ns: str | None,
    iface: str,
    prefixes: Iterable[str],
    *,
    via: str | None = DEFAULT_GATEWAY,
    proto: str = ROUTE_PROTO,
) -> list[str]:
    """Converge: a route for each prefix through ``iface`` (``via`` the peer). Returns the prefixes added.

    Existing routes are left alone, so re-running after a daemon restart changes nothing in the kernel.
    """
    wanted = [str(_safe_network(p, strict=True)) for p in prefixes]
    if via is not None:
        _safe_network(via, strict=False)
    present = set(routes(ns, iface))
    added: list[str] = []
    for prefix in wanted:
        if prefix in present:
            continue
        argv = [*_ip(ns), "route", "add", prefix]
        argv += ["via", via] if via is not None else []
        argv += ["dev", iface, "proto", proto]
        _run(argv, what=f"add route {prefix} via {iface} in netns {ns}", ok_if="File exists")
        added.append(prefix)
    return added


def routes_unobservable(has_netns: bool, *, testbed: bool) -> str:
    """Why the DoubleZero interface's routes cannot be read here ("" when they can): a local testbed without
    CAP_NET_ADMIN has no node network namespace, so the stand-in daemon skips the kernel part."""
    if testbed and not has_netns:
        return (f"the local testbed has no network namespace ({net_admin_reason()}): routes on the DoubleZero "
                "interface are not observable here")
    return ""
