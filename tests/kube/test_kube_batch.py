"""The Batch port of the kube adapter (runbook/adapters/kube_batch.py: Jobs, StatefulSets, PersistentVolumeClaims)
against the Kubernetes API mock server (tests/kube/fake_batch.py): the same semantics the local testbed's port has
(tests/testbed/test_kube_sets.py), the requests the adapter sends, and the API server's 1.32 words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.base import Batch, JobStatus
from runbook.adapters.kube import KubeWorkloads
from runbook.adapters.kube_batch import overlay
from runbook.errors import AdapterError, KubeError
from runbook.wait import wait_for
from tests.kube.contract import Images, kind_testbed_images, send
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster
from tests.kube.test_fake_apiserver import adapter_on

IMAGE = Images.of_kind_testbed().app
TIMEOUT = 10.0


def job(name: str, script: str, *, backoff: int = 6, deadline: int | None = None, claim: str | None = None,
        restart: str = "Never", ttl: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": IMAGE, "command": ["sh", "-c", script]}
    spec: dict[str, Any] = {"restartPolicy": restart, "terminationGracePeriodSeconds": 2, "containers": [container]}
    if claim:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    m: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {"app": "seid"}},
                         "spec": {"backoffLimit": backoff, "template": {"spec": spec}}}
    if deadline is not None:
        m["spec"]["activeDeadlineSeconds"] = deadline
    if ttl is not None:
        m["spec"]["ttlSecondsAfterFinished"] = ttl
    return m


def statefulset(name: str, *, replicas: int) -> dict[str, Any]:
    container = {"name": "seid", "image": IMAGE, "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                         "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}


def claim(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "labels": labels},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


def finished(kube: KubeWorkloads, name: str) -> JobStatus:
    st = wait_for(lambda: kube.job_status(name), lambda s: s is not None and s.finished is not None,
                  timeout=TIMEOUT, interval=0.02, what=f"job {name} finished")
    assert st is not None
    return st


def pods(fake: FakeApiServer, ns: str) -> list[dict[str, Any]]:
    """The mock's pods now (its clock settled, as a request would)."""
    with fake.cluster.lock:
        fake.cluster.settle()
        return fake.cluster.items("pods", ns)


def test_the_kube_adapter_is_a_batch_port(fake_kube: KubeWorkloads) -> None:
    assert isinstance(fake_kube, Batch)


