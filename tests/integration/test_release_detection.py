"""The release features catch the known ways to get seed 003 wrong (issue 13's detection cases): our procedure
with one flaw each (runbook/procedures/release_flaws.py), run through the scenario that targets it with
``--procedure-override release=<flawed>``, fails that scenario, at the check that names the flaw.

- a switch before the grace period: the operator scenario's "switch came after ... the grace period" (the
  independent watcher's timeline shows the new colour ready for less than the grace when the ConfigMap moved);
- a rollback that deletes the active colour: the bad image scenario's "blue is untouched and still active"
  (and requests are lost through the gateway);
- a failure check whose deadline a crash restarts: the crash loop scenario's "within the ready deadline".

One testbed beside the session's (its own ports, Services' range and DNS address) serves the three runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runbook.env import load_env
from runbook.testbed.stack import Testbed
from tests.integration.envfiles import make_env
from tests.integration.run import pytest as run_pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = [
    ("release-early-switch", "releases_a_new_version",
     r"switch to green after the grace period: switched to green after it had been ready for \d+\.\d+s \(grace 3s\)"),
    ("release-rollback-deletes-active", "cannot_start and missing",
     r"colour blue untouched: .*Deployment/meta-storage-blue: \S+ -> missing"),
    ("release-deadline-resets", "cannot_start and crash",
     r"failed at await-ready for crash loop within 25s, then rolled back: await-ready failed without naming crash "
     r"loop"),
]


def test_each_flawed_release_fails_the_scenario_that_targets_it(tmp_path: Path) -> None:
    env_file = make_env(tmp_path)
    tb = Testbed(load_env(str(env_file)))
    try:
        tb.up()
        ours = run_pytest("features/", f"--env={env_file}", "-k", "cannot_start and crash",
                          reports=tmp_path / "reports-ours", timeout=300)
        assert ours.rc == 0 and "1 passed" in ours.out, ours.out  # the same scenario passes with ours
        for flawed, scenario, caught in CASES:
            ran = run_pytest("features/", f"--env={env_file}", "-k", scenario, "--procedure-override",
                             f"release={flawed}", reports=tmp_path / f"reports-{flawed}", timeout=300)
            assert ran.rc == 1 and "1 failed" in ran.out, f"{flawed}: {ran.out}"
            assert re.search(caught, ran.out), f"{flawed} was not caught by its check: {ran.out}"
    finally:
        tb.down()
    assert tb.leftovers() == []
