"""The Objects port of the kube adapter (:class:`runbook.adapters.base.Objects`): ConfigMaps and Services
through CoreV1.

- ``apply_object``: create (a ``resourceVersion`` the manifest carries is dropped: an object derived from
  another's), or replace, optimistically as ``kubectl replace`` does: on the manifest's ``resourceVersion`` when it
  carries one (the caller's compare-and-swap, e.g. the release state written on the version it was read at: a
  stale one is the 409, never retried), else on the one just read. A Service's replace on the version just read
  that loses the race to a write that changed neither its spec nor its labels and annotations (a status write, a
  controller's bookkeeping) is re-read and retried, a bounded number of times; one that another client's spec or
  metadata change beat fails with the 409. A ConfigMap's 409 always stands: ConfigMaps have no status, so a
  newer resourceVersion means someone else wrote its data.
  A manifest without ``spec.clusterIP`` (or node ports) keeps the ones the API server allocated: the server
  copies them from the live object on update.
- ``get_object``: the live object as the API server sent it (camelCase JSON), or None.
- ``delete_object``: a delete; one that is not there is not an error.
- ``list_objects``: by label selector, sorted by name; each item carries ``kind`` and ``apiVersion`` (a list's
  items come without them), so it can be re-applied as it is.

Every failure is a :class:`~runbook.errors.KubeError` naming env, namespace, object and action, with the HTTP
status of the API's answer (422 for a validation failure, with the API server's words).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s

from runbook.adapters.base import OBJECT_KINDS
from runbook.adapters.kube_api import call_json
from runbook.errors import KubeError

if TYPE_CHECKING:
    from runbook.adapters.kube_api import KubeTarget
    from runbook.env import Env

OBJECT_RETRIES = 5  # replace attempts of a Service when only its status moved under us


@dataclass(frozen=True)
class _Verbs:
    """The CoreV1Api methods of one kind, and how messages name its objects."""

    noun: str  # configmap/<name>, service/<name>, as kubectl names them
    read: Callable[..., Any]
    create: Callable[..., Any]
    replace: Callable[..., Any]
    delete: Callable[..., Any]
    list: Callable[..., Any]


def _content(obj: Mapping[str, Any]) -> Any:
    """What another client could have changed in a Service: its spec, labels and annotations."""
    meta = obj.get("metadata") or {}
    return obj.get("spec"), meta.get("labels") or {}, meta.get("annotations") or {}


class KubeObjects:
    """Mixed into :class:`runbook.adapters.kube.KubeWorkloads`, which provides these attributes."""

    env: Env
    namespace: str
    target: KubeTarget
    core: k8s.CoreV1Api
    request_timeout: float

    if TYPE_CHECKING:
        def _call(self, fn: Any, *args: Any, action: str, obj: str, **kw: Any) -> Any: ...

        def _json(self, fn: Any, *args: Any, action: str, obj: str, **kw: Any) -> dict[str, Any]: ...

    def _verbs(self, kind: str) -> _Verbs:
        core = self.core
        if kind == "ConfigMap":
            return _Verbs("configmap", core.read_namespaced_config_map, core.create_namespaced_config_map,
                          core.replace_namespaced_config_map, core.delete_namespaced_config_map,
                          core.list_namespaced_config_map)
        if kind == "Service":
            return _Verbs("service", core.read_namespaced_service, core.create_namespaced_service,
                          core.replace_namespaced_service, core.delete_namespaced_service,
                          core.list_namespaced_service)
        raise KubeError(f"kind {kind!r} is not one the Objects port handles (it handles: "
                        f"{', '.join(OBJECT_KINDS)}); namespace {self.namespace}", env=self.env.name)

    def _find(self, verbs: _Verbs, name: str) -> dict[str, Any] | None:
        return call_json(verbs.read, name, self.namespace, action="get", obj=f"{verbs.noun}/{name}",
                         target=self.target, timeout=self.request_timeout, missing_ok=True)

    # -- Objects protocol

    def apply_object(self, manifest: dict[str, Any]) -> None:
        """Create the ConfigMap or Service, or replace it on the manifest's resourceVersion if it carries one,
        else on the one just read."""
        kind = str(manifest.get("kind", ""))
        verbs = self._verbs(kind)
        body = copy.deepcopy(manifest)
        meta = body.setdefault("metadata", {})
        meta["namespace"] = self.namespace
        carried = meta.pop("resourceVersion", None)
        name = str(meta.get("name", ""))
        obj = f"{verbs.noun}/{name}"
        current = self._find(verbs, name)
        if current is None:
            self._call(verbs.create, self.namespace, body, action="create", obj=obj, _preload_content=False)
            return
        attempts = OBJECT_RETRIES if kind == "Service" and not carried else 1
        for attempt in range(attempts):
            meta["resourceVersion"] = carried or current["metadata"].get("resourceVersion")
            try:
                self._call(verbs.replace, name, self.namespace, body, action="replace", obj=obj,
                           _preload_content=False)
                return
            except KubeError as exc:
                if exc.status != 409 or attempt == attempts - 1:
                    raise
                read = _content(current)
                current = self._find(verbs, name)
                if current is None or _content(current) != read:
                    raise

    def get_object(self, kind: str, name: str) -> dict[str, Any] | None:
        """The live object (``metadata.resourceVersion`` included), or None when there is none."""
        return self._find(self._verbs(kind), name)

    def delete_object(self, kind: str, name: str) -> None:
        """Delete it; one that does not exist is not an error (a re-run converges)."""
        verbs = self._verbs(kind)
        self._call(verbs.delete, name, self.namespace, action="delete", obj=f"{verbs.noun}/{name}",
                   missing_ok=True, _preload_content=False)

    def list_objects(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        """Every object of that kind in the namespace whose labels match ``selector`` (``k=v,k2=v2``), by
        name, each with its ``kind`` and ``apiVersion``."""
        verbs = self._verbs(kind)
        what = f"{verbs.noun}s" + (f" labelled {selector}" if selector else "")
        query = {"label_selector": selector} if selector else {}
        data = self._json(verbs.list, self.namespace, action="list", obj=what, **query)
        items = [{"apiVersion": "v1", "kind": kind, **item} for item in data.get("items") or []]
        return sorted(items, key=lambda o: str((o.get("metadata") or {}).get("name", "")))
