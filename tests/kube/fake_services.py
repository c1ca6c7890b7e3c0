"""Services and their EndpointSlices in the mock API server (:mod:`tests.kube.fake_cluster`).

What the API server's defaulting does to a Service (a cluster IP, ``protocol: TCP``, ``targetPort`` =
``port``, a node port allocated for ``NodePort``) and what the EndpointSlice controller keeps (one
``discovery.k8s.io/v1`` slice per Service, labelled ``kubernetes.io/service-name``): an endpoint per pod
the selector matches that has an IP, with ``ready`` (the pod's Ready condition and not terminating),
``serving`` (Ready) and ``terminating`` (``deletionTimestamp`` set); ports resolved from ``targetPort``,
a named one through the pod's ``containerPort`` of that name.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.kube.fake_state import RESOURCES, Cause, GoValue, invalid

if TYPE_CHECKING:
    from tests.kube.fake_cluster import FakeCluster

Obj = dict[str, Any]

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")  # kind's default --service-cluster-ip-range
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslice-controller.k8s.io"


def service_defaults(svc: Obj, cluster_ip: Callable[[], str], node_port: Callable[[], int]) -> None:
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    if not spec.get("clusterIP"):
        spec["clusterIP"] = cluster_ip()
    spec["clusterIPs"] = [spec["clusterIP"]]
    for p in spec.get("ports") or []:
        p.setdefault("protocol", "TCP")
        p.setdefault("targetPort", p["port"])
        if spec["type"] in ("NodePort", "LoadBalancer") and not p.get("nodePort"):
            p["nodePort"] = node_port()
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    svc["status"] = {"loadBalancer": {}}


def check_cluster_ip(svc: Obj, cluster: FakeCluster) -> None:
    """A new Service's own ``clusterIP`` must be in the service range and free (the allocator's 422): a Service
    derived from another's must leave it out."""
    ip = (svc.get("spec") or {}).get("clusterIP")
    if not ip or ip == "None":
        return
    name = (svc.get("metadata") or {}).get("name", "")
    shown = GoValue(f"[]string{{{json.dumps(ip)}}}")
    try:
        in_range = ipaddress.ip_address(ip) in SERVICE_CIDR
    except ValueError:
        in_range = False
    if not in_range:
        problem = (f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of "
                   f"valid IPs is {SERVICE_CIDR}")
    elif any(s["spec"].get("clusterIP") == ip for s in cluster.objects["services"].values()):
        problem = f"failed to allocate IP {ip}: provided IP is already allocated"
    else:
        return
    raise invalid(RESOURCES["services"], name, [Cause("spec.clusterIPs", "FieldValueInvalid", problem, shown)])


def keep_node_ports(old: Obj, new: Obj) -> None:
    """An update's ports without a node port get the one the old port of the same name had, unless another
    of the new ports holds it (the API server's patchAllocatedValues)."""
    kinds = ("NodePort", "LoadBalancer")
    if old["spec"].get("type", "ClusterIP") not in kinds or new["spec"].get("type", "ClusterIP") not in kinds:
        return
    by_name = {p.get("name", ""): p.get("nodePort") for p in old["spec"].get("ports") or []}
    held = {p.get("nodePort") for p in new["spec"].get("ports") or [] if p.get("nodePort")}
    for p in new["spec"].get("ports") or []:
        if not p.get("nodePort") and by_name.get(p.get("name", "")) not in held:
            p["nodePort"] = by_name.get(p.get("name", ""))


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _target_port(port: Obj, pod: Obj) -> int | None:
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    for c in (pod.get("spec") or {}).get("containers") or []:
        for cp in c.get("ports") or []:
            if cp.get("name") == target and cp.get("protocol", "TCP") == port.get("protocol", "TCP"):
                return int(cp["containerPort"])
    return None


