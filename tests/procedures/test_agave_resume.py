"""Re-running the agave upgrade after an interruption at any step boundary converges to the same end
state without repeating completed work (must-show 3), against the session's real testbed."""

from __future__ import annotations

import pytest

from runbook.adapters.factory import Adapters
from runbook.procedures import agave_upgrade as up
from runbook.procedures import bluegreen as bg
from runbook.procedures import journal_for
from runbook.procedures.framework import Context, Interrupted

pytestmark = [pytest.mark.mutating, pytest.mark.integration, pytest.mark.slow]

STEPS = [s.name for s in up.PROCEDURE.steps]


def _ctx(adapters: Adapters, notes: list[str]) -> Context:
    return Context(adapters=adapters, params={"target_version": "v2.2.1"}, progress=notes.append)


def test_interrupted_after_every_step_in_turn_resumes_without_repeating_work(adapters: Adapters) -> None:
    """One upgrade interrupted at every step boundary in turn (each resume interrupted after the next step):
    every resumed run skips exactly what completed and acts on the next step only, and the last one converges
    to the state of an uninterrupted run. (One upgrade instead of one per boundary: each costs a full
    upgrade and a baseline reset on the testbed.)"""
    journal = journal_for(adapters.env, up.PROCEDURE.name)
    journal.clear()
    name = up.PROCEDURE.name
    for i, boundary in enumerate(STEPS[:-1]):
        notes: list[str] = []
        with pytest.raises(Interrupted):
            up.PROCEDURE.run(_ctx(adapters, notes), journal=journal, interrupt_after=boundary)
        assert journal.load()["completed"] == STEPS[: i + 1]
        assert [n for n in notes if n.endswith(": already done")] == [f"[{name}] {s}: already done" for s in STEPS[:i]]
        acted = [s.name for n in notes for s in up.PROCEDURE.steps if n == f"[{name}] {s.name}: {s.summary}"]
        assert acted == [boundary], (boundary, notes)  # the framework announces each step it acts on

    result = up.PROCEDURE.run(_ctx(adapters, []), journal=journal)  # a new run: facts come from the journal
    assert result.ok, result
    assert [s.status for s in result.steps] == ["skipped (already done)"] * (len(STEPS) - 1) + ["done"]
    # the same end state as an uninterrupted run
    env = adapters.env
    assert bg.served_by(env) == "blue"
    assert adapters.ingress.upstream_order() == [bg.upstream_address(env, "blue"), bg.upstream_address(env, "green")]
    assert not adapters.workloads.pods(env.deployments.green.name)
    st = bg.observe_node(env, "blue")
    assert (st.health, st.version) == ("ok", "2.2.1")


def test_resume_with_other_parameters_is_refused(adapters: Adapters) -> None:
    journal = journal_for(adapters.env, up.PROCEDURE.name)
    journal.clear()
    with pytest.raises(Interrupted):
        up.PROCEDURE.run(_ctx(adapters, []), journal=journal, interrupt_after="snapshot")
    other = Context(adapters=adapters, params={"target_version": "v2.3.0"})
    with pytest.raises(Exception, match="unfinished agave-upgrade run with other parameters"):
        up.PROCEDURE.run(other, journal=journal)
