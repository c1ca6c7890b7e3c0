"""The local testbed's cluster DNS: what CoreDNS's kubernetes plugin answers a pod about the testbed's Services.

Run under the testbed's supervisord (:func:`dns_program`, :func:`ensure_dns`)::

    python -m runbook.testbed.kube_dns --kube-dir <state>/kube --address 127.240.0.10 [--port 53] \\
        [--namespace default]

UDP and TCP on ``address:port`` (``testbed.dns_ip``; kind's cluster DNS is 10.96.0.10), served by dnslib's
server with answers read from :class:`~runbook.testbed.kube_services.LocalServices` at each query (no cache
here: a Service deleted is gone from the next answer; the answers' TTL is CoreDNS's default, 5 s):

- ``<svc>.<ns>.svc.cluster.local`` A: the Service's clusterIP; a headless one (``clusterIP: None``): its ready
  pods' IPs (none: NXDOMAIN); AAAA or another type of a name that exists: no answer (NOERROR, NODATA) with the
  zone's SOA, as CoreDNS answers an IPv4-only cluster;
- any other name in ``cluster.local``: NXDOMAIN with the zone's SOA;
- names outside ``cluster.local``: NXDOMAIN. CoreDNS would forward them to the node's resolvers (``forward .
  /etc/resolv.conf``); the testbed has no internet, and a pod must not depend on one.

A pod's resolver reaches it through the resolv.conf the kubelet gives a pod (:func:`pod_resolv_conf`),
bind-mounted over ``/etc/resolv.conf`` in the container's own mount namespace by :mod:`runbook.testbed.shim`.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from runbook.testbed.kube_services import HEADLESS, LocalServices

if TYPE_CHECKING:
    from runbook.env import Env
    from runbook.testbed.supervisor import Supervisor

DOMAIN = "cluster.local"
TTL = 5  # the kubernetes plugin's default ttl
NDOTS = 5  # the kubelet's ndots for ClusterFirst


def dns_program(kube_dir: Path, address: str, *, port: int = 53, namespace: str = "default",
                name: str = "kube-dns") -> tuple[str, list[str]]:
    """The supervisord program for the cluster DNS: ``(name, argv)``. Its environment needs this project on
    PYTHONPATH; port 53 needs root (or CAP_NET_BIND_SERVICE), as the testbed runs."""
    ipaddress.IPv4Address(address)  # refused here, not in the program's log
    return name, [sys.executable, "-m", "runbook.testbed.kube_dns", "--kube-dir", str(kube_dir), "--address", address,
                  "--port", str(port), "--namespace", namespace]


def ensure_dns(supervisor: Supervisor, env: Env, kube_dir: Path, *, name: str = "kube-dns") -> None:
    """Start the cluster DNS of ``env``'s testbed (on ``testbed.dns_ip``) under ``supervisor`` unless a program of
    that name is defined there; it stops with the testbed's supervisord."""
    from runbook.env import PROJECT_ROOT

    if env.testbed is None:
        raise ValueError(f"env {env.name} has no testbed section")
    if supervisor.info(name) is None:
        ns = env.namespace
        program, argv = dns_program(kube_dir, env.testbed.dns_ip, namespace=ns, name=name)
        supervisor.add(program, argv, env={"PYTHONPATH": str(PROJECT_ROOT)})


def pod_resolv_conf(spec: Mapping[str, Any], namespace: str, dns_ip: str, *, domain: str = DOMAIN) -> str | None:
    """The resolv.conf a kubelet gives a pod (pkg/kubelet/network/dns), or None for the node's own.

    ``dnsPolicy`` ClusterFirst (the default): the cluster DNS, ``search <ns>.svc.<domain> svc.<domain> <domain>``,
    ``options ndots:5``; for a hostNetwork pod ClusterFirst falls back to Default (the node's file), as the
    kubelet does; ClusterFirstWithHostNet: the cluster DNS for a hostNetwork pod too; Default: the node's;
    None: ``dnsConfig`` alone. ``dnsConfig`` nameservers and searches are appended, its options merged by name
    (the pod's win). The cluster DNS and the clusterIPs are served in the runner's network namespace, where the
    testbed's pods live; a hostNetwork pod of a testbed with a node namespace (``rbtb-*``) given
    ClusterFirstWithHostNet would not reach them (no Deployment here asks for it)."""
    policy = str(spec.get("dnsPolicy") or "ClusterFirst")
    if policy == "ClusterFirst" and spec.get("hostNetwork"):
        policy = "Default"
    config = spec.get("dnsConfig") or {}
    if policy == "Default":
        return None
    servers: list[str] = [] if policy == "None" else [dns_ip]
    searches: list[str] = [] if policy == "None" else [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]
    options: dict[str, str | None] = {} if policy == "None" else {"ndots": str(NDOTS)}
    servers += [str(s) for s in config.get("nameservers") or [] if str(s) not in servers]
    searches += [str(s) for s in config.get("searches") or [] if str(s) not in searches]
    for o in config.get("options") or []:
        options[str(o["name"])] = None if o.get("value") is None else str(o["value"])
    lines = [f"nameserver {s}" for s in servers[:3]]  # glibc reads 3 at most; the kubelet trims the same way
    if searches:
        lines.append("search " + " ".join(searches[:32]))
    if options:
        lines.append("options " + " ".join(k if v is None else f"{k}:{v}" for k, v in options.items()))
    return "\n".join(lines) + "\n"


