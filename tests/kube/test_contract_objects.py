"""The Objects port's contract (ConfigMaps and Services, seed 003's release): the same tests against the
Kubernetes API mock server and, when ``KUBECONFIG`` is set, that real cluster in a throwaway namespace
(tests/kube/contract.py), as test_contract.py does for the workloads port.

The words asserted are the ones every supported API server version uses; the mock-only tests
(test_kube_objects.py) pin the full 1.32 texts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from runbook.adapters.base import Objects
from runbook.errors import KubeError
from tests.kube.contract import Target, contract_deployment, send

ROOT_CA = "kube-root-ca.crt"


@pytest.fixture
def name(target: Target, request: pytest.FixtureRequest) -> Iterator[str]:
    """A name of this test's own (prefix of every object it creates); whatever it left is deleted after."""
    prefix = "o-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:8]
    yield prefix
    for kind in ("ConfigMap", "Service"):
        for obj in target.kube.list_objects(kind):
            if obj["metadata"]["name"].startswith(prefix):
                target.kube.delete_object(kind, obj["metadata"]["name"])
    target.kube.delete_deployment(prefix, wait=False)


def configmap(name: str, data: dict[str, str], **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app": "meta", **labels}}, "data": data}


def service(name: str, colour: str = "blue", port: int = 8080) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"app": "meta"}},
            "spec": {"type": "ClusterIP", "selector": {"app": "meta", "component": "storage", "colour": colour},
                     "ports": [{"name": "http", "port": port, "targetPort": "http"}]}}


def test_the_kube_adapter_implements_the_objects_port(target: Target) -> None:
    assert isinstance(target.kube, Objects)


