"""The fake node's kubelet: container statuses as containerd's CRI reports them, and the kubelet's rules.

- A container's ``image`` is the image's first repo tag, fully qualified; ``imageID`` is ``repo@sha256:..``
  (design trap 11). An image the node does not have is ``ErrImagePull``, then ``ImagePullBackOff``.
- Native sidecars (initContainers with ``restartPolicy: Always``) start first; app containers wait in
  ``PodInitializing`` until every sidecar runs; statuses go to ``initContainerStatuses`` and
  ``containerStatuses`` (trap 6).
- A container whose image is patched in the running pod restarts alone: restartCount + 1, new imageID,
  new startedAt (whole seconds, as the API serialises); the others keep theirs (trap 5, Kubernetes 1.32+).
- A container whose command is ``false`` exits 1 at once and crash-loops (``CrashLoopBackOff``, restarts
  counted): the one way for a test to ask for a crashing container.
- A run-to-completion pod's (restartPolicy Never/OnFailure) containers exit as :mod:`tests.kube.fake_batch` says;
  the pod is then Succeeded or Failed.
- A deleted pod keeps running, with ``deletionTimestamp`` set, for the cluster's grace delay, then is gone.

Transitions are timers on the cluster's clock (see :class:`tests.kube.fake_cluster.FakeCluster`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from tests.kube import fake_batch as batch
from tests.kube.fake_state import Obj, timestamp, wall

if TYPE_CHECKING:
    from tests.kube.fake_cluster import FakeCluster

Key = tuple[str, str]
MAX_CRASH_RESTARTS = 6
NODE_IP = "10.244.0.7"  # the node's address: hostIP, and podIP of a hostNetwork pod


def native_sidecars(spec: Obj) -> list[Obj]:
    return [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]


def _status_key(spec: Obj, name: str) -> str:
    return "initContainerStatuses" if any(c["name"] == name for c in native_sidecars(spec)) else "containerStatuses"


def _crashes(container: Obj) -> bool:
    command = container.get("command") or []
    return bool(command) and command[0] in ("false", "/bin/false")


class Kubelet:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    # -- helpers

    def _pod(self, key: Key) -> Obj | None:
        return self.cluster.objects["pods"].get(key)

    def _status(self, pod: Obj, name: str) -> Obj:
        key = _status_key(pod["spec"], name)
        statuses = pod["status"].setdefault(key, [])
        for s in statuses:
            if s["name"] == name:
                return s
        s = {"name": name, "state": {}, "lastState": {}, "ready": False, "restartCount": 0, "image": "",
             "imageID": "", "started": False}
        statuses.append(s)
        return s

    def _container(self, pod: Obj, name: str) -> Obj:
        return next(c for key in ("initContainers", "containers") for c in pod["spec"].get(key) or []
                    if c["name"] == name)

    def _event(self, pod: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        self.cluster.record_event(pod, reason, message, type_)

    # -- lifecycle

    def admit(self, key: Key) -> None:
        """A new pod was bound to the node: start its containers after the start delay."""
        pod = self._pod(key)
        assert pod is not None
        self._event(pod, "Scheduled", f"Successfully assigned {key[0]}/{key[1]} to {self.cluster.node}")
        self.cluster.after(self.cluster.start_delay, lambda: self._start_pod(key))

    def _start_pod(self, key: Key) -> None:
        pod = self._pod(key)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        host_network = bool(pod["spec"].get("hostNetwork"))
        pod["status"]["hostIP"] = NODE_IP
        pod["status"]["podIP"] = NODE_IP if host_network else self.cluster.pod_ip()
        pod["status"]["podIPs"] = [{"ip": pod["status"]["podIP"]}]
        pod["status"]["startTime"] = timestamp(wall())
        for c in native_sidecars(pod["spec"]):
            self._run(pod, c, restart=False)
        sidecars_up = all(self._status(pod, c["name"])["state"].get("running")
                          for c in native_sidecars(pod["spec"]))
        for c in pod["spec"].get("containers") or []:
            if sidecars_up:
                self._run(pod, c, restart=False)
            else:
                st = self._status(pod, c["name"])
                st.update(image=c.get("image", ""), state={"waiting": {"reason": "PodInitializing"}})
        self.refresh(pod)

    def _run(self, pod: Obj, container: Obj, *, restart: bool) -> None:
        """Pull (or fail to), create and start one container."""
        st = self._status(pod, container["name"])
        ref = container.get("image", "")
        image = self.cluster.images.find(ref)
        if restart:
            st["restartCount"] += 1
        if image is None:
            st.update(image=ref, imageID="", ready=False, started=False,
                      state={"waiting": {"reason": "ErrImagePull", "message": f'failed to pull and unpack image '
                                         f'"{ref}": not found'}})
            self._event(pod, "Failed", f'Failed to pull image "{ref}": not found', "Warning")
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            self.cluster.after(self.cluster.backoff, lambda: self._pull_backoff(key, container["name"], ref))
            return
        self._event(pod, "Pulled", f'Container image "{ref}" already present on machine')
        self._event(pod, "Created", f"Created container: {container['name']}")
        now = timestamp(wall())
        container_id = "containerd://" + hashlib.sha256(f"{pod['metadata']['uid']}/{container['name']}/"
                                                         f"{st['restartCount']}".encode()).hexdigest()
        st.update(image=image.tags[0], imageID=image.repo_digest, containerID=container_id)
        if _crashes(container) and not batch.run_to_completion(pod):
            st.update(ready=False, started=False, state={"terminated": {
                "exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now, "containerID": container_id}})
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            if st["restartCount"] < MAX_CRASH_RESTARTS:
                self.cluster.after(self.cluster.backoff, lambda: self._crash_loop(key, container["name"]))
            return
        st.update(ready=True, started=True, state={"running": {"startedAt": now}})
        self._event(pod, "Started", f"Started container {container['name']}")
        batch.started(self, pod, container)  # a run-to-completion pod's container that ends by itself

    def _pull_backoff(self, key: Key, name: str, ref: str) -> None:
        pod = self._pod(key)
        if pod is None or self._container(pod, name).get("image") != ref:
            return
        st = self._status(pod, name)
        if "waiting" in st["state"]:
            st["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{ref}"'}}
            self._event(pod, "BackOff", f'Back-off pulling image "{ref}"', "Normal")
            self.refresh(pod)

    def _crash_loop(self, key: Key, name: str) -> None:
        pod = self._pod(key)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        st = self._status(pod, name)
        st["lastState"] = st["state"]
        st["restartCount"] += 1
        st["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off restarting failed "
                                   f"container={name} pod={key[1]}"}}
        self._event(pod, "BackOff", "Back-off restarting failed container", "Warning")
        if st["restartCount"] < MAX_CRASH_RESTARTS:
            self.cluster.after(self.cluster.backoff, lambda: self._crash_loop(key, name))
        self.refresh(pod)

    def images_changed(self, key: Key, old_spec: Obj, new_spec: Obj) -> None:
        """The pod's spec was updated: every container whose image changed is killed and restarted alone."""
        pod = self._pod(key)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        old = {c["name"]: c.get("image") for k in ("initContainers", "containers") for c in old_spec.get(k) or []}
        for k in ("initContainers", "containers"):
            for c in new_spec.get(k) or []:
                st = next((s for s in pod["status"].get(_status_key(new_spec, c["name"])) or []
                           if s["name"] == c["name"]), None)
                if old.get(c["name"]) == c.get("image") or st is None or "running" not in st["state"]:
                    continue
                self._event(pod, "Killing", f"Container {c['name']} definition changed, will be restarted")
                now = timestamp(wall())
                st["state"] = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now,
                                              "startedAt": st["state"]["running"]["startedAt"],
                                              "containerID": st.get("containerID", "")}}
                st.update(ready=False, started=False)
                name = c["name"]
                self.cluster.after(self.cluster.restart_delay, lambda n=name: self._restart(key, n))  # type: ignore[misc]
        self.refresh(pod)

    def _restart(self, key: Key, name: str) -> None:
        pod = self._pod(key)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        st = self._status(pod, name)
        st["lastState"] = st["state"]
        self._run(pod, self._container(pod, name), restart=True)
        self.refresh(pod)

    def stop(self, pod: Obj) -> None:
        for key in ("initContainerStatuses", "containerStatuses"):
            for st in pod["status"].get(key) or []:
                if "running" in st["state"]:
                    self._event(pod, "Killing", f"Stopping container {st['name']}")

    # -- derived status

    def refresh(self, pod: Obj) -> None:
        """Phase and conditions from the container statuses."""
        status = pod["status"]
        apps = status.get("containerStatuses") or []
        every = (status.get("initContainerStatuses") or []) + apps
        started = [s for s in apps if s["state"].get("running") or s["state"].get("terminated")
                   or s["restartCount"] > 0]
        status["phase"] = batch.phase(pod) or ("Running" if started else "Pending")
        ready = bool(every) and all(s["ready"] for s in every) and len(every) == len(
            native_sidecars(pod["spec"])) + len(pod["spec"].get("containers") or [])
        initialized = all(s["started"] for s in status.get("initContainerStatuses") or [])
        now = timestamp(wall())

        def cond(type_: str, value: bool) -> dict[str, Any]:
            return {"type": type_, "status": "True" if value else "False", "lastProbeTime": None,
                    "lastTransitionTime": now}

        status["conditions"] = [cond("PodReadyToStartContainers", "startTime" in status),
                                cond("Initialized", initialized), cond("Ready", ready),
                                cond("ContainersReady", ready), cond("PodScheduled", True)]
