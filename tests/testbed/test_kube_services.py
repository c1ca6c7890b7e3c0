"""LocalServices (runbook/testbed/kube_services.py): Services validated with the API server's words, endpoints
as the EndpointSlice controller lists them, scrape targets as Prometheus's kubernetes_sd (role pod) and the
kind-side relabelling give them. The pods are records in the local kubelet's store, written by hand here in the
shape the kubelet writes them (name, deployment, labels, annotations, ip, ready, terminating, spec); no process
runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import AdapterError
from runbook.testbed.kube_services import LocalServices


def write_pod(kube: Path, name: str, *, ip: str, labels: dict[str, str], ready: bool = True,
              terminating: bool = False, ports: dict[str, int] | None = None,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod record as the local kubelet writes it (through a rename: a reader never sees half a record)."""
    container: dict[str, Any] = {"name": "proxy", "image": "ronaldraygun/zai-proxy:1.2.0"}
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    record = {"name": name, "deployment": labels.get("app", name), "labels": labels,
              "annotations": annotations or {}, "ip": ip, "ready": ready, "terminating": terminating,
              "spec": {"containers": [container]}}
    path = kube / "pods" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return record


def service(name: str = "zai-proxy", *, selector: dict[str, str] | None = None, port: int = 8080,
            target: int | str | None = "http", kind: str = "ClusterIP", node_port: int | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"name": "http", "port": port}
    if target is not None:
        p["targetPort"] = target
    if node_port is not None:
        p["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": kind, "selector": selector if selector is not None
                     else {"app": "zai-proxy", "variant": "production"}, "ports": [p]}}


PROD = {"app": "zai-proxy", "variant": "production", "version": "1.2.0"}
CANARY = {"app": "zai-proxy", "variant": "test", "version": "1.2.1-canary"}


@pytest.fixture
def kube(tmp_path: Path) -> Path:
    (tmp_path / "pods").mkdir()
    return tmp_path


@pytest.fixture
def services(kube: Path) -> LocalServices:
    return LocalServices(kube, namespace="mcp")


def test_endpoints_are_the_ready_pods_the_selector_matches(kube: Path, services: LocalServices) -> None:
    write_pod(kube, "zai-proxy-a", ip="127.0.3.1", labels=PROD, ports={"http": 8080})
    write_pod(kube, "zai-proxy-b", ip="127.0.3.2", labels=PROD, ports={"http": 8080})
    write_pod(kube, "zai-proxy-test-a", ip="127.0.3.3", labels=CANARY, ports={"http": 8080})
    write_pod(kube, "other", ip="127.0.3.4", labels={"app": "other"}, ports={"http": 8080})
    services.apply(service())
    assert services.endpoints("zai-proxy") == ["127.0.3.1:8080", "127.0.3.2:8080"]
    services.apply(service("zai-all", selector={"app": "zai-proxy"}))  # a subset of labels selects both variants
    assert services.endpoints("zai-all") == ["127.0.3.1:8080", "127.0.3.2:8080", "127.0.3.3:8080"]
    services.apply(service("nobody", selector={"app": "zai-proxy", "variant": "blue"}))
    assert services.endpoints("nobody") == []
    assert services.endpoints("not-applied") == []
    assert services.names() == ["nobody", "zai-all", "zai-proxy"]


def test_a_named_target_port_is_resolved_in_each_pod(kube: Path, services: LocalServices) -> None:
    write_pod(kube, "a", ip="127.0.3.1", labels=PROD, ports={"http": 8080, "metrics": 9100})
    write_pod(kube, "b", ip="127.0.3.2", labels=PROD, ports={"metrics": 9100, "http": 18080})
    write_pod(kube, "c", ip="127.0.3.3", labels=PROD, ports={"metrics": 9100})  # declares no "http": left out
    services.apply(service())
    assert services.endpoints("zai-proxy") == ["127.0.3.1:8080", "127.0.3.2:18080"]
    services.apply(service(target=9999))  # a number is used as is, declared or not
    assert services.endpoints("zai-proxy") == ["127.0.3.1:9999", "127.0.3.2:9999", "127.0.3.3:9999"]
    stored = services.apply(service(target=None, port=8080))  # no targetPort: the API server defaults it to port
    assert stored["spec"]["ports"][0]["targetPort"] == 8080
    assert services.endpoints("zai-proxy", "http") == services.endpoints("zai-proxy", 8080) == [
        "127.0.3.1:8080", "127.0.3.2:8080", "127.0.3.3:8080"]
    with pytest.raises(AdapterError, match=r"Service zai-proxy has no port 'grpc'; its ports: http=8080"):
        services.endpoints("zai-proxy", "grpc")


