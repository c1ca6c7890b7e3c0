"""The colours' Deployments -> runbook.checks.derived (blue derived from green's live object, restored exactly)."""

from __future__ import annotations

from pytest_bdd import then

from runbook.adapters.factory import Adapters
from runbook.checks.derived import restore_differences, unexpected_differences
from runbook.errors import CheckFailed
from runbook.evidence.recorder import Recorder
from runbook.procedures.derive import CHANGED
from steps.upgrade import UpgradeRun


@then("the new colour's Deployment is the old colour's live object except for what blue-green changes")
def idle_derived_from_live(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    env = adapters.env
    name = env.deployments.colour(upgrade.facts["idle"]).name
    idle = adapters.workloads.deployment(name)
    other = (unexpected_differences(upgrade.facts["live_object"], idle, sidecar=env.doublezero.sidecar)
             if idle is not None else ["(missing)"])
    ok = evidence.compare(f"{name} against the saved {env.deployments.colour(upgrade.facts['live']).name}",
                          expected={"differences allowed": list(CHANGED), "other differences": []},
                          observed={"other differences": other}, ok=not other)
    if not ok:
        raise CheckFailed(f"{name} differs from the live object it was derived from beyond what blue-green changes",
                          observed=other)


@then("the old colour's Deployment is the object saved before the upgrade, exactly")
def live_object_restored(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    name = adapters.env.deployments.colour(upgrade.facts["live"]).name
    diff = restore_differences(upgrade.facts["live_object"], adapters.workloads.deployment(name))
    ok = evidence.compare(f"{name} against the object saved before the upgrade", expected={"differences": []},
                          observed={"differences": diff}, ok=not diff)
    if not ok:
        raise CheckFailed(f"{name} is not the object saved before the upgrade", observed=diff)
