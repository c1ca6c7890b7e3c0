"""`runbook plan` for every procedure on biscayne, kind and local (must-show 5): it runs without error and
without reaching anything, shows each step's action and the rollback's commands, and every runbook option it
names exists. The seed's procedure is refused clearly: it exists for negative tests only."""

from __future__ import annotations

import re

import pytest

from tests.integration.run import cli
from tests.integration.run import pytest as run_pytest

pytestmark = pytest.mark.integration

ENVS = ("biscayne", "kind", "local")
PLANS = {"agave-upgrade": ["--target-version=v2.2.1"], "agave-rollback": ["--target-version=v2.2.1"],
         "dz-upgrade": ["--target-version=v0.6.1"]}
ROLLED_BACK = {"agave-upgrade": {"snapshot", "clone", "copy-accounts", "deploy-idle", "shift", "cleanup"},
               "agave-rollback": set(), "dz-upgrade": {"patch-sidecar"}}


def _steps(text: str) -> dict[str, str]:
    """Step name -> its block of the plan."""
    blocks = re.split(r"\n(?=# \d+\. )", text)
    return {re.match(r"# \d+\. ([\w-]+):", b).group(1): b for b in blocks[1:]}  # type: ignore[union-attr]


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("proc", sorted(PLANS))
def test_plan_runs_for_every_procedure_and_shows_actions_and_rollbacks(proc: str, env: str) -> None:
    ran = cli("plan", proc, f"--env={env}", *PLANS[proc])
    assert ran.rc == 0 and not ran.traceback, ran.out
    assert "Nothing was run: this plan read no state and contacted nothing" in ran.out
    steps = _steps(ran.out)
    assert steps, ran.out
    for name, block in steps.items():
        assert "\n  do:\n" in block, (name, block)
        has_rollback_commands = re.search(r"\n  rollback:\n    [^#]", block) is not None
        assert has_rollback_commands == (name in ROLLED_BACK[proc]), (name, block)


# flags of the tools a plan shows (kubectl, agave-validator), not options of the runbook
TOOL_FLAGS = {"--context", "--field-selector", "--rpc-port", "--gossip-port", "--dynamic-port-range", "--cascade",
              "--wait", "--timeout", "--type"}


def _runbook_options() -> set[str]:
    text = cli("plan", "--help").out + cli("run", "--help").out + cli("rollback", "--help").out
    text += run_pytest("--help", reports=__import__("pathlib").Path("/tmp")).out
    return set(re.findall(r"--[a-z][a-z-]+", text))


def test_every_runbook_option_a_plan_names_exists() -> None:
    known = _runbook_options()
    named: set[str] = set()
    for proc, args in PLANS.items():
        for extra in ([], ["--cleanup=destroy"]) if proc == "agave-upgrade" else ([],):
            out = cli("plan", proc, "--env=biscayne", *args, *extra).out
            header = out[:out.index("\n# 1. ")]
            comments = [ln.split("   # ", 1)[1] for ln in out.splitlines() if "   # " in ln] + \
                [ln for ln in out.splitlines() if ln.strip().startswith("#")]
            named |= set(re.findall(r"--[a-z][a-z-]+", "\n".join([header, *comments])))
    assert {"--cleanup", "--confirm-destroy", "--live", "--target-version"} <= named, named
    assert named - TOOL_FLAGS <= known, named - TOOL_FLAGS - known


def test_the_seeds_procedure_is_refused_clearly() -> None:
    ran = cli("plan", "seed-upgrade", "--env=biscayne", "--target-version=v2.2.1")
    assert ran.rc == 2 and not ran.traceback
    assert "seed-upgrade is not planned" in ran.out and "negative tests only" in ran.out.replace("\n", " ")
