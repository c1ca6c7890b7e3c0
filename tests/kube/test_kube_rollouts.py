"""The kube adapter's rollout verbs (runbook/adapters/kube_rollouts.py) against the stateful mock API server,
on seed 004's own objects (deploy/k8s/canary): a RollingUpdate with maxSurge 1 / maxUnavailable 0 driven by
the mock's Deployment controller, revisions and their renumbering on undo as the real controller does them,
kubectl's undo words, EndpointSlices of the Service, and the requests sent (one patch per verb)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from runbook import kustomize as kz
from runbook.adapters.base import Rollouts, RolloutStatus
from runbook.adapters.kube import KubeWorkloads
from runbook.errors import KubeError
from runbook.testbed.kind_images import CANARY_MANIFESTS
from runbook.wait import wait_for
from tests.kube.fake_apiserver import FakeApiServer

PROD, CANARY = "zai-proxy", "zai-proxy-test"
OLD, NEW = "ronaldraygun/zai-proxy:1.2.0", "ronaldraygun/zai-proxy:1.3.0"


def canary_objects(namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = copy.deepcopy(kz.build(CANARY_MANIFESTS))
    for d in docs:
        d["metadata"]["namespace"] = namespace
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def deploy(kube: KubeWorkloads, *names: str) -> None:
    """The Deployments and their Services of deploy/k8s/canary, rolled out."""
    objects = canary_objects(kube.namespace)
    for name in names:
        kube.core.create_namespaced_service(kube.namespace, objects[("Service", name)], _preload_content=False)
        kube.apply_deployment(objects[("Deployment", name)])
    for name in names:
        wait_done(kube, name)


def wait_done(kube: KubeWorkloads, name: str, seen: list[RolloutStatus] | None = None) -> RolloutStatus:
    def observe() -> RolloutStatus:
        status = kube.rollout_status(name)
        if seen is not None:
            seen.append(status)
        return status

    return wait_for(observe, lambda s: s.done, timeout=20, interval=0.02, what=f"rollout of {name}")


def promote(kube: KubeWorkloads, version: str = "1.3.0", cause: str = "promote 1.3.0-canary") -> None:
    kube.set_template(PROD, images={"proxy": f"ronaldraygun/zai-proxy:{version}"}, labels={"version": version},
                      change_cause=cause)


def patches(fake: FakeApiServer) -> list[tuple[str, Any]]:
    return [(r.headers["content-type"], json.loads(r.body)) for r in fake.requests if r.method == "PATCH"]


def test_the_adapter_implements_the_rollouts_port(fake_kube: KubeWorkloads) -> None:
    assert isinstance(fake_kube, Rollouts)


def test_a_promotion_rolls_one_pod_at_a_time_and_never_drops_below_three_ready(fake: FakeApiServer,
                                                                               fake_kube: KubeWorkloads) -> None:
    deploy(fake_kube, PROD)
    before = fake_kube.rollout_status(PROD)
    assert (before.revision, before.images, before.done) == (1, {"proxy": OLD}, True)
    old_endpoints = fake_kube.endpoints(PROD)
    assert len(old_endpoints) == 3 and all(e.endswith(":8080") for e in old_endpoints)
    fake.requests.clear()
    promote(fake_kube)
    assert patches(fake) == [("application/strategic-merge-patch+json", {
        "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": NEW}]},
                              "metadata": {"labels": {"version": "1.3.0"}}}},
        "metadata": {"annotations": {"kubernetes.io/change-cause": "promote 1.3.0-canary"}}})]
    seen: list[RolloutStatus] = []
    endpoints: list[list[str]] = []

    def observe() -> RolloutStatus:
        endpoints.append(fake_kube.endpoints(PROD))
        return fake_kube.rollout_status(PROD)

    after = wait_for(lambda: seen.append(observe()) or seen[-1], lambda s: s.done and s.revision == 2, timeout=20,
                     interval=0.01, what="the promotion")
    assert after.images == {"proxy": NEW} and after.message == 'deployment "zai-proxy" successfully rolled out'
    assert max(s.replicas for s in seen) == 4  # maxSurge 1
    assert min(s.ready for s in seen) >= 3  # maxUnavailable 0
    assert min(len(e) for e in endpoints) >= 3  # the Service never had fewer than 3 ready endpoints
    assert any("new replicas have been updated" in s.message for s in seen)  # it was seen in progress
    pods = fake_kube.pods_of(PROD)
    assert len(pods) == 3 and {p.labels["version"] for p in pods} == {"1.3.0"}
    assert all(p.ready_condition is True and p.ready and p.ip for p in pods)
    assert fake_kube.endpoints(PROD) == sorted(f"{p.ip}:8080" for p in pods)
    assert not set(fake_kube.endpoints(PROD)) & set(old_endpoints)  # new pods, new addresses
    history = fake_kube.rollout_history(PROD)
    assert [(r.number, r.images, r.labels["version"], r.change_cause, r.replicas) for r in history] == [
        (1, {"proxy": OLD}, "1.2.0", "", 0), (2, {"proxy": NEW}, "1.3.0", "promote 1.3.0-canary", 3)]


def test_undo_takes_the_previous_template_back_as_a_new_revision(fake: FakeApiServer,
                                                                 fake_kube: KubeWorkloads) -> None:
    deploy(fake_kube, PROD)
    promote(fake_kube)
    wait_for(lambda: fake_kube.rollout_status(PROD), lambda s: s.done and s.revision == 2, timeout=20,
             interval=0.02, what="the promotion")
    fake.requests.clear()
    assert fake_kube.rollout_undo(PROD) == 1
    assert fake_kube.last_undo == "rolled back"
    ((kind, patch),) = patches(fake)
    assert kind == "application/json-patch+json"
    assert [op["path"] for op in patch] == ["/spec/template", "/metadata/annotations"]
    assert "pod-template-hash" not in patch[0]["value"]["metadata"]["labels"]
    assert patch[0]["value"]["spec"]["containers"][0]["image"] == OLD
    assert patch[1]["value"] == {"deployment.kubernetes.io/revision": "2"}  # revision 1 had no change cause
    status = wait_for(lambda: fake_kube.rollout_status(PROD), lambda s: s.done and s.revision == 3, timeout=20,
                      interval=0.02, what="the undo")
    assert status.images == {"proxy": OLD}
    assert {p.labels["version"] for p in fake_kube.pods_of(PROD)} == {"1.2.0"}
    # revision 1's ReplicaSet became revision 3: 1 is gone from the history, as with kubectl
    assert [(r.number, r.images["proxy"]) for r in fake_kube.rollout_history(PROD)] == [(2, NEW), (3, OLD)]
    with pytest.raises(KubeError, match=r"unable to find specified revision 1 in history \(revisions: 2, 3\)"):
        fake_kube.rollout_undo(PROD, to_revision=1)


def test_undo_to_a_named_revision_and_the_skipped_case(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    deploy(fake_kube, PROD)
    for version in ("1.3.0", "1.3.0-slow"):
        promote(fake_kube, version, cause=f"to {version}")
        wait_for(lambda: fake_kube.rollout_status(PROD),
                 lambda s, image=f"ronaldraygun/zai-proxy:{version}": s.done and s.images["proxy"] == image,
                 timeout=20, interval=0.02, what=f"the rollout of {version}")
    assert [r.number for r in fake_kube.rollout_history(PROD)] == [1, 2, 3]
    fake.requests.clear()
    assert fake_kube.rollout_undo(PROD, to_revision=3) == 3  # the current template: nothing sent
    assert fake_kube.last_undo == "skipped rollback (current template already matches revision 3)"
    assert patches(fake) == []
    assert fake_kube.rollout_undo(PROD, to_revision=1) == 1
    ((_, patch),) = patches(fake)
    assert patch[1]["value"] == {"deployment.kubernetes.io/revision": "3"}
    status = wait_for(lambda: fake_kube.rollout_status(PROD), lambda s: s.done and s.revision == 4, timeout=20,
                      interval=0.02, what="the undo to revision 1")
    assert status.images == {"proxy": OLD}
    history = fake_kube.rollout_history(PROD)
    assert [(r.number, r.change_cause) for r in history] == [(2, "to 1.3.0"), (3, "to 1.3.0-slow"), (4, "")]
    with pytest.raises(KubeError, match=r"unable to find specified revision 9 in history \(revisions: 2, 3, 4\)"):
        fake_kube.rollout_undo(PROD, to_revision=9)


def test_a_change_cause_comes_back_with_its_revision(fake_kube: KubeWorkloads) -> None:
    deploy(fake_kube, PROD)
    for version in ("1.3.0", "1.3.0-slow"):
        promote(fake_kube, version, cause=f"to {version}")
        wait_for(lambda: fake_kube.rollout_status(PROD),
                 lambda s, image=f"ronaldraygun/zai-proxy:{version}": s.done and s.images["proxy"] == image,
                 timeout=20, interval=0.02, what=f"the rollout of {version}")
    assert fake_kube.rollout_undo(PROD) == 2
    wait_for(lambda: fake_kube.rollout_status(PROD), lambda s: s.done and s.revision == 4, timeout=20,
             interval=0.02, what="the undo")
    assert [(r.number, r.change_cause) for r in fake_kube.rollout_history(PROD)] == [
        (1, ""), (3, "to 1.3.0-slow"), (4, "to 1.3.0")]


def test_a_new_pod_that_never_gets_ready_leaves_production_serving_and_undo_recovers(
        fake_kube: KubeWorkloads) -> None:
    """maxUnavailable 0: an image the node cannot pull keeps every old pod; rollout status says why."""
    deploy(fake_kube, PROD)
    old = fake_kube.endpoints(PROD)
    fake_kube.set_template(PROD, images={"proxy": "ronaldraygun/zai-proxy:9.9.9"})
    status = wait_for(lambda: fake_kube.rollout_status(PROD),
                      lambda s: s.revision == 2 and s.replicas == 4 and s.updated == 1, timeout=20, interval=0.02,
                      what="the surge pod")
    assert not status.done
    assert status.message == ('Waiting for deployment "zai-proxy" rollout to finish: 1 out of 3 new replicas have '
                              "been updated...")
    assert fake_kube.endpoints(PROD) == old  # the pod that cannot start is not an endpoint; none went
    assert fake_kube.rollout_undo(PROD) == 1
    back = wait_done(fake_kube, PROD)
    assert back.images == {"proxy": OLD} and back.revision == 3 and fake_kube.endpoints(PROD) == old


def test_set_template_refuses_an_unknown_container_and_sends_nothing(fake: FakeApiServer,
                                                                     fake_kube: KubeWorkloads) -> None:
    deploy(fake_kube, CANARY)
    fake.requests.clear()
    with pytest.raises(KubeError, match=r"unable to find container named 'app' \(has: proxy\)"):
        fake_kube.set_template(CANARY, images={"app": NEW})
    assert patches(fake) == []


def test_undo_without_history_is_kubectls_error(fake_kube: KubeWorkloads) -> None:
    deploy(fake_kube, CANARY)
    with pytest.raises(KubeError, match=r'no rollout history found for deployment "zai-proxy-test" '
                                        r"\(revisions: 1\)"):
        fake_kube.rollout_undo(CANARY)


def test_endpoints_are_the_ready_pods_and_a_missing_service_is_an_error(fake: FakeApiServer,
                                                                        fake_kube: KubeWorkloads) -> None:
    deploy(fake_kube, PROD, CANARY)
    prod, canary = fake_kube.pods_of(PROD), fake_kube.pods_of(CANARY)
    assert fake_kube.endpoints(CANARY) == [f"{canary[0].ip}:8080"]  # the selectors keep the variants apart
    assert len({p.ip for p in prod + canary}) == 4
    fake_kube.core.delete_namespaced_pod(prod[0].name, fake_kube.namespace, _preload_content=False)
    # at once: the terminating pod is neither a pod of the Deployment nor a ready endpoint
    assert prod[0].name not in {p.name for p in fake_kube.pods_of(PROD)}
    assert f"{prod[0].ip}:8080" not in fake_kube.endpoints(PROD)
    with pytest.raises(KubeError, match='services "nope" not found'):
        fake_kube.endpoints("nope")


def test_the_services_are_validated_as_the_api_server_does(fake_kube: KubeWorkloads) -> None:
    objects = canary_objects(fake_kube.namespace)
    svc = objects[("Service", PROD)]
    fake_kube.core.create_namespaced_service(fake_kube.namespace, svc, _preload_content=False)
    clash = copy.deepcopy(objects[("Service", CANARY)])
    clash["spec"]["ports"][0]["nodePort"] = 30180
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as err:
        fake_kube.core.create_namespaced_service(fake_kube.namespace, clash, _preload_content=False)
    assert "spec.ports[0].nodePort: Invalid value: 30180: provided port is already allocated" in str(err.value.body)
    clash["spec"]["ports"][0]["nodePort"] = 80
    with pytest.raises(ApiException) as err:
        fake_kube.core.create_namespaced_service(fake_kube.namespace, clash, _preload_content=False)
    assert "provided port is not in the valid range. The range of valid ports is 30000-32767" in str(err.value.body)
