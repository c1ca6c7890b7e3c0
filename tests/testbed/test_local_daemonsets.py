"""The local kubelet's store lists DaemonSets as its API server would (issue 11), so the required-changes audit
(`runbook.checks.required.no_daemonset`, through the Workloads port's `daemonsets()`) finds a doublezero
DaemonSet when one is there. The kubelet is used on a scratch state directory: the store needs no running
testbed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.base import Workloads
from runbook.checks.core import judge
from runbook.checks.required import no_daemonset
from runbook.env import Env
from runbook.errors import AdapterError, CheckFailed
from runbook.testbed.kubelet import LocalWorkloads
from runbook.testbed.supervisor import Supervisor


def daemonset(name: str) -> dict[str, Any]:
    """The seed's workaround shape: doublezerod as a DaemonSet on the host network."""
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"hostNetwork": True, "containers": [
                                      {"name": "doublezerod", "image": "laconicnetwork/doublezero:v0.6.0"}]}}}}


@pytest.fixture
def kubelet(env: Env, tmp_path: Path) -> LocalWorkloads:
    if env.testbed is None:
        pytest.skip(f"env {env.name} has no local testbed")
    sup = Supervisor(state_dir=tmp_path, port=env.testbed.supervisor_port)  # never started: the store needs none
    return LocalWorkloads(env=env, supervisor=sup, state_dir=tmp_path, netns=None)


def test_the_kubelet_is_a_workloads_port(kubelet: LocalWorkloads) -> None:
    assert isinstance(kubelet, Workloads)


def test_an_applied_daemonset_is_listed_and_a_deleted_one_is_gone(kubelet: LocalWorkloads) -> None:
    assert kubelet.daemonsets() == []
    kubelet.apply_daemonset(daemonset("doublezerod"))
    kubelet.apply_daemonset(daemonset("node-exporter"))
    assert kubelet.daemonsets() == ["doublezerod", "node-exporter"]
    stored = kubelet.daemonset("doublezerod")
    assert stored is not None and stored["spec"]["template"]["spec"]["hostNetwork"] is True
    kubelet.apply_daemonset(daemonset("doublezerod"))  # re-applying replaces, never duplicates
    assert kubelet.daemonsets() == ["doublezerod", "node-exporter"]
    kubelet.delete_daemonset("doublezerod")
    assert kubelet.daemonsets() == ["node-exporter"] and kubelet.daemonset("doublezerod") is None
    kubelet.delete_daemonset("doublezerod")  # converges
    assert kubelet.deployments() == [], "a DaemonSet is not a Deployment"


def test_a_daemonset_is_not_a_deployment_and_an_invalid_one_is_refused(kubelet: LocalWorkloads) -> None:
    with pytest.raises(AdapterError, match="use apply_daemonset"):
        kubelet.apply_deployment(daemonset("doublezerod"))
    broken = daemonset("doublezerod")
    del broken["spec"]["selector"]
    with pytest.raises(AdapterError, match=r"spec.selector: Required value"):
        kubelet.apply_daemonset(broken)
    with pytest.raises(AdapterError, match="takes a DaemonSet"):
        kubelet.apply_daemonset({**daemonset("x"), "kind": "Deployment"})
    assert kubelet.daemonsets() == []


def test_the_required_changes_audit_fails_on_a_doublezero_daemonset(kubelet: LocalWorkloads) -> None:
    kubelet.apply_daemonset(daemonset("node-exporter"))  # another DaemonSet is none of the audit's business
    assert judge(None, no_daemonset(kubelet)).ok
    kubelet.apply_daemonset(daemonset("doublezero-daemon"))
    with pytest.raises(CheckFailed, match="a doublezero DaemonSet remains: doublezero-daemon") as failed:
        judge(None, no_daemonset(kubelet))
    assert "node-exporter" not in str(failed.value)
    kubelet.delete_daemonset("doublezero-daemon")
    assert judge(None, no_daemonset(kubelet)).ok
