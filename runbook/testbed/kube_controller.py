"""The local testbed's kube-controller-manager and kubelet prober for RollingUpdate Deployments.

    python -m runbook.testbed.kube_controller --env ENV --state-dir DIR [--netns NAME]

Run under the testbed's supervisord (:func:`controller_program`), it reconciles asynchronously what
:class:`~runbook.testbed.kubelet.LocalWorkloads` stores, as the Deployment, ReplicaSet and garbage collectors
and the kubelet do:

- a Deployment's template -> a ReplicaSet ``<deploy>-<pod-template-hash>`` (``kube/replicasets``) with the
  ``deployment.kubernetes.io/revision`` annotation; a template seen before re-uses its ReplicaSet, which gets the
  next revision (what undo relies on); ``rolloutRolling``: the new ReplicaSet scaled up within maxSurge, old ones
  scaled down (unhealthy pods first) while ``available >= replicas - maxUnavailable``; ``minReadySeconds``;
  ``revisionHistoryLimit`` (old ReplicaSets with no replicas beyond it deleted once the rollout is complete);
  ``status.observedGeneration`` (``kube/deployment-status``);
- a ReplicaSet's pods: created with labels (template's + ``pod-template-hash``), annotations and a loopback IP
  of their own (``127.<b>.<x>.<y>``; Linux routes all of 127/8 to lo); surplus pods picked as the ReplicaSet
  controller ranks them (not ready, then ready for less time, then newer) and deleted gracefully: marked
  terminating first (so endpoints drop them), ``lifecycle.preStop`` (``sleep``, ``exec``), SIGTERM, SIGKILL once
  ``terminationGracePeriodSeconds`` (at least 2 s after the hook) is over, then the record goes;
- readiness: ``readinessProbe.httpGet`` against the pod IP with its period, initial delay, timeout and
  success/failure thresholds; a pod is Ready when every container runs and its probe passed (no probe: running).
  The result goes into the pod record (``ready``, ``ready_since``, ``probes``).

Recreate Deployments and their pods are left to the kubelet's synchronous path.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import signal
import sys
import threading
import time
import traceback
import xmlrpc.client
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from runbook.env import Env, load_env
from runbook.errors import RunbookError
from runbook.testbed import kube_rollout as kr
from runbook.testbed.kube_sets import SetsController
from runbook.testbed.kubelet import LocalWorkloads, _program, template_hash
from runbook.testbed.supervisor import Supervisor

MIN_GRACE_AFTER_HOOK = 2.0  # the kubelet's minimumGracePeriodInSeconds


def controller_program(env: Env | str, state_dir: Path, netns: str | None = None) -> tuple[str, list[str]]:
    """(program name, argv) for the testbed's supervisord. An :class:`Env` is written as the controller reads it
    (``<state>/kube/controller-env.yaml``), so an env moved in memory (shifted ports) is the one it runs with."""
    state = Path(state_dir).resolve()
    if isinstance(env, str):
        source = env
    else:
        (state / "kube").mkdir(parents=True, exist_ok=True)
        path = state / "kube" / "controller-env.yaml"
        path.write_text(yaml.safe_dump(env.model_dump(mode="json"), sort_keys=False))
        source = str(path)
    argv = [sys.executable, "-m", "runbook.testbed.kube_controller", "--env", source, "--state-dir", str(state)]
    return "kube-controller", argv + (["--netns", netns] if netns else [])


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


@dataclass
class Probe:
    """One container's readiness prober (kubelet prober/worker.go), reset when the container restarts."""

    started: float
    successes: int = 0
    failures: int = 0
    ready: bool = False
    due: float = 0.0
    last: str = "not probed yet"
    pending: Future[str | None] | None = field(default=None, repr=False)


def http_probe(url: str, timeout: float) -> str | None:
    """None when the probe succeeds (HTTP 200-399), else why it failed."""
    try:
        r = httpx.get(url, timeout=timeout, follow_redirects=False, trust_env=False)
    except httpx.HTTPError as exc:
        return f"Get {url}: {type(exc).__name__}: {exc}"
    return None if 200 <= r.status_code < 400 else f"HTTP probe failed with statuscode: {r.status_code}"


