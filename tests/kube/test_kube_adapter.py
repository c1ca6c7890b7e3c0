"""The kube workloads adapter against scripted answers over real HTTP on loopback (pytest-httpserver):
the exact requests it sends, and how it reads bodies it is given.

Nothing in the client is monkeypatched: the adapter loads a kubeconfig that points at the server
(tests/kube/conftest.py) and talks to it through the official ``kubernetes`` client, as it would to kind or
biscayne. API errors: test_kube_errors.py. Behaviour against a stateful API server (the mock, or a real
cluster): test_contract.py; exec and RBAC: test_fake_apiserver.py.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from runbook.adapters.base import Workloads
from runbook.adapters.kube import KubeWorkloads, container_statuses, exit_status
from runbook.errors import KubeError, WaitTimeout
from runbook.manifests import render_deployment
from tests.kube.fake_exec import ExecCall, ExecReply
from tests.kube.objects import (
    API,
    APPS,
    TOKEN,
    cstatus,
    deployment,
    items,
    pod,
    pod_spec,
    replicaset,
    requests_made,
    running,
    status,
    terminated,
    waiting,
)

pytest.importorskip("pytest_httpserver", reason="pytest-httpserver (a dev dependency) is absent")
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

DZ = "laconicnetwork/doublezero:v0.6.0"
DZ_NEW = "laconicnetwork/doublezero:v0.6.1"
AGAVE = "laconicnetwork/agave:v2.1.0"


def serve_pod_chain(server: HTTPServer, p: dict[str, Any], dep: dict[str, Any]) -> None:
    """The pod, its ReplicaSet and the owning Deployment, as the API server has them."""
    server.expect_request(f"{API}/pods/{p['metadata']['name']}", method="GET").respond_with_json(p)
    server.expect_request(f"{APPS}/replicasets/agave-green-5d9f", method="GET").respond_with_json(
        replicaset("agave-green-5d9f", dep["metadata"]["name"]))
    server.expect_request(f"{APPS}/deployments/{dep['metadata']['name']}", method="GET").respond_with_json(dep)


def test_the_adapter_implements_the_workloads_protocol(kube: KubeWorkloads) -> None:
    assert isinstance(kube, Workloads)


# --------------------------------------------------------------------------- patches


def test_sidecar_patch_sends_a_json_patch_to_the_pod(server: HTTPServer, kube: KubeWorkloads) -> None:
    p = pod("agave-green-5d9f-x7k2p")
    server.expect_request(f"{API}/pods/agave-green-5d9f-x7k2p", method="GET").respond_with_json(p)
    server.expect_request(f"{API}/pods/agave-green-5d9f-x7k2p", method="PATCH").respond_with_json(p)

    kube.patch_pod_container_image("agave-green-5d9f-x7k2p", "doublezerod", DZ_NEW)

    patch = [r for r in requests_made(server) if r.method == "PATCH"]
    assert len(patch) == 1
    assert patch[0].path == f"{API}/pods/agave-green-5d9f-x7k2p"
    assert patch[0].headers["Content-Type"] == "application/json-patch+json"
    assert patch[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(patch[0].get_data()) == [
        {"op": "replace", "path": "/spec/initContainers/0/image", "value": DZ_NEW}]
    server.check_assertions()


def test_app_container_patch_uses_the_containers_list(server: HTTPServer, kube: KubeWorkloads) -> None:
    spec = pod_spec()
    spec["containers"].insert(0, {"name": "log-shipper", "image": "busybox:1"})
    p = pod("agave-green-5d9f-x7k2p", spec=spec)
    server.expect_request(f"{API}/pods/agave-green-5d9f-x7k2p", method="GET").respond_with_json(p)
    server.expect_request(f"{API}/pods/agave-green-5d9f-x7k2p", method="PATCH").respond_with_json(p)

    kube.patch_pod_container_image("agave-green-5d9f-x7k2p", "agave-validator", "laconicnetwork/agave:v2.2.1")

    (patch,) = [r for r in requests_made(server) if r.method == "PATCH"]
    assert json.loads(patch.get_data()) == [
        {"op": "replace", "path": "/spec/containers/1/image", "value": "laconicnetwork/agave:v2.2.1"}]


def test_template_patch_goes_to_the_deployment(server: HTTPServer, kube: KubeWorkloads) -> None:
    dep = deployment("agave-green")
    server.expect_request(f"{APPS}/deployments/agave-green", method="GET").respond_with_json(dep)
    server.expect_request(f"{APPS}/deployments/agave-green", method="PATCH").respond_with_json(dep)

    kube.patch_template_container_image("agave-green", "doublezerod", DZ_NEW)

    (patch,) = [r for r in requests_made(server) if r.method == "PATCH"]
    assert patch.headers["Content-Type"] == "application/json-patch+json"
    assert json.loads(patch.get_data()) == [
        {"op": "replace", "path": "/spec/template/spec/initContainers/0/image", "value": DZ_NEW}]


def test_patching_an_unknown_container_names_the_ones_there(server: HTTPServer, kube: KubeWorkloads) -> None:
    server.expect_request(f"{API}/pods/p1", method="GET").respond_with_json(pod("p1"))
    with pytest.raises(KubeError) as err:
        kube.patch_pod_container_image("p1", "dz", DZ_NEW)
    assert "no container 'dz' (has: doublezerod, agave-validator)" in str(err.value)
    assert not [r for r in requests_made(server) if r.method == "PATCH"]


# --------------------------------------------------------------------------- statuses


def test_running_pod_status_with_sidecar_from_init_container_statuses(server: HTTPServer,
                                                                      kube: KubeWorkloads) -> None:
    p = pod("agave-green-5d9f-x7k2p",
            spec=pod_spec(sidecar_image=DZ_NEW),
            sidecar=cstatus("doublezerod", DZ_NEW, running("2026-01-01T00:05:00Z"), restarts=1,
                            image_id="docker.io/laconicnetwork/doublezero@sha256:bb"),
            app=cstatus("agave-validator", AGAVE, running("2026-01-01T00:00:00Z")))
    serve_pod_chain(server, p, deployment("agave-green"))

    info = kube.pod("agave-green-5d9f-x7k2p")

    assert info.deployment == "agave-green"
    assert info.phase == "Running"
    dz, agave = info.container("doublezerod"), info.container("agave-validator")
    assert (dz.kind, dz.state, dz.restart_count, dz.ready) == ("sidecar", "running", 1, True)
    assert dz.image == f"docker.io/{DZ_NEW}"
    assert dz.image_id == "docker.io/laconicnetwork/doublezero@sha256:bb"
    assert dz.started_at is not None and dz.started_at.isoformat() == "2026-01-01T00:05:00+00:00"
    assert (agave.kind, agave.state, agave.restart_count) == ("app", "running", 0)
    # patched in place: the pod runs a sidecar image its Deployment's template does not have
    assert info.spec_images == {"doublezerod": DZ_NEW, "agave-validator": AGAVE}
    assert info.template_images == {"doublezerod": DZ, "agave-validator": AGAVE}
    assert info.drift == {"doublezerod": (DZ, DZ_NEW)}


@pytest.mark.parametrize("reason", ["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull"])
def test_waiting_containers_carry_their_reason(server: HTTPServer, kube: KubeWorkloads, reason: str) -> None:
    p = pod("p1", phase="Running",
            sidecar=cstatus("doublezerod", DZ, waiting(reason), restarts=4, ready=False),
            app=cstatus("agave-validator", AGAVE, running()))
    serve_pod_chain(server, p, deployment("agave-green"))

    dz = kube.pod("p1").container("doublezerod")

    assert (dz.state, dz.reason, dz.ready, dz.restart_count, dz.started_at) == ("waiting", reason, False, 4, None)


@pytest.mark.parametrize(("reason", "code"), [("Completed", 0), ("Error", 1), ("OOMKilled", 137)])
def test_terminated_containers_carry_their_reason(server: HTTPServer, kube: KubeWorkloads, reason: str,
                                                  code: int) -> None:
    p = pod("p1", phase="Running", sidecar=cstatus("doublezerod", DZ, running()),
            app=cstatus("agave-validator", AGAVE, terminated(reason, code), ready=False))
    serve_pod_chain(server, p, deployment("agave-green"))

    agave = kube.pod("p1").container("agave-validator")

    assert (agave.state, agave.reason, agave.ready) == ("terminated", reason, False)
    assert agave.started_at is not None


def test_containers_without_status_yet_are_unknown_with_no_image_and_plain_init_containers_are_skipped() -> None:
    """Defect: a container with no status reported its spec image as the running image, so "runs the new
    image" could hold for a container that never started. The image is the status's, or none."""
    spec = pod_spec()
    spec["initContainers"].insert(0, {"name": "prepare", "image": "busybox:1"})  # run-to-completion
    statuses = container_statuses(pod("p1", phase="Pending", spec=spec))
    assert [(c.name, c.kind, c.state, c.image, c.image_id) for c in statuses] == [
        ("doublezerod", "sidecar", "unknown", "", ""), ("agave-validator", "app", "unknown", "", "")]


