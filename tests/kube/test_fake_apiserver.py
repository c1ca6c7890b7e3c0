"""What only the mock API server can show: the exec protocol frame by frame, an API server that never
answers an upgrade, exact timing windows (a long grace period), containerd's first-repo-tag rule, and the
requests the adapter makes (the RBAC Role grants exactly those). The rest runs against a real cluster too:
test_contract.py."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from pathlib import Path

import pytest
import websocket
import yaml
from kubernetes.stream import stream

from runbook.adapters.kube import KubeWorkloads
from runbook.adapters.kube_exec import exec_request
from runbook.errors import KubeError, WaitTimeout
from runbook.manifests import render_deployment
from runbook.wait import wait_for
from tests.kube.contract import Images, create_namespace, deployment_manifest, kind_testbed_images
from tests.kube.fake_apiserver import TOKEN, FakeApiServer
from tests.kube.fake_cluster import FakeCluster
from tests.kube.fake_exec import ExecCall, ExecReply
from tests.kube.fake_state import ImageStore
from tests.kube.objects import make_env, write_kubeconfig
from tests.kube.test_kube_rollouts import canary_objects

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Images.of_kind_testbed()
APP, SIDECAR = "agave-validator", "doublezerod"


def deploy(kube: KubeWorkloads, name: str = "web", *, app: str | None = None) -> str:
    """The Deployment's pod, once every container runs (once the app is waiting, for an app image the node
    lacks)."""
    assert kube.env.kube is not None
    kube.apply_deployment(deployment_manifest(name, kube.env.kube.namespace, IMAGES, app=app))
    if app is None:
        return kube.wait_rollout(name, timeout=10).name
    pods = wait_for(lambda: kube.pods(name), lambda ps: bool(ps) and ps[0].container(APP).state == "waiting",
                    timeout=10, interval=0.02, what="the app to wait")
    return pods[0].name


def adapter_on(server: FakeApiServer, tmp_path: Path, namespace: str = "t") -> KubeWorkloads:
    kube = KubeWorkloads(make_env(write_kubeconfig(tmp_path / "kubeconfig", server.url), namespace=namespace),
                         request_timeout=5.0, poll_interval=0.02)
    create_namespace(kube.core, namespace)
    return kube


# --------------------------------------------------------------------------- exec


def test_an_exec_whose_upgrade_is_never_answered_is_cut_at_its_deadline(fake: FakeApiServer,
                                                                        fake_kube: KubeWorkloads) -> None:
    """Defect: the client's ``stream()`` opens the WebSocket without a socket timeout, so an API server that
    accepts the connection and never answers the upgrade hung the exec for ever, whatever its timeout."""
    pod = deploy(fake_kube)
    fake.stall_exec = True
    assert fake_kube.env.kube is not None
    namespace = fake_kube.env.kube.namespace

    old_shape_done = threading.Event()

    def old_shape() -> None:  # what the adapter did before: stream() with _request_timeout=1
        with contextlib.suppress(Exception):  # whatever it raises once the server lets go
            stream(fake_kube.core.connect_get_namespaced_pod_exec, pod, namespace, container=APP, command=["true"],
                   stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False, _request_timeout=1)
        old_shape_done.set()

    threading.Thread(target=old_shape, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KubeError) as err:
        fake_kube.exec(pod, APP, ["true"], timeout=1)
    took = time.monotonic() - start
    assert 1 <= took < 2, took
    assert str(err.value) == (
        f"exec `true` in container {APP} of pod/{pod} in namespace {namespace}: cut at its 1s deadline (waiting "
        f"for the API server to accept the exec); the command may still be running in the container "
        f"[env=kind, object=pod/{pod}]")
    assert not old_shape_done.wait(1.5), "the old exec returned within 2.5s of its 1s timeout"


def test_exec_offers_v5_then_v4_and_reads_the_status_channel(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    pod = deploy(fake_kube)
    fake.exec_runner = lambda call, _gone: ExecReply(stdout="DoubleZero 0.6.1\n") \
        if call.argv == ("doublezero", "--version") else ExecReply(exit_code=2, stderr="usage\n")

    result = fake_kube.exec(pod, SIDECAR, ["doublezero", "--version"], timeout=5)

    assert (result.rc, result.stdout, result.command) == (0, "DoubleZero 0.6.1\n", "doublezero --version")
    (req,) = [r for r in fake.requests if r.path.endswith("/exec")]
    assert req.path == f"/api/v1/namespaces/{fake_kube.namespace}/pods/{pod}/exec"
    assert req.query["container"] == [SIDECAR] and req.query["command"] == ["doublezero", "--version"]
    assert (req.query["stdout"], req.query["stderr"], req.query["stdin"]) == (["true"], ["true"], ["false"])
    assert req.headers["sec-websocket-protocol"] == "v5.channel.k8s.io,v4.channel.k8s.io"
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert fake_kube.exec(pod, SIDECAR, ["doublezero", "nope"], timeout=5).rc == 2


@pytest.mark.parametrize(("offered", "chosen"), [(["v5.channel.k8s.io", "v4.channel.k8s.io"], "v5.channel.k8s.io"),
                                                 (["v4.channel.k8s.io"], "v4.channel.k8s.io")])
def test_the_server_picks_the_first_protocol_it_speaks_and_frames_by_channel(
        fake: FakeApiServer, fake_kube: KubeWorkloads, offered: list[str], chosen: str) -> None:
    pod = deploy(fake_kube)
    url, headers = exec_request(fake_kube.api_client, fake_kube.namespace, pod, APP,
                                ["sh", "-c", "echo out; echo err >&2; exit 4"])
    ws = websocket.create_connection(url, header=[f"authorization: {headers['authorization']}"],
                                     subprotocols=offered, timeout=5)
    frames = []
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        frames.append((frame.data[0], frame.data[1:].decode()))
    ws.close()
    assert ws.getsubprotocol() == chosen
    assert frames[0] == (1, "")  # the "connected" message on stdout
    assert (1, "out\n") in frames and (2, "err\n") in frames
    status = json.loads(next(text for ch, text in frames if ch == 3))
    assert status == {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                      "message": "command terminated with non-zero exit code: exit status 4",
                      "details": {"causes": [{"reason": "ExitCode", "message": "4"}]}}


def test_an_exec_the_server_refuses_is_an_http_error_with_a_status_body(fake: FakeApiServer,
                                                                        fake_kube: KubeWorkloads) -> None:
    pod = deploy(fake_kube, app="runbook/not-built:v0")  # the app never runs: only the sidecar
    url, headers = exec_request(fake_kube.api_client, fake_kube.namespace, pod, APP, ["true"])
    with pytest.raises(websocket.WebSocketBadStatusException) as old_protocol:
        websocket.create_connection(url, header=[f"authorization: {headers['authorization']}"],
                                    subprotocols=["channel.k8s.io"], timeout=5)
    assert old_protocol.value.status_code == 400
    with pytest.raises(KubeError) as err:
        fake_kube.exec(pod, APP, ["true"], timeout=5)
    assert f"exec `true` in container {APP} of pod/{pod} in namespace {fake_kube.namespace}: the API server " \
           f'answered 400 Bad Request: unable to upgrade connection: container not found ("{APP}")' in str(err.value)


# --------------------------------------------------------------------------- timing windows


def test_during_a_long_grace_period_the_old_pod_is_never_the_running_one(tmp_path: Path) -> None:
    """Recreate with a pod that takes its time to stop: for the whole window pods() is empty and
    wait_rollout is not satisfied, though the old pod's containers run and the Deployment's last status
    still counts it."""
    server = FakeApiServer(FakeCluster(images=kind_testbed_images(), grace=1.5))
    try:
        kube = adapter_on(server, tmp_path)
        old = deploy(kube)
        kube.patch_template_container_image("web", SIDECAR, IMAGES.sidecar_new)
        wait_for(lambda: kube.pod(old).phase, lambda phase: phase == "Terminating", timeout=5, interval=0.02,
                 what="the controller to stop the old pod")
        assert all(c.state == "running" for c in kube.pod(old).containers)
        assert kube.pods("web") == []
        with pytest.raises(WaitTimeout):
            kube.wait_rollout("web", timeout=0.5)
        new = kube.wait_rollout("web", timeout=10)
        assert new.name != old
    finally:
        server.stop()


# --------------------------------------------------------------------------- CRI naming


def test_the_status_image_is_the_images_first_repo_tag(tmp_path: Path) -> None:
    """containerd reports the first repo tag of the image, whatever name the spec used (design trap 11)."""
    store = ImageStore()
    store.add("runbook/doublezero-standin:v0.6.0", IMAGES.sidecar)
    store.add(IMAGES.app)
    server = FakeApiServer(FakeCluster(images=store))
    try:
        kube = adapter_on(server, tmp_path)
        pod = kube.pod(deploy(kube))
        assert pod.spec_images[SIDECAR] == "laconicnetwork/doublezero:v0.6.0"
        assert pod.container(SIDECAR).image == "docker.io/runbook/doublezero-standin:v0.6.0"
        assert pod.container(APP).image == "docker.io/laconicnetwork/agave:v2.1.0"
    finally:
        server.stop()


# --------------------------------------------------------------------------- authentication, RBAC


def test_a_request_without_the_token_is_unauthorized(fake: FakeApiServer, tmp_path: Path) -> None:
    env = make_env(write_kubeconfig(tmp_path / "kubeconfig", fake.url, token="wrong"))
    with pytest.raises(KubeError) as err:
        KubeWorkloads(env).deployments()
    assert "(401 Unauthorized): Unauthorized; refresh the kubeconfig" in str(err.value)


def _verb(method: str, path: str) -> tuple[str, str, str]:
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[parts.index("namespaces") + 2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {"GET": "get" if named else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}[method]
    return group, resource, verb


def _stale_read(kube: KubeWorkloads, fake: FakeApiServer, change: str) -> None:
    """Make the adapter's next read of a Deployment stale: right after it, someone writes the object (the
    controller's status, or another client's spec)."""
    real = kube._find_deployment

    def read_then_write(name: str) -> dict | None:
        seen = real(name)
        if seen is not None and not getattr(read_then_write, "done", False):
            read_then_write.done = True  # type: ignore[attr-defined]
            with fake.cluster.lock:
                obj = copy.deepcopy(fake.cluster.get("deployments", kube.namespace, name))
                if change == "spec":
                    obj["spec"]["replicas"] = 3
                fake.cluster.replace("deployments", kube.namespace, name, obj)
        return seen

    kube._find_deployment = read_then_write  # type: ignore[method-assign]


def test_a_replace_that_races_a_status_write_is_retried(fake: FakeApiServer, tmp_path: Path) -> None:
    kube = adapter_on(fake, tmp_path, namespace="agave")
    kube.apply_deployment(render_deployment(kube.env, "green", image=IMAGES.app))
    _stale_read(kube, fake, "status")
    kube.apply_deployment(render_deployment(kube.env, "green", image=IMAGES.sidecar_new))
    dep = fake.cluster.get("deployments", "agave", "agave-green")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES.sidecar_new


def test_a_replace_that_races_another_clients_spec_change_is_refused(fake: FakeApiServer,
                                                                     tmp_path: Path) -> None:
    kube = adapter_on(fake, tmp_path, namespace="agave")
    kube.apply_deployment(render_deployment(kube.env, "green", image=IMAGES.app))
    _stale_read(kube, fake, "spec")
    with pytest.raises(KubeError, match=r"conflict \(409\)") as err:
        kube.apply_deployment(render_deployment(kube.env, "green", image=IMAGES.sidecar_new))
    assert err.value.status == 409
    assert fake.cluster.get("deployments", "agave", "agave-green")["spec"]["replicas"] == 3


def test_the_role_grants_exactly_the_verbs_the_adapter_uses(fake: FakeApiServer, tmp_path: Path) -> None:
    kube = adapter_on(fake, tmp_path, namespace="agave")
    fake.exec_runner = lambda _call, _gone: ExecReply(stdout="DoubleZero 0.6.1\n")
    canary = canary_objects("agave")
    kube.core.create_namespaced_service("agave", canary[("Service", "zai-proxy")], _preload_content=False)
    fake.requests.clear()

    kube.apply_deployment(render_deployment(kube.env, "green", image=IMAGES.app))  # create
    kube.apply_deployment(render_deployment(kube.env, "green", image=IMAGES.app))  # replace
    kube.deployments()
    kube.daemonsets()
    pod = kube.wait_rollout("agave-green", timeout=10)
    kube.pods("agave-green")
    kube.pods("agave-blue")
    kube.pod(pod.name)
    kube.exec(pod.name, SIDECAR, ["doublezero", "--version"])
    kube.patch_pod_container_image(pod.name, SIDECAR, IMAGES.sidecar_new)
    kube.patch_template_container_image("agave-green", SIDECAR, IMAGES.sidecar_new)
    kube.events(pod.name)
    kube.delete_deployment("agave-green")
    kube.apply_deployment(canary[("Deployment", "zai-proxy")])  # the canary promotion's verbs (Rollouts)
    wait_for(lambda: kube.rollout_status("zai-proxy"), lambda s: s.done and s.revision == 1, timeout=10,
             interval=0.02, what="the production rollout")
    kube.set_template("zai-proxy", images={"proxy": "ronaldraygun/zai-proxy:1.3.0"}, change_cause="promote")
    wait_for(lambda: kube.rollout_status("zai-proxy"), lambda s: s.done and s.revision == 2, timeout=10,
             interval=0.02, what="the promotion")
    kube.rollout_history("zai-proxy")
    kube.endpoints("zai-proxy")
    kube.pods_of("zai-proxy")
    kube.rollout_undo("zai-proxy")
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "meta-release", "labels": {"app": "meta"}},
              "data": {"state.json": "{}"}}
    kube.apply_object(config)  # the Objects port (seed 003's release): create, replace, get, list, delete
    kube.apply_object(config)
    kube.get_object("ConfigMap", "meta-release")
    kube.list_objects("ConfigMap", "app=meta")
    kube.delete_object("ConfigMap", "meta-release")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "meta-storage-blue"},
               "spec": {"selector": {"app": "meta"}, "ports": [{"port": 8080, "targetPort": "http"}]}}
    kube.apply_object(service)
    kube.apply_object(service)
    kube.list_objects("Service", "app=meta")
    kube.delete_object("Service", "meta-storage-blue")
    batch_verbs(kube)

    used = {_verb(r.method, r.path) for r in fake.requests}
    assert ("", "pods/exec", "get") in used
    used.add(("", "pods/exec", "create"))  # checked on the WebSocket upgrade from Kubernetes 1.35 (rbac.yaml)
    role = next(d for d in yaml.safe_load_all((ROOT / "deploy/k8s/base/rbac.yaml").read_text()) if d["kind"] == "Role")
    granted = {(g, res, verb) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
               for verb in rule["verbs"]}
    assert used == granted


def batch_verbs(kube: KubeWorkloads) -> None:
    """Every call of the Batch port (seed 001's hard fork): Jobs, StatefulSets and their claims."""
    container = {"name": "main", "image": IMAGES.app, "command": ["sh", "-c", "exit 0"]}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "boot"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}}
    kube.apply_job(job)  # create
    kube.apply_job(job)  # replace
    wait_for(lambda: kube.job_status("boot"), lambda s: s is not None and s.finished == "Complete", timeout=10,
             interval=0.02, what="the bootstrap Job")
    kube.delete_job("boot")
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "sei"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sei"}},
                    "template": {"metadata": {"labels": {"app": "sei"}},
                                 "spec": {"containers": [{"name": "seid", "image": IMAGES.app}]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}
    kube.apply_statefulset(sts)
    kube.apply_statefulset(sts)
    wait_for(lambda: kube.statefulset_status("sei"), lambda s: s is not None and s.ready_replicas == 1, timeout=10,
             interval=0.02, what="the StatefulSet")
    kube.delete_statefulset("sei")
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "extra", "labels": {"a": "1"}},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    kube.apply_pvc(claim)
    kube.apply_pvc({**claim, "metadata": {"name": "extra", "labels": {"a": "2"}}})  # replace (labels)
    kube.pvcs("app=sei")
    for name in kube.pvcs():
        kube.delete_pvc(name)


def test_exec_call_is_what_the_runner_gets(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    pod = deploy(fake_kube)
    calls: list[ExecCall] = []

    def runner(call: ExecCall, _gone: object) -> ExecReply:
        calls.append(call)
        return ExecReply()

    fake.exec_runner = runner
    fake_kube.exec(pod, APP, ["solana", "slot"], timeout=5)
    assert calls == [ExecCall(fake_kube.namespace, pod, APP, ("solana", "slot"))]
