"""The never-catching-up build as kind gets it: built by ``runbook.testbed.kind``'s own code path (the plain
v2.2.1 image with the local testbed's variant arguments appended to its entrypoint), then run as blue's
validator would run it on the node (the manifest's args, the node's network, the cluster stand-in as its
entrypoint). It must behave as on the local testbed: it runs, answers /health, reports version 2.2.1, and is
never `ok` (the scenario's catch-up deadline passes, not an image pull).

Named to sort before test_smoke.py: it runs while port 8897 is free and removes what it started.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from runbook.errors import WaitTimeout
from runbook.manifests import render_deployment
from runbook.procedures.bluegreen import image_with_tag
from runbook.testbed import kind
from runbook.testbed.pod_argv import PodPlan
from runbook.wait import wait_for
from tests.container.conftest import Stack, provision_identities

pytestmark = pytest.mark.container


def test_the_stuck_image_kind_builds_runs_and_never_catches_up(stack: Stack, cluster_pod: PodPlan,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                figures: dict[str, str]) -> None:
    env = stack.env
    for key, value in stack.engine.cli_env().items():  # kind.py's `docker` calls reach this private engine
        monkeypatch.setenv(key, value)
    builds = kind.image_builds(env)
    stuck = next(b for b in builds if b.target == "agave-stuck")
    start = time.monotonic()
    kind._build_variant(env, stuck, [b for b in builds if b.target == "agave" and b.version == stuck.version])
    figures["build agave-stuck 2.2.1"] = f"{time.monotonic() - start:.1f}s ({', '.join(stuck.tags)}, on v2.2.1)"
    entrypoint = json.loads(stack.engine.docker("image", "inspect", "-f", "{{json .Config.Entrypoint}}",
                                                stuck.tags[0]).stdout)
    assert entrypoint[-2:] == ["--fail", "never-healthy"]

    image = image_with_tag(env.deployments.green.image or "", "v2.2.1-stuck")  # what the scenario deploys
    assert image in stuck.tags
    for path in ("/srv/solana-blue/ledger", "/srv/solana-blue/snapshots", env.deployments.blue.accounts):
        stack.host(path).mkdir(parents=True, exist_ok=True)
    provision_identities(stack)
    plan = stack.plan(render_deployment(env, "blue", image=image))
    blue = stack.start(dataclasses.replace(plan, init=()))  # the validator alone: no second doublezerod
    try:
        port = env.deployments.blue.rpc_port
        seen: list[str] = []

        def observe() -> dict[str, object]:
            answer = stack.rpc(port)
            seen.append(str(answer.get("health")))
            return answer

        first = wait_for(observe, lambda a: a.get("health") in ("behind", "unknown", "ok"), timeout=60.0,
                         interval=0.5, what=f"blue's /health on 127.0.0.1:{port} to answer")
        assert first["solana_core"] == "2.2.1"
        with pytest.raises(WaitTimeout):  # a deadline longer than the scenario's 12 s catch-up deadline passes
            wait_for(observe, lambda a: a.get("health") == "ok", timeout=15.0, interval=0.5,
                     what="the stuck build to answer ok")
        assert "ok" not in seen, f"the stuck build answered ok: {seen}"
        assert stack.pods.state(blue.container("agave-validator").name).running
        figures["agave-stuck"] = f"ran {len(seen)} /health answers, none ok: {sorted(set(seen))}"
    finally:
        stack.kill(blue)