def _matches(selector: Obj, labels: Obj) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def slice_content(svc: Obj, pods: list[Obj]) -> tuple[list[Obj], list[Obj]]:
    """(endpoints, ports) of the Service's slice from the namespace's pods."""
    spec = svc["spec"]
    members = [p for p in pods if _matches(spec.get("selector") or {}, p["metadata"].get("labels") or {})
               and (p.get("status") or {}).get("podIP")
               and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    ports: list[Obj] = []
    endpoints: list[Obj] = []
    for pod in sorted(members, key=lambda p: p["metadata"]["name"]):
        resolved = [(p, _target_port(p, pod)) for p in spec.get("ports") or []]
        if any(number is None for _, number in resolved):
            continue  # a named targetPort the pod does not have: not an endpoint
        if not ports:
            ports = [{"name": p.get("name", ""), "protocol": p.get("protocol", "TCP"), "port": number}
                     for p, number in resolved]
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        endpoints.append({
            "addresses": [pod["status"]["podIP"]],
            "conditions": {"ready": _ready(pod) and not terminating, "serving": _ready(pod),
                           "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"],
                          "uid": pod["metadata"]["uid"]},
            "nodeName": (pod.get("spec") or {}).get("nodeName", "")})
    return endpoints, ports


def new_slice(svc: Obj, suffix: str) -> Obj:
    meta = svc["metadata"]
    return {"metadata": {"name": f"{meta['name']}-{suffix}", "generateName": f"{meta['name']}-",
                         "namespace": meta["namespace"],
                         "labels": {SERVICE_NAME: meta["name"], MANAGED_BY: CONTROLLER},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "addressType": "IPv4", "endpoints": [], "ports": []}


class Addresses:
    """Pod IPs (10.244/16), cluster IPs (10.96/16) and node ports (30000 up) handed out by the cluster."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self._pods, self._services, self._node_ports = itertools.count(10), itertools.count(10), itertools.count(30000)

    def pod_ip(self) -> str:
        """A pod network address for a pod not on the host network (a hostNetwork pod has the node's)."""
        n = next(self._pods)
        return f"10.244.{n // 250}.{n % 250 + 2}"

    def cluster_ip(self) -> str:
        used = {s["spec"].get("clusterIP") for s in self.cluster.objects["services"].values()}
        return next(ip for n in self._services if (ip := f"10.96.{n // 250}.{n % 250 + 2}") not in used)

    def node_ports_in_use(self, ns: str, name: str) -> set[int]:
        """Node ports every Service but ``ns/name`` holds."""
        return {p["nodePort"] for (n, s), svc in self.cluster.objects["services"].items() if (n, s) != (ns, name)
                for p in svc["spec"].get("ports") or [] if p.get("nodePort")}

    def node_port(self) -> int:
        used = self.node_ports_in_use("", "")
        return next(p for p in self._node_ports if p not in used)


def sync_endpoint_slices(cluster: FakeCluster, suffix: Callable[[], str]) -> None:
    """The EndpointSlice controller's pass: one slice per Service with a selector, kept up to date; a slice
    whose Service is gone is collected. ``suffix``: a generated name's random part."""
    objects = cluster.objects
    by_service = {(s["metadata"]["namespace"], s["metadata"]["labels"].get(SERVICE_NAME, "")): s
                  for s in objects["endpointslices"].values()}
    for (ns, name), slice_ in by_service.items():
        if cluster.find("services", ns, name) is None:
            del objects["endpointslices"][(ns, slice_["metadata"]["name"])]
    for svc in list(objects["services"].values()):
        if not svc["spec"].get("selector"):
            continue
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        endpoints, ports = slice_content(svc, cluster.items("pods", ns))
        current = by_service.get((ns, name))
        if current is None:
            current = cluster.put("endpointslices", new_slice(svc, suffix()))
        if (current["endpoints"], current["ports"]) != (endpoints, ports):
            current["endpoints"], current["ports"] = endpoints, ports
            cluster.touch(current)
