"""The workloads port on a real Kubernetes API (kind in CI, biscayne in production), with the rollout verbs
of :class:`runbook.adapters.base.Rollouts` (:mod:`runbook.adapters.kube_rollouts`).

Behind the same protocol as the local kubelet-alike (:class:`runbook.adapters.base.Workloads`). Native
sidecars are read from ``status.initContainerStatuses`` and app containers from ``status.containerStatuses``
(design trap 6). Every API failure becomes a :class:`~runbook.errors.KubeError` naming env, namespace and
object (see :mod:`runbook.adapters.kube_api`); every wait goes through :func:`runbook.wait.wait_for`.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import websocket
from kubernetes import client as k8s

from runbook.adapters.base import CommandResult, ContainerKind, ContainerState, ContainerStatus, PodInfo, ProcessInfo
from runbook.adapters.kube_api import call, call_json, check_reachable, connect, describe_failure
from runbook.adapters.kube_batch import KubeBatch
from runbook.adapters.kube_exec import ExecDeadline, refusal, run_exec
from runbook.adapters.kube_objects import KubeObjects
from runbook.adapters.kube_rollouts import RolloutVerbs, ready_condition
from runbook.env import Env
from runbook.errors import KubeError
from runbook.wait import wait_for

__all__ = ["KubeWorkloads", "RolloutState", "check_reachable", "container_statuses", "exit_status",
           "terminating"]

COLOUR_LABEL = "runbook/colour"
JSON_PATCH = "application/json-patch+json"
CONFLICT_RETRIES = 5  # replace attempts when only the status moved under us


# --------------------------------------------------------------------------- pure parsing


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _images(pod_spec: Mapping[str, Any]) -> dict[str, str]:
    return {c["name"]: c.get("image", "") for key in ("initContainers", "containers")
            for c in pod_spec.get(key) or []}


def _state(raw: Mapping[str, Any]) -> tuple[ContainerState, str, datetime | None]:
    state = raw.get("state") or {}
    if "running" in state:
        return "running", "", _time((state["running"] or {}).get("startedAt"))
    if "waiting" in state:
        return "waiting", str((state["waiting"] or {}).get("reason", "")), None
    if "terminated" in state:
        t = state["terminated"] or {}
        return "terminated", str(t.get("reason", "")), _time(t.get("startedAt"))
    return "unknown", "", None


_SOURCES: tuple[tuple[str, str, ContainerKind], ...] = (
    ("initContainers", "initContainerStatuses", "sidecar"),
    ("containers", "containerStatuses", "app"),
)


def terminating(pod: Mapping[str, Any]) -> bool:
    """A pod being deleted (``metadata.deletionTimestamp`` set): its containers may still run, but it is on
    its way out, never a Deployment's running pod."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def container_statuses(pod: Mapping[str, Any]) -> tuple[ContainerStatus, ...]:
    """Every container of the pod spec with its status exactly as the API reports it: native sidecars
    (initContainers with ``restartPolicy: Always``, status in ``initContainerStatuses``) first, then app
    containers (status in ``containerStatuses``). ``image`` and ``image_id`` are the status's (containerd
    reports the fully qualified first repo tag and a digest), never the spec's: a container with no status
    yet is ``unknown`` with no image. Run-to-completion init containers are not reported (the Deployments
    here have none)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    out: list[ContainerStatus] = []
    for spec_key, status_key, kind in _SOURCES:
        by_name = {s.get("name"): s for s in status.get(status_key) or []}
        for c in spec.get(spec_key) or []:
            if kind == "sidecar" and c.get("restartPolicy") != "Always":
                continue
            raw = by_name.get(c["name"], {})
            state, reason, started = _state(raw)
            out.append(ContainerStatus(
                name=c["name"], kind=kind, image=str(raw.get("image") or ""),
                image_id=str(raw.get("imageID", "")), state=state, started_at=started,
                restart_count=int(raw.get("restartCount", 0)), ready=bool(raw.get("ready", False)),
                reason=reason))
    return tuple(out)


def exit_status(error_channel: str) -> tuple[int, str]:
    """(exit code, message) from an exec's error channel (a Kubernetes Status in JSON).

    ``Success`` is 0; ``NonZeroExitCode`` carries the code in ``details.causes[reason=ExitCode]``; any other
    failure (executable not found, container gone) has no exit code and gives -1 with the message.
    """
    if not error_channel.strip():
        return -1, "the exec ended without a status (connection lost?)"
    try:
        data = json.loads(error_channel)
    except ValueError:
        return -1, error_channel.strip()
    if data.get("status") == "Success":
        return 0, ""
    for cause in (data.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", "")), str(data.get("message", ""))
            except ValueError:
                break
    return -1, str(data.get("message", error_channel.strip()))


@dataclass(frozen=True, repr=False)
class RolloutState:
    """One observation of a Deployment's rollout (what a WaitTimeout reports as the last state)."""

    deployment: str
    generation: int
    observed_generation: int
    desired: int
    updated: int
    available: int
    pods: tuple[PodInfo, ...] = field(default_factory=tuple)

    @property
    def done(self) -> bool:
        return (self.observed_generation >= self.generation and self.updated == self.available == self.desired
                and len(self.pods) == self.desired
                and all(p.phase == "Running" and p.containers and all(c.ready for c in p.containers)
                        for p in self.pods))

    def __repr__(self) -> str:
        pods = "; ".join(
            f"{p.name} {p.phase} " + ", ".join(
                f"{c.name}={c.state}{':' + c.reason if c.reason else ''}{'/ready' if c.ready else ''}"
                for c in p.containers) for p in self.pods) or "no pods"
        return (f"deployment {self.deployment}: generation {self.observed_generation}/{self.generation}, "
                f"replicas desired {self.desired} updated {self.updated} available {self.available}; {pods}")


