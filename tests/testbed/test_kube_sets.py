"""Jobs, StatefulSets and their PersistentVolumeClaims on the local kubelet and the testbed's controller (the Batch
port, kube_batch.py + kube_sets.py): real processes under a scratch supervisord (its own port and state dir),
real HTTP to the pods' loopback IPs. Run under `flock /tmp/runbook-testbed.lock`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from runbook.adapters.base import Batch, JobStatus, StatefulSetStatus
from runbook.env import load_env
from runbook.testbed.kube_controller import controller_program
from runbook.testbed.kubelet import LocalWorkloads
from runbook.testbed.supervisor import Supervisor
from runbook.wait import wait_for
from tests.testbed.test_rolling_update_support import free_port

pytestmark = [pytest.mark.integration]

ENV_FILE = Path(__file__).parent / "envs" / "batch.yaml"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def wl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorkloads]:
    tmp = tmp_path_factory.mktemp("batch")
    data = yaml.safe_load(ENV_FILE.read_text())
    data["testbed"]["supervisor_port"] = free_port()
    (tmp / "batch.yaml").write_text(yaml.safe_dump(data))
    env = load_env(str(tmp / "batch.yaml"))
    state = tmp / "state"
    state.mkdir()
    sup = Supervisor(state_dir=state, port=data["testbed"]["supervisor_port"])
    sup.start()
    try:
        name, argv = controller_program(env, state)
        sup.add(name, argv)
        sup.wait_running(name, timeout=10)
        yield LocalWorkloads(env=env, supervisor=sup, state_dir=state, netns=None)
    finally:
        sup.shutdown()


def job(name: str, image: str, args: list[str], *, backoff: int = 6, deadline: int | None = None,
        claim: str | None = None, restart: str = "Never", ttl: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "args": args}
    spec: dict[str, Any] = {"restartPolicy": restart, "terminationGracePeriodSeconds": 2, "containers": [container]}
    if claim:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    m: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                         "spec": {"backoffLimit": backoff, "template": {"spec": spec}}}
    if deadline is not None:
        m["spec"]["activeDeadlineSeconds"] = deadline
    if ttl is not None:
        m["spec"]["ttlSecondsAfterFinished"] = ttl
    return m


def file_server(name: str, port: int, *, replicas: int) -> dict[str, Any]:
    """A StatefulSet serving its ``data`` claim (mounted at /data) over HTTP on its pod IP, probed on /."""
    container = {
        "name": "files", "image": "example/files:1.0.0",
        "args": ["--bind", "$(POD_IP)", "--directory", "/data", str(port)],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                         "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}


def service(name: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def finished(wl: LocalWorkloads, name: str) -> JobStatus:
    st = wait_for(lambda: wl.job_status(name), lambda s: s is not None and s.finished is not None,
                  timeout=TIMEOUT, interval=0.1, what=f"job {name} finished")
    assert st is not None
    return st


def ready(wl: LocalWorkloads, name: str, replicas: int) -> StatefulSetStatus:
    st = wait_for(lambda: wl.statefulset_status(name), lambda s: s is not None and s.ready_replicas == replicas,
                  timeout=TIMEOUT, interval=0.1, what=f"statefulset {name} ready")
    assert st is not None
    return st


def test_the_local_kubelet_is_a_batch_port(wl: LocalWorkloads) -> None:
    assert isinstance(wl, Batch)


def test_a_job_runs_to_complete_and_keeps_its_completed_pod(wl: LocalWorkloads) -> None:
    wl.apply_job(job("ok", "example/exit:1.0.0", ["0", "0.3"]))
    st = finished(wl, "ok")
    assert st.finished == "Complete" and (st.active, st.succeeded, st.failed) == (0, 1, 0)
    assert [c.type for c in st.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert st.condition("Complete").reason == "CompletionsReached"  # type: ignore[union-attr]
    assert st.completion_time is not None and st.start_time is not None
    (pod,) = st.pods
    assert (pod.phase, pod.exit_codes, pod.reasons) == ("Succeeded", {"main": 0}, {"main": "Completed"})
    info = wl.pod(pod.name)
    assert info.phase == "Succeeded" and info.labels["job-name"] == "ok"
    assert info.labels["batch.kubernetes.io/job-name"] == "ok" and not info.ready
    assert info.container("main").state == "terminated" and info.container("main").reason == "Completed"
    later = finished(wl, "ok")  # read again after the controller's later syncs: the Completed pod stays
    assert [p.name for p in later.pods] == [pod.name] and wl.pod_exists(pod.name)
    with pytest.raises(Exception, match="immutable"):  # a Job's template cannot change
        wl.apply_job(job("ok", "example/exit:1.0.0", ["1", "0"]))
    wl.delete_job("ok")
    assert wl.job_status("ok") is None and not wl.pod_exists(pod.name)


def test_a_failing_job_is_failed_at_its_backoff_limit(wl: LocalWorkloads) -> None:
    wl.apply_job(job("bad", "example/exit:1.0.0", ["3", "0.2"], backoff=1))
    first = wait_for(lambda: wl.job_status("bad"), lambda s: s is not None and s.failed == 1,
                     timeout=TIMEOUT, interval=0.1, what="the first failure counted")
    assert first is not None and first.finished is None, "failed at its first failure with backoffLimit 1"
    st = finished(wl, "bad")
    assert st.finished == "Failed" and (st.active, st.succeeded, st.failed) == (0, 0, 2)
    assert [c.type for c in st.conditions] == ["FailureTarget", "Failed"]
    failed = st.condition("Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert failed.message == "Job has reached the specified backoff limit"
    assert len(st.pods) == 2, "failed pods are kept"
    for p in st.pods:
        assert (p.phase, p.exit_codes, p.reasons) == ("Failed", {"main": 3}, {"main": "Error"})
    a, b = sorted((wl._read("pods", p.name) or {} for p in st.pods), key=lambda r: r["created"])
    stopped = wl.sup.info(f"{a['name']}--main")
    assert stopped is not None and b["created"] - stopped.stop >= 9, "replaced before the 10 s pod failure backoff"
    wl.delete_job("bad", propagation="Foreground")
    assert wl.job_status("bad") is None and not any(wl.pod_exists(p.name) for p in st.pods)


def test_a_job_past_its_active_deadline_is_failed_and_its_pod_deleted(wl: LocalWorkloads) -> None:
    wl.apply_job(job("slow", "example/exit:1.0.0", ["0", "60"], deadline=1))
    st = finished(wl, "slow")
    failed = st.condition("Failed")
    assert failed is not None and failed.reason == "DeadlineExceeded"
    assert (st.active, st.succeeded, st.failed) == (0, 0, 1) and st.pods == (), "the running pod was deleted"
    wl.delete_job("slow")


def test_an_on_failure_jobs_restarts_in_place_count_toward_its_backoff_limit(wl: LocalWorkloads,
                                                                              tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    wl.apply_job(job("flaky", "example/count-exit:1.0.0", [str(runs)], backoff=1, restart="OnFailure"))
    st = finished(wl, "flaky")
    failed = st.condition("Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded" and st.failed == 1
    assert st.pods == (), "the pod was deleted once its restart reached the limit"
    # one pod, its container restarted in place (restartCount 1 >= backoffLimit 1 fails the Job at the restart,
    # as the Job controller's pastBackoffLimitOnFailure; the restarted run may be killed before it writes)
    assert runs.read_text().split() in (["run"], ["run", "run"])
    wl.delete_job("flaky")


def test_a_finished_job_goes_after_its_ttl_and_its_pods_with_it(wl: LocalWorkloads) -> None:
    wl.apply_job(job("brief", "example/exit:1.0.0", ["0", "0"], ttl=1))
    pod = finished(wl, "brief").pods[0].name
    wait_for(lambda: (wl.job_status("brief"), wl.pod_exists(pod)), lambda r: r == (None, False), timeout=TIMEOUT,
             interval=0.1, what="the Job and its pod deleted after ttlSecondsAfterFinished")


def test_a_statefulset_creates_its_ordinals_in_order_each_with_its_claim(wl: LocalWorkloads) -> None:
    port = free_port()
    wl.apply_object(service("web", port))
    wl.apply_statefulset(file_server("web", port, replicas=2))
    st = ready(wl, "web", 2)
    assert st.pods == ("web-0", "web-1") and st.current_revision == st.update_revision
    assert st.current_revision.startswith("web-") and st.replicas == st.updated_replicas == 2
    r0, r1 = wl._read("pods", "web-0") or {}, wl._read("pods", "web-1") or {}
    assert r1["created"] >= r0["ready_since"], "OrderedReady: web-1 created before web-0 was Ready"
    assert r0["labels"]["statefulset.kubernetes.io/pod-name"] == "web-0"
    assert r0["labels"]["controller-revision-hash"] == st.update_revision
    assert wl.pvcs() == ["data-web-0", "data-web-1"]
    for i, rec in enumerate((r0, r1)):
        d = wl.pvc_dir(f"data-web-{i}")
        assert d is not None
        (d / "data.txt").write_text(f"ordinal {i}")  # each pod serves its own claim, over HTTP
        r = httpx.get(f"http://{rec['ip']}:{port}/data.txt", timeout=2, trust_env=False)
        assert r.text == f"ordinal {i}"
    assert wl.endpoints("web") == sorted(f"{r['ip']}:{port}" for r in (r0, r1))

    m = file_server("web", port, replicas=1)  # scaled down (the highest ordinal goes) and a new template
    m["spec"]["template"]["metadata"]["labels"]["rev"] = "2"
    wl.apply_statefulset(m)
    st = wait_for(lambda: wl.statefulset_status("web"), lambda s: s is not None and s.pods == ("web-0",)
                  and s.ready_replicas == s.updated_replicas == 1 and s.current_revision == s.update_revision,
                  timeout=TIMEOUT, interval=0.1, what="web scaled to 1 and updated")
    assert st is not None and st.update_revision != r0["labels"]["controller-revision-hash"]
    r0 = wl._read("pods", "web-0") or {}
    assert r0["labels"]["controller-revision-hash"] == st.update_revision and r0["labels"]["rev"] == "2"
    assert wl.pvcs() == ["data-web-0", "data-web-1"], "a scale-down keeps the claims"
    assert httpx.get(f"http://{r0['ip']}:{port}/data.txt", timeout=2, trust_env=False).text == "ordinal 0"

    wl.delete_statefulset("web")
    assert wl.statefulset_status("web") is None and wl.endpoints("web") == []
    assert wl.pvcs() == ["data-web-0", "data-web-1"], "the claims outlive their StatefulSet"
    kept = wl.pvc_dir("data-web-1")
    assert kept is not None and (kept / "data.txt").read_text() == "ordinal 1"
    wl.delete_pvc("data-web-1")
    assert wl.pvcs() == ["data-web-0"] and not kept.exists(), "a deleted claim's data goes with it"
    wl.delete_pvc("data-web-0")
    wl.delete_object("Service", "web")


def test_a_jobs_data_in_the_claim_is_read_by_the_statefulsets_pod_0(wl: LocalWorkloads) -> None:
    port = free_port()
    wl.apply_pvc({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-x-0"},
                  "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    assert wl.pvc_dir("data-x-0") is None, "WaitForFirstConsumer: not bound before a pod mounts it"
    wl.apply_job(job("boot", "example/writer:1.0.0", ["/data", "height 41"], claim="data-x-0"))
    assert finished(wl, "boot").finished == "Complete"
    wl.apply_object(service("x", port))
    wl.apply_statefulset(file_server("x", port, replicas=1))
    ready(wl, "x", 1)
    rec = wl._read("pods", "x-0") or {}
    r = httpx.get(f"http://{rec['ip']}:{port}/data.txt", timeout=2, trust_env=False)
    assert r.text == "height 41", "pod 0 does not see what the Job wrote into data-x-0"
    assert wl.endpoints("x") == [f"{rec['ip']}:{port}"]
    assert wl.job_status("boot") is not None, "the Job (and its Completed pod) is untouched"

    wl.delete_pvc("data-x-0", wait=False)  # in use by x-0: Terminating (pvc-protection), data kept
    kept = wl.pvc_dir("data-x-0")
    assert kept is not None and (kept / "data.txt").read_text() == "height 41"
    wl.delete_statefulset("x")
    wait_for(lambda: wl.pvcs(), lambda names: names == [], timeout=TIMEOUT, what="data-x-0 deleted after x-0")
    assert not kept.exists()
    wl.delete_job("boot")
    wl.delete_object("Service", "x")
