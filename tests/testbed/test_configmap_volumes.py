"""configMap volumes on the local kubelet with real processes: a RollingUpdate Deployment's pods (created by the
testbed's controller under a scratch supervisord) read their ConfigMap through the mountPath, see a change only
at the controller's next sync of the pod, and wait in ContainerCreating while their ConfigMap is missing.
Run under `flock /tmp/runbook-testbed.lock`."""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook.env import load_env
from runbook.testbed.kube_controller import controller_program
from runbook.testbed.kubelet import LocalWorkloads, _program
from runbook.testbed.supervisor import Supervisor
from runbook.wait import wait_for
from tests.testbed.test_rolling_update_support import ENV_FILE, free_port

pytestmark = [pytest.mark.integration]

TIMEOUT = 60.0
SYNC = 3.0  # testbed.configmap_sync here
# a container that copies the file its first argument names to the file its second names, every 50 ms
READER = ["/bin/sh", "-c", 'while :; do cat "$0" > "$1.tmp" 2>&1; mv "$1.tmp" "$1"; sleep 0.05; done']


@contextmanager
def scratch(tmp_path: Path) -> Iterator[tuple[LocalWorkloads, Supervisor]]:
    data = yaml.safe_load(ENV_FILE.read_text())
    data["testbed"]["supervisor_port"] = free_port()
    data["testbed"]["configmap_sync"] = f"{SYNC}s"
    data["testbed"]["images"]["example/cm-reader:{version}"] = READER
    env_file = tmp_path / "env.yaml"
    env_file.write_text(yaml.safe_dump(data))
    env = load_env(str(env_file))
    state = tmp_path / "state"
    state.mkdir()
    sup = Supervisor(state_dir=state, port=data["testbed"]["supervisor_port"])
    sup.start()
    try:
        wl = LocalWorkloads(env=env, supervisor=sup, state_dir=state, netns=None)
        name, argv = controller_program(env, state)
        sup.add(name, argv)
        sup.wait_running(name, timeout=10)
        yield wl, sup
    finally:
        sup.shutdown()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[tuple[LocalWorkloads, Supervisor]]:
    with scratch(tmp_path) as k:
        yield k


def configmap(name: str, colour: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"service.properties": f"COLOUR={colour}\n"}}


def reader(name: str, cm: str, record: Path, *, optional: bool = False) -> dict[str, Any]:
    """A RollingUpdate Deployment whose container reads <mountPath>/service.properties (an arg the kubelet
    translates to the path through its rootfs) and copies it to ``record``."""
    container = {"name": "main", "image": "example/cm-reader:1.0.0",
                 "args": ["/etc/meta-service/service.properties", str(record)],
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/meta-service"}]}
    source: dict[str, Any] = {"name": cm, **({"optional": True} if optional else {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "strategy": {"type": "RollingUpdate"},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"terminationGracePeriodSeconds": 2, "containers": [container],
                                           "volumes": [{"name": "config", "configMap": source}]}}}}


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def test_a_pod_reads_its_configmap_and_sees_a_change_only_at_its_next_sync(
        kube: tuple[LocalWorkloads, Supervisor], tmp_path: Path) -> None:
    wl, _ = kube
    record = tmp_path / "seen"
    wl.apply_object(configmap("meta-storage-blue", "blue"))
    wl.apply_deployment(reader("storage", "meta-storage-blue", record))
    pod = wl.wait_rollout("storage", timeout=TIMEOUT).name
    wait_for(lambda: read(record), lambda s: s == "COLOUR=blue\n", timeout=TIMEOUT, what="the container's read")
    vol = wl.configmap_volume_dir(pod, "config")
    data_dir = (vol / "..data").readlink()
    assert str(data_dir).startswith("..20") and (vol / "service.properties").readlink() == \
        Path("..data/service.properties")
    mounted = wl._rootfs(pod, "main") / "etc/meta-service/service.properties"  # what the container opens

    def stamp() -> float | None:
        return wl.configmap_synced_at(pod)

    for _ in range(3):  # update right after a sync, so the next one is a whole period away
        before = wait_for(stamp, lambda t: t is not None, timeout=TIMEOUT, what="a first sync")
        synced = wait_for(stamp, functools.partial(operator.ne, before), timeout=TIMEOUT, what="the next sync")
        wl.apply_object(configmap("meta-storage-blue", "green"))
        if wl.configmap_synced_at(pod) == synced:
            break
    else:
        pytest.fail("a sync began during every update")
    samples = []
    while True:  # content first, then the sync stamp: while the stamp is unchanged, the content was read before it
        content = read(mounted)
        if wl.configmap_synced_at(pod) != synced:
            break
        samples.append(content)
        time.sleep(0.01)
    assert len(samples) >= 5, "the next sync came at once: the change reached the pod without the kubelet's lag"
    assert set(samples) == {"COLOUR=blue\n"}, "the pod saw the change before its next sync"
    wait_for(lambda: read(mounted), lambda s: s == "COLOUR=green\n", timeout=2 * SYNC, what="the projection updated")
    wait_for(lambda: read(record), lambda s: s == "COLOUR=green\n", timeout=TIMEOUT, what="the container's read")
    assert (vol / "..data").readlink() != data_dir and not (vol / data_dir).exists(), "swapped to a new data dir"