def test_pod_without_owner_references_falls_back_to_the_colour_label(server: HTTPServer,
                                                                     kube: KubeWorkloads) -> None:
    p = pod("p1", owner=None, colour="blue")
    server.expect_request(f"{API}/pods/p1", method="GET").respond_with_json(p)
    server.expect_request(f"{APPS}/deployments/agave-blue", method="GET").respond_with_json(
        deployment("agave-blue", colour="blue"))
    assert kube.pod("p1").deployment == "agave-blue"


# --------------------------------------------------------------------------- rollout, apply, delete, events


def test_wait_rollout_returns_the_ready_pod(server: HTTPServer, kube: KubeWorkloads) -> None:
    ready = pod("agave-green-5d9f-new", sidecar=cstatus("doublezerod", DZ, running()),
                app=cstatus("agave-validator", AGAVE, running()))
    old = pod("agave-green-5d9f-old", deleting=True)
    server.expect_request(f"{APPS}/deployments/agave-green", method="GET").respond_with_json(deployment("agave-green"))
    server.expect_request(f"{API}/pods", method="GET").respond_with_json(items(old, ready))

    info = kube.wait_rollout("agave-green", timeout=5)

    assert info.name == "agave-green-5d9f-new"
    (selector,) = {r.args["labelSelector"] for r in requests_made(server) if r.path == f"{API}/pods"}
    assert selector == "app.kubernetes.io/name=agave,runbook/colour=green"


