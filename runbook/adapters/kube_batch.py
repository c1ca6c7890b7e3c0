"""The Batch port of the kube adapter (:class:`runbook.adapters.base.Batch`): Jobs (BatchV1), StatefulSets (AppsV1)
and PersistentVolumeClaims (CoreV1), mixed into :class:`runbook.adapters.kube.KubeWorkloads`.

- ``apply_job``/``apply_statefulset``: create, or replace on the resourceVersion just read with the manifest laid
  over the live object (as a merge patch would: fields the manifest leaves out keep their live values, so the
  selector and the labels the API server added to a Job's template stay, and a re-applied manifest converges). The
  API server's validation speaks for the rest: a Job whose template changed is its 422 (``field is immutable``), a
  StatefulSet change outside replicas/template/updateStrategy/... its 422 (``Forbidden``). A replace that lost the
  race to a status write (the controllers write a Job's and a StatefulSet's often; the generation unchanged) is
  re-read and retried a few times; one that another client's spec change beat fails with the 409.
- ``apply_pvc``: create; an existing claim keeps its spec (immutable once created but for its storage request):
  only its labels and annotations are replaced, when they differ. A claim being deleted is a KubeError (409).
- ``job_status``/``statefulset_status``: the object's ``status`` as the API returns it, and its pods (found by the
  object's selector, owned by its uid) with their phases and container exit codes as the kubelet reported them.
- ``delete_job`` sends ``propagationPolicy`` always (batch/v1 deletes orphan a Job's pods by default);
  ``delete_statefulset`` deletes in the background (its claims stay: retention Retain); ``delete_pvc``. With
  ``wait``: until the object and its pods are gone, polled every ``poll_interval`` up to the env's rollout timeout.

Every failure is a :class:`~runbook.errors.KubeError` naming env, namespace, object and action, with the HTTP status.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s

from runbook.adapters.base import JobCondition, JobPod, JobStatus, Propagation, StatefulSetStatus
from runbook.adapters.kube_api import call_json
from runbook.errors import AdapterError, KubeError
from runbook.wait import wait_for

if TYPE_CHECKING:
    from runbook.adapters.kube_api import KubeTarget
    from runbook.env import Env

REPLACE_RETRIES = 5  # replace attempts of a Job or StatefulSet when only its status moved under us


def overlay(live: Any, desired: Any) -> Any:
    """``desired`` laid over ``live``: mappings merged key by key, lists of named mappings merged by name (containers,
    env, volumes, ports), lists of mappings of the same length element by element (volumeClaimTemplates), anything
    else replaced by ``desired``."""
    if isinstance(live, Mapping) and isinstance(desired, Mapping):
        out = copy.deepcopy(dict(live))
        for k, v in desired.items():
            out[k] = overlay(live.get(k), v)
        return out
    if isinstance(live, list) and isinstance(desired, list) and desired and all(
            isinstance(x, Mapping) for x in live + desired):
        if all("name" in x for x in live + desired):
            by_name = {x["name"]: x for x in live}
            return [overlay(by_name.get(x["name"]), x) for x in desired]
        if len(live) == len(desired):
            return [overlay(a, b) for a, b in zip(live, desired, strict=True)]
    return copy.deepcopy(desired)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _selector(obj: Mapping[str, Any]) -> str:
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _owned_by(pod: Mapping[str, Any], uid: str) -> bool:
    return any(r.get("uid") == uid for r in (pod.get("metadata") or {}).get("ownerReferences") or [])


def job_pod(pod: Mapping[str, Any]) -> JobPod:
    """A pod as ``kubectl get pod`` shows a Job's: phase, app containers' exit codes (``state.terminated``; None while
    a container runs or waits), every container's terminated or waiting reason, and whether it is being deleted."""
    status = pod.get("status") or {}
    codes: dict[str, int | None] = {}
    reasons: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for s in status.get(key) or []:
            state = s.get("state") or {}
            ended = state.get("terminated")
            reason = (ended or state.get("waiting") or {}).get("reason") or ""
            if key == "containerStatuses":
                codes[s["name"]] = int(ended["exitCode"]) if ended and "exitCode" in ended else None
            if reason:
                reasons[s["name"]] = str(reason)
    meta = pod.get("metadata") or {}
    return JobPod(str(meta.get("name", "")), str(status.get("phase", "Unknown")), codes, reasons,
                  bool(meta.get("deletionTimestamp")))


