"""RollingUpdate Deployments on the local kubelet: the API-server side (store, validation) and kubectl's verbs.

:class:`RolloutsMixin` gives :class:`~runbook.testbed.kubelet.LocalWorkloads` the
:class:`~runbook.adapters.base.Rollouts` port. A RollingUpdate Deployment (``spec.strategy.type`` RollingUpdate,
Kubernetes' default when the strategy is absent) is only stored here, its ``metadata.generation`` bumped when
its spec changes; the testbed's controller (:mod:`runbook.testbed.kube_controller`) rolls it out
asynchronously, as kube-controller-manager does, through ReplicaSets under ``<state>/kube/replicasets``.

The verbs read what the controller wrote (ReplicaSets, pod records, ``observedGeneration``) and follow kubectl:
``rollout status`` (:class:`~runbook.adapters.base.RolloutStatus`), ``rollout history`` (one entry per
ReplicaSet kept), ``rollout undo [--to-revision]`` (rollback.go: the previous revision is the second highest;
a template equal to the current one is "skipped rollback", not an error; an unknown one is "unable to find
specified revision N in history") and ``set image``.

The downward API and ``$(VAR)`` expansion a kubelet applies to a container's env, command and args are here too.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.adapters.base import PodInfo, Revision, RolloutStatus
from runbook.env import HOST_LOOPBACK
from runbook.errors import AdapterError, KubeError
from runbook.wait import wait_for

if TYPE_CHECKING:
    from runbook.env import Env

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
CHANGE_CAUSE = "kubernetes.io/change-cause"
# kubectl rollback.go's annotationsToSkip: kept from the Deployment, never copied from the ReplicaSet
SKIP_ANNOTATIONS = {"kubectl.kubernetes.io/last-applied-configuration", REVISION,
                    "deployment.kubernetes.io/revision-history", "deployment.kubernetes.io/desired-replicas",
                    "deployment.kubernetes.io/max-replicas", "deprecated.deployment.rollback.to"}
DEFAULT_HISTORY_LIMIT = 10
DEFAULT_GRACE = 30.0


def is_rolling(manifest: Mapping[str, Any]) -> bool:
    """RollingUpdate, Kubernetes' default when ``spec.strategy`` (or its type) is absent."""
    strategy = (manifest.get("spec") or {}).get("strategy") or {}
    return strategy.get("type", "RollingUpdate") == "RollingUpdate"


def replicas_of(manifest: Mapping[str, Any]) -> int:
    return int((manifest.get("spec") or {}).get("replicas", 1))


