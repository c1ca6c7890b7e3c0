"""RollingUpdate on the local kubelet without processes: the API server's part (validation, generation), the
strategy's arithmetic, the kubelet's env resolution, and kubectl's errors on a store with no controller."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.adapters.base import Rollouts
from runbook.env import load_env
from runbook.errors import AdapterError
from runbook.testbed import kube_rollout as kr
from runbook.testbed.kube_controller import controller_program
from runbook.testbed.kubelet import LocalWorkloads
from runbook.testbed.supervisor import Supervisor
from tests.testbed.test_rolling_update_support import ENV_FILE, proxy_deployment


@pytest.fixture
def store(tmp_path: Path) -> LocalWorkloads:
    env = load_env(str(ENV_FILE))
    assert env.testbed is not None
    sup = Supervisor(state_dir=tmp_path, port=env.testbed.supervisor_port)  # never started: the store needs none
    return LocalWorkloads(env=env, supervisor=sup, state_dir=tmp_path, netns=None)


def _strategy(replicas: int, surge: int | str, unavailable: int | str) -> dict[str, object]:
    return proxy_deployment("d", "1.0.0", port=8080, replicas=replicas, surge=surge, unavailable=unavailable)


def test_fenceposts_round_surge_up_and_unavailable_down() -> None:
    assert kr.fenceposts(_strategy(3, "25%", "25%")) == (1, 0)
    assert kr.fenceposts(_strategy(10, "25%", "25%")) == (3, 2)
    assert kr.fenceposts(_strategy(3, 1, 0)) == (1, 0)
    assert kr.fenceposts(_strategy(3, "0%", "10%")) == (0, 1)  # both resolve to 0: unavailable becomes 1
    assert kr.validate(_strategy(3, "0%", "10%")) == []


def test_validation_refuses_what_the_api_server_refuses() -> None:
    assert kr.validate(_strategy(3, 0, 0)) == [
        "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when `maxSurge` is 0"]
    assert kr.validate(_strategy(3, "0%", "0%")) != []
    assert "must be an integer or a percentage" in kr.validate(_strategy(3, "one", 0))[0]
    m = _strategy(3, 1, 0)
    m["spec"]["template"]["metadata"]["labels"] = {"app": "other"}  # type: ignore[index]
    assert kr.validate(m) == ["spec.template.metadata.labels: `selector` does not match template `labels`"]


def test_the_default_strategy_is_rolling_update() -> None:
    assert kr.is_rolling({"spec": {}}) and kr.is_rolling({"spec": {"strategy": {}}})
    assert not kr.is_rolling({"spec": {"strategy": {"type": "Recreate"}}})


def test_env_and_args_expand_as_a_kubelet_does() -> None:
    pod = {"name": "p-1", "ip": "127.9.0.2", "labels": {"version": "1.2.1"}, "spec": {}}
    c = {"env": [{"name": "URL", "value": "http://$(POD_IP):80"},  # defined after: left as is
                 {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                 {"name": "SELF", "value": "$(POD_NAME)@$(POD_IP) $$(POD_IP)"},
                 {"name": "VERSION", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['version']"}}},
                 {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}
    env = kr.manifest_env(pod, c, namespace="mcp")
    assert env == {"URL": "http://$(POD_IP):80", "POD_IP": "127.9.0.2", "SELF": "$(POD_NAME)@127.9.0.2 $(POD_IP)",
                   "VERSION": "1.2.1", "NS": "mcp"}
    assert kr.expand("--bind=$(POD_IP) $(", env) == "--bind=127.9.0.2 $("
    host = {"name": "h", "spec": {"hostNetwork": True}}
    assert kr.field_ref(host, "status.podIP", namespace="x") == "127.0.0.1"  # the node's IP
    with pytest.raises(AdapterError, match="unsupported fieldRef"):
        kr.field_ref(pod, "spec.nodeName", namespace="x")
    with pytest.raises(AdapterError, match=r"only value and valueFrom\.fieldRef"):
        kr.manifest_env(pod, {"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
                        namespace="x")


def test_apply_stores_bumps_generation_on_spec_changes_and_nothing_is_done_without_the_controller(
        store: LocalWorkloads) -> None:
    assert isinstance(store, Rollouts)
    m = proxy_deployment("zai-proxy", "1.0.0", port=8080)
    store.apply_deployment(m)
    store.apply_deployment(m)
    assert store.rollout_status("zai-proxy").generation == 1
    store.set_template("zai-proxy", images={"proxy": "ronaldraygun/zai-proxy:1.1.0"}, labels={"version": "1.1.0"},
                       change_cause="promote")
    stored = store.deployment("zai-proxy")
    assert stored is not None and stored["metadata"]["generation"] == 2
    assert stored["metadata"]["annotations"] == {kr.CHANGE_CAUSE: "promote"}
    assert stored["spec"]["template"]["metadata"]["labels"] == {"app": "zai-proxy", "version": "1.1.0"}
    status = store.rollout_status("zai-proxy")
    assert not status.done and status.message == "Waiting for deployment spec update to be observed..."
    assert store.pods_of("zai-proxy") == [] and store.rollout_history("zai-proxy") == []


def test_refusals_name_what_is_there(store: LocalWorkloads) -> None:
    with pytest.raises(AdapterError, match="may not be 0 when `maxSurge` is 0"):
        store.apply_deployment(proxy_deployment("zero", "1.0.0", port=8080, surge=0, unavailable=0))
    assert store.deployment("zero") is None
    store.apply_deployment(proxy_deployment("zai-proxy", "1.0.0", port=8080))
    with pytest.raises(AdapterError, match='unable to find container named "app"'):
        store.set_template("zai-proxy", images={"app": "x:1"})
    with pytest.raises(AdapterError, match='no rollout history found for deployment "zai-proxy"'):
        store.rollout_undo("zai-proxy")
    with pytest.raises(AdapterError, match=r"unable to find specified revision 3 in history.*none"):
        store.rollout_undo("zai-proxy", to_revision=3)
    with pytest.raises(AdapterError, match=r'deployments\.apps "nosuch" not found'):
        store.rollout_status("nosuch")


def test_the_controller_program_runs_with_the_env_it_was_given(store: LocalWorkloads, tmp_path: Path) -> None:
    assert store.env.testbed is not None
    moved = store.env.model_copy(update={"testbed": store.env.testbed.model_copy(update={"supervisor_port": 29501})})
    name, argv = controller_program(moved, tmp_path, netns="rbtb-x")
    assert name == "kube-controller" and argv[1:3] == ["-m", "runbook.testbed.kube_controller"]
    assert argv[argv.index("--state-dir") + 1] == str(tmp_path.resolve()) and argv[-2:] == ["--netns", "rbtb-x"]
    written = load_env(argv[argv.index("--env") + 1])
    assert written.testbed is not None and written.testbed.supervisor_port == 29501
    assert written.model_copy(update={"source": ""}) == moved.model_copy(update={"source": ""})
