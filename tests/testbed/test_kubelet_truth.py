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

import os
from pathlib import Path
from typing import Any

import pytest

from runbook.checks import isolation as iso
from runbook.env import Env
from runbook.images import same_image
from runbook.testbed.stack import Testbed

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


# One doublezerod per identity (design trap 10) during a handover: tests/integration/test_dz_handover.py, with
# the check the upgrade scenario uses (runbook/checks/dz_handover.py).
