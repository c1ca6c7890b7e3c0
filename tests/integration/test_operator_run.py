"""`runbook run NAME` runs exactly that procedure's operator scenario (never its feature's proofs) with the
operator's parameters, and says so before it runs; --cleanup=destroy on production needs its own
confirmation, naming the dataset it destroys. Collection only on biscayne: nothing is reachable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runbook import operator_run as op
from runbook.env import load_env
from runbook.errors import ConfigError, PreconditionFailed
from runbook.procedures import agave_upgrade as up
from runbook.procedures.framework import Context
from tests.integration.run import cli
from tests.integration.run import pytest as run_pytest
from tests.integration.test_proofs_refused import OPERATOR_DZ, OPERATOR_UPGRADE
from tests.procedures.facts_helper import upgrade_facts

pytestmark = pytest.mark.integration

OPERATOR_SCENARIO = {"agave-upgrade": OPERATOR_UPGRADE, "dz-upgrade": OPERATOR_DZ}
OLD = "biscayne/DATA/volumes/solana"  # green's dataset on biscayne


def _collected(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if ln.startswith("features/test_features.py::")]


@pytest.mark.parametrize(("procedure", "version"), [("agave-upgrade", "v2.2.1"), ("dz-upgrade", "v0.6.2")])
def test_runs_selection_on_biscayne_is_exactly_the_operator_scenario(procedure: str, version: str,
                                                                     tmp_path: Path) -> None:
    argv = op.pytest_argv("biscayne", op.RunRequest(procedure, version, yes=True))
    assert argv[1:3] == ["-m", "pytest"]
    ran = run_pytest(*argv[3:], "--collect-only", "-q", reports=tmp_path)
    assert ran.rc == 0, ran.out
    assert _collected(ran.out) == [OPERATOR_SCENARIO[procedure]], ran.out
    if procedure == "dz-upgrade":
        assert f"--dz-target-version={version}" in argv and not any(a.startswith("--target-version") for a in argv)
    else:
        assert f"--target-version={version}" in argv and "--cleanup=keep" in argv


def test_the_operator_scenario_is_named_and_the_others_are_not_run() -> None:
    assert op.operator_scenario("agave-upgrade") == ("The whole upgrade drops no request and never serves a node "
                                                     "that is behind")
    assert op.operator_scenario("dz-upgrade").startswith("The operator moves the live pod's DoubleZero sidecar")
    for name in ("agave-rollback", "seed-upgrade", "nope"):
        with pytest.raises(ConfigError):
            op.operator_scenario(name)


def test_run_says_what_it_will_run_before_refusing_without_confirmation() -> None:
    ran = cli("run", "dz-upgrade", "--env=biscayne", "--target-version=v0.6.2")
    assert ran.rc == 2 and not ran.traceback, ran.out
    assert "runs the scenario \"The operator moves the live pod's DoubleZero sidecar" in ran.out
    assert "target_version: v0.6.2" in ran.out and "confirm" in ran.out and "--yes" in ran.out
    missing = cli("run", "dz-upgrade", "--env=biscayne", "--yes")
    assert missing.rc == 2 and "needs an explicit --target-version" in missing.out, missing.out


def test_cleanup_destroy_is_refused_on_production_without_its_own_confirmation(tmp_path: Path) -> None:
    base = ["run", "agave-upgrade", "--env=biscayne", "--target-version=v2.2.1", "--yes", "--cleanup=destroy"]
    ran = cli(*base)  # --yes confirms the run, not the destruction; no terminal to ask on
    assert ran.rc == 2 and not ran.traceback, ran.out
    text = ran.out.replace("\n", " ")
    assert "--confirm-destroy=" in text and OLD in text and "no longer possible" in text, ran.out
    wrong = cli(*base, "--confirm-destroy=biscayne/DATA/volumes/other")
    assert wrong.rc == 2 and "not a colour's dataset" in wrong.out.replace("\n", " "), wrong.out
    suite = run_pytest("features/", "--env=biscayne", "--allow-mutations", "--target-version=v2.2.1", "--yes",
                       "--cleanup=destroy", "--collect-only", "-q", reports=tmp_path)
    assert suite.rc == 4 and "--confirm-destroy=" in suite.out and not suite.traceback, suite.out
    confirmed = run_pytest("features/", "--env=biscayne", "--allow-mutations", "--target-version=v2.2.1", "--yes",
                           "--cleanup=destroy", f"--confirm-destroy={OLD}", "--collect-only", "-q",
                           reports=tmp_path / "ok")
    assert confirmed.rc == 0 and OPERATOR_UPGRADE in _collected(confirmed.out), confirmed.out


def _ctx(params: dict[str, Any], live: str = "green") -> Context:
    env = load_env("biscayne")
    return Context(adapters=type("A", (), {"env": env})(), params=params,
                   facts=upgrade_facts(live=live, idle="blue" if live == "green" else "green",
                                       snapshot="pre-upgrade-x"))


def test_the_procedure_checks_the_confirmed_dataset_against_the_live_colour() -> None:
    """Before anything changes: the confirmation must name the dataset of the colour found live."""
    up.require_destroy_confirmed(_ctx({"target_version": "v2.2.1"}))  # keep: nothing to confirm
    up.require_destroy_confirmed(_ctx({"target_version": "v2.2.1", "cleanup": "destroy", "confirm_destroy": OLD}))
    with pytest.raises(PreconditionFailed, match=r"--confirm-destroy=biscayne/DATA/volumes/solana-blue"):
        up.require_destroy_confirmed(_ctx({"target_version": "v2.2.1", "cleanup": "destroy",
                                           "confirm_destroy": OLD}, live="blue"))
    with pytest.raises(PreconditionFailed, match="given: nothing"):
        up.require_destroy_confirmed(_ctx({"target_version": "v2.2.1", "cleanup": "destroy"}))
