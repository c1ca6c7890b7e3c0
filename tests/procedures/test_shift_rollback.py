"""A failure after the shift is rolled back by the shift's own rollback: the old colour is re-created from the
object saved before the upgrade, rolled out, and answers ok again (a shift without a rollback would leave
the old colour stopped and the new one, just failed, serving alone).

The framework's real run with rollback="auto" over the upgrade's real shift step (its action stops green) and
a step after it that fails; workloads and storage are baseline_fakes' (a copy backend in a tmp dir), the
colours' health is faked from the pods that run (no validator here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import CheckFailed
from runbook.procedures import agave_upgrade as up
from runbook.procedures import bluegreen as bg
from runbook.procedures import derive
from runbook.procedures.framework import Context, Journal, Step
from tests.baseline_fakes import FakeWorkloads, make_adapters
from tests.procedures.facts_helper import upgrade_facts


def _fail(ctx: Context) -> None:
    raise CheckFailed("the step after the shift failed (injected)")


def test_a_failure_after_the_shift_restarts_the_old_colour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_adapters(tmp_path)
    wl = a.workloads
    assert isinstance(wl, FakeWorkloads)
    green = a.env.deployments.green.name
    monkeypatch.setattr(bg, "observe_colour", lambda env, colour, **kw: bg.NodeState(
        colour, "ok" if a.workloads.pods(env.deployments.colour(colour).name) else "down", None, None, None))
    live = wl.deployment(green)
    assert live is not None
    saved: dict[str, Any] = derive.restorable(live)
    ctx = Context(adapters=a, params={"target_version": "v2.2.1"}, progress=lambda m: None,
                  facts=upgrade_facts(live="green", idle="blue", live_object=saved))
    shift = next(s for s in up.PROCEDURE.steps if s.name == "shift")
    # the shift as it is, without its ingress checks (no Caddy here): its action stops green for real
    shift = dataclasses.replace(shift, precondition=None, verify=lambda c: None, is_done=lambda c: False)
    proc = dataclasses.replace(up.PROCEDURE, prepare=lambda c: None, steady_state=lambda c: None,
                               steps=(shift, Step("after-shift", "fails", _fail, lambda c: None)))

    result = proc.run(ctx, journal=Journal(tmp_path / "journal.json"), rollback="auto")

    assert not result.ok and result.rolled_back, result
    assert ("delete", green) in wl.calls  # the shift acted
    pods = wl.pods(green)
    assert len(pods) == 1 and pods[0].spec_images == pods[0].template_images, pods
    assert wl.objects[green]["spec"] == saved["spec"]  # re-created verbatim from the saved object
