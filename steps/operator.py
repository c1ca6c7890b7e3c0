"""The operator's procedures as scenarios (tagged @operator): what `runbook run NAME` runs, production
included, with the operator's parameters: --target-version and --cleanup (with --confirm-destroy on
production) for the agave upgrade, --dz-target-version for the DoubleZero sidecar. On a testbed each
scenario leaves the baseline as it found it (the upgrade rolled back, or upgraded back after destroying the
old data; the sidecar patched back); on production the operator's result stays.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest
from pytest_bdd import parsers, then, when

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.baseline import is_testbed
from runbook.evidence.recorder import Recorder
from runbook.procedures import dz_upgrade as dz
from runbook.procedures import journal_for
from runbook.testbed.stack import Testbed
from steps import dz_upgrade as dz_steps
from steps import upgrade as up_steps
from steps.dz_handover import skip_routes_reason


# ------------------------------------------------------------------------------------------- agave upgrade
@when("the agave upgrade runs to the target version, keeping or destroying the old data as the operator chose",
      target_fixture="upgrade")
def run_operator_upgrade(adapters: Adapters, evidence: Recorder, probe: up_steps.ProbeRun,
                         agave_operator_params: dict[str, str], request: pytest.FixtureRequest) -> up_steps.UpgradeRun:
    params = dict(agave_operator_params)
    evidence.call("the operator's parameters", params)
    if params.get("cleanup") == "destroy":
        up_steps._upgrade_back_after(request, adapters, evidence)  # testbeds only: nothing to roll back to
    else:
        up_steps._roll_back_after(request, adapters, evidence)  # testbeds only
    return up_steps._upgrade(adapters, evidence, probe, params, request)


@then(parsers.parse("the old colour's data is untouched, unless the operator chose to destroy it with its "
                    "snapshot"))
def old_data_kept_or_destroyed(adapters: Adapters, upgrade: up_steps.UpgradeRun, data_before: dict[str, Any],
                               evidence: Recorder) -> None:
    if upgrade.ctx.params.get("cleanup") == "destroy":
        evidence.note("--cleanup=destroy: the old colour's data was destroyed as the operator chose")
        up_steps.old_data_gone(adapters, upgrade, evidence)
    else:
        up_steps.data_untouched(adapters, upgrade, data_before, evidence, "old")


# ------------------------------------------------------------------------------------------- dz upgrade
@when("the dz-upgrade procedure runs to the operator's version", target_fixture="dz_run")
def run_operator_dz(adapters: Adapters, testbed: Testbed | None, pod: PodInfo, dz_target_version: str,
                    evidence: Recorder, request: pytest.FixtureRequest) -> dz_steps.DzRun:
    ctx = dz.context(adapters, target_version=dz_target_version, colour=dz.colour_of(adapters.env, pod.deployment),
                     skip_routes_reason=skip_routes_reason(testbed), progress=evidence.note,
                     record=evidence.attach)
    journal = journal_for(adapters.env, dz.NAME)
    if is_testbed(adapters.env):  # on production the upgraded sidecar is the operator's result
        request.addfinalizer(lambda: _restore_sidecar(ctx, journal, evidence))
    result = dz.PROCEDURE.run(ctx, journal=journal)
    evidence.call(f"runbook run {dz.NAME} --target-version={dz_target_version} (journal {journal.path})",
                  [asdict(s) for s in result.steps])
    return dz_steps.DzRun(ctx, journal, result)


def _restore_sidecar(ctx: Any, journal: Any, evidence: Recorder) -> None:
    """Testbed cleanup: the previous sidecar image back in the same pod, verified like the upgrade."""
    if not ctx.facts.old_image or not ctx.facts.pod:
        return  # the run stopped before it knew the pod: nothing was patched
    evidence.note(f"scenario cleanup: patching {ctx.facts.pod}'s sidecar back to {ctx.facts.old_image}")
    state = journal.load()
    if state.get("procedure") == dz.NAME and state.get("status") == "done":
        dz.PROCEDURE.roll_back(ctx, journal)  # the journal says rolled back; the steady state is checked
    else:
        dz.roll_back_patch(ctx)  # a no-op when the sidecar already runs its old image


@then("the sidecar runs the operator's version in the same pod, and agave was not restarted")
def operator_version_in_place(dz_run: dz_steps.DzRun, pod: PodInfo, dz_target_version: str,
                              evidence: Recorder) -> None:
    dz_steps.upgraded_in_place(dz_run, pod, dz_target_version, evidence)
