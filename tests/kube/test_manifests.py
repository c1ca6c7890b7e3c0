"""The Deployment manifests: one base, green and blue overlays, env values on top; schema-valid for 1.32+."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from runbook import kustomize as kz
from runbook import manifests as m
from runbook.env import load_env
from runbook.errors import ConfigError

ENVS = ("local", "kind", "biscayne")


def pod_spec(dep: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def volumes(dep: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["hostPath"]["path"] for v in pod_spec(dep)["volumes"]}


KUSTOMIZATIONS = sorted(f.parent for name in ("kustomization.yaml", "kustomization.yml", "Kustomization")
                        for f in (m.PROJECT_ROOT / "deploy").rglob(name))


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    """kustomize's own output (kubectl's vendored kustomize); installed here and on every kind user's."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed: cannot compare with kustomize")
    return kz.kubectl_kustomize(directory)


# --------------------------------------------------------------------------- the two renderers


def test_every_kustomization_is_found() -> None:
    assert {str(d.relative_to(m.PROJECT_ROOT)) for d in KUSTOMIZATIONS} >= {
        "deploy/k8s/base", "deploy/k8s/overlays/green", "deploy/k8s/overlays/blue"}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: str(d.relative_to(m.PROJECT_ROOT)))
def test_the_own_renderer_gives_what_kustomize_gives(directory: Path) -> None:
    """The differential test: whatever the manifests say, the hand renderer and kustomize agree."""
    assert kz.build(directory) == kubectl_kustomize(directory)


