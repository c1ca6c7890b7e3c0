"""Steps shared by every feature: which pod, which colour. Thin: parse, call runbook, record."""

from __future__ import annotations

from pytest_bdd import given

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks.workloads import running_pod
from runbook.evidence.recorder import Recorder


@given("the green deployment's running pod", target_fixture="pod")
def green_pod(adapters: Adapters, evidence: Recorder) -> PodInfo:
    pod = running_pod(adapters.workloads, adapters.env.deployments.green.name)
    evidence.call(f"pods of deployment {pod.deployment}", [
        {"container": c.name, "kind": c.kind, "image": c.image, "state": c.state, "restarts": c.restart_count,
         "startedAt": str(c.started_at)} for c in pod.containers])
    return pod
