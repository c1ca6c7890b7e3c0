"""The colours' Deployments -> runbook.checks.derived (blue derived from green's live object, restored exactly)."""

from __future__ import annotations

from pytest_bdd import then

from runbook.adapters.factory import Adapters
from runbook.checks.core import judge
from runbook.checks.derived import derived_from_live, restored_exactly
from runbook.evidence.recorder import Recorder
from steps.upgrade import UpgradeRun


@then("the new colour's Deployment is the old colour's live object except for what blue-green changes")
def idle_derived_from_live(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    env, f = adapters.env, upgrade.facts
    name = env.deployments.colour(f.idle).name
    judge(evidence, derived_from_live(f.saved_live_object(), adapters.workloads.deployment(name), name=name,
                                      live_name=env.deployments.colour(f.live).name, sidecar=env.doublezero.sidecar))


@then("the old colour's Deployment is the object saved before the upgrade, exactly")
def live_object_restored(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    name = adapters.env.deployments.colour(upgrade.facts.live).name
    judge(evidence, restored_exactly(upgrade.facts.saved_live_object(), adapters.workloads.deployment(name), name=name))