def test_a_configmap_is_created_then_replaced_on_the_version_read(target: Target, name: str) -> None:
    kube = target.kube
    assert kube.get_object("ConfigMap", name) is None
    kube.apply_object(configmap(name, {"service.properties": "COMPONENT=storage\nCOLOUR=blue\n"}))
    first = kube.get_object("ConfigMap", name)
    assert first is not None and first["kind"] == "ConfigMap"
    assert first["data"] == {"service.properties": "COMPONENT=storage\nCOLOUR=blue\n"}
    assert first["metadata"]["namespace"] == target.namespace and first["metadata"]["labels"] == {"app": "meta"}

    kube.apply_object(configmap(name, {"service.properties": "COMPONENT=storage\nCOLOUR=green\n"}))
    second = kube.get_object("ConfigMap", name)
    assert second is not None
    assert second["data"] == {"service.properties": "COMPONENT=storage\nCOLOUR=green\n"}
    assert second["metadata"]["uid"] == first["metadata"]["uid"]  # replaced, not re-created
    assert second["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]


def test_a_replace_on_a_stale_read_is_a_conflict(target: Target, name: str) -> None:
    """A ConfigMap another client wrote between the adapter's read and its replace: the 409 stands (it is not
    retried: a ConfigMap has no status, a newer version is someone else's data)."""
    kube = target.kube
    kube.apply_object(configmap(name, {"state.json": '{"phase": "Stable"}'}))
    real = kube._find

    def read_then_someone_writes(verbs: Any, obj_name: str) -> dict[str, Any] | None:
        seen = real(verbs, obj_name)
        if not writes:  # once: a retry would read the other client's write and overwrite it
            other = configmap(name, {"state.json": '{"phase": "Deploying"}'})
            other["metadata"]["resourceVersion"] = (seen or {})["metadata"]["resourceVersion"]
            writes.append(send(target.core.replace_namespaced_config_map, name, target.namespace, other))
        return seen

    writes: list[Any] = []

    kube._find = read_then_someone_writes  # type: ignore[method-assign]
    try:
        with pytest.raises(KubeError) as err:
            kube.apply_object(configmap(name, {"state.json": '{"phase": "Switching"}'}))
    finally:
        del kube._find
    assert err.value.status == 409
    assert f"replace configmap/{name} in namespace {target.namespace}: conflict (409): Operation cannot be " \
           f'fulfilled on configmaps "{name}": the object has been modified' in str(err.value)
    live = kube.get_object("ConfigMap", name)
    assert live is not None and live["data"] == {"state.json": '{"phase": "Deploying"}'}


def test_an_immutable_configmap_refuses_new_data_until_it_is_re_created(target: Target, name: str) -> None:
    kube = target.kube
    frozen = {**configmap(name, {"config.properties": "STORAGE_SERVICE_HOST=meta-storage-blue\n"}),
              "immutable": True}
    kube.apply_object(frozen)
    changed = {**configmap(name, {"config.properties": "STORAGE_SERVICE_HOST=meta-storage-green\n"}),
               "immutable": True}
    with pytest.raises(KubeError) as err:
        kube.apply_object(changed)
    assert err.value.status == 422
    assert f'rejected as invalid (422): ConfigMap "{name}" is invalid: data: Forbidden: field is immutable when ' \
           "`immutable` is set" in str(err.value)
    kube.delete_object("ConfigMap", name)
    kube.apply_object(changed)
    live = kube.get_object("ConfigMap", name)
    assert live is not None and live["data"]["config.properties"].endswith("green\n")


@pytest.mark.parametrize(("case", "words"), [
    ("key", 'data[bad/key]: Invalid value: "bad/key": a valid config key must consist of alphanumeric '
            "characters, '-', '_' or '.'"),
    ("dotdot", 'data[..data]: Invalid value: "..data": must not start with \'..\''),
    ("name", 'metadata.name: Invalid value: "Meta_Release": a lowercase RFC 1123 subdomain must consist of lower '
             "case alphanumeric characters"),
    ("size", "Too long: "),
])
def test_invalid_configmaps_are_refused_as_the_api_server_does(target: Target, name: str, case: str,
                                                               words: str) -> None:
    manifest = configmap(name, {"ok": "x"})
    if case == "key":
        manifest["data"]["bad/key"] = "x"
    elif case == "dotdot":
        manifest["data"]["..data"] = "x"  # the kubelet's own symlink in a configMap volume
    elif case == "name":
        manifest["metadata"]["name"] = "Meta_Release"
    else:
        manifest["data"]["big"] = "x" * (1024 * 1024)
    with pytest.raises(KubeError) as err:
        target.kube.apply_object(manifest)
    assert err.value.status == 422
    assert "rejected as invalid (422): ConfigMap " in str(err.value) and words in str(err.value), str(err.value)


def test_objects_are_listed_by_label_selector(target: Target, name: str) -> None:
    kube = target.kube
    for colour in ("blue", "green"):
        for component in ("storage", "schema"):
            kube.apply_object(configmap(f"{name}-{component}-{colour}", {"k": "v"}, component=component,
                                        colour=colour, run=name))
    blue = kube.list_objects("ConfigMap", f"app=meta,colour=blue,run={name}")
    assert [o["metadata"]["name"] for o in blue] == [f"{name}-schema-blue", f"{name}-storage-blue"]
    assert all(o["kind"] == "ConfigMap" and o["apiVersion"] == "v1" for o in blue)
    assert [o["metadata"]["name"] for o in kube.list_objects("ConfigMap", f"run={name},component=storage")] == [
        f"{name}-storage-blue", f"{name}-storage-green"]
    assert kube.list_objects("ConfigMap", f"run={name},colour=red") == []
    everything = [o["metadata"]["name"] for o in kube.list_objects("ConfigMap")]
    assert ROOT_CA in everything  # every namespace has the root CA publisher's ConfigMap
    assert len(everything) >= 5


def test_deleting_what_is_not_there_is_not_an_error(target: Target, name: str) -> None:
    kube = target.kube
    kube.delete_object("ConfigMap", name)
    kube.delete_object("Service", name)
    kube.apply_object(configmap(name, {"k": "v"}))
    kube.delete_object("ConfigMap", name)
    assert kube.get_object("ConfigMap", name) is None
    kube.delete_object("ConfigMap", name)  # a re-run converges


def test_a_service_replace_keeps_its_cluster_ip_and_refuses_a_new_one(target: Target, name: str) -> None:
    kube = target.kube
    kube.apply_object(service(name))
    first = kube.get_object("Service", name)
    assert first is not None
    ip = first["spec"]["clusterIP"]
    assert ip and first["spec"]["ports"][0]["targetPort"] == "http"

    kube.apply_object(service(name, colour="green"))  # no clusterIP in the manifest: the server keeps it
    second = kube.get_object("Service", name)
    assert second is not None
    assert (second["spec"]["clusterIP"], second["spec"]["selector"]["colour"]) == (ip, "green")
    assert kube.list_objects("Service", "app=meta")[0]["kind"] == "Service"

    moved = service(name, colour="green")
    moved["spec"]["clusterIP"] = "10.96.200.200" if ip != "10.96.200.200" else "10.96.200.201"
    with pytest.raises(KubeError) as err:
        kube.apply_object(moved)
    assert err.value.status == 422
    assert f'Service "{name}" is invalid: spec.clusterIPs[0]: Invalid value: ' in str(err.value)
    assert "may not change once set" in str(err.value)
    live = kube.get_object("Service", name)
    assert live is not None and live["spec"]["clusterIP"] == ip


def test_a_deployment_selector_change_is_a_422(target: Target, name: str) -> None:
    """The release procedure re-creates a Deployment whose selector changed: it needs the 422 as such."""
    kube = target.kube
    kube.apply_deployment(contract_deployment(target, name))
    changed = contract_deployment(target, name)
    for labels in (changed["spec"]["selector"]["matchLabels"], changed["spec"]["template"]["metadata"]["labels"]):
        labels["colour"] = "green"
    with pytest.raises(KubeError) as err:
        kube.apply_deployment(changed)
    assert err.value.status == 422
    assert f'Deployment.apps "{name}" is invalid: spec.selector: Invalid value: ' in str(err.value)
    assert str(err.value).endswith(f": field is immutable [env=kind, object=deployment/{name}]")
