"""The Job and StatefulSet controllers of the mock API server (with the garbage collector's and pvc-protection's part
for their pods and claims), as :mod:`tests.kube.fake_batch` describes them; :func:`sync` runs on every settle."""

from __future__ import annotations

import copy
import time
from datetime import datetime
from typing import TYPE_CHECKING

from tests.kube.fake_batch import _claims, _deleting, _owner_uid, _ready, _ref, defaults, schedule
from tests.kube.fake_state import Obj, random_suffix, template_hash, timestamp, wall

if TYPE_CHECKING:
    from tests.kube.fake_cluster import FakeCluster


def _claims_in_use(cluster: FakeCluster, ns: str) -> set[str]:
    return {c for p in cluster.items("pods", ns) if p["spec"].get("nodeName")
            and p["status"].get("phase") not in ("Succeeded", "Failed") for c in _claims(p)}



def sync(cluster: FakeCluster) -> None:
    """One pass: scheduling of waiting pods, Jobs, StatefulSets, garbage collection, claim deletions."""
    for pod in cluster.items("pods"):
        if not pod["spec"].get("nodeName") and not _deleting(pod) and schedule(cluster, pod):
            cluster.touch(pod)
            cluster.kubelet.admit((pod["metadata"]["namespace"], pod["metadata"]["name"]))
    owners = {}
    for kind, plural, fn in (("Job", "jobs", _job), ("StatefulSet", "statefulsets", _statefulset)):
        for obj in cluster.items(plural):
            owners[obj["metadata"]["uid"]] = kind
            pods = [p for p in cluster.items("pods", obj["metadata"]["namespace"])
                    if _owner_uid(p, kind) == obj["metadata"]["uid"]]
            if _deleting(obj):  # Foreground: the owner goes once its pods are gone
                for p in pods:
                    if not _deleting(p):
                        cluster.delete_pod(p)
                if not pods:
                    del cluster.objects[plural][(obj["metadata"]["namespace"], obj["metadata"]["name"])]
                continue
            fn(cluster, obj, pods)
    for pod in cluster.items("pods"):
        for kind in ("Job", "StatefulSet"):
            uid = _owner_uid(pod, kind)
            if uid is not None and owners.get(uid) != kind and not _deleting(pod):
                cluster.delete_pod(pod)
    for pvc in cluster.items("persistentvolumeclaims"):
        ns = pvc["metadata"]["namespace"]
        if _deleting(pvc) and pvc["metadata"]["name"] not in _claims_in_use(cluster, ns):
            del cluster.objects["persistentvolumeclaims"][(ns, pvc["metadata"]["name"])]


def _cond(type_: str, reason: str, message: str) -> Obj:
    now = timestamp(wall())
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastProbeTime": now,
            "lastTransitionTime": now}


def _set_status(cluster: FakeCluster, obj: Obj, status: Obj) -> None:
    if status != obj.get("status"):
        obj["status"] = status
        cluster.touch(obj)


