"""Seeds 001/002's node set (deploy/k8s/hardfork) on both testbeds.

Statically (no processes): the manifests' names, labels, selectors, ports and flags, strict validation, the local
images map, kind's port mappings and images (the sei target and its failure build, the S3 server with moto's
requirements), the S3 image's entrypoint, the kubelet's emptyDir.

On a scratch local testbed (its own supervisord, ports, Service range, DNS address and state dir; run under
`flock /tmp/runbook-testbed.lock`): ensure() brings the node set up (incumbents Ready behind hardfork.rpc on
v6.3.0, the network's tip advancing, a snapshot in the bucket within a snapshot interval), set_plan() is seen on
the network, reset() undoes a scenario's changes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from runbook.env import PROJECT_ROOT, Env, load_env, shift_ports
from runbook.errors import TestbedError
from runbook.testbed import hardfork_stack as hs
from runbook.testbed import kind, kind_images, s3store
from runbook.testbed.kubelet import ImageNotFound, LocalWorkloads
from runbook.testbed.stack import Testbed
from runbook.wait import wait_for

SHIFT = 3300  # ports no env, bench or other test uses (envfiles: 1100.., test_biscayne_testbed: 1900-2300)
SERVICE_NET = "127.236"  # a Service range and DNS address of its own (shift_ports' are 127.241-254)


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in hs.manifests()}


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    return cast(dict[str, Any], c)


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --------------------------------------------------------------------------- statically


def test_the_manifests_are_the_node_set_before_a_hard_fork() -> None:
    objs = objects()
    assert set(objs) == {("ConfigMap", "sei-governance"), ("Deployment", "sei-s3"), ("Service", "sei-s3"),
                         ("Deployment", "sei-validator"), ("Service", "sei-validator"), ("Service", "sei-network"),
                         ("StatefulSet", "sei-rpc-r1"), ("Service", "sei-rpc-headless"), ("Service", "sei-rpc")}
    assert {m["metadata"]["namespace"] for m in objs.values()} == {"agave"}
    assert json.loads(objs[("ConfigMap", "sei-governance")]["data"]["plan.json"]) == {}
    c = load_env("local").hardfork
    assert c is not None
    sts = objs[("StatefulSet", c.statefulset("r1"))]
    pinned = c.selector("r1")
    assert sts["spec"]["selector"]["matchLabels"] == pinned == sts["spec"]["template"]["metadata"]["labels"]
    assert (sts["spec"]["replicas"], sts["spec"]["serviceName"]) == (2, "sei-rpc-headless")
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 10
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert (claim["metadata"]["name"], claim["spec"]["accessModes"], claim["spec"]["resources"]["requests"]) == (
        "data", ["ReadWriteOnce"], {"storage": "1Gi"})
    node = container(sts)
    assert (node["name"], node["image"]) == (c.container, f"{c.image}:v6.3.0")
    assert node["volumeMounts"] == [{"name": "data", "mountPath": "/sei"}]
    assert node["readinessProbe"] == {"httpGet": {"path": "/health", "port": 26657}, "periodSeconds": 1,
                                      "failureThreshold": 3}
    assert node["args"][:3] == ["start", "--home", "/sei"] and flag(node["args"], "--rpc") == "$(POD_IP):26657"
    assert flag(node["args"], "--peers") == "sei-validator.agave.svc:26657"
    svc = objs[("Service", c.service)]["spec"]
    assert (svc["type"], svc["selector"], svc["ports"][0]["nodePort"], svc["ports"][0]["port"]) == (
        "NodePort", pinned, 30266, 26657)
    assert objs[("Service", "sei-rpc-headless")]["spec"]["clusterIP"] == "None"

    val = objs[("Deployment", "sei-validator")]
    v = container(val)
    assert (val["spec"]["replicas"], v["image"]) == (1, "sei:v6.3.0") and "--validator" in v["args"]
    assert flag(v["args"], "--init-height") == "tip" and flag(v["args"], "--snapshot-interval") == "50"
    assert flag(v["args"], "--gov-plan-file") == "/etc/sei-gov/plan.json"
    assert flag(v["args"], "--snapshot-upload") == c.snapshot_s3  # where a bootstrap restores from
    vols = {x["name"]: x for x in val["spec"]["template"]["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}
    assert vols["governance"]["configMap"] == {"name": c.governance}
    net = objs[("Service", "sei-network")]["spec"]
    assert (net["type"], net["selector"], net["ports"][0]["nodePort"]) == ("NodePort", {"app": "sei-validator"}, 30267)
    s3 = objs[("Deployment", "sei-s3")]
    assert (s3["spec"]["replicas"], container(s3)["image"], container(s3)["args"]) == (
        1, "runbook/s3-server:1.0.0", ["-H", "$(POD_IP)", "-p", "9000"])
    assert objs[("Service", "sei-s3")]["spec"]["ports"][0]["port"] == 9000 == int(c.snapshot_s3.split(":")[2][:4])


def test_the_manifests_are_valid_for_kubernetes_strictly() -> None:
    import kubernetes_validate

    from runbook import validate

    for version in validate.schema_versions():
        for m in hs.manifests():
            kubernetes_validate.validate(m, version, strict=True)


def test_the_local_images_map_runs_the_sei_stand_in_and_moto() -> None:
    w = LocalWorkloads(env=load_env("local"), supervisor=cast(Any, None), state_dir=Path("/nonexistent"), netns=None)
    argv, version = w.resolve_image("sei:v6.3.0")
    assert argv[1:] == ["-m", "runbook.testbed.seid", "--binary-version", "v6.3.0"] and version == "6.3.0"
    argv, _ = w.resolve_image("sei:v6.4.0-panic-at-upgrade")
    assert argv[1:] == ["-m", "runbook.testbed.seid", "--binary-version", "v6.4.0", "--fail", "panic-at-upgrade"]
    argv, _ = w.resolve_image("runbook/s3-server:1.0.0")
    assert argv[1:] == ["-m", "runbook.testbed.hardfork_stack", "s3-server"]
    for missing in ("sei:v6.3.0-missing", "sei:latest", "runbook/s3-server:latest"):
        with pytest.raises(ImageNotFound):
            w.resolve_image(missing)


def test_the_s3_image_execs_the_s3_server_with_the_pods_args(tmp_path: Path) -> None:
    fake = tmp_path / "moto_server"
    fake.write_text('#!/bin/sh\necho "$0" "$@"\n')
    fake.chmod(0o755)
    out = subprocess.run([sys.executable, "-m", "runbook.testbed.hardfork_stack", "s3-server", "-H", "127.9.9.9",
                          "-p", "9000"], capture_output=True, text=True, timeout=30, check=True,
                         env={"RUNBOOK_S3_SERVER": str(fake), "PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == [str(fake), "-H", "127.9.9.9", "-p", "9000"]
    assert hs.main(["s3-serve"]) == 2  # a usage error, nothing exec'd


def test_kind_runs_the_node_set_with_its_node_ports_on_the_envs_ports() -> None:
    env = load_env("kind")
    assert env.hardfork is not None and kind.SYSTEMS["hardfork"] == hs.MANIFESTS
    names = {(d["kind"], d["metadata"]["name"]) for d in kind.system_manifests(env)}
    assert set(objects()) <= names
    cfg = yaml.safe_load((kind.KIND_CONFIG).read_text())
    maps = {m["containerPort"]: (m["hostPort"], m["listenAddress"]) for m in cfg["nodes"][0]["extraPortMappings"]}
    for url, node_port in ((env.hardfork.rpc, 30266), (env.hardfork.network_rpc, 30267)):
        assert maps[node_port] == (int(url.rsplit(":", 1)[1]), "127.0.0.1")


def test_kind_builds_the_sei_releases_their_failure_build_and_the_s3_server() -> None:
    builds = {t: b for b in kind.image_builds(load_env("kind")) for t in b.tags}
    for v in ("6.3.0", "6.4.0"):
        assert (builds[f"sei:v{v}"].target, builds[f"sei:v{v}"].version) == ("sei", v)
        assert f"runbook/sei-standin:v{v}" in builds
    panic = builds["sei:v6.4.0-panic-at-upgrade"]
    assert (panic.target, panic.version) == ("sei-panic-at-upgrade", "6.4.0")  # the plain image + the local flags
    assert kind_images.variant_args(load_env("local"))[("sei", "panic-at-upgrade")] == ("--fail", "panic-at-upgrade")
    assert (builds["runbook/s3-server:1.0.0"].target, builds["runbook/s3-server:1.0.0"].version) == ("s3-server",
                                                                                                   "1.0.0")
    assert {"sei", "s3-server"} <= kind_images.dockerfile_targets(kind.DOCKERFILE)
    without = load_env("kind").model_copy(update={"hardfork": None})
    assert not any(b.target == "s3-server" for b in kind.image_builds(without))  # no node set: no store


def test_every_sei_image_a_hard_fork_feature_names_is_built_unless_local_cannot_run_it_either(tmp_path: Path) -> None:
    """Independent of kind_images' scan: each vX.Y.Z[-variant] of a hardfork*.feature (the repository's, and one
    naming a release no other place names) as sei:<it>; built on kind exactly when the local images map runs it
    (one it does not, -missing, is ImagePullBackOff on both)."""
    features = tmp_path / "features"
    features.mkdir()
    text = "".join(f.read_text() for f in sorted((PROJECT_ROOT / "features").glob("hardfork*.feature")))
    text += ("\nFeature: x\n  Scenario: y\n    When the operator runs the hard fork to v6.5.0-panic-at-upgrade\n"
             "    And the bootstrap image sei:v6.5.0-missing\n")
    (features / "hardfork.feature").write_text(text)
    local = LocalWorkloads(env=load_env("local"), supervisor=cast(Any, None), state_dir=Path("/x"), netns=None)
    tags = {t for b in kind.image_builds(load_env("kind"), features_dir=features) for t in b.tags}
    named = set(re.findall(r"(?<![\w.])v\d+\.\d+\.\d+(?:-[a-z][\w-]*)?", text))
    assert {"v6.5.0-panic-at-upgrade", "v6.5.0-missing"} <= named
    for v in named:
        try:
            local.resolve_image(f"sei:{v}")
            runs = True
        except ImageNotFound:
            runs = False
        assert (f"sei:{v}" in tags) == runs, f"sei:{v}: runs on the local testbed: {runs}, built for kind: {not runs}"
    assert "sei:v6.5.0" in tags  # a variant's plain image


def stage(dockerfile: Path, target: str) -> str:
    return dockerfile.read_text().split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]


def test_the_sei_image_gives_its_release_before_the_pods_args_and_ships_the_cli(tmp_path: Path) -> None:
    text = stage(kind.DOCKERFILE, "sei")
    assert "/usr/local/bin/seid" in text
    entry = json.loads(re.search(r"ENTRYPOINT (\[.*\])", text).group(1))  # type: ignore[union-attr]
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    out = subprocess.run([*entry, "start", "--home", "/sei"], capture_output=True, text=True, check=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin", "RUNBOOK_IMAGE_VERSION": "6.4.0"}).stdout.split()
    assert out == ["-m", "runbook.testbed.seid", "--binary-version", "v6.4.0", "start", "--home", "/sei"]


def test_the_s3_image_installs_moto_as_the_local_server_venv_does() -> None:
    text = stage(kind.DOCKERFILE, "s3-server")
    assert re.findall(r'"([^"]+[<>=][^"]*)"', text.split("pip install", 1)[1].split("\n", 2)[0]) == list(
        s3store.SERVER_REQUIREMENTS)
    assert "RUNBOOK_S3_SERVER=/opt/s3-server/bin/moto_server" in text
    assert 'ENTRYPOINT ["python", "-m", "runbook.testbed.hardfork_stack", "s3-server"]' in text


def test_an_empty_dir_is_the_pods_own_directory_gone_with_the_pod(tmp_path: Path) -> None:
    w = LocalWorkloads(env=load_env("local"), supervisor=cast(Any, None), state_dir=tmp_path, netns=None)
    spec = {"containers": [{"name": "c", "image": "sei:v6.3.0", "volumeMounts": [{"name": "d", "mountPath": "/sei"}]}],
            "volumes": [{"name": "d", "emptyDir": {}}]}
    w._write("pods", "p", {"name": "p", "spec": spec})
    w._mount_volumes("p", spec)
    mounted = tmp_path / "containers" / "p" / "c" / "sei"
    (mounted / "state").write_text("x")
    assert mounted.resolve() == tmp_path / "kubelet" / "pods" / "p" / "volumes" / "kubernetes.io~empty-dir" / "d"
    (w.kube / "pods" / "p.json").unlink()
    w.remove_orphan_volumes()
    assert not (tmp_path / "kubelet" / "pods" / "p").exists()


def test_ensure_needs_the_testbed_up(tmp_path: Path) -> None:
    tb = Testbed(scratch_env(tmp_path))
    with pytest.raises(TestbedError, match="the testbed is not up"):
        hs.ensure(tb)


# --------------------------------------------------------------------------- on a scratch local testbed


def scratch_env(tmp_path: Path) -> Env:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    data["name"] = f"hf{SHIFT}"
    shift_ports(data, SHIFT)
    data["testbed"].update(state_dir=str(tmp_path / "state"), service_cidr=f"{SERVICE_NET}.0.0/16",
                           dns_ip=f"{SERVICE_NET}.0.10")
    path = tmp_path / "hardfork.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_env(str(path))


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Testbed, float]]:
    tb = Testbed(scratch_env(tmp_path_factory.mktemp("hardfork")))
    try:
        tb.supervisor.start()
        tb.supervisor.add("kubelet-events", [sys.executable, "-m", "runbook.testbed.kubelet_events",
                                             str(tb.state_dir)], eventlistener="PROCESS_STATE", startsecs=0,
                          autorestart=True)
        t0 = time.monotonic()
        hs.ensure(tb, progress=print)
        yield tb, time.monotonic() - t0
    finally:
        tb.down()


@pytest.mark.integration
def test_ensure_brings_up_the_validator_the_store_and_the_incumbents(up: tuple[Testbed, float]) -> None:
    tb, took = up
    print(f"hardfork_stack.ensure took {took:.1f}s")
    c, w = hs.config(tb), tb.workloads
    sts = w.statefulset_status(c.statefulset("r1"))
    assert sts is not None and sts.ready_replicas == 2 and sts.pods == ("sei-rpc-r1-0", "sei-rpc-r1-1")
    served = hs.status(c.rpc)
    assert served["node_info"]["version"] == "v6.3.0" and served["sync_info"]["catching_up"] is False
    assert len(w.services.endpoints(c.service)) == 2
    for name in sts.pods:  # a StatefulSet's pod as the procedure reads it (Workloads.pod)
        pod = w.pod(name)
        (box,) = pod.containers
        assert (pod.phase, pod.ready, box.state, box.restart_count) == ("Running", True, "running", 0)
        assert box.image == "docker.io/library/sei:v6.3.0" and box.image_id.startswith("sha256:")
        assert pod.labels[c.revision_label] == "r1"
    assert w.pvcs(f"app={c.app}") == ["data-sei-rpc-r1-0", "data-sei-rpc-r1-1"]
    assert all((w.pvc(n) or {})["status"]["phase"] == "Bound" for n in w.pvcs(f"app={c.app}"))
    live = w.statefulset(c.statefulset("r1"))
    assert live is not None and live["status"]["readyReplicas"] == 2 and live["metadata"]["uid"]
    first = hs.height(c.network_rpc)
    wait_for(lambda: hs.height(c.network_rpc), lambda h: h > first, timeout=5, interval=0.1, what="the tip advancing")
    heights = wait_for(lambda: hs.snapshot_heights(tb), bool, timeout=50 * 0.2 + 10, interval=0.5,
                       what="a snapshot in the bucket within a snapshot interval")
    assert all(h % 50 == 0 for h in heights)


@pytest.mark.integration
def test_set_plan_is_seen_on_the_network_and_clear_plan_removes_it(up: tuple[Testbed, float]) -> None:
    tb, _ = up
    c = hs.config(tb)
    at = hs.height(c.network_rpc) + 5000
    t0 = time.monotonic()
    plan = hs.set_plan(tb, "v6.4.0", at)
    print(f"set_plan seen on the network after {time.monotonic() - t0:.1f}s")
    assert (plan["name"], plan["height"]) == ("v6.4.0", str(at))
    wait_for(lambda: hs.current_plan(c.rpc), lambda p: p is not None and p["name"] == "v6.4.0", timeout=10,
             interval=0.2, what="the incumbents learning the plan from the validator")
    hs.clear_plan(tb)
    assert hs.current_plan(c.network_rpc) is None


@pytest.mark.integration
def test_reset_undoes_a_scenarios_changes(up: tuple[Testbed, float]) -> None:
    tb, _ = up
    c, w = hs.config(tb), tb.workloads
    entrant = hs.manifest("StatefulSet", c.statefulset("r1"))
    entrant["metadata"]["name"] = c.statefulset("r2")
    for meta in (entrant["metadata"], entrant["spec"]["template"]["metadata"]):
        meta["labels"][c.revision_label] = "r2"
    entrant["spec"]["selector"]["matchLabels"][c.revision_label] = "r2"
    entrant["spec"]["replicas"] = 1
    w.apply_statefulset(entrant)
    w.apply_job({"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": c.bootstrap_job("r2", 0), "labels": {"app": f"{c.app}-bootstrap", c.revision_label: "r2"}},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": f"{c.app}-bootstrap"}}, "spec": {
            "restartPolicy": "Never", "containers": [{"name": "seid", "image": "sei:v6.3.0", "args": [
                "status", "--node", "sei-validator.agave.svc:26657"]}]}}}})
    wait_for(lambda: w.statefulset_status(c.statefulset("r2")), lambda s: s is not None and s.ready_replicas == 1,
             timeout=20, interval=0.2, what="the entrant Ready")
    svc = hs.manifest("Service", c.service)
    svc["spec"]["selector"] = c.selector("r2")
    w.apply_object(svc)
    hs.set_plan(tb, "v6.4.0", hs.height(c.network_rpc) + 5000)
    w.delete_statefulset(c.statefulset("r1"))

    fixed = hs.reset(tb)
    assert any("plan" in f for f in fixed) and any("re-created" in f for f in fixed), fixed
    assert w.statefulsets() == [c.statefulset("r1")] and w.jobs() == []
    assert w.pvcs(f"app={c.app}") == ["data-sei-rpc-r1-0", "data-sei-rpc-r1-1"]
    assert (w.get_object("Service", c.service) or {})["spec"]["selector"] == c.selector("r1")
    assert hs.current_plan(c.network_rpc) is None
    assert hs.status(c.rpc)["node_info"]["version"] == "v6.3.0"
    # the re-created pods (the same names as before) have not restarted: restartCount counts this pod's starts only
    assert [w.pod(p).containers[0].restart_count for p in ("sei-rpc-r1-0", "sei-rpc-r1-1")] == [0, 0]
    assert hs.reset(tb) == []  # the initial state: nothing to fix
