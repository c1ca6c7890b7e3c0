"""Jobs, StatefulSets and PersistentVolumeClaims in the mock API server (the Batch port's kind side,
:mod:`runbook.adapters.kube_batch`): defaults and validation as 1.32 applies them where it is cheap, and minimal
controllers, run on every :meth:`tests.kube.fake_cluster.FakeCluster.settle`.

- validation: a Job's ``restartPolicy`` must be Never/OnFailure, its ``selector`` and ``template`` are immutable;
  a StatefulSet's ``selector`` must match its template labels, its ``restartPolicy`` is Always, and an update may
  change only replicas, ordinals, template, updateStrategy, revisionHistoryLimit, persistentVolumeClaimRetentionPolicy
  and minReadySeconds; a claim needs an access mode and a storage request, and its spec is immutable;
- defaults: a Job gets the selector ``batch.kubernetes.io/controller-uid=<uid>`` and its template the
  ``controller-uid``/``job-name`` labels (both spellings), backoffLimit 6, completions and parallelism 1; a claim
  kind's default StorageClass ``standard``, ``volumeMode: Filesystem`` and the ``kubernetes.io/pvc-protection``
  finalizer;
- run-to-completion pods (restartPolicy Never/OnFailure): a container whose command is ``true``/``false`` or
  ``sh -c <script>`` exits (after the script's ``sleep`` seconds, with its ``exit N`` code, else 0; the script
  itself is not run); the pod is then Succeeded (all exit 0) or
  Failed (Never); OnFailure restarts the container after the cluster's backoff (restartCount counted);
- the Job controller: pods ``<job>-<5 chars>`` from the template, owned by the Job; Succeeded/Failed pods counted
  (and kept); a failed pod replaced after ``backoff * 2**(failed-1)``; ``failed > backoffLimit`` (or OnFailure
  restarts reaching it) -> FailureTarget, active pods deleted, then Failed (BackoffLimitExceeded);
  ``activeDeadlineSeconds`` -> DeadlineExceeded; completions reached -> SuccessCriteriaMet then Complete (with
  completionTime); ``ttlSecondsAfterFinished``; a Job deleted without a propagationPolicy orphans its pods (batch/v1's
  default, the API server's warning aside);
- the StatefulSet controller: pods ``<name>-<i>`` (hostname, subdomain, controller-revision-hash, pod-name and
  pod-index labels), the claims ``<template>-<name>-<i>`` created before their pod (labelled with the selector) and
  kept when the pod or the set goes (retention Retain); OrderedReady (ordinal i waits for 0..i-1 Running and Ready,
  scale-down highest first, one at a time) or Parallel; RollingUpdate (highest stale ordinal >= partition first,
  once all are Ready) or OnDelete; status with current/update revisions;
- scheduling: a pod whose claim does not exist (or is being deleted) stays Pending, PodScheduled False; a claim is
  Bound (``volumeName: pvc-<uid>``) by its first scheduled pod (WaitForFirstConsumer); a deleted claim goes once no
  scheduled, unfinished pod uses it (pvc-protection);
- garbage collection: pods whose Job/StatefulSet is gone are deleted; Foreground deletion waits for the pods.

The controllers are in :mod:`tests.kube.fake_batch_ctl`.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING

from tests.kube.fake_configmaps import label_causes
from tests.kube.fake_state import (
    RESOURCES,
    Cause,
    GoValue,
    Obj,
    invalid,
    pod_defaults,
    timestamp,
    wall,
)

if TYPE_CHECKING:
    from tests.kube.fake_cluster import FakeCluster
    from tests.kube.fake_kubelet import Kubelet

PLURALS = ("jobs", "statefulsets", "persistentvolumeclaims")
JOB_UID, JOB_NAME = "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
RUN_TO_COMPLETION = ("Never", "OnFailure")
STS_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy", "revisionHistoryLimit",
               "persistentVolumeClaimRetentionPolicy", "minReadySeconds")
STS_FORBIDDEN = ("updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
                 "'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and "
                 "'minReadySeconds' are forbidden")


def _go_map(labels: dict[str, str]) -> GoValue:
    return GoValue("map[string]string{" + ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items())) + "}")


def _deleting(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def _owner_uid(obj: Obj, kind: str) -> str | None:
    return next((o["uid"] for o in obj["metadata"].get("ownerReferences") or [] if o.get("kind") == kind), None)


def _ref(obj: Obj, kind: str, api_version: str) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


# --------------------------------------------------------------------------- defaults and validation


def defaults(plural: str, obj: Obj) -> Obj:
    """What defaulting adds before validation (create and update): the template's pod defaults, a claim's mode."""
    obj = copy.deepcopy(obj)
    spec = obj.setdefault("spec", {})
    if plural in ("jobs", "statefulsets"):
        template = spec.setdefault("template", {})
        template["spec"] = pod_defaults(template.get("spec") or {})
    if plural == "jobs":
        for k, v in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1), ("suspend", False),
                     ("completionMode", "NonIndexed"), ("podReplacementPolicy", "TerminatingOrFailed")):
            spec.setdefault(k, v)
    elif plural == "statefulsets":
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
        for t in spec.get("volumeClaimTemplates") or []:
            t.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    elif plural == "persistentvolumeclaims":
        spec.setdefault("volumeMode", "Filesystem")
    return obj


def validate(plural: str, new: Obj, old: Obj | None) -> None:
    """Create (``old`` None) or update validation; a 422 in the real server's words."""
    name = str(new["metadata"].get("name", ""))
    spec, causes = new.get("spec") or {}, label_causes(new["metadata"].get("labels"))
    policy = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if plural == "jobs":
        if policy not in RUN_TO_COMPLETION:
            causes.append(Cause("spec.template.spec.restartPolicy", "FieldValueNotSupported",
                                'supported values: "OnFailure", "Never"', policy))
        if old is not None:
            for key, shown in (("selector", "v1.LabelSelector{...}"), ("template", "core.PodTemplateSpec{...}")):
                if key in spec and spec[key] != old["spec"][key]:
                    causes.append(Cause(f"spec.{key}", "FieldValueInvalid", "field is immutable", GoValue(shown)))
    elif plural == "statefulsets":
        labels = (spec["template"].get("metadata") or {}).get("labels") or {}
        selector = spec.get("selector")
        if not selector:
            causes.append(Cause("spec.selector", "FieldValueRequired", ""))
        elif not _selects(selector, labels):
            causes.append(Cause("spec.template.metadata.labels", "FieldValueInvalid",
                                "`selector` does not match template `labels`", _go_map(labels)))
        if policy != "Always":
            causes.append(Cause("spec.template.spec.restartPolicy", "FieldValueNotSupported",
                                'supported values: "Always"', policy))
        if old is not None and any(spec.get(k) != old["spec"].get(k) for k in set(spec) | set(old["spec"])
                                   if k not in STS_MUTABLE):
            causes.append(Cause("spec", "FieldValueForbidden", STS_FORBIDDEN))
    elif plural == "persistentvolumeclaims":
        if not spec.get("accessModes"):
            causes.append(Cause("spec.accessModes", "FieldValueRequired", "at least 1 access mode is required"))
        if "storage" not in ((spec.get("resources") or {}).get("requests") or {}):
            causes.append(Cause("spec.resources[storage]", "FieldValueRequired", ""))
        if old is not None and {k: v for k, v in spec.items() if k != "resources"} != {
                k: v for k, v in old["spec"].items() if k != "resources"}:
            causes.append(Cause("spec", "FieldValueForbidden", "spec is immutable after creation except "
                                "resources.requests and volumeAttributesClassName for bound claims"))
    if causes:
        raise invalid(RESOURCES[plural], name, causes)


