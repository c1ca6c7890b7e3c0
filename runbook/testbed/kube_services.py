"""Services on the local testbed: the API server's Service store, the EndpointSlice controller's view of which
pods back a Service, and Prometheus's ``kubernetes_sd`` (role pod) view of which pods to scrape.

The pods are the local kubelet's records (``<kube_dir>/pods/<name>.json``: ``name``, ``labels``,
``annotations``, ``ip``, ``ready``, ``terminating``, ``spec``); Services are stored as applied under
``<kube_dir>/services/<name>.json``. Nothing here runs a process: :mod:`runbook.testbed.kube_proxy` forwards
connections to :meth:`LocalServices.endpoints` and writes :meth:`LocalServices.scrape_targets` for Prometheus.

What is kept from Kubernetes:

- a Service is validated as the API server validates it (its words, its field paths), a NodePort in
  30000-32767 and not already allocated, a missing nodePort allocated, a missing targetPort defaulted to port;
- endpoints are pods whose labels match the selector, that have an IP, are Ready (unless the Service sets
  ``publishNotReadyAddresses``) and are not terminating; a named targetPort is resolved in each pod's own spec,
  and a pod that does not declare that port is left out (the EndpointSlice controller's FindPort);
- a ClusterIP or NodePort Service gets a ``spec.clusterIP`` from the testbed's service range (a loopback range,
  ``testbed.service_cidr``; the API server's ``--service-cluster-ip-range``): one given is kept when it is in
  the range and free, ``None`` is headless (no proxying: DNS answers the ready pods' IPs), a missing one is
  allocated at random above the range's static band (as the allocator since Kubernetes 1.26), and a replace
  keeps it: a different one is refused (``may not change once set``). :mod:`runbook.testbed.kube_proxy`
  serves each clusterIP:port, :mod:`runbook.testbed.kube_dns` answers ``<svc>.<ns>.svc.cluster.local``;
- scrape targets are every pod with an IP annotated ``prometheus.io/scrape: "true"``, Ready or not, terminating
  or not (kubernetes_sd lists a pod until it is deleted: discovery/kubernetes/pod.go buildPod), relabelled as
  the kind-side Prometheus configuration does: address ``<ip>:<prometheus.io/port>``, ``pod``, ``app_version``
  (the pod's ``version`` label) and ``namespace``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.errors import AdapterError

if TYPE_CHECKING:
    from runbook.env import Env

NODE_PORT_RANGE = (30000, 32767)  # the API server's default --service-node-port-range
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
SERVED_TYPES = ("ClusterIP", "NodePort")  # what this testbed forwards
PROTOCOLS = ("SCTP", "TCP", "UDP")
DEFAULT_SERVICE_CIDR = "127.240.0.0/16"  # on loopback, outside the controller's pod IPs (127.20-219.x.y)
HEADLESS = "None"

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
               "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
               "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
DNS1123_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                     "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
                     "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
LABEL_NAME_MSG = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                  "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
                  "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
                   "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
                   "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"


def _q(value: Any) -> str:
    """A value as the API server's field errors quote it: strings in double quotes, numbers bare."""
    return json.dumps(value) if isinstance(value, str) else str(value)


