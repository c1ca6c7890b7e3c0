"""The Objects port (:class:`runbook.adapters.base.Objects`) on the local testbed, and configMap volumes.

:class:`ObjectsMixin` gives :class:`~runbook.testbed.kubelet.LocalWorkloads`:

- ``apply_object`` / ``get_object`` / ``delete_object`` / ``list_objects`` for ConfigMaps
  (:class:`~runbook.testbed.kube_configmaps.LocalConfigMaps`) and Services
  (:class:`~runbook.testbed.kube_services.LocalServices`, its validation kept), both under ``<state>/kube`` in
  the env's kube namespace ("default" without one). As the kind adapter: ``apply_object`` creates, or replaces on
  the resourceVersion it reads (a manifest's own resourceVersion is not used), under the store's lock; every
  write bumps the store's resourceVersion; a refusal is a :class:`KubeError` with the API server's status and
  words (422 invalid); listed objects carry ``kind`` and ``apiVersion`` and are sorted by name.
- the kubelet's ``configMap`` volumes: a pod's volume is projected (kubelet's AtomicWriter layout) into
  ``<state>/kubelet/pods/<pod>/volumes/kubernetes.io~configmap/<volume>``, which each container's mountPath
  links to. A ConfigMap (or key) that is missing, and not ``optional``, keeps the pod's containers waiting in
  ContainerCreating, with a FailedMount event, until a later sync finds it. The projection follows its ConfigMap
  only when the testbed's controller syncs the pod (:meth:`ObjectsMixin.sync_configmap_volumes`, every
  ``testbed.configmap_sync`` per pod), never at the write: a client sees a ConfigMap change late, as on a cluster
  (the kubelet's sync period plus its ConfigMap cache TTL, about a minute there).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.adapters.base import OBJECT_KINDS
from runbook.errors import AdapterError, KubeError
from runbook.testbed.kube_configmaps import (
    LocalConfigMaps,
    MountFailed,
    atomic_write,
    check_precondition,
    stamp_metadata,
    store_lock,
    volume_payload,
    write_json,
)
from runbook.testbed.kube_services import LocalServices

if TYPE_CHECKING:
    from runbook.env import Env, TestbedConfig

CONFIGMAP_PLUGIN = "kubernetes.io~configmap"
_REQUIREMENT = re.compile(r"\s*(!?)\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*(?:(==|=|!=)\s*([-A-Za-z0-9_.]*))?\s*")


def parse_selector(selector: str) -> list[tuple[str, str, str]]:
    """A label selector's equality requirements (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma-separated) as
    (key, operator, value), operator one of ``=``, ``!=``, ``exists``, ``!exists``. Anything else is the API
    server's 400."""
    out: list[tuple[str, str, str]] = []
    for part in selector.split(","):
        if not part.strip():
            if selector.strip():
                raise KubeError(f"unable to parse requirement: found '', expected: identifier (in {selector!r})",
                                status=400)
            continue
        m = _REQUIREMENT.fullmatch(part)
        if m is None or (m.group(1) and m.group(3)):
            raise KubeError(f"unable to parse requirement: {part.strip()!r} is not a label selector requirement",
                            status=400)
        bang, key, op, value = m.groups()
        if op is None:
            out.append((key, "!exists" if bang else "exists", ""))
        else:
            out.append((key, "!=" if op == "!=" else "=", value or ""))
    return out


def matches(labels: Mapping[str, str], requirements: list[tuple[str, str, str]]) -> bool:
    for key, op, value in requirements:
        ok = {"=": labels.get(key) == value, "!=": labels.get(key) != value,
              "exists": key in labels, "!exists": key not in labels}[op]
        if not ok:
            return False
    return True


