"""The ports: small typed protocols and the result dataclasses that cross them.

Steps and procedures talk only to these. Each port has a real implementation per environment kind
(kube, local testbed) and, for unit tests of the adapters only, a mock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from runbook.images import same_image

# --------------------------------------------------------------------------- host


@dataclass(frozen=True)
class CommandResult:
    """What one command run through a port returned (testinfra's shape, typed)."""

    command: str
    rc: int
    stdout: str
    stderr: str
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    name: str
    cmdline: str
    pidns: str = ""  # the PID namespace's inode, as the host's `ps -o pidns` lists it ("" unknown)
    cgroup: str = ""  # the host's `ps -o cgroup` (a Kubernetes pod's processes are under kubepods)


@dataclass(frozen=True)
class ServiceState:
    name: str
    active: bool | None  # None: the host has no service manager that knows the unit
    enabled: bool | None
    detail: str = ""


@runtime_checkable
class Host(Protocol):
    """The machine the environment runs on (testinfra backend: local://, ssh://, docker://)."""

    url: str

    def run(self, command: str, *, check: bool = True, timeout: float = 60.0, root: bool = False) -> CommandResult:
        """Run a shell command on the host; ``root=True`` for one that needs root (``sudo -n`` on a host whose
        URL says ``?sudo=true``, see :mod:`runbook.adapters.host`)."""
        ...

    def processes(self, name: str) -> list[ProcessInfo]: ...

    def service(self, name: str) -> ServiceState: ...

    def routes(self, interface: str, *, netns: str | None = None) -> list[str]: ...

    def file_sha256(self, path: str) -> str | None: ...


# --------------------------------------------------------------------------- workloads

ContainerKind = Literal["sidecar", "app"]
ContainerState = Literal["running", "waiting", "terminated", "unknown"]


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    kind: ContainerKind  # sidecar: status.initContainerStatuses; app: status.containerStatuses
    image: str
    image_id: str
    state: ContainerState
    started_at: datetime | None
    restart_count: int
    ready: bool
    reason: str = ""  # waiting/terminated reason (CrashLoopBackOff, ImagePullBackOff, Completed, ...)
    pid: int | None = None  # local testbed only: the process that is the container


@dataclass(frozen=True)
class PodInfo:
    name: str
    deployment: str
    phase: str
    containers: tuple[ContainerStatus, ...]
    spec_images: dict[str, str] = field(default_factory=dict)  # container name -> image in the pod spec
    template_images: dict[str, str] = field(default_factory=dict)  # from the owning Deployment
    ip: str = ""  # status.podIP ("" until assigned; the node's IP for a hostNetwork pod)
    labels: dict[str, str] = field(default_factory=dict)  # metadata.labels
    ready_condition: bool | None = None  # the pod's Ready condition when the platform reports one

    @property
    def ready(self) -> bool:
        """The pod's Ready condition; without one reported, Running with every container ready."""
        if self.ready_condition is not None:
            return self.ready_condition
        return self.phase == "Running" and bool(self.containers) and all(c.ready for c in self.containers)

    def container(self, name: str) -> ContainerStatus:
        for c in self.containers:
            if c.name == name:
                return c
        names = ", ".join(c.name for c in self.containers)
        raise KeyError(f"pod {self.name} has no container {name!r} (has: {names})")

    @property
    def drift(self) -> dict[str, tuple[str, str]]:
        """Containers whose running pod spec differs from the Deployment template: name -> (template, pod)."""
        return {
            n: (self.template_images[n], img)
            for n, img in self.spec_images.items()
            if n in self.template_images and not same_image(self.template_images[n], img)
        }


@dataclass(frozen=True)
class Revision:
    """One entry of ``kubectl rollout history``: a ReplicaSet of the Deployment and its template."""

    number: int  # the ReplicaSet's deployment.kubernetes.io/revision
    images: dict[str, str]  # container -> image in that revision's pod template
    labels: dict[str, str]  # that revision's pod template labels
    change_cause: str = ""  # the kubernetes.io/change-cause annotation, "" when none
    replicas: int = 0  # the ReplicaSet's current replicas (status)
    ready: int = 0  # its ready replicas


@dataclass(frozen=True)
class RolloutStatus:
    """One observation of a Deployment's rollout, as ``kubectl rollout status`` reads it."""

    deployment: str
    generation: int
    observed_generation: int
    desired: int  # spec.replicas
    replicas: int  # status.replicas: every pod of every revision
    updated: int  # pods of the current template
    ready: int
    available: int
    revision: int  # the current revision (the newest ReplicaSet's)
    images: dict[str, str] = field(default_factory=dict)  # container -> image in the Deployment's template

    @property
    def done(self) -> bool:
        """kubectl rollout status's "successfully rolled out": observed, all updated, no old pod left, all available."""
        return (self.observed_generation >= self.generation and self.updated == self.desired
                and self.replicas == self.updated and self.available == self.updated)

    @property
    def message(self) -> str:
        """kubectl rollout status's words for this observation."""
        d = self.deployment
        if self.observed_generation < self.generation:
            return 'Waiting for deployment spec update to be observed...'
        if self.updated < self.desired:
            return (f'Waiting for deployment "{d}" rollout to finish: {self.updated} out of {self.desired} new '
                    "replicas have been updated...")
        if self.replicas > self.updated:
            return (f'Waiting for deployment "{d}" rollout to finish: {self.replicas - self.updated} old replicas '
                    "are pending termination...")
        if self.available < self.updated:
            return (f'Waiting for deployment "{d}" rollout to finish: {self.available} of {self.updated} updated '
                    "replicas are available...")
        return f'deployment "{d}" successfully rolled out'


@runtime_checkable
class Rollouts(Protocol):
    """RollingUpdate Deployments and their Services (seed 004's canary promotion): the kube port's rollout verbs.
    On kind/biscayne the Deployment controller does the rollout; on the local testbed, the testbed's controller."""

    def set_template(self, deployment: str, *, images: Mapping[str, str], labels: Mapping[str, str] | None = None,
                     change_cause: str = "") -> None:
        """One patch of the pod template (container images, template labels, the change-cause annotation):
        one new revision, rolled out by the Deployment's strategy. ``kubectl set image`` plus the labels."""
        ...

    def rollout_status(self, deployment: str) -> RolloutStatus: ...

    def rollout_history(self, deployment: str) -> list[Revision]:
        """Every revision still kept (revisionHistoryLimit), oldest first."""
        ...

    def rollout_undo(self, deployment: str, *, to_revision: int | None = None) -> int:
        """``kubectl rollout undo [--to-revision=N]``: the template of the previous (or named) revision becomes
        the Deployment's again (as a new revision number). Returns the revision number undone to. An unknown
        revision raises AdapterError naming the revisions there are."""
        ...

    def endpoints(self, service: str) -> list[str]:
        """The Service's ready endpoints, ``ip:port``, as its Endpoints/EndpointSlices list them."""
        ...

    def pods_of(self, deployment: str) -> list[PodInfo]:
        """Every pod the Deployment owns (all its ReplicaSets), terminating ones excluded."""
        ...


OBJECT_KINDS = ("ConfigMap", "Service")


@runtime_checkable
class Objects(Protocol):
    """ConfigMaps and Services as the API server stores them (seed 003's release: each colour's ConfigMaps and
    Services, the common ConfigMap clients read, the release state and history). On kind/biscayne the API server
    (CoreV1); on the local testbed, the testbed's store, whose Services the testbed's kube-proxy and cluster DNS
    serve and whose ConfigMaps its kubelet projects into pods' configMap volumes."""

    def apply_object(self, manifest: dict[str, Any]) -> None:
        """Create the object (``kind`` one of :data:`OBJECT_KINDS`; a resourceVersion it carries is dropped), or
        replace it: on the manifest's resourceVersion when it carries one (compare-and-swap: a stale one is a
        KubeError with status 409, never retried), else on the one just read. The API server's validation
        applies (its words: a 422 is a KubeError with status 422)."""
        ...

    def get_object(self, kind: str, name: str) -> dict[str, Any] | None:
        """The live object as the platform returns it (``metadata.resourceVersion`` included), or None."""
        ...

    def delete_object(self, kind: str, name: str) -> None:
        """Delete it; one that does not exist is not an error (a re-run converges)."""
        ...

    def list_objects(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        """Every object of that kind in the namespace whose labels match ``selector`` (``k=v,k2=v2``), by name."""
        ...


@runtime_checkable
class Workloads(Protocol):
    """Deployments, pods and containers (Kubernetes API, or the local kubelet-alike under supervisord)."""

    def apply_deployment(self, manifest: dict[str, Any]) -> None: ...

    def delete_deployment(self, name: str, *, wait: bool = True) -> None: ...

    def deployments(self) -> list[str]: ...

    def deployment(self, name: str) -> dict[str, Any] | None:
        """The live Deployment object as the platform returns it, or None when there is none."""
        ...

    def daemonsets(self) -> list[str]: ...

    def wait_rollout(self, name: str, *, timeout: float) -> PodInfo: ...

    def pods(self, deployment: str) -> list[PodInfo]: ...

    def pod(self, name: str) -> PodInfo: ...

    def exec(self, pod: str, container: str, argv: Sequence[str], *, timeout: float = 30.0) -> CommandResult: ...

    def patch_pod_container_image(self, pod: str, container: str, image: str) -> None: ...

    def patch_template_container_image(self, deployment: str, container: str, image: str) -> None: ...

    def events(self, pod: str) -> list[str]: ...

    def owns_process(self, proc: ProcessInfo) -> bool: ...


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Dataset:
    name: str
    path: str
    origin: str | None = None  # snapshot this dataset was cloned from
    snapshots: tuple[str, ...] = ()


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@runtime_checkable
class Storage(Protocol):
    """Snapshots and copy-on-write clones (zfs on biscayne; the zvol model, btrfs, reflink or copy on the
    testbed), mounts of volumes, space figures and identity facts."""

    backend: str

    def ensure_dataset(self, name: str) -> Dataset: ...

    def path(self, name: str) -> str: ...

    def datasets(self) -> list[Dataset]: ...

    def snapshot(self, dataset: str, snap: str, *, recursive: bool = False) -> str: ...

    def clone(self, snapshot: str, target: str) -> Dataset: ...

    def destroy(self, name: str, *, recursive: bool = False) -> None: ...

    def rollback(self, snapshot: str, *, destroy_newer: bool = False) -> None: ...

    def promote(self, clone: str) -> None: ...

    def copy_tree(self, src: str, dst: str, *, progress: Progress | None = None) -> int: ...

    def mount(self, name: str, path: str) -> None:
        """Make dataset ``name``'s files appear at ``path`` (the path a Deployment's hostPath uses).

        A volume (a ZFS zvol, the testbed's model of one) is a block device: it is mounted there, with
        ``-o nouuid`` because an XFS clone carries its origin's UUID. A filesystem dataset is mounted (or
        bind-mounted) there. The directory backends hold a dataset at its own path only: ``path`` must be
        that path (a no-op), anything else is refused. Converges: already mounted there is left alone."""
        ...

    def unmount(self, name: str) -> None:
        """Undo :meth:`mount` (for a volume: every mount of its device; the model also detaches its loop
        device). Converges: not mounted is left alone. A busy mount is an error naming it."""
        ...

    def mounted_at(self, name: str) -> str | None:
        """Where ``name`` is mounted now (the first mount of its device or dataset), or None."""
        ...

    def free_bytes(self, name: str) -> int:
        """Bytes a new snapshot, clone or copy next to ``name`` can still use (ZFS ``available``; the
        directory backends and the model: the free space of the filesystem holding ``name``)."""
        ...

    def used_bytes(self, name: str) -> int:
        """Bytes ``name`` occupies (ZFS ``used``; the model: the volume image's allocated bytes; the
        directory backends: ``du`` of the dataset's directory)."""
        ...

    def identity(self, name: str) -> dict[str, str | int]:
        """Storage-level facts proving ``name`` was not rewritten (compared before and after a run): each
        backend documents its fields. Equal facts mean the storage saw no write and no rollback."""
        ...

    def plan(self, op: str, *args: str, **options: bool) -> list[str]: ...


# --------------------------------------------------------------------------- ingress


@dataclass(frozen=True)
class UpstreamStat:
    address: str
    num_requests: int
    fails: int


@runtime_checkable
class Ingress(Protocol):
    """Caddy's admin API."""

    def config(self) -> dict[str, Any]: ...

    def load(self, config: dict[str, Any]) -> None: ...

    def upstreams(self) -> list[UpstreamStat]: ...

    def upstream_order(self) -> list[str]: ...

    def set_upstream_order(self, addresses: Sequence[str]) -> None: ...


# --------------------------------------------------------------------------- batch (Jobs, StatefulSets, PVCs)


@dataclass(frozen=True)
class JobCondition:
    """One of ``status.conditions`` of a Job (batch/v1): Complete/SuccessCriteriaMet, Failed/FailureTarget."""

    type: str
    status: str  # "True"
    reason: str = ""  # CompletionsReached, BackoffLimitExceeded, DeadlineExceeded
    message: str = ""


@dataclass(frozen=True)
class JobPod:
    """A pod of a Job as ``kubectl get pod`` and containerd report it."""

    name: str
    phase: str  # Pending, Running, Succeeded, Failed
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # app container -> last exitCode (None: none)
    reasons: dict[str, str] = field(default_factory=dict)  # container -> terminated/waiting reason (Completed, Error)
    terminating: bool = False


@dataclass(frozen=True)
class JobStatus:
    """A Job's ``status`` (counts of pods) and its pods."""

    name: str
    active: int
    succeeded: int
    failed: int
    ready: int = 0
    conditions: tuple[JobCondition, ...] = ()
    pods: tuple[JobPod, ...] = ()
    start_time: datetime | None = None
    completion_time: datetime | None = None

    def condition(self, type_: str) -> JobCondition | None:
        return next((c for c in self.conditions if c.type == type_ and c.status == "True"), None)

    @property
    def finished(self) -> str | None:
        """"Complete" or "Failed" once the Job has that terminal condition (what ``kubectl wait`` waits for)."""
        return next((t for t in ("Complete", "Failed") if self.condition(t)), None)


@dataclass(frozen=True)
class StatefulSetStatus:
    """A StatefulSet's ``status`` (apps/v1) and the names of its pods, by ordinal."""

    name: str
    replicas: int
    ready_replicas: int
    current_replicas: int
    updated_replicas: int
    current_revision: str
    update_revision: str
    observed_generation: int
    pods: tuple[str, ...] = ()  # pods that exist (terminating ones included), by ordinal


Propagation = Literal["Background", "Foreground", "Orphan"]


@runtime_checkable
class Batch(Protocol):
    """Jobs run to completion, StatefulSets with per-ordinal PersistentVolumeClaims, and the claims themselves
    (kubectl apply/get/delete of batch/v1 Job, apps/v1 StatefulSet, v1 PersistentVolumeClaim). Applies are
    asynchronous: controllers reconcile, as on a cluster; read the statuses to wait."""

    def apply_job(self, manifest: dict[str, Any]) -> None:
        """Create a Job (its ``spec.template`` is immutable afterwards: a changed one is a 422)."""
        ...

    def job_status(self, name: str) -> JobStatus | None: ...

    def delete_job(self, name: str, *, propagation: Propagation = "Background", wait: bool = True) -> None:
        """Delete a Job; its pods go with it unless ``Orphan``. ``wait``: until the Job and those pods are gone."""
        ...

    def apply_statefulset(self, manifest: dict[str, Any]) -> None: ...

    def statefulset_status(self, name: str) -> StatefulSetStatus | None: ...

    def statefulset(self, name: str) -> dict[str, Any] | None:
        """The live StatefulSet as ``kubectl get -o json`` gives it (server fields and ``status`` included), or None."""
        ...

    def delete_statefulset(self, name: str, *, wait: bool = True) -> None:
        """Delete a StatefulSet and its pods; its PersistentVolumeClaims stay (Retain)."""
        ...

    def apply_pvc(self, manifest: dict[str, Any]) -> None: ...

    def pvcs(self, selector: str = "") -> list[str]:
        """Names of the PersistentVolumeClaims (a label selector as ``kubectl -l`` takes it)."""
        ...

    def delete_pvc(self, name: str, *, wait: bool = True) -> None:
        """Delete a claim; its volume's data goes too (the default StorageClass reclaims: Delete). A claim a pod
        still uses stays Terminating until that pod is gone (kubernetes.io/pvc-protection)."""
        ...
