"""The Batch port's contract (Jobs, StatefulSets and their claims: seed 001's bootstrap Job and the volume it hands
to a StatefulSet): the same tests against the Kubernetes API mock server and, when ``KUBECONFIG`` is set, that real
cluster in a throwaway namespace (tests/kube/contract.py), as test_contract_objects.py does for the Objects port.

The words asserted are the ones every supported API server version uses; the mock-only tests (test_kube_batch.py)
pin more of the semantics and the requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from runbook.adapters.base import Batch, JobStatus
from runbook.errors import KubeError
from runbook.wait import wait_for
from tests.kube.contract import Target


@pytest.fixture
def name(target: Target, request: pytest.FixtureRequest) -> Iterator[str]:
    """A name of this test's own (prefix of every object it creates); whatever it left is deleted after."""
    prefix = "b-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:8]
    yield prefix
    kube = target.kube
    for job in (prefix, f"{prefix}-bad"):
        kube.delete_job(job)
    kube.delete_statefulset(prefix)
    for claim in kube.pvcs():
        if prefix in claim:
            kube.delete_pvc(claim)


def job(name: str, image: str, script: str, *, backoff: int = 0, claim: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "command": ["sh", "-c", script]}
    spec: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [container]}
    if claim:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": backoff, "template": {"spec": spec}}}


def finished(target: Target, name: str) -> JobStatus:
    st = wait_for(lambda: target.kube.job_status(name), lambda s: s is not None and s.finished is not None,
                  timeout=target.timeout, interval=0.05 if target.fake else 0.5, what=f"job {name} finished")
    assert st is not None
    return st


def test_the_kube_adapter_implements_the_batch_port(target: Target) -> None:
    assert isinstance(target.kube, Batch)


def test_a_job_completes_converges_on_a_re_apply_and_keeps_its_template(target: Target, name: str) -> None:
    kube = target.kube
    manifest = job(name, target.images.app, "exit 0")
    kube.apply_job(manifest)
    st = finished(target, name)
    assert st.finished == "Complete" and st.succeeded == 1 and st.failed == 0
    assert st.condition("Complete") is not None and st.completion_time is not None
    assert [(p.phase, p.exit_codes) for p in st.pods] == [("Succeeded", {"main": 0})]
    kube.apply_job(manifest)  # the same manifest: converged
    with pytest.raises(KubeError) as err:
        kube.apply_job(job(name, target.images.app, "exit 1"))
    assert err.value.status == 422
    assert f'Job.batch "{name}" is invalid: spec.template: Invalid value: ' in str(err.value)
    assert "field is immutable" in str(err.value)
    kube.delete_job(name)
    assert kube.job_status(name) is None


def test_a_failing_job_is_failed_with_its_pods_exit_code(target: Target, name: str) -> None:
    target.kube.apply_job(job(f"{name}-bad", target.images.app, "exit 3"))
    st = finished(target, f"{name}-bad")
    failed = st.condition("Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded" and st.failed == 1
    assert [(p.phase, p.exit_codes, p.reasons) for p in st.pods] == [("Failed", {"main": 3}, {"main": "Error"})]


def test_a_job_must_run_to_completion(target: Target, name: str) -> None:
    m = job(name, target.images.app, "exit 0")
    m["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(KubeError) as err:
        target.kube.apply_job(m)
    assert err.value.status == 422
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never"' \
        in str(err.value)


def test_a_statefulset_mounts_the_claim_a_job_used_and_it_outlives_the_set(target: Target, name: str) -> None:
    kube = target.kube
    data = f"data-{name}-0"
    kube.apply_pvc({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": data},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}})
    kube.apply_job(job(name, target.images.app, "echo 41 > /data/height", claim=data))
    assert finished(target, name).finished == "Complete"
    container = {"name": "seid", "image": target.images.app, "command": ["sh", "-c", "cat /data/height; sleep 3600"],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    kube.apply_statefulset({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                     "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}}]}})
    st = wait_for(lambda: kube.statefulset_status(name), lambda s: s is not None and s.ready_replicas == 1,
                  timeout=target.timeout, interval=0.05 if target.fake else 0.5, what=f"statefulset {name} ready")
    assert st is not None and st.pods == (f"{name}-0",)
    assert data in kube.pvcs(), "the StatefulSet's pod 0 did not use the claim that was there"
    kube.delete_statefulset(name)
    assert kube.statefulset_status(name) is None
    assert data in kube.pvcs(), "the claim went with its StatefulSet"
    kube.delete_job(name)
    kube.delete_pvc(data)
    assert data not in kube.pvcs()