def on_create(cluster: FakeCluster, plural: str, obj: Obj) -> None:
    """What the API server adds to a new Job or claim (before it is stored), and an empty status."""
    meta = obj["metadata"]
    if plural == "jobs":
        meta["uid"] = cluster.new_uid()
        labels = {JOB_UID: meta["uid"], JOB_NAME: meta["name"], "controller-uid": meta["uid"], "job-name": meta["name"]}
        obj["spec"].setdefault("selector", {"matchLabels": {JOB_UID: meta["uid"]}})
        tmeta = obj["spec"]["template"].setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), **labels}
        obj["status"] = {}
    elif plural == "statefulsets":
        obj["status"] = {"replicas": 0, "availableReplicas": 0}
    else:
        obj["spec"].setdefault("storageClassName", "standard")
        meta["finalizers"] = [*meta.get("finalizers", []), PVC_PROTECTION]
        obj["status"] = {"phase": "Pending"}
    if plural != "persistentvolumeclaims":
        meta["generation"] = 1


# --------------------------------------------------------------------------- the kubelet's run-to-completion pods


def run_to_completion(pod: Obj) -> bool:
    return pod["spec"].get("restartPolicy") in RUN_TO_COMPLETION


def exit_plan(container: Obj) -> tuple[float, int] | None:
    """(seconds until it exits, its exit code) for a container that ends by itself, None for one that runs on."""
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if argv and argv[0] in ("true", "/bin/true", "false", "/bin/false"):
        return 0.0, 0 if argv[0].endswith("true") else 1
    if len(argv) >= 3 and argv[0] in ("sh", "/bin/sh") and argv[1] == "-c":  # ends after its sleeps
        code = re.search(r"exit (\d+)", argv[2])
        return sum(float(t) for t in re.findall(r"sleep ([\d.]+)", argv[2])), int(code.group(1)) if code else 0
    return None


