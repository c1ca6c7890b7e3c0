"""The testbed controller's Job and StatefulSet controllers (kube-controller-manager's job, statefulset, ttl-after-
finished and garbage collectors, and the kubelet's side of run-to-completion pods), called from
:meth:`runbook.testbed.kube_controller.Controller.tick` on what :mod:`runbook.testbed.kube_batch` stores.

- a Job (batch/v1): ``parallelism``/``completions`` pods ``<job>-<5 chars>`` labelled ``job-name``,
  ``batch.kubernetes.io/job-name``, ``controller-uid``, ``batch.kubernetes.io/controller-uid``; a pod whose app
  containers all exit 0 is Succeeded and stays (Completed) until the Job goes; restartPolicy Never: a pod with a
  container that exits non-zero is Failed (kept), counted in ``status.failed`` and replaced after the controller's
  backoff (10 s doubled per failure, at most 6 min); OnFailure: the kubelet restarts the container in place (at once,
  then after 10 s doubled) and the restarts count; past ``backoffLimit`` (default 6) -> FailureTarget then, once its
  active pods are gone, Failed (BackoffLimitExceeded); ``activeDeadlineSeconds`` -> the same with DeadlineExceeded;
  completions reached -> SuccessCriteriaMet, then Complete (CompletionsReached) with ``completionTime``;
  ``ttlSecondsAfterFinished``: the Job deleted that long after it finished; a Job deleted with Foreground
  propagation goes once its pods are gone;
- a StatefulSet (apps/v1): pods ``<name>-<ordinal>`` labelled ``controller-revision-hash`` (``<name>-<hash>``),
  ``statefulset.kubernetes.io/pod-name`` and ``apps.kubernetes.io/pod-index``; for each ordinal and each
  ``volumeClaimTemplates`` entry a claim ``<claim>-<name>-<ordinal>`` created before the pod and mounted by it (it
  outlives pod and StatefulSet: retention Retain); podManagementPolicy OrderedReady (default): ordinal i is created
  only when 0..i-1 are Running and Ready, scale-down removes the highest ordinal first, one at a time; Parallel:
  all at once; updateStrategy RollingUpdate (default): once every pod is Ready, the highest-ordinal pod (>=
  ``partition``) of another revision is deleted and re-created from the new template; OnDelete: left alone;
- garbage collection: pods whose Job or StatefulSet is gone (or re-created: another uid) are deleted gracefully,
  and deleted claims no pod mounts any more are removed with their data.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import time
import xmlrpc.client
from typing import TYPE_CHECKING, Any

from runbook.errors import AdapterError
from runbook.testbed import kube_batch as kb
from runbook.testbed.kubelet import _program, template_hash

if TYPE_CHECKING:
    from runbook.testbed.kube_controller import Controller

BACKOFF = 10.0  # DefaultJobPodFailureBackOff, and the kubelet's first crash-loop backoff
JOB_BACKOFF_MAX = 360.0  # MaxJobPodFailureBackOff
RESTART_BACKOFF_MAX = 300.0  # the kubelet's MaxContainerBackOff


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def _cond(type_: str, reason: str, message: str, now: float) -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now,
            "lastProbeTime": now}


class SetsController:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.wl = ctl.wl
        for kind in kb.STORES:
            (self.wl.kube / kind).mkdir(parents=True, exist_ok=True)

    def tick(self) -> None:
        records = self.wl.pod_records()
        owners: dict[str, str] = {}  # "<kind>/<name>" -> uid of what exists
        for name in self.wl.jobs():
            job = self.wl.job(name)
            if job is not None:
                owners[f"Job/{name}"] = job["metadata"]["uid"]
                self.sync_job(name, job, self._owned(records, "Job", name, job["metadata"]["uid"]))
        for name in self.wl.statefulsets():
            sts = self.wl.statefulset(name)
            if sts is not None:
                owners[f"StatefulSet/{name}"] = sts["metadata"]["uid"]
                self.sync_statefulset(name, sts, self._owned(records, "StatefulSet", name, sts["metadata"]["uid"]))
        for rec in records:  # the garbage collector: owner gone -> pod deleted (gracefully)
            o = rec.get("owner")
            if o and owners.get(f"{o['kind']}/{o['name']}") != o["uid"]:
                self.ctl.delete_pod(rec["name"])
        for rec in records:  # pods waiting for their claims to exist
            if rec.get("unscheduled") and not rec.get("terminating") and not self.wl.missing_claims(rec["spec"]):
                self._schedule(rec["name"])
        self.wl.finish_pvc_deletions()

    @staticmethod
    def _owned(records: list[dict[str, Any]], kind: str, name: str, uid: str) -> list[dict[str, Any]]:
        return [r for r in records if (o := r.get("owner") or {}).get("kind") == kind and o.get("name") == name
                and o.get("uid") == uid]

    # -- pods ----------------------------------------------------------------------------------------
    def create_pod(self, pod: str, owner_obj: dict[str, Any], kind: str, template: dict[str, Any],
                   labels: dict[str, str], volumes: list[dict[str, Any]] | None = None) -> None:
        spec = copy.deepcopy(template["spec"])
        if any(c.get("restartPolicy") != "Always" for c in spec.get("initContainers", [])):
            _log(f"{kind.lower()} {owner_obj['metadata']['name']}: FailedCreate: run-to-completion initContainers "
                 "are not supported by the local testbed")
            return
        for v in volumes or []:
            if not any(x["name"] == v["name"] for x in spec.get("volumes", [])):
                spec.setdefault("volumes", []).append(v)
        meta = owner_obj["metadata"]
        obj: dict[str, Any] = {
            "name": pod, "deployment": "", "spec": spec, "created": time.time(), "waiting": {},
            "owner": {"kind": kind, "name": meta["name"], "uid": meta["uid"]}, "ip": self.ctl._allocate_ip(),
            "ready": False, "terminating": False, "namespace": meta.get("namespace") or self.wl.env.namespace,
            "labels": {**((template.get("metadata") or {}).get("labels") or {}), **labels},
            "annotations": dict((template.get("metadata") or {}).get("annotations") or {})}
        missing = self.wl.missing_claims(spec)
        if missing:  # unschedulable until its claims exist (the scheduler's VolumeBinding)
            why = f'persistentvolumeclaim "{missing[0]}" not found'
            obj.update(unscheduled=why, waiting={c["name"]: "ContainerCreating" for _, c in
                                                 self.wl._containers(spec)})
            self.wl._write("pods", pod, obj)
            self.wl._event(pod, "FailedScheduling", why)
            _log(f"{kind.lower()} {meta['name']}: created pod {pod}, unschedulable: {why}")
            return
        self.wl._write("pods", pod, obj)
        _log(f"{kind.lower()} {meta['name']}: created pod {pod} ({obj['ip']})")
        self._start(pod, obj)

    def _schedule(self, pod: str) -> None:
        obj = self.wl._read("pods", pod)
        if obj is None:
            return
        obj.pop("unscheduled", None)
        obj["waiting"] = {}
        self.wl._write("pods", pod, obj)
        _log(f"pod {pod}: scheduled (its claims exist)")
        self._start(pod, obj)

    def _start(self, pod: str, obj: dict[str, Any]) -> None:
        try:
            self.wl._mount_volumes(pod, obj["spec"])
        except AdapterError as exc:  # FailedMount: the pod stays ContainerCreating
            self.wl._event(pod, "FailedMount", str(exc))
            _log(f"pod {pod}: FailedMount: {exc}")
            return
        if self.wl._setup_configmap_volumes(pod, obj):
            self.wl._start_containers(pod, obj)

    def _info(self, pod: str, container: str) -> Any:
        return self.wl.sup.info(_program(pod, container))

    # -- the Job controller --------------------------------------------------------------------------
    def sync_job(self, name: str, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        now = time.time()
        spec = job["spec"]
        old = self.wl._read("job-status", name) or {}
        st = copy.deepcopy(old)
        st.setdefault("startTime", now)
        st.setdefault("conditions", [])
        st.setdefault("counted", {"failed": [], "succeeded": []})  # uncountedTerminatedPods, settled
        if job["metadata"].get("deletionTimestamp"):  # Foreground: the Job goes after its pods
            for rec in pods:
                self.ctl.delete_pod(rec["name"])
            if not pods:
                (self.wl.kube / "jobs" / f"{name}.json").unlink(missing_ok=True)
                (self.wl.kube / "job-status" / f"{name}.json").unlink(missing_ok=True)
            return
        types = {c["type"] for c in st["conditions"]}
        phases = {rec["name"]: self.wl.job_pod(rec).phase for rec in pods}
        restarts = 0
        for rec in pods:
            if rec.get("terminating"):
                continue
            if phases[rec["name"]] in ("Succeeded", "Failed"):
                self._stop_sidecars(rec)
                key = "succeeded" if phases[rec["name"]] == "Succeeded" else "failed"
                if rec["name"] not in st["counted"][key]:
                    st["counted"][key].append(rec["name"])
                    st["lastFailure" if key == "failed" else "lastSuccess"] = now
                    _log(f"job {name}: pod {rec['name']} {phases[rec['name']]}")
            elif spec["template"]["spec"].get("restartPolicy") == "OnFailure":
                restarts += self._restart_failed(rec, now)
        active = [r for r in pods if not r.get("terminating") and phases[r["name"]] in ("Pending", "Running")]
        terminating = [r for r in pods if r.get("terminating")]
        succeeded, failed = len(st["counted"]["succeeded"]), len(st["counted"]["failed"])
        completions = int(spec.get("completions", 1))
        limit = int(spec.get("backoffLimit", 6))
        deadline = spec.get("activeDeadlineSeconds")
        if not types & {"Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"}:
            if succeeded >= completions:
                st["conditions"].append(_cond("SuccessCriteriaMet", "CompletionsReached",
                                              "Reached expected number of succeeded pods", now))
            elif failed > limit or (restarts and (restarts >= limit if limit else restarts > 0)):
                st["conditions"].append(_cond("FailureTarget", "BackoffLimitExceeded",
                                              "Job has reached the specified backoff limit", now))
            elif deadline is not None and now - float(st["startTime"]) >= float(deadline):
                st["conditions"].append(_cond("FailureTarget", "DeadlineExceeded",
                                              "Job was active longer than specified deadline", now))
            else:
                self._create_job_pods(name, job, st, len(active), succeeded, failed, now)
        types = {c["type"] for c in st["conditions"]}
        if types & {"SuccessCriteriaMet", "FailureTarget"} and not types & {"Complete", "Failed"}:
            for rec in active:  # a finished Job's active pods are deleted; its terminal condition waits for them
                if types & {"FailureTarget"} and rec["name"] not in st["counted"]["failed"]:
                    st["counted"]["failed"].append(rec["name"])  # a pod the failed Job deleted counts as failed
                self.ctl.delete_pod(rec["name"])
            if not active and not terminating:
                target = next(c for c in st["conditions"] if c["type"] in ("SuccessCriteriaMet", "FailureTarget"))
                final = "Complete" if target["type"] == "SuccessCriteriaMet" else "Failed"
                st["conditions"].append({**target, "type": final, "lastTransitionTime": now, "lastProbeTime": now})
                if final == "Complete":
                    st["completionTime"] = now
                st["finishedAt"] = now
                _log(f"job {name}: {final} ({target['reason']})")
        failed = len(st["counted"]["failed"])
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is not None and st.get("finishedAt") and now >= float(st["finishedAt"]) + float(ttl):
            _log(f"job {name}: deleted {ttl}s after it finished (ttlSecondsAfterFinished)")
            (self.wl.kube / "jobs" / f"{name}.json").unlink(missing_ok=True)
            (self.wl.kube / "job-status" / f"{name}.json").unlink(missing_ok=True)
            return
        live = [r for r in self.wl.owned_pods("Job", name, job["metadata"]["uid"]) if not r.get("terminating")]
        st.update(active=sum(1 for r in live if self.wl.job_pod(r).phase in ("Pending", "Running")),
                  ready=sum(1 for r in live if r.get("ready")), succeeded=succeeded, failed=failed,
                  terminating=len(terminating))
        if st != old:
            self.wl._write("job-status", name, st)

    def _create_job_pods(self, name: str, job: dict[str, Any], st: dict[str, Any], active: int, succeeded: int,
                         failed: int, now: float) -> None:
        spec = job["spec"]
        want = min(int(spec.get("parallelism", 1)), int(spec.get("completions", 1)) - succeeded) - active
        if want <= 0:
            return
        if failed and now < float(st.get("lastFailure", 0)) + min(BACKOFF * 2 ** (failed - 1), JOB_BACKOFF_MAX):
            return  # the controller's backoff before replacing a failed pod
        uid = job["metadata"]["uid"]
        labels = {kb.JOB_UID: uid, kb.JOB_NAME: name, "controller-uid": uid, "job-name": name}
        for _ in range(want):
            self.create_pod(f"{name}-{secrets.token_hex(3)[:5]}", job, "Job", spec["template"], labels)

    def _restart_failed(self, rec: dict[str, Any], now: float) -> int:
        """The kubelet's restart of an OnFailure pod's failed container (crash-loop backoff); its restarts."""
        counts = dict(rec.get("restarts") or {})
        for kind, c in self.wl._containers(rec["spec"]):
            info = self._info(rec["name"], c["name"])
            if kind != "app" or info is None or info.state != "EXITED" or info.exitstatus == 0:
                continue
            n = int(counts.get(c["name"], 0))
            if now < info.stop + (min(BACKOFF * 2 ** (n - 1), RESTART_BACKOFF_MAX) if n else 0):
                continue
            counts[c["name"]] = n + 1
            fresh = self.wl._read("pods", rec["name"])
            if fresh is None:
                continue
            fresh["restarts"] = counts
            self.wl._write("pods", rec["name"], fresh)
            with contextlib.suppress(xmlrpc.client.Fault):
                self.wl.sup.rpc.supervisor.startProcess(_program(rec["name"], c["name"]), False)
            _log(f"pod {rec['name']}: restarted container {c['name']} (exit {info.exitstatus}, restart {n + 1})")
        return sum(int(v) for v in counts.values())

    def _stop_sidecars(self, rec: dict[str, Any]) -> None:
        for kind, c in self.wl._containers(rec["spec"]):
            info = self._info(rec["name"], c["name"])
            if kind == "sidecar" and info is not None and info.state in ("RUNNING", "STARTING", "BACKOFF"):
                with contextlib.suppress(xmlrpc.client.Fault):
                    self.wl.sup.rpc.supervisor.stopProcess(_program(rec["name"], c["name"]), False)

    # -- the StatefulSet controller ------------------------------------------------------------------
    def sync_statefulset(self, name: str, sts: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        spec = sts["spec"]
        replicas = int(spec.get("replicas", 1))
        revision = f"{name}-{template_hash(spec['template'])}"
        by_ordinal = {int(r["name"].rsplit("-", 1)[1]): r for r in pods}
        parallel = spec.get("podManagementPolicy") == "Parallel"

        def healthy(r: dict[str, Any]) -> bool:
            return not r.get("terminating") and bool(r.get("ready"))

        for i in range(replicas):
            pod = f"{name}-{i}"
            rec = by_ordinal.get(i)
            if rec is not None and rec.get("unscheduled"):
                self._ensure_claims(name, sts, i)  # a claim deleted under it: made again (it waits for it)
            if rec is None:
                if self.wl.pod_exists(pod):  # a pod of that name not ours (yet): a previous owner's, terminating
                    break
                self._ensure_claims(name, sts, i)
                labels = {kb.REVISION_HASH: revision, kb.POD_NAME: pod, kb.POD_INDEX: str(i)}
                claims = [{"name": t["metadata"]["name"], "persistentVolumeClaim": {
                    "claimName": kb.claim_name(t["metadata"]["name"], name, i)}}
                    for t in spec.get("volumeClaimTemplates") or []]
                self.create_pod(pod, sts, "StatefulSet", spec["template"], labels, claims)
                if not parallel:
                    break
            elif not parallel and not healthy(rec):
                break  # OrderedReady: the next ordinal waits for this one
        condemned = sorted((i for i in by_ordinal if i >= replicas), reverse=True)
        if condemned and (parallel or not any(by_ordinal[i].get("terminating") for i in condemned)):
            ready_below = all(i in by_ordinal and healthy(by_ordinal[i]) for i in range(replicas))
            for i in condemned if parallel else condemned[:1] if ready_below else []:
                self.ctl.delete_pod(by_ordinal[i]["name"])
        strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
        settled = all(i in by_ordinal and healthy(by_ordinal[i]) for i in range(replicas))
        if strategy == "RollingUpdate" and settled and not condemned:
            partition = int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition", 0))
            stale = [i for i in range(partition, replicas) if by_ordinal[i]["labels"].get(kb.REVISION_HASH) != revision]
            if stale:
                _log(f"statefulset {name}: updating pod {by_ordinal[max(stale)]['name']} to revision {revision}")
                self.ctl.delete_pod(by_ordinal[max(stale)]["name"])
        old = self.wl._read("statefulset-status", name) or {}
        live = [r for r in by_ordinal.values() if not r.get("terminating")]
        updated = sum(1 for r in live if r["labels"].get(kb.REVISION_HASH) == revision)
        current = old.get("currentRevision") or revision
        if updated == replicas == len(live) and all(r.get("ready") for r in live):
            current = revision  # the rolling update is complete
        st = {"observedGeneration": int(sts["metadata"].get("generation", 1)), "replicas": len(live),
              "readyReplicas": sum(1 for r in live if r.get("ready")),
              "availableReplicas": sum(1 for r in live if r.get("ready")),
              "currentReplicas": sum(1 for r in live if r["labels"].get(kb.REVISION_HASH) == current),
              "updatedReplicas": updated, "currentRevision": current, "updateRevision": revision}
        if st != old:
            self.wl._write("statefulset-status", name, st)

    def _ensure_claims(self, name: str, sts: dict[str, Any], ordinal: int) -> None:
        selector = (sts["spec"].get("selector") or {}).get("matchLabels") or {}
        for t in sts["spec"].get("volumeClaimTemplates") or []:
            claim = kb.claim_name(t["metadata"]["name"], name, ordinal)
            if self.wl.pvc(claim) is not None:
                continue  # an existing claim is used as it is (even one made before the StatefulSet)
            meta = {"name": claim, "labels": {**(t["metadata"].get("labels") or {}), **selector}}
            self.wl.apply_pvc({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
                               "spec": copy.deepcopy(t.get("spec") or {})})
            _log(f"statefulset {name}: created claim {claim}")
