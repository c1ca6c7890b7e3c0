"""Seed 003's objects and images, statically: deploy/k8s/release and its colour template render with kustomize
(kubectl's) into exactly the names, labels, selectors, probes and mounts the shared decisions fix, the static
validation covers them, kind maps the gateway's NodePort, and every image a release scenario can deploy is
the same program on both testbeds: the local images map (a release number only; 9.9.9-missing matches
nothing) and kind's Dockerfile.standin targets with the same failure flags."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from runbook import kustomize as kz
from runbook import validate
from runbook.env import PROJECT_ROOT, load_env
from runbook.errors import ConfigError
from runbook.testbed import kind, kind_images
from runbook.testbed.kind_images import META_FAILURES, RELEASE_MANIFESTS, meta_build, meta_tags
from runbook.testbed.kubelet import CLIS_BY_MODULE, ImageNotFound, LocalWorkloads

LABELS = {"app", "component", "colour", "version"}


def render(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    return {(d["kind"], d["metadata"]["name"]): d for d in kz.kubectl_kustomize(directory)}


def test_the_release_base_is_the_common_configmap_and_the_gateway() -> None:
    objs = render(RELEASE_MANIFESTS)
    assert set(objs) == {("ConfigMap", "demo-common"), ("Deployment", "meta-gateway"), ("Service", "meta-gateway")}
    common = objs[("ConfigMap", "demo-common")]["data"]["config.properties"]
    assert common == "STORAGE_SERVICE_HOST=meta-storage-blue\nSCHEMA_SERVICE_HOST=meta-schema-blue\n"
    dep = objs[("Deployment", "meta-gateway")]
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert (dep["spec"]["replicas"], dep["spec"]["strategy"]["type"], c["name"]) == (2, "RollingUpdate", "gateway")
    assert c["image"].startswith("e6data/meta-gateway:")
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["volumeMounts"][0]["mountPath"] == "/etc/meta"
    assert spec["volumes"] == [{"name": "common", "configMap": {"name": "demo-common"}}]
    assert c["args"][c["args"].index("--config") + 1] == "/etc/meta/config.properties"
    assert c["args"][c["args"].index("--upstream-port") + 1] == "8080"
    svc = objs[("Service", "meta-gateway")]["spec"]
    assert (svc["type"], svc["ports"][0]["nodePort"], svc["ports"][0]["targetPort"]) == ("NodePort", 30280, "http")
    assert svc["selector"] == dep["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("component", ["storage", "schema"])
def test_the_colour_template_is_blue_with_the_shared_names_and_labels(component: str) -> None:
    objs = render(RELEASE_MANIFESTS / "colour")
    assert len(objs) == 6
    name = f"meta-{component}-blue"
    want = {"app": "meta", "component": component, "colour": "blue", "version": "1.0.0"}
    dep, cm, svc = (objs[(k, name)] for k in ("Deployment", "ConfigMap", "Service"))
    for obj in (dep, cm, svc, dep["spec"]["template"]):
        assert {k: v for k, v in obj["metadata"]["labels"].items() if k in LABELS} == want
    selector = {"app": "meta", "component": component, "colour": "blue"}
    assert dep["spec"]["selector"] == {"matchLabels": selector} and svc["spec"]["selector"] == selector
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert (c["name"], c["image"], dep["spec"]["replicas"]) == (component, f"e6data/{component}:1.0.0", 2)
    assert (dep["spec"]["strategy"]["type"], spec["terminationGracePeriodSeconds"]) == ("RollingUpdate", 5)
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["volumeMounts"][0]["mountPath"] == "/etc/meta-service"
    assert spec["volumes"] == [{"name": "config", "configMap": {"name": name}}]
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]} == {
        "POD_IP": "status.podIP", "POD_NAME": "metadata.name"}
    assert cm["data"] == {"service.properties": f"COMPONENT={component}\nCOLOUR=blue\n"}
    assert (svc["spec"]["type"], svc["spec"]["ports"]) == (
        "ClusterIP", [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}])


def test_the_static_validation_covers_the_release_objects() -> None:
    where = {w.split("[", 1)[0] for w, _ in validate.manifests()}
    assert {"deploy/k8s/release", "deploy/k8s/release/colour"} <= where


def test_kind_maps_the_gateway_node_port_to_the_host() -> None:
    cfg = yaml.safe_load((PROJECT_ROOT / "deploy" / "kind" / "kind-config.yaml").read_text())
    maps = {(m["containerPort"], m["hostPort"], m["listenAddress"]) for m in cfg["nodes"][0]["extraPortMappings"]}
    assert (30280, 18280, "127.0.0.1") in maps


@pytest.fixture
def workloads(tmp_path: Path) -> LocalWorkloads:
    return LocalWorkloads(env=load_env("local"), supervisor=cast(Any, None), state_dir=tmp_path, netns=None)


def test_the_local_images_map_runs_the_stand_ins_at_release_numbers_only(workloads: LocalWorkloads) -> None:
    argv, version = workloads.resolve_image("e6data/storage:1.1.0")
    assert argv[1:] == ["-m", "runbook.testbed.meta_service", "--component", "storage", "--version", "1.1.0"]
    assert version == "1.1.0"
    for failure, flags in META_FAILURES.items():
        argv, _ = workloads.resolve_image(f"e6data/schema:1.2.0-{failure}")
        assert argv[1:] == ["-m", "runbook.testbed.meta_service", "--component", "schema", "--version",
                            f"1.2.0-{failure}", *flags]
    argv, _ = workloads.resolve_image("e6data/meta-gateway:1.0.0")
    assert argv[1:3] == ["-m", "runbook.testbed.meta_gateway"]
    assert CLIS_BY_MODULE["runbook.testbed.meta_gateway"] == {"meta-gateway": ["-m", "runbook.testbed.meta_gateway"]}
    for missing in ("e6data/storage:9.9.9-missing", "e6data/schema:latest", "e6data/meta-gateway:1.0.0-crash"):
        with pytest.raises(ImageNotFound):
            workloads.resolve_image(missing)


def test_kind_builds_every_release_image_from_a_target_with_the_local_flags() -> None:
    dockerfile = (PROJECT_ROOT / "deploy" / "kind" / "Dockerfile.standin").read_text()
    targets = kind_images.dockerfile_targets(PROJECT_ROOT / "deploy" / "kind" / "Dockerfile.standin")
    builds = kind_images.meta_builds()
    assert {b.target for b in builds} == {"meta-gateway", *(f"meta-{c}{f}" for c in ("storage", "schema")
                                                            for f in ("", *(f"-{x}" for x in META_FAILURES)))}
    assert {b.target for b in builds} <= targets
    kind_builds = kind.image_builds(load_env("kind"))
    assert all(b in kind_builds for b in builds)  # what `runbook testbed up --env=kind` builds
    for component in ("storage", "schema"):
        for failure, flags in META_FAILURES.items():
            stage = dockerfile.split(f" AS meta-{component}-{failure}\n", 1)[1].split("\nFROM ", 1)[0]
            entry = re.search(r"ENTRYPOINT (\[.*\])", stage)
            assert entry is not None
            assert yaml.safe_load(entry.group(1))[-len(flags):] == list(flags)
    assert "/usr/local/bin/meta-gateway" in dockerfile.split(" AS meta-gateway\n", 1)[1]


def test_the_release_tags_come_from_the_features_and_the_manifests(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    (features / "release.feature").write_text(
        "When the operator releases 1.4.0\nAnd a release of 1.5.0-crash\n"
        "And a release of 9.9.9-missing\nAnd agave v2.2.1 stays\n")
    manifests = tmp_path / "release"
    manifests.mkdir()
    (manifests / "gateway.yaml").write_text("image: e6data/meta-gateway:2.0.0\nimage: e6data/storage:0.9.0\n")
    tags = meta_tags(manifests, features)
    assert {"1.4.0", "1.4.0-crash", "1.4.0-slow", "1.5.0", "1.5.0-crash", "0.9.0"} <= set(tags["storage"])
    assert not any(t.startswith(("9.9.9", "2.2.1")) for t in tags["storage"] + tags["schema"])
    assert tags["gateway"] == ["1.0.0", "2.0.0"]
    assert "1.7.0" in meta_tags(manifests, features, versions=["1.7.0"])["schema"]
    assert meta_build("storage", "1.4.0-slow").tags == ["e6data/storage:1.4.0-slow"]
    for component, tag in (("storage", "1.4.0-missing"), ("gateway", "1.0.0-crash"), ("queue", "1.0.0")):
        with pytest.raises(ConfigError):
            meta_build(component, tag)
