"""Services by name from pods on the local testbed, as on kind: real processes under a scratch supervisord (the
testbed's controller, kube-proxy and cluster DNS, pods of RollingUpdate Deployments under the shim), a real
resolver (glibc, through the resolv.conf the kubelet gives a pod) and real HTTP through the kube-proxy's
clusterIP listener. The scratch kube has a service range and DNS address of its own (127.241.0.0/16), so a
testbed left up elsewhere on the machine cannot answer for it. Run under `flock /tmp/runbook-testbed.lock`
(port 53 needs root, as the testbed runs)."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dnslib import QTYPE, RCODE, DNSRecord

from runbook.env import Env, load_env
from runbook.testbed.kube_controller import controller_program
from runbook.testbed.kube_dns import ensure_dns
from runbook.testbed.kube_proxy import add_listens, ensure_proxy, proxy_program, remove_listens
from runbook.testbed.kube_services import LocalServices
from runbook.testbed.kubelet import LocalWorkloads
from runbook.testbed.supervisor import Supervisor
from runbook.wait import wait_for
from tests.testbed.test_rolling_update_support import ENV_FILE, free_port, proxy_deployment, recorder_deployment

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the cluster DNS serves port 53: root, as the testbed")

CIDR, DNS_IP = "127.241.0.0/16", "127.241.0.10"
STALENESS = 3.0  # the kube-proxy follows the store within its refresh (0.05 s); DNS reads it at each query
IN_POD = 15.0  # the same, asked from a pod: each observation is an exec of a Python process (0.3 s here)
NS = "mcp"
RESOLVE = """
import http.client, json, socket, sys
port, names = int(sys.argv[1]), sys.argv[2:]
out = {"resolv.conf": open("/etc/resolv.conf").read(), "names": {}}
for n in names:
    try:
        out["names"][n] = socket.gethostbyname(n)
    except OSError as e:
        out["names"][n] = f"error: {e}"
try:
    c = http.client.HTTPConnection(names[0], port, timeout=5)
    c.request("GET", "/health")
    r = c.getresponse()
    out["http"] = [r.status, r.getheader("X-Zai-Proxy-Version"), c.sock.getpeername()[0]]
except OSError as e:
    out["http"] = f"error: {e}"