# --------------------------------------------------------------------------- the adapter


class KubeWorkloads(KubeObjects, KubeBatch, RolloutVerbs):
    """Deployments, pods and containers through the official ``kubernetes`` client; the rollout verbs
    (:class:`~runbook.adapters.base.Rollouts`) come from :mod:`runbook.adapters.kube_rollouts`."""

    def __init__(self, env: Env, *, request_timeout: float = 30.0, poll_interval: float = 1.0) -> None:
        self.env = env
        self.api_client, self.target = connect(env)
        self.namespace = self.target.namespace
        self.core = k8s.CoreV1Api(self.api_client)
        self.apps = k8s.AppsV1Api(self.api_client)
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self._rs_owner: dict[str, str] = {}

    # -- plumbing

    def _call(self, fn: Any, *args: Any, action: str, obj: str, **kw: Any) -> Any:
        return call(fn, *args, action=action, obj=obj, target=self.target, timeout=self.request_timeout, **kw)

    def _json(self, fn: Any, *args: Any, action: str, obj: str, **kw: Any) -> dict[str, Any]:
        data = call_json(fn, *args, action=action, obj=obj, target=self.target, timeout=self.request_timeout,
                         **kw)
        assert data is not None  # only None with missing_ok
        return data

    def _read_deployment(self, name: str) -> dict[str, Any]:
        return self._json(self.apps.read_namespaced_deployment, name, self.namespace, action="get",
                          obj=f"deployment/{name}")

    def deployment(self, name: str) -> dict[str, Any] | None:
        found = self._find_deployment(name)
        return dict(found) if found is not None else None

    def _find_deployment(self, name: str) -> dict[str, Any] | None:
        return call_json(self.apps.read_namespaced_deployment, name, self.namespace, action="get",
                         obj=f"deployment/{name}", target=self.target, timeout=self.request_timeout,
                         missing_ok=True)

    @staticmethod
    def _selector(dep: Mapping[str, Any]) -> str:
        labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    def _pod_objects(self, dep: Mapping[str, Any]) -> list[dict[str, Any]]:
        name = dep["metadata"]["name"]
        data = self._json(self.core.list_namespaced_pod, self.namespace, label_selector=self._selector(dep),
                          action="list", obj=f"pods of deployment/{name}")
        return sorted(data.get("items") or [], key=lambda p: p["metadata"]["name"])

    def _owner(self, pod: Mapping[str, Any]) -> str:
        """The Deployment owning a pod: ownerReferences -> ReplicaSet -> Deployment, else the colour label."""
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") != "ReplicaSet":
                continue
            rs_name = ref["name"]
            if rs_name not in self._rs_owner:
                rs = self._json(self.apps.read_namespaced_replica_set, rs_name, self.namespace, action="get",
                                obj=f"replicaset/{rs_name}")
                owners = [o["name"] for o in rs["metadata"].get("ownerReferences") or []
                          if o.get("kind") == "Deployment"]
                self._rs_owner[rs_name] = owners[0] if owners else ""
            if self._rs_owner[rs_name]:
                return self._rs_owner[rs_name]
        colour = (pod["metadata"].get("labels") or {}).get(COLOUR_LABEL)
        if colour in ("green", "blue"):
            return self.env.deployments.colour(colour).name
        return ""

    def _pod_info(self, pod: Mapping[str, Any], dep: Mapping[str, Any] | None) -> PodInfo:
        """``phase`` is the API's ``status.phase``, except that a pod being deleted is ``Terminating`` (as
        kubectl shows it): its containers may still run, but it is not running any more."""
        name = pod["metadata"]["name"]
        if dep is None:
            owner = self._owner(pod)
            dep = self._find_deployment(owner) if owner else None
        else:
            owner = dep["metadata"]["name"]
        template = (((dep or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        phase = "Terminating" if terminating(pod) else str((pod.get("status") or {}).get("phase", "Unknown"))
        return PodInfo(name=name, deployment=owner, phase=phase,
                       containers=container_statuses(pod), spec_images=_images(pod.get("spec") or {}),
                       template_images=_images(template), ip=str((pod.get("status") or {}).get("podIP") or ""),
                       labels=dict(pod["metadata"].get("labels") or {}), ready_condition=ready_condition(pod))

    # -- Workloads protocol

    def apply_deployment(self, manifest: dict[str, Any]) -> None:
        """Create the Deployment, or replace it (optimistically, on the resourceVersion just read)."""
        body = json.loads(json.dumps(manifest))
        body.setdefault("metadata", {})["namespace"] = self.namespace
        name = body["metadata"]["name"]
        current = self._find_deployment(name)
        if current is None:
            self._call(self.apps.create_namespaced_deployment, self.namespace, body, action="create",
                       obj=f"deployment/{name}", _preload_content=False)
            return
        for attempt in range(CONFLICT_RETRIES):
            body["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
            try:
                self._call(self.apps.replace_namespaced_deployment, name, self.namespace, body, action="replace",
                           obj=f"deployment/{name}", _preload_content=False)
                return
            except KubeError as exc:
                # The Deployment controller writes status (a new resourceVersion, the same generation) while
                # we replace: re-read and retry. A spec changed by someone else (a new generation) stands.
                if exc.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
                read_generation = current["metadata"].get("generation")
                current = self._find_deployment(name)
                if current is None or current["metadata"].get("generation") != read_generation:
                    raise

    def delete_deployment(self, name: str, *, wait: bool = True) -> None:
        """Delete the Deployment (its pods go with it); with ``wait``, until it and its pods are gone.
        Deleting a Deployment that does not exist is not an error (a re-run converges)."""
        dep = self._find_deployment(name)
        if dep is None:
            return
        self._call(self.apps.delete_namespaced_deployment, name, self.namespace, action="delete",
                   obj=f"deployment/{name}", propagation_policy="Foreground", missing_ok=True,
                   _preload_content=False)
        if not wait:
            return

        def remaining() -> list[str]:
            left = [p["metadata"]["name"] for p in self._pod_objects(dep)]
            return left + ([f"deployment/{name}"] if self._find_deployment(name) is not None else [])

        wait_for(remaining, lambda left: not left, timeout=self.env.timeouts.rollout,
                 interval=self.poll_interval, what=f"deployment {name} and its pods to be gone",
                 env=self.env.name, obj=f"deployment/{name}")

    def deployments(self) -> list[str]:
        data = self._json(self.apps.list_namespaced_deployment, self.namespace, action="list", obj="deployments")
        return sorted(d["metadata"]["name"] for d in data.get("items") or [])

    def daemonsets(self) -> list[str]:
        data = self._json(self.apps.list_namespaced_daemon_set, self.namespace, action="list", obj="daemonsets")
        return sorted(d["metadata"]["name"] for d in data.get("items") or [])

    def rollout_state(self, name: str) -> RolloutState:
        dep = self._read_deployment(name)
        spec, status = dep.get("spec") or {}, dep.get("status") or {}
        live = [p for p in self._pod_objects(dep) if not terminating(p)]
        return RolloutState(
            deployment=name, generation=int(dep["metadata"].get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)), desired=int(spec.get("replicas", 1)),
            updated=int(status.get("updatedReplicas", 0)), available=int(status.get("availableReplicas", 0)),
            pods=tuple(self._pod_info(p, dep) for p in live))

    def wait_rollout(self, name: str, *, timeout: float) -> PodInfo:
        """Until the Deployment's current generation is rolled out and its pod runs with every container
        ready; the WaitTimeout carries the last RolloutState (container states and reasons)."""
        state = wait_for(lambda: self.rollout_state(name), lambda s: s.done, timeout=timeout,
                         interval=self.poll_interval, what=f"rollout of deployment {name}",
                         env=self.env.name, obj=f"deployment/{name}")
        if not state.pods:
            raise KubeError(f"deployment {name} in namespace {self.namespace} is scaled to 0: no pod to return",
                            env=self.env.name, obj=f"deployment/{name}")
        return state.pods[0]

    def pods(self, deployment: str) -> list[PodInfo]:
        """The Deployment's pods, terminating ones left out (they are on their way out: a step asking whether
        a colour runs must not see one). None when the Deployment does not exist: steps ask before creating
        it and after deleting it. :meth:`delete_deployment` waits for terminating pods to be gone."""
        dep = self._find_deployment(deployment)
        if dep is None:
            return []
        return [self._pod_info(p, dep) for p in self._pod_objects(dep) if not terminating(p)]

    def pod(self, name: str) -> PodInfo:
        pod = self._json(self.core.read_namespaced_pod, name, self.namespace, action="get", obj=f"pod/{name}")
        return self._pod_info(pod, None)

    def exec(self, pod: str, container: str, argv: Sequence[str], *, timeout: float = 30.0) -> CommandResult:
        """Run ``argv`` in a container (WebSocket exec, v5 or v4 channel protocol); rc from the error channel's
        Status. ``timeout`` is a deadline over the whole exec, connecting and the upgrade included: an exec
        that never answers is cut there (:mod:`runbook.adapters.kube_exec`)."""
        command = shlex.join(argv)
        obj = f"pod/{pod}"
        action = f"exec `{command}` in container {container} of"
        start = time.monotonic()
        try:
            out = run_exec(self.api_client, self.namespace, pod, container, argv, timeout=timeout)
        except ExecDeadline as exc:
            raise KubeError(f"{action} {obj} in namespace {self.namespace}: cut at its {timeout:g}s deadline "
                            f"({exc.phase}); the command may still be running in the container",
                            env=self.env.name, obj=obj) from None
        except websocket.WebSocketBadStatusException as exc:
            raise describe_failure(refusal(exc), action=action, obj=obj, target=self.target,
                                   timeout=timeout) from None
        except (websocket.WebSocketException, OSError) as exc:
            raise describe_failure(exc, action=action, obj=obj, target=self.target, timeout=timeout) from None
        rc, message = exit_status(out.status)
        stderr = out.stderr
        if rc == -1 and message:
            stderr = f"{stderr}{message}\n"
        return CommandResult(command=command, rc=rc, stdout=out.stdout, stderr=stderr,
                             duration=time.monotonic() - start)

    @staticmethod
    def _container_path(pod_spec: Mapping[str, Any], container: str, prefix: str) -> str:
        for key in ("initContainers", "containers"):
            for i, c in enumerate(pod_spec.get(key) or []):
                if c.get("name") == container:
                    return f"{prefix}/{key}/{i}/image"
        names = ", ".join(_images(pod_spec)) or "none"
        raise KubeError(f"no container {container!r} (has: {names})")

    def _patch_image(self, fn: Any, name: str, obj: str, pod_spec: Mapping[str, Any], prefix: str,
                     container: str, image: str) -> None:
        try:
            path = self._container_path(pod_spec, container, prefix)
        except KubeError as exc:
            raise KubeError(f"patch {obj} in namespace {self.namespace}: {exc.message}", env=self.env.name,
                            obj=obj) from None
        self._call(fn, name, self.namespace, [{"op": "replace", "path": path, "value": image}], action="patch",
                   obj=obj, _content_type=JSON_PATCH, _preload_content=False)

    def patch_pod_container_image(self, pod: str, container: str, image: str) -> None:
        """Change one container's image in the running pod (a native sidecar restarts alone, on 1.32+).
        The pod then drifts from its Deployment's template; :attr:`PodInfo.drift` shows it."""
        obj = self._json(self.core.read_namespaced_pod, pod, self.namespace, action="get", obj=f"pod/{pod}")
        self._patch_image(self.core.patch_namespaced_pod, pod, f"pod/{pod}", obj.get("spec") or {}, "/spec",
                          container, image)

    def patch_template_container_image(self, deployment: str, container: str, image: str) -> None:
        """Change the image in the Deployment's pod template: the controller replaces the whole pod."""
        dep = self._read_deployment(deployment)
        spec = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
        self._patch_image(self.apps.patch_namespaced_deployment, deployment, f"deployment/{deployment}", spec,
                          "/spec/template/spec", container, image)

    def events(self, pod: str) -> list[str]:
        """The pod's events, oldest first: ``<time> <type> <reason>: <message> (xN)``."""
        data = self._json(self.core.list_namespaced_event, self.namespace,
                          field_selector=f"involvedObject.name={pod}", action="list", obj=f"events of pod/{pod}")

        def when(e: Mapping[str, Any]) -> str:
            return str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp")
                       or (e.get("metadata") or {}).get("creationTimestamp") or "")

        out = []
        for e in sorted(data.get("items") or [], key=when):
            count = int(e.get("count") or 1)
            out.append(f"{when(e)} {e.get('type', '')} {e.get('reason', '')}: {e.get('message', '')}"
                       + (f" (x{count})" if count > 1 else ""))
        return out

    def owns_process(self, proc: ProcessInfo) -> bool:
        """Whether a process, as the host listed it (``ps -o cgroup`` through the host port, never the
        runner's /proc), belongs to a Kubernetes pod: its cgroup is under ``kubepods``."""
        return "kubepods" in proc.cgroup
