"""Seed 004's objects for kind (deploy/k8s/canary), statically: kustomize builds them, they are schema-valid
(strict, 1.32 and the newest), they say what the seed's procedure relies on, Prometheus accepts its
configuration (``promtool check config``), kind maps their node ports, and every proxy image they or a
canary scenario name is built for kind. The objects running on the mock API server: test_kube_rollouts.py.

Debian's Prometheus (2.42, the promtool installed here) is built without Kubernetes service discovery: its
promtool refuses ``kubernetes_sd_configs`` as an unknown field. So promtool checks the configuration with
that block swapped for a ``file_sd_configs`` one (global settings, intervals and every relabel rule are its
own), and the ``kubernetes_sd_configs`` block is checked against upstream's fields (``KubernetesSDConfig``);
the pinned prom/prometheus image loads it for real on kind."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook import kustomize as kz
from runbook.env import PROJECT_ROOT, load_env
from runbook.errors import ConfigError
from runbook.testbed import kind, kind_images
from runbook.testbed.kind_images import CANARY_MANIFESTS, ZAI_PROXY_FAILURES

TARGET_LABELS = {"pod", "app_version", "namespace"}
# upstream's discovery/kubernetes SDConfig (plus the HTTP client settings, not used here)
KUBERNETES_SD_FIELDS = {"api_server", "role", "kubeconfig_file", "namespaces", "selectors", "attach_metadata"}
KUBERNETES_SD_ROLES = {"endpoints", "endpointslice", "service", "pod", "node", "ingress"}


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in kz.build(CANARY_MANIFESTS)}


def prometheus_yml() -> str:
    text: str = objects()[("ConfigMap", "prometheus")]["data"]["prometheus.yml"]
    return text


def promtool(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check config`` of ``text``, its ``kubernetes_sd_configs`` swapped for a file_sd of one
    target labelled as the Kubernetes discovery and relabelling would label it."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package, .ci/setup) is not installed")
    config = yaml.safe_load(text)
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"targets": ["10.244.0.12:8080"],
                                    "labels": {"pod": "zai-proxy-7d8f9c6b5-x2k4p", "app_version": "1.2.0",
                                               "namespace": "agave"}}]))
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["file_sd_configs"] = [{"files": [str(targets)]}]
    rules = objects()[("ConfigMap", "prometheus")]["data"].get("zai-proxy-rules.yml")
    if rules is not None:  # the ConfigMap's rules file, where the container mounts it, is here in tmp_path
        (tmp_path / "zai-proxy-rules.yml").write_text(rules)
        config["rule_files"] = [str(tmp_path / Path(f).name) for f in config.get("rule_files") or []]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_kubectl_kustomize_builds_it_as_the_own_renderer_does() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    assert kz.kubectl_kustomize(CANARY_MANIFESTS) == kz.build(CANARY_MANIFESTS)


def test_every_object_is_in_the_kind_envs_namespace() -> None:
    kube = load_env("kind").kube
    assert kube is not None
    assert {d["metadata"]["namespace"] for d in objects().values()} == {kube.namespace}


def test_every_object_is_schema_valid_in_strict_mode() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev dependency) is absent")
    from kubernetes_validate.utils import latest_version

    failures = []
    for version in sorted({"1.32.0", latest_version()}):
        for (kind_, name), doc in objects().items():
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                failures.append(f"{kind_}/{name} @ {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("name", "variant", "version", "replicas", "cli_variant", "node_port"), [
    ("zai-proxy", "production", "1.2.0", 3, "production", 30180),
    ("zai-proxy-test", "test", "1.3.0-canary", 1, "canary", 30181),
])
def test_the_proxy_deployments_and_services_are_the_seeds(name: str, variant: str, version: str, replicas: int,
                                                          cli_variant: str, node_port: int) -> None:
    dep, svc = objects()[("Deployment", name)], objects()[("Service", name)]
    labels = {"app": "zai-proxy", "variant": variant, "version": version}
    assert labels.items() <= dep["metadata"]["labels"].items()
    spec = dep["spec"]
    assert spec["selector"] == {"matchLabels": {"app": "zai-proxy", "variant": variant}}  # not the version
    assert spec["template"]["metadata"]["labels"] == labels
    assert spec["template"]["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}
    assert (spec["replicas"], spec["revisionHistoryLimit"], spec["minReadySeconds"]) == (replicas, 10, 0)
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 10 and "hostNetwork" not in pod
    (c,) = pod["containers"]
    assert (c["name"], c["image"]) == ("proxy", f"ronaldraygun/zai-proxy:{version}")
    assert c["args"] == ["--variant", cli_variant, "--port", "8080", "--bind", "$(POD_IP)"]
    assert c["env"] == [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"] == {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1,
                                   "failureThreshold": 1}
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 2}}}
    assert svc["spec"]["selector"] == {"app": "zai-proxy", "variant": variant}
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP",
                                     "nodePort": node_port}]


def test_prometheus_runs_a_pinned_v2_with_its_config_and_may_list_pods() -> None:
    objs = objects()
    dep = objs[("Deployment", "prometheus")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert re.fullmatch(r"prom/prometheus:v2\.\d+\.\d+", c["image"]), c["image"]
    assert c["image"] in kind_images.UPSTREAM_IMAGES  # the one image kind pulls instead of building
    assert "--config.file=/etc/prometheus/prometheus.yml" in c["args"]
    assert pod["hostNetwork"] is False and pod["serviceAccountName"] == "prometheus"
    assert {"name": "config", "configMap": {"name": "prometheus"}} in pod["volumes"]
    assert objs[("Service", "prometheus")]["spec"]["ports"][0]["nodePort"] == 30090
    role, binding = objs[("Role", "prometheus")], objs[("RoleBinding", "prometheus")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    assert binding["roleRef"]["name"] == "prometheus"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "agave"}]


def test_the_scrape_job_keeps_annotated_pods_and_sets_exactly_the_gates_labels() -> None:
    config = yaml.safe_load(prometheus_yml())
    assert config["global"]["scrape_interval"] == "1s"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "zai-proxy" and job["scrape_interval"] == "1s"
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["agave"]}}]
    rules = job["relabel_configs"]
    assert rules[0] == {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                        "regex": "true", "action": "keep"}
    address = next(r for r in rules if r.get("target_label") == "__address__")
    assert address["source_labels"] == ["__meta_kubernetes_pod_ip",
                                        "__meta_kubernetes_pod_annotation_prometheus_io_port"]
    assert re.sub(address["regex"], address["replacement"].replace("$", "\\"), "10.244.0.12;8080") == \
        "10.244.0.12:8080"
    labels = {r["target_label"]: r["source_labels"] for r in rules if r.get("target_label", "__")[:2] != "__"}
    assert labels == {"pod": ["__meta_kubernetes_pod_name"], "app_version": ["__meta_kubernetes_pod_label_version"],
                      "namespace": ["__meta_kubernetes_namespace"]}
    assert set(labels) == TARGET_LABELS
    assert not any(r.get("action") in ("labelmap", "labeldrop", "labelkeep") for r in rules)


def test_the_kubernetes_discovery_uses_upstreams_fields_only() -> None:
    (job,) = yaml.safe_load(prometheus_yml())["scrape_configs"]
    for sd in job["kubernetes_sd_configs"]:
        assert set(sd) <= KUBERNETES_SD_FIELDS, set(sd) - KUBERNETES_SD_FIELDS
        assert sd["role"] in KUBERNETES_SD_ROLES
        assert set(sd.get("namespaces") or {}) <= {"own_namespace", "names"}


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    out = promtool(tmp_path, prometheus_yml())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check can fail: a scrape timeout above the 1 s interval (Prometheus's default is 10 s) is refused."""
    config = yaml.safe_load(prometheus_yml())
    config["scrape_configs"][0]["scrape_timeout"] = "2s"
    out = promtool(tmp_path, yaml.safe_dump(config))
    assert out.returncode != 0
    assert "scrape timeout greater than scrape interval" in out.stdout + out.stderr