def test_wait_rollout_times_out_with_the_last_state(server: HTTPServer, kube: KubeWorkloads) -> None:
    crashing = pod("agave-green-5d9f-x", sidecar=cstatus("doublezerod", DZ, running()),
                   app=cstatus("agave-validator", AGAVE, waiting("CrashLoopBackOff"), restarts=3, ready=False))
    server.expect_request(f"{APPS}/deployments/agave-green", method="GET").respond_with_json(
        deployment("agave-green", available=0))
    server.expect_request(f"{API}/pods", method="GET").respond_with_json(items(crashing))

    with pytest.raises(WaitTimeout) as err:
        kube.wait_rollout("agave-green", timeout=0.3)

    msg = str(err.value)
    assert "rollout of deployment agave-green" in msg
    assert "agave-validator=waiting:CrashLoopBackOff" in msg
    assert "available 0" in msg
    assert "env=kind" in msg


def test_apply_creates_a_missing_deployment_and_replaces_an_existing_one(server: HTTPServer,
                                                                         kube: KubeWorkloads) -> None:
    manifest = render_deployment(kube.env, "blue")
    missing = status(404, "NotFound", 'deployments.apps "agave-blue" not found')
    server.expect_oneshot_request(f"{APPS}/deployments/agave-blue", method="GET").respond_with_json(missing, 404)
    server.expect_request(f"{APPS}/deployments", method="POST").respond_with_json(manifest, 201)
    kube.apply_deployment(manifest)

    server.expect_request(f"{APPS}/deployments/agave-blue", method="GET").respond_with_json(
        deployment("agave-blue", colour="blue"))
    server.expect_request(f"{APPS}/deployments/agave-blue", method="PUT").respond_with_json(manifest)
    kube.apply_deployment(manifest)

    create, replace = [r for r in requests_made(server) if r.method in ("POST", "PUT")]
    assert create.path == f"{APPS}/deployments"
    assert json.loads(create.get_data())["metadata"]["name"] == "agave-blue"
    sent = json.loads(replace.get_data())
    assert sent["metadata"]["resourceVersion"] == "41"  # optimistic: a concurrent change gives 409
    assert sent["spec"]["template"]["spec"]["containers"][0]["args"][1] == "8897"


