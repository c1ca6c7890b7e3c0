"""A scenario leaves the testbed as it found it: what the baseline reset after it had to fix is the verdict."""

from __future__ import annotations

from collections.abc import Sequence

from runbook.checks.core import Verdict, check, verdict


@check(negative="tests/test_baseline.py::test_a_scenario_that_leaves_state_fails_in_teardown")
def left_nothing(fixed: Sequence[str], *, scenario: str, strict: bool) -> Verdict:
    """Nothing left behind: the baseline reset after the test had nothing to fix. A scenario (``strict``) fails
    on anything; a plain mutating test is only reset, and what was fixed is shown."""
    problems = [f"the scenario left state behind; the baseline reset had to: {'; '.join(fixed)}"] if (
        fixed and strict) else []
    return verdict("left behind (what the baseline reset after the test had to fix)", expected=[],
                   observed=list(fixed), problems=problems, obj=scenario)