print(json.dumps(out))
"""


@dataclass
class Cluster:
    wl: LocalWorkloads
    sup: Supervisor
    env: Env
    services: LocalServices
    port: int  # the stand-ins' containerPort
    host_resolv: tuple[bytes, int, int]  # the host's /etc/resolv.conf: content, inode, mtime


def host_resolv() -> tuple[bytes, int, int]:
    st = os.stat("/etc/resolv.conf")
    return Path("/etc/resolv.conf").read_bytes(), st.st_ino, st.st_mtime_ns


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster-dns")
    data = yaml.safe_load(ENV_FILE.read_text())
    data["testbed"].update(supervisor_port=free_port(), service_cidr=CIDR, dns_ip=DNS_IP)
    (tmp / "env.yaml").write_text(yaml.safe_dump(data))
    env = load_env(str(tmp / "env.yaml"))
    state = tmp / "state"
    state.mkdir()
    sup = Supervisor(state_dir=state, port=data["testbed"]["supervisor_port"])
    before = host_resolv()
    sup.start()
    try:
        wl = LocalWorkloads(env=env, supervisor=sup, state_dir=state, netns=None)
        for name, argv in (controller_program(env, state), proxy_program(wl.kube, [])):
            sup.add(name, argv)
        ensure_dns(sup, env, wl.kube)
        for name in ("kube-controller", "kube-proxy", "kube-dns"):
            sup.wait_running(name, timeout=10)
        yield Cluster(wl, sup, env, LocalServices.of(env, wl.kube), free_port(), before)
    finally:
        sup.shutdown()
    assert host_resolv() == before, "the host's /etc/resolv.conf is never touched"


def storage_service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "meta-storage-blue", "namespace": NS},
            "spec": {"selector": {"app": "meta-storage-blue"},
                     "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def ask(name: str, *, tcp: bool = False) -> tuple[str, list[str]]:
    reply = DNSRecord.parse(DNSRecord.question(name, "A").send(DNS_IP, 53, tcp=tcp, timeout=5))
    return RCODE[reply.header.rcode], [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


def in_pod(c: Cluster, pod: str, container: str, *names: str) -> dict[str, Any]:
    r = c.wl.exec(pod, container, [sys.executable, "-c", RESOLVE, "8080", *names], timeout=30)
    assert r.rc == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_the_cluster_dns_answers_over_udp_and_tcp(cluster: Cluster) -> None:
    svc = cluster.services.apply({**storage_service(), "metadata": {"name": "dns-probe", "namespace": NS}})
    try:
        for tcp in (False, True):
            assert ask(f"dns-probe.{NS}.svc.cluster.local", tcp=tcp) == ("NOERROR", [svc["spec"]["clusterIP"]])
            assert ask("dns-probe.default.svc.cluster.local", tcp=tcp) == ("NXDOMAIN", []), "another namespace"
            assert ask("no-such-service.mcp.svc.cluster.local", tcp=tcp) == ("NXDOMAIN", [])
            assert ask("example.com", tcp=tcp) == ("NXDOMAIN", []), "no upstream: the testbed has no internet"
    finally:
        cluster.services.delete("dns-probe")
    assert ask(f"dns-probe.{NS}.svc.cluster.local") == ("NXDOMAIN", [])


def test_a_pod_reaches_a_service_by_name_through_dns_and_the_kube_proxy(cluster: Cluster) -> None:
    c = cluster
    ip = c.services.apply(storage_service())["spec"]["clusterIP"]
    fqdn = f"meta-storage-blue.{NS}.svc.cluster.local"
    try:
        assert ip.startswith("127.241.") and refused(ip, 8080), "no ready endpoint yet: the clusterIP refuses"
        c.wl.apply_deployment(proxy_deployment("meta-storage-blue", "1.2.0", port=c.port, replicas=2))
        c.wl.wait_rollout("meta-storage-blue", timeout=60)
        pod = c.wl.pods_of("meta-storage-blue")[0].name
        seen = wait_for(lambda: in_pod(c, pod, "proxy", "meta-storage-blue", fqdn), lambda o: o["http"][0] == 200,
                        timeout=IN_POD, interval=0.1, what="an answer through the clusterIP")
        assert seen["resolv.conf"] == (f"nameserver {DNS_IP}\nsearch {NS}.svc.cluster.local svc.cluster.local "
                                       "cluster.local\noptions ndots:5\n"), "the kubelet's ClusterFirst file"
        assert seen["names"] == {"meta-storage-blue": ip, fqdn: ip}, "the short name through the search list"
        assert seen["http"] == [200, "1.2.0", ip], "answered by a ready pod through the kube-proxy's clusterIP"
        assert "endpoints 127." in c.sup.tail("kube-proxy", 200)

        c.services.delete("meta-storage-blue")
        gone = wait_for(lambda: in_pod(c, pod, "proxy", "meta-storage-blue", fqdn),
                        lambda o: all(v.startswith("error") for v in o["names"].values()), timeout=IN_POD,
                        interval=0.1, what="the deleted Service's names no longer resolving")
        assert "Name or service not known" in gone["names"][fqdn]
        wait_for(lambda: refused(ip, 8080), bool, timeout=STALENESS, interval=0.05,
                 what="the deleted Service's clusterIP listener closed")
    finally:  # the pods go with the module's supervisord
        c.services.delete("meta-storage-blue")


def test_host_network_and_recreate_pods_keep_the_nodes_resolv_conf(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    image = "example/term-recorder:1.0.0"
    host = recorder_deployment("host-client", image, tmp_path / "host.log")
    host["spec"]["template"]["spec"]["hostNetwork"] = True  # dnsPolicy ClusterFirst: falls back to Default
    cluster_net = recorder_deployment("pod-client", image, tmp_path / "pod.log")
    recreate = recorder_deployment("agave-like", image, tmp_path / "recreate.log")
    recreate["spec"]["strategy"] = {"type": "Recreate"}
    try:
        for m in (host, cluster_net, recreate):
            c.wl.apply_deployment(m)
        for name in ("host-client", "pod-client", "agave-like"):
            c.wl.wait_rollout(name, timeout=60)

        def resolv(deployment: str) -> str:
            pod = c.wl.pods(deployment)[0].name
            r = c.wl.exec(pod, "main", ["cat", "/etc/resolv.conf"])
            assert r.rc == 0, r.stderr
            return r.stdout

        node = Path("/etc/resolv.conf").read_text()
        assert resolv("host-client") == node
        assert resolv("agave-like") == node, "the agave pods (Recreate, the kubelet's own path) as they were"
        assert resolv("pod-client").startswith(f"nameserver {DNS_IP}\nsearch default.svc.cluster.local ")
    finally:
        c.wl.delete_deployment("agave-like")  # the kubelet's synchronous path; the others go with the supervisord


def test_more_host_listens_on_the_running_kube_proxy(cluster: Cluster) -> None:
    c = cluster
    pid = c.sup.info("kube-proxy").pid  # type: ignore[union-attr]
    port = free_port()
    svc = storage_service()
    svc["metadata"]["name"] = svc["spec"]["selector"]["app"] = "meta-storage-green"
    c.services.apply(svc)
    try:
        c.wl.apply_deployment(proxy_deployment("meta-storage-green", "1.2.0", port=c.port, replicas=1))
        c.wl.wait_rollout("meta-storage-green", timeout=60)
        ensure_proxy(c.sup, c.wl.kube, {"meta-storage-green:http": f"127.0.0.1:{port}"})
        r = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False),
                     lambda r: r.status_code == 200, timeout=STALENESS, interval=0.05,
                     tolerate=(httpx.ConnectError,), what="the added host listen served")
        assert r.headers["X-Zai-Proxy-Version"] == "1.2.0"
        assert c.sup.info("kube-proxy").pid == pid, "the same kube-proxy: no second one, no restart"  # type: ignore[union-attr]
        remove_listens(c.wl.kube, [f"meta-storage-green:http=127.0.0.1:{port}"])
        wait_for(lambda: refused("127.0.0.1", port), bool, timeout=STALENESS, interval=0.05,
                 what="the removed host listen closed")
        add_listens(c.wl.kube, {"meta-storage-green:http": f"127.0.0.1:{port}"})
        c.sup.remove("kube-proxy")  # a kube-proxy started later reads the same file
        ensure_proxy(c.sup, c.wl.kube)
        wait_for(lambda: refused("127.0.0.1", port), lambda r: not r, timeout=10, interval=0.05,
                 what="a new kube-proxy serving the file's listens")
    finally:
        remove_listens(c.wl.kube, [f"meta-storage-green:http=127.0.0.1:{port}"])
        c.services.delete("meta-storage-green")
