"""The local testbed's ConfigMaps and Objects port without processes: the API server's validation and words,
resourceVersion and conflicts, label selectors, Services through LocalServices, the immutable Deployment selector,
and the kubelet's projection of a configMap volume (layout, items, modes, atomic swap) on real files."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook.adapters.base import Objects
from runbook.env import load_env
from runbook.errors import AdapterError, KubeError
from runbook.testbed.kube_configmaps import (
    MAX_SIZE,
    LocalConfigMaps,
    MountFailed,
    VolumeFile,
    atomic_write,
    volume_payload,
)
from runbook.testbed.kube_objects import parse_selector
from runbook.testbed.kubelet import LocalWorkloads
from runbook.testbed.supervisor import Supervisor
from tests.testbed.test_rolling_update_support import ENV_FILE, proxy_deployment


def cm(name: str, data: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **extra.pop("metadata", {})},
            "data": data if data is not None else {"k": "v"}, **extra}


@pytest.fixture
def store(tmp_path: Path) -> LocalConfigMaps:
    return LocalConfigMaps(tmp_path / "kube")


@pytest.fixture
def wl(tmp_path: Path) -> LocalWorkloads:
    """The workloads adapter on a state dir: its stores only (nothing here starts a process)."""
    env = load_env(str(ENV_FILE))
    state = tmp_path / "state"
    state.mkdir()
    return LocalWorkloads(env=env, supervisor=Supervisor(state_dir=state, port=1), state_dir=state, netns=None)


def refused(fn: Any, *args: Any) -> KubeError:
    with pytest.raises(KubeError) as exc:
        fn(*args)
    return exc.value


@pytest.mark.parametrize(("manifest", "status", "message"), [
    (cm("Bad_Name"), 422, 'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase '
     "RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end "
     "with an alphanumeric character (e.g. 'example.com', regex used for validation is "
     r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
    (cm("ok", {"a key": "v"}), 422, 'ConfigMap "ok" is invalid: data[a key]: Invalid value: "a key": a valid config '
     "key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or "
     "'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
    (cm("ok", {"..data": "v"}), 422, 'ConfigMap "ok" is invalid: data[..data]: Invalid value: "..data": must not '
     "start with '..'"),
    (cm("ok", {"k": "v"}, binaryData={"k": "dg=="}), 422,
     'ConfigMap "ok" is invalid: data[k]: Invalid value: "k": duplicate of key present in binaryData'),
    (cm("ok", {"big": "x" * (MAX_SIZE + 1)}), 422,
     'ConfigMap "ok" is invalid: []: Too long: may not be more than 1048576 bytes'),
    (cm("ok", metadata={"labels": {"colour": "blue!"}}), 422, 'ConfigMap "ok" is invalid: metadata.labels: Invalid '
     'value: "blue!": a valid label must be an empty string'),
    (cm("ok", {".": "v", "..": "w"}), 422, 'ConfigMap "ok" is invalid: [data[.]: Invalid value: ".": must not be '
     "'.', data[..]: Invalid value: \"..\": must not be '..']"),
    (cm("ok", metadata={"namespace": "elsewhere"}), 400,
     "the namespace of the provided object does not match the namespace sent on the request"),
])
def test_invalid_configmaps_are_refused_in_the_api_servers_words(store: LocalConfigMaps, manifest: dict[str, Any],
                                                                 status: int, message: str) -> None:
    err = refused(store.apply, manifest)
    assert (err.status, err.message[:len(message)]) == (status, message)
    assert store.names() == [], "a refused object is not stored"


def test_a_configmap_of_exactly_one_mib_is_accepted(store: LocalConfigMaps) -> None:
    store.apply(cm("full", {"a": "x" * (MAX_SIZE - 1), "b": "y"}))
    assert store.names() == ["full"]


def test_every_write_bumps_the_resource_version_and_a_stale_one_is_a_conflict(store: LocalConfigMaps) -> None:
    first = store.apply(cm("app", {"k": "1"}))
    other = store.apply(cm("other"))
    read = store.get("app")
    assert read is not None and read == first
    assert int(other["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    read["data"] = {"k": "2"}
    second = store.apply(read)  # replace on the resourceVersion read
    assert int(second["metadata"]["resourceVersion"]) > int(other["metadata"]["resourceVersion"])
    assert (second["metadata"]["uid"], second["metadata"]["creationTimestamp"]) == \
        (first["metadata"]["uid"], first["metadata"]["creationTimestamp"])
    read["data"] = {"k": "3"}  # still carries the first resourceVersion: someone wrote since
    err = refused(store.apply, read)
    assert err.status == 409
    assert err.message == ('Operation cannot be fulfilled on configmaps "app": the object has been modified; please '
                           "apply your changes to the latest version and try again")
    assert (store.get("app") or {})["data"] == {"k": "2"}, "the conflicting write changed nothing"
    store.delete("app")
    assert refused(store.apply, second).status == 404, "a replace of an object that is gone"


def test_an_immutable_configmap_refuses_changes_of_its_data_and_of_immutable(store: LocalConfigMaps) -> None:
    store.apply(cm("frozen", {"k": "v"}, immutable=True))
    err = refused(store.apply, cm("frozen", {"k": "changed"}, immutable=True))
    assert (err.status, err.message) == (422, 'ConfigMap "frozen" is invalid: data: Forbidden: field is immutable '
                                              "when `immutable` is set")
    err = refused(store.apply, cm("frozen", {"k": "v"}))
    assert err.message == 'ConfigMap "frozen" is invalid: immutable: Forbidden: field is immutable when `immutable` ' \
                          "is set"
    store.apply(cm("frozen", {"k": "v"}, immutable=True, metadata={"labels": {"a": "b"}}))  # metadata may change
    assert (store.get("frozen") or {})["data"] == {"k": "v"}
    store.apply(cm("thawed", {"k": "v"}, immutable=False))
    store.apply(cm("thawed", {"k": "w"}, immutable=True))  # not immutable before: this write may change it


def test_the_objects_port_stores_configmaps_and_services(wl: LocalWorkloads) -> None:
    assert isinstance(wl, Objects)
    labels = {"app": "meta", "component": "storage", "colour": "blue"}
    wl.apply_object(cm("meta-storage-blue", {"service.properties": "COLOUR=blue\n"}, metadata={"labels": labels}))
    wl.apply_object(cm("meta-storage-green", metadata={"labels": {**labels, "colour": "green"}}))
    wl.apply_object(cm("demo-common"))
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "meta-storage-blue", "labels": labels},
           "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": "http"}]}}
    wl.apply_object(svc)
    got = wl.get_object("ConfigMap", "meta-storage-blue")
    assert got is not None and got["kind"] == "ConfigMap" and got["metadata"]["namespace"] == wl.object_namespace
    assert got["data"] == {"service.properties": "COLOUR=blue\n"}
    stored = wl.get_object("Service", "meta-storage-blue")
    assert stored is not None and stored["spec"]["ports"][0]["protocol"] == "TCP", "LocalServices' defaults"
    assert int(stored["metadata"]["resourceVersion"]) > int(got["metadata"]["resourceVersion"])

    stale = dict(got, data={"service.properties": "COLOUR=green\n"})
    wl.apply_object(cm("meta-storage-blue", {"service.properties": "x"}, metadata={"labels": labels}))
    with pytest.raises(KubeError, match="the object has been modified") as err:  # optimistic, as on kind
        wl.apply_object(stale)
    assert err.value.status == 409
    assert (wl.get_object("ConfigMap", "meta-storage-blue") or {})["data"] == {"service.properties": "x"}
    unversioned = json.loads(json.dumps(stale))
    del unversioned["metadata"]["resourceVersion"]
    wl.apply_object(unversioned)  # no resourceVersion: replaced on what the store holds
    assert (wl.get_object("ConfigMap", "meta-storage-blue") or {})["data"] == {"service.properties": "COLOUR=green\n"}

    def names(kind: str, selector: str = "") -> list[str]:
        return [o["metadata"]["name"] for o in wl.list_objects(kind, selector)]
    assert names("ConfigMap") == ["demo-common", "meta-storage-blue", "meta-storage-green"]
    assert names("ConfigMap", "app=meta,colour=green") == ["meta-storage-green"]
    assert names("ConfigMap", "app=meta,colour!=green") == ["meta-storage-blue"]
    assert names("ConfigMap", "!colour") == ["demo-common"]
    assert names("Service", "app=meta") == ["meta-storage-blue"]
    assert all(o["kind"] == "ConfigMap" and o["apiVersion"] == "v1" for o in wl.list_objects("ConfigMap"))

    wl.delete_object("ConfigMap", "meta-storage-green")
    wl.delete_object("ConfigMap", "meta-storage-green")  # gone already: converges
    wl.delete_object("Service", "meta-storage-blue")
    assert wl.get_object("ConfigMap", "meta-storage-green") is None and wl.get_object("Service", "x") is None
    assert names("Service") == []


def test_the_objects_port_refuses_in_the_api_servers_words(wl: LocalWorkloads) -> None:
    bad = {"kind": "Service", "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}}}
    err = refused(wl.apply_object, bad)
    assert (err.status, err.message) == (422, 'Service "web" is invalid: spec.ports: Required value')
    assert wl.get_object("Service", "web") is None
    assert refused(wl.apply_object, {"kind": "Secret", "metadata": {"name": "s"}}).status == 400
    assert refused(wl.list_objects, "ConfigMap", "app=,").status == 400
    assert parse_selector(" app = meta , !old, colour!=blue,k==v") == [
        ("app", "=", "meta"), ("old", "!exists", ""), ("colour", "!=", "blue"), ("k", "=", "v")]


def test_a_deployment_selector_change_is_refused_as_immutable(wl: LocalWorkloads) -> None:
    m = proxy_deployment("meta-storage-blue", "1.0.0", port=8080)
    wl.apply_deployment(m)
    wl.apply_deployment(m)  # the same selector: accepted
    changed = proxy_deployment("meta-storage-blue", "1.0.0", port=8080)
    for labels in (changed["spec"]["selector"]["matchLabels"], changed["spec"]["template"]["metadata"]["labels"]):
        labels["colour"] = "blue"
    err = refused(wl.apply_deployment, changed)
    assert err.status == 422 and isinstance(err, AdapterError)
    assert err.message == (
        'Deployment.apps "meta-storage-blue" is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:'
        'map[string]string{"app":"meta-storage-blue", "colour":"blue"}, MatchExpressions:'
        "[]v1.LabelSelectorRequirement(nil)}: field is immutable")
    assert (wl.deployment("meta-storage-blue") or {})["spec"]["selector"] == m["spec"]["selector"], "unchanged"
    wl.delete_deployment("meta-storage-blue", wait=False)
    wl.apply_deployment(changed)  # delete and re-create: the way to change it


# -- the kubelet's projection -------------------------------------------------------------------------
def test_a_projection_has_the_kubelets_layout_and_follows_items_and_modes(tmp_path: Path) -> None:
    data = cm("app", {"service.properties": "COLOUR=blue\n", "other": "x"}, binaryData={"blob": "AAE="})
    target = tmp_path / "vol"
    assert atomic_write(target, volume_payload({"name": "app"}, data))
    ts = (target / "..data").readlink()
    assert str(ts).startswith("..20") and (target / ts).is_dir() and not ts.is_absolute()
    for key in ("service.properties", "other", "blob"):
        assert (target / key).readlink() == Path("..data") / key
        assert (target / ts / key).stat().st_mode & 0o777 == 0o644
    assert (target / "blob").read_bytes() == b"\x00\x01"
    assert not atomic_write(target, volume_payload({"name": "app"}, data)), "an unchanged payload is not rewritten"
    assert (target / "..data").readlink() == ts

    items = {"name": "app", "defaultMode": 0o440, "items": [{"key": "service.properties", "path": "conf/s.props"},
                                                            {"key": "other", "path": "o", "mode": 0o600}]}
    assert atomic_write(target, volume_payload(items, data))
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith("..")) == ["conf", "o"]
    assert (target / "conf" / "s.props").read_text() == "COLOUR=blue\n"
    new_ts = (target / "..data").readlink()
    assert (target / new_ts / "conf" / "s.props").stat().st_mode & 0o777 == 0o440
    assert (target / new_ts / "o").stat().st_mode & 0o777 == 0o600
    assert not (target / ts).exists(), "the old data directory is removed"

    with pytest.raises(MountFailed, match='configmap "gone" not found'):
        volume_payload({"name": "gone"}, None)
    assert volume_payload({"name": "gone", "optional": True}, None) == []
    with pytest.raises(MountFailed, match="configmap references non-existent config key: nope"):
        volume_payload({"name": "app", "items": [{"key": "nope", "path": "n"}]}, data)


def test_an_update_swaps_the_data_atomically_for_readers(tmp_path: Path) -> None:
    """Readers opening a key through its symlink while the payload is rewritten 60 times: every read is one whole
    version (never a missing file, a short one, or a mix), and versions never go backwards."""
    target = tmp_path / "vol"
    size = 64 * 1024

    def payload(v: int) -> list[VolumeFile]:
        return [VolumeFile("a", bytes([65 + v % 26]) * size + str(v).encode(), 0o644), VolumeFile("b", b"b", 0o644)]
    atomic_write(target, payload(0))
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        last = 0
        while not stop.is_set():
            try:
                content = (target / "a").read_bytes()
            except OSError as exc:
                problems.append(f"read failed: {exc}")
                continue
            v = int(content[size:])
            if content[:size] != bytes([65 + v % 26]) * size:
                problems.append(f"torn read of version {v}")
            if v < last:
                problems.append(f"version {v} after {last}")
            last = v
            reads[0] += 1
    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for v in range(1, 61):
            assert atomic_write(target, payload(v))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert reads[0] > 60, "the readers ran during the updates"
    assert int((target / "a").read_bytes()[size:]) == 60
    assert [p.name for p in target.iterdir() if p.name.startswith("..20")] == [str((target / "..data").readlink())]


def test_configmap_sync_is_a_testbed_setting_with_a_lag_by_default(tmp_path: Path) -> None:
    data = yaml.safe_load(ENV_FILE.read_text())
    assert load_env(str(ENV_FILE)).testbed.configmap_sync == 2.0  # type: ignore[union-attr]
    data["testbed"]["configmap_sync"] = "5s"
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_env(str(path)).testbed.configmap_sync == 5.0  # type: ignore[union-attr]


def test_a_pod_record_removed_while_the_pods_are_listed_is_gone_not_an_error(wl: LocalWorkloads) -> None:
    """The controller removes a deleted pod's record while a delete --wait lists the Deployment's pods: the
    listing sees it gone (the CI run that found this failed a release's cleanup with FileNotFoundError)."""
    pods = wl.kube / "pods"
    pods.mkdir(parents=True, exist_ok=True)
    (pods / "meta-storage-blue-1.json").write_text(json.dumps({"name": "meta-storage-blue-1",
                                                                "deployment": "meta-storage-blue"}))
    (pods / "meta-storage-blue-2.json").symlink_to(pods / "removed-meanwhile.json")  # listed, then gone
    assert wl._pod_names("meta-storage-blue") == ["meta-storage-blue-1"]