def test_kind_maps_the_node_ports_to_the_hosts_loopback() -> None:
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "kind" / "kind-config.yaml").read_text())
    mappings = {m["containerPort"]: m for m in config["nodes"][0]["extraPortMappings"]}
    for node_port, host_port in ((30180, 18180), (30181, 18181), (30090, 19090)):
        assert mappings[node_port]["hostPort"] == host_port
        assert mappings[node_port]["listenAddress"] == "127.0.0.1"
    node_ports = {p["nodePort"] for d in objects().values() if d["kind"] == "Service" for p in d["spec"]["ports"]}
    assert node_ports <= set(mappings)


# --------------------------------------------------------------------------- the proxy's stand-in images


def built() -> dict[str, kind_images.ImageBuild]:
    return {t: b for b in kind.image_builds(load_env("kind")) for t in b.tags}


def test_every_proxy_image_of_the_manifests_and_the_failure_builds_is_built_for_kind() -> None:
    builds = built()
    named = {c["image"] for d in objects().values() if d["kind"] == "Deployment"
             for c in d["spec"]["template"]["spec"]["containers"] if c["image"].startswith("ronaldraygun/")}
    assert named == {"ronaldraygun/zai-proxy:1.2.0", "ronaldraygun/zai-proxy:1.3.0-canary"}
    wanted = {"1.2.0", "1.3.0", "1.3.0-canary", "1.3.0-errors", "1.3.0-errors-canary", "1.3.0-slow",
              "1.3.0-slow-canary", "1.3.0-notokens", "1.3.0-notokens-canary"}
    assert named | {f"ronaldraygun/zai-proxy:{t}" for t in wanted} <= set(builds)
    b = builds["ronaldraygun/zai-proxy:1.3.0-errors-canary"]
    assert (b.target, b.version) == ("zai-proxy-errors", "1.3.0-errors-canary")
    assert b.tags == ["ronaldraygun/zai-proxy:1.3.0-errors-canary", "runbook/zai-proxy-standin:1.3.0-errors-canary"]
    assert builds["ronaldraygun/zai-proxy:1.3.0-canary"].target == "zai-proxy"