class KubeBatch:
    """Mixed into :class:`runbook.adapters.kube.KubeWorkloads`, which provides these attributes."""

    env: Env
    namespace: str
    target: KubeTarget
    api_client: k8s.ApiClient
    core: k8s.CoreV1Api
    apps: k8s.AppsV1Api
    request_timeout: float
    poll_interval: float

    if TYPE_CHECKING:
        def _call(self, fn: Any, *args: Any, action: str, obj: str, **kw: Any) -> Any: ...

        def _json(self, fn: Any, *args: Any, action: str, obj: str, **kw: Any) -> dict[str, Any]: ...

    @property
    def batch_api(self) -> k8s.BatchV1Api:
        return k8s.BatchV1Api(self.api_client)

    def _get(self, fn: Callable[..., Any], noun: str, name: str) -> dict[str, Any] | None:
        return call_json(fn, name, self.namespace, action="get", obj=f"{noun}/{name}", target=self.target,
                         timeout=self.request_timeout, missing_ok=True)

    def _kind(self, manifest: Mapping[str, Any], kind: str, verb: str) -> str:
        if manifest.get("kind") != kind:
            raise AdapterError(f"{verb} takes a {kind}, got {manifest.get('kind')!r}", env=self.env.name)
        return str((manifest.get("metadata") or {}).get("name") or "")

    def _apply(self, manifest: Mapping[str, Any], *, noun: str, read: Callable[..., Any], create: Callable[..., Any],
               replace: Callable[..., Any]) -> None:
        name = str(manifest["metadata"]["name"])
        obj = f"{noun}/{name}"
        body = copy.deepcopy(dict(manifest))
        body["metadata"]["namespace"] = self.namespace
        body["metadata"].pop("resourceVersion", None)
        current = self._get(read, noun, name)
        if current is None:
            self._call(create, self.namespace, body, action="create", obj=obj, _preload_content=False)
            return
        for attempt in range(REPLACE_RETRIES):
            new = overlay({k: v for k, v in current.items() if k != "status"}, body)
            new["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
            try:
                self._call(replace, name, self.namespace, new, action="replace", obj=obj, _preload_content=False)
                return
            except KubeError as exc:
                if exc.status != 409 or attempt == REPLACE_RETRIES - 1:
                    raise
                generation = current["metadata"].get("generation")
                current = self._get(read, noun, name)
                if current is None or current["metadata"].get("generation") != generation:
                    raise

    def _pods(self, owner: Mapping[str, Any], noun: str) -> list[dict[str, Any]]:
        meta = owner["metadata"]
        data = self._json(self.core.list_namespaced_pod, self.namespace, label_selector=_selector(owner),
                          action="list", obj=f"pods of {noun}/{meta['name']}")
        return [p for p in data.get("items") or [] if _owned_by(p, meta["uid"])]

    def _wait_gone(self, what: str, obj: str, remaining: Callable[[], list[str]]) -> None:
        wait_for(remaining, lambda left: not left, timeout=self.env.timeouts.rollout, interval=self.poll_interval,
                 what=what, env=self.env.name, obj=obj)

    # -- Jobs

    def apply_job(self, manifest: dict[str, Any]) -> None:
        """Create the Job, or replace it with the manifest laid over the live one (a changed template: the 422)."""
        self._kind(manifest, "Job", "apply_job")
        api = self.batch_api
        self._apply(manifest, noun="job", read=api.read_namespaced_job, create=api.create_namespaced_job,
                    replace=api.replace_namespaced_job)

    def _job(self, name: str) -> dict[str, Any] | None:
        return self._get(self.batch_api.read_namespaced_job, "job", name)

    def job_status(self, name: str) -> JobStatus | None:
        job = self._job(name)
        if job is None:
            return None
        st = job.get("status") or {}
        conds = tuple(JobCondition(str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason") or ""),
                                   str(c.get("message") or "")) for c in st.get("conditions") or [])
        pods = sorted((job_pod(p) for p in self._pods(job, "job")), key=lambda p: p.name)
        return JobStatus(name, int(st.get("active") or 0), int(st.get("succeeded") or 0), int(st.get("failed") or 0),
                         int(st.get("ready") or 0), conds, tuple(pods), _time(st.get("startTime")),
                         _time(st.get("completionTime")))

    def delete_job(self, name: str, *, propagation: Propagation = "Background", wait: bool = True) -> None:
        """Delete the Job with that propagationPolicy (sent always); with ``wait``, until it and the pods it owned
        are gone (Orphan: the Job only)."""
        job = self._job(name)
        if job is None:
            return
        self._call(self.batch_api.delete_namespaced_job, name, self.namespace, action="delete", obj=f"job/{name}",
                   propagation_policy=propagation, missing_ok=True, _preload_content=False)
        if not wait:
            return

        def remaining() -> list[str]:
            left = [] if propagation == "Orphan" else [p["metadata"]["name"] for p in self._pods(job, "job")]
            return left + ([f"job/{name}"] if self._job(name) is not None else [])

        self._wait_gone(f"job {name} and its pods to be gone", f"job/{name}", remaining)

    # -- StatefulSets

    def apply_statefulset(self, manifest: dict[str, Any]) -> None:
        """Create the StatefulSet, or replace it with the manifest laid over the live one."""
        self._kind(manifest, "StatefulSet", "apply_statefulset")
        self._apply(manifest, noun="statefulset", read=self.apps.read_namespaced_stateful_set,
                    create=self.apps.create_namespaced_stateful_set, replace=self.apps.replace_namespaced_stateful_set)

    def _statefulset(self, name: str) -> dict[str, Any] | None:
        return self._get(self.apps.read_namespaced_stateful_set, "statefulset", name)

    def statefulset(self, name: str) -> dict[str, Any] | None:
        """The live StatefulSet (``kubectl get statefulset NAME -o json``: server fields and status), or None."""
        return self._statefulset(name)

    def statefulset_status(self, name: str) -> StatefulSetStatus | None:
        sts = self._statefulset(name)
        if sts is None:
            return None
        st = sts.get("status") or {}

        def ordinal(pod: Mapping[str, Any]) -> int:
            suffix = str(pod["metadata"]["name"]).rsplit("-", 1)[-1]
            return int(suffix) if suffix.isdigit() else -1

        pods = sorted(self._pods(sts, "statefulset"), key=ordinal)
        return StatefulSetStatus(name, int(st.get("replicas") or 0), int(st.get("readyReplicas") or 0),
                                 int(st.get("currentReplicas") or 0), int(st.get("updatedReplicas") or 0),
                                 str(st.get("currentRevision") or ""), str(st.get("updateRevision") or ""),
                                 int(st.get("observedGeneration") or 0), tuple(p["metadata"]["name"] for p in pods))

    def delete_statefulset(self, name: str, *, wait: bool = True) -> None:
        """Delete the StatefulSet (Background: the garbage collector deletes its pods; its claims stay)."""
        sts = self._statefulset(name)
        if sts is None:
            return
        self._call(self.apps.delete_namespaced_stateful_set, name, self.namespace, action="delete",
                   obj=f"statefulset/{name}", propagation_policy="Background", missing_ok=True,
                   _preload_content=False)
        if not wait:
            return

        def remaining() -> list[str]:
            left = [p["metadata"]["name"] for p in self._pods(sts, "statefulset")]
            return left + ([f"statefulset/{name}"] if self._statefulset(name) is not None else [])

        self._wait_gone(f"statefulset {name} and its pods to be gone", f"statefulset/{name}", remaining)

    # -- PersistentVolumeClaims

    def _pvc(self, name: str) -> dict[str, Any] | None:
        return self._get(self.core.read_namespaced_persistent_volume_claim, "persistentvolumeclaim", name)

    def apply_pvc(self, manifest: dict[str, Any]) -> None:
        """Create the claim; an existing one keeps its spec, its labels and annotations become the manifest's."""
        name = self._kind(manifest, "PersistentVolumeClaim", "apply_pvc")
        obj = f"persistentvolumeclaim/{name}"
        current = self._pvc(name)
        if current is None:
            body = copy.deepcopy(manifest)
            body["metadata"]["namespace"] = self.namespace
            body["metadata"].pop("resourceVersion", None)
            self._call(self.core.create_namespaced_persistent_volume_claim, self.namespace, body, action="create",
                       obj=obj, _preload_content=False)
            return
        meta = current["metadata"]
        if meta.get("deletionTimestamp"):
            raise KubeError(f"apply {obj} in namespace {self.namespace}: it is being deleted (a pod still uses it: "
                            "kubernetes.io/pvc-protection); wait for it to be gone", status=409, env=self.env.name,
                            obj=obj)
        want = {k: (manifest["metadata"].get(k) or {}) for k in ("labels", "annotations")}
        # annotations the controllers add (the selected node, the binder's) stay
        want["annotations"] = {**{k: v for k, v in (meta.get("annotations") or {}).items()
                                  if "kubernetes.io/" in k}, **want["annotations"]}
        if all((meta.get(k) or {}) == v for k, v in want.items()):
            return
        new = {k: v for k, v in current.items() if k != "status"}
        new["metadata"] = {**meta, **want}
        self._call(self.core.replace_namespaced_persistent_volume_claim, name, self.namespace, new,
                   action="replace", obj=obj, _preload_content=False)

    def pvcs(self, selector: str = "") -> list[str]:
        query = {"label_selector": selector} if selector else {}
        data = self._json(self.core.list_namespaced_persistent_volume_claim, self.namespace, action="list",
                          obj="persistentvolumeclaims" + (f" labelled {selector}" if selector else ""), **query)
        return sorted(str(c["metadata"]["name"]) for c in data.get("items") or [])

    def delete_pvc(self, name: str, *, wait: bool = True) -> None:
        """Delete the claim; with ``wait``, until it is gone (a pod still using it holds it: pvc-protection)."""
        obj = f"persistentvolumeclaim/{name}"
        self._call(self.core.delete_namespaced_persistent_volume_claim, name, self.namespace, action="delete",
                   obj=obj, missing_ok=True, _preload_content=False)
        if wait:
            self._wait_gone(f"persistentvolumeclaim {name} to be gone", obj,
                            lambda: [name] if self._pvc(name) is not None else [])
