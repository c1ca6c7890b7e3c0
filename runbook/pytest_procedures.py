"""pytest plugin for the procedures: their options, the upgrade target, and the testbed baseline that
every mutating scenario starts from and leaves behind."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from runbook.env import Env

log = logging.getLogger("runbook")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runbook")
    group.addoption("--procedure-override", action="append", default=[], metavar="NAME=OTHER",
                    help="run procedure OTHER where a scenario runs NAME (detection tests: "
                         "agave-upgrade=seed-upgrade runs the seed's procedure through our features)")


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


@pytest.fixture(autouse=True)
def _testbed_baseline(request: pytest.FixtureRequest, env: Env) -> Iterator[None]:
    """A mutating scenario on the testbed starts from, and leaves, the baseline (green serving alone)."""
    if env.testbed is None or request.node.get_closest_marker("mutating") is None:
        yield
        return
    tb = request.getfixturevalue("testbed")
    tb.reset_to_baseline(progress=log.info)
    yield
    tb.reset_to_baseline(progress=log.info)
