"""Catch-up against a rate-limited public reference, and a wrong version caught as soon as it answers, on
the local testbed (issue 9, "Must show" 4).

- The session testbed's cluster stand-in answers 429 above ``testbed.cluster_rate_limit`` (4/s) per client
  address; the upgrade finishes, and its evidence says how many reference calls it made per minute.
- With a stricter reference listed first (another cluster stand-in limiting to one request every 4 s), the
  catch-up is answered 429, backs off for the Retry-After, fails over to the testbed's reference, and the
  upgrade still finishes.
- A blue whose image reports another release than the target (a mislabelled build) fails the catch-up step
  at once, not at its deadline.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from runbook.adapters.factory import Adapters, connect
from runbook.env import PROJECT_ROOT, load_env
from runbook.procedures import agave_upgrade as up
from runbook.procedures import journal_for
from runbook.procedures.framework import Context, RunResult
from runbook.testbed import chain
from runbook.testbed.stack import Testbed
from runbook.wait import wait_for
from tests.integration.envfiles import make_env

pytestmark = [pytest.mark.mutating, pytest.mark.integration, pytest.mark.slow]

REFERENCE_CALLS = "reference RPC calls while blue caught up"


def _upgrade(adapters: Adapters, target: str = "v2.2.1") -> tuple[RunResult, dict[str, Any], list[str]]:
    records: dict[str, Any] = {}
    notes: list[str] = []
    ctx = Context(adapters=adapters, params={"target_version": target}, progress=notes.append,
                  record=records.__setitem__)
    journal = journal_for(adapters.env, up.PROCEDURE.name)
    journal.clear()
    return up.PROCEDURE.run(ctx, journal=journal), records, notes


def _answers_429(url: str) -> bool:
    with httpx.Client(timeout=5.0) as c:
        return 429 in [c.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "getSlot"}).status_code
                       for _ in range(10)]


def test_the_upgrade_finishes_against_a_reference_limiting_to_a_few_requests_a_second(adapters: Adapters) -> None:
    env = adapters.env
    assert env.testbed is not None and env.testbed.cluster_rate_limit == 4.0
    reference = env.cluster_rpc[0]
    assert _answers_429(reference), "the testbed's reference does not rate-limit"
    result, records, notes = _upgrade(adapters)
    assert result.ok, result
    calls = records[REFERENCE_CALLS]
    # the figure in the evidence: one call per reference_poll (2 s) at most, far under the limit
    assert calls["references"] == [reference] and calls["poll (s)"] == env.reference_poll == 2.0
    assert 2 <= calls["calls"] <= calls["seconds"] / env.reference_poll + 1, calls
    assert calls["most calls in one second"] == 1 and calls["most calls in one minute"] <= 60 / env.reference_poll
    assert calls["calls per minute"] > 0
    print(f"reference calls while blue caught up: {calls}")
    assert any("reference: " in n and "/min" in n for n in notes), "progress does not show the reference calls"
    assert _answers_429(reference), "the reference stopped limiting during the run"


@pytest.fixture
def strict_reference(env: Any, tmp_path: Path) -> Iterator[str]:
    """Another cluster stand-in (the same chain) limiting to one request every 4 s, on the runner's loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = chain.ChainParams.from_testbed(env.testbed)
    log = (tmp_path / "strict.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "runbook.testbed.cluster", "--port", str(port), "--rate-limit",
                             "0.25"], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **params.to_env()})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/health", timeout=1.0).text, lambda t: t == "ok", timeout=15,
                 interval=0.2, tolerate=(httpx.HTTPError,), what="the strict reference to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_a_limited_reference_is_backed_off_and_failed_over(adapters: Adapters, strict_reference: str) -> None:
    env = adapters.env.model_copy(update={"cluster_rpc": [strict_reference, *adapters.env.cluster_rpc]})
    result, records, _ = _upgrade(dataclasses.replace(adapters, env=env))
    assert result.ok, result
    calls = records[REFERENCE_CALLS]
    strict, testbed = (calls["per reference"][u] for u in env.cluster_rpc)
    assert strict["429s"] >= 1, calls  # it was limited...
    assert testbed["answers"] >= 1, calls  # ...the other reference answered in its place
    assert strict["calls"] <= calls["seconds"] / env.reference_poll + 1, calls  # never asked more than once a poll
    print(f"reference calls while blue caught up, strict reference first: {calls}")


def test_a_wrong_version_fails_the_catch_up_at_once(tmp_path: Path) -> None:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    images = dict(data["testbed"]["images"])
    # a build tagged v2.2.1 that runs 2.1.0 (the old release): what a mislabelled push deploys
    images["laconicnetwork/agave:v{version}-mislabelled"] = [
        "{python}", "-m", "runbook.testbed.validator", "--version", "2.1.0", "--startup-delay", "{startup_delay}"]
    env = load_env(str(make_env(tmp_path, testbed__images=images, timeouts__catch_up="60s")))
    tb = Testbed(env)
    try:
        tb.up()
        started = time.monotonic()
        result, _, _ = _upgrade(connect(env, tb), target="v2.2.1-mislabelled")
        took = time.monotonic() - started
        catch_up = result.outcome("catch-up")
        print(f"wrong version: catch-up {catch_up.status} after {catch_up.seconds:.2f}s (deadline 60s); whole run "
              f"{took:.1f}s: {catch_up.error}")
        assert not result.ok and result.rolled_back and catch_up.status == "failed", result
        assert "answers getVersion solana-core 2.1.0, not 2.2.1" in catch_up.error, catch_up.error
        assert catch_up.seconds < 10, f"caught after {catch_up.seconds:.1f}s of a 60 s deadline"
    finally:
        tb.down()