def test_delete_waits_until_the_deployment_and_its_pods_are_gone(server: HTTPServer,
                                                                  kube: KubeWorkloads) -> None:
    dep_gets = iter([deployment("agave-blue", colour="blue")] * 3)
    pod_lists = iter([items(pod("agave-blue-1", colour="blue", deleting=True))] * 2)

    def get_dep(_req: Request) -> Response:
        body = next(dep_gets, None)
        if body is None:
            return Response(json.dumps(status(404, "NotFound", "gone")), 404, content_type="application/json")
        return Response(json.dumps(body), 200, content_type="application/json")

    def list_pods(_req: Request) -> Response:
        return Response(json.dumps(next(pod_lists, items())), 200, content_type="application/json")

    server.expect_request(f"{APPS}/deployments/agave-blue", method="GET").respond_with_handler(get_dep)
    server.expect_request(f"{APPS}/deployments/agave-blue", method="DELETE").respond_with_json(status(200, "", ""))
    server.expect_request(f"{API}/pods", method="GET").respond_with_handler(list_pods)

    kube.delete_deployment("agave-blue")

    (delete,) = [r for r in requests_made(server) if r.method == "DELETE"]
    assert delete.args["propagationPolicy"] == "Foreground"
    assert len([r for r in requests_made(server) if r.path == f"{API}/pods"]) == 3


def test_deleting_an_absent_deployment_is_a_no_op(server: HTTPServer, kube: KubeWorkloads) -> None:
    server.expect_request(f"{APPS}/deployments/agave-blue", method="GET").respond_with_json(
        status(404, "NotFound", "not found"), 404)
    kube.delete_deployment("agave-blue")
    assert [r.method for r in requests_made(server)] == ["GET"]


def test_events_are_listed_for_the_pod_oldest_first(server: HTTPServer, kube: KubeWorkloads) -> None:
    server.expect_request(f"{API}/events", method="GET").respond_with_json(items(
        {"type": "Normal", "reason": "Pulled", "message": f'Container image "{DZ_NEW}" already present',
         "lastTimestamp": "2026-01-01T00:05:00Z", "count": 1},
        {"type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container",
         "lastTimestamp": "2026-01-01T00:01:00Z", "count": 3}))

    events = kube.events("p1")

    assert events == ["2026-01-01T00:01:00Z Warning BackOff: Back-off restarting failed container (x3)",
                      f'2026-01-01T00:05:00Z Normal Pulled: Container image "{DZ_NEW}" already present']
    (req,) = requests_made(server)
    assert req.args["fieldSelector"] == "involvedObject.name=p1"


def test_deployments_lists_names(server: HTTPServer, kube: KubeWorkloads) -> None:
    server.expect_request(f"{APPS}/deployments", method="GET").respond_with_json(
        items(deployment("agave-green"), deployment("agave-blue", colour="blue")))
    assert kube.deployments() == ["agave-blue", "agave-green"]


