"""`runbook plan hardfork-upgrade` on local and kind: every object read and written and every API call, in the order
a run makes them (the seed's four tasks, the switch before the teardown), with the --live assumption, and nothing
run."""

from __future__ import annotations

import pytest

from tests.integration.test_plan_canary import in_order, plan


@pytest.mark.parametrize(("env", "prefix"), [("local", "kubectl (the local kubelet)"),
                                             ("kind", "kubectl --context kind-runbook -n agave")])
def test_the_hardfork_plan_shows_every_call_in_the_order_a_run_makes_them(env: str, prefix: str) -> None:
    ran = plan("hardfork-upgrade", f"--env={env}", "--target-version=v6.4.0", "--live=r1")
    assert ran.returncode == 0, ran.stderr
    text = ran.stdout
    assert "incumbent revision r1 (--live), 2 replicas; H is the chain's upgrade plan at run time" in text
    in_order(text, [
        "# 1. create-entrants",
        f"{prefix} get service sei-rpc -o json", f"{prefix} get statefulset sei-rpc-r1 -o json",
        "GET http://127.0.0.1:18267/cosmos/upgrade/v1beta1/current_plan", "GET http://127.0.0.1:18267/status",
        f"{prefix} create pvc data-sei-rpc-v6-4-0-0", f"{prefix} create pvc data-sei-rpc-v6-4-0-1",
        f"{prefix} create job sei-rpc-v6-4-0-0-bootstrap", "--halt-height H-1", "backoffLimit 0",
        f"{prefix} create job sei-rpc-v6-4-0-1-bootstrap",
        "rollback:", f"{prefix} delete statefulset sei-rpc-v6-4-0 --wait",
        f"{prefix} delete pvc data-sei-rpc-v6-4-0-0 data-sei-rpc-v6-4-0-1 --wait",
        "# 2. await-running", "the first time it is >= H starts the deadline",
        "ImagePullBackOff", f"{prefix} delete job sei-rpc-v6-4-0-0-bootstrap sei-rpc-v6-4-0-1-bootstrap",
        f"{prefix} create statefulset sei-rpc-v6-4-0", "image sei:v6.4.0", "seid query upgrade applied",
        "# 3. switch-traffic", f"{prefix} replace service sei-rpc   # spec.selector sei.io/revision=v6-4-0",
        "rollback:", f"{prefix} replace service sei-rpc   # spec.selector sei.io/revision=r1",
        "# 4. teardown", f"{prefix} delete statefulset sei-rpc-r1 --wait", "its claims are kept",
    ])


def test_a_flawed_hardfork_has_no_plan_and_an_env_without_the_section_says_so() -> None:
    flawed = plan("hardfork-seed-order", "--env=local", "--target-version=v6.4.0")
    assert flawed.returncode != 0 and "for negative tests only" in flawed.stdout + flawed.stderr
    missing = plan("hardfork-upgrade", "--env=biscayne", "--target-version=v6.4.0")
    assert missing.returncode != 0 and "has no hardfork section" in missing.stdout + missing.stderr