def test_not_ready_terminating_and_unaddressed_pods_are_not_endpoints(kube: Path, services: LocalServices) -> None:
    write_pod(kube, "ready", ip="127.0.3.1", labels=PROD, ports={"http": 8080})
    write_pod(kube, "starting", ip="127.0.3.2", labels=PROD, ports={"http": 8080}, ready=False)
    write_pod(kube, "leaving", ip="127.0.3.3", labels=PROD, ports={"http": 8080}, terminating=True)
    write_pod(kube, "leaving-ready", ip="127.0.3.4", labels=PROD, ports={"http": 8080}, ready=True, terminating=True)
    write_pod(kube, "pending", ip="", labels=PROD, ports={"http": 8080})
    services.apply(service())
    assert services.endpoints("zai-proxy") == ["127.0.3.1:8080"]
    published = service()
    published["spec"]["publishNotReadyAddresses"] = True  # not-ready published, terminating still not
    services.apply(published)
    assert services.endpoints("zai-proxy") == ["127.0.3.1:8080", "127.0.3.2:8080"]
    write_pod(kube, "ready", ip="127.0.3.1", labels=PROD, ports={"http": 8080}, terminating=True)
    services.apply(service())
    assert services.endpoints("zai-proxy") == []


def test_a_half_written_or_vanished_pod_record_is_skipped(kube: Path, services: LocalServices) -> None:
    write_pod(kube, "a", ip="127.0.3.1", labels=PROD, ports={"http": 8080})
    (kube / "pods" / "torn.json").write_text('{"name": "torn", "ip": "127.0.3.9"')
    services.apply(service())
    assert services.endpoints("zai-proxy") == ["127.0.3.1:8080"]
    assert [p["name"] for p in services.pods()] == ["a"]


def test_a_service_without_selector_has_no_endpoints(kube: Path, services: LocalServices) -> None:
    write_pod(kube, "a", ip="127.0.3.1", labels=PROD, ports={"http": 8080})
    services.apply(service(selector={}))  # valid for the API server; no controller writes its Endpoints
    assert services.endpoints("zai-proxy") == []


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["metadata"].pop("name"),
     'Service "?" is invalid: metadata.name: Required value: name or generateName is required'),
    (lambda s: s["metadata"].update(name="Zai_Proxy"),
     "metadata.name: Invalid value: \"Zai_Proxy\": a DNS-1035 label must consist of lower case alphanumeric"),
    (lambda s: s["spec"].pop("ports"), 'Service "zai-proxy" is invalid: spec.ports: Required value'),
    (lambda s: s["spec"]["ports"][0].update(port=0),
     "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
    (lambda s: s["spec"]["ports"][0].update(targetPort=70000),
     "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive"),
    (lambda s: s["spec"]["ports"][0].update(targetPort="HTTP_PORT"),
     'is invalid: [spec.ports[0].targetPort: Invalid value: "HTTP_PORT": must contain only alpha-numeric '
     'characters (a-z, 0-9), and hyphens (-), spec.ports[0].targetPort: Invalid value: "HTTP_PORT": must contain '
     "at least one letter (a-z)]"),
    (lambda s: s["spec"]["ports"][0].update(targetPort="zai-proxy-http-port"),
     'targetPort: Invalid value: "zai-proxy-http-port": must be no more than 15 characters'),
    (lambda s: s["spec"]["ports"][0].update(protocol="ICMP"),
     'spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'),
    (lambda s: s["spec"].update(type="Ingress"),
     'spec.type: Unsupported value: "Ingress": supported values: "ClusterIP", "ExternalName", "LoadBalancer", '
     '"NodePort"'),
    (lambda s: s["spec"]["ports"][0].update(nodePort=30080),
     "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
    (lambda s: (s["spec"].update(type="NodePort"), s["spec"]["ports"][0].update(nodePort=8080)),
     "spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid "
     "ports is 30000-32767"),
    (lambda s: s["spec"]["ports"].append({"port": 9100}), "spec.ports[1].name: Required value"),
    (lambda s: s["spec"]["ports"].append({"name": "http", "port": 9100}),
     'spec.ports[1].name: Duplicate value: "http"'),
    (lambda s: s["spec"]["selector"].update(variant="prod ution"),
     'spec.selector: Invalid value: "prod ution": a valid label must be an empty string or consist of'),
    (lambda s: s["spec"]["selector"].update({"app/x/y": "a"}), 'spec.selector: Invalid value: "app/x/y"'),
])
def test_an_invalid_service_is_refused_with_the_api_servers_words(services: LocalServices, change: Any,
                                                                   message: str) -> None:
    manifest = service()
    change(manifest)
    with pytest.raises(AdapterError) as refused:
        services.apply(manifest)
    assert message in str(refused.value)
    assert services.names() == [], "a refused Service is not stored"


