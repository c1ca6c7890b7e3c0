"""pytest plugin for the procedures: their options, the upgrade target, and the testbed baseline that
every mutating scenario starts from and leaves (:mod:`runbook.baseline`, on the local testbed and on kind)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from runbook import baseline as bl
from runbook.baseline import Baseline
from runbook.checks import left_behind
from runbook.env import Env
from runbook.evidence.recorder import Recorder

log = logging.getLogger("runbook")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runbook")
    group.addoption("--procedure-override", action="append", default=[], metavar="NAME=OTHER",
                    help="run procedure OTHER where a scenario runs NAME (detection tests: "
                         "agave-upgrade=seed-upgrade runs the seed's procedure through our features)")
    group.addoption("--release-version", default=None, metavar="VERSION",
                    help="the version the release operator scenario releases (image tags of storage and schema; "
                         "required on a production env)")
    group.addoption("--hardfork-version", default=None, metavar="VERSION",
                    help="the new binary's image tag the hardfork-upgrade operator scenario upgrades the Sei node set "
                         "to (required on a production env)")
    group.addoption("--canary-version", default=None, metavar="RELEASE",
                    help="the release the canary-promote operator scenario promotes: the canary's tag must be it plus "
                         "the canary suffix (required on a production env)")


@pytest.hookimpl(trylast=True)  # after the evidence plugin has set up its session
def pytest_configure(config: pytest.Config) -> None:
    from runbook.evidence.collectors import COLLECTORS
    from runbook.evidence.hooks import register_diagnostics

    for name, collector in COLLECTORS.items():
        register_diagnostics(config, collector, name=name)


@pytest.fixture(scope="session")
def target_version(pytestconfig: pytest.Config, env: Env) -> str:
    """--target-version, else the env's default target (disposable envs only)."""
    version = pytestconfig.getoption("target_version") or (env.target_version if env.disposable else None)
    if not version:
        pytest.skip(f"env {env.name}: this scenario needs --target-version")
    return str(version)


@pytest.fixture(scope="session")
def agave_operator_params(pytestconfig: pytest.Config, target_version: str) -> dict[str, str]:
    """The agave upgrade's parameters as the operator gave them: --target-version, and --cleanup=destroy with
    its --confirm-destroy (the procedure checks the dataset against the colour it finds live)."""
    params = {"target_version": target_version}
    if pytestconfig.getoption("cleanup") == "destroy":
        params["cleanup"] = "destroy"
        if pytestconfig.getoption("confirm_destroy"):
            params["confirm_destroy"] = str(pytestconfig.getoption("confirm_destroy"))
    return params


@pytest.fixture(scope="session")
def dz_target_version(pytestconfig: pytest.Config, env: Env) -> str:
    """--dz-target-version, else the env's default DoubleZero target (disposable envs only)."""
    version = pytestconfig.getoption("dz_target_version") or (env.doublezero.target_version if env.disposable
                                                               else None)
    if not version:
        pytest.skip(f"env {env.name}: the dz-upgrade scenario needs --dz-target-version (an image tag)")
    return str(version)


@pytest.fixture(scope="session")
def baseline(env: Env, request: pytest.FixtureRequest) -> Baseline | None:
    """The baseline of a testbed (local or kind), read from the live environment when the session's first
    mutating test starts, before anything changed it. None elsewhere: on a real env the state an operator's
    procedure leaves is the new production, never something to undo."""
    if not bl.is_testbed(env):
        return None
    testbed = request.getfixturevalue("testbed")
    captured = bl.capture(request.getfixturevalue("adapters"),
                          extras=testbed.baseline_extras() if testbed is not None else None)
    log.info("baseline captured: %s", captured.describe())
    return captured


def _is_scenario(item: pytest.Item) -> bool:
    return "_pytest_bdd_example" in getattr(item, "fixturenames", ())


@pytest.fixture(autouse=True)
def _testbed_baseline(request: pytest.FixtureRequest, env: Env) -> Iterator[None]:
    """A mutating test on a testbed starts from, and leaves, the baseline (green serving alone).

    Before: whatever an earlier test left is repaired and recorded (lenient). After: the reset returns what
    it had to fix; for a scenario that list fails it, in teardown, with the list in the message and in the
    evidence. A plain mutating test (not a scenario) is only reset, and the fixes recorded."""
    if request.node.get_closest_marker("mutating") is None or not bl.is_testbed(env):
        yield
        return
    captured: Baseline = request.getfixturevalue("baseline")
    adapters = request.getfixturevalue("adapters")
    testbed = request.getfixturevalue("testbed")
    evidence: Recorder = request.getfixturevalue("evidence")
    extras = testbed.baseline_extras() if testbed is not None else None
    before = bl.restore(adapters, captured, extras=extras, progress=log.info)
    if before:
        evidence.note("baseline reset before the test repaired what an earlier one left: " + "; ".join(before))
    yield
    after = bl.restore(adapters, captured, extras=extras, progress=log.info)
    verdict = left_behind.left_nothing(after, scenario=request.node.name, strict=_is_scenario(request.node))
    evidence.verdict(verdict)
    if verdict.problems:
        bl.check_left_nothing(after, env=env.name, scenario=request.node.name)
