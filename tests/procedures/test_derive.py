"""Blue is derived from green's live object: equal except for derive.CHANGED; a rollback restores it exactly.

The live object here is what an API server returns for production's green (the repository's green with the
server's fields, and flags an operator added by hand that no template knows)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from runbook.checks.derived import derived_from_live, restore_differences, restored_exactly, unexpected_differences
from runbook.env import load_env
from runbook.errors import ConfigError
from runbook.manifests import render_deployment
from runbook.procedures.derive import ColourShape, derive, differences, restorable

SIDECAR = "doublezerod"
TARGET = "laconicnetwork/agave:v2.2.1"


def shape(env: Any, colour: str, mount: str) -> ColourShape:
    dep = env.deployments.colour(colour)
    return ColourShape(name=dep.name, colour=colour, rpc_port=dep.rpc_port, gossip_port=dep.gossip_port,
                       dynamic_port_range=dep.dynamic_port_range,
                       paths={"ledger": mount, "accounts": dep.accounts, "identity": str(dep.identity)})


@pytest.fixture
def env() -> Any:
    return load_env("biscayne")


@pytest.fixture
def live(env: Any) -> dict[str, Any]:
    """Green as the API server holds it on biscayne: server fields, status, and hand-added production flags."""
    obj = render_deployment(env, "green", host_paths={"ledger": "/srv/solana/ledger",
                                                      "snapshots": "/srv/solana/snapshots"})
    obj["metadata"].update(uid="0b7c", resourceVersion="48213", generation=7, creationTimestamp="2026-11-01T00:00:00Z",
                           managedFields=[{"manager": "kubectl"}],
                           annotations={"deployment.kubernetes.io/revision": "7", "owner": "ops"})
    obj["status"] = {"replicas": 1, "readyReplicas": 1}
    app = obj["spec"]["template"]["spec"]["containers"][0]
    app["args"] += ["--account-index", "program-id", "--rpc-threads", "32"]
    app["env"] = [{"name": "RUST_LOG", "value": "solana=info"}]
    return obj


def derive_blue(env: Any, live: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return derive(live, source=shape(env, "green", "/srv/solana"), target=shape(env, "blue", "/srv/solana-blue"),
                  image=TARGET, **kw)


def test_blue_is_green_except_the_listed_fields(env: Any, live: dict[str, Any]) -> None:
    blue = derive_blue(env, live, sidecar=(SIDECAR, "laconicnetwork/doublezero:v0.6.1"))
    changed = differences(restorable(live), blue)
    assert unexpected_differences(live, blue, sidecar=SIDECAR) == []
    args = blue["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--rpc-port") + 1] == "8897"
    assert args[args.index("--gossip-port") + 1] == "8021"
    assert args[args.index("--dynamic-port-range") + 1] == "8022-8040"
    assert args[-4:] == ["--account-index", "program-id", "--rpc-threads", "32"]  # hand-added flags kept
    assert blue["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "RUST_LOG", "value": "solana=info"}]
    paths = {v["name"]: v["hostPath"]["path"] for v in blue["spec"]["template"]["spec"]["volumes"]}
    assert paths == {"ledger": "/srv/solana-blue/ledger", "snapshots": "/srv/solana-blue/snapshots",
                     "accounts": "/srv/solana-blue/ramdisk/accounts",
                     "identity": "/srv/deployments/agave-blue/data/validator-config/identity.json",
                     "doublezero-config": "/srv/deployments/agave/data/doublezero-config"}  # one DZ identity
    assert blue["metadata"]["annotations"] == {"owner": "ops"} and "status" not in blue
    assert set(changed) == {
        "metadata.name", "metadata.labels.runbook/colour", "spec.selector.matchLabels.runbook/colour",
        "spec.template.metadata.labels.runbook/colour", "spec.template.spec.containers[0].image",
        "spec.template.spec.initContainers[0].image",
        *(f"spec.template.spec.containers[0].args[{args.index(f) + 1}]"
          for f in ("--rpc-port", "--gossip-port", "--dynamic-port-range")),
        *(f"spec.template.spec.volumes[{i}].hostPath.path" for i, v in
          enumerate(blue["spec"]["template"]["spec"]["volumes"]) if v["name"] != "doublezero-config")}


@pytest.mark.parametrize("tamper", ["drop a flag", "change an env var", "privileged app", "volume type", "dz image"])
def test_the_check_catches_any_other_difference(env: Any, live: dict[str, Any], tamper: str) -> None:
    """The negative side: a derivation that lost or changed anything else fails the check."""
    blue = derive_blue(env, live)
    pod = blue["spec"]["template"]["spec"]
    if tamper == "drop a flag":
        pod["containers"][0]["args"].remove("--no-voting")
    elif tamper == "change an env var":
        pod["containers"][0]["env"][0]["value"] = "debug"
    elif tamper == "privileged app":
        pod["containers"][0]["securityContext"] = {"privileged": True}
    elif tamper == "volume type":
        pod["volumes"][0]["hostPath"]["type"] = "DirectoryOrCreate"
    else:
        pod["initContainers"][0]["command"] = ["doublezerod"]
    assert unexpected_differences(live, blue, sidecar=SIDECAR)


def test_a_template_rendered_blue_fails_the_check(env: Any, live: dict[str, Any]) -> None:
    """What the procedures did before: blue from the repository's template loses production's own flags."""
    from_template = render_deployment(env, "blue", image=TARGET)
    assert any("args" in p for p in unexpected_differences(live, from_template, sidecar=SIDECAR))


def test_rollback_restores_the_saved_object_exactly(env: Any, live: dict[str, Any]) -> None:
    saved = restorable(live)
    recreated = copy.deepcopy(saved)
    recreated["metadata"].update(uid="new", resourceVersion="1", generation=1)  # the server's own, ignored
    recreated["status"] = {"replicas": 1}
    assert restore_differences(saved, recreated) == []
    assert restore_differences(saved, None) == ["(missing)"]
    rendered = render_deployment(env, "green")  # the old way: the template, not the saved object
    assert restore_differences(saved, rendered)


def test_env_and_cluster_disagreeing_about_the_data_is_refused(env: Any, live: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="no hostPath volume on the live colour's ledger path"):
        derive(live, source=shape(env, "green", "/mnt/elsewhere"), target=shape(env, "blue", "/srv/solana-blue"),
               image=TARGET)
    no_gossip = copy.deepcopy(live)
    args = no_gossip["spec"]["template"]["spec"]["containers"][0]["args"]
    del args[args.index("--gossip-port"):args.index("--gossip-port") + 2]
    with pytest.raises(ConfigError, match="no --gossip-port"):
        derive_blue(env, no_gossip)


def test_env_refuses_shared_identity_or_overlapping_ports() -> None:
    import yaml

    from runbook.env import PROJECT_ROOT, Env

    data = yaml.safe_load((PROJECT_ROOT / "envs" / "biscayne.yaml").read_text())
    same = copy.deepcopy(data)
    same["deployments"]["blue"]["identity"] = same["deployments"]["green"]["identity"]
    with pytest.raises(ValueError, match="blue would make green exit"):
        Env.model_validate(same)
    overlap = copy.deepcopy(data)
    overlap["deployments"]["blue"]["dynamic_port_range"] = "8010-8030"
    with pytest.raises(ValueError, match="one host network"):
        Env.model_validate(overlap)


def test_the_derived_check_fails_on_a_template_rendered_blue(env: Any, live: dict[str, Any]) -> None:
    blue = derive_blue(env, live, sidecar=(SIDECAR, "laconicnetwork/doublezero:v0.6.1"))
    assert derived_from_live(live, blue, name="agave-blue", live_name="agave-green", sidecar=SIDECAR).ok
    bad = derived_from_live(live, render_deployment(env, "blue", image=TARGET), name="agave-blue",
                            live_name="agave-green", sidecar=SIDECAR)
    assert bad.status == "failed" and any("args" in p for p in bad.problems)
    assert not derived_from_live(live, None, name="agave-blue", live_name="agave-green", sidecar=SIDECAR).ok


def test_the_restored_check_fails_on_the_template(env: Any, live: dict[str, Any]) -> None:
    assert restored_exactly(live, copy.deepcopy(restorable(live)), name="agave-green").ok
    assert restored_exactly(live, render_deployment(env, "green"), name="agave-green").status == "failed"
    assert restored_exactly(live, None, name="agave-green").problems