def test_node_ports_are_allocated_in_range_and_never_twice(services: LocalServices) -> None:
    first = services.apply(service("zai-proxy", kind="NodePort", node_port=30080))
    assert first["spec"]["ports"][0]["nodePort"] == 30080
    allocated = services.apply(service("zai-proxy-test", kind="NodePort"))  # none named: the lowest free one
    assert allocated["spec"]["ports"][0]["nodePort"] == 30000
    assert services.node_ports("zai-proxy-test") == {"http": 30000}
    again = services.apply(service("zai-proxy-test", kind="NodePort"))  # re-applied: keeps what it holds
    assert again["spec"]["ports"][0]["nodePort"] == 30000
    services.apply(service("zai-proxy", kind="NodePort", node_port=30080))  # its own port again: fine
    with pytest.raises(AdapterError, match=r'Service "dashboard" is invalid: spec.ports\[0\].nodePort: Invalid '
                                           r"value: 30080: provided port is already allocated"):
        services.apply(service("dashboard", kind="NodePort", node_port=30080))
    two = service("dashboard", kind="NodePort", node_port=30090)
    two["spec"]["ports"].append({"name": "metrics", "port": 9100, "nodePort": 30090})
    with pytest.raises(AdapterError, match=r"spec.ports\[1\].nodePort: Duplicate value: 30090"):
        services.apply(two)
    services.delete("zai-proxy")
    services.delete("zai-proxy")  # converges
    assert services.get("zai-proxy") is None and services.node_ports("zai-proxy") == {}
    assert services.apply(service("dashboard", kind="NodePort", node_port=30080))["spec"]["ports"][0]["nodePort"] \
        == 30080, "a deleted Service's nodePort is free again"


def test_valid_types_the_testbed_does_not_serve_are_refused_as_such(services: LocalServices) -> None:
    with pytest.raises(AdapterError, match="type LoadBalancer is valid but the local testbed serves ClusterIP and "
                                           "NodePort Services only"):
        services.apply(service(kind="LoadBalancer"))
    with pytest.raises(AdapterError, match="applies Services only, got 'Deployment'"):
        services.apply({**service(), "kind": "Deployment"})
    assert services.names() == []


def test_scrape_targets_are_the_annotated_pods_with_an_ip(kube: Path, services: LocalServices) -> None:
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}
    write_pod(kube, "zai-proxy-a", ip="127.0.3.1", labels=PROD, ports={"http": 8080}, annotations=scrape)
    write_pod(kube, "zai-proxy-test-a", ip="127.0.3.2", labels=CANARY, ports={"http": 8080}, annotations=scrape,
              ready=False)  # not ready yet: kubernetes_sd lists it all the same
    write_pod(kube, "zai-proxy-old", ip="127.0.3.3", labels=PROD, ports={"http": 8080}, annotations=scrape,
              terminating=True)  # listed until deleted
    write_pod(kube, "zai-proxy-pending", ip="", labels=PROD, ports={"http": 8080}, annotations=scrape)
    write_pod(kube, "no-version", ip="127.0.3.5", labels={"app": "x"}, ports={"http": 8080, "metrics": 9100},
              annotations={"prometheus.io/scrape": "true"})  # no port annotation: one target per declared port
    write_pod(kube, "opted-out", ip="127.0.3.6", labels=PROD, ports={"http": 8080},
              annotations={"prometheus.io/scrape": "false", "prometheus.io/port": "8080"})
    write_pod(kube, "plain", ip="127.0.3.7", labels=PROD, ports={"http": 8080})
    done = write_pod(kube, "zz-completed", ip="127.0.3.8", labels=PROD, annotations=scrape)
    (kube / "pods" / "zz-completed.json").write_text(json.dumps({**done, "phase": "Succeeded"}))  # dropped
    assert services.scrape_targets() == [
        {"targets": ["127.0.3.5:8080", "127.0.3.5:9100"],
         "labels": {"pod": "no-version", "app_version": "", "namespace": "mcp"}},
        {"targets": ["127.0.3.1:8080"], "labels": {"pod": "zai-proxy-a", "app_version": "1.2.0", "namespace": "mcp"}},
        {"targets": ["127.0.3.3:8080"],
         "labels": {"pod": "zai-proxy-old", "app_version": "1.2.0", "namespace": "mcp"}},
        {"targets": ["127.0.3.2:8080"],
         "labels": {"pod": "zai-proxy-test-a", "app_version": "1.2.1-canary", "namespace": "mcp"}},
    ]
    assert LocalServices(kube).scrape_targets()[0]["labels"]["namespace"] == "default"
