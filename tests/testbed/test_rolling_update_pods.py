"""The controller's kubelet side for ReplicaSet pods: readiness probes and graceful deletion (preStop, SIGTERM,
SIGKILL after the grace period). Real processes under a scratch supervisord: run under
`flock /tmp/runbook-testbed.lock`.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import WaitTimeout
from runbook.testbed.kubelet import _program
from runbook.wait import wait_for
from tests.testbed.test_rolling_update_support import Kube, recorder_deployment, scratch_kube

pytestmark = [pytest.mark.integration]

TIMEOUT = 60.0


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    with scratch_kube(tmp_path) as k:
        yield k


def _record(kube: Kube, deployment: str) -> dict[str, Any]:
    recs = kube.wl.pod_records(deployment)
    assert len(recs) == 1, recs
    return recs[0]


def _running(kube: Kube, pod: str, container: str) -> bool:
    info = kube.sup.info(_program(pod, container))
    return info is not None and info.running


def test_a_readiness_probe_delays_ready_and_a_failing_one_keeps_the_pod_unready(kube: Kube) -> None:
    wl = kube.wl
    probe = {"httpGet": {"path": "/health", "port": "http"}, "initialDelaySeconds": 3, "periodSeconds": 1}
    wl.apply_deployment(kube.proxy("slow", "1.0.0", replicas=1, probe=probe))
    rec = wait_for(lambda: wl.pod_records("slow"), lambda r: len(r) == 1 and _running(kube, r[0]["name"], "proxy"),
                   timeout=TIMEOUT, what="the container running")[0]
    assert not wl.pod(rec["name"]).ready, "ready before its probe passed"
    wl.wait_rollout("slow", timeout=TIMEOUT)
    rec = _record(kube, "slow")
    info = kube.sup.info(_program(rec["name"], "proxy"))
    assert info is not None
    assert rec["ready_since"] - info.start >= 2, "ready before initialDelaySeconds (supervisord's start is in seconds)"
    assert rec["probes"] == {"proxy": "probe succeeded"}

    bad = copy.deepcopy(probe) | {"initialDelaySeconds": 0}
    bad["httpGet"]["path"] = "/nope"
    wl.apply_deployment(kube.proxy("unready", "1.0.0", replicas=1, probe=bad))
    rec = wait_for(lambda: wl.pod_records("unready"), lambda r: len(r) == 1 and "404" in str(r[0].get("probes")),
                   timeout=TIMEOUT, what="a failed probe recorded")[0]
    with pytest.raises(WaitTimeout):
        wl.wait_rollout("unready", timeout=3)
    assert _running(kube, rec["name"], "proxy"), "the process runs: only its probe keeps it unready"
    assert not wl.pod(rec["name"]).ready and wl.rollout_status("unready").available == 0


def test_pre_stop_exec_runs_before_sigterm(kube: Kube, tmp_path: Path) -> None:
    wl = kube.wl
    hooked, plain = tmp_path / "hooked", tmp_path / "plain"
    hook = {"exec": {"command": ["/bin/sh", "-c", f"echo PRESTOP >> {hooked}"]}}
    manifests = [recorder_deployment("hooked", "example/term-recorder:1.0.0", hooked, pre_stop=hook),
                 recorder_deployment("plain", "example/term-recorder:1.0.0", plain)]
    for m in manifests:
        wl.apply_deployment(m)
        wl.wait_rollout(m["metadata"]["name"], timeout=TIMEOUT)
    for m in manifests:  # scaled to 0: the ReplicaSet's pod is deleted gracefully
        m["spec"]["replicas"] = 0
        wl.apply_deployment(m)
    for name in ("hooked", "plain"):
        wait_for(functools.partial(wl.pod_records, name), lambda r: not r, timeout=TIMEOUT, what=f"{name} deleted")
    assert hooked.read_text().split() == ["PRESTOP", "TERM"]
    assert plain.read_text().split() == ["TERM"], "without a hook, SIGTERM alone (the recorder records it)"


def test_pre_stop_sleep_holds_sigterm_while_the_pod_is_out_of_the_endpoints(kube: Kube, tmp_path: Path) -> None:
    wl = kube.wl
    record = tmp_path / "record"
    m = recorder_deployment("sleepy", "example/term-recorder:1.0.0", record, pre_stop={"sleep": {"seconds": 2}})
    wl.apply_deployment(m)
    pod = wl.wait_rollout("sleepy", timeout=TIMEOUT)
    m["spec"]["replicas"] = 0
    wl.apply_deployment(m)
    rec = wait_for(lambda: wl._read("pods", pod.name), lambda r: r is not None and r.get("terminating"),
                   timeout=TIMEOUT, what="pod terminating")
    assert rec is not None
    assert wl.pods_of("sleepy") == [], "a terminating pod is out of the Deployment's pods (and endpoints)"
    assert _running(kube, pod.name, "main") and not record.exists(), "SIGTERM before the preStop sleep ended"
    wait_for(lambda: wl._read("pods", pod.name), lambda r: r is None, timeout=TIMEOUT, what="pod deleted")
    assert record.read_text().split() == ["TERM"]
    assert record.stat().st_mtime - rec["deletionTimestamp"] >= 1.9, "SIGTERM came before the 2 s preStop sleep"


def test_a_container_ignoring_sigterm_is_killed_after_the_grace_period(kube: Kube, tmp_path: Path) -> None:
    wl = kube.wl
    record = tmp_path / "record"
    m = recorder_deployment("stubborn", "example/term-ignorer:1.0.0", record, grace=2)
    wl.apply_deployment(m)
    pod = wl.wait_rollout("stubborn", timeout=TIMEOUT)
    pid = pod.containers[0].pid
    assert pid
    m["spec"]["replicas"] = 0
    wl.apply_deployment(m)
    rec = wait_for(lambda: wl._read("pods", pod.name), lambda r: r is not None and r.get("terminating"),
                   timeout=TIMEOUT, what="pod terminating")
    assert rec is not None
    wait_for(lambda: record.exists(), bool, timeout=TIMEOUT, what="SIGTERM recorded")
    assert Path(f"/proc/{pid}").exists(), "it ignores SIGTERM: alive inside the grace period"
    wait_for(lambda: wl._read("pods", pod.name), lambda r: r is None, timeout=TIMEOUT, what="pod deleted")
    assert time.time() - rec["deletionTimestamp"] >= 2, "gone before its 2 s grace period ended"
    # the shim is SIGKILLed; its container follows (PR_SET_PDEATHSIG) and is reaped: a deadline, not a sleep
    wait_for(lambda: Path(f"/proc/{pid}").exists(), lambda alive: not alive, timeout=5, what="the container gone")
    assert kube.sup.info(_program(pod.name, "main")) is None
    assert record.read_text().split() == ["TERM"]


def test_min_ready_seconds_holds_a_ready_pod_unavailable(kube: Kube) -> None:
    wl = kube.wl
    m = kube.proxy("steady", "1.0.0", replicas=1)
    m["spec"]["minReadySeconds"] = 2
    wl.apply_deployment(m)
    rec = wait_for(lambda: wl.pod_records("steady"), lambda r: len(r) == 1 and bool(r[0].get("ready")),
                   timeout=TIMEOUT, interval=0.05, what="the pod ready")[0]
    status = wl.rollout_status("steady")
    assert (status.ready, status.available, status.done) == (1, 0, False), status
    assert status.message == ('Waiting for deployment "steady" rollout to finish: 0 of 1 updated replicas are '
                              "available...")
    wl.wait_rollout("steady", timeout=TIMEOUT)
    assert time.time() - rec["ready_since"] >= 2, "available before minReadySeconds"
