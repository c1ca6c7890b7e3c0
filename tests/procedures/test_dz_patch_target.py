"""dz-upgrade's action patches the sidecar image of the running pod, never the Deployment's template (a template
change makes the controller replace the whole pod, agave included: design trap 5). Fast, on baseline_fakes'
workloads, which replace the pod on a template change as Kubernetes does; the whole isolation proof against a
real pod is tests/procedures/test_dz_upgrade.py's (on the testbed)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from runbook.procedures import bluegreen as bg
from runbook.procedures import dz_upgrade as dz
from runbook.procedures.framework import Context
from tests.baseline_fakes import FakeWorkloads, make_adapters
from tests.procedures.facts_helper import dz_facts


def _patch_template(self: FakeWorkloads, deployment: str, container: str, image: str) -> None:
    """As the API server: a template change is a new template, so the controller replaces the pod (the fake's own
    method edits the stored object in place, and its apply then sees no change)."""
    obj = copy.deepcopy(self.objects[deployment])
    spec = obj["spec"]["template"]["spec"]
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        if c["name"] == container:
            c["image"] = image
    self.apply_deployment(obj)


def test_the_patch_goes_to_the_running_pod_not_the_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeWorkloads, "patch_template_container_image", _patch_template)
    a = make_adapters(tmp_path)
    env, sidecar = a.env, a.env.doublezero.sidecar
    deployment = env.deployments.green.name
    (pod,) = a.workloads.pods(deployment)
    old = pod.spec_images[sidecar]
    target = bg.image_with_tag(old, "v0.6.1")
    ctx = Context(adapters=a, params={"target_version": "v0.6.1"}, progress=lambda m: None,
                  facts=dz_facts(colour="green", deployment=deployment, pod=pod.name, old_image=old,
                                 target_image=target, target_version="v0.6.1"))
    step = next(s for s in dz.PROCEDURE.steps if s.name == "patch-sidecar")

    step.action(ctx)

    (after,) = a.workloads.pods(deployment)
    assert after.name == pod.name, f"the pod was replaced ({pod.name} -> {after.name}): agave restarted"
    assert after.spec_images[sidecar] == target
    assert after.template_images[sidecar] == old  # the template untouched (the drift is recorded, not fixed)
