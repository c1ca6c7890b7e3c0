"""The Deployment controller's rollout rules, for the mock API server (:mod:`tests.kube.fake_cluster`).

As kube-controller-manager's ``pkg/controller/deployment`` does it, where the runbook depends on it:

- revisions: a new ReplicaSet gets ``deployment.kubernetes.io/revision`` = the highest old revision + 1, and
  a ReplicaSet that becomes the new one again (a rollback: the template equals its template) is renumbered
  the same way, so its old number leaves the history; the Deployment carries its new ReplicaSet's revision;
- the Deployment's annotations (``kubernetes.io/change-cause`` among them) are copied onto its new
  ReplicaSet, except the controller's own;
- ``RollingUpdate``: the new ReplicaSet is scaled up to at most ``replicas + maxSurge`` pods in all, the
  old ones down while at least ``replicas - maxUnavailable`` pods stay available (unhealthy old pods
  first), percentages rounded as the controller rounds them (surge up, unavailable down);
- history: once a rollout is complete, old ReplicaSets with no pods beyond ``revisionHistoryLimit`` are
  deleted, lowest revision first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]

REVISION = "deployment.kubernetes.io/revision"


def status(dep: Obj, pods: list[Obj], template_hash: str, hash_label: str) -> Obj:
    """The Deployment's status from the live (not terminating) pods of its ReplicaSets: counts, the
    Available condition; ``observedGeneration`` as the controller last set it."""
    updated = [p for p in pods if p["metadata"]["labels"].get(hash_label) == template_hash]
    ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                    for c in p["status"].get("conditions") or [])]
    desired = dep["spec"].get("replicas", 1)
    out: Obj = {"observedGeneration": dep.get("status", {}).get("observedGeneration")}
    counts = {"replicas": len(pods), "updatedReplicas": len(updated), "readyReplicas": len(ready),
              "availableReplicas": len(ready), "unavailableReplicas": max(0, desired - len(ready))}
    out.update({k: v for k, v in counts.items() if v})
    out["conditions"] = [{"type": "Available", "status": "True" if len(ready) >= desired else "False",
                          "reason": "MinimumReplicasAvailable" if len(ready) >= desired
                          else "MinimumReplicasUnavailable"}]
    return {k: v for k, v in out.items() if v is not None}
NOT_COPIED = frozenset({  # deploymentutil.skipCopyAnnotation
    "kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas", "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to"})


def revision(rs: Obj) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def scaled(value: Any, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int, or a percentage of ``total``."""
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def surge_and_unavailable(spec: Obj) -> tuple[int, int]:
    """deploymentutil.ResolveFenceposts: (maxSurge, maxUnavailable); both 0 is read as maxUnavailable 1."""
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    desired = int(spec.get("replicas", 1))
    surge = scaled(rolling.get("maxSurge", "25%"), desired, round_up=True)
    unavailable = scaled(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def annotate_new(dep: Obj, new: Obj, olds: list[Obj]) -> bool:
    """SetNewReplicaSetAnnotations: the Deployment's annotations copied, the revision raised to the highest
    old one + 1 when it is not above it already. True when the ReplicaSet changed."""
    want = max((revision(rs) for rs in olds), default=0) + 1
    annotations = new["metadata"].setdefault("annotations", {})
    before = dict(annotations)
    for k, v in (dep["metadata"].get("annotations") or {}).items():
        if k not in NOT_COPIED:
            annotations[k] = v
    if revision(new) < want:
        annotations[REVISION] = str(want)
    return annotations != before


def roll(spec: Obj, new: Obj, olds: list[Obj], available: Callable[[Obj], int]) -> None:
    """One reconcile of a RollingUpdate: reconcileNewReplicaSet then reconcileOldReplicaSets, on the
    ReplicaSets' ``spec.replicas`` (``available``: a ReplicaSet's available pods)."""
    desired = int(spec.get("replicas", 1))
    surge, max_unavailable = surge_and_unavailable(spec)

    def total() -> int:
        return sum(int(rs["spec"].get("replicas", 0)) for rs in [new, *olds])

    current = int(new["spec"].get("replicas", 0))
    if current > desired:
        new["spec"]["replicas"] = desired
    elif current < desired:
        room = desired + surge - total()
        new["spec"]["replicas"] = min(desired, current + max(0, room))
    min_available = desired - max_unavailable
    new_unavailable = int(new["spec"]["replicas"]) - available(new)
    room = total() - min_available - new_unavailable
    if room <= 0:
        return
    olds = sorted(olds, key=lambda rs: rs["metadata"]["creationTimestamp"])
    for rs in olds:  # cleanupUnhealthyReplicas
        unhealthy = int(rs["spec"].get("replicas", 0)) - available(rs)
        cut = min(room, max(0, unhealthy))
        rs["spec"]["replicas"] -= cut
        room -= cut
    excess = sum(available(rs) for rs in [new, *olds]) - min_available
    for rs in olds:  # scaleDownOldReplicaSetsForRollingUpdate
        if excess <= 0:
            break
        cut = min(int(rs["spec"].get("replicas", 0)), excess)
        rs["spec"]["replicas"] -= cut
        excess -= cut


def beyond_history(spec: Obj, olds: list[Obj], has_pods: Callable[[Obj], bool]) -> list[Obj]:
    """cleanupDeployment: the old ReplicaSets to delete (no replicas, no pods, over revisionHistoryLimit)."""
    limit = int(spec.get("revisionHistoryLimit", 10))
    idle = sorted((rs for rs in olds if not rs["spec"].get("replicas") and not has_pods(rs)
                   and not rs["metadata"].get("deletionTimestamp")), key=revision)
    return idle[:max(0, len(idle) - limit)]
