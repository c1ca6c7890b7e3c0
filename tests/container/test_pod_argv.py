"""The pod spec -> ``docker run`` translator, the base image recipe and the engine's command line: no docker
needed (these run everywhere, unmarked)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from runbook.env import load_env
from runbook.errors import ConfigError
from runbook.manifests import render_deployment
from runbook.testbed.base_image import BaseRecipe, apt_mirror, mirror_in
from runbook.testbed.docker_engine import DockerEngine
from runbook.testbed.pod_argv import default_pull_policy, expand, missing_capabilities, plan_pod

ROOT = Path("/node")


def opt(argv: tuple[str, ...], flag: str) -> list[str]:
    """Every value of ``flag`` among the ``docker run`` options (before the image, the first positional)."""
    i, values = 2, []  # after "run", "-d"
    while i < len(argv) and argv[i].startswith("--"):
        if argv[i] == flag:
            values.append(argv[i + 1])
        i += 1 if argv[i] in FLAGS_WITHOUT_VALUE else 2
    return values


FLAGS_WITHOUT_VALUE = {"--init", "--privileged", "--read-only"}


def after_image(argv: tuple[str, ...], image: str) -> list[str]:
    return list(argv[argv.index(image) + 1:])


def deployment(**pod: Any) -> dict[str, Any]:
    spec = {"containers": [{"name": "app", "image": "example/app:v1"}], **pod}
    return {"metadata": {"name": "demo", "namespace": "ns"}, "spec": {"template": {"spec": spec}}}


@pytest.fixture(scope="module")
def green() -> dict[str, Any]:
    return render_deployment(load_env("kind"), "green")


def test_green_sidecar_runs_in_the_node_namespace_privileged_with_its_command_and_mount(green: dict[str, Any]) -> None:
    plan = plan_pod(green, node="node", pause_image="base", host_root=ROOT)
    sidecar = plan.container("doublezerod")
    spec = green["spec"]["template"]["spec"]["initContainers"][0]
    assert sidecar.role == "sidecar" and plan.init == (sidecar,)
    argv = sidecar.argv
    assert opt(argv, "--network") == ["container:node"]
    assert opt(argv, "--ipc") == [f"container:{plan.pause.name}"]
    assert opt(argv, "--pid") == []  # the container's own PID namespace (shareProcessNamespace is false)
    assert opt(argv, "--restart") == ["always"] and opt(argv, "--stop-timeout") == ["120"]
    assert "--privileged" in argv and opt(argv, "--cap-add") == ["NET_ADMIN"]
    assert opt(argv, "--entrypoint") == [spec["command"][0]]
    assert after_image(argv, spec["image"]) == [*spec["command"][1:], *spec["args"]]
    assert opt(argv, "--env") == [f"{e['name']}={e['value']}" for e in spec["env"]]
    config = next(v["hostPath"]["path"] for v in green["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "doublezero-config")
    assert opt(argv, "--mount") == [f"type=bind,source={ROOT}{config},target=/root/.config/doublezero"]


def test_green_validator_keeps_the_image_entrypoint_and_gets_the_manifest_args(green: dict[str, Any]) -> None:
    plan = plan_pod(green, node="node", pause_image="base", host_root=ROOT)
    app = plan.container("agave-validator")
    spec = green["spec"]["template"]["spec"]["containers"][0]
    assert app.role == "app" and plan.containers == (app,)
    assert opt(app.argv, "--entrypoint") == [] and opt(app.argv, "--env") == []
    assert after_image(app.argv, spec["image"]) == spec["args"]
    assert "--privileged" not in app.argv and opt(app.argv, "--cap-add") == []
    assert opt(app.argv, "--security-opt") == ["seccomp=unconfined"]  # the kubelet's default: Unconfined
    assert {h.node_path: (h.create, h.file) for h in plan.host_dirs} == {
        "/srv/solana/ledger": (False, False), "/srv/solana/ramdisk/accounts": (False, False),
        "/srv/solana/snapshots": (False, False),
        "/srv/deployments/agave/data/validator-config/identity.json": (False, True),
        "/srv/deployments/agave/data/doublezero-config": (True, False)}


def test_the_pause_container_holds_the_pod_namespaces_on_the_node() -> None:
    plan = plan_pod(deployment(hostNetwork=True, shareProcessNamespace=True), node="n", pause_image="base",
                    host_root=ROOT)
    assert opt(plan.pause.argv, "--network") == ["container:n"] and opt(plan.pause.argv, "--ipc") == ["shareable"]
    assert opt(plan.containers[0].argv, "--pid") == [f"container:{plan.pause.name}"]
    assert plan.pod.startswith("demo-") and plan.pause.name == f"k8s_POD_{plan.pod}_ns_{plan.uid}_0"
    own = plan_pod(deployment(), node="n", pause_image="base", host_root=ROOT)
    assert opt(own.pause.argv, "--network") == ["none"]
    assert opt(own.containers[0].argv, "--network") == [f"container:{own.pause.name}"]
    host = plan_pod(deployment(hostPID=True, hostIPC=True), node="n", pause_image="base", host_root=ROOT)
    assert opt(host.containers[0].argv, "--pid") == ["host"] and opt(host.containers[0].argv, "--ipc") == ["host"]


def test_a_blue_pod_has_its_own_name_and_paths(green: dict[str, Any]) -> None:
    blue = render_deployment(load_env("kind"), "blue")
    g, b = (plan_pod(d, node="n", pause_image="base", host_root=ROOT) for d in (green, blue))
    assert g.pod != b.pod and g.uid != b.uid
    assert "--rpc-port" in b.containers[0].argv and "8897" in b.containers[0].argv
    assert f"type=bind,source={ROOT}/srv/solana-blue/ledger,target=/data/ledger" in opt(b.containers[0].argv, "--mount")


def test_privileged_where_the_engine_lacks_a_capability_gets_all_others_and_says_so(green: dict[str, Any]) -> None:
    plan = plan_pod(green, node="n", pause_image="base", host_root=ROOT, missing_caps=frozenset({"SYS_RESOURCE"}))
    argv = plan.container("doublezerod").argv
    assert "--privileged" not in argv
    assert opt(argv, "--cap-add") == ["ALL"] and opt(argv, "--cap-drop") == ["SYS_RESOURCE"]
    assert set(opt(argv, "--security-opt")) == {"apparmor=unconfined", "systempaths=unconfined", "seccomp=unconfined"}
    assert plan.deviations == ("container doublezerod: privileged without SYS_RESOURCE (not in this engine's "
                               "bounding set)",)
    assert missing_capabilities("000001fffeffffff") == frozenset({"SYS_RESOURCE"})
    assert missing_capabilities("000001ffffffffff") == frozenset()


def test_command_args_and_env_follow_kubernetes_rules() -> None:
    d = deployment()
    d["spec"]["template"]["spec"]["containers"][0].update(
        command=["run", "$(A)"], args=["--x=$(B)", "$$(A)", "$(UNDEFINED)"],
        env=[{"name": "A", "value": "a"}, {"name": "B", "value": "$(A)-b"}], workingDir="/w")
    argv = plan_pod(d, node="n", pause_image="base", host_root=ROOT).containers[0].argv
    assert opt(argv, "--entrypoint") == ["run"]
    assert after_image(argv, "example/app:v1") == ["a", "--x=a-b", "$(A)", "$(UNDEFINED)"]
    assert opt(argv, "--env") == ["A=a", "B=a-b"] and opt(argv, "--workdir") == ["/w"]
    assert expand("$(A)$$", {"A": "1"}) == "1$"


@pytest.mark.parametrize(("image", "policy", "pull"), [
    ("example/app:v1", "IfNotPresent", "missing"), ("example/app", "Always", "always"),
    ("example/app:latest", "Always", "always"), ("localhost:5000/app", "Always", "always"),
    ("example/app@sha256:" + "a" * 64, "IfNotPresent", "missing")])
def test_the_default_pull_policy(image: str, policy: str, pull: str) -> None:
    assert default_pull_policy(image) == policy
    d = deployment()
    d["spec"]["template"]["spec"]["containers"][0]["image"] = image
    assert opt(plan_pod(d, node="n", pause_image="b", host_root=ROOT).containers[0].argv, "--pull") == [pull]


def test_volumes_mounts_and_init_containers() -> None:
    d = deployment(volumes=[{"name": "scratch", "emptyDir": {}}, {"name": "data", "hostPath": {"path": "/d"}}],
                   initContainers=[{"name": "prep", "image": "example/prep:v1", "command": ["true"]}],
                   restartPolicy="OnFailure")
    d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "scratch", "mountPath": "/s"},
        {"name": "data", "mountPath": "/d", "subPath": "x", "readOnly": True, "mountPropagation": "HostToContainer"}]
    plan = plan_pod(d, node="n", pause_image="b", host_root=ROOT)
    assert plan.init[0].role == "init" and opt(plan.init[0].argv, "--restart") == ["no"]
    assert opt(plan.containers[0].argv, "--restart") == ["on-failure"]
    scratch = ROOT / "var/lib/kubelet/pods" / plan.uid / "volumes/kubernetes.io~empty-dir/scratch"
    assert opt(plan.containers[0].argv, "--mount") == [
        f"type=bind,source={scratch},target=/s",
        f"type=bind,source={ROOT}/d/x,target=/d,readonly,bind-propagation=rslave"]
    assert all(h.create for h in plan.host_dirs)


@pytest.mark.parametrize(("where", "patch", "message"), [
    ("pod", {"hostAliases": []}, "unsupported field(s) hostAliases"),
    ("container", {"lifecycle": {}}, "unsupported field(s) lifecycle"),
    ("container", {"env": [{"name": "X", "valueFrom": {}}]}, "only literal values"),
    ("container", {"securityContext": {"seLinuxOptions": {}}}, "securityContext: unsupported field(s) seLinuxOptions"),
    ("container", {"startupProbe": {"httpGet": {"port": 1}}}, "only exec probes"),
    ("container", {"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "names no volume"),
    ("container", {"restartPolicy": "Always"}, "only valid as Always on an init container"),
    ("pod", {"volumes": [{"name": "c", "configMap": {"name": "c"}}]}, "configMap volumes are not supported"),
    ("pod", {"volumes": [{"name": "s", "hostPath": {"path": "/s", "type": "Socket"}}]}, "type 'Socket'"),
])
def test_what_it_cannot_give_is_refused_by_name(where: str, patch: dict[str, Any], message: str) -> None:
    d = deployment()
    target = d["spec"]["template"]["spec"] if where == "pod" else d["spec"]["template"]["spec"]["containers"][0]
    target.update(copy.deepcopy(patch))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_pod(d, node="n", pause_image="b", host_root=ROOT)


def test_an_exec_startup_probe_is_kept_for_the_runner() -> None:
    d = deployment(initContainers=[{"name": "side", "image": "x/side:v1", "restartPolicy": "Always",
                                    "startupProbe": {"exec": {"command": ["test", "-S", "/run/s.sock"]}}}])
    plan = plan_pod(d, node="n", pause_image="b", host_root=ROOT)
    assert plan.init[0].role == "sidecar" and plan.init[0].startup_probe == ("test", "-S", "/run/s.sock")


# --------------------------------------------------------------------------- base image and engine


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def test_the_mirror_is_the_one_apt_uses(tmp_path: Path) -> None:
    assert mirror_in(DEB822, "bookworm", deb822=True) == "http://deb.debian.org/debian"
    assert mirror_in(DEB822, "trixie", deb822=True) is None
    one_line = "# comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n"
    assert mirror_in(one_line, "bookworm", deb822=False) == "http://mirror.example/debian"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.sources").write_text(DEB822.replace("deb.debian.org", "m.example"))
    assert apt_mirror("bookworm", (tmp_path / "none.list", tmp_path / "d")) == "http://m.example/debian"
    assert apt_mirror("bookworm", (tmp_path / "none.list",)) == "http://deb.debian.org/debian"


def test_the_cache_key_follows_the_recipe_and_the_ca_bundle() -> None:
    base = BaseRecipe()
    assert base.key(b"ca") == BaseRecipe().key(b"ca")
    assert base.key(b"ca") != base.key(b"other ca")
    assert base.key(b"ca") != BaseRecipe(packages=(*base.packages, "curl")).key(b"ca")


def test_the_engine_uses_only_its_own_roots_and_no_host_networking(tmp_path: Path) -> None:
    argv = DockerEngine(tmp_path / "e").dockerd_argv()
    root = str(tmp_path / "e")
    for flag in ("--data-root", "--exec-root", "--pidfile", "--config-file"):
        assert argv[argv.index(flag) + 1].startswith(root + "/")
    assert argv[argv.index("-H") + 1] == f"unix://{root}/docker.sock"
    assert {"--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"} <= set(argv)
