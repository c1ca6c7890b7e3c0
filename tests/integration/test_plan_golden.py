"""`runbook plan` on biscayne matches its golden transcripts (tests/golden, reviewed line by line) exactly;
any difference fails with the diff. Regenerate them with `.venv/bin/python -m tests.golden.update`."""

from __future__ import annotations

import pytest

from tests.golden.update import CASES, difference, path, render

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_matches_its_golden_transcript(case: str) -> None:
    assert path(case).is_file(), f"{path(case)} is missing: `.venv/bin/python -m tests.golden.update`"
    diff = difference(case, render(case))
    if diff:
        pytest.fail("`runbook plan` differs from its golden transcript (if intended, regenerate with "
                    f"`.venv/bin/python -m tests.golden.update` and review the diff):\n{diff}", pytrace=False)


def test_one_changed_character_is_a_difference_shown_as_a_diff() -> None:
    """The comparison's negative: a plan that differs by one flag is not equal, and the diff shows the line."""
    golden = path("agave-upgrade").read_text()
    changed = golden.replace("zfs snapshot ", "zfs snapshot -r ", 1)
    diff = difference("agave-upgrade", changed)
    assert changed != golden and diff
    assert [ln for ln in diff.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))] == [
        next("-" + ln for ln in golden.splitlines() if "zfs snapshot " in ln),
        next("+" + ln for ln in changed.splitlines() if "zfs snapshot -r " in ln)]
    assert difference("agave-upgrade", golden) == ""