def _scaled(value: int | str, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int, or a percentage of ``total`` rounded up or down."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+)%", str(value))
    if not m:
        raise ValueError(f"invalid value {value!r}: must be an integer or a percentage")
    exact = int(m.group(1)) * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def fenceposts(manifest: Mapping[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) resolved as deployment util's ResolveFenceposts: surge rounds up, unavailable
    down (defaults 25%); both resolving to 0 makes unavailable 1."""
    ru = ((manifest.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    desired = replicas_of(manifest)
    surge = _scaled(ru.get("maxSurge", "25%"), desired, round_up=True)
    unavailable = _scaled(ru.get("maxUnavailable", "25%"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def validate(manifest: Mapping[str, Any]) -> list[str]:
    """What the API server's Deployment validation refuses (the parts this store relies on)."""
    spec = manifest.get("spec") or {}
    problems = []
    ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    raw = {k: ru.get(k, "25%") for k in ("maxSurge", "maxUnavailable")}
    for k, v in raw.items():
        try:
            if _scaled(v, 100, round_up=False) < 0:
                problems.append(f"spec.strategy.rollingUpdate.{k}: must be greater than or equal to 0")
        except ValueError as exc:
            problems.append(f"spec.strategy.rollingUpdate.{k}: {exc}")
    if not problems and all(_scaled(v, 100, round_up=False) == 0 for v in raw.values()):
        problems.append("spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when `maxSurge` is 0")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not selector:
        problems.append("spec.selector: Required value")
    elif any(labels.get(k) != v for k, v in selector.items()):
        problems.append("spec.template.metadata.labels: `selector` does not match template `labels`")
    if replicas_of(manifest) < 0:
        problems.append("spec.replicas: must be greater than or equal to 0")
    return problems


def go_label_selector(selector: Mapping[str, Any]) -> str:
    """A LabelSelector as the API server's field error prints it (Go's %#v of v1.LabelSelector)."""
    def go_str(v: Any) -> str:
        return json.dumps(str(v))
    labels = selector.get("matchLabels")
    ml = "map[string]string(nil)" if labels is None else \
        "map[string]string{" + ", ".join(f"{go_str(k)}:{go_str(v)}" for k, v in sorted(labels.items())) + "}"
    exprs = selector.get("matchExpressions")
    if exprs is None:
        me = "[]v1.LabelSelectorRequirement(nil)"
    else:
        def req(r: Mapping[str, Any]) -> str:
            values = r.get("values")
            vs = "[]string(nil)" if values is None else "[]string{" + ", ".join(go_str(v) for v in values) + "}"
            return (f"v1.LabelSelectorRequirement{{Key:{go_str(r.get('key', ''))}, "
                    f"Operator:{go_str(r.get('operator', ''))}, Values:{vs}}}")
        me = "[]v1.LabelSelectorRequirement{" + ", ".join(req(r) for r in exprs) + "}"
    return f"v1.LabelSelector{{MatchLabels:{ml}, MatchExpressions:{me}}}"


def revision_of(rs: Mapping[str, Any]) -> int:
    return int(rs["metadata"]["annotations"].get(REVISION, "0"))


def without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    t = copy.deepcopy(dict(template))
    labels = (t.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return t


def images_of(template: Mapping[str, Any]) -> dict[str, str]:
    spec = template.get("spec") or {}
    return {c["name"]: c["image"] for c in [*spec.get("initContainers", []), *spec.get("containers", [])]}


def available(pod: Mapping[str, Any], min_ready: float, now: float) -> bool:
    """Ready for at least minReadySeconds (podutil.IsPodAvailable)."""
    return bool(pod.get("ready")) and now - float(pod.get("ready_since") or now) >= min_ready


# -- the kubelet's env: downward API and $(VAR) expansion ----------------------------------------------
_REF = re.compile(r"\$(\$|\(([^)]*)\))")


def expand(value: str, env: Mapping[str, str]) -> str:
    """third_party/forked/golang/expansion: ``$(VAR)`` from ``env`` (left as is when unknown), ``$$`` is ``$``."""
    def repl(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        return env.get(m.group(2), m.group(0))
    return _REF.sub(repl, value)


def field_ref(pod: Mapping[str, Any], path: str, *, namespace: str) -> str:
    """A ``valueFrom.fieldRef.fieldPath`` of the downward API, from the pod's record."""
    host_net = bool((pod.get("spec") or {}).get("hostNetwork"))
    simple = {"metadata.name": pod.get("name", ""), "metadata.namespace": namespace,
              "status.podIP": pod.get("ip") or (HOST_LOOPBACK if host_net else ""), "status.hostIP": HOST_LOOPBACK}
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((pod.get(m.group(1)) or {}).get(m.group(2), ""))
    raise AdapterError(f"pod {pod.get('name')}: unsupported fieldRef.fieldPath {path!r} on the local kubelet",
                       obj=str(pod.get("name", "")))


def manifest_env(pod: Mapping[str, Any], c: Mapping[str, Any], *, namespace: str) -> dict[str, str]:
    """The container's env entries resolved as a kubelet resolves them, in order: ``value`` expanded against
    the entries before it, ``valueFrom.fieldRef`` from the pod."""
    out: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = expand(str(e["value"]), out)
        elif "fieldRef" in (e.get("valueFrom") or {}):
            out[e["name"]] = field_ref(pod, e["valueFrom"]["fieldRef"]["fieldPath"], namespace=namespace)
        elif "valueFrom" in e:
            raise AdapterError(f"pod {pod.get('name')}: env {e['name']}: only value and valueFrom.fieldRef are "
                               "supported on the local kubelet", obj=str(pod.get("name", "")))
    return out


class RolloutsMixin:
    """The Rollouts port on :class:`~runbook.testbed.kubelet.LocalWorkloads` (whose store it reads)."""

    env: Env
    kube: Path

    if TYPE_CHECKING:  # provided by LocalWorkloads
        def _read(self, kind: str, name: str) -> dict[str, Any] | None: ...
        def _write(self, kind: str, name: str, obj: Mapping[str, Any]) -> None: ...
        def apply_deployment(self, manifest: dict[str, Any]) -> None: ...
        def pod(self, name: str) -> PodInfo: ...

    # -- store ---------------------------------------------------------------------------------
    def namespace_of(self, manifest: Mapping[str, Any]) -> str:
        return str((manifest.get("metadata") or {}).get("namespace")
                   or self.env.namespace)

    def _store_rolling(self, manifest: dict[str, Any]) -> None:
        """The API server's part of an apply: validate, bump ``metadata.generation`` when the spec changed."""
        name = manifest["metadata"]["name"]
        problems = validate(manifest)
        old = self._read("deployments", name)
        selector = (manifest.get("spec") or {}).get("selector")
        if old is not None and selector != (old.get("spec") or {}).get("selector"):  # apps/v1: immutable
            problems.append(f"spec.selector: Invalid value: {go_label_selector(selector or {})}: field is immutable")
        if problems:
            body = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"  # the API server's list
            raise KubeError(f'Deployment.apps "{name}" is invalid: {body}', status=422, env=self.env.name, obj=name)
        manifest = copy.deepcopy(manifest)
        gen = int(((old or {}).get("metadata") or {}).get("generation", 0))
        if old is None or old.get("spec") != manifest.get("spec"):
            gen += 1
        manifest["metadata"]["generation"] = gen
        self._write("deployments", name, manifest)

    def replicasets(self, deployment: str) -> list[dict[str, Any]]:
        """The Deployment's ReplicaSets, oldest revision first."""
        out = []
        for p in (self.kube / "replicasets").glob("*.json"):
            try:
                rs = json.loads(p.read_text())
            except (OSError, ValueError):
                continue  # deleted while listing
            if rs.get("deployment") == deployment:
                out.append(rs)
        return sorted(out, key=revision_of)

    def pod_records(self, deployment: str | None = None) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.kube / "pods").glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if deployment is None or rec.get("deployment") == deployment:
                out.append(rec)
        return out

    def _manifest(self, deployment: str) -> dict[str, Any]:
        m = self._read("deployments", deployment)
        if m is None:
            raise AdapterError(f'deployments.apps "{deployment}" not found', env=self.env.name, obj=deployment)
        return m

    def _delete_rolling(self, deployment: str) -> None:
        """The garbage collector's part of a delete: the ReplicaSets and status go with the Deployment."""
        for rs in self.replicasets(deployment):
            (self.kube / "replicasets" / f"{rs['metadata']['name']}.json").unlink(missing_ok=True)
        (self.kube / "deployment-status" / f"{deployment}.json").unlink(missing_ok=True)

    # -- Rollouts port -------------------------------------------------------------------------
    def set_template(self, deployment: str, *, images: Mapping[str, str], labels: Mapping[str, str] | None = None,
                     change_cause: str = "") -> None:
        manifest = copy.deepcopy(self._manifest(deployment))
        template = manifest["spec"]["template"]
        spec = template["spec"]
        containers = {c["name"]: c for c in [*spec.get("initContainers", []), *spec.get("containers", [])]}
        for cname, image in images.items():
            if cname not in containers:
                raise AdapterError(f'unable to find container named "{cname}" in deployment {deployment}',
                                   env=self.env.name, obj=deployment)
            containers[cname]["image"] = image
        if labels:
            template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        if change_cause:
            manifest["metadata"].setdefault("annotations", {})[CHANGE_CAUSE] = change_cause
        self.apply_deployment(manifest)

    def rollout_status(self, deployment: str) -> RolloutStatus:
        from runbook.testbed.kubelet import template_hash  # the kubelet imports this module
        manifest = self._manifest(deployment)
        status = self._read("deployment-status", deployment) or {}
        thash = template_hash(manifest["spec"]["template"])
        new = next((rs for rs in self.replicasets(deployment) if rs["hash"] == thash), None)
        min_ready = float(manifest["spec"].get("minReadySeconds", 0))
        now = time.time()
        pods = [p for p in self.pod_records(deployment) if p.get("replicaset") and not p.get("terminating")]
        updated = [p for p in pods if new is not None and p["replicaset"] == new["metadata"]["name"]]
        return RolloutStatus(
            deployment=deployment,
            generation=int(manifest["metadata"].get("generation", 1)),
            observed_generation=int(status.get("observedGeneration", 0)),
            desired=replicas_of(manifest),
            replicas=len(pods),
            updated=len(updated),
            ready=sum(1 for p in pods if p.get("ready")),
            available=sum(1 for p in pods if available(p, min_ready, now)),
            revision=revision_of(new) if new is not None else int(status.get("revision", 0)),
            images=images_of(manifest["spec"]["template"]),
        )

    def rollout_history(self, deployment: str) -> list[Revision]:
        self._manifest(deployment)
        pods = [p for p in self.pod_records(deployment) if not p.get("terminating")]
        out = []
        for rs in self.replicasets(deployment):
            mine = [p for p in pods if p.get("replicaset") == rs["metadata"]["name"]]
            tmpl = without_hash(rs["spec"]["template"])
            out.append(Revision(number=revision_of(rs), images=images_of(tmpl),
                                labels=dict((tmpl.get("metadata") or {}).get("labels") or {}),
                                change_cause=rs["metadata"]["annotations"].get(CHANGE_CAUSE, ""),
                                replicas=len(mine), ready=sum(1 for p in mine if p.get("ready"))))
        return out

    def rollout_undo(self, deployment: str, *, to_revision: int | None = None) -> int:
        """kubectl rollout undo (rollback.go): "skipped rollback" (no change, no error) when the revision's template
        is already the Deployment's; returns the revision number rolled back to (the controller then gives its
        ReplicaSet the next number)."""
        manifest = copy.deepcopy(self._manifest(deployment))
        rss = self.replicasets(deployment)
        there = [revision_of(rs) for rs in rss]
        if to_revision:
            if to_revision < 0:
                raise AdapterError(f"unable to find specified revision {to_revision} in history",
                                   env=self.env.name, obj=deployment)
            target = next((rs for rs in rss if revision_of(rs) == to_revision), None)
            if target is None:
                raise AdapterError(f"unable to find specified revision {to_revision} in history of deployment "
                                   f"{deployment}: the revisions there are {there or 'none'}",
                                   env=self.env.name, obj=deployment)
        else:
            if len(rss) < 2:
                raise AdapterError(f'no rollout history found for deployment "{deployment}" (revisions there: '
                                   f"{there or 'none'})", env=self.env.name, obj=deployment)
            target = rss[-2]  # the second-highest revision
        template = without_hash(target["spec"]["template"])
        if template == without_hash(manifest["spec"]["template"]):
            return revision_of(target)  # "skipped rollback (current template already matches revision N)"
        annotations = {k: v for k, v in (manifest["metadata"].get("annotations") or {}).items()
                       if k in SKIP_ANNOTATIONS}
        annotations.update({k: v for k, v in target["metadata"]["annotations"].items() if k not in SKIP_ANNOTATIONS})
        manifest["metadata"]["annotations"] = annotations
        manifest["spec"]["template"] = template
        self.apply_deployment(manifest)
        return revision_of(target)

    def endpoints(self, service: str) -> list[str]:
        from runbook.testbed.kube_services import LocalServices  # written beside this; imported when used
        return list(LocalServices(self.kube).endpoints(service))

    def pods_of(self, deployment: str) -> list[PodInfo]:
        out = []
        for rec in self.pod_records(deployment):
            if rec.get("terminating"):
                continue
            try:
                out.append(self.pod(rec["name"]))
            except AdapterError:  # deleted since listed
                continue
        return out

    def _wait_rolled_out(self, deployment: str, *, timeout: float) -> PodInfo:
        status = wait_for(lambda: self.rollout_status(deployment), lambda s: s.done, timeout=timeout, interval=0.1,
                          what=f"rollout of deployment {deployment}", env=self.env.name, obj=deployment)
        pods = [p for p in self.pods_of(deployment) if p.ready]
        if not pods:  # replicas: 0 is rolled out with no pod
            raise AdapterError(f"deployment {deployment} rolled out ({status.message}) with no ready pod",
                               env=self.env.name, obj=deployment)
        return pods[0]
