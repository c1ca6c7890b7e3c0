"""ClusterIPs, cluster DNS answers and pods' resolv.conf on the local testbed, without a process: LocalServices'
clusterIP allocation in the API server's words (runbook/testbed/kube_services.py), the kube-proxy's listens
(runbook/testbed/kube_proxy.py: every clusterIP:port, the listens file), the cluster DNS's resolver and the
kubelet's resolv.conf by dnsPolicy (runbook/testbed/kube_dns.py). The pods are records written by hand in the
local kubelet's shape (tests/testbed/test_kube_services.write_pod)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from runbook.env import load_env
from runbook.errors import AdapterError, ConfigError
from runbook.testbed.kube_dns import ClusterResolver, dns_program, pod_resolv_conf
from runbook.testbed.kube_proxy import Listen, add_listens, cluster_listens, listens_file, read_listens, remove_listens
from runbook.testbed.kube_services import LocalServices
from tests.testbed.test_kube_services import PROD, service, write_pod

CIDR = "127.241.0.0/16"


@pytest.fixture
def kube(tmp_path: Path) -> Path:
    (tmp_path / "kube" / "pods").mkdir(parents=True)
    return tmp_path / "kube"


@pytest.fixture
def services(kube: Path) -> LocalServices:
    return LocalServices(kube, service_cidr=CIDR)


def with_ip(ip: str, **kw: Any) -> dict[str, Any]:
    m = service(**kw)
    m["spec"]["clusterIP"] = ip
    return m


def test_a_cluster_ip_is_allocated_in_the_range_above_its_static_band_and_kept(services: LocalServices) -> None:
    ips = {services.apply(service(f"svc-{i}"))["spec"]["clusterIP"] for i in range(40)}
    assert len(ips) == 40, "never the same address twice"
    net = ipaddress.IPv4Network(CIDR)
    assert all(ipaddress.IPv4Address(ip) in net and int(ipaddress.IPv4Address(ip)) - int(net[0]) >= 256 for ip in ips)
    stored = services.get("svc-0")
    assert stored is not None and stored["spec"]["clusterIPs"] == [stored["spec"]["clusterIP"]]
    again = services.apply(service("svc-0"))  # a replace naming none keeps it (kubectl apply)
    assert again["spec"]["clusterIP"] == stored["spec"]["clusterIP"]
    node_port = services.apply(service("web", kind="NodePort"))  # a NodePort Service has one too
    assert ipaddress.IPv4Address(node_port["spec"]["clusterIP"]) in net
    assert services.cluster_ips()["svc-0"] == stored["spec"]["clusterIP"] and len(services.cluster_ips()) == 41


def test_a_given_cluster_ip_is_kept_when_in_range_and_free(services: LocalServices) -> None:
    assert services.apply(with_ip("127.241.0.20"))["spec"]["clusterIP"] == "127.241.0.20"
    with pytest.raises(AdapterError, match=r'^Service "other" is invalid: spec.clusterIPs: Invalid value: '
                                           r'\["127.241.0.20"\]: failed to allocate IP 127.241.0.20: provided IP is '
                                           r"already allocated "):
        services.apply(with_ip("127.241.0.20", name="other"))
    with pytest.raises(AdapterError, match=r"failed to allocate IP 127.9.0.1: the provided IP \(127.9.0.1\) is not "
                                           r"in the valid range. The range of valid IPs is 127.241.0.0/16"):
        services.apply(with_ip("127.9.0.1", name="other"))
    with pytest.raises(AdapterError, match=r'spec.clusterIPs\[0\]: Invalid value: "10.0.0.x": must be a valid IP'):
        services.apply(with_ip("10.0.0.x", name="other"))
    assert services.names() == ["zai-proxy"], "a refused Service is not stored"
    services.delete("zai-proxy")
    assert services.apply(with_ip("127.241.0.20", name="other"))["spec"]["clusterIP"] == "127.241.0.20", \
        "a deleted Service's address is free again"


def test_a_cluster_ip_change_on_replace_is_refused_and_changes_nothing(services: LocalServices) -> None:
    first = services.apply(service())["spec"]["clusterIP"]
    changed = with_ip("127.241.3.3")
    changed["spec"]["ports"][0]["port"] = 9090
    with pytest.raises(AdapterError, match=r'^Service "zai-proxy" is invalid: spec.clusterIPs\[0\]: Invalid value: '
                                           r'\["127.241.3.3"\]: may not change once set '):
        services.apply(changed)
    with pytest.raises(AdapterError, match=r'Invalid value: \["None"\]: may not change once set'):
        services.apply(with_ip("None"))  # a Service cannot become headless either: delete and re-create
    stored = services.get("zai-proxy")
    assert stored is not None and stored["spec"]["clusterIP"] == first and stored["spec"]["ports"][0]["port"] == 8080
    assert services.apply(with_ip(first))["spec"]["clusterIP"] == first, "the same one named again: fine"


def test_headless_is_kept_and_not_proxied(services: LocalServices) -> None:
    assert services.apply(with_ip("None"))["spec"]["clusterIP"] == "None"
    assert services.apply(service())["spec"]["clusterIP"] == "None", "kept on a replace that names none"
    assert cluster_listens(services) == []
    with pytest.raises(AdapterError, match=r"spec.clusterIPs\[0\]: Invalid value: \"None\": may not be set to "
                                           r"'None' for NodePort services"):
        services.apply(with_ip("None", name="web", kind="NodePort"))


def test_the_range_comes_from_the_env_and_must_be_loopback(tmp_path: Path) -> None:
    env_file = Path(__file__).parent / "envs" / "rolling.yaml"
    env = load_env(str(env_file))
    assert env.testbed is not None and env.testbed.service_cidr == "127.240.0.0/16"
    assert env.testbed.dns_ip == "127.240.0.10"
    assert str(LocalServices.of(env, tmp_path).service_cidr) == "127.240.0.0/16"
    bad = tmp_path / "bad.yaml"
    bad.write_text(env_file.read_text().replace("  state_dir: .testbed/rolling\n",
                                                "  state_dir: .testbed/rolling\n  service_cidr: 10.96.0.0/12\n"))
    with pytest.raises(ConfigError, match=r"service_cidr.*10.96.0.0/12 must be a loopback range"):
        load_env(str(bad))


def test_the_proxy_serves_every_cluster_ip_port(services: LocalServices) -> None:
    two = service("web")
    two["spec"]["ports"] = [{"name": "http", "port": 80, "targetPort": "http"},
                            {"name": "dns", "port": 53, "protocol": "UDP"}]
    ip = services.apply(two)["spec"]["clusterIP"]
    ip2 = services.apply(service("zai-proxy", kind="NodePort"))["spec"]["clusterIP"]
    assert cluster_listens(services) == [Listen("web", "http", ip, 80), Listen("zai-proxy", "http", ip2, 8080)], \
        "TCP ports only, NodePort Services on their clusterIP too"


def test_the_listens_file_adds_and_removes_host_listens(kube: Path) -> None:
    assert read_listens(listens_file(kube)) == []
    add_listens(kube, {"meta-gateway:http": "127.0.0.1:18280"})
    add_listens(kube, ["meta-gateway:http=127.0.0.1:18280", "web=127.0.0.1:18281"])  # again: converges
    assert read_listens(listens_file(kube)) == [Listen("meta-gateway", "http", "127.0.0.1", 18280),
                                                Listen("web", None, "127.0.0.1", 18281)]
    remove_listens(kube, ["web=127.0.0.1:18281"])
    assert [str(x) for x in read_listens(listens_file(kube))] == ["meta-gateway:http=127.0.0.1:18280"]
    with pytest.raises(ConfigError, match="expected <service>"):
        add_listens(kube, ["meta-gateway"])
    assert sorted(p.name for p in kube.iterdir()) == [".kube-proxy-listens.lock", "kube-proxy-listens", "pods"]


# -- the cluster DNS's answers -------------------------------------------------------------------------------------
def ask(resolver: ClusterResolver, name: str, qtype: str = "A") -> tuple[str, list[str], bool]:
    """(rcode, answers, SOA in authority) as the server would send them."""
    reply = resolver.resolve(DNSRecord.question(name, qtype), None)
    reply = DNSRecord.parse(reply.pack())  # what goes on the wire
    return RCODE[reply.header.rcode], [str(rr.rdata) for rr in reply.rr], any(
        rr.rtype == QTYPE.SOA for rr in reply.auth)


def test_dns_answers_a_services_cluster_ip_and_nxdomain_for_the_rest(kube: Path, services: LocalServices) -> None:
    ip = services.apply(service("meta-storage-blue"))["spec"]["clusterIP"]
    mcp = service("meta-schema-blue")
    mcp["metadata"]["namespace"] = "mcp"
    ip2 = services.apply(mcp)["spec"]["clusterIP"]
    dns = ClusterResolver(services)
    assert ask(dns, "meta-storage-blue.default.svc.cluster.local") == ("NOERROR", [ip], False)
    assert ask(dns, "Meta-Storage-Blue.default.svc.cluster.local.") == ("NOERROR", [ip], False), "case-insensitive"
    assert ask(dns, "meta-schema-blue.mcp.svc.cluster.local") == ("NOERROR", [ip2], False)
    assert ask(dns, "meta-storage-blue.default.svc.cluster.local", "AAAA") == ("NOERROR", [], True), \
        "NODATA for IPv6: the name exists"
    for unknown in ("meta-storage-green.default.svc.cluster.local", "meta-schema-blue.default.svc.cluster.local",
                    "meta-storage-blue.svc.cluster.local", "meta-storage-blue.default.svc.cluster.local.default.svc"
                    ".cluster.local", "cluster.local", "x.y.z.svc.cluster.local"):
        assert ask(dns, unknown) == ("NXDOMAIN", [], True), unknown
    for outside in ("meta-storage-blue", "example.com", "localhost"):
        assert ask(dns, outside) == ("NXDOMAIN", [], False), f"{outside}: no upstream on the testbed"
    services.delete("meta-storage-blue")
    assert ask(dns, "meta-storage-blue.default.svc.cluster.local")[0] == "NXDOMAIN", "deleted: gone at once"


def test_dns_answers_a_headless_services_ready_pods(kube: Path, services: LocalServices) -> None:
    services.apply(with_ip("None"))
    dns = ClusterResolver(services)
    name = "zai-proxy.default.svc.cluster.local"
    assert ask(dns, name)[0] == "NXDOMAIN", "no ready pod: no such name"
    write_pod(kube, "a", ip="127.0.3.2", labels=PROD, ports={"http": 8080})
    write_pod(kube, "b", ip="127.0.3.1", labels=PROD, ports={"http": 8080})
    write_pod(kube, "c", ip="127.0.3.3", labels=PROD, ports={"http": 8080}, ready=False)
    assert ask(dns, name) == ("NOERROR", ["127.0.3.1", "127.0.3.2"], False)


def test_dns_program_argv() -> None:
    name, argv = dns_program(Path("/s/kube"), "127.240.0.10", namespace="mcp")
    assert name == "kube-dns" and argv[1:3] == ["-m", "runbook.testbed.kube_dns"]
    assert argv[3:] == ["--kube-dir", "/s/kube", "--address", "127.240.0.10", "--port", "53", "--namespace", "mcp"]
    with pytest.raises(ValueError):
        dns_program(Path("/s/kube"), "dns.local")


# -- the kubelet's resolv.conf -------------------------------------------------------------------------------------
CLUSTER = ("nameserver 127.240.0.10\nsearch mcp.svc.cluster.local svc.cluster.local cluster.local\n"
           "options ndots:5\n")


@pytest.mark.parametrize(("spec", "expected"), [
    ({}, CLUSTER),
    ({"dnsPolicy": "ClusterFirst"}, CLUSTER),
    ({"hostNetwork": True}, None),  # ClusterFirst on the host network falls back to Default
    ({"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}, CLUSTER),
    ({"dnsPolicy": "Default"}, None),
    ({"dnsConfig": {"searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}},
     "nameserver 127.240.0.10\nsearch mcp.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
     "options ndots:2 edns0\n"),
    ({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["127.0.0.53"], "searches": ["a.example"]}},
     "nameserver 127.0.0.53\nsearch a.example\n"),
])
def test_the_kubelets_resolv_conf_by_dns_policy(spec: dict[str, Any], expected: str | None) -> None:
    assert pod_resolv_conf(spec, "mcp", "127.240.0.10") == expected
