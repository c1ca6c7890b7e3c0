"""What only the mock API server shows of the Objects port (runbook/adapters/kube_objects.py): the requests it
sends, the retry of a Service replace that lost the race to a status write, the API server's full 1.32 texts,
and the KubeError's status on every answer. The verbs against a real cluster too: test_contract_objects.py."""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client as k8s

from runbook.adapters.kube import KubeWorkloads
from runbook.adapters.kube_api import KubeTarget, describe_failure
from runbook.errors import KubeError
from tests.kube.contract import Images, deployment_manifest
from tests.kube.fake_apiserver import TOKEN, FakeApiServer
from tests.kube.test_contract_objects import configmap, service

IMAGES = Images.of_kind_testbed()


def _writes(fake: FakeApiServer) -> list[tuple[str, str, dict[str, Any]]]:
    return [(r.method, r.path, json.loads(r.body) if r.body else {}) for r in fake.requests
            if r.method in ("POST", "PUT", "DELETE")]


def test_create_then_replace_on_the_resource_version_read(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    ns = fake_kube.namespace
    fake.requests.clear()
    fake_kube.apply_object(configmap("meta-release", {"state.json": "{}"}))
    created = fake.cluster.get("configmaps", ns, "meta-release")["metadata"]["resourceVersion"]
    fake_kube.apply_object(configmap("meta-release", {"state.json": '{"phase": "Stable"}'}))
    (post, put) = _writes(fake)
    assert post[:2] == ("POST", f"/api/v1/namespaces/{ns}/configmaps")
    assert post[2]["metadata"]["namespace"] == ns and "resourceVersion" not in post[2]["metadata"]
    assert put[:2] == ("PUT", f"/api/v1/namespaces/{ns}/configmaps/meta-release")
    assert put[2]["metadata"]["resourceVersion"] == created
    assert put[2]["data"] == {"state.json": '{"phase": "Stable"}'}


def test_a_manifests_own_resource_version_is_not_sent(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    """An object derived from a live one (the release derives the new colour from the active one's) carries
    the old object's resourceVersion: a create must not send it (the API server refuses a create with one)."""
    fake_kube.apply_object(configmap("meta-storage-blue", {"k": "v"}))
    live = fake_kube.get_object("ConfigMap", "meta-storage-blue")
    assert live is not None
    derived = copy.deepcopy(live)
    derived["metadata"]["name"] = "meta-storage-green"
    fake_kube.apply_object(derived)
    assert fake_kube.get_object("ConfigMap", "meta-storage-green") is not None


def test_list_sends_the_selector_only_when_given(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    fake.requests.clear()
    fake_kube.list_objects("Service")
    fake_kube.list_objects("Service", "app=meta,colour=blue")
    lists = [r.query for r in fake.requests if r.method == "GET"]
    assert lists == [{}, {"labelSelector": ["app=meta,colour=blue"]}]


def _write_between_read_and_replace(kube: KubeWorkloads, fake: FakeApiServer, change: str) -> None:
    """Right after the adapter's next read of an object, someone writes it: only its status, or its spec."""
    real = kube._find

    def read_then_write(verbs: Any, name: str) -> dict[str, Any] | None:
        seen = real(verbs, name)
        if seen is not None and not getattr(read_then_write, "done", False):
            read_then_write.done = True  # type: ignore[attr-defined]
            with fake.cluster.lock:
                obj = fake.cluster.get("services", kube.namespace, name)
                if change == "spec":
                    obj["spec"]["selector"]["colour"] = "red"
                else:
                    obj["status"] = {"loadBalancer": {}, "conditions": []}
                fake.cluster.touch(obj)
        return seen

    kube._find = read_then_write  # type: ignore[method-assign]


def test_a_service_replace_that_races_a_status_write_is_retried(fake: FakeApiServer,
                                                               fake_kube: KubeWorkloads) -> None:
    fake_kube.apply_object(service("meta-storage-blue"))
    _write_between_read_and_replace(fake_kube, fake, "status")
    fake_kube.apply_object(service("meta-storage-blue", colour="green"))
    live = fake.cluster.get("services", fake_kube.namespace, "meta-storage-blue")
    assert live["spec"]["selector"]["colour"] == "green"
    assert [m for m, path, _ in _writes(fake) if path.endswith("/meta-storage-blue")] == ["PUT", "PUT"]


def test_a_service_replace_that_races_another_clients_change_is_refused(fake: FakeApiServer,
                                                                       fake_kube: KubeWorkloads) -> None:
    fake_kube.apply_object(service("meta-storage-blue"))
    _write_between_read_and_replace(fake_kube, fake, "spec")
    with pytest.raises(KubeError, match=r"conflict \(409\)") as err:
        fake_kube.apply_object(service("meta-storage-blue", colour="green"))
    assert err.value.status == 409
    assert fake.cluster.get("services", fake_kube.namespace, "meta-storage-blue")["spec"]["selector"]["colour"] == "red"


def test_the_selector_change_has_the_api_servers_words(fake_kube: KubeWorkloads) -> None:
    fake_kube.apply_deployment(deployment_manifest("meta-storage-blue", fake_kube.namespace, IMAGES))
    changed = deployment_manifest("meta-storage-blue", fake_kube.namespace, IMAGES)
    for labels in (changed["spec"]["selector"]["matchLabels"], changed["spec"]["template"]["metadata"]["labels"]):
        labels["colour"] = "blue"
    with pytest.raises(KubeError) as err:
        fake_kube.apply_deployment(changed)
    assert err.value.status == 422
    assert err.value.message.endswith(
        'rejected as invalid (422): Deployment.apps "meta-storage-blue" is invalid: spec.selector: Invalid value: '
        'v1.LabelSelector{MatchLabels:map[string]string{"app.kubernetes.io/name":"meta-storage-blue", '
        '"colour":"blue", "runbook/contract":"true"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: '
        "field is immutable")


def test_a_cluster_ip_change_has_the_api_servers_words(fake_kube: KubeWorkloads) -> None:
    fake_kube.apply_object(service("meta-schema-blue"))
    moved = service("meta-schema-blue")
    moved["spec"]["clusterIP"] = "10.96.9.9"
    with pytest.raises(KubeError) as err:
        fake_kube.apply_object(moved)
    assert err.value.message.endswith('Service "meta-schema-blue" is invalid: spec.clusterIPs[0]: Invalid value: '
                                      '[]string{"10.96.9.9"}: may not change once set')


def test_a_node_port_is_kept_by_a_replace_that_names_none(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    gateway = service("meta-gateway")
    gateway["spec"]["type"] = "NodePort"
    fake_kube.apply_object(gateway)
    live = fake_kube.get_object("Service", "meta-gateway")
    assert live is not None
    port = live["spec"]["ports"][0]["nodePort"]
    fake_kube.apply_object(gateway)
    again = fake_kube.get_object("Service", "meta-gateway")
    assert again is not None and again["spec"]["ports"][0]["nodePort"] == port


def test_configmap_texts(fake_kube: KubeWorkloads) -> None:
    """Keys, labels and size as 1.32 words them (several causes in one message, in brackets)."""
    bad = configmap("meta-storage-blue", {"a/b": "1", "..x": "y"}, version="1.0.0+build")
    with pytest.raises(KubeError) as err:
        fake_kube.apply_object(bad)
    assert 'ConfigMap "meta-storage-blue" is invalid: [metadata.labels: Invalid value: "1.0.0+build": a valid ' \
           "label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start " \
           "and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for " \
           "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?'), data[..x]: Invalid value: \"..x\": must " \
           "not start with '..', data[a/b]: Invalid value: \"a/b\": a valid config key must consist of " \
           "alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex " \
           "used for validation is '[-._a-zA-Z0-9]+')]" in err.value.message
    with pytest.raises(KubeError) as big:
        fake_kube.apply_object(configmap("meta-big", {"a": "1" * (1024 * 1024 + 1)}))
    assert big.value.message.endswith('ConfigMap "meta-big" is invalid: []: Too long: must have at most 1048576 '
                                      "bytes")


def test_the_server_refuses_what_it_cannot_decode(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    """A raw request with a number as a value (YAML's ``PORT: 8080``) is the decoder's 400; through the
    adapter the client refuses it first, and that is a KubeError too, not a traceback."""
    request = urllib.request.Request(
        f"{fake.url}/api/v1/namespaces/{fake_kube.namespace}/configmaps", method="POST",
        data=json.dumps({"metadata": {"name": "x"}, "data": {"PORT": 8080}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request, timeout=5)
    assert raw.value.code == 400
    assert json.loads(raw.value.read())["message"] == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot unmarshal number into Go struct '
        "field ConfigMap.data of type string")
    with pytest.raises(KubeError, match=r"create configmap/x in namespace \S+: the kubernetes client refused the "
                                        r"object before sending it: data\.PORT: Input should be a valid string"):
        fake_kube.apply_object(configmap("x", {"PORT": 8080}))  # type: ignore[dict-item]


def test_a_kind_the_port_does_not_handle_is_refused(fake_kube: KubeWorkloads) -> None:
    with pytest.raises(KubeError, match=r"kind 'Secret' is not one the Objects port handles \(it handles: "
                                        r"ConfigMap, Service\)"):
        fake_kube.apply_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})
    with pytest.raises(KubeError, match="kind 'Deployment' is not one"):
        fake_kube.get_object("Deployment", "x")


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 410, 422, 500, 503])
def test_every_answer_carries_its_http_status(code: int) -> None:
    target = KubeTarget(env="kind", context="c", namespace="ns", server="https://k", kubeconfig="/k")
    exc = k8s.ApiException(status=code, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": "words"})
    err = describe_failure(exc, action="get", obj="configmap/x", target=target, timeout=1)
    assert err.status == code and "words" in err.message
    refused = describe_failure(ConnectionRefusedError(), action="get", obj="configmap/x", target=target, timeout=1)
    assert refused.status == 0


def test_deleting_a_missing_object_sends_one_delete(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    fake.requests.clear()
    fake_kube.delete_object("Service", "never-created")
    assert [(m, p.rsplit("/", 1)[-1]) for m, p, _ in _writes(fake)] == [("DELETE", "never-created")]


def test_a_replace_on_a_stale_resource_version_it_carries_is_refused(fake: FakeApiServer,
                                                                     fake_kube: KubeWorkloads) -> None:
    """The release state is written on the resourceVersion it was read at: a runner that read it before another
    wrote it gets the 409, never overwrites the other's state."""
    fake_kube.apply_object(configmap("meta-release", {"state.json": "{}"}))
    read = fake_kube.get_object("ConfigMap", "meta-release")
    assert read is not None
    fake_kube.apply_object(configmap("meta-release", {"state.json": '{"phase": "Deploying"}'}))  # someone else
    mine = copy.deepcopy(read)
    mine["data"] = {"state.json": '{"phase": "Switching"}'}
    with pytest.raises(KubeError) as err:
        fake_kube.apply_object(mine)
    assert err.value.status == 409
    assert (fake_kube.get_object("ConfigMap", "meta-release") or {})["data"] == {"state.json": '{"phase": "Deploying"}'}


def test_a_carried_resource_version_is_never_retried(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    """A Service written on the version its caller read is the caller's compare-and-swap: even a status-only
    write since then is the 409 (the status-only retry is for a replace on the version the adapter read)."""
    fake_kube.apply_object(service("meta-gateway"))
    read = fake_kube.get_object("Service", "meta-gateway")
    assert read is not None
    with fake.cluster.lock:
        fake.cluster.touch(fake.cluster.get("services", fake_kube.namespace, "meta-gateway"))
    mine = service("meta-gateway", colour="green")
    mine["metadata"]["resourceVersion"] = read["metadata"]["resourceVersion"]
    with pytest.raises(KubeError) as err:
        fake_kube.apply_object(mine)
    assert err.value.status == 409
    puts = [body for m, path, body in _writes(fake) if m == "PUT"]
    assert [b["metadata"]["resourceVersion"] for b in puts] == [read["metadata"]["resourceVersion"]]


def test_a_service_derived_with_anothers_cluster_ip_is_refused(fake_kube: KubeWorkloads) -> None:
    """A colour's Service copied from the other colour's live one must leave clusterIP out: the allocator
    refuses an IP that is taken (and one outside the service range)."""
    fake_kube.apply_object(service("meta-storage-blue"))
    blue = fake_kube.get_object("Service", "meta-storage-blue")
    assert blue is not None
    ip = blue["spec"]["clusterIP"]
    green = service("meta-storage-green", colour="green")
    green["spec"]["clusterIP"] = ip
    with pytest.raises(KubeError) as taken:
        fake_kube.apply_object(green)
    assert taken.value.status == 422
    assert taken.value.message.endswith(f'Service "meta-storage-green" is invalid: spec.clusterIPs: Invalid value: '
                                        f'[]string{{"{ip}"}}: failed to allocate IP {ip}: provided IP is already '
                                        "allocated")
    green["spec"]["clusterIP"] = "192.0.2.1"
    with pytest.raises(KubeError, match=r"the provided IP \(192\.0\.2\.1\) is not in the valid range"):
        fake_kube.apply_object(green)
    green["spec"]["clusterIP"] = "10.96.250.250"  # free and in range: the Service gets it
    fake_kube.apply_object(green)
    assert (fake_kube.get_object("Service", "meta-storage-green") or {})["spec"]["clusterIP"] == "10.96.250.250"


def test_a_service_update_needs_a_resource_version(fake: FakeApiServer, fake_kube: KubeWorkloads) -> None:
    """Services allow no unconditional update (a ConfigMap does): the adapter always sends the version."""
    fake_kube.apply_object(service("meta-schema-blue"))
    with pytest.raises(k8s.ApiException) as err:
        fake_kube.core.replace_namespaced_service("meta-schema-blue", fake_kube.namespace, service("meta-schema-blue"))
    assert err.value.status == 422
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in str(err.value.body)
    fake_kube.apply_object(configmap("meta-x", {"k": "v"}))
    fake_kube.core.replace_namespaced_config_map("meta-x", fake_kube.namespace, configmap("meta-x", {"k": "w"}))
    assert (fake_kube.get_object("ConfigMap", "meta-x") or {})["data"] == {"k": "w"}
