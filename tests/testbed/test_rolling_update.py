"""RollingUpdate Deployments on the local kubelet, with the testbed's controller (issue 14, seed 004).

Real processes: a scratch supervisord on a free port, the controller under it, the seed's proxy stand-in as
pods bound to their own loopback IPs, probed over HTTP. Run under `flock /tmp/runbook-testbed.lock`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import AdapterError, WaitTimeout
from runbook.testbed.kube_services import LocalServices
from runbook.wait import wait_for
from tests.testbed.test_rolling_update_support import IMAGE, Kube, Monitor, scratch_kube, served_version

pytestmark = [pytest.mark.integration]

TIMEOUT = 60.0


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    with scratch_kube(tmp_path) as k:
        yield k


def test_surge_one_unavailable_zero_never_drops_below_three_ready_and_ends_on_the_new_template(kube: Kube) -> None:
    wl = kube.wl
    wl.apply_deployment(kube.proxy("zai-proxy", "1.0.0"))
    wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    before = {p.name for p in wl.pods_of("zai-proxy")}
    assert len(before) == 3
    LocalServices(wl.kube).apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "zai-proxy"}, "spec": {
        "selector": {"app": "zai-proxy"}, "ports": [{"port": 80, "targetPort": "http"}]}})
    old_endpoints = {f"{p.ip}:{kube.port}" for p in wl.pods_of("zai-proxy")}
    assert set(wl.endpoints("zai-proxy")) == old_endpoints
    with Monitor(wl, "zai-proxy", service="zai-proxy").running() as mon:
        wl.set_template("zai-proxy", images={"proxy": IMAGE.format("1.1.0")}, change_cause="promote 1.1.0")
        pod = wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    assert mon.saw_both(IMAGE.format("1.0.0"), IMAGE.format("1.1.0")), "the monitor never saw the rollout run"
    assert mon.min_ready >= 3, f"ready pods dropped to {mon.min_ready} with maxUnavailable 0"
    assert mon.max_pods <= 4, f"{mon.max_pods} pods at once with maxSurge 1"
    assert min(len(e) for e in mon.endpoints) >= 3, "the Service's ready endpoints dropped below 3"
    status = wl.rollout_status("zai-proxy")
    assert status.done and status.message == 'deployment "zai-proxy" successfully rolled out', status
    assert (status.desired, status.replicas, status.updated, status.available, status.revision) == (3, 3, 3, 3, 2)
    pods = wl.pods_of("zai-proxy")
    assert not before & {p.name for p in pods}, "old pods left"
    assert pod.name in {p.name for p in pods}
    ips = {p.ip for p in pods}
    assert len(ips) == 3 and all(ipaddress.ip_address(ip).is_loopback and ip != "127.0.0.1" for ip in ips)
    for p in pods:
        assert p.ready and p.spec_images == {"proxy": IMAGE.format("1.1.0")}
        assert p.labels["app"] == "zai-proxy" and p.labels["pod-template-hash"]
        assert served_version(p.ip, kube.port) == "1.1.0"  # bound to its own IP through $(POD_IP)
    assert set(wl.endpoints("zai-proxy")) == {f"{p.ip}:{kube.port}" for p in pods} != old_endpoints
    history = wl.rollout_history("zai-proxy")
    assert [(r.number, r.images["proxy"], r.replicas, r.change_cause) for r in history] == [
        (1, IMAGE.format("1.0.0"), 0, ""), (2, IMAGE.format("1.1.0"), 3, "promote 1.1.0")]


def test_surge_zero_unavailable_one_drops_to_two_ready(kube: Kube) -> None:
    """The monitor catches a drop: the same rollout with maxUnavailable 1 goes down to 2 ready, never above 3 pods."""
    wl = kube.wl
    wl.apply_deployment(kube.proxy("zai-proxy", "1.0.0", surge=0, unavailable=1))
    wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    LocalServices(wl.kube).apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "zai-proxy"}, "spec": {
        "selector": {"app": "zai-proxy"}, "ports": [{"port": 80, "targetPort": "http"}]}})
    with Monitor(wl, "zai-proxy", service="zai-proxy").running() as mon:
        wl.set_template("zai-proxy", images={"proxy": IMAGE.format("1.1.0")})
        wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    assert mon.min_ready == 2 and mon.max_pods == 3, (mon.min_ready, mon.max_pods)
    assert min(len(e) for e in mon.endpoints) == 2, "the endpoints' sampling would miss a drop"


def test_a_bad_image_stalls_with_the_old_pods_serving_and_undo_keeps_them(kube: Kube) -> None:
    wl = kube.wl
    wl.apply_deployment(kube.proxy("zai-proxy", "1.0.0"))
    wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    old = {p.name: p.ip for p in wl.pods_of("zai-proxy")}
    wl.set_template("zai-proxy", images={"proxy": IMAGE.format("9.9.9-missing")})

    def new_pods() -> list[str]:
        return [p.containers[0].reason for p in wl.pods_of("zai-proxy") if p.name not in old]

    assert wait_for(new_pods, lambda r: r == ["ImagePullBackOff"], timeout=TIMEOUT, what="the new pod")
    with pytest.raises(WaitTimeout):
        wl.wait_rollout("zai-proxy", timeout=3)
    status = wl.rollout_status("zai-proxy")
    assert not status.done and (status.updated, status.replicas, status.available) == (1, 4, 3), status
    assert status.message == ('Waiting for deployment "zai-proxy" rollout to finish: 1 out of 3 new replicas have '
                              "been updated...")
    assert {p.name for p in wl.pods_of("zai-proxy") if p.ready} == set(old)
    assert {served_version(ip, kube.port) for ip in old.values()} == {"1.0.0"}

    assert wl.rollout_undo("zai-proxy") == 1
    wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    assert {p.name for p in wl.pods_of("zai-proxy")} == set(old), "undo to the old ReplicaSet keeps its pods"
    assert [r.number for r in wl.rollout_history("zai-proxy")] == [2, 3]
    assert wl.rollout_status("zai-proxy").images == {"proxy": IMAGE.format("1.0.0")}


def test_undo_and_undo_to_revision_restore_the_template_and_renumber(kube: Kube) -> None:
    wl = kube.wl
    wl.apply_deployment(kube.proxy("zai-proxy", "1.0.0", replicas=2))
    wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    for v in ("1.1.0", "1.2.0"):
        wl.set_template("zai-proxy", images={"proxy": IMAGE.format(v)}, change_cause=f"to {v}")
        wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    assert [r.number for r in wl.rollout_history("zai-proxy")] == [1, 2, 3]

    assert wl.rollout_undo("zai-proxy", to_revision=1) == 1
    wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    history = {r.number: r.images["proxy"] for r in wl.rollout_history("zai-proxy")}
    assert history == {2: IMAGE.format("1.1.0"), 3: IMAGE.format("1.2.0"), 4: IMAGE.format("1.0.0")}
    assert {served_version(p.ip, kube.port) for p in wl.pods_of("zai-proxy")} == {"1.0.0"}

    with pytest.raises(AdapterError, match=r"unable to find specified revision 1 in history.*\[2, 3, 4\]"):
        wl.rollout_undo("zai-proxy", to_revision=1)

    assert wl.rollout_undo("zai-proxy") == 3  # the previous revision: 1.2.0, with its change-cause
    wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    history_now = wl.rollout_history("zai-proxy")
    assert [(r.number, r.images["proxy"], r.change_cause) for r in history_now] == [
        (2, IMAGE.format("1.1.0"), "to 1.1.0"), (4, IMAGE.format("1.0.0"), ""), (5, IMAGE.format("1.2.0"), "to 1.2.0")]

    generation = wl.rollout_status("zai-proxy").generation
    assert wl.rollout_undo("zai-proxy", to_revision=5) == 5  # kubectl: "skipped rollback", no change, no error
    assert wl.rollout_status("zai-proxy").generation == generation
    assert [r.number for r in wl.rollout_history("zai-proxy")] == [2, 4, 5]


def test_revision_history_limit_prunes_old_replicasets(kube: Kube) -> None:
    wl = kube.wl
    wl.apply_deployment(kube.proxy("zai-proxy", "1.0.0", replicas=1, history=1))
    wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    for v in ("1.1.0", "1.2.0"):
        wl.set_template("zai-proxy", images={"proxy": IMAGE.format(v)})
        wl.wait_rollout("zai-proxy", timeout=TIMEOUT)
    # the controller prunes once the rollout is complete: wait for it (a deadline, not a sleep)
    history = wait_for(lambda: wl.rollout_history("zai-proxy"), lambda h: len(h) == 2, timeout=10,
                       what="revision 1 pruned")
    assert [(r.number, r.images["proxy"]) for r in history] == [(2, IMAGE.format("1.1.0")),
                                                                (3, IMAGE.format("1.2.0"))]
    with pytest.raises(AdapterError, match=r"revisions there are \[2, 3\]"):
        wl.rollout_undo("zai-proxy", to_revision=1)