class ObjectsMixin:
    """The Objects port and configMap volumes on :class:`~runbook.testbed.kubelet.LocalWorkloads`."""

    env: Env
    tb: TestbedConfig
    kube: Path
    state_dir: Path

    if TYPE_CHECKING:  # provided by LocalWorkloads
        def _read(self, kind: str, name: str) -> dict[str, Any] | None: ...
        def _write(self, kind: str, name: str, obj: Mapping[str, Any]) -> None: ...
        @staticmethod
        def _containers(spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]: ...
        def _start_containers(self, pod: str, obj: dict[str, Any]) -> None: ...

    # -- the stores -------------------------------------------------------------------------------
    @property
    def object_namespace(self) -> str:
        """The namespace the testbed's ConfigMaps and Services live in: the env's kube namespace, or default."""
        return self.env.namespace

    @property
    def configmaps(self) -> LocalConfigMaps:
        return LocalConfigMaps(self.kube, namespace=self.object_namespace)

    @property
    def services(self) -> LocalServices:
        return LocalServices(self.kube, namespace=self.object_namespace)

    def _kind(self, kind: str) -> str:
        if kind not in OBJECT_KINDS:
            raise KubeError(f"kind {kind!r} is not one the Objects port handles (it handles: "
                            f"{', '.join(OBJECT_KINDS)}); namespace {self.object_namespace}", status=400,
                            env=self.env.name)
        return kind

    # -- the Objects port -------------------------------------------------------------------------
    def apply_object(self, manifest: dict[str, Any]) -> None:
        """Create the ConfigMap or Service (a resourceVersion it carries is dropped: an object derived from
        another's), or replace it: on the manifest's resourceVersion when it carries one (optimistic: a stale one
        is the API server's 409), else on what the store holds (under its lock). As the kind adapter."""
        kind = self._kind(str(manifest.get("kind", "")))
        body = json.loads(json.dumps(manifest))
        meta = body.setdefault("metadata", {})
        name = str(meta.get("name") or "")
        if self.get_object(kind, name) is None:
            meta.pop("resourceVersion", None)
        try:
            if kind == "ConfigMap":
                self.configmaps.apply(body)
                return
            with store_lock(self.kube):
                current = self.services.get(name) if name and "/" not in name else None
                check_precondition(meta, current, "services", self.object_namespace)
                stamp_metadata(meta, current, self.kube, self.object_namespace)
                self.services.apply(body)
        except KubeError as exc:
            exc.env = exc.env or self.env.name
            raise
        except AdapterError as exc:  # LocalServices' validation: the API server's 422
            status = 422 if " is invalid: " in exc.message else 400
            raise KubeError(exc.message, status=status, env=self.env.name, obj=name) from exc

    def get_object(self, kind: str, name: str) -> dict[str, Any] | None:
        """The stored object (``metadata.resourceVersion`` included), or None."""
        store = self.configmaps if self._kind(kind) == "ConfigMap" else self.services
        obj = store.get(name) if name and "/" not in name else None
        return None if obj is None else {"apiVersion": "v1", **obj, "kind": kind}

    def delete_object(self, kind: str, name: str) -> None:
        """Delete it; one that is not there converges."""
        store = self.configmaps if self._kind(kind) == "ConfigMap" else self.services
        if name and "/" not in name:
            with store_lock(self.kube):
                (store.dir / f"{name}.json").unlink(missing_ok=True)

    def list_objects(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        """Every object of that kind whose labels match ``selector`` (``k=v,k2=v2``; also ``!=``, ``k``, ``!k``),
        by name."""
        store = self.configmaps if self._kind(kind) == "ConfigMap" else self.services
        wanted = parse_selector(selector)
        out = []
        for name in store.names():
            obj = self.get_object(kind, name)
            if obj is not None and matches((obj.get("metadata") or {}).get("labels") or {}, wanted):
                out.append(obj)
        return out

    # -- configMap volumes (the kubelet's side) ---------------------------------------------------
    def configmap_volume_dir(self, pod: str, volume: str) -> Path:
        """Where the kubelet projects a pod's configMap volume (/var/lib/kubelet/pods/<uid>/volumes/...)."""
        return self.state_dir / "kubelet" / "pods" / pod / "volumes" / CONFIGMAP_PLUGIN / volume

    @staticmethod
    def configmap_volumes(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [v for v in spec.get("volumes") or [] if "configMap" in v]

    def _mount_configmap(self, pod: str, volume: Mapping[str, Any], link: Path) -> None:
        """A container's mountPath (``link``, in its rootfs) onto the pod's projection of the volume."""
        src = self.configmap_volume_dir(pod, volume["name"])
        src.mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)

    def _project(self, pod: str, spec: Mapping[str, Any]) -> list[str]:
        """Project every configMap volume of the pod from the store; the FailedMount messages of those that
        cannot be (their previous projection, if any, is left as it was)."""
        failures = []
        for vol in self.configmap_volumes(spec):
            source = vol["configMap"]
            try:
                atomic_write(self.configmap_volume_dir(pod, vol["name"]),
                             volume_payload(source, self.configmaps.get(str(source.get("name") or ""))))
            except MountFailed as exc:
                failures.append(f'MountVolume.SetUp failed for volume "{vol["name"]}" : {exc}')
        return failures

    def _setup_configmap_volumes(self, pod: str, obj: dict[str, Any]) -> bool:
        """At pod start: project its configMap volumes. False when one cannot be set up yet: its containers wait
        in ContainerCreating (a FailedMount event) and the controller's next sync retries."""
        failures = self._project(pod, obj["spec"])
        if not failures:
            return True
        if obj.get("mount_error") != failures[0]:
            self._event(pod, "FailedMount", failures[0])
        obj.update(volumes_pending=True, mount_error=failures[0],
                   waiting={c["name"]: "ContainerCreating" for _, c in self._containers(obj["spec"])})
        self._write("pods", pod, obj)
        return False

    def sync_configmap_volumes(self, pod: str) -> None:
        """The kubelet's periodic sync of one pod's configMap volumes (the controller calls it every
        ``testbed.configmap_sync``): each projection made to follow its ConfigMap (swapped atomically when it
        changed); a pod still waiting for one is started once all can be set up. A running pod whose ConfigMap
        went keeps its last projection (a FailedMount event, as the kubelet's)."""
        obj = self._read("pods", pod)
        if obj is None or obj.get("terminating") or not self.configmap_volumes(obj["spec"]):
            return
        (self.kube / "volume-sync").mkdir(exist_ok=True)
        write_json(self.kube / "volume-sync" / f"{pod}.json", {"at": time.time()})  # before: see its docstring
        if obj.get("volumes_pending"):
            if self._setup_configmap_volumes(pod, obj):
                for key in ("volumes_pending", "mount_error"):
                    obj.pop(key, None)
                obj["waiting"] = {}
                self._write("pods", pod, obj)
                self._start_containers(pod, obj)
            return
        failures = self._project(pod, obj["spec"])
        if failures and obj.get("mount_error") != failures[0]:
            self._event(pod, "FailedMount", failures[0])
        if obj.get("mount_error") != (failures[0] if failures else None):
            obj["mount_error"] = failures[0] if failures else None
            self._write("pods", pod, obj)

    def configmap_synced_at(self, pod: str) -> float | None:
        """When the controller last began a sync of the pod's configMap volumes (written before the projection is
        touched: content read before this changes was there before that sync), or None before the first."""
        try:
            return float(json.loads((self.kube / "volume-sync" / f"{pod}.json").read_text())["at"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def remove_orphan_volumes(self) -> None:
        """The kubelet's cleanup of the volumes of pods that are gone."""
        root = self.state_dir / "kubelet" / "pods"
        dirs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []  # before the records: see below
        stamps = list((self.kube / "volume-sync").glob("*.json"))
        live = {p.stem for p in (self.kube / "pods").glob("*.json")}  # a pod's record is written before its dir
        for d in dirs:
            if d.name not in live:
                shutil.rmtree(d, ignore_errors=True)
        for s in stamps:
            if s.stem not in live:
                s.unlink(missing_ok=True)

    def _event(self, pod: str, reason: str, message: str) -> None:
        """A Warning event about the pod, beside the container events (``events``)."""
        rec = {"t": time.time(), "event": reason, "process": f"{pod}--", "from": "", "message": message}
        with (self.kube / "events.jsonl").open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
