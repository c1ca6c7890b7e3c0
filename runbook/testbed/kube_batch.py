"""The Batch port on the local kubelet (:class:`~runbook.testbed.kubelet.LocalWorkloads`): Jobs, StatefulSets and
PersistentVolumeClaims, stored as the API server stores them (``<state>/kube/jobs``, ``statefulsets``,
``persistentvolumeclaims``) and reconciled by the testbed's controller (:mod:`runbook.testbed.kube_sets`).

A claim is kind's default StorageClass (rancher's local-path provisioner, ``volumeBindingMode:
WaitForFirstConsumer``, ``reclaimPolicy: Delete``): Pending until a pod mounts it, then Bound to a directory of
its own under the testbed's state dir (``local-path-provisioner/pvc-<uid>_<namespace>_<claim>``, as the
provisioner names it under ``/var/local-path-provisioner``), removed with the claim. Its only access mode is
ReadWriteOnce, which binds a volume to one node, not to one pod: on kind's single node several pods mount it at
once, and so they may here. A claim in use stays Terminating until its last pod is gone (pvc-protection).
"""

from __future__ import annotations

import copy
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.adapters.base import ContainerStatus, JobCondition, JobPod, JobStatus, Propagation, StatefulSetStatus
from runbook.errors import AdapterError, KubeError
from runbook.testbed.kube_configmaps import store_lock
from runbook.testbed.kube_objects import matches, parse_selector
from runbook.wait import wait_for

if TYPE_CHECKING:
    from runbook.env import Env
    from runbook.testbed.supervisor import Supervisor

JOB_NAME = "batch.kubernetes.io/job-name"
JOB_UID = "batch.kubernetes.io/controller-uid"
POD_NAME = "statefulset.kubernetes.io/pod-name"
REVISION_HASH = "controller-revision-hash"
POD_INDEX = "apps.kubernetes.io/pod-index"
RUN_TO_COMPLETION = ("Never", "OnFailure")
STORES = ("jobs", "job-status", "statefulsets", "statefulset-status", "persistentvolumeclaims")
# fields of a StatefulSet's spec an update may change (the API server's validation forbids the others)
STS_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy", "revisionHistoryLimit",
               "persistentVolumeClaimRetentionPolicy", "minReadySeconds")


def _program(pod: str, container: str) -> str:
    return f"{pod}--{container}"


