"""The ports: small typed protocols and the result dataclasses that cross them.

Steps and procedures talk only to these. Each port has a real implementation per environment kind
(kube, local testbed) and, for unit tests of the adapters only, a mock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
