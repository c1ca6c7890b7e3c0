"""`runbook plan canary-promote` / `canary-undo` on local and kind: every object, query and API call, in the
order a run makes them, and nothing run (the commands are the CLI's, as a user types them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUNBOOK = str(Path(sys.executable).parent / "runbook")


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNBOOK, "plan", *args], capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)


def in_order(text: str, needles: list[str]) -> None:
    """Each needle is found after the one before it, in the steps (after the header)."""
    at = text.index("\n# 1. ")
    for n in needles:
        found = text.find(n, at)
        assert found >= 0, f"{n!r} not found after position {at} (in order) in the plan:\n{text}"
        at = found + len(n)


@pytest.mark.parametrize("env", ["local", "kind"])
def test_the_promotion_plan_shows_every_call_in_the_order_a_run_makes_them(env: str) -> None:
    ran = plan("canary-promote", f"--env={env}")
    assert ran.returncode == 0, ran.stderr
    text = ran.stdout
    needles = [
        "get deployment zai-proxy-test -o json", "rollout history deployment/zai-proxy",
        'query_range?query=zai_proxy_requests_total{variant="canary"}', "/api/v1/alerts",
        'zai_proxy_tokens_total{variant="canary"}', "rollout status deployment/zai-proxy-test",
        "POST http://127.0.0.1:18181/v1/chat/completions", "status --porcelain",
        'zai_proxy_request_duration_seconds_bucket{variant="production",app_version="1.2.0"}',
        "patch deployment zai-proxy --type=strategic",
        'zai_proxy_requests_total{variant="production",app_version="1.3.0"}',
        'zai_proxy_tokens_total{variant="production",app_version="1.3.0"}',
        "rollout undo deployment/zai-proxy --to-revision=$REVISION",
        "status image ronaldraygun/zai-proxy:1.3.0, label version=1.3.0",
        "commit -m 'chore: release zai-proxy v1.3.0'", "tag -a v1.3.0",
    ]
    in_order(text, needles)
    assert "Nothing was run" in text


def test_the_operators_release_must_be_the_canarys() -> None:
    ran = plan("canary-promote", "--env=local", "--target-version=1.3.0")
    assert ran.returncode == 0, ran.stderr
    assert "target release 1.3.0" in ran.stdout


def test_an_env_without_a_canary_has_no_promotion_plan() -> None:
    ran = plan("canary-promote", "--env=biscayne")
    assert ran.returncode != 0
    assert "has no canary section" in ran.stderr


@pytest.mark.parametrize("env", ["local", "kind"])
def test_the_rollback_to_a_revision_plan_names_it(env: str) -> None:
    ran = plan("canary-undo", f"--env={env}", "--to-revision=2")
    assert ran.returncode == 0, ran.stderr
    in_order(ran.stdout, ["rollout history deployment/zai-proxy", "rollout undo deployment/zai-proxy --to-revision=2",
                          "rollout status deployment/zai-proxy", "--to-revision=$CURRENT"])
    missing = plan("canary-undo", f"--env={env}")
    assert missing.returncode != 0 and "--to-revision" in missing.stderr
