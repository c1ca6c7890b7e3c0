"""The kube adapter's contract: one set of tests, run against the Kubernetes API mock server and, when
``KUBECONFIG`` is set, against that real cluster in a throwaway namespace (tests/kube/contract.py).

What passes here against the mock must pass against kind or biscayne's API server: the same requests,
the same answers. Where a test names a defect, it failed against the adapter's previous behaviour.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client as k8s

from runbook.adapters.base import PodInfo
from runbook.errors import KubeError, WaitTimeout
from runbook.wait import wait_for
from tests.kube.contract import Target, contract_deployment, raw, send
from tests.kube.fake_state import qualify

SIDECAR, APP = "doublezerod", "agave-validator"
DIGEST = re.compile(r"(^|@|://)sha256:[0-9a-f]{64}$")


@pytest.fixture
def dep(target: Target, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Deployment name of this test's own; whatever it left is deleted afterwards."""
    name = "c-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:8]
    yield name
    target.kube.delete_deployment(name, wait=False)


def rolled_out(t: Target, name: str) -> PodInfo:
    t.kube.apply_deployment(contract_deployment(t, name))
    return t.kube.wait_rollout(name, timeout=t.timeout)


def node_image_names(t: Target, reference: str) -> set[str]:
    """Every name the node's image store has for the image ``reference`` names."""
    for node in raw(t.core.list_node).get("items") or []:
        for img in (node.get("status") or {}).get("images") or []:
            if qualify(reference) in (img.get("names") or []):
                return set(img["names"])
    return set()


def raw_pods(t: Target, name: str) -> dict[str, bool]:
    """The Deployment's pods as the API lists them: name -> terminating (deletionTimestamp set)."""
    data = raw(t.core.list_namespaced_pod, t.namespace, label_selector=f"app.kubernetes.io/name={name}")
    return {p["metadata"]["name"]: bool(p["metadata"].get("deletionTimestamp")) for p in data["items"]}


def status_body(exc: k8s.ApiException) -> dict[str, object]:
    body = json.loads(exc.body or "{}")
    assert isinstance(body, dict)
    return body


# --------------------------------------------------------------------------- pods and statuses


def test_the_pods_of_a_missing_deployment_are_none(target: Target) -> None:
    """Defect: pods() of a Deployment that does not exist raised a 404 KubeError; steps ask before creating
    it and after deleting it."""
    assert target.kube.pods("never-created") == []


def test_the_live_deployment_object_or_none(target: Target, dep: str) -> None:
    """The baseline saves green's live object before anything touches it: read from the API, None if absent."""
    assert target.kube.deployment("never-created") is None
    target.kube.apply_deployment(contract_deployment(target, dep))
    live = target.kube.deployment(dep)
    assert live is not None and live["metadata"]["name"] == dep and "template" in live["spec"]


def test_a_rolled_out_pod_reports_its_containers_as_the_api_does(target: Target, dep: str) -> None:
    t = target
    pod = rolled_out(t, dep)

    assert (pod.deployment, pod.phase) == (dep, "Running")
    assert [(c.name, c.kind) for c in pod.containers] == [(SIDECAR, "sidecar"), (APP, "app")]
    assert pod.spec_images == pod.template_images == {SIDECAR: t.images.sidecar, APP: t.images.app}
    assert pod.drift == {}
    for c, spec in ((pod.container(SIDECAR), t.images.sidecar), (pod.container(APP), t.images.app)):
        assert (c.state, c.ready, c.restart_count) == ("running", True, 0)
        assert c.started_at is not None and c.started_at.tzinfo is not None
        # containerd names the image by its first repo tag, fully qualified, and gives a content digest
        assert c.image == qualify(c.image) and c.image in node_image_names(t, spec), c.image
        assert DIGEST.search(c.image_id), c.image_id
    assert [p.name for p in t.kube.pods(dep)] == [pod.name]
    assert t.kube.pod(pod.name) == pod


def test_events_tell_what_the_kubelet_did(target: Target, dep: str) -> None:
    pod = rolled_out(target, dep)
    events = target.kube.events(pod.name)
    assert any(" Normal Scheduled: " in e for e in events), events
    assert any(f" Normal Started: Started container {APP}" in e for e in events), events


# --------------------------------------------------------------------------- exec