def _job(cluster: FakeCluster, job: Obj, pods: list[Obj]) -> None:
    spec, meta = job["spec"], job["metadata"]
    st = copy.deepcopy(job.get("status") or {})
    st.setdefault("startTime", timestamp(wall()))
    counted = cluster.job_books.setdefault(meta["uid"], {"succeeded": [], "failed": [], "at": 0.0})
    live = [p for p in pods if not _deleting(p)]
    for p in pods:
        key = {"Succeeded": "succeeded", "Failed": "failed"}.get(p["status"].get("phase", ""))
        if key and p["metadata"]["name"] not in counted[key]:
            counted[key].append(p["metadata"]["name"])
            counted["at"] = time.monotonic()
    active = [p for p in live if p["status"].get("phase") in ("Pending", "Running")]
    conds = st.setdefault("conditions", [])
    types = {c["type"] for c in conds}
    restarts = sum(s.get("restartCount", 0) for p in active for s in p["status"].get("containerStatuses") or [])
    limit = int(spec["backoffLimit"])
    if not types & {"SuccessCriteriaMet", "FailureTarget"}:
        deadline = spec.get("activeDeadlineSeconds")
        elapsed = (wall() - datetime.fromisoformat(st["startTime"])).total_seconds()
        if len(counted["succeeded"]) >= int(spec["completions"]):
            conds.append(_cond("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"))
        elif len(counted["failed"]) > limit or (spec["template"]["spec"]["restartPolicy"] == "OnFailure"
                                                 and restarts and restarts >= limit):
            conds.append(_cond("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
        elif deadline is not None and elapsed >= float(deadline):
            conds.append(_cond("FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline"))
        else:
            failed = len(counted["failed"])
            want = min(int(spec["parallelism"]), int(spec["completions"]) - len(counted["succeeded"])) - len(active)
            if want > 0 and (not failed or time.monotonic() >= counted["at"] + cluster.backoff * 2 ** (failed - 1)):
                for _ in range(want):
                    _job_pod(cluster, job)
    types = {c["type"] for c in conds}
    if types & {"SuccessCriteriaMet", "FailureTarget"} and not types & {"Complete", "Failed"}:
        for p in active:
            if "FailureTarget" in types and p["metadata"]["name"] not in counted["failed"]:
                counted["failed"].append(p["metadata"]["name"])
            cluster.delete_pod(p)
        if not [p for p in pods if _deleting(p) or p in active]:
            target = next(c for c in conds if c["type"] in ("SuccessCriteriaMet", "FailureTarget"))
            final = "Complete" if target["type"] == "SuccessCriteriaMet" else "Failed"
            conds.append({**target, "type": final, "lastTransitionTime": timestamp(wall())})
            if final == "Complete":
                st["completionTime"] = timestamp(wall())
            counted["finished"] = time.monotonic()
    ttl = spec.get("ttlSecondsAfterFinished")
    if ttl is not None and "finished" in counted and time.monotonic() >= counted["finished"] + float(ttl):
        del cluster.objects["jobs"][(meta["namespace"], meta["name"])]  # background: the collector takes the pods
        return
    now_live = [p for p in live if p["status"].get("phase") in ("Pending", "Running") and not _deleting(p)]
    st.update(active=len(now_live), ready=sum(1 for p in now_live if _ready(p)),
              succeeded=len(counted["succeeded"]), failed=len(counted["failed"]),
              terminating=sum(1 for p in pods if _deleting(p)), uncountedTerminatedPods={})
    st = {k: v for k, v in st.items() if v or k in ("ready", "terminating")}
    _set_status(cluster, job, st)


def _job_pod(cluster: FakeCluster, job: Obj) -> None:
    meta, template = job["metadata"], job["spec"]["template"]
    cluster.create("pods", meta["namespace"], {
        "metadata": {"name": f"{meta['name']}-{random_suffix(cluster.rng)}", "generateName": f"{meta['name']}-",
                     "labels": dict(template["metadata"]["labels"]),
                     "ownerReferences": [_ref(job, "Job", "batch/v1")]},
        "spec": copy.deepcopy(template["spec"])})


def _statefulset(cluster: FakeCluster, sts: Obj, pods: list[Obj]) -> None:
    spec, meta = sts["spec"], sts["metadata"]
    name, ns = meta["name"], meta["namespace"]
    replicas = int(spec["replicas"])
    revision = f"{name}-{template_hash(spec['template'])}"
    by_ordinal = {int(p["metadata"]["name"].rsplit("-", 1)[1]): p for p in pods}
    parallel = spec["podManagementPolicy"] == "Parallel"

    def healthy(p: Obj) -> bool:
        return not _deleting(p) and p["status"].get("phase") == "Running" and _ready(p)

    for i in range(replicas):
        pod = by_ordinal.get(i)
        if pod is None:
            if cluster.find("pods", ns, f"{name}-{i}") is not None:
                break  # a previous owner's pod of that name, still terminating
            _ordinal_pod(cluster, sts, i, revision)
            if not parallel:
                break
        elif not parallel and not healthy(pod):
            break
    condemned = sorted((i for i in by_ordinal if i >= replicas), reverse=True)
    if condemned and (parallel or not any(_deleting(by_ordinal[i]) for i in condemned)):
        settled = all(i in by_ordinal and healthy(by_ordinal[i]) for i in range(replicas))
        for i in condemned if parallel else condemned[:1] if settled else []:
            cluster.delete_pod(by_ordinal[i])
    strategy = spec["updateStrategy"]
    if (strategy.get("type") == "RollingUpdate" and not condemned
            and all(i in by_ordinal and healthy(by_ordinal[i]) for i in range(replicas))):
        partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
        stale = [i for i in range(partition, replicas)
                 if by_ordinal[i]["metadata"]["labels"].get("controller-revision-hash") != revision]
        if stale:
            cluster.delete_pod(by_ordinal[max(stale)])
    live = [p for p in by_ordinal.values() if not _deleting(p)]
    updated = sum(1 for p in live if p["metadata"]["labels"].get("controller-revision-hash") == revision)
    current = (sts.get("status") or {}).get("currentRevision") or revision
    if updated == replicas == len(live) and all(_ready(p) for p in live):
        current = revision
    ready = sum(1 for p in live if _ready(p))
    _set_status(cluster, sts, {
        "observedGeneration": meta["generation"], "replicas": len(live), "readyReplicas": ready,
        "availableReplicas": ready, "updatedReplicas": updated, "currentRevision": current, "updateRevision": revision,
        "currentReplicas": sum(1 for p in live if p["metadata"]["labels"].get("controller-revision-hash") == current),
        "collisionCount": 0})


def _ordinal_pod(cluster: FakeCluster, sts: Obj, i: int, revision: str) -> None:
    meta, spec = sts["metadata"], sts["spec"]
    name, ns = meta["name"], meta["namespace"]
    pod_spec = copy.deepcopy(spec["template"]["spec"])
    for t in spec.get("volumeClaimTemplates") or []:
        claim = f"{t['metadata']['name']}-{name}-{i}"
        if cluster.find("persistentvolumeclaims", ns, claim) is None:  # an existing claim is used as it is
            body = {"metadata": {"name": claim, "namespace": ns, "labels": {
                **(t["metadata"].get("labels") or {}), **((spec.get("selector") or {}).get("matchLabels") or {})}},
                "spec": {k: v for k, v in copy.deepcopy(t.get("spec") or {}).items()}}
            cluster.create("persistentvolumeclaims", ns, defaults("persistentvolumeclaims", body))
        volumes = [v for v in pod_spec.get("volumes") or [] if v["name"] != t["metadata"]["name"]]
        pod_spec["volumes"] = [*volumes, {"name": t["metadata"]["name"],
                                          "persistentVolumeClaim": {"claimName": claim}}]
    pod_spec.update(hostname=f"{name}-{i}", subdomain=spec.get("serviceName") or "")
    labels = {**((spec["template"].get("metadata") or {}).get("labels") or {}), "controller-revision-hash": revision,
              "statefulset.kubernetes.io/pod-name": f"{name}-{i}", "apps.kubernetes.io/pod-index": str(i)}
    cluster.create("pods", ns, {"metadata": {"name": f"{name}-{i}", "labels": labels,
                                             "ownerReferences": [_ref(sts, "StatefulSet", "apps/v1")]},
                                "spec": pod_spec})
