"""Required-changes audit steps -> runbook.checks.required."""

from __future__ import annotations

from pytest_bdd import then

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks import required
from runbook.checks.core import judge
from runbook.evidence.recorder import Recorder


@then("doublezerod runs as a native sidecar of the pod")
def native_sidecar(adapters: Adapters, pod: PodInfo, evidence: Recorder) -> None:
    judge(evidence, required.native_sidecar(pod, adapters.env.doublezero.sidecar))


@then("green and blue are rendered from one parameterized spec")
def parameterized(adapters: Adapters, evidence: Recorder) -> None:
    judge(evidence, required.parameterized(adapters.env))


@then("no doublezero DaemonSet is running or shipped")
def no_daemonset(adapters: Adapters, evidence: Recorder) -> None:
    judge(evidence, required.no_daemonset(adapters.workloads))


@then("the DoubleZero identity file is in the sidecar's config volume, private")
def identity_file(adapters: Adapters, pod: PodInfo, evidence: Recorder) -> None:
    judge(evidence, required.identity_file(adapters.workloads, pod.name, adapters.env.doublezero.sidecar))