def test_exec_returns_output_and_the_exit_code(target: Target, dep: str) -> None:
    pod = rolled_out(target, dep)
    ok = target.kube.exec(pod.name, APP, ["sh", "-c", 'echo "$HOSTNAME"'], timeout=30)
    assert (ok.rc, ok.stdout, ok.stderr) == (0, f"{pod.name}\n", "")
    failed = target.kube.exec(pod.name, SIDECAR, ["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (failed.rc, failed.stdout, failed.stderr, failed.ok) == (3, "out\n", "err\n", False)
    missing = target.kube.exec(pod.name, APP, ["no-such-program"], timeout=30)
    assert missing.rc == -1
    assert 'exec: "no-such-program": executable file not found in $PATH' in missing.stderr


def test_an_exec_that_does_not_end_is_cut_at_its_deadline(target: Target, dep: str) -> None:
    """Defect: exec had no deadline over the whole call (see test_fake_apiserver for a hung upgrade)."""
    pod = rolled_out(target, dep)
    start = time.monotonic()
    with pytest.raises(KubeError) as err:
        target.kube.exec(pod.name, APP, ["sleep", "60"], timeout=2)
    took = time.monotonic() - start
    assert 2 <= took < 4, took
    assert str(err.value) == (
        f"exec `sleep 60` in container {APP} of pod/{pod.name} in namespace {target.namespace}: cut at its 2s "
        "deadline (waiting for the command to end); the command may still be running in the container "
        f"[env=kind, object=pod/{pod.name}]")


def test_exec_in_a_missing_pod_is_a_not_found_error(target: Target) -> None:
    with pytest.raises(KubeError) as err:
        target.kube.exec("no-such-pod", APP, ["true"], timeout=30)
    assert f"exec `true` in container {APP} of pod/no-such-pod in namespace {target.namespace}: not found (404): " \
           'pods "no-such-pod" not found' in str(err.value)


# --------------------------------------------------------------------------- patches


def test_patching_the_sidecar_image_restarts_only_the_sidecar(target: Target, dep: str) -> None:
    t = target
    before = rolled_out(t, dep)
    dz, agave = before.container(SIDECAR), before.container(APP)
    started = dz.started_at
    assert started is not None
    # startedAt has whole seconds: patch in a later second than the sidecar started, or a restart is invisible
    wait_for(lambda: datetime.now(UTC), lambda now: now >= started + timedelta(seconds=1.1), timeout=3,
             interval=0.05, what="the next second")

    t.kube.patch_pod_container_image(before.name, SIDECAR, t.images.sidecar_new)

    after = wait_for(lambda: t.kube.pod(before.name),
                     lambda p: p.container(SIDECAR).restart_count == dz.restart_count + 1
                     and p.container(SIDECAR).state == "running" and p.container(SIDECAR).ready,
                     timeout=t.timeout, interval=0.1, what="the sidecar to restart on its new image")
    dz2, agave2 = after.container(SIDECAR), after.container(APP)
    assert dz2.image in node_image_names(t, t.images.sidecar_new), dz2.image
    assert dz2.image_id != dz.image_id and DIGEST.search(dz2.image_id)
    assert dz2.started_at is not None and dz2.started_at > started
    assert (agave2.restart_count, agave2.started_at, agave2.image_id, agave2.state) == (
        agave.restart_count, agave.started_at, agave.image_id, "running")
    assert after.spec_images[SIDECAR] == t.images.sidecar_new
    assert after.drift == {SIDECAR: (t.images.sidecar, t.images.sidecar_new)}
    assert [p.name for p in t.kube.pods(dep)] == [before.name]


def test_a_template_change_replaces_the_pod_and_a_terminating_pod_is_never_offered(target: Target,
                                                                                   dep: str) -> None:
    """Defect: pods() offered a terminating pod (deletionTimestamp set) as one of the Deployment's pods."""
    t = target
    old = rolled_out(t, dep)
    t.kube.patch_template_container_image(dep, SIDECAR, t.images.sidecar_new)

    seen: list[tuple[dict[str, bool], list[str]]] = []

    def observe() -> list[PodInfo]:
        listed = raw_pods(t, dep)  # first: a pod terminating here is still terminating (or gone) below
        offered = t.kube.pods(dep)
        seen.append((listed, [p.name for p in offered]))
        return offered

    wait_for(observe, lambda ps: any(p.name != old.name and p.containers and all(c.ready for c in p.containers)
                                     for p in ps), timeout=t.timeout, interval=0.05, what="the new pod")
    for listed, offered in seen:
        assert not [n for n in offered if listed.get(n)], (listed, offered)
    new = t.kube.wait_rollout(dep, timeout=t.timeout)
    assert new.name != old.name
    assert new.spec_images[SIDECAR] == new.template_images[SIDECAR] == t.images.sidecar_new
    assert new.container(SIDECAR).restart_count == 0 and new.drift == {}


def test_pod_updates_other_than_images_are_rejected_as_the_api_server_does(target: Target, dep: str) -> None:
    t = target
    pod = rolled_out(t, dep)
    with pytest.raises(k8s.ApiException) as err:
        t.core.patch_namespaced_pod(pod.name, t.namespace,
                                    [{"op": "replace", "path": "/spec/containers/0/command", "value": ["sleep", "1"]}],
                                    _content_type="application/json-patch+json")
    body = status_body(err.value)
    assert err.value.status == 422
    assert {k: body[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422}
    assert str(body["message"]).startswith(
        f'Pod "{pod.name}" is invalid: spec: Forbidden: pod updates may not change fields other than '
        "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"), body["message"]
    details = body["details"]
    assert isinstance(details, dict) and (details["name"], details["kind"]) == (pod.name, "Pod")
    assert details["causes"][0]["field"] == "spec" and details["causes"][0]["reason"] == "FieldValueForbidden"

    toleration = {"key": "runbook/contract", "operator": "Exists", "effect": "NoSchedule"}
    t.core.patch_namespaced_pod(pod.name, t.namespace, [{"op": "add", "path": "/spec/tolerations/-",
                                                         "value": toleration}],
                                _content_type="application/json-patch+json")  # an addition is allowed
    with pytest.raises(k8s.ApiException) as removal:
        t.core.patch_namespaced_pod(pod.name, t.namespace, [{"op": "remove", "path": "/spec/tolerations/0"}],
                                    _content_type="application/json-patch+json")
    assert removal.value.status == 422 and status_body(removal.value)["reason"] == "Invalid"
    assert "spec.tolerations: Forbidden" in str(status_body(removal.value)["message"])


# --------------------------------------------------------------------------- errors


def test_error_bodies_are_statuses_as_the_api_server_sends_them(target: Target, dep: str) -> None:
    t = target
    with pytest.raises(k8s.ApiException) as missing:
        t.core.read_namespaced_pod("no-such-pod", t.namespace)
    assert status_body(missing.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "no-such-pod" not found', "reason": "NotFound",
        "details": {"name": "no-such-pod", "kind": "pods"}, "code": 404}
    with pytest.raises(KubeError, match=r'get pod/no-such-pod in namespace \S+: not found \(404\): pods "no-such-pod" '
                                        "not found"):
        t.kube.pod("no-such-pod")

    manifest = contract_deployment(t, dep)
    send(t.apps.create_namespaced_deployment, t.namespace, manifest)
    with pytest.raises(k8s.ApiException) as exists:
        send(t.apps.create_namespaced_deployment, t.namespace, manifest)
    assert status_body(exists.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'deployments.apps "{dep}" already exists', "reason": "AlreadyExists",
        "details": {"name": dep, "group": "apps", "kind": "deployments"}, "code": 409}

    live = raw(t.apps.read_namespaced_deployment, dep, t.namespace)
    stale = json.loads(json.dumps(live))
    live["metadata"].setdefault("labels", {})["runbook/touched"] = "yes"
    send(t.apps.replace_namespaced_deployment, dep, t.namespace, live)
    with pytest.raises(k8s.ApiException) as conflict:
        send(t.apps.replace_namespaced_deployment, dep, t.namespace, stale)
    assert status_body(conflict.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'Operation cannot be fulfilled on deployments.apps "{dep}": the object has been modified; '
                   "please apply your changes to the latest version and try again",
        "reason": "Conflict", "details": {"name": dep, "group": "apps", "kind": "deployments"}, "code": 409}


def test_deployment_validation_errors_name_the_field(target: Target, dep: str) -> None:
    t = target
    manifest = contract_deployment(t, dep)
    manifest["spec"]["template"]["metadata"]["labels"] = {"app.kubernetes.io/name": "other"}
    with pytest.raises(k8s.ApiException) as mismatch:
        send(t.apps.create_namespaced_deployment, t.namespace, manifest)
    body = status_body(mismatch.value)
    assert (mismatch.value.status, body["reason"]) == (422, "Invalid")
    assert str(body["message"]).startswith(
        f'Deployment.apps "{dep}" is invalid: spec.template.metadata.labels: Invalid value: '), body["message"]
    assert "`selector` does not match template `labels`" in str(body["message"])

    t.kube.apply_deployment(contract_deployment(t, dep))
    changed = contract_deployment(t, dep)
    for labels in (changed["spec"]["selector"]["matchLabels"], changed["spec"]["template"]["metadata"]["labels"]):
        labels["runbook/extra"] = "yes"
    with pytest.raises(KubeError) as immutable:
        t.kube.apply_deployment(changed)
    assert f"replace deployment/{dep} in namespace {t.namespace}: rejected as invalid (422): " \
           f'Deployment.apps "{dep}" is invalid: spec.selector: Invalid value: ' in str(immutable.value)
    assert "field is immutable" in str(immutable.value)


# --------------------------------------------------------------------------- deletion


def test_foreground_deletion_keeps_the_deployment_until_its_pods_are_gone(target: Target, dep: str) -> None:
    t = target
    pod = rolled_out(t, dep)
    t.apps.delete_namespaced_deployment(dep, t.namespace, propagation_policy="Foreground")
    live = raw(t.apps.read_namespaced_deployment, dep, t.namespace)
    assert live["metadata"].get("deletionTimestamp") and "foregroundDeletion" in live["metadata"]["finalizers"]
    wait_for(lambda: t.kube.pods(dep), lambda pods: not pods, timeout=t.timeout, interval=0.05,
             what="its pod to be terminating")  # the garbage collector gets to it asynchronously
    wait_for(lambda: raw_pods(t, dep), lambda raw: not raw, timeout=t.timeout, interval=0.1,
             what=f"pod {pod.name} to be gone")
    wait_for(lambda: dep in t.kube.deployments(), lambda present: not present, timeout=t.timeout, interval=0.1,
             what=f"deployment {dep} to be gone")


def test_a_deleted_pod_is_terminating_before_it_is_gone(target: Target, dep: str) -> None:
    """Defect: a terminating pod showed as Running."""
    t = target
    pod = rolled_out(t, dep)
    t.core.delete_namespaced_pod(pod.name, t.namespace)

    assert raw_pods(t, dep).get(pod.name) is True  # still listed, with deletionTimestamp
    assert t.kube.pod(pod.name).phase == "Terminating"
    assert pod.name not in [p.name for p in t.kube.pods(dep)]
    wait_for(lambda: raw_pods(t, dep), lambda raw: pod.name not in raw, timeout=t.timeout, interval=0.1,
             what=f"pod {pod.name} to be gone")


def test_delete_deployment_waits_until_its_pods_are_gone(target: Target, dep: str) -> None:
    t = target
    rolled_out(t, dep)
    t.kube.delete_deployment(dep)
    assert raw_pods(t, dep) == {}
    assert dep not in t.kube.deployments()
    assert t.kube.pods(dep) == []
    t.kube.delete_deployment(dep)  # a re-run converges


# --------------------------------------------------------------------------- failing pods


def test_a_crash_looping_container_carries_its_reason_and_restart_count(target: Target, dep: str) -> None:
    t = target
    t.kube.apply_deployment(contract_deployment(t, dep, app_command=["false"]))
    pods = wait_for(lambda: t.kube.pods(dep),
                    lambda ps: bool(ps) and ps[0].container(APP).restart_count >= 1
                    and ps[0].container(APP).reason in ("CrashLoopBackOff", "Error"),
                    timeout=t.timeout, interval=0.1, what="the app container to crash-loop")
    assert not pods[0].container(APP).ready
    with pytest.raises(WaitTimeout) as err:
        t.kube.wait_rollout(dep, timeout=1)
    assert f"rollout of deployment {dep}" in str(err.value) and f"{APP}=" in str(err.value)


def test_an_image_the_node_lacks_is_an_image_pull_error(target: Target, dep: str) -> None:
    t = target
    t.kube.apply_deployment(contract_deployment(t, dep, app="runbook/not-built:v0"))
    pods = wait_for(lambda: t.kube.pods(dep),
                    lambda ps: bool(ps) and ps[0].container(APP).reason in ("ErrImagePull", "ImagePullBackOff"),
                    timeout=t.timeout, interval=0.1, what="the image pull to fail")
    app = pods[0].container(APP)
    assert (app.state, app.ready, app.image_id) == ("waiting", False, "")
    assert pods[0].container(SIDECAR).state == "running"  # the sidecar's image is there: it runs


# --------------------------------------------------------------------------- discovery


def test_the_dynamic_client_discovers_the_resources(target: Target, dep: str, tmp_path: Path) -> None:
    from kubernetes.dynamic import DynamicClient

    t = target
    rolled_out(t, dep)
    dyn = DynamicClient(t.kube.api_client, cache_file=str(tmp_path / "discovery.json"))
    assert dyn.version["kubernetes"]["major"] == "1"
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert (deployments.name, deployments.namespaced) == ("deployments", True)
    listed = deployments.get(namespace=t.namespace)
    assert dep in [d.metadata.name for d in listed.items]
    pods = dyn.resources.get(api_version="v1", kind="Pod")
    assert {"get", "list", "patch", "delete"} <= set(pods.verbs)