def test_owns_process_reads_the_hosts_listing_not_the_runners_proc(kube: KubeWorkloads) -> None:
    from runbook.adapters.base import ProcessInfo

    pod = "0::/kubepods.slice/kubepods-besteffort.slice/cri-containerd-0123.scope"
    assert kube.owns_process(ProcessInfo(pid=1, ppid=0, name="doublezerod", cmdline="doublezerod", cgroup=pod))
    host = "0::/system.slice/doublezerod.service"
    assert not kube.owns_process(ProcessInfo(pid=1, ppid=0, name="doublezerod", cmdline="doublezerod", cgroup=host))
    # a PID that happens to exist on the runner is irrelevant: only the listing counts
    assert not kube.owns_process(ProcessInfo(pid=os.getpid(), ppid=0, name="x", cmdline="x", cgroup=""))


# --------------------------------------------------------------------------- pods: missing, terminating


def test_the_pods_of_a_missing_deployment_are_none(server: HTTPServer, kube: KubeWorkloads) -> None:
    """Defect: the 404 of the Deployment's GET was raised as a KubeError; now it means no pods."""
    server.expect_request(f"{APPS}/deployments/agave-blue", method="GET").respond_with_json(
        status(404, "NotFound", 'deployments.apps "agave-blue" not found'), 404)
    assert kube.pods("agave-blue") == []
    assert [r.path for r in requests_made(server)] == [f"{APPS}/deployments/agave-blue"]  # no pod list


def test_a_terminating_pod_is_not_offered_as_the_deployments_pod(server: HTTPServer, kube: KubeWorkloads) -> None:
    """Defect: pods() listed a pod with deletionTimestamp (its containers still running) as the Deployment's."""
    old = pod("agave-green-5d9f-old", deleting=True, sidecar=cstatus("doublezerod", DZ, running()),
              app=cstatus("agave-validator", AGAVE, running()))
    new = pod("agave-green-5d9f-new", phase="Pending")
    server.expect_request(f"{APPS}/deployments/agave-green", method="GET").respond_with_json(deployment("agave-green"))
    server.expect_request(f"{API}/pods", method="GET").respond_with_json(items(old, new))
    server.expect_request(f"{API}/pods/agave-green-5d9f-old", method="GET").respond_with_json(old)
    server.expect_request(f"{APPS}/replicasets/agave-green-5d9f").respond_with_json(
        replicaset("agave-green-5d9f", "agave-green"))

    assert [p.name for p in kube.pods("agave-green")] == ["agave-green-5d9f-new"]
    assert kube.pod("agave-green-5d9f-old").phase == "Terminating"


def test_wait_rollout_is_not_satisfied_by_a_terminating_pod(server: HTTPServer, kube: KubeWorkloads) -> None:
    """The Deployment's status still counts the old pod (ready, running) while it terminates: not rolled out."""
    old = pod("agave-green-5d9f-old", deleting=True, sidecar=cstatus("doublezerod", DZ, running()),
              app=cstatus("agave-validator", AGAVE, running()))
    server.expect_request(f"{APPS}/deployments/agave-green", method="GET").respond_with_json(deployment("agave-green"))
    server.expect_request(f"{API}/pods", method="GET").respond_with_json(items(old))
    with pytest.raises(WaitTimeout, match="no pods"):
        kube.wait_rollout("agave-green", timeout=0.3)


# --------------------------------------------------------------------------- exec


def test_exit_status_parsing() -> None:
    call = ExecCall("agave", "p1", "c", ("x",))
    assert exit_status('{"metadata":{},"status":"Success"}') == (0, "")
    assert exit_status("") == (-1, "the exec ended without a status (connection lost?)")
    assert exit_status(json.dumps(ExecReply(exit_code=42).status(call)))[0] == 42
    rc, message = exit_status(json.dumps(ExecReply(exit_code=None, start_error="boom").status(call)))
    assert rc == -1 and "boom" in message
