"""Fixtures of the container smoke suite (marker ``container``): a private Docker engine, the stand-in images
built on a locally built base, a "node" and the pods of the rendered manifests on it.

Everything is started here and removed here: the engine's teardown fails the session when anything of it
is left on the machine. Where a private engine cannot run (not root, no dockerd, no cgroups) every test
that needs it is skipped with the reason. Figures (build and run times, image names and IDs) are printed
in the terminal summary and written to ``reports/container-figures.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runbook.env import PROJECT_ROOT, Env, load_env
from runbook.manifests import render_deployment
from runbook.testbed import keypair
from runbook.testbed.base_image import BaseImage, BuiltImage, build_context, build_standin_images, ensure_base_image
from runbook.testbed.docker_engine import DockerEngine, unavailable_reason, wait_gone
from runbook.testbed.docker_pods import DockerPods, Node
from runbook.testbed.kind import DZ_CONFIG_DIR, image_builds, testbed_manifests
from runbook.testbed.pod_argv import PodPlan, missing_capabilities, plan_pod

FIGURES = pytest.StashKey[dict[str, str]]()
AGAVE = ("2.1.0", "2.2.1")
DOUBLEZERO = ("0.6.0", "0.6.1")
NODE = "runbook-node"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, {})
    if not figures:
        return
    terminalreporter.section("container smoke figures")
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        terminalreporter.write_line(f"{name:<{width}}  {value}")
    out = PROJECT_ROOT / "reports"
    if out.is_dir():
        (out / "container-figures.json").write_text(json.dumps(figures, indent=2) + "\n")


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> dict[str, str]:
    return pytestconfig.stash.setdefault(FIGURES, {})


@pytest.fixture(scope="session")
def kind_env() -> Env:
    """The env of the container runs: the kind env (its names, ports, images and cluster entrypoint)."""
    return load_env("kind")


@pytest.fixture(scope="session")
def engine(figures: dict[str, str]) -> Iterator[DockerEngine]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no private docker engine here: {reason}")
    # under /tmp with a short name: the engine's socket path must fit a unix socket address
    eng = DockerEngine(Path(tempfile.mkdtemp(prefix="rbdk-", dir="/tmp")))
    start = time.monotonic()
    eng.start()
    figures["engine start"] = f"{time.monotonic() - start:.1f}s (dockerd {eng.server_version()}, own roots, no bridge)"
    try:
        yield eng
    finally:
        eng.stop()
        wait_gone(eng)  # anything of ours left on the machine fails the session here


@dataclass
class Stack:
    """The built images, the node and the pods started on it (stopped, in reverse, by :meth:`close`)."""

    engine: DockerEngine
    env: Env
    base: BaseImage
    images: list[BuiltImage]
    pods: DockerPods
    node: Node
    work: Path
    missing_caps: frozenset[str]
    started: list[PodPlan] = field(default_factory=list)

    def plan(self, deployment: dict[str, Any]) -> PodPlan:
        return plan_pod(deployment, node=self.node.name, pause_image=self.base.tag, host_root=self.node.host_root,
                        missing_caps=self.missing_caps)

    def start(self, plan: PodPlan) -> PodPlan:
        self.started.append(plan)
        self.pods.start(plan)
        return plan

    def stop(self, plan: PodPlan) -> None:
        self.pods.stop(plan)

    def kill(self, plan: PodPlan) -> None:
        """Remove the pod's containers at once (SIGKILL), as a kubelet does after the grace period."""
        names = [r.name for r in (*plan.containers, *plan.init, plan.pause) if self.pods.exists(r.name)]
        if names:
            self.engine.docker("rm", "-f", *names, what=f"removing pod {plan.pod}")
        self.started.remove(plan)

    def host(self, path: str) -> Path:
        """A node path (``/srv/...``) on this machine."""
        return self.node.host_root / path.lstrip("/")

    def rpc(self, port: int) -> dict[str, Any]:
        """The validator on ``port``, asked from inside the node's network namespace."""
        probe = Path(__file__).with_name("netns_rpc.py")
        res = self.pods.in_node(self.node, [sys.executable, str(probe), f"http://127.0.0.1:{port}"])
        if not res.ok:
            return {"error": f"probe exited {res.rc}: {res.stderr.strip()[-300:]}"}
        result: dict[str, Any] = json.loads(res.stdout)
        return result

    def close(self) -> None:
        for plan in reversed(self.started):
            if self.engine.running():
                self.pods.stop(plan)
        self.started.clear()
        if self.engine.running() and self.pods.exists(self.node.name):
            self.engine.docker("rm", "-f", self.node.name, what="removing the node")
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(engine: DockerEngine, kind_env: Env, figures: dict[str, str]) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="runbook-container-"))
    try:
        base = ensure_base_image(engine)
        figures["base image"] = (f"{base.tag}: debootstrap+pack {base.build_seconds:.1f}s" if not base.cached
                                 else f"{base.tag}: cached tarball ({base.tarball})") + \
            f", docker import {base.import_seconds:.1f}s"
        wanted = [b for b in image_builds(kind_env, AGAVE, DOUBLEZERO) if b[0] == "standin"
                  or (b[0] == "agave" and b[1] in AGAVE) or (b[0] == "doublezero" and b[1] in DOUBLEZERO)]
        start = time.monotonic()
        images = build_standin_images(engine, base.tag, wanted, build_context(work / "context"))
        for img in images:
            figures[f"build {img.target} {img.version}".rstrip()] = f"{img.seconds:.1f}s ({', '.join(img.tags)})"
        figures["build total"] = f"{time.monotonic() - start:.1f}s for {len(images)} images"
        pods = DockerPods(engine, timeout=90.0)
        node = pods.start_node(NODE, base.tag, work / "node")
        st = Stack(engine, kind_env, base, images, pods, node, work, missing_capabilities(engine.bounding_set()))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        yield st
    finally:
        st.close()