class Controller:
    def __init__(self, wl: LocalWorkloads) -> None:
        self.wl = wl
        self.sup = wl.sup
        self.probes: dict[tuple[str, str], Probe] = {}
        self.killing: dict[str, threading.Thread] = {}
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self.stopping = threading.Event()
        self.octet = 20 + zlib.crc32(str(wl.state_dir).encode()) % 200
        self.next_ip = 0
        self.volumes_synced: dict[str, float] = {}  # pod -> when its configMap volumes were last synced
        self.volumes_collected = 0.0  # when the volumes of deleted pods were last removed
        self.sets = SetsController(self)  # Jobs and StatefulSets (kube_sets)

    # -- loop ------------------------------------------------------------------------------------
    def run(self, interval: float = 0.1) -> None:
        log(f"controller for {self.wl.state_dir} (pod IPs 127.{self.octet}.x.y)")
        while not self.stopping.is_set():
            try:
                self.tick()
            except (OSError, ValueError, KeyError, RunbookError, xmlrpc.client.Error):
                log("sync failed:\n" + traceback.format_exc())
            self.stopping.wait(interval)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> None:
        deployments = {n: m for n in self.wl.deployments()
                       if (m := self.wl.deployment(n)) is not None and kr.is_rolling(m)}
        self.probe_all()
        for name, manifest in deployments.items():
            self.sync_deployment(name, manifest)
        self.sync_replicasets(deployments)
        self.collect_garbage(deployments)
        self.sync_volumes()
        self.sets.tick()

    # -- the Deployment controller ---------------------------------------------------------------
    def sync_deployment(self, name: str, m: dict[str, Any]) -> None:
        thash = template_hash(m["spec"]["template"])
        rss = self.wl.replicasets(name)
        olds = [rs for rs in rss if rs["hash"] != thash]
        new = next((rs for rs in rss if rs["hash"] == thash), None)
        dirty: set[str] = set()
        copied = {k: v for k, v in (m["metadata"].get("annotations") or {}).items() if k not in kr.SKIP_ANNOTATIONS}
        next_rev = max((kr.revision_of(rs) for rs in olds), default=0) + 1
        if new is None:
            template = copy.deepcopy(m["spec"]["template"])
            template.setdefault("metadata", {}).setdefault("labels", {})[kr.HASH_LABEL] = thash
            new = {"metadata": {"name": f"{name}-{thash}", "created": time.time(),
                                "annotations": {**copied, kr.REVISION: str(next_rev)}},
                   "deployment": name, "hash": thash, "spec": {"replicas": 0, "template": template}}
            log(f"deployment {name}: new replicaset {new['metadata']['name']} revision {next_rev}")
            dirty.add(new["metadata"]["name"])
        else:  # SetNewReplicaSetAnnotations: the Deployment's annotations, and the next revision if it is older
            rev = max(kr.revision_of(new), next_rev)
            wanted = {**copied, kr.REVISION: str(rev)}
            if new["metadata"]["annotations"] != wanted:
                if rev != kr.revision_of(new):
                    log(f"deployment {name}: replicaset {new['metadata']['name']} re-used as revision {rev}")
                new["metadata"]["annotations"] = wanted
                dirty.add(new["metadata"]["name"])
        now = time.time()
        min_ready = float(m["spec"].get("minReadySeconds", 0))
        active = [p for p in self.wl.pod_records(name) if p.get("replicaset") and not p.get("terminating")]

        def avail(rs: dict[str, Any]) -> int:
            rs_name = rs["metadata"]["name"]
            return sum(1 for p in active if p["replicaset"] == rs_name and kr.available(p, min_ready, now))

        def scale(rs: dict[str, Any], n: int) -> None:
            if rs["spec"]["replicas"] != n:
                log(f"deployment {name}: scaled replicaset {rs['metadata']['name']} {rs['spec']['replicas']} -> {n}")
                rs["spec"]["replicas"] = n
                dirty.add(rs["metadata"]["name"])

        desired = kr.replicas_of(m)
        surge, unavailable = kr.fenceposts(m)
        everything = [*olds, new]
        total = sum(rs["spec"]["replicas"] for rs in everything)
        scaled_new = True  # reconcileNewReplicaSet; when it scaled, the old ones wait for the next sync
        if new["spec"]["replicas"] > desired:
            scale(new, desired)
        elif new["spec"]["replicas"] < desired and total < desired + surge:
            scale(new, new["spec"]["replicas"] + min(desired + surge - total, desired - new["spec"]["replicas"]))
        else:
            scaled_new = False
        if not scaled_new and sum(rs["spec"]["replicas"] for rs in olds) > 0:  # reconcileOldReplicaSets
            self._scale_down_olds(olds, new, desired - unavailable, avail, scale)
        for rs in everything:
            if rs["metadata"]["name"] in dirty:
                self.wl._write("replicasets", rs["metadata"]["name"], rs)
        mine = [p for p in active if p["replicaset"] == new["metadata"]["name"]]
        status = {"observedGeneration": int(m["metadata"].get("generation", 1)), "revision": kr.revision_of(new),
                  "replicas": len(active), "updatedReplicas": len(mine),
                  "availableReplicas": sum(1 for p in active if kr.available(p, min_ready, now))}
        if self.wl._read("deployment-status", name) != status:
            self.wl._write("deployment-status", name, status)
        complete = status["updatedReplicas"] == status["replicas"] == status["availableReplicas"] == desired
        if complete:
            self._clean_history(name, m, olds, active)

    @staticmethod
    def _scale_down_olds(olds: list[dict[str, Any]], new: dict[str, Any], min_available: int, avail: Any,
                         scale: Any) -> None:
        everything = [*olds, new]
        total = sum(rs["spec"]["replicas"] for rs in everything)
        new_unavailable = new["spec"]["replicas"] - avail(new)
        max_down = total - min_available - new_unavailable
        if max_down <= 0:
            return
        by_age = sorted(olds, key=lambda rs: rs["metadata"]["created"])
        cleaned = 0  # cleanupUnhealthyReplicas: old pods that are not available go first
        for rs in by_age:
            unhealthy = rs["spec"]["replicas"] - avail(rs)
            if cleaned >= max_down or unhealthy <= 0:
                continue
            down = min(max_down - cleaned, unhealthy)
            scale(rs, rs["spec"]["replicas"] - down)
            cleaned += down
        left = sum(avail(rs) for rs in everything) - min_available  # scaleDownOldReplicaSetsForRollingUpdate
        for rs in by_age:
            if left <= 0:
                break
            down = min(rs["spec"]["replicas"], left)
            if down > 0:
                scale(rs, rs["spec"]["replicas"] - down)
                left -= down

    def _clean_history(self, name: str, m: dict[str, Any], olds: list[dict[str, Any]],
                       active: list[dict[str, Any]]) -> None:
        limit = int(m["spec"].get("revisionHistoryLimit", kr.DEFAULT_HISTORY_LIMIT))
        diff = len(olds) - limit
        for rs in sorted(olds, key=kr.revision_of)[:max(diff, 0)]:
            if rs["spec"]["replicas"] == 0 and not any(p["replicaset"] == rs["metadata"]["name"] for p in active):
                log(f"deployment {name}: revisionHistoryLimit {limit}: deleted replicaset {rs['metadata']['name']} "
                    f"(revision {kr.revision_of(rs)})")
                (self.wl.kube / "replicasets" / f"{rs['metadata']['name']}.json").unlink(missing_ok=True)

    # -- the ReplicaSet controller ---------------------------------------------------------------
    def sync_replicasets(self, deployments: dict[str, dict[str, Any]]) -> None:
        now = time.time()
        for name in deployments:
            pods = [p for p in self.wl.pod_records(name) if p.get("replicaset") and not p.get("terminating")]
            for rs in self.wl.replicasets(name):
                mine = [p for p in pods if p["replicaset"] == rs["metadata"]["name"]]
                diff = len(mine) - int(rs["spec"]["replicas"])
                for _ in range(-diff):
                    self.create_pod(name, rs, deployments[name])
                if diff > 0:  # controller.ActivePods order: not running, not ready, ready for less time, newer
                    ranked = sorted(mine, key=lambda p: (self._running(p), bool(p.get("ready")),
                                                         -float(p.get("ready_since") or now), -p["created"]))
                    for p in ranked[:diff]:
                        self.delete_pod(p["name"])

    def create_pod(self, deployment: str, rs: dict[str, Any], m: dict[str, Any]) -> None:
        template = rs["spec"]["template"]
        meta = {"replicaset": rs["metadata"]["name"], "ip": self._allocate_ip(), "ready": False,
                "terminating": False, "namespace": self.wl.namespace_of(m),
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {})}
        try:
            pod = self.wl._create_pod(deployment, template, rs["hash"], meta)
        except RunbookError as exc:  # FailedCreate: retried on the next sync
            log(f"replicaset {rs['metadata']['name']}: FailedCreate: {exc}")
            return
        log(f"replicaset {rs['metadata']['name']}: created pod {pod} ({meta['ip']})")

    def _allocate_ip(self) -> str:
        used = {p.get("ip") for p in self.wl.pod_records()}
        while True:
            self.next_ip += 1
            ip = f"127.{self.octet}.{(self.next_ip // 250) % 250}.{self.next_ip % 250 + 2}"
            if ip not in used:
                return ip

    def _running(self, rec: dict[str, Any]) -> bool:
        return all((i := self.sup.info(_program(rec["name"], c["name"]))) is not None and i.running
                   for _, c in self.wl._containers(rec["spec"]))

    # -- graceful deletion -------------------------------------------------------------------------
    def delete_pod(self, pod: str) -> None:
        """Mark terminating (deletionTimestamp) now, so endpoints drop it; the kill runs in its own thread."""
        if pod in self.killing:
            return
        rec = self.wl._read("pods", pod)
        if rec is None:
            return
        if not rec.get("terminating"):
            rec.update(terminating=True, deletionTimestamp=time.time())
            self.wl._write("pods", pod, rec)
            log(f"pod {pod}: terminating")
        t = threading.Thread(target=self._kill, args=(pod,), name=f"kill-{pod}", daemon=True)
        self.killing[pod] = t
        t.start()

    def _kill(self, pod: str) -> None:
        try:
            self._kill_gracefully(pod)
        except (OSError, RunbookError, xmlrpc.client.Error):
            log(f"pod {pod}: deletion failed:\n" + traceback.format_exc())
            self.killing.pop(pod, None)  # retried by the next sync

    def _kill_gracefully(self, pod: str) -> None:
        rec = self.wl._read("pods", pod)
        if rec is None:
            return
        grace = float(rec["spec"].get("terminationGracePeriodSeconds", kr.DEFAULT_GRACE))
        deadline = float(rec.get("deletionTimestamp") or time.time()) + grace
        containers = self.wl._containers(rec["spec"])
        apps = [c for kind, c in containers if kind == "app"]
        sidecars = [c for kind, c in reversed(containers) if kind == "sidecar"]
        for c in apps:  # the kubelet runs each container's preStop hook, then sends its stop signal
            hook = (c.get("lifecycle") or {}).get("preStop") or {}
            left = deadline - time.time()
            info = self.sup.info(_program(pod, c["name"]))
            if not hook or left <= 0 or info is None or not info.running:  # hooks run in running containers only
                continue
            if "sleep" in hook:
                self.stopping.wait(min(float(hook["sleep"]["seconds"]), left))
            elif "exec" in hook:
                r = self.wl.exec(pod, c["name"], [str(a) for a in hook["exec"]["command"]], timeout=left)
                if r.rc != 0:
                    log(f"pod {pod}: FailedPreStopHook in {c['name']}: exit {r.rc}: {r.stderr.strip()[-200:]}")
            log(f"pod {pod}: preStop of {c['name']} done")
        kill_at = max(deadline, time.time() + MIN_GRACE_AFTER_HOOK)
        for group in (apps, sidecars):  # sidecars stop after the app containers
            self._stop([_program(pod, c["name"]) for c in group], kill_at)
        for _, c in containers:
            self.sup.remove(_program(pod, c["name"]))
        (self.wl.kube / "pods" / f"{pod}.json").unlink(missing_ok=True)
        self.killing.pop(pod, None)
        for key in [k for k in self.probes if k[0] == pod]:
            self.probes.pop(key, None)
        log(f"pod {pod}: deleted")

    def _stop(self, programs: list[str], kill_at: float) -> None:
        for prog in programs:
            with contextlib.suppress(xmlrpc.client.Fault):  # a Fault: not running (crash-looping, never pulled)
                self.sup.rpc.supervisor.stopProcess(prog, False)  # SIGTERM, without waiting
        live = {"STARTING", "RUNNING", "BACKOFF", "STOPPING"}
        while any((i := self.sup.info(p)) is not None and i.state in live for p in programs):
            if time.time() >= kill_at:
                for p in programs:
                    try:
                        self.sup.rpc.supervisor.signalProcess(p, "KILL")
                        log(f"{p}: SIGKILL after the grace period")
                    except xmlrpc.client.Fault:
                        pass
                kill_at = float("inf")
            time.sleep(0.05)

    def collect_garbage(self, deployments: dict[str, dict[str, Any]]) -> None:
        """Owner references: a ReplicaSet without its Deployment goes, and so does a pod without its ReplicaSet."""
        for p in (self.wl.kube / "replicasets").glob("*.json"):
            rs = self.wl._read("replicasets", p.stem)
            if rs is not None and rs["deployment"] not in deployments and self.wl.deployment(rs["deployment"]) is None:
                p.unlink(missing_ok=True)
        names = {p.stem for p in (self.wl.kube / "replicasets").glob("*.json")}
        for rec in self.wl.pod_records():
            if rec.get("replicaset") and (rec["replicaset"] not in names or rec.get("terminating")):
                self.delete_pod(rec["name"])

    # -- the kubelet's configMap volumes ---------------------------------------------------------
    def sync_volumes(self) -> None:
        """The kubelet's periodic pod sync, for configMap volumes: each pod's every ``testbed.configmap_sync``
        counted from its creation (so pods see a ConfigMap change at different times, never at the write)."""
        now = time.time()
        period = float(self.wl.tb.configmap_sync)
        records = self.wl.pod_records()
        for rec in records:
            last = self.volumes_synced.get(rec["name"], float(rec.get("created") or now))
            if now - last >= period:
                self.volumes_synced[rec["name"]] = now
                self.wl.sync_configmap_volumes(rec["name"])
        live = {rec["name"] for rec in records}
        for gone in set(self.volumes_synced) - live:
            self.volumes_synced.pop(gone, None)
        if now - self.volumes_collected >= period:
            self.volumes_collected = now
            self.wl.remove_orphan_volumes()

    # -- the kubelet's prober --------------------------------------------------------------------
    def probe_all(self) -> None:
        now = time.time()
        for rec in self.wl.pod_records():
            if not (rec.get("replicaset") or rec.get("owner")) or rec.get("terminating"):
                continue
            results: dict[str, str] = {}
            ready = not rec.get("waiting")
            for _, c in self.wl._containers(rec["spec"]):
                ok, why = self._container_ready(rec, c, now)
                results[c["name"]] = why
                ready = ready and ok
            self._record(rec["name"], ready, results, now)

    def _container_ready(self, rec: dict[str, Any], c: dict[str, Any], now: float) -> tuple[bool, str]:
        key = (rec["name"], c["name"])
        info = self.sup.info(_program(*key))
        if info is None or not info.running:
            self.probes.pop(key, None)
            return False, f"container {info.state if info else 'absent'}"
        spec = c.get("readinessProbe")
        if not spec:
            return True, "running, no readiness probe"
        probe = self.probes.get(key)
        if probe is None or probe.started != info.start:
            probe = Probe(started=info.start, due=info.start + float(spec.get("initialDelaySeconds", 0)))
            self.probes[key] = probe
        if probe.pending is not None and probe.pending.done():
            failure = probe.pending.result()
            probe.pending = None
            if failure is None:
                probe.successes, probe.failures = probe.successes + 1, 0
                probe.ready = probe.ready or probe.successes >= int(spec.get("successThreshold", 1))
                probe.last = "probe succeeded"
            else:
                probe.failures, probe.successes = probe.failures + 1, 0
                probe.ready = probe.ready and probe.failures < int(spec.get("failureThreshold", 3))
                probe.last = failure
        if probe.pending is None and now >= probe.due:
            get = spec.get("httpGet") or {}
            port = get.get("port")
            if isinstance(port, str) and not port.isdigit():  # a named containerPort
                port = next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == port), port)
            host = get.get("host") or rec.get("ip") or "127.0.0.1"
            url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}"
            probe.pending = self.pool.submit(http_probe, url, float(spec.get("timeoutSeconds", 1)))
            probe.due = now + float(spec.get("periodSeconds", 10))
        return probe.ready, probe.last

    def _record(self, pod: str, ready: bool, results: dict[str, str], now: float) -> None:
        rec = self.wl._read("pods", pod)  # re-read: the test process writes pod records too
        if rec is None or rec.get("terminating"):
            return
        if bool(rec.get("ready")) == ready and rec.get("probes") == results:
            return
        if bool(rec.get("ready")) != ready:
            rec["ready_since"] = now if ready else None
            log(f"pod {pod}: ready={ready} ({results})")
        rec.update(ready=ready, probes=results)
        self.wl._write("pods", pod, rec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--env", required=True, help="env name or YAML file")
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--netns", default=None, help="the node's network namespace (hostNetwork pods)")
    p.add_argument("--interval", type=float, default=0.1)
    args = p.parse_args(argv)
    env = load_env(args.env)
    if env.testbed is None:
        p.error(f"env {env.name} has no testbed section")
    sup = Supervisor(state_dir=args.state_dir, port=env.testbed.supervisor_port)
    wl = LocalWorkloads(env=env, supervisor=sup, state_dir=args.state_dir, netns=args.netns)
    ctl = Controller(wl)
    signal.signal(signal.SIGTERM, lambda *_: ctl.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: ctl.stopping.set())
    ctl.run(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
