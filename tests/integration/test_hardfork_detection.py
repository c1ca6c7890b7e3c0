"""The hard-fork features catch the known ways to get seeds 001/002 wrong (issue 12's detection cases): the
earlier designs (runbook/procedures/hardfork_flaws.py), run through the operator scenario with
``--procedure-override hardfork-upgrade=<flawed>``, fail it at the check that names the flaw.

- the seed's ordering (the selector flips when the plan completes, after the teardown): "the Service was never
  without a ready endpoint" (the independent watcher saw it empty between the teardown and the switch);
- the 6-task plan's SubmitHaltSignal (SIGTERM to the incumbents once the entrants exist): "the incumbents were
  untouched until the teardown" (their containers restarted).

One testbed beside the session's (its own ports, Services' range and DNS address) serves the runs.
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
    ("hardfork-seed-order", r"service sei-rpc never without endpoints: \d+ of \d+ samples with no ready endpoint"),
    ("hardfork-halt-signal", r"incumbents untouched: .*sei-rpc-r1-\d/seid restarted \(0 -> 1 restarts"),
]


def test_each_earlier_design_fails_the_operator_scenario_at_its_check(tmp_path: Path) -> None:
    env_file = make_env(tmp_path)
    tb = Testbed(load_env(str(env_file)))
    try:
        tb.up()
        for flawed, caught in CASES:
            ran = run_pytest("features/", f"--env={env_file}", "-k", "upgrades_the_node_set", "--procedure-override",
                             f"hardfork-upgrade={flawed}", reports=tmp_path / f"reports-{flawed}", timeout=300)
            assert ran.rc == 1 and "1 failed" in ran.out, f"{flawed}: {ran.out}"
            assert re.search(caught, ran.out), f"{flawed} was not caught by its check: {ran.out}"
    finally:
        tb.down()
    assert tb.leftovers() == []
