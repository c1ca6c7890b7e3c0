"""Required-changes audit steps -> runbook.checks.required."""

from __future__ import annotations

from pytest_bdd import then

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks import required
from runbook.evidence.recorder import Recorder


@then("doublezerod runs as a native sidecar of the pod")
def native_sidecar(adapters: Adapters, pod: PodInfo, evidence: Recorder) -> None:
    c = pod.container(adapters.env.doublezero.sidecar)
    evidence.compare(f"{c.name} container kind and state", expected={"kind": "sidecar", "state": "running"},
                     observed={"kind": c.kind, "state": c.state}, ok=c.kind == "sidecar" and c.state == "running")
    required.check_native_sidecar(pod, adapters.env.doublezero.sidecar)


@then("green and blue are rendered from one parameterized spec")
def parameterized(adapters: Adapters, evidence: Recorder) -> None:
    diffs = required.check_parameterized(adapters.env)
    evidence.call("fields where green and blue differ", diffs)


@then("no doublezero DaemonSet is running or shipped")
def no_daemonset(adapters: Adapters, evidence: Recorder) -> None:
    evidence.call("daemonsets in the namespace", adapters.workloads.daemonsets())
    required.check_no_daemonset(adapters.workloads)


@then("the DoubleZero identity file is in the sidecar's config volume, private")
def identity_file(adapters: Adapters, pod: PodInfo, evidence: Recorder) -> None:
    mode = required.check_identity_file(adapters.workloads, pod.name, adapters.env.doublezero.sidecar)
    evidence.compare("id.json present, mode", expected="600", observed=mode, ok=True)
