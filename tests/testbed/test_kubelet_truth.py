"""The local kubelet is never kinder than a real one (issue 8).

Against the session's testbed:
- every container process has exactly the environment its manifest and its image give it (no side channel
  such as the pod's name, the tunnel's namespace, the chain parameters or the runner's own variables);
- every container has its own PID namespace; host-network pods share the node's network namespace;
- container statuses follow containerd's CRI naming (fully qualified first repo tag, ``sha256:`` imageID),
  and the isolation check compares them normalised: a ``docker.io/...`` status satisfies "restarted on the
  new image", a different tag does not;
- a blue pod's doublezerod beside green's leaves green's session and routes intact (the manifests'
  identity lock), and takes over when green stops; without the lock, green's session is reset and the
  check fails.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.base import Host
from runbook.adapters.factory import Adapters
from runbook.checks import doublezero as dzc
from runbook.checks import isolation as iso
from runbook.env import Env
from runbook.errors import CheckFailed
from runbook.images import same_image
from runbook.manifests import render_deployment
from runbook.testbed.stack import Testbed
from runbook.wait import wait_for

pytestmark = [pytest.mark.integration]

RUNTIME_ENV = {"PATH", "HOME", "PWD"}  # the runtime sets PATH, HOME; the image's shell launcher exports PWD


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _ns(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


@pytest.fixture
def green(testbed: Testbed, env: Env) -> Any:
    pods = testbed.workloads.pods(env.deployments.green.name)
    assert len(pods) == 1, pods
    return pods[0]


def test_every_stand_in_gets_only_what_its_manifest_and_image_give(testbed: Testbed, env: Env, green: Any) -> None:
    wl = testbed.workloads
    manifest = wl._read("deployments", env.deployments.green.name)
    assert manifest is not None
    spec = manifest["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}
    seen = {}
    for status in green.containers:
        assert status.pid, status
        got = _environ(status.pid)
        c = containers[status.name]
        allowed = {e["name"] for e in c.get("env", [])} | set(wl.image_env(c["image"])) | RUNTIME_ENV
        extra = sorted(set(got) - allowed)
        assert not extra, f"{status.name} got variables no manifest or image gives it: {extra}"
        assert not [k for k in got if k.startswith("RUNBOOK_") and k != "RUNBOOK_IMAGE_VERSION"], got
        for e in c.get("env", []):
            assert e["name"] in got, f"{status.name} lacks its manifest's {e['name']}"
        seen[status.name] = sorted(got)
    assert set(seen) == set(containers)


def test_each_container_has_its_own_pid_namespace_and_the_pod_the_nodes_network(testbed: Testbed, green: Any) -> None:
    pids = [c.pid for c in green.containers]
    assert all(pids)
    pidns = {_ns(p, "pid") for p in pids}
    assert len(pidns) == len(pids), "containers share a PID namespace (Kubernetes gives each its own by default)"
    assert _ns("self", "pid") not in pidns
    if testbed.netns is None:
        pytest.skip("no node network namespace on this machine (no CAP_NET_ADMIN)")
    node = os.stat(f"/run/netns/{testbed.netns}").st_ino
    assert {_ns(p, "net") for p in pids} == {node}, "a host-network pod must run in the node's network namespace"
    assert _ns("self", "net") != node


def test_container_status_is_named_as_containerd_names_it(green: Any) -> None:
    for c in green.containers:
        spec = green.spec_images[c.name]
        assert c.image.startswith("docker.io/") and c.image != spec  # the raw comparison the old checks made
        assert same_image(c.image, spec)
        assert c.image_id.startswith("sha256:") and len(c.image_id) == 71


def test_isolation_accepts_a_cri_named_new_image_and_rejects_another_tag(green: Any) -> None:
    """The defect: "the sidecar restarted on the new image" compared docker.io/... with the spec string."""
    side = next(c for c in green.containers if c.kind == "sidecar")
    app = next(c for c in green.containers if c.kind == "app")

    def obs(image: str, image_id: str, restarts: int, spec: str) -> iso.Observation:
        s = iso.ContainerView(side.name, "sidecar", image, image_id, "running", "t0", restarts)
        a = iso.ContainerView(app.name, "app", app.image, app.image_id, "running", "t1", 0)
        return iso.Observation("d", "p", ("p",), s, a, spec, "laconicnetwork/doublezero:v0.6.0", ("192.0.2.10/32",))

    before = obs("docker.io/laconicnetwork/doublezero:v0.6.0", "sha256:" + "a" * 64, 0,
                 "laconicnetwork/doublezero:v0.6.0")
    after = obs("docker.io/laconicnetwork/doublezero:v0.6.1", "sha256:" + "b" * 64, 1,
                "laconicnetwork/doublezero:v0.6.1")
    assert iso.sidecar_problems(before, after, image="laconicnetwork/doublezero:v0.6.1") == []
    wrong = iso.sidecar_problems(before, after, image="laconicnetwork/doublezero:v0.6.2")
    assert [p.what for p in wrong] == ["doublezerod running image", "doublezerod image in the pod spec"]


# --------------------------------------------------------------------------- one doublezerod per identity


def _blue(env: Env, testbed: Testbed, *, lock: bool) -> dict[str, Any]:
    """Blue as the upgrade deploys it beside green (same identity, its own port and data)."""
    dep = render_deployment(env, "blue", host_paths={"ledger": str(testbed.state_dir / "scratch-blue-ledger")})
    pod = dep["spec"]["template"]["spec"]
    if not lock:
        for c in pod["initContainers"]:
            c.pop("command", None)  # the daemon started directly: no identity lock
    return copy.deepcopy(dep)


def _holder_state(adapters: Adapters, host: Host, env: Env, pod: str) -> tuple[dzc.DzStatus, list[str]]:
    status = dzc.sidecar_status(adapters.workloads, pod, env.doublezero.sidecar)
    return status, host.routes(env.doublezero.interface)


@pytest.fixture
def dz_node(testbed: Testbed, env: Env) -> Iterator[None]:
    if testbed.netns is None:
        pytest.skip("no node network namespace on this machine (no CAP_NET_ADMIN): no tunnel to hand over")
    testbed.reset_to_baseline()
    yield
    testbed.reset_to_baseline()


@pytest.mark.netadmin
@pytest.mark.doublezero
def test_blue_sidecar_beside_green_leaves_greens_session_and_takes_over_when_green_stops(
    dz_node: None, testbed: Testbed, env: Env, adapters: Adapters, green: Any
) -> None:
    wl, host, sidecar = adapters.workloads, adapters.host, env.doublezero.sidecar
    before, routes_before = _holder_state(adapters, host, env, green.name)
    wl.apply_deployment(_blue(env, testbed, lock=True))
    blue = wl.wait_rollout(env.deployments.blue.name, timeout=env.timeouts.rollout)
    assert blue.container(sidecar).state == "running"  # started, waiting on the identity's lock
    after, routes_after = _holder_state(adapters, host, env, green.name)
    dzc.check_session_held(before, after, routes_before=routes_before, routes_after=routes_after, who="green")
    wl.delete_deployment(env.deployments.green.name)
    assert host.routes(env.doublezero.interface) == routes_before  # nobody holds it: the kernel keeps them

    def blue_status() -> dzc.DzStatus:
        return dzc.sidecar_status(wl, blue.name, sidecar)

    taken = wait_for(blue_status, lambda s: s.session == "BGP Session Up", timeout=20, interval=0.2,
                     what="blue's doublezerod to take the session over", tolerate=(Exception,))
    dzc.check_session(taken, device=env.doublezero.expected_device)
    assert set(host.routes(env.doublezero.interface)) == set(routes_before)


@pytest.mark.netadmin
@pytest.mark.doublezero
def test_a_blue_sidecar_without_the_identity_lock_resets_greens_session_and_the_check_fails(
    dz_node: None, testbed: Testbed, env: Env, adapters: Adapters, green: Any
) -> None:
    wl, host = adapters.workloads, adapters.host
    before, routes_before = _holder_state(adapters, host, env, green.name)
    wl.apply_deployment(_blue(env, testbed, lock=False))

    def reset_seen() -> str:
        return dzc.sidecar_status(wl, green.name, env.doublezero.sidecar).last_update

    wait_for(reset_seen, lambda last: last != before.last_update, timeout=20, interval=0.2,
             what="green's session to be reset by blue's daemon")
    after, routes_after = _holder_state(adapters, host, env, green.name)
    with pytest.raises(CheckFailed, match="session reset"):
        dzc.check_session_held(before, after, routes_before=routes_before, routes_after=routes_after, who="green")
