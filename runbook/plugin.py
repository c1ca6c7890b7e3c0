"""The pytest plugin: a switchboard. Options, the environment, session fixtures (evidence: runbook.evidence.hooks).

Loaded from the root ``conftest.py``. State lives in ``config.stash``; nothing on private attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from runbook.adapters.factory import Adapters, connect
from runbook.env import Env, load_env
from runbook.errors import ConfigError, RunbookError
from runbook.procedures.planning import CLEANUPS
from runbook.testbed.stack import Testbed, check_ports

log = logging.getLogger("runbook")

ENV_KEY = pytest.StashKey[Env]()
NO_SYSTEM_KEY = pytest.StashKey[dict[str, int]]()  # scenarios deselected per system the env does not have
# a feature's marker -> the env section its system needs
SYSTEMS = {"canary": "canary", "release": "release", "hardfork": "hardfork"}
REFUSED_KEY = pytest.StashKey[list[str]]()  # proof scenarios refused on a non-disposable env


# ------------------------------------------------------------------------------- options
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runbook", "verified runbooks")
    group.addoption("--env", default="local", metavar="NAME|PATH",
                    help="environment: a name under envs/ (local, kind, biscayne) or a path to a YAML file")
    group.addoption("--allow-mutations", action="store_true", default=False,
                    help="run scenarios tagged @mutating (they change the environment)")
    group.addoption("--target-version", default=None, metavar="VERSION",
                    help="version the agave upgrade installs (required on production envs)")
    group.addoption("--cleanup", default="keep", choices=CLEANUPS,
                    help="the agave upgrade's last step: keep (default) the old colour's data and the pre-upgrade "
                         "snapshot, the rollback point, or destroy them (no rollback to the old data afterwards)")
    group.addoption("--confirm-destroy", default=None, metavar="DATASET",
                    help="on a production env, --cleanup=destroy must name the old colour's dataset it destroys")
    group.addoption("--dz-target-version", default=None, metavar="VERSION",
                    help="image tag the dz-upgrade operator scenario patches the running pod's doublezerod sidecar "
                         "to (required on production envs)")
    group.addoption("--yes", action="store_true", default=False,
                    help="confirm mutating scenarios on a production env without a prompt")
    group.addoption("--keep-testbed", action="store_true", default=False,
                    help="leave the local testbed running after the session (for debugging)")


def pytest_configure(config: pytest.Config) -> None:
    # live logs (`-o log_cli=true --log-cli-level=INFO`) show the runbook's progress, not every HTTP request
    for noisy in ("httpx", "httpcore", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        env = load_env(config.getoption("env"))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[ENV_KEY] = env
    if not env.disposable and config.getoption("procedure_override", None):
        raise pytest.UsageError(f"env {env.name} is not disposable: --procedure-override swaps in procedures kept for "
                                "negative tests (seed-upgrade, upgrade-identity-unchecked, upgrade-writes-old-data, "
                                "release-*, hardfork-*), "
                                "which break what they run on; refused")
    if env.production and config.getoption("allow_mutations"):
        versions = ("target_version", "dz_target_version", "canary_version", "release_version", "hardfork_version")
        if not any(config.getoption(v, None) for v in versions):
            raise pytest.UsageError(f"env {env.name} is production: --allow-mutations needs --target-version "
                                    "(agave-upgrade), --dz-target-version (dz-upgrade), --canary-version "
                                    "(canary-promote), --release-version (release) or --hardfork-version "
                                    "(hardfork-upgrade)")
        if not config.getoption("yes"):
            raise pytest.UsageError(f"env {env.name} is production: confirm mutating scenarios with --yes")
    if env.production and config.getoption("cleanup") == "destroy":
        problem = destroy_confirmation_problem(env, config.getoption("confirm_destroy"))
        if problem:
            raise pytest.UsageError(problem)


def destroy_confirmation_problem(env: Env, confirmed: str | None) -> str | None:
    """Why --cleanup=destroy is not confirmed on a production env (None: it is). The confirmation names the
    dataset that goes: the colour live before the upgrade (the procedure checks it against real state)."""
    datasets = [env.deployments.colour(c).data for c in ("green", "blue")]
    if confirmed in datasets:
        return None
    prefix = env.storage.snapshot_prefix
    return (f"env {env.name} is production: --cleanup=destroy destroys, after the upgrade, the old colour's dataset "
            f"(the one live now: {datasets[0]} if green, {datasets[1]} if blue) and this run's pre-upgrade snapshot "
            f"(<dataset>@{prefix}-<target>-<run id>); rolling back to the old data is no longer possible "
            f"afterwards. Confirm with --confirm-destroy=<that dataset>"
            + (f" (given: {confirmed!r}, not a colour's dataset)" if confirmed else ""))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail fast, with one message, when the environment cannot be used at all."""
    config = session.config
    env = config.stash[ENV_KEY]
    if config.getoption("collectonly"):
        return
    if env.kube is not None:
        from runbook.adapters.kube import check_reachable

        try:
            check_reachable(env)
        except RunbookError as exc:
            raise pytest.UsageError(str(exc)) from None
    if env.testbed is None:
        return
    if Testbed(env).running():
        return  # our own testbed already holds the ports (brought up by `runbook testbed up`)
    try:
        check_ports(env)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    env = config.stash[ENV_KEY]
    if not env.disposable:  # proofs never run outside a throwaway env, whatever -k/-m or a node id selects
        refused = [item for item in items if item.get_closest_marker("proof")]
        if refused:
            items[:] = [item for item in items if not item.get_closest_marker("proof")]
            config.hook.pytest_deselected(items=refused)
            config.stash[REFUSED_KEY] = [item.nodeid for item in refused]
    # a system the env does not have (seed 004's canary, seed 003's release): its scenarios are not this env's
    absent_systems = {}
    for marker, section in SYSTEMS.items():
        if getattr(env, section) is None:
            absent = [item for item in items if item.get_closest_marker(marker)]
            if absent:
                items[:] = [item for item in items if not item.get_closest_marker(marker)]
                config.hook.pytest_deselected(items=absent)
                absent_systems[marker] = len(absent)
    config.stash[NO_SYSTEM_KEY] = absent_systems
    allow = config.getoption("allow_mutations") or env.disposable
    for item in items:
        if item.get_closest_marker("mutating") and not allow:
            item.add_marker(pytest.mark.skip(reason=f"mutating scenario: env {env.name} is not disposable; "
                                                    "run with --allow-mutations"))
        if item.get_closest_marker("kubernetes") and env.kube is None:
            item.add_marker(pytest.mark.skip(reason=f"env {env.name} has no Kubernetes API"))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    env = config.stash.get(ENV_KEY, None)
    for marker, n in config.stash.get(NO_SYSTEM_KEY, {}).items():
        section = SYSTEMS[marker]
        terminalreporter.write_sep("-", f"{n} {marker} scenarios deselected: env {env.name if env else '?'} has no "
                                        f"{section} section (runbook.env_{section})")
    refused = config.stash.get(REFUSED_KEY, [])
    if refused:
        env = config.stash[ENV_KEY]
        terminalreporter.write_sep("-", f"{len(refused)} proof scenarios refused: env {env.name} is not disposable")
        for nodeid in refused:
            terminalreporter.write_line(f"refused (proof, runs on disposable envs only): {nodeid}")


def pytest_report_header(config: pytest.Config) -> str:
    env = config.stash[ENV_KEY]
    return f"runbook env: {env.name} ({env.source}){' PRODUCTION' if env.production else ''}"


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def env(pytestconfig: pytest.Config) -> Env:
    return pytestconfig.stash[ENV_KEY]


@pytest.fixture(scope="session")
def testbed(env: Env, pytestconfig: pytest.Config) -> Iterator[Testbed | None]:
    """The local testbed, up for the session (or reused if already up); None on real environments."""
    if env.testbed is None:
        yield None
        return
    tb = Testbed(env)
    if tb.running():
        log.info("reusing the running testbed in %s", tb.state_dir)
        yield tb
        return
    try:
        tb.up(progress=lambda msg: log.info("testbed: %s", msg))
    except BaseException:  # including Ctrl-C during bring-up: leave nothing behind
        tb.down()
        raise
    try:
        yield tb
    finally:
        if not pytestconfig.getoption("keep_testbed"):
            tb.down()


@pytest.fixture(scope="session")
def adapters(env: Env, testbed: Testbed | None) -> Adapters:
    return connect(env, testbed)