def test_a_missing_configmap_keeps_the_pod_in_container_creating_until_it_exists(
        kube: tuple[LocalWorkloads, Supervisor], tmp_path: Path) -> None:
    wl, sup = kube
    record, optional_record = tmp_path / "seen", tmp_path / "optional"
    wl.apply_deployment(reader("late", "late-config", record))
    wl.apply_deployment(reader("opt", "absent-config", optional_record, optional=True))
    rec = wait_for(lambda: wl.pod_records("late"), lambda r: len(r) == 1, timeout=TIMEOUT, what="the pod")[0]
    pod = rec["name"]
    status = wait_for(lambda: wl.pod(pod), lambda p: p.containers[0].reason == "ContainerCreating",
                      timeout=TIMEOUT, what="ContainerCreating")
    assert status.phase == "Pending" and not status.ready
    first = wait_for(lambda: wl.configmap_synced_at(pod), lambda t: t is not None, timeout=TIMEOUT, what="a sync")
    wait_for(lambda: wl.configmap_synced_at(pod), lambda t: t != first, timeout=TIMEOUT, what="a second sync")
    status = wl.pod(pod)
    assert (status.containers[0].state, status.containers[0].reason) == ("waiting", "ContainerCreating")
    assert sup.info(_program(pod, "main")) is None, "no container was created"
    failed = [e for e in wl.events(pod) if "FailedMount" in e]
    assert len(failed) == 1 and failed[0].endswith(
        'Warning FailedMount MountVolume.SetUp failed for volume "config" : configmap "late-config" not found')
    assert wl.rollout_status("late").available == 0

    opt = wl.wait_rollout("opt", timeout=TIMEOUT)  # optional: started with an empty volume
    assert [p.name for p in wl.configmap_volume_dir(opt.name, "config").iterdir()
            if not p.name.startswith("..")] == []

    wl.apply_object(configmap("late-config", "blue"))
    assert wl.wait_rollout("late", timeout=TIMEOUT).name == pod, "the same pod started, not a new one"
    wait_for(lambda: read(record), lambda s: s == "COLOUR=blue\n", timeout=TIMEOUT, what="the container's read")


def test_a_pod_that_never_started_is_deleted_without_its_pre_stop_hook(
        kube: tuple[LocalWorkloads, Supervisor], tmp_path: Path) -> None:
    """The kubelet runs a preStop hook in a running container only: a pod still in ContainerCreating (its
    ConfigMap missing) goes at once when its Deployment is deleted, as when a release deletes a broken colour."""
    wl, _ = kube
    hooked = tmp_path / "hooked"
    m = reader("stuck", "never-config", tmp_path / "seen")
    m["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {
        "preStop": {"exec": {"command": ["/bin/sh", "-c", f"echo PRESTOP >> {hooked}"]}}}
    wl.apply_deployment(m)
    rec = wait_for(lambda: wl.pod_records("stuck"), lambda r: len(r) == 1, timeout=TIMEOUT, what="the pod")[0]
    wait_for(lambda: wl.pod(rec["name"]), lambda p: p.containers[0].reason == "ContainerCreating", timeout=TIMEOUT,
             what="ContainerCreating")
    wl.delete_deployment("stuck", wait=False)
    wait_for(lambda: wl.pod_records("stuck"), lambda r: r == [], timeout=TIMEOUT, what="the pod deleted")
    assert not hooked.exists(), "a preStop hook ran in a container that never started"
    wait_for(lambda: wl.configmap_volume_dir(rec["name"], "config").exists(), lambda e: not e, timeout=TIMEOUT,
             what="its volume cleaned up")
