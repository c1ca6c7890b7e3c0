"""The rollout verbs of the kube adapter (:class:`runbook.adapters.base.Rollouts`), as kubectl does them.

- ``set_template``: ``kubectl set image`` (plus the template labels and the change cause): one strategic
  merge patch of the Deployment, containers merged by name; the Deployment controller rolls it out.
- ``rollout_status``: the Deployment's status as ``kubectl rollout status`` reads it, with the revision of
  its newest ReplicaSet.
- ``rollout_history``: the Deployment's ReplicaSets (by ``ownerReferences``) sorted by
  ``deployment.kubernetes.io/revision``, as ``kubectl rollout history`` lists them.
- ``rollout_undo``: kubectl's client-side undo (``polymorphichelpers.DeploymentRollbacker``): the previous
  (second highest) or named revision's ReplicaSet, its template without ``pod-template-hash`` and its
  annotations patched back into the Deployment in one JSON patch; "skipped rollback" when the template
  already matches. Unknown revision: :class:`~runbook.errors.KubeError` (an AdapterError) with kubectl's
  words and the revisions there are.
- ``endpoints``: the Service's EndpointSlices (``discovery.k8s.io/v1``), ready addresses with the port.
- ``pods_of``: the pods the Deployment's selector matches, terminating ones excluded.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s

from runbook.adapters.base import PodInfo, Revision, RolloutStatus
from runbook.errors import KubeError

if TYPE_CHECKING:
    from runbook.adapters.kube_api import KubeTarget
    from runbook.env import Env

log = logging.getLogger(__name__)

REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
HASH_LABEL = "pod-template-hash"
SERVICE_NAME = "kubernetes.io/service-name"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# kubectl's annotationsToSkip: kept from the Deployment, never taken from the ReplicaSet, on an undo
ANNOTATIONS_TO_SKIP = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas", "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to"})


def revision_of(rs: Mapping[str, Any]) -> int | None:
    """A ReplicaSet's ``deployment.kubernetes.io/revision`` (None when absent or not a number: kubectl
    leaves such a ReplicaSet out)."""
    try:
        return int(((rs.get("metadata") or {}).get("annotations") or {})[REVISION])
    except (KeyError, ValueError, TypeError):
        return None


def template_images(template: Mapping[str, Any]) -> dict[str, str]:
    spec = template.get("spec") or {}
    return {c["name"]: c.get("image", "") for key in ("initContainers", "containers") for c in spec.get(key) or []}


def without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(template))
    labels = (out.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return out


def ready_condition(pod: Mapping[str, Any]) -> bool | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return None


class RolloutVerbs:
    """Mixed into :class:`runbook.adapters.kube.KubeWorkloads`, which provides these attributes."""

    env: Env
    namespace: str
    target: KubeTarget
    api_client: k8s.ApiClient
    apps: k8s.AppsV1Api
    core: k8s.CoreV1Api
    last_undo: str = ""  # kubectl's words for the last rollout_undo: "rolled back" or "skipped rollback (...)"

    if TYPE_CHECKING:
        def _json(self, fn: Any, *args: Any, action: str, obj: str, **kw: Any) -> dict[str, Any]: ...

        def _call(self, fn: Any, *args: Any, action: str, obj: str, **kw: Any) -> Any: ...

        def _read_deployment(self, name: str) -> dict[str, Any]: ...

        def _pod_objects(self, dep: Mapping[str, Any]) -> list[dict[str, Any]]: ...

        def _pod_info(self, pod: Mapping[str, Any], dep: Mapping[str, Any] | None) -> PodInfo: ...

    def _error(self, message: str, obj: str) -> KubeError:
        return KubeError(f"{message} (namespace {self.namespace})", env=self.env.name, obj=obj)

    # -- set_template

    def set_template(self, deployment: str, *, images: Mapping[str, str], labels: Mapping[str, str] | None = None,
                     change_cause: str = "") -> None:
        """One strategic merge patch: the named containers' images (app or native sidecar, merged by name),
        the template labels, and ``kubernetes.io/change-cause`` on the Deployment (the controller copies it
        to the new ReplicaSet, where ``rollout history`` reads it). A container the template does not have
        is refused before anything is sent, as ``kubectl set image`` refuses it."""
        obj = f"deployment/{deployment}"
        dep = self._read_deployment(deployment)
        template = (dep.get("spec") or {}).get("template") or {}
        pod_spec = template.get("spec") or {}
        where = {c["name"]: key for key in ("initContainers", "containers") for c in pod_spec.get(key) or []}
        unknown = sorted(set(images) - set(where))
        if unknown:
            raise self._error(f"set image of {obj}: unable to find container named {', '.join(map(repr, unknown))} "
                              f"(has: {', '.join(where) or 'none'})", obj)
        spec_patch: dict[str, list[dict[str, str]]] = {}
        for name, image in images.items():
            spec_patch.setdefault(where[name], []).append({"name": name, "image": image})
        patch: dict[str, Any] = {"spec": {"template": {"spec": spec_patch}}}
        if labels:
            patch["spec"]["template"]["metadata"] = {"labels": dict(labels)}
        if change_cause:
            patch["metadata"] = {"annotations": {CHANGE_CAUSE: change_cause}}
        self._call(self.apps.patch_namespaced_deployment, deployment, self.namespace, patch, action="patch",
                   obj=obj, _content_type=STRATEGIC, _preload_content=False)

    # -- status and history

    def _replica_sets(self, dep: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The Deployment's ReplicaSets: its selector's, owned by it (ownerReferences uid), by revision."""
        meta = dep["metadata"]
        labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        data = self._json(self.apps.list_namespaced_replica_set, self.namespace, label_selector=selector,
                          action="list", obj=f"replicasets of deployment/{meta['name']}")
        owned = [rs for rs in data.get("items") or []
                 if any(o.get("kind") == "Deployment" and o.get("uid") == meta.get("uid")
                        for o in rs["metadata"].get("ownerReferences") or [])]
        return sorted(owned, key=lambda rs: (revision_of(rs) or 0, rs["metadata"]["name"]))

    def rollout_status(self, deployment: str) -> RolloutStatus:
        dep = self._read_deployment(deployment)
        spec, status = dep.get("spec") or {}, dep.get("status") or {}
        revisions = [r for r in map(revision_of, self._replica_sets(dep)) if r is not None]
        return RolloutStatus(
            deployment=deployment, generation=int(dep["metadata"].get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)),
            desired=int(spec.get("replicas", 1)), replicas=int(status.get("replicas", 0)),
            updated=int(status.get("updatedReplicas", 0)), ready=int(status.get("readyReplicas", 0)),
            available=int(status.get("availableReplicas", 0)), revision=max(revisions, default=0),
            images=template_images(spec.get("template") or {}))

    def rollout_history(self, deployment: str) -> list[Revision]:
        dep = self._read_deployment(deployment)
        out = []
        for rs in self._replica_sets(dep):
            number = revision_of(rs)
            if number is None:
                continue
            template = (rs.get("spec") or {}).get("template") or {}
            labels = dict((template.get("metadata") or {}).get("labels") or {})
            labels.pop(HASH_LABEL, None)
            status = rs.get("status") or {}
            out.append(Revision(number=number, images=template_images(template), labels=labels,
                                change_cause=str((rs["metadata"].get("annotations") or {}).get(CHANGE_CAUSE, "")),
                                replicas=int(status.get("replicas", 0)), ready=int(status.get("readyReplicas", 0))))
        return out

    # -- undo

    def rollout_undo(self, deployment: str, *, to_revision: int | None = None) -> int:
        """kubectl's client-side undo. Returns the revision whose template is the Deployment's now (kubectl
        renumbers it: the controller gives it the next revision number). :attr:`last_undo` keeps kubectl's
        words: ``rolled back``, or ``skipped rollback (current template already matches revision N)``."""
        obj = f"deployment/{deployment}"
        if to_revision is not None and to_revision < 0:
            raise self._error(f"undo {obj}: unable to find specified revision {to_revision} in history", obj)
        dep = self._read_deployment(deployment)
        if (dep.get("spec") or {}).get("paused"):
            raise self._error(f"undo {obj}: you cannot rollback a paused deployment; resume it first with "
                              "'kubectl rollout resume' and try again", obj)
        numbered = [(n, rs) for n, rs in ((revision_of(rs), rs) for rs in self._replica_sets(dep)) if n is not None]
        kept = ", ".join(str(n) for n, _ in numbered) or "none"
        if to_revision:
            chosen = next((rs for n, rs in numbered if n == to_revision), None)
            if chosen is None:
                raise self._error(f"undo {obj}: unable to find specified revision {to_revision} in history "
                                  f"(revisions: {kept})", obj)
            number = to_revision
        else:
            if len(numbered) < 2:
                raise self._error(f'undo {obj}: no rollout history found for deployment "{deployment}" '
                                  f"(revisions: {kept})", obj)
            number, chosen = numbered[-2]
        template = (chosen.get("spec") or {}).get("template") or {}
        current = (dep.get("spec") or {}).get("template") or {}
        if without_hash(template) == without_hash(current):
            self.last_undo = f"skipped rollback (current template already matches revision {number})"
            log.info("%s %s", obj, self.last_undo)
            return number
        annotations = {k: v for k, v in (dep["metadata"].get("annotations") or {}).items()
                       if k in ANNOTATIONS_TO_SKIP}
        annotations.update({k: v for k, v in (chosen["metadata"].get("annotations") or {}).items()
                            if k not in ANNOTATIONS_TO_SKIP})
        patch = [{"op": "replace", "path": "/spec/template", "value": without_hash(template)},
                 {"op": "replace", "path": "/metadata/annotations", "value": annotations}]
        self._call(self.apps.patch_namespaced_deployment, deployment, self.namespace, patch, action="patch",
                   obj=obj, _content_type=JSON_PATCH, _preload_content=False)
        self.last_undo = "rolled back"
        log.info("%s rolled back to revision %d", obj, number)
        return number

    # -- Service endpoints and pods

    def endpoints(self, service: str) -> list[str]:
        """``ip:port`` of every ready endpoint in the Service's EndpointSlices (the Service's first port,
        as the slice resolved its targetPort), sorted. A missing Service is an error, not an empty list."""
        obj = f"service/{service}"
        svc = self._json(self.core.read_namespaced_service, service, self.namespace, action="get", obj=obj)
        ports = (svc.get("spec") or {}).get("ports") or []
        port_name = ports[0].get("name", "") if ports else ""
        discovery = k8s.DiscoveryV1Api(self.api_client)
        data = self._json(discovery.list_namespaced_endpoint_slice, self.namespace,
                          label_selector=f"{SERVICE_NAME}={service}", action="list", obj=f"endpointslices of {obj}")
        out: set[str] = set()
        for s in data.get("items") or []:
            port = next((p.get("port") for p in s.get("ports") or [] if (p.get("name") or "") == port_name), None)
            if port is None:
                continue
            for e in s.get("endpoints") or []:
                if (e.get("conditions") or {}).get("ready") is False:  # nil means ready (discovery/v1)
                    continue
                out.update(f"{addr}:{port}" for addr in e.get("addresses") or [])
        return sorted(out)

    def pods_of(self, deployment: str) -> list[PodInfo]:
        """Pods the Deployment's selector matches (every revision's), terminating ones excluded."""
        dep = self._read_deployment(deployment)
        return [self._pod_info(p, dep) for p in self._pod_objects(dep)
                if not (p.get("metadata") or {}).get("deletionTimestamp")]
