"""The DoubleZero handover check (design trap 10) on the session's testbed, against real daemons.

Blue's pod is green's live object with the colour changed and agave replaced by an idle container (a
second agave beside green would trip trap 9 and the RPC port, which is not what is tested here); its
doublezerod sidecar is green's, on the same id.json in the same network namespace:
- with the deployment's lock, blue's sidecar waits while green's daemon runs: the check passes, and the
  waiting wrapper shell is not counted as a daemon;
- with a bare ``doublezerod`` (no lock), blue's daemon starts beside green's, green's BGP session is reset
  (a flap): the check fails naming the second daemon and the flap.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from runbook.adapters.factory import Adapters
from runbook.checks import dz_handover as ho
from runbook.checks.doublezero import sidecar_status
from runbook.checks.workloads import running_pod
from runbook.errors import CheckFailed, RunbookError
from runbook.testbed.stack import Testbed
from runbook.wait import wait_for
from steps.dz_handover import sampler_for

pytestmark = pytest.mark.integration


def blue_beside_green(adapters: Adapters, *, bare_sidecar: bool) -> dict[str, Any]:
    """Green's live Deployment as blue: the doublezerod sidecar kept (``bare_sidecar``: its command replaced
    by ``doublezerod``, i.e. without the identity's lock), agave replaced by an idle shell that exits on SIGTERM."""
    env = adapters.env
    live = adapters.workloads.deployment(env.deployments.green.name)
    assert live is not None, "green's Deployment must be live"
    tmpl = copy.deepcopy(live["spec"]["template"])

    def recolour(labels: dict[str, str]) -> dict[str, str]:
        return {k: ("blue" if v == "green" else v) for k, v in labels.items()}

    spec = tmpl["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == env.doublezero.sidecar)
    if bare_sidecar:
        sidecar["command"] = ["doublezerod"]
    spec["initContainers"] = [sidecar]
    # idle until told to stop: a bare `sleep` as the container's PID 1 ignores SIGTERM and holds the pod's
    # deletion for the whole grace period (the testbed's 15 s kill, the manifest's 120 s on kind)
    spec["containers"] = [{"name": "idle", "image": sidecar["image"],
                           "command": ["/bin/sh", "-c", "sleep infinity & trap 'kill $!; exit 143' TERM INT; wait $!"]}]
    used = {m["name"] for m in sidecar.get("volumeMounts", [])}
    spec["volumes"] = [v for v in spec.get("volumes", []) if v["name"] in used]
    tmpl["metadata"]["labels"] = recolour(tmpl["metadata"].get("labels", {}))
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": env.deployments.blue.name, "labels": recolour(live["metadata"].get("labels", {}))},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": recolour(live["spec"]["selector"]["matchLabels"])}, "template": tmpl}}


@pytest.fixture
def green_holds(adapters: Adapters) -> Iterator[str]:
    """Green's sidecar holds the session, no blue exists; at teardown blue is gone and green holds again."""
    env = adapters.env
    assert adapters.workloads.deployment(env.deployments.blue.name) is None, "blue must not exist before this test"
    pod = running_pod(adapters.workloads, env.deployments.green.name).name

    def up() -> bool:
        try:
            return sidecar_status(adapters.workloads, pod, env.doublezero.sidecar).session == ho.SESSION_UP
        except RunbookError:  # a failing exec is "not yet"
            return False

    wait_for(up, bool, timeout=30, what="green's DoubleZero session to be up")
    try:
        yield pod
    finally:
        adapters.workloads.delete_deployment(env.deployments.blue.name, wait=True)
        wait_for(lambda: adapters.workloads.pods(env.deployments.blue.name), lambda p: not p, timeout=60,
                 what="blue's pod to be gone")
        wait_for(up, bool, timeout=30, what="green's DoubleZero session to be up again")


def _run_with_blue(adapters: Adapters, testbed: Testbed | None, *, bare_sidecar: bool) -> ho.Verdict:
    sampler = sampler_for(adapters, testbed).start()
    try:
        wait_for(lambda: len(sampler.samples), lambda n: n >= 3, timeout=30, what="samples of green alone")
        adapters.workloads.apply_deployment(blue_beside_green(adapters, bare_sidecar=bare_sidecar))
        blue_name = adapters.env.deployments.blue.name

        def blue_seen() -> int:  # samples since blue's sidecar was first seen running (answering or not)
            snap = list(sampler.samples)
            first = next((i for i, s in enumerate(snap) if any(v.colour == "blue" and not v.error.startswith(
                f"{adapters.env.doublezero.sidecar} is") for v in s.sidecars)), None)
            return 0 if first is None else len(snap) - first

        if bare_sidecar:  # until the trap shows: a second daemon, or green's session reset
            wait_for(lambda: ho.verdict(list(sampler.samples), new_colour="green"),
                     lambda v: any("second doublezerod" in p or "flap" in p for p in v.problems),
                     timeout=60, interval=0.5, what="the second doublezerod or green's flap to show in the samples")
        else:  # blue's sidecar running (its shell waiting on the lock) through 15 samples
            wait_for(blue_seen, lambda n: n >= 15, timeout=60, interval=0.2,
                     what=f"{blue_name}'s sidecar in 15 samples")
    finally:
        samples = sampler.stop()
    return ho.verdict(samples, new_colour="green", skip_routes_reason=sampler.skip_routes_reason)


def test_blue_waiting_on_the_lock_passes(adapters: Adapters, testbed: Testbed | None, green_holds: str) -> None:
    v = _run_with_blue(adapters, testbed, bare_sidecar=False)
    assert v.ok, v.problems
    assert v.observed["max daemons at once"] == 1
    assert v.observed["session holders in order"] == [green_holds]
    if not str(v.observed["routes"]).startswith("not checked"):
        assert v.observed["routes"]["first sample"], "doublezero0's routes must be read"


def test_two_doublezerods_at_once_fail_the_check(adapters: Adapters, testbed: Testbed | None,
                                                 green_holds: str) -> None:
    v = _run_with_blue(adapters, testbed, bare_sidecar=True)
    assert not v.ok
    text = "; ".join(v.problems)
    flap = f"flap) while its holder kept running: {green_holds}"
    assert "a second doublezerod with the same identity" in text or flap in text, text
    with pytest.raises(CheckFailed, match=r"DoubleZero handover: .*(second doublezerod|flap)"):
        v.require()
