"""`runbook plan release` on local and kind: every object read and written and every API call, in the order a
run makes them, with the colours the --live assumption gives, and nothing run."""

from __future__ import annotations

import pytest

from tests.integration.test_plan_canary import in_order, plan


@pytest.mark.parametrize(("env", "prefix"), [("local", "kubectl (the local kubelet)"),
                                             ("kind", "kubectl --context kind-runbook -n agave")])
def test_the_release_plan_shows_every_call_in_the_order_a_run_makes_them(env: str, prefix: str) -> None:
    ran = plan("release", f"--env={env}", "--target-version=1.3.0", "--live=green")
    assert ran.returncode == 0, ran.stderr
    text = ran.stdout
    assert "active colour green (--live), so the release goes to blue" in text
    in_order(text, [
        f"{prefix} get configmap meta-release -o json",
        f"{prefix} get deployment,configmap,service -l app=meta,colour=green",  # the active colour's snapshot
        f"{prefix} replace configmap meta-release   # phase Deploying, pending blue",
        f"{prefix} create configmap meta-storage-blue", f"{prefix} create configmap meta-schema-blue",
        f"{prefix} create service meta-storage-blue", f"{prefix} create service meta-schema-blue",
        f"{prefix} create deployment meta-storage-blue", "image e6data/storage:1.3.0",
        f"{prefix} create deployment meta-schema-blue", "image e6data/schema:1.3.0",
        "rollback:", f"{prefix} delete deployment,service,configmap meta-storage-blue meta-schema-blue",
        "# 2. await-ready", f"{prefix} get deployment meta-storage-blue meta-schema-blue -o json",
        "restarted 3 times", "ready without a break for", "phase Switching",
        "# 3. switch", f"{prefix} replace configmap demo-common",
        "STORAGE_SERVICE_HOST=meta-storage-blue SCHEMA_SERVICE_HOST=meta-schema-blue",
        "history: 1.3.0 on blue Active", "meta-gateway config",
        "rollback:", f"{prefix} replace configmap demo-common   # back on green's Services",
        "# 4. cleanup", f"{prefix} get deployment,service,configmap meta-storage-green meta-schema-green -o json",
        f"{prefix} delete deployment meta-storage-green meta-schema-green --wait", "phase Stable",
    ])


def test_a_flawed_release_has_no_plan_and_an_env_without_the_section_says_so() -> None:
    flawed = plan("release-early-switch", "--env=local", "--target-version=1.3.0")
    assert flawed.returncode != 0 and "for negative tests only" in flawed.stdout + flawed.stderr
    missing = plan("release", "--env=biscayne", "--target-version=1.3.0")
    assert missing.returncode != 0 and "has no release section" in missing.stdout + missing.stderr