def test_kustomize_renders_with_kubectl_where_it_is_installed(caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    monkeypatch.delenv(kz.RENDERER_VAR, raising=False)
    kz._rendered.clear()
    with caplog.at_level("INFO", logger="runbook.kustomize"):
        docs = kz.kustomize(m.OVERLAYS_DIR / "blue")
    assert docs == kubectl_kustomize(m.OVERLAYS_DIR / "blue")
    assert [r.getMessage() for r in caplog.records if r.name == "runbook.kustomize"] == [
        f"rendered {m.OVERLAYS_DIR / 'blue'} with `{shutil.which('kubectl')} kustomize`"]


def test_without_kubectl_the_own_renderer_renders_and_says_so(caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no kubectl
    monkeypatch.delenv(kz.RENDERER_VAR, raising=False)
    kz._rendered.clear()
    with caplog.at_level("INFO", logger="runbook.kustomize"):
        docs = kz.kustomize(m.OVERLAYS_DIR / "green")
        kz.kustomize(m.OVERLAYS_DIR / "green")  # unchanged files: rendered once
    assert docs == kz.build(m.OVERLAYS_DIR / "green")
    assert [r.getMessage() for r in caplog.records if r.name == "runbook.kustomize"] == [
        f"rendered {m.OVERLAYS_DIR / 'green'} with runbook.kustomize's own renderer (kubectl is not on PATH)"]
    with pytest.raises(ConfigError, match="kubectl is not on PATH"):
        kz.kustomize(m.OVERLAYS_DIR / "green", "kubectl")


def test_a_failing_kubectl_is_an_error_not_a_fallback(kustomization: Path, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "kubectl"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'error: accumulating resources: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.delenv(kz.RENDERER_VAR, raising=False)
    with pytest.raises(ConfigError, match="exited 1: error: accumulating resources: boom"):
        kz.kustomize(kustomization)


def test_a_changed_file_renders_again(kustomization: Path) -> None:
    first = kz.kustomize(kustomization, "own")
    text = (kustomization / "kustomization.yaml").read_text().replace("value: 2", "value: 3")
    (kustomization / "kustomization.yaml").write_text(text)
    second = kz.kustomize(kustomization, "own")
    assert (first[2]["spec"]["replicas"], second[2]["spec"]["replicas"]) == (2, 3)


# --------------------------------------------------------------------------- overlays


def test_green_and_blue_overlays() -> None:
    green, blue = m.overlay("green"), m.overlay("blue")
    assert (green["metadata"]["name"], blue["metadata"]["name"]) == ("agave-green", "agave-blue")
    for dep, colour in ((green, "green"), (blue, "blue")):
        labels = {"app.kubernetes.io/name": "agave", "runbook/colour": colour}
        assert dep["spec"]["selector"]["matchLabels"] == labels
        assert labels.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        assert dep["spec"]["replicas"] == 1
        assert dep["spec"]["strategy"] == {"type": "Recreate"}  # trap 7: no surge pod on a hostNetwork port
        spec = pod_spec(dep)
        assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        (sidecar,) = spec["initContainers"]
        assert sidecar["name"] == "doublezerod" and sidecar["restartPolicy"] == "Always"  # native sidecar
        assert sidecar["securityContext"] == {"privileged": True, "capabilities": {"add": ["NET_ADMIN"]}}
        assert {"name": "doublezero-config", "mountPath": "/root/.config/doublezero"} in sidecar["volumeMounts"]
        assert "DOUBLEZERO_RPC_ENDPOINT" in [e["name"] for e in sidecar["env"]]
        (app,) = spec["containers"]
        assert app["name"] == "agave-validator" and app["image"] == "laconicnetwork/agave:v2.1.0"
    green_args, blue_args = pod_spec(green)["containers"][0]["args"], pod_spec(blue)["containers"][0]["args"]
    assert green_args[:6] == ["--rpc-port", "8899", "--gossip-port", "8001", "--dynamic-port-range", "8002-8020"]
    assert blue_args[:6] == ["--rpc-port", "8897", "--gossip-port", "8021", "--dynamic-port-range", "8022-8040"]
    assert green_args[6:] == blue_args[6:]  # the colours differ in their ports only (one host network)
    assert {"--ledger", "/data/ledger", "--accounts", "/data/accounts", "--identity", "/data/identity.json",
            "--no-voting", "--known-validator", "--expected-genesis-hash"} <= set(green_args)
    assert volumes(green) == {"ledger": "/srv/solana/ledger", "accounts": "/srv/solana/ramdisk/accounts",
                              "snapshots": "/srv/solana/snapshots",
                              "identity": "/srv/deployments/agave/data/validator-config/identity.json",
                              "doublezero-config": "/srv/deployments/agave/data/doublezero-config"}
    assert volumes(blue) == {"ledger": "/srv/solana-blue/ledger", "accounts": "/srv/solana-blue/ramdisk/accounts",
                             "snapshots": "/srv/solana-blue/snapshots",
                             "identity": "/srv/deployments/agave-blue/data/validator-config/identity.json",
                             "doublezero-config": "/srv/deployments/agave/data/doublezero-config"}  # one DZ identity


@pytest.mark.parametrize("env_name", ENVS)
@pytest.mark.parametrize("colour", m.COLOURS)
def test_render_deployment_takes_names_ports_and_paths_from_the_env(env_name: str, colour: str) -> None:
    env = load_env(env_name)
    cfg = env.deployments.colour(colour)
    dep = m.render_deployment(env, colour)
    assert dep["metadata"]["name"] == cfg.name
    assert dep["metadata"].get("namespace") == (env.kube.namespace if env.kube else None)
    args = pod_spec(dep)["containers"][0]["args"]
    assert args[args.index("--rpc-port") + 1] == str(cfg.rpc_port)
    assert volumes(dep)["accounts"] == cfg.accounts
    assert pod_spec(dep)["containers"][0]["image"] == (cfg.image or "laconicnetwork/agave:v2.1.0")
    assert pod_spec(dep)["initContainers"][0]["env"] == [{"name": "DOUBLEZERO_RPC_ENDPOINT",
                                                          "value": env.cluster_rpc[0]}]


def test_render_deployment_overrides() -> None:
    env = load_env("kind")
    dep = m.render_deployment(env, "blue", image="laconicnetwork/agave:v2.2.1",
                              sidecar_image="laconicnetwork/doublezero:v0.6.1",
                              host_paths={"ledger": "/srv/clone/ledger"})
    assert pod_spec(dep)["containers"][0]["image"] == "laconicnetwork/agave:v2.2.1"
    assert pod_spec(dep)["initContainers"][0]["image"] == "laconicnetwork/doublezero:v0.6.1"
    assert volumes(dep)["ledger"] == "/srv/clone/ledger"
    with pytest.raises(ConfigError, match="no hostPath volume 'tmp'"):
        m.render_deployment(env, "blue", host_paths={"tmp": "/x"})
    with pytest.raises(ConfigError, match="unknown colour"):
        m.render_deployment(env, "purple")


def test_cluster_manifests_use_the_env_namespace() -> None:
    env = load_env("kind").model_copy(update={"kube": load_env("kind").kube.model_copy(  # type: ignore[union-attr]
        update={"namespace": "rpc"})})
    docs = m.cluster_manifests(env)
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "Role", "RoleBinding"]
    assert docs[0]["metadata"]["name"] == "rpc"
    assert {d["metadata"].get("namespace") for d in docs[1:]} == {"rpc"}
    assert docs[3]["subjects"][0]["namespace"] == "rpc"
    with pytest.raises(ConfigError, match="no kube section"):
        m.cluster_manifests(load_env("local"))


# --------------------------------------------------------------------------- the kustomize subset


DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      initContainers: [{name: init, image: "registry.local:5000/tools/init:1.0@sha256:%s"}]
      containers: [{name: web, image: nginx}, {name: side, image: "docker.io/library/busybox:1.36"}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: "1"}
""" % ("a" * 64)

OVERLAY = """\
resources: [../base]
namePrefix: pre-
nameSuffix: -suf
commonLabels: {team: rpc}
labels:
  - pairs: {tier: edge}
    includeTemplates: true
images:
  - {name: nginx, newTag: "1.27"}
  - {name: docker.io/library/busybox, newName: mirror.local/busybox}
  - {name: registry.local:5000/tools/init, digest: "sha256:%s"}
patches:
  - target: {kind: Deployment, name: web}
    patch: |-
      - op: add
        path: /spec/replicas
        value: 2
""" % ("b" * 64)


@pytest.fixture
def kustomization(tmp_path: Path) -> Path:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "all.yaml").write_text(DEPLOY)
    (tmp_path / "base" / "kustomization.yaml").write_text("resources: [all.yaml]\n")
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text(OVERLAY)
    return tmp_path / "overlay"


def test_the_subset_matches_kustomize_on_every_supported_feature(kustomization: Path) -> None:
    out = kz.build(kustomization)
    assert [(d["kind"], d["metadata"]["name"]) for d in out] == [
        ("ConfigMap", "pre-settings-suf"), ("Service", "pre-web-suf"), ("Deployment", "pre-web-suf")]
    dep = out[2]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == {"app": "web", "team": "rpc"}
    assert dep["spec"]["template"]["metadata"]["labels"] == {"app": "web", "team": "rpc", "tier": "edge"}
    assert [c["image"] for c in pod_spec(dep)["containers"]] == ["nginx:1.27", "mirror.local/busybox:1.36"]
    assert pod_spec(dep)["initContainers"][0]["image"] == f"registry.local:5000/tools/init@sha256:{'b' * 64}"
    assert out[1]["spec"]["selector"] == {"app": "web", "team": "rpc"}
    assert out == kubectl_kustomize(kustomization)


@pytest.mark.parametrize(("text", "problem"), [
    ("resources: [../base]\nnamespace: x\n", "unsupported kustomization field(s) namespace"),
    ("resources: [../base]\npatches:\n  - target: {kind: Deployment, name: web}\n    patch: 'spec: {replicas: 2}'\n",
     "only JSON6902 patches"),
    ("resources: [../base]\npatches:\n  - target: {kind: Deployment, name: nope}\n    patch: '[]'\n",
     "matches no resource"),
    ("resources: [../base]\npatches:\n  - target: {kind: Deployment, name: web}\n"
     "    patch: '[{op: test, path: /spec/replicas, value: 9}]'\n", "cannot patch Deployment/web"),
    ("resources: [../nowhere]\n", "is neither a file nor a directory"),
])
def test_what_the_subset_does_not_do_is_refused(kustomization: Path, text: str, problem: str) -> None:
    (kustomization / "kustomization.yaml").write_text(text)
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        kz.build(kustomization)


def test_split_image() -> None:
    assert m.split_image("nginx") == ("nginx", "", "")
    assert m.split_image("localhost:5000/a/b:1.2") == ("localhost:5000/a/b", "1.2", "")
    assert m.split_image("a/b:1@sha256:ff") == ("a/b", "1", "sha256:ff")


# --------------------------------------------------------------------------- schema validation


def every_manifest() -> list[tuple[str, dict[str, Any]]]:
    out = [(f"{src}[{i}]", d) for src, docs in m.all_manifests().items() for i, d in enumerate(docs)]
    for name in ENVS:
        env = load_env(name)
        out += [(f"render_deployment({name}, {c})", m.render_deployment(env, c)) for c in m.COLOURS]
        if env.kube is not None:
            out += [(f"cluster_manifests({name})[{i}]", d) for i, d in enumerate(m.cluster_manifests(env))]
    return out


def schema_versions() -> list[str]:
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate (dev dependency) is absent")
    return sorted({"1.32.0", kv.latest_version()})


def test_every_manifest_is_schema_valid_in_strict_mode_for_1_32_and_the_newest() -> None:
    versions = schema_versions()
    import kubernetes_validate

    assert len(versions) == 2, versions
    failures = []
    for version in versions:
        for where, doc in every_manifest():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{where} @ {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_strict_validation_catches_a_misspelt_field() -> None:
    versions = schema_versions()
    import kubernetes_validate

    dep = m.overlay("green")
    pod_spec(dep)["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicyy"):
        kubernetes_validate.validate(dep, versions[-1], strict=True)


def test_the_static_validation_command_passes(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev dependency) is absent")
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (dev dependency) is absent")
    from runbook import validate

    assert validate.main([]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "(strict): ok" in out and "vendor.github-workflows: ok" in out
