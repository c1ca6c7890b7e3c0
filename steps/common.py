"""Steps shared by every feature: which pod, which colour. Thin: parse, call runbook, record."""

from __future__ import annotations

import logging
from typing import Any

from pytest_bdd import given

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks.workloads import running_pod
from runbook.errors import CheckFailed
from runbook.evidence.recorder import Recorder
from runbook.procedures import bluegreen as bg

log = logging.getLogger("runbook.progress")


def report_to(evidence: Recorder, probe: Any = None) -> dict[str, Any]:
    """Where a procedure run from a step reports (a Context's progress, record, mark and verdicts): progress to
    the log and the evidence, calls and verdicts to the evidence, timeline events to the prober when one runs."""
    def progress(msg: str) -> None:
        log.info(msg)
        evidence.note(msg)

    def mark(name: str, detail: str) -> None:
        if probe is not None:
            probe.prober.event(name, detail)

    return {"progress": progress, "record": evidence.call, "mark": mark, "verdicts": evidence.verdict}


@given("the green deployment's running pod", target_fixture="pod")
def green_pod(adapters: Adapters, evidence: Recorder) -> PodInfo:
    return _running(adapters, evidence, adapters.env.deployments.green.name)


@given("the live colour's running pod", target_fixture="pod")
def live_pod(adapters: Adapters, evidence: Recorder) -> PodInfo:
    """The pod serving the ingress, whichever colour it is (from real state: after an upgrade, blue)."""
    live, how = bg.live_colour(adapters.env, adapters.workloads, adapters=adapters)
    if live is None:
        raise CheckFailed(f"cannot tell which colour is live: {how}", obj=adapters.env.ingress.url)
    evidence.call(f"the live colour: {live} ({how})")
    return _running(adapters, evidence, adapters.env.deployments.colour(live).name)


def _running(adapters: Adapters, evidence: Recorder, deployment: str) -> PodInfo:
    pod = running_pod(adapters.workloads, deployment)
    evidence.call(f"pods of deployment {pod.deployment}", [
        {"container": c.name, "kind": c.kind, "image": c.image, "state": c.state, "restarts": c.restart_count,
         "startedAt": str(c.started_at)} for c in pod.containers])
    return pod
