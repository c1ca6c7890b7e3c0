"""Services and their EndpointSlices in the mock API server (:mod:`tests.kube.fake_cluster`).

What the API server's defaulting does to a Service (a cluster IP, ``protocol: TCP``, ``targetPort`` =
``port``, a node port allocated for ``NodePort``) and what the EndpointSlice controller keeps (one
``discovery.k8s.io/v1`` slice per Service, labelled ``kubernetes.io/service-name``): an endpoint per pod
the selector matches that has an IP, with ``ready`` (the pod's Ready condition and not terminating),
``serving`` (Ready) and ``terminating`` (``deletionTimestamp`` set); ports resolved from ``targetPort``,
a named one through the pod's ``containerPort`` of that name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]

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