def test_a_tag_of_the_manifests_is_built_and_an_unknown_failure_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("image: ronaldraygun/zai-proxy:1.4.0-canary\n")
    assert "1.4.0-canary" in kind_images.zai_proxy_tags(tmp_path)
    (tmp_path / "x.yaml").write_text("image: ronaldraygun/zai-proxy:1.4.0-flaky-canary\n")
    with pytest.raises(ConfigError, match=r"'1.4.0-flaky-canary': expected X\.Y\.Z"):
        kind_images.zai_proxy_builds(tmp_path)


def test_the_dockerfile_runs_the_stand_in_with_each_failure_builds_flags() -> None:
    text = kind.DOCKERFILE.read_text()
    targets = kind_images.dockerfile_targets(kind.DOCKERFILE)
    assert {"zai-proxy", *(f"zai-proxy-{f}" for f in ZAI_PROXY_FAILURES)} <= targets
    for failure, flags in {"": (), **ZAI_PROXY_FAILURES}.items():
        target = f"zai-proxy-{failure}" if failure else "zai-proxy"
        stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        (entrypoint,) = re.findall(r"^ENTRYPOINT (.*)$", stage, re.M)
        command = yaml.safe_load(entrypoint)[2]
        assert command == ("exec python -m runbook.testbed.zai_proxy --version \"$RUNBOOK_IMAGE_VERSION\" "
                           + "".join(f"{f} " for f in flags) + '"$@"')


def test_kinds_alert_rules_are_the_testbeds() -> None:
    """One set of alert rules (the checklist's "no alert firing for the canary"): the ConfigMap carries
    deploy/prometheus/zai-proxy-rules.yml as the local testbed's Prometheus loads it, and promtool accepts it."""
    data = objects()[("ConfigMap", "prometheus")]["data"]
    source = PROJECT_ROOT / "deploy" / "prometheus" / "zai-proxy-rules.yml"
    assert yaml.safe_load(data["zai-proxy-rules.yml"]) == yaml.safe_load(source.read_text())
    assert yaml.safe_load(data["prometheus.yml"])["rule_files"] == ["/etc/prometheus/zai-proxy-rules.yml"]
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package, .ci/setup) is not installed")
    out = subprocess.run(["promtool", "check", "rules", str(source)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0 and "SUCCESS: 2 rules found" in out.stdout, out.stdout + out.stderr