def port_name_errors(name: str) -> list[str]:
    """apimachinery's IsValidPortName (an IANA_SVC_NAME), each problem in its words."""
    errs = []
    if len(name) > 15:
        errs.append("must be no more than 15 characters")
    if not re.fullmatch(r"[-a-z0-9]+", name):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search(r"[a-z]", name):
        errs.append("must contain at least one letter (a-z)")
    if "--" in name:
        errs.append("must not contain consecutive hyphens")
    if name and (name[0] == "-" or name[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def _label_key_errors(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errs = []
    if key.count("/") > 1:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', with an optional "
                "DNS subdomain prefix and '/'"]
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        errs.append("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                    "'-' or '.', and must start and end with an alphanumeric character")
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    elif not _LABEL_NAME.fullmatch(name):
        errs.append(LABEL_NAME_MSG)
    return errs


def validate_service(manifest: Mapping[str, Any], *, allocated: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The Service as the API server stores it (targetPort and protocol defaulted, nodePorts allocated), or
    AdapterError with the API server's message: ``Service "web" is invalid: <field errors>``. ``allocated`` maps
    nodePorts already taken to the Service holding each (a Service may keep its own)."""
    if manifest.get("kind") != "Service":
        raise AdapterError(f"LocalServices applies Services only, got {manifest.get('kind')!r}")
    svc: dict[str, Any] = json.loads(json.dumps(manifest))  # a deep copy; also refuses what JSON cannot carry
    meta = svc.setdefault("metadata", {})
    spec = svc.setdefault("spec", {})
    name = meta.get("name") or ""
    errs: list[str] = []
    if not name:
        errs.append("metadata.name: Required value: name or generateName is required")
    elif len(name) > 63:
        errs.append(f"metadata.name: Invalid value: {_q(name)}: must be no more than 63 characters")
    elif not _DNS1035.fullmatch(name):
        errs.append(f"metadata.name: Invalid value: {_q(name)}: {DNS1035_MSG}")
    kind = spec.setdefault("type", "ClusterIP")
    if kind not in SERVICE_TYPES:
        errs.append(f"spec.type: Unsupported value: {_q(kind)}: supported values: "
                    + ", ".join(_q(t) for t in SERVICE_TYPES))
    selector = spec.get("selector") or {}
    if not isinstance(selector, dict):
        errs.append(f"spec.selector: Invalid value: {_q(str(selector))}: must be a map of label keys to values")
        selector = {}
    for key, value in selector.items():
        errs += [f"spec.selector: Invalid value: {_q(key)}: {m}" for m in _label_key_errors(str(key))]
        if not isinstance(value, str):
            errs.append(f"spec.selector: Invalid value: {_q(value)}: must be a string")
        elif len(value) > 63:
            errs.append(f"spec.selector: Invalid value: {_q(value)}: must be no more than 63 characters")
        elif not _LABEL_VALUE.fullmatch(value):
            errs.append(f"spec.selector: Invalid value: {_q(value)}: {LABEL_VALUE_MSG}")
    ports = spec.get("ports") or []
    if not ports and kind != "ExternalName":
        errs.append("spec.ports: Required value")
    names: set[str] = set()
    taken = dict(allocated or {})
    for i, p in enumerate(ports):
        path = f"spec.ports[{i}]"
        pname = p.get("name") or ""
        if len(ports) > 1 and not pname:
            errs.append(f"{path}.name: Required value")
        elif pname:
            if not _DNS1123_LABEL.fullmatch(pname) or len(pname) > 63:
                errs.append(f"{path}.name: Invalid value: {_q(pname)}: {DNS1123_LABEL_MSG}")
            elif pname in names:
                errs.append(f"{path}.name: Duplicate value: {_q(pname)}")
            names.add(pname)
        proto = p.setdefault("protocol", "TCP")
        if proto not in PROTOCOLS:
            errs.append(f"{path}.protocol: Unsupported value: {_q(proto)}: supported values: "
                        + ", ".join(_q(x) for x in PROTOCOLS))
        port = p.get("port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            errs.append(f"{path}.port: Invalid value: {_q(port)}: {PORT_RANGE_MSG}")
        target = p.setdefault("targetPort", port)
        if isinstance(target, str):
            errs += [f"{path}.targetPort: Invalid value: {_q(target)}: {m}" for m in port_name_errors(target)]
        elif not isinstance(target, int) or isinstance(target, bool) or not 1 <= target <= 65535:
            errs.append(f"{path}.targetPort: Invalid value: {_q(target)}: {PORT_RANGE_MSG}")
        node_port = p.get("nodePort")
        if node_port is not None and kind == "ClusterIP":
            errs.append(f"{path}.nodePort: Forbidden: may not be used when `type` is 'ClusterIP'")
        elif kind == "NodePort":
            low, high = NODE_PORT_RANGE
            if node_port is None:  # the allocator's pick: the lowest port free
                node_port = next((n for n in range(low, high + 1) if n not in taken), None)
                if node_port is None:
                    errs.append(f"{path}.nodePort: Internal error: range is full")
                    continue
                p["nodePort"] = node_port
            elif not isinstance(node_port, int) or isinstance(node_port, bool) or not low <= node_port <= high:
                errs.append(f"{path}.nodePort: Invalid value: {_q(node_port)}: provided port is not in the valid "
                            f"range. The range of valid ports is {low}-{high}")
                continue
            elif taken.get(node_port, name).startswith(f"{name}#"):
                errs.append(f"{path}.nodePort: Duplicate value: {node_port}")
                continue
            elif taken.get(node_port, name) != name:
                errs.append(f"{path}.nodePort: Invalid value: {node_port}: provided port is already allocated")
                continue
            taken[node_port] = f"{name}#{i}"  # a second port of this Service may not take it either
    cip = spec.get("clusterIP") or (spec.get("clusterIPs") or [""])[0] or ""
    if cip and cip != HEADLESS:
        try:
            ipaddress.IPv4Address(cip)
        except ValueError:
            errs.append(f"spec.clusterIPs[0]: Invalid value: {_q(cip)}: must be a valid IP address, "
                        "(e.g. 10.9.8.7 or 2001:db8::ffff)")
    elif cip == HEADLESS and kind == "NodePort":
        errs.append(f"spec.clusterIPs[0]: Invalid value: {_q(cip)}: may not be set to 'None' for NodePort services")
    if errs:
        who = name or "?"
        body = errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]"
        raise AdapterError(f'Service "{who}" is invalid: {body}', obj=who)
    if kind not in SERVED_TYPES:
        raise AdapterError(f"Service {name}: type {kind} is valid but the local testbed serves ClusterIP and "
                           "NodePort Services only", obj=name)
    return svc


def resolve_target_port(target: int | str, pod_spec: Mapping[str, Any]) -> int | None:
    """A Service's targetPort in one pod: a number as is, a name looked up in the pod's containers' ports
    (the first container declaring it, as podutil.FindPort); None when the pod does not declare it."""
    if isinstance(target, int):
        return target
    for c in pod_spec.get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target and p.get("protocol", "TCP") == "TCP":
                return int(p["containerPort"])
    return None


class LocalServices:
    """The Services of one local testbed and what they select among the local kubelet's pods."""

    def __init__(self, kube_dir: Path, *, namespace: str = "default", service_cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        self.kube = Path(kube_dir)
        self.namespace = namespace
        self.service_cidr = ipaddress.IPv4Network(service_cidr)
        self.dir = self.kube / "services"
        self.dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, env: Env, kube_dir: Path) -> LocalServices:
        """The Services of ``env``'s testbed (its service range; its kube namespace, as the kubelet's pods)."""
        cidr = env.testbed.service_cidr if env.testbed is not None else DEFAULT_SERVICE_CIDR
        return cls(kube_dir, namespace=env.namespace, service_cidr=cidr)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (two applies must not take the same clusterIP or nodePort)."""
        with (self.dir / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _cluster_ip(self, name: str, spec: dict[str, Any], old: Mapping[str, Any] | None) -> None:
        """The API server's clusterIP allocation for an applied spec (in place), or AdapterError in its words."""
        given = spec.get("clusterIP") or (spec.get("clusterIPs") or [""])[0] or ""
        held = str(((old or {}).get("spec") or {}).get("clusterIP") or "")
        if held and given and given != held:
            raise AdapterError(f'Service "{name}" is invalid: spec.clusterIPs[0]: Invalid value: ["{given}"]: '
                               "may not change once set", obj=name)
        ip = given or held
        if ip != HEADLESS:
            taken = {c for n, c in self.cluster_ips().items() if n != name}
            if ip and ip != held:
                why = ("provided IP is already allocated" if ip in taken else
                       f"the provided IP ({ip}) is not in the valid range. The range of valid IPs is "
                       f"{self.service_cidr}" if ipaddress.IPv4Address(ip) not in self.service_cidr else "")
                if why:
                    raise AdapterError(f'Service "{name}" is invalid: spec.clusterIPs: Invalid value: ["{ip}"]: '
                                       f"failed to allocate IP {ip}: {why}", obj=name)
            elif not ip:
                ip = self._allocate(taken, name)
        spec["clusterIP"], spec["clusterIPs"] = ip, [ip]

    def _allocate(self, taken: set[str], name: str) -> str:
        """A free address at random above the static band (min(max(16, size/16), 256) addresses), as the API
        server's allocator; a nearly full range: the first free one, the static band last."""
        net, size = self.service_cidr, self.service_cidr.num_addresses
        static = min(max(16, size // 16), 256)
        for _ in range(64 if size - 1 > static else 0):
            ip = str(net[random.randrange(static, size - 1)])
            if ip not in taken:
                return ip
        for i in [*range(static, size - 1), *range(1, min(static, size - 1))]:
            if str(net[i]) not in taken:
                return str(net[i])
        raise AdapterError(f'Service "{name}" is invalid: spec.clusterIPs: Internal error: failed to allocate a '
                           "serviceIP: range is full", obj=name)

    def cluster_ips(self) -> dict[str, str]:
        """Service name -> its clusterIP (headless ``None`` included; Services stored before clusterIPs: none)."""
        out = {}
        for n in self.names():
            ip = ((self.get(n) or {}).get("spec") or {}).get("clusterIP")
            if ip:
                out[n] = str(ip)
        return out

    def namespace_of(self, svc: Mapping[str, Any]) -> str:
        """The Service's namespace: its manifest's, else this store's."""
        return str((svc.get("metadata") or {}).get("namespace") or self.namespace)

    # -- the store -------------------------------------------------------------------------
    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace a Service (``kubectl apply``); returns it as stored (defaults, allocated nodePorts
        and clusterIP). An invalid one raises AdapterError with the API server's message and changes nothing."""
        with self._locked():
            return self._apply(manifest)

    def _apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        name = (manifest.get("metadata") or {}).get("name") or ""
        allocated: dict[int, str] = {}
        for other in self.names():
            if other == name:
                continue
            for p in ((self.get(other) or {}).get("spec") or {}).get("ports") or []:
                if p.get("nodePort"):
                    allocated[int(p["nodePort"])] = other
        old = self.get(name) if name else None
        if old is not None:  # an update keeps the nodePorts it holds when the manifest names none (as apply does)
            held = {p.get("name") or "": p.get("nodePort") for p in old["spec"].get("ports") or []}
            manifest = json.loads(json.dumps(manifest))
            if (manifest.get("spec") or {}).get("type") == "NodePort":
                for p in manifest["spec"].get("ports") or []:
                    if p.get("nodePort") is None and held.get(p.get("name") or ""):
                        p["nodePort"] = held[p.get("name") or ""]
        svc = validate_service(manifest, allocated=allocated)
        self._cluster_ip(name, svc["spec"], old)
        path = self.dir / f"{svc['metadata']['name']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(svc, indent=1, sort_keys=True))
        tmp.replace(path)
        return svc

    def delete(self, name: str) -> None:
        """Remove a Service; deleting one that is not there converges."""
        (self.dir / f"{name}.json").unlink(missing_ok=True)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.dir / f"{name}.json").read_text()))
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json"))

    # -- the pods --------------------------------------------------------------------------
    def pods(self) -> list[dict[str, Any]]:
        """The kubelet's pod records, by name; one deleted or half-written while listed is skipped (the kubelet
        writes through a rename, so a record read is whole)."""
        out = []
        for path in sorted((self.kube / "pods").glob("*.json")):
            try:
                out.append(dict(json.loads(path.read_text())))
            except (FileNotFoundError, ValueError):
                continue
        return out

    def _port(self, svc: Mapping[str, Any], port: int | str | None) -> dict[str, Any]:
        ports = svc["spec"].get("ports") or []
        if port is None:
            return dict(ports[0])
        for p in ports:
            if port in (p.get("name"), p.get("port")):
                return dict(p)
        raise AdapterError(f"Service {svc['metadata']['name']} has no port {port!r}; its ports: "
                           + ", ".join(f"{p.get('name') or '-'}={p['port']}" for p in ports),
                           obj=svc["metadata"]["name"])

    def endpoints(self, name: str, port: int | str | None = None, *,
                  pods: list[dict[str, Any]] | None = None) -> list[str]:
        """The Service's ready endpoints for one of its ports (by name or number; the first when not given),
        ``ip:port`` sorted: pods selected by its selector, with an IP, Ready (or any, with
        publishNotReadyAddresses), not terminating, the targetPort resolved in each pod. An unknown Service, or
        one without a selector (whose Endpoints no controller writes), has none. ``pods``: records already
        listed by :meth:`pods` (one listing for several questions)."""
        svc = self.get(name)
        if svc is None:
            return []
        selector = svc["spec"].get("selector") or {}
        if not selector:
            return []
        sp = self._port(svc, port)
        publish_not_ready = bool(svc["spec"].get("publishNotReadyAddresses"))
        out = []
        for pod in self.pods() if pods is None else pods:
            labels = pod.get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            if not pod.get("ip") or pod.get("terminating"):
                continue
            if not (pod.get("ready") or publish_not_ready):
                continue
            target = resolve_target_port(sp["targetPort"], pod.get("spec") or {})
            if target is not None:
                out.append(f"{pod['ip']}:{target}")
        return sorted(out)

    def node_ports(self, name: str) -> dict[str, int]:
        """A NodePort Service's ports: port name (or number, as a string) -> nodePort."""
        svc = self.get(name)
        if svc is None or svc["spec"].get("type") != "NodePort":
            return {}
        return {str(p.get("name") or p["port"]): int(p["nodePort"]) for p in svc["spec"]["ports"]}

    def scrape_targets(self, *, pods: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Prometheus file_sd target groups, one per pod with an IP annotated ``prometheus.io/scrape: "true"``
        (Ready or not, terminating or not: kubernetes_sd lists a pod until it is deleted), relabelled as the
        kind-side configuration does. The address is ``ip:<prometheus.io/port>``; without that annotation,
        kubernetes_sd's own targets: one per declared container port (a container declaring none: the bare IP,
        which Prometheus scrapes on port 80)."""
        groups = []
        for pod in self.pods() if pods is None else pods:
            ann = pod.get("annotations") or {}
            ip = pod.get("ip") or ""
            if not ip or ann.get("prometheus.io/scrape") != "true" or pod.get("phase") in ("Succeeded", "Failed"):
                continue  # the kind-side keep (scrape "true") and drop (phase Succeeded|Failed) rules
            port = ann.get("prometheus.io/port")
            if port and re.fullmatch(r"\d+", str(port)):
                targets = [f"{ip}:{port}"]
            else:
                found: set[str] = set()
                for c in (pod.get("spec") or {}).get("containers") or []:
                    declared = c.get("ports") or []
                    found.update(f"{ip}:{p['containerPort']}" for p in declared)
                    if not declared:
                        found.add(ip)
                targets = sorted(found)
            labels = {"pod": str(pod["name"]), "app_version": str((pod.get("labels") or {}).get("version", "")),
                      "namespace": str(pod.get("namespace") or self.namespace)}
            groups.append({"targets": targets, "labels": labels})
        return groups
