"""The kind testbed: it stops at once, saying what is missing, where kind cannot run (as here)."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from runbook.env import load_env
from runbook.errors import ConfigError, TestbedError
from runbook.testbed import kind


def stub(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_up_without_kind_or_a_container_engine_stops_at_once(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither kind nor docker
    start = time.monotonic()
    with pytest.raises(TestbedError) as err:
        kind.up(load_env("kind"))
    assert time.monotonic() - start < 10
    assert str(err.value) == (
        "cannot run the kind testbed on this machine: `kind` is not on PATH (install it: "
        "https://kind.sigs.k8s.io/docs/user/quick-start/); no container engine: the `docker` CLI is not on "
        "PATH [env=kind]")


def test_up_with_a_docker_client_but_no_engine_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub(tmp_path, "kind", "exit 0")
    stub(tmp_path, "docker", "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2; exit 1")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TestbedError) as err:
        kind.up(load_env("kind"))
    assert str(err.value) == (
        "cannot run the kind testbed on this machine: no container engine: `docker info` fails (Cannot "
        "connect to the Docker daemon at unix:///var/run/docker.sock.) [env=kind]")


def test_down_without_kind_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TestbedError, match="`kind` is not on PATH"):
        kind.down(load_env("kind"))


def test_the_cluster_is_named_after_the_kind_context() -> None:
    assert kind.cluster_name(load_env("kind")) == "runbook"
    with pytest.raises(ConfigError, match="is not a kind env"):
        kind.cluster_name(load_env("local"))


@pytest.mark.parametrize("action", [kind.up, kind.down])
def test_the_testbed_never_touches_a_production_cluster(action: object) -> None:
    with pytest.raises(TestbedError, match="env biscayne is production: the kind testbed never"):
        action(load_env("biscayne"))  # type: ignore[operator]


def test_stand_in_images_carry_production_and_stand_in_names() -> None:
    builds = kind.image_builds(load_env("kind"))
    tags = {t for _, _, ts in builds for t in ts}
    assert {"laconicnetwork/agave:v2.1.0", "runbook/agave-standin:v2.1.0", "laconicnetwork/doublezero:v0.6.0",
            "runbook/standin:kind"} <= tags
    assert ("agave", "2.2.1") in {(t, v) for t, v, _ in builds}


def test_testbed_manifests_take_namespace_port_and_caddyfile_from_the_env() -> None:
    env = load_env("kind")
    docs = kind.testbed_manifests(env, "CADDYFILE")
    assert {d["metadata"]["namespace"] for d in docs} == {"agave"}
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["Caddyfile"] == "CADDYFILE"
    tip = next(d for d in docs if d["metadata"]["name"] == "cluster-rpc")
    assert tip["spec"]["template"]["spec"]["containers"][0]["args"][2] == "18900"


def test_the_kind_caddyfile_is_the_production_template_listening_on_the_node() -> None:
    from runbook.testbed import caddy

    text = kind.caddyfile(load_env("kind"))
    assert "http://:18080 {" in text and "origins 127.0.0.1:12019" in text
    assert "health_body ^ok$" in text and "request_buffers 64k" in text
    try:
        caddy.caddy_binary()
    except TestbedError as exc:
        pytest.skip(f"no caddy binary to adapt the Caddyfile with: {exc}")
    config = caddy.adapt(text)
    assert config["admin"]["listen"] == "0.0.0.0:12019"
    assert config["admin"]["origins"] == ["127.0.0.1:12019", "localhost:12019"]


def test_up_applies_the_other_systems_the_env_has_in_its_namespace() -> None:
    """Seed 004's proxy and seed 003's gateway exist on kind before their features run (their Givens read or
    reset them through the ports, and never create them); an env without a section gets none of its objects."""
    from runbook.env import load_env
    from runbook.testbed.kind import system_manifests

    env = load_env("kind")
    names = {(d["kind"], d["metadata"]["name"]) for d in system_manifests(env)}
    assert {("Deployment", "zai-proxy"), ("Deployment", "meta-gateway"), ("ConfigMap", "demo-common"),
            ("Service", "meta-gateway")} <= names
    assert {d["metadata"]["namespace"] for d in system_manifests(env)} == {env.kube.namespace}  # type: ignore[union-attr]
    without = env.model_copy(update={"release": None, "canary": None, "hardfork": None})
    assert system_manifests(without) == []