def test_a_job_runs_to_complete_keeps_its_pod_and_its_template(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    kube, ns = fake_kube, fake_kube.namespace
    assert kube.job_status("ok") is None
    kube.apply_job(job("ok", "sleep 0.1; exit 0"))
    st = finished(kube, "ok")
    assert st.finished == "Complete" and (st.active, st.succeeded, st.failed) == (0, 1, 0)
    assert [c.type for c in st.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert st.condition("Complete").reason == "CompletionsReached"  # type: ignore[union-attr]
    assert st.start_time is not None and st.completion_time is not None
    (pod,) = st.pods
    assert (pod.phase, pod.exit_codes, pod.reasons, pod.terminating) == ("Succeeded", {"main": 0},
                                                                         {"main": "Completed"}, False)
    info = kube.pod(pod.name)
    assert info.labels["job-name"] == "ok" and info.labels["batch.kubernetes.io/job-name"] == "ok"
    assert pod.name.startswith("ok-") and len(pod.name) == len("ok-") + 5

    fake.requests.clear()
    kube.apply_job(job("ok", "sleep 0.1; exit 0"))  # the same manifest again: converged (a replace the server takes)
    (put,) = [r for r in fake.requests if r.method == "PUT"]
    sent = json.loads(put.body)
    assert sent["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": info.labels[
        "batch.kubernetes.io/controller-uid"]}} and sent["metadata"]["resourceVersion"]
    with pytest.raises(KubeError) as err:
        kube.apply_job(job("ok", "exit 1"))
    assert err.value.status == 422
    assert f'replace job/ok in namespace {ns}: rejected as invalid (422): Job.batch "ok" is invalid: spec.template: ' \
           "Invalid value: core.PodTemplateSpec{...}: field is immutable" in str(err.value)

    fake.requests.clear()
    kube.delete_job("ok")
    (delete,) = [r for r in fake.requests if r.method == "DELETE"]
    assert delete.query["propagationPolicy"] == ["Background"]
    assert kube.job_status("ok") is None and fake.cluster.find("pods", ns, pod.name) is None
    kube.delete_job("ok")  # gone already: converged


def test_a_failing_job_is_failed_at_its_backoff_limit_and_keeps_its_failed_pods(fake_kube: KubeWorkloads) -> None:
    kube = fake_kube
    kube.apply_job(job("bad", "sleep 0.05; exit 3", backoff=1))
    st = finished(kube, "bad")
    assert st.finished == "Failed" and (st.active, st.succeeded, st.failed) == (0, 0, 2)
    assert [c.type for c in st.conditions] == ["FailureTarget", "Failed"]
    failed = st.condition("Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert failed.message == "Job has reached the specified backoff limit"
    assert [(p.phase, p.exit_codes, p.reasons) for p in st.pods] == [("Failed", {"main": 3}, {"main": "Error"})] * 2
    kube.delete_job("bad", propagation="Foreground")
    assert kube.job_status("bad") is None and kube.pvcs() == []


def test_a_job_past_its_deadline_is_failed_and_its_pod_deleted(fake_kube: KubeWorkloads) -> None:
    fake_kube.apply_job(job("slow", "sleep 60", deadline=1))
    st = finished(fake_kube, "slow")
    assert st.condition("Failed").reason == "DeadlineExceeded"  # type: ignore[union-attr]
    assert (st.active, st.succeeded, st.failed, st.pods) == (0, 0, 1, ())


def test_on_failure_restarts_count_toward_the_backoff_limit(fake_kube: KubeWorkloads) -> None:
    fake_kube.apply_job(job("flaky", "exit 2", backoff=1, restart="OnFailure"))
    st = finished(fake_kube, "flaky")
    assert st.condition("Failed").reason == "BackoffLimitExceeded"  # type: ignore[union-attr]
    assert st.pods == () and st.failed == 1


def test_a_finished_job_goes_after_its_ttl_with_its_pods(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    fake_kube.apply_job(job("brief", "exit 0", ttl=0))
    wait_for(lambda: (fake_kube.job_status("brief"), pods(fake, fake_kube.namespace)),
             lambda r: r == (None, []), timeout=TIMEOUT, interval=0.02, what="the Job and its pod deleted")


def test_a_job_must_run_to_completion(fake_kube: KubeWorkloads) -> None:
    m = job("j", "exit 0")
    m["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(KubeError) as err:
        fake_kube.apply_job(m)
    assert err.value.status == 422 and 'Job.batch "j" is invalid: spec.template.spec.restartPolicy: Unsupported ' \
        'value: "Always": supported values: "OnFailure", "Never"' in str(err.value)
    with pytest.raises(AdapterError, match="apply_job takes a Job, got 'StatefulSet'"):
        fake_kube.apply_job(statefulset("j", replicas=1))


def test_orphaned_pods_stay_and_a_raw_delete_orphans_by_default(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    """batch/v1's default propagation is Orphan: a client that sends none (not this adapter) leaves the pods."""
    kube, ns = fake_kube, fake_kube.namespace
    for name in ("a", "b"):
        kube.apply_job(job(name, "sleep 60"))
    running = wait_for(lambda: pods(fake, ns), lambda ps: len(ps) == 2, timeout=TIMEOUT, interval=0.02,
                    what="both Jobs' pods")
    kube.delete_job("a", propagation="Orphan")
    send(kube.batch_api.delete_namespaced_job, "b", ns)  # no propagationPolicy
    left = pods(fake, ns)
    assert sorted(p["metadata"]["name"] for p in left) == sorted(p["metadata"]["name"] for p in running)
    assert all(not p["metadata"].get("ownerReferences") for p in left)


def test_a_statefulset_creates_ordinals_in_order_each_with_a_claim_that_outlives_it(tmp_path: Path) -> None:
    server = FakeApiServer(FakeCluster(images=kind_testbed_images(), start_delay=0.3))
    try:
        kube = adapter_on(server, tmp_path, namespace="sei")
        kube.apply_statefulset(statefulset("web", replicas=2))
        first = wait_for(lambda: kube.statefulset_status("web"), lambda s: s is not None and bool(s.pods),
                         timeout=TIMEOUT, interval=0.02, what="web-0 created")
        assert first is not None and first.pods == ("web-0",) and not kube.pod("web-0").ready, \
            "OrderedReady: web-1 created before web-0 was Ready"
        st = wait_for(lambda: kube.statefulset_status("web"), lambda s: s is not None and s.ready_replicas == 2,
                      timeout=TIMEOUT, interval=0.02, what="web ready")
        assert st is not None and st.pods == ("web-0", "web-1") and st.current_revision == st.update_revision
        assert st.current_revision.startswith("web-") and st.replicas == st.updated_replicas == 2
        assert st.observed_generation == 1
        assert kube.pvcs() == ["data-web-0", "data-web-1"] and kube.pvcs("app=web") == kube.pvcs()
        pvc = server.cluster.get("persistentvolumeclaims", "sei", "data-web-1")
        assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["volumeName"] == f"pvc-{pvc['metadata']['uid']}"
        pod1 = server.cluster.get("pods", "sei", "web-1")
        assert {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-1"}} in pod1["spec"]["volumes"]
        assert pod1["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] == "web-1"

        m = statefulset("web", replicas=1)  # scale down (highest ordinal first) and a new template
        m["spec"]["template"]["metadata"]["labels"]["rev"] = "2"
        kube.apply_statefulset(m)
        st = wait_for(lambda: kube.statefulset_status("web"), lambda s: s is not None and s.pods == ("web-0",)
                      and s.ready_replicas == s.updated_replicas == 1 and s.current_revision == s.update_revision,
                      timeout=TIMEOUT, interval=0.02, what="web scaled to 1 and updated")
        assert st is not None and st.observed_generation == 2
        assert server.cluster.get("pods", "sei", "web-0")["metadata"]["labels"]["rev"] == "2"
        assert kube.pvcs() == ["data-web-0", "data-web-1"], "a scale-down keeps the claims"

        kube.delete_statefulset("web")
        assert kube.statefulset_status("web") is None and server.cluster.items("pods", "sei") == []
        assert kube.pvcs() == ["data-web-0", "data-web-1"], "the claims outlive their StatefulSet"
        kube.delete_pvc("data-web-1")
        assert kube.pvcs() == ["data-web-0"]
    finally:
        server.stop()


def test_a_statefulset_is_validated_as_the_api_server_does(fake_kube: KubeWorkloads) -> None:
    bad = statefulset("s", replicas=1)
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(KubeError) as err:
        fake_kube.apply_statefulset(bad)
    assert 'StatefulSet.apps "s" is invalid: spec.template.metadata.labels: Invalid value: ' \
           'map[string]string{"app":"s"}: `selector` does not match template `labels`' in str(err.value)
    fake_kube.apply_statefulset(statefulset("s", replicas=1))
    fake_kube.apply_statefulset(statefulset("s", replicas=3))  # replicas may change
    changed = statefulset("s", replicas=3)
    changed["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] = "state"
    with pytest.raises(KubeError) as err:
        fake_kube.apply_statefulset(changed)
    assert err.value.status == 422 and 'StatefulSet.apps "s" is invalid: spec: Forbidden: updates to statefulset ' \
        "spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy'" in str(err.value)
    fake_kube.delete_statefulset("s")


def test_a_jobs_claim_waits_for_its_claim_and_is_held_while_a_pod_uses_it(fake: FakeApiServer,
                                                                         fake_kube: KubeWorkloads) -> None:
    kube, ns = fake_kube, fake_kube.namespace
    kube.apply_job(job("boot", "sleep 0.1; exit 0", claim="data-x-0"))
    pod = wait_for(lambda: pods(fake, ns), lambda ps: bool(ps), timeout=TIMEOUT, interval=0.02,
                   what="the Job's pod")[0]
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "False" and 'persistentvolumeclaim "data-x-0" not found' in scheduled["message"]
    assert kube.job_status("boot").active == 1  # type: ignore[union-attr]  # Pending counts as active
    kube.apply_pvc(claim("data-x-0", app="x"))
    assert finished(kube, "boot").finished == "Complete"
    assert fake.cluster.get("persistentvolumeclaims", ns, "data-x-0")["status"]["phase"] == "Bound"

    kube.apply_statefulset(statefulset("x", replicas=1))  # pod 0 mounts the Job's claim, as it is
    wait_for(lambda: kube.statefulset_status("x"), lambda s: s is not None and s.ready_replicas == 1,
             timeout=TIMEOUT, interval=0.02, what="x ready")
    kube.delete_pvc("data-x-0", wait=False)  # in use: Terminating (pvc-protection)
    assert kube.pvcs() == ["data-x-0"]
    with pytest.raises(KubeError, match="it is being deleted") as err:
        kube.apply_pvc(claim("data-x-0", app="x"))
    assert err.value.status == 409
    kube.delete_statefulset("x")
    wait_for(kube.pvcs, lambda names: names == [], timeout=TIMEOUT, interval=0.02, what="data-x-0 gone after x-0")


def test_a_claim_keeps_its_spec_and_takes_new_labels(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    kube, ns = fake_kube, fake_kube.namespace
    kube.apply_pvc(claim("c", app="a"))
    fake.requests.clear()
    kube.apply_pvc(claim("c", app="a"))  # unchanged: no write
    assert [r.method for r in fake.requests] == ["GET"]
    bigger = claim("c", app="b")
    bigger["spec"]["resources"]["requests"]["storage"] = "2Gi"
    kube.apply_pvc(bigger)
    live = fake.cluster.get("persistentvolumeclaims", ns, "c")
    assert live["metadata"]["labels"] == {"app": "b"} and live["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert live["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    assert kube.pvcs("app=b") == ["c"] and kube.pvcs("app=a") == []
    bad = claim("d")
    del bad["spec"]["accessModes"]
    with pytest.raises(KubeError) as err:
        kube.apply_pvc(bad)
    assert 'PersistentVolumeClaim "d" is invalid: spec.accessModes: Required value: at least 1 access mode is ' \
           "required" in str(err.value)


def test_overlay_keeps_what_the_manifest_leaves_out() -> None:
    live = {"metadata": {"labels": {"job-name": "j", "app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i:1", "terminationMessagePath": "/dev/termination-log"},
                                    {"name": "gone", "image": "x"}], "restartPolicy": "Never"},
            "claims": [{"metadata": {"name": "data"}, "spec": {"volumeMode": "Filesystem"}}]}
    desired = {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:2"}]},
               "claims": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}
    assert overlay(live, desired) == {
        "metadata": {"labels": {"job-name": "j", "app": "b"}},
        "spec": {"containers": [{"name": "c", "image": "i:2", "terminationMessagePath": "/dev/termination-log"}],
                 "restartPolicy": "Never"},
        "claims": [{"metadata": {"name": "data"}, "spec": {"volumeMode": "Filesystem",
                                                           "accessModes": ["ReadWriteOnce"]}}]}


@pytest.mark.parametrize("change", ["status", "spec"])
def test_a_replace_that_races_a_write_is_retried_only_when_the_status_moved(
        fake: FakeApiServer, fake_kube: KubeWorkloads, change: str) -> None:
    kube, ns = fake_kube, fake_kube.namespace
    kube.apply_statefulset(statefulset("r", replicas=1))
    real = kube._get

    def read_then_write(fn: Any, noun: str, name: str) -> dict[str, Any] | None:
        seen = real(fn, noun, name)
        if noun == "statefulset" and not writes:
            with fake.cluster.lock:
                obj = fake.cluster.get("statefulsets", ns, name)
                if change == "spec":
                    obj["spec"]["replicas"] = 0
                    obj["metadata"]["generation"] += 1
                fake.cluster.touch(obj)
            writes.append(change)
        return seen

    writes: list[str] = []
    kube._get = read_then_write  # type: ignore[method-assign]
    try:
        if change == "status":
            kube.apply_statefulset(statefulset("r", replicas=2))
            assert fake.cluster.get("statefulsets", ns, "r")["spec"]["replicas"] == 2
        else:
            with pytest.raises(KubeError) as err:
                kube.apply_statefulset(statefulset("r", replicas=2))
            assert err.value.status == 409 and fake.cluster.get("statefulsets", ns, "r")["spec"]["replicas"] == 0
    finally:
        del kube._get
    kube.delete_statefulset("r")


def test_adapters_batch_is_the_workloads_port_when_it_has_the_verbs(fake_kube: KubeWorkloads) -> None:
    from runbook.adapters.factory import Adapters
    from runbook.errors import RunbookError

    ports: dict[str, Any] = {"host": None, "ingress": None, "storage": None}
    assert Adapters(env=fake_kube.env, workloads=fake_kube, **ports).batch is fake_kube
    with pytest.raises(RunbookError, match="the workloads port of env kind has no Jobs, StatefulSets and claims"):
        _ = Adapters(env=fake_kube.env, workloads=object(), **ports).batch  # type: ignore[arg-type]