def _time(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None


def claim_name(template: str, statefulset: str, ordinal: int) -> str:
    """The claim of a StatefulSet's ordinal for one of its volumeClaimTemplates: ``<claim>-<name>-<ordinal>``."""
    return f"{template}-{statefulset}-{ordinal}"


class BatchMixin:
    env: Env
    kube: Path
    state_dir: Path
    sup: Supervisor

    if TYPE_CHECKING:  # provided by LocalWorkloads
        def _read(self, kind: str, name: str) -> dict[str, Any] | None: ...
        def _write(self, kind: str, name: str, obj: Mapping[str, Any]) -> None: ...
        @staticmethod
        def _containers(spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]: ...
        def pod_records(self, deployment: str | None = None) -> list[dict[str, Any]]: ...
        def namespace_of(self, manifest: Mapping[str, Any]) -> str: ...

    # -- store -------------------------------------------------------------------------------------
    def _names(self, kind: str) -> list[str]:
        return sorted(p.stem for p in (self.kube / kind).glob("*.json"))

    def _store(self, kind: str, manifest: dict[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
        m = copy.deepcopy(manifest)
        meta = m.setdefault("metadata", {})
        (self.kube / kind).mkdir(parents=True, exist_ok=True)
        old_meta = (old or {}).get("metadata") or {}
        meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old_meta.get("creationTimestamp") or time.time()
        meta["namespace"] = self.namespace_of(m)
        gen = int(old_meta.get("generation", 0))
        meta["generation"] = gen + 1 if old is None or old.get("spec") != m.get("spec") else gen
        self._write(kind, meta["name"], m)
        return m

    def owned_pods(self, kind: str, name: str, uid: str | None = None) -> list[dict[str, Any]]:
        """Pod records whose owner is the ``kind`` (Job, StatefulSet) ``name`` (with that uid when given)."""
        return [r for r in self.pod_records() if (o := r.get("owner") or {}).get("kind") == kind
                and o.get("name") == name and (uid is None or o.get("uid") == uid)]

    def _invalid(self, kind: str, name: str, detail: str) -> KubeError:
        group = {"Job": "Job.batch", "StatefulSet": "StatefulSet.apps"}.get(kind, kind)
        return KubeError(f'{group} "{name}" is invalid: {detail}', status=422, env=self.env.name, obj=name)

    # -- pods: phase and exit codes ----------------------------------------------------------------
    def pod_phase(self, obj: Mapping[str, Any], statuses: Sequence[ContainerStatus]) -> str:
        """The pod's phase: Running when every container runs, else Pending; a run-to-completion pod (restartPolicy
        Never/OnFailure) whose app containers all terminated is Succeeded (all exit 0) or Failed."""
        apps = [s for s in statuses if s.kind == "app"]
        if obj["spec"].get("restartPolicy") in RUN_TO_COMPLETION and apps and all(s.state == "terminated"
                                                                                  for s in apps):
            if all(s.reason == "Completed" for s in apps):
                return "Succeeded"
            # Never: Failed; OnFailure: the kubelet restarts the failed container, the pod stays Running
            return "Failed" if obj["spec"]["restartPolicy"] == "Never" else "Running"
        return "Running" if all(s.state == "running" for s in statuses) else "Pending"

    def job_pod(self, rec: Mapping[str, Any]) -> JobPod:
        codes: dict[str, int | None] = {}
        reasons: dict[str, str] = {}
        statuses = []
        for kind, c in self._containers(rec["spec"]):
            waiting = (rec.get("waiting") or {}).get(c["name"])
            # one look at supervisord: a state and an exit code read apart could see the process still running,
            # then exited, and make a container that exited 0 a terminated one without a code (an Error)
            info = self.sup.info(_program(rec["name"], c["name"]))
            code = info.exitstatus if not waiting and info is not None and info.state == "EXITED" else None
            state = ("waiting" if waiting or info is None or info.state in ("STARTING", "BACKOFF", "FATAL")
                     else "terminated" if info.state in ("EXITED", "STOPPED") else "running")
            reason = waiting or ("Completed" if code == 0 else "Error" if state == "terminated" else "")
            if kind == "app":
                codes[c["name"]] = code
            if reason:
                reasons[c["name"]] = reason
            statuses.append(ContainerStatus(c["name"], kind, c["image"], "", state, None, 0, False, reason))  # type: ignore[arg-type]
        return JobPod(rec["name"], self.pod_phase(rec, statuses), codes, reasons, bool(rec.get("terminating")))

    # -- Jobs ----------------------------------------------------------------------------------------
    def jobs(self) -> list[str]:
        return self._names("jobs")

    def job(self, name: str) -> dict[str, Any] | None:
        return self._read("jobs", name)

    def apply_job(self, manifest: dict[str, Any]) -> None:
        if manifest.get("kind") != "Job":
            raise AdapterError(f"apply_job takes a Job, got {manifest.get('kind')!r}", env=self.env.name)
        name = str((manifest.get("metadata") or {}).get("name") or "")
        template = (manifest.get("spec") or {}).get("template") or {}
        policy = (template.get("spec") or {}).get("restartPolicy")
        if policy not in RUN_TO_COMPLETION:
            raise self._invalid("Job", name, "spec.template.spec.restartPolicy: " + (
                f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"' if policy
                else 'Required value: valid values: "OnFailure", "Never"'))
        old = self.job(name)
        if old is not None and old["spec"].get("template") != template:
            raise self._invalid("Job", name, "spec.template: Invalid value: ...: field is immutable")
        self._store("jobs", manifest, old)

    def job_status(self, name: str) -> JobStatus | None:
        job = self.job(name)
        if job is None:
            return None
        st = self._read("job-status", name) or {}
        pods = [self.job_pod(r) for r in self.owned_pods("Job", name, job["metadata"]["uid"])]
        conds = tuple(JobCondition(c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
                      for c in st.get("conditions", []))
        return JobStatus(name, int(st.get("active", 0)), int(st.get("succeeded", 0)), int(st.get("failed", 0)),
                         int(st.get("ready", 0)), conds, tuple(pods), _time(st.get("startTime")),
                         _time(st.get("completionTime")))

    def delete_job(self, name: str, *, propagation: Propagation = "Background", wait: bool = True) -> None:
        job = self.job(name)
        if job is None:
            return
        uid = job["metadata"]["uid"]
        if propagation == "Foreground":  # the Job stays (deletionTimestamp) until the controller deleted its pods
            job["metadata"]["deletionTimestamp"] = time.time()
            self._write("jobs", name, job)
        else:
            if propagation == "Orphan":  # the garbage collector removes the pods' ownerReference
                for rec in self.owned_pods("Job", name, uid):
                    rec.pop("owner", None)
                    self._write("pods", rec["name"], rec)
            (self.kube / "jobs" / f"{name}.json").unlink(missing_ok=True)
            (self.kube / "job-status" / f"{name}.json").unlink(missing_ok=True)
        if wait:
            wait_for(lambda: (self.job(name), self.owned_pods("Job", name, uid)), lambda r: not r[0] and not r[1],
                     timeout=self.env.timeouts.rollout + 30, interval=0.1, what=f"job {name} deleted",
                     env=self.env.name, obj=name)

    # -- StatefulSets --------------------------------------------------------------------------------
    def statefulsets(self) -> list[str]:
        return self._names("statefulsets")

    def statefulset(self, name: str) -> dict[str, Any] | None:
        """The StatefulSet as the API server gives it: as applied, its server fields (uid, generation) and status."""
        sts = self._read("statefulsets", name)
        if sts is not None:
            sts["status"] = self._read("statefulset-status", name) or {}
        return sts

    def apply_statefulset(self, manifest: dict[str, Any]) -> None:
        if manifest.get("kind") != "StatefulSet":
            raise AdapterError(f"apply_statefulset takes a StatefulSet, got {manifest.get('kind')!r}",
                               env=self.env.name)
        name = str((manifest.get("metadata") or {}).get("name") or "")
        spec = manifest.get("spec") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        selector = spec.get("selector") or {}
        if not selector or not selects(selector, labels):
            raise self._invalid("StatefulSet", name, f"spec.template.metadata.labels: Invalid value: {labels}: "
                                "`selector` does not match template `labels`")
        old = self.statefulset(name)
        if old is not None and any(old["spec"].get(k) != spec.get(k) for k in set(old["spec"]) | set(spec)
                                   if k not in STS_MUTABLE):
            raise self._invalid("StatefulSet", name, "spec: Forbidden: updates to statefulset spec for fields other "
                                "than " + ", ".join(f"'{k}'" for k in STS_MUTABLE) + " are forbidden")
        self._store("statefulsets", manifest, old)

    def statefulset_status(self, name: str) -> StatefulSetStatus | None:
        sts = self.statefulset(name)
        if sts is None:
            return None
        st = self._read("statefulset-status", name) or {}
        pods = sorted(self.owned_pods("StatefulSet", name, sts["metadata"]["uid"]),
                      key=lambda r: int(r["name"].rsplit("-", 1)[1]))
        return StatefulSetStatus(name, int(st.get("replicas", 0)), int(st.get("readyReplicas", 0)),
                                 int(st.get("currentReplicas", 0)), int(st.get("updatedReplicas", 0)),
                                 str(st.get("currentRevision", "")), str(st.get("updateRevision", "")),
                                 int(st.get("observedGeneration", 0)), tuple(r["name"] for r in pods))

    def delete_statefulset(self, name: str, *, wait: bool = True) -> None:
        sts = self.statefulset(name)
        if sts is None:
            return
        uid = sts["metadata"]["uid"]
        (self.kube / "statefulsets" / f"{name}.json").unlink(missing_ok=True)
        (self.kube / "statefulset-status" / f"{name}.json").unlink(missing_ok=True)
        if wait:  # the garbage collector deletes the pods gracefully; the claims stay
            wait_for(lambda: self.owned_pods("StatefulSet", name, uid), lambda r: not r,
                     timeout=self.env.timeouts.rollout + 30, interval=0.1, what=f"the pods of statefulset {name} "
                     "deleted", env=self.env.name, obj=name)

    # -- PersistentVolumeClaims ----------------------------------------------------------------------
    def pvc(self, name: str) -> dict[str, Any] | None:
        return self._read("persistentvolumeclaims", name)

    def pvcs(self, selector: str = "") -> list[str]:
        reqs = parse_selector(selector)
        return [n for n in self._names("persistentvolumeclaims")
                if (c := self.pvc(n)) is not None and matches((c["metadata"].get("labels") or {}), reqs)]

    def apply_pvc(self, manifest: dict[str, Any]) -> None:
        if manifest.get("kind") != "PersistentVolumeClaim":
            raise AdapterError(f"apply_pvc takes a PersistentVolumeClaim, got {manifest.get('kind')!r}",
                               env=self.env.name)
        with store_lock(self.kube):
            old = self.pvc(manifest["metadata"]["name"])
            if old is not None and old["metadata"].get("deletionTimestamp"):
                raise KubeError(f'persistentvolumeclaims "{manifest["metadata"]["name"]}" is being deleted',
                                status=409, env=self.env.name, obj=manifest["metadata"]["name"])
            m = copy.deepcopy(manifest)
            if old is not None:  # spec is immutable once bound, but for resources.requests; keep what it has
                m["spec"] = old["spec"]
            m["status"] = (old or {}).get("status") or {"phase": "Pending"}
            self._store("persistentvolumeclaims", m, old)

    def pvc_dir(self, name: str) -> Path | None:
        """The claim's volume on this node (local-path's directory), None while it is not bound."""
        c = self.pvc(name)
        if c is None or (c.get("status") or {}).get("phase") != "Bound":
            return None
        return self._volume_dir(c)

    def _volume_dir(self, claim: Mapping[str, Any]) -> Path:
        meta = claim["metadata"]
        return self.state_dir / "local-path-provisioner" / f"pvc-{meta['uid']}_{meta['namespace']}_{meta['name']}"

    def _mount_pvc(self, pod: str, volume: Mapping[str, Any], link: Path) -> None:
        """A container's mountPath onto the claim's volume, provisioned (Bound) by its first consumer."""
        name = str(volume["persistentVolumeClaim"]["claimName"])
        with store_lock(self.kube):
            c = self.pvc(name)
            if c is None or c["metadata"].get("deletionTimestamp"):
                raise AdapterError(f'pod {pod}: persistentvolumeclaim "{name}" not found', env=self.env.name, obj=pod)
            src = self._volume_dir(c)
            src.mkdir(parents=True, exist_ok=True)
            if (c.get("status") or {}).get("phase") != "Bound":
                c["status"] = {"phase": "Bound", "accessModes": c["spec"].get("accessModes", ["ReadWriteOnce"])}
                c["spec"]["volumeName"] = f"pvc-{c['metadata']['uid']}"
                self._write("persistentvolumeclaims", name, c)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)

    def pod_exists(self, name: str) -> bool:
        return (self.kube / "pods" / f"{name}.json").exists()

    def claims_of(self, spec: Mapping[str, Any]) -> list[str]:
        return [str(v["persistentVolumeClaim"]["claimName"]) for v in spec.get("volumes") or []
                if "persistentVolumeClaim" in v]

    def missing_claims(self, spec: Mapping[str, Any]) -> list[str]:
        """Claims the pod spec names that do not exist (or are being deleted): such a pod is not scheduled."""
        return [n for n in self.claims_of(spec) if (c := self.pvc(n)) is None or c["metadata"].get("deletionTimestamp")]

    def delete_pvc(self, name: str, *, wait: bool = True) -> None:
        with store_lock(self.kube):
            c = self.pvc(name)
            if c is None:
                return
            c["metadata"].setdefault("deletionTimestamp", time.time())
            self._write("persistentvolumeclaims", name, c)
        self.finish_pvc_deletions()
        if wait:
            wait_for(lambda: self.pvc(name), lambda c: c is None, timeout=self.env.timeouts.rollout + 30,
                     interval=0.1, what=f"persistentvolumeclaim {name} deleted", env=self.env.name, obj=name)

    def finish_pvc_deletions(self) -> None:
        """pvc-protection and the provisioner's Delete: a deleted claim goes, with its data, once no pod that is
        scheduled and not terminated (Succeeded, Failed) uses it."""
        deleting = [n for n in self._names("persistentvolumeclaims")
                    if (c := self.pvc(n)) is not None and c["metadata"].get("deletionTimestamp")]
        if not deleting:
            return
        used: set[str] = set()
        for r in self.pod_records():
            claims = self.claims_of(r.get("spec") or {})
            if claims and not r.get("unscheduled") and self.job_pod(r).phase not in ("Succeeded", "Failed"):
                used.update(claims)
        for name in deleting:
            with store_lock(self.kube):
                c = self.pvc(name)
                if c is None or not c["metadata"].get("deletionTimestamp") or name in used:
                    continue
                shutil.rmtree(self._volume_dir(c), ignore_errors=True)
                (self.kube / "persistentvolumeclaims" / f"{name}.json").unlink(missing_ok=True)


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Does a LabelSelector (matchLabels; matchExpressions In/NotIn/Exists/DoesNotExist) select ``labels``?"""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], list(e.get("values") or [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True
