"""The state behind the Kubernetes API mock server: objects, the controllers, one node and its kubelet.

Time runs lazily: every request first :meth:`FakeCluster.settle`s the cluster, running each timer whose
moment has come (a container started, a pod gone after its grace delay) and then one pass of the
controllers (Deployment -> ReplicaSet -> pods, garbage collection, deletion). No background thread, so a
request always sees a state consistent with the clock, and delays are short (tens of milliseconds).

The controllers keep the rules the adapter depends on:
- a Deployment's controller observes a new generation only after a delay (``observedGeneration`` lags);
- ``Recreate``: the new ReplicaSet gets pods only once every pod of the old ones is gone, terminating ones
  included; ``RollingUpdate`` by maxSurge/maxUnavailable, with revisions, rollback renumbering and history
  (:mod:`tests.kube.fake_rollout`);
- Services get a cluster IP (and node ports) and an EndpointSlice of their pods (:mod:`tests.kube.fake_services`);
- a ReplicaSet replaces a pod as soon as it is terminating (a terminating pod is not an active one);
- deletion: ``Foreground`` keeps the Deployment (with ``deletionTimestamp``) until its pods are gone;
  ``Background`` removes it at once and collects its ReplicaSets and pods afterwards.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable

from tests.kube import fake_batch as batch
from tests.kube import fake_batch_ctl
from tests.kube import fake_rollout as rollout
from tests.kube import fake_services as services
from tests.kube.fake_configmaps import root_ca
from tests.kube.fake_kubelet import Kubelet
from tests.kube.fake_state import (
    RESOURCES,
    ApiError,
    ImageStore,
    Obj,
    Resource,
    already_exists,
    not_found,
    pod_defaults,
    random_suffix,
    template_hash,
    timestamp,
    wall,
)

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
HASH_LABEL = "pod-template-hash"


def _owner(obj: Obj, kind: str) -> str | None:
    return next((o["uid"] for o in obj["metadata"].get("ownerReferences") or [] if o.get("kind") == kind), None)


def _ref(obj: Obj, kind: str, api_version: str) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _deleting(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def _ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


class FakeCluster:
    """Every object of the mock API server, behind one lock."""

    def __init__(self, *, images: ImageStore | None = None, node: str = "fake-node", start_delay: float = 0.05,
                 restart_delay: float = 0.05, grace: float = 0.2, observe_delay: float = 0.02,
                 backoff: float = 0.2, seed: int = 0) -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, dict[Key, Obj]] = {plural: {} for plural in RESOURCES}
        self.images = images or ImageStore()
        self.node = node
        self.start_delay, self.restart_delay, self.grace = start_delay, restart_delay, grace
        self.observe_delay, self.backoff = observe_delay, backoff
        self.kubelet = Kubelet(self)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._rv = itertools.count(1000)
        self._rng = random.Random(seed)
        self._observe_at: dict[Key, float] = {}
        self.job_books: dict[str, Obj] = {}  # the Job controller's counts of finished pods, by Job uid
        self.addresses = services.Addresses(self)
        self._put("nodes", {"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                            "status": {"nodeInfo": {"kubeletVersion": "v1.32.0",
                                                    "containerRuntimeVersion": "containerd://1.7.24"}}})

    @property
    def rng(self) -> random.Random:
        return self._rng

    def new_uid(self) -> str:
        return self._uid()

    def delete_pod(self, pod: Obj) -> None:
        """A graceful delete of a pod, as a controller asks for it."""
        self._delete_pod(pod, None)

    def pod_ip(self) -> str:
        return self.addresses.pod_ip()

    def node_ports_in_use(self, ns: str, name: str) -> set[int]:
        return self.addresses.node_ports_in_use(ns, name)

    # -- clock

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def settle(self) -> None:
        """Run every timer that is due, then the controllers (callers hold the lock)."""
        while self._timers and self._timers[0][0] <= time.monotonic():
            _, _, fn = heapq.heappop(self._timers)
            fn()
        self._controllers()

    # -- storage

    def _uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128)))

    def _put(self, plural: str, obj: Obj) -> Obj:
        res = RESOURCES[plural]
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", self._uid())
        meta.setdefault("creationTimestamp", timestamp(wall()))
        meta["resourceVersion"] = str(next(self._rv))
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        self.objects[plural][(meta.get("namespace", ""), meta["name"])] = obj
        return obj

    def put(self, plural: str, obj: Obj) -> Obj:
        """Store a new object the controllers made (uid, creationTimestamp, resourceVersion, kind)."""
        return self._put(plural, obj)

    def touch(self, obj: Obj) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))

    def find(self, plural: str, ns: str, name: str) -> Obj | None:
        return self.objects[plural].get((ns, name))

    def get(self, plural: str, ns: str, name: str) -> Obj:
        obj = self.find(plural, ns, name)
        if obj is None:
            raise not_found(RESOURCES[plural], name)
        return obj

    def items(self, plural: str, ns: str | None = None) -> list[Obj]:
        return [o for (n, _), o in sorted(self.objects[plural].items()) if ns is None or n == ns]

    def require_namespace(self, ns: str) -> None:
        space = self.find("namespaces", "", ns)
        if space is None:
            raise not_found(RESOURCES["namespaces"], ns)
        if _deleting(space):
            raise ApiError(403, "Forbidden", f"unable to create new content in namespace {ns} because it is being "
                           "terminated", {"name": ns, "kind": "namespaces"})

    def record_event(self, obj: Obj, reason: str, message: str, type_: str) -> None:
        meta = obj["metadata"]
        now = timestamp(wall())
        for e in self.items("events", meta["namespace"]):
            if (e["involvedObject"]["uid"], e["reason"], e["message"]) == (meta["uid"], reason, message):
                e["count"] += 1
                e["lastTimestamp"] = now
                self.touch(e)
                return
        self._put("events", {
            "metadata": {"name": f"{meta['name']}.{self._rng.getrandbits(64):016x}", "namespace": meta["namespace"]},
            "involvedObject": {"kind": obj["kind"], "namespace": meta["namespace"], "name": meta["name"],
                               "uid": meta["uid"], "apiVersion": obj["apiVersion"]},
            "reason": reason, "message": message, "type": type_, "count": 1, "firstTimestamp": now,
            "lastTimestamp": now, "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet", "reportingInstance": self.node})

    # -- writes the API server asks for

    def create(self, plural: str, ns: str, body: Obj) -> Obj:
        res = RESOURCES[plural]
        if res.namespaced:
            self.require_namespace(ns)
        name = body["metadata"]["name"]
        if self.find(plural, ns if res.namespaced else "", name) is not None:
            raise already_exists(res, name)
        obj = copy.deepcopy(body)
        obj.pop("status", None)
        for k in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
            obj["metadata"].pop(k, None)
        if res.namespaced:
            obj["metadata"]["namespace"] = ns
        if plural == "namespaces":
            obj["spec"], obj["status"] = {"finalizers": ["kubernetes"]}, {"phase": "Active"}
            self._put("configmaps", root_ca(name))  # the root CA publisher's, in every namespace
        elif plural == "deployments":
            self._deployment_defaults(obj)
            obj["metadata"]["generation"] = 1
            obj["status"] = {}
            self._observe_at[(ns, name)] = time.monotonic() + self.observe_delay
        elif plural == "services":
            services.service_defaults(obj, self.addresses.cluster_ip, self.addresses.node_port)
        elif plural == "pods":
            obj["spec"] = pod_defaults(obj.get("spec") or {}, admission=True)
            obj["spec"]["nodeName"] = self.node
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif plural in batch.PLURALS:
            batch.on_create(self, plural, obj)
        self._put(plural, obj)
        if plural == "pods" and batch.schedule(self, obj):
            self.kubelet.admit((ns, name))
        return obj

    def _deployment_defaults(self, dep: Obj) -> None:
        spec = dep.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        template = spec.setdefault("template", {})
        template["spec"] = pod_defaults(template.get("spec") or {})

    def replace(self, plural: str, ns: str, name: str, new: Obj) -> Obj:
        """Store an updated object (already validated): spec changes bump a Deployment's generation and
        reach the kubelet for a pod."""
        old = self.get(plural, ns, name)
        obj = copy.deepcopy(new)
        for k in ("uid", "creationTimestamp", "deletionTimestamp", "generation", "ownerReferences"):
            if k in old["metadata"]:
                obj["metadata"][k] = old["metadata"][k]
        obj["metadata"]["namespace"] = ns
        obj.pop("status", None)
        if "status" in old:  # ConfigMaps have none
            obj["status"] = old["status"]
        if plural == "services":  # what the update keeps of the allocated values (patchAllocatedValues)
            if not obj["spec"].get("clusterIP"):
                obj["spec"]["clusterIP"] = old["spec"]["clusterIP"]
            services.keep_node_ports(old, obj)
            services.service_defaults(obj, self.addresses.cluster_ip, self.addresses.node_port)
        if plural in ("jobs", "statefulsets") and obj["spec"] != old["spec"]:
            obj["metadata"]["generation"] = old["metadata"]["generation"] + 1
        if plural == "deployments":
            self._deployment_defaults(obj)
            if obj["spec"] != old["spec"]:
                obj["metadata"]["generation"] = old["metadata"]["generation"] + 1
                self._observe_at[(ns, name)] = time.monotonic() + self.observe_delay
        self._put(plural, obj)
        if plural == "pods":
            self.kubelet.images_changed((ns, name), old["spec"], obj["spec"])
        return obj

    def delete(self, plural: str, ns: str, name: str, *, propagation: str | None = None,
               grace_seconds: int | None = None) -> Obj | None:
        """Start deleting an object; the object as it is now (with ``deletionTimestamp``), or None when it
        is gone at once."""
        obj = self.get(plural, ns, name)
        if _deleting(obj):
            return obj
        if plural == "pods":
            self._delete_pod(obj, grace_seconds)
            return obj
        if obj["metadata"].get("finalizers") and propagation != "Foreground":  # kept until they are removed
            obj["metadata"]["deletionTimestamp"] = timestamp(wall())
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            self.touch(obj)
            return obj
        if plural == "namespaces" or propagation == "Foreground":
            obj["metadata"]["deletionTimestamp"] = timestamp(wall())
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            if plural == "namespaces":
                obj["status"]["phase"] = "Terminating"
            else:
                obj["metadata"]["finalizers"] = ["foregroundDeletion"]
            self.touch(obj)
            return obj
        del self.objects[plural][(ns, name)]
        if propagation == "Orphan":
            for dependent in [*self.objects["replicasets"].values(), *self.objects["pods"].values()]:
                dependent["metadata"]["ownerReferences"] = [
                    o for o in dependent["metadata"].get("ownerReferences") or []
                    if o["uid"] != obj["metadata"]["uid"]]
        return None

    def _delete_pod(self, pod: Obj, grace_seconds: int | None) -> None:
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30) if grace_seconds is None else grace_seconds
        meta = pod["metadata"]
        meta["deletionTimestamp"] = timestamp(wall(grace))
        meta["deletionGracePeriodSeconds"] = grace
        self.touch(pod)
        self.kubelet.stop(pod)
        key = (meta["namespace"], meta["name"])
        uid = meta["uid"]

        def gone() -> None:
            current = self.objects["pods"].get(key)
            if current is not None and current["metadata"]["uid"] == uid:
                del self.objects["pods"][key]

        self.after(self.grace if grace > 0 else 0.0, gone)

    # -- controllers

    def _owned(self, plural: str, owner: Obj) -> list[Obj]:
        uid = owner["metadata"]["uid"]
        return [o for o in self.items(plural, owner["metadata"]["namespace"])
                if uid in (r["uid"] for r in o["metadata"].get("ownerReferences") or [])]

    def _controllers(self) -> None:
        for node in self.objects["nodes"].values():
            node["status"]["images"] = self.images.node_images()
        for dep in list(self.objects["deployments"].values()):
            self._deployment(dep)
        for rs in list(self.objects["replicasets"].values()):
            self._replicaset(rs)
        uids = {o["metadata"]["uid"] for o in self.objects["replicasets"].values()}
        for pod in list(self.objects["pods"].values()):  # garbage collection of orphans
            owner = _owner(pod, "ReplicaSet")
            if owner is not None and owner not in uids and not _deleting(pod):
                self._delete_pod(pod, None)
        for dep in list(self.objects["deployments"].values()):
            self._deployment_status(dep)
        fake_batch_ctl.sync(self)
        services.sync_endpoint_slices(self, lambda: random_suffix(self._rng))
        for space in list(self.objects["namespaces"].values()):
            if _deleting(space):
                self._namespace_teardown(space)

    def _deployment(self, dep: Obj) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        key = (meta["namespace"], meta["name"])
        sets = self._owned("replicasets", dep)
        if _deleting(dep):
            for rs in sets:
                if not _deleting(rs):
                    rs["metadata"]["deletionTimestamp"] = timestamp(wall())
            if not sets:
                del self.objects["deployments"][key]
            return
        if self._observe_at.get(key, 0.0) > time.monotonic():
            return
        labels = (spec["template"].get("metadata") or {}).get("labels") or {}
        h = template_hash(spec["template"])
        new = next((rs for rs in sets if rs["metadata"]["labels"].get(HASH_LABEL) == h), None)
        olds = [rs for rs in sets if rs is not new]
        if new is None:
            template = copy.deepcopy(spec["template"])
            template.setdefault("metadata", {})["labels"] = {**labels, HASH_LABEL: h}
            selector = copy.deepcopy(spec["selector"])
            selector.setdefault("matchLabels", {})[HASH_LABEL] = h
            new = self._put("replicasets", {
                "metadata": {"name": f"{meta['name']}-{h}", "namespace": meta["namespace"],
                             "labels": {**labels, HASH_LABEL: h},
                             "ownerReferences": [_ref(dep, "Deployment", "apps/v1")]},
                "spec": {"replicas": 0, "selector": selector, "template": template}, "status": {}})
        if rollout.annotate_new(dep, new, olds):
            self.touch(new)
        annotations = meta.setdefault("annotations", {})
        if annotations.get(rollout.REVISION) != str(rollout.revision(new)):
            annotations[rollout.REVISION] = str(rollout.revision(new))
            self.touch(dep)
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            for rs in olds:
                rs["spec"]["replicas"] = 0
            old_pods = [p for rs in olds for p in self._owned("pods", rs)]
            new["spec"]["replicas"] = 0 if old_pods else spec.get("replicas", 1)
        else:
            rollout.roll(spec, new, olds, self._available)
        desired = spec.get("replicas", 1)
        if new["spec"]["replicas"] == desired == self._available(new) and not any(
                rs["spec"]["replicas"] or self._owned("pods", rs) for rs in olds):
            for rs in rollout.beyond_history(spec, olds, lambda rs: bool(self._owned("pods", rs))):
                del self.objects["replicasets"][(meta["namespace"], rs["metadata"]["name"])]
        dep.setdefault("status", {})["observedGeneration"] = meta["generation"]

    def _available(self, rs: Obj) -> int:
        """Pods of the ReplicaSet that are Ready and not terminating (minReadySeconds 0)."""
        return sum(1 for p in self._owned("pods", rs) if not _deleting(p) and _ready(p))

    def _replicaset(self, rs: Obj) -> None:
        meta = rs["metadata"]
        pods = self._owned("pods", rs)
        active = [p for p in pods if not _deleting(p)]
        if _deleting(rs):
            for p in active:
                self._delete_pod(p, None)
            if not pods:
                del self.objects["replicasets"][(meta["namespace"], meta["name"])]
            return
        owner = _owner(rs, "Deployment")
        if owner is not None and owner not in {d["metadata"]["uid"] for d in self.objects["deployments"].values()}:
            rs["metadata"]["deletionTimestamp"] = timestamp(wall())  # garbage collection (background)
            return
        want = rs["spec"].get("replicas", 1)
        victims = sorted(active, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
        victims.sort(key=_ready)  # not ready ones first, then the newest (getPodsToDelete's ranking, roughly)
        for p in victims[:max(0, len(active) - want)]:
            self._delete_pod(p, None)
        for _ in range(want - len(active)):
            self._new_pod(rs)
        ready = [p for p in active if any(c["type"] == "Ready" and c["status"] == "True"
                                          for c in p["status"].get("conditions") or [])]
        rs["status"] = {k: v for k, v in {"replicas": min(len(active), want), "readyReplicas": len(ready),
                                          "availableReplicas": len(ready)}.items() if v}
        rs["status"]["observedGeneration"] = meta.get("generation", 1)

    def _new_pod(self, rs: Obj) -> None:
        meta = rs["metadata"]
        template = rs["spec"]["template"]
        name = f"{meta['name']}-{random_suffix(self._rng)}"
        body = {"metadata": {"name": name, "generateName": f"{meta['name']}-", "namespace": meta["namespace"],
                             "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                             "ownerReferences": [_ref(rs, "ReplicaSet", "apps/v1")]},
                "spec": copy.deepcopy(template["spec"])}
        self.create("pods", meta["namespace"], body)

    def _deployment_status(self, dep: Obj) -> None:
        pods = [p for rs in self._owned("replicasets", dep) for p in self._owned("pods", rs) if not _deleting(p)]
        dep["status"] = rollout.status(dep, pods, template_hash(dep["spec"]["template"]), HASH_LABEL)

    def _namespace_teardown(self, space: Obj) -> None:
        ns = space["metadata"]["name"]
        for plural in ("deployments", "services", "endpointslices", "configmaps", "jobs", "statefulsets",
                       "persistentvolumeclaims"):
            for obj in self.items(plural, ns):
                del self.objects[plural][(ns, obj["metadata"]["name"])]
        for pod in self.items("pods", ns):
            if not _deleting(pod):
                self._delete_pod(pod, None)
        if not self.items("pods", ns) and not self.items("replicasets", ns):
            for e in self.items("events", ns):
                del self.objects["events"][(ns, e["metadata"]["name"])]
            del self.objects["namespaces"][("", ns)]

    def resource(self, plural: str) -> Resource:
        return RESOURCES[plural]
