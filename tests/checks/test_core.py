"""The check abstraction itself: a verdict is computed once and recorded as computed; a skip is never a pass."""

from __future__ import annotations

import pytest

from runbook.checks.core import CHECKS, Verdict, check, equal, judge, judge_all, skipped, verdict
from runbook.errors import CheckFailed, PreconditionFailed
from runbook.evidence.recorder import Recorder


def test_equal_fails_on_a_difference() -> None:
    assert equal("x", expected=1, observed=1).ok
    v = equal("x", expected=1, observed=2)
    assert (v.ok, v.status, v.check) == (False, "failed", "core.equal")
    with pytest.raises(CheckFailed, match="x: expected 1, observed 2"):
        judge(None, v)


def test_the_recorder_shows_exactly_the_verdict() -> None:
    rec = Recorder("t")
    rec.begin_step("Then x")
    with pytest.raises(CheckFailed):
        judge(rec, equal("x", expected="ok", observed="behind"))
    data = rec.current.entries[-1].data
    assert data["ok"] is False and data["status"] == "failed" and data["check"] == "core.equal"
    assert data["problems"] == ["expected 'ok', observed 'behind'"]


def test_a_verdict_not_from_a_registered_check_is_refused() -> None:
    with pytest.raises(TypeError, match="did not come from a registered check"):
        judge(None, verdict("made by hand", expected=1, observed=1))
    with pytest.raises(TypeError, match="did not come from a registered check"):
        judge_all(None, [Verdict("by hand", 1, 1)])


def test_a_skipped_check_is_not_a_pass_and_does_not_stop_the_scenario() -> None:
    v = judge(None, skipped_check())
    assert (v.ok, v.status) == (False, "skipped") and "no CAP_NET_ADMIN" in v.message


@check(negative="tests/checks/test_core.py::test_a_skipped_check_is_not_a_pass_and_does_not_stop_the_scenario")
def skipped_check() -> Verdict:
    """A demo check that cannot run here."""
    return skipped("routes", "no CAP_NET_ADMIN here")


def test_judge_all_records_every_row_then_names_every_failure() -> None:
    rec = Recorder("t")
    rec.begin_step("Then rows")
    with pytest.raises(CheckFailed, match=r"a: expected 1, observed 2; c: expected 3, observed 4"):
        judge_all(rec, [equal("a", expected=1, observed=2), equal("b", expected=2, observed=2),
                        equal("c", expected=3, observed=4)])
    assert [e.data["status"] for e in rec.current.entries] == ["failed", "passed", "failed"]
    with pytest.raises(ValueError, match="checks nothing"):
        judge_all(rec, [])


def test_a_precondition_raises_precondition_failed() -> None:
    with pytest.raises(PreconditionFailed):
        equal("x", expected=1, observed=2).require(precondition=True)


def test_a_check_must_return_a_verdict_and_name_a_negative_test() -> None:
    with pytest.raises(ValueError, match="needs a negative test"):
        check(negative=())(lambda: None)  # type: ignore[arg-type,return-value]

    @check(negative="here")
    def bad() -> Verdict:
        return True  # type: ignore[return-value]

    with pytest.raises(TypeError, match="not a Verdict"):
        bad()
    assert "core.equal" in CHECKS


def test_judge_all_puts_the_checks_own_summary_first() -> None:
    with pytest.raises(CheckFailed, match=r"^verdict: FAIL, 1 of 2 lost\na: expected 1, observed 2$"):
        judge_all(None, [equal("a", expected=1, observed=2), equal("b", expected=2, observed=2)],
                  summary="verdict: FAIL, 1 of 2 lost")