def started(kubelet: Kubelet, pod: Obj, container: Obj) -> None:
    """Called when a container starts: schedule its exit if it is a run-to-completion pod's and ends by itself
    (the kubelet's crash loop of ``false`` is for restartPolicy Always only)."""
    plan = exit_plan(container) if run_to_completion(pod) else None
    if plan is not None:
        key, name = (pod["metadata"]["namespace"], pod["metadata"]["name"]), container["name"]
        kubelet.cluster.after(plan[0], lambda: _exited(kubelet, key, name, plan[1]))


def _exited(kubelet: Kubelet, key: tuple[str, str], name: str, code: int) -> None:
    pod = kubelet.cluster.objects["pods"].get(key)
    if pod is None or _deleting(pod):
        return
    st = kubelet._status(pod, name)
    now = timestamp(wall())
    st["state"] = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                  "startedAt": (st["state"].get("running") or {}).get("startedAt", now),
                                  "finishedAt": now, "containerID": st.get("containerID", "")}}
    st.update(ready=False, started=False)
    if code != 0 and pod["spec"]["restartPolicy"] == "OnFailure":
        delay = kubelet.cluster.backoff * 2 ** st["restartCount"]

        def restart() -> None:
            current = kubelet.cluster.objects["pods"].get(key)
            if current is not None and not _deleting(current):
                kubelet._status(current, name)["lastState"] = kubelet._status(current, name)["state"]
                kubelet._run(current, kubelet._container(current, name), restart=True)
                kubelet.refresh(current)

        kubelet.cluster.after(delay, restart)
    kubelet.refresh(pod)


def phase(pod: Obj) -> str | None:
    """Succeeded/Failed for a run-to-completion pod whose app containers all ended; None: the kubelet's phase."""
    apps = pod["status"].get("containerStatuses") or []
    if not run_to_completion(pod) or not apps or len(apps) < len(pod["spec"].get("containers") or []):
        return None
    codes = [(s["state"].get("terminated") or {}).get("exitCode") for s in apps]
    if any(c is None for c in codes):
        return None
    if all(c == 0 for c in codes):
        return "Succeeded"
    return "Failed" if pod["spec"]["restartPolicy"] == "Never" else None


# --------------------------------------------------------------------------- scheduling and claims


def _claims(pod: Obj) -> list[str]:
    return [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"].get("volumes") or []
            if "persistentVolumeClaim" in v]


def schedule(cluster: FakeCluster, pod: Obj) -> bool:
    """Bind a new pod to the node unless a claim it mounts is missing (then Pending, PodScheduled False).
    Binding binds its claims (WaitForFirstConsumer). True when bound: the kubelet may start it."""
    ns = pod["metadata"]["namespace"]
    for claim in _claims(pod):
        pvc = cluster.find("persistentvolumeclaims", ns, claim)
        if pvc is None or _deleting(pvc):
            pod["spec"].pop("nodeName", None)
            message = (f'0/1 nodes are available: persistentvolumeclaim "{claim}" '
                       + ("not found" if pvc is None else "is being deleted")
                       + ". preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": message, "lastProbeTime": None,
                                            "lastTransitionTime": timestamp(wall())}]
            return False
    pod["spec"]["nodeName"] = cluster.node
    for claim in _claims(pod):
        pvc = cluster.get("persistentvolumeclaims", ns, claim)
        if pvc["status"].get("phase") != "Bound":
            pvc["spec"]["volumeName"] = f"pvc-{pvc['metadata']['uid']}"
            pvc["status"] = {"phase": "Bound", "accessModes": pvc["spec"]["accessModes"],
                             "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]}}
            pvc["metadata"].setdefault("annotations", {})["volume.kubernetes.io/selected-node"] = cluster.node
            cluster.touch(pvc)
    return True
