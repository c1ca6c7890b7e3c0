"""Workload checks shared by features and procedures."""

from __future__ import annotations

from runbook.adapters.base import PodInfo, Workloads
from runbook.errors import CheckFailed


def running_pod(workloads: Workloads, deployment: str) -> PodInfo:
    """The one running pod of a Deployment (biscayne's colours run one replica each)."""
    pods = workloads.pods(deployment)
    running = [p for p in pods if all(c.state == "running" for c in p.containers)]
    if len(running) != 1:
        states = {p.name: [(c.name, c.state, c.reason) for c in p.containers] for p in pods}
        raise CheckFailed(f"deployment {deployment} should have exactly one running pod",
                          expected=1, observed=states, obj=deployment)
    return running[0]
