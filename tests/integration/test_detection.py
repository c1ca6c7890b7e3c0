"""The suite's detection power: the same features fail when the trap is present.

Each test runs `pytest features/` in a subprocess against its own testbed (ports moved, state in
tmp_path), with one thing broken the way production could be broken.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.env import load_env
from runbook.testbed.stack import Testbed
from tests.integration.envfiles import make_env
from tests.integration.run import pytest as run_pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OTHER_KEY = "3Bw6v7EruQvTwoY79h2QjQCs2KBQFzSneBdYUbcXK1Tr"  # biscayne's key: right format, wrong testbed


def test_seed_caddy_and_wrong_identity_fail_with_named_settings_and_both_keys(tmp_path: Path) -> None:
    env_file = make_env(
        tmp_path,
        ingress__template="deploy/caddy/seed.Caddyfile.tmpl",
        doublezero__expected_identity=OTHER_KEY,
    )
    ran = run_pytest("features/", f"--env={env_file}", "-q", "-m", "not mutating", reports=tmp_path / "reports")
    assert ran.rc == 1, ran.out
    # Caddy audit: the seed's block misses each of these, and the failure names them.
    for setting in ("health_body", "fail_duration/max_fails", "lb_try_duration", "lb_retry_match",
                    "request_buffers", "header_down X-Upstream", "order_switch"):
        assert setting in ran.out, f"{setting} not named in:\n{ran.out}"
    # DZ identity: both keys are shown.
    assert "DkNx7RQDpQiL7tqoZsCfwgBUYsywKuuwehJXFjSgQS9N" in ran.out
    assert OTHER_KEY in ran.out
    # five audit requirements fail (the seed does list both upstreams under lb_policy first; it has one
    # reverse_proxy, so reordering it is a reload) + DZ identity; the required-changes audit passes (the
    # seed's Caddy block is audited by the Caddy feature)
    assert "6 failed, 2 passed" in ran.out
    assert Testbed(load_env(str(env_file))).leftovers() == []


def test_our_config_passes_on_a_second_testbed(tmp_path: Path) -> None:
    """The control for the test above: same harness, nothing broken, everything passes."""
    env_file = make_env(tmp_path)
    ran = run_pytest("features/", f"--env={env_file}", "-q", "-m", "not mutating", reports=tmp_path / "reports")
    assert ran.rc == 0, ran.out
    assert "8 passed" in ran.out
    assert Testbed(load_env(str(env_file))).leftovers() == []