@pytest.fixture(scope="session")
def cluster_pod(stack: Stack) -> PodPlan:
    """The cluster stand-in (deploy/kind/testbed.yaml's cluster-rpc) in the node's network namespace: the
    validators' ``--entrypoint``."""
    docs = [d for d in testbed_manifests(stack.env, "")
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "cluster-rpc"]
    return stack.start(stack.plan(docs[0]))


def provision_identities(stack: Stack) -> None:
    """Each colour's validator identity keypair where its manifest mounts it (as the kind testbed does)."""
    local = load_env("local")
    assert local.testbed is not None
    for colour in ("green", "blue"):
        path = stack.env.deployments.colour(colour).identity
        if path and not stack.host(path).is_file():
            keypair.write_keypair(stack.host(path), keypair.colour_seed(bytes.fromhex(local.testbed.identity_seed),
                                                                        colour))


@pytest.fixture(scope="session")
def green_pod(stack: Stack, cluster_pod: PodPlan, figures: dict[str, str]) -> PodPlan:
    """Green as kind runs it: the node's host paths (ledger, accounts, the DZ identity) made first, as
    ``runbook testbed up --env=kind`` does; then the pod of ``render_deployment(env, "green")``."""
    env = stack.env
    for path in ("/srv/solana/ledger", "/srv/solana/snapshots", env.deployments.green.accounts, DZ_CONFIG_DIR):
        stack.host(path).mkdir(parents=True, exist_ok=True)
    local = load_env("local")
    assert local.testbed is not None
    seed = bytes.fromhex(local.testbed.identity_seed)
    assert keypair.pubkey_from_seed(seed) == env.doublezero.expected_identity
    keypair.write_keypair(stack.host(DZ_CONFIG_DIR) / "id.json", seed)  # the private key: written, never shown
    provision_identities(stack)
    plan = stack.plan(render_deployment(env, "green"))
    start = time.monotonic()
    stack.start(plan)
    figures["green pod start"] = f"{time.monotonic() - start:.1f}s (pause, sidecar running, validator running)"
    if plan.deviations:
        figures["deviations"] = "; ".join(plan.deviations)
    return plan
