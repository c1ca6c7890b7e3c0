"""Must-show 1 of issue 10: biscayne's layout on this machine (envs/biscayne-testbed.yaml: the host through the
testbed's own sshd as a non-root user with sudo, ssh tunnels to the admin API and both RPC ports, the ledger a
zvol-like XFS volume on a loop device in a reflink pool on zram, snapshotted recursively from its parent
dataset, accounts on zram ramdisks, Caddy's upstreams written ``localhost:<port>``, production-shaped green)
runs the agave upgrade's operator scenario and both rollback scenarios with no failed request, and ``down``
leaves nothing behind (mounts, loop and zram devices, sshd, its user and sudoers drop-in).

One env for the module, in a fresh state dir (its own ports, moved as make_env moves local.yaml's): brought up
once, the three scenarios run in one nested pytest, then each test reads its part of that run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from runbook.env import PROJECT_ROOT, load_env, shift_ports
from runbook.testbed import sshd as sshd_mod
from runbook.testbed import zvolpool
from runbook.testbed.stack import Testbed
from tests.integration.run import Ran
from tests.integration.run import pytest as run_pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIOS = {
    "upgrade": "test_the_whole_upgrade_drops_no_request_and_never_serves_a_node_that_is_behind",
    "rollback before cleanup": "test_rolling_back_before_cleanup_leaves_the_live_colour_as_it_was",
    "rollback after cleanup": "test_rolling_back_after_cleanup_brings_the_old_colour_back_on_its_old_data_and_version",
}
VERDICT = re.compile(r"zero-drop verdict: (PASS|FAIL): (\d+) of (\d+) requests lost")


@dataclass
class Run:
    env_file: Path
    testbed: Testbed
    ran: Ran
    evidence: Path

    def outcome(self, test: str) -> str:
        m = re.search(rf"^(PASSED|FAILED|ERROR) \S*::{test}\b", self.ran.out, re.M)
        return m.group(1) if m else "absent"

    def verdicts(self, test: str) -> list[tuple[str, int, int]]:
        files = list(self.evidence.glob(f"*{test}*.json"))
        text = "".join(f.read_text() for f in files)
        return [(v, int(lost), int(total)) for v, lost, total in VERDICT.findall(text)]


def _env_file(state: Path) -> Path:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "biscayne-testbed.yaml").read_text())
    shift = 1900 + 100 * (os.getpid() % 5)  # beside the repository's biscayne-testbed and make_env's shifts
    shift_ports(data, shift)
    data["name"] = f"bt{shift}"
    data["testbed"]["state_dir"] = str(state)
    data["host"] = f"ssh://{sshd_mod.ALIAS}?ssh_config={state / 'sshd' / 'ssh_config'}&sudo=true"
    path = state.parent / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    pool_ok, pool_why = zvolpool.available()
    if (why := sshd_mod.missing() or (None if pool_ok else pool_why)) is not None:
        pytest.skip(why)
    # not under pytest's tmp dirs (0700): the ssh user reads the order file there without sudo, as on biscayne
    base = Path(tempfile.mkdtemp(prefix="rb-biscayne-testbed-"))
    base.chmod(0o755)
    env_file = _env_file(base / "state")
    tb = Testbed(load_env(str(env_file)))
    try:
        tb.up()
        ran = run_pytest("features/", f"--env={env_file}", "-rA", "-k", " or ".join(SCENARIOS.values()),
                         reports=base / "reports", timeout=360)
        yield Run(env_file, tb, ran, base / "reports" / "evidence")
    finally:
        tb.down()
        shutil.rmtree(base, ignore_errors=True)


def test_the_env_is_biscayne_shaped(run: Run) -> None:
    env = run.testbed.env
    assert env.host_target.remote and env.host_target.sudo and env.storage.backend == "zvol"
    assert env.storage.snapshot_root and env.deployments.green.mount and env.deployments.blue.mount
    caddyfile = (run.testbed.state_dir / "Caddyfile").read_text()
    assert f"localhost:{env.deployments.green.rpc_port}" in caddyfile, caddyfile
    names = {d.name for d in run.testbed.storage.datasets()}
    assert {env.storage.snapshot_root, env.deployments.green.data} <= names, names


def test_the_upgrade_loses_no_request(run: Run) -> None:
    verdicts = run.verdicts(SCENARIOS["upgrade"])
    assert verdicts and all(v == "PASS" and lost == 0 and total > 0 for v, lost, total in verdicts), run.ran.out


def test_rolling_back_before_cleanup_passes_with_no_failed_request(run: Run) -> None:
    test = SCENARIOS["rollback before cleanup"]
    assert run.outcome(test) == "PASSED", run.ran.out
    assert run.verdicts(test) and all(lost == 0 for _, lost, _ in run.verdicts(test)), run.ran.out


def test_every_scenario_passes(run: Run) -> None:
    outcomes = {name: run.outcome(test) for name, test in SCENARIOS.items()}
    assert set(outcomes.values()) == {"PASSED"}, (outcomes, run.ran.out[-6000:])
    for test in SCENARIOS.values():
        assert run.verdicts(test) and all(lost == 0 for _, lost, _ in run.verdicts(test)), test


def test_down_leaves_nothing_behind(run: Run) -> None:
    run.testbed.down()
    assert run.testbed.leftovers() == []
    assert not sshd_mod.Sshd(run.testbed.state_dir / "sshd").leftovers()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(run.testbed.state_dir) not in mounts