class ClusterResolver(BaseResolver):
    """The kubernetes plugin's answers for one testbed's Services."""

    def __init__(self, services: LocalServices, *, domain: str = DOMAIN) -> None:
        self.services = services
        self.domain = domain.strip(".").lower()

    def addresses(self, qname: str) -> list[str] | None:
        """A name's A records: a list (empty: the name exists without addresses), or None: no such name."""
        name = qname.rstrip(".").lower()
        suffix = f".svc.{self.domain}"
        if not name.endswith(suffix):
            return None
        parts = name[: -len(suffix)].split(".")
        if len(parts) != 2:
            return None
        svc_name, ns = parts
        svc = self.services.get(svc_name)
        if svc is None or self.services.namespace_of(svc) != ns:
            return None
        ip = (svc.get("spec") or {}).get("clusterIP")
        if ip == HEADLESS:  # the ready endpoints' addresses; none ready: no such name (the plugin's NXDOMAIN)
            ips = sorted({ep.rpartition(":")[0] for ep in self.services.endpoints(svc_name)})
            return ips or None
        return [str(ip)] if ip else None

    def soa(self) -> RR:
        return RR(self.domain, QTYPE.SOA, ttl=TTL, rdata=SOA(f"ns.dns.{self.domain}", f"hostmaster.{self.domain}",
                                                             (1, 7200, 1800, 86400, TTL)))

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        in_zone = qname.rstrip(".").lower() == self.domain or qname.rstrip(".").lower().endswith(f".{self.domain}")
        found = self.addresses(qname)
        if found is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype in ("A", "ANY"):
            for ip in found:
                reply.add_answer(RR(qname, QTYPE.A, ttl=TTL, rdata=A(ip)))
        if in_zone and not reply.rr:
            reply.add_auth(self.soa())
        return reply


def serve(resolver: ClusterResolver, address: str, port: int, stop: threading.Event, *,
          ready: threading.Event | None = None) -> None:
    """Serve UDP and TCP until ``stop`` is set, then close both sockets."""
    logger = DNSLogger("-recv,-send,-request,-data", prefix=False)
    servers = [DNSServer(resolver, address=address, port=port, tcp=tcp, logger=logger) for tcp in (False, True)]
    try:
        for s in servers:
            s.start_thread()
        print(f"kube-dns: serving {address}:{port} (udp, tcp) for *.svc.{resolver.domain}", flush=True)
        if ready is not None:
            ready.set()
        stop.wait()
    finally:
        for s in servers:
            if getattr(s, "thread", None) is not None:
                s.stop()
            s.server.server_close()
        print("kube-dns: stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runbook.testbed.kube_dns", description=__doc__.split("\n")[0])
    ap.add_argument("--kube-dir", type=Path, required=True, help="the local kubelet's store (<state>/kube)")
    ap.add_argument("--address", required=True, help="the address to serve on (testbed.dns_ip)")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--namespace", default="default", help="the namespace of Services whose manifest names none")
    ap.add_argument("--domain", default=DOMAIN, help="the cluster domain")
    args = ap.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    resolver = ClusterResolver(LocalServices(args.kube_dir, namespace=args.namespace), domain=args.domain)
    try:
        serve(resolver, args.address, args.port, stop)
    except OSError as exc:
        print(f"kube-dns: cannot serve {args.address}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
