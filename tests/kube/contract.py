"""Targets of the kube adapter's contract suite: the mock API server always, a real cluster when asked.

A real cluster is used when ``KUBECONFIG`` is set: the context is ``RUNBOOK_KUBE_CONTRACT_CONTEXT``, else the
kubeconfig's current context. The suite creates a throwaway namespace ``runbook-contract-<random>`` there
and deletes it afterwards. It never runs against a context that a ``production: true`` env file names. Its
pods run the stand-in images the kind testbed builds (``runbook testbed up --env=kind``); when the nodes do
not have them, the cluster leg skips and says which are missing.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from runbook.adapters.kube import KubeWorkloads
from runbook.adapters.kube_api import kubeconfig_paths
from runbook.env import Env, KubeConfig, envs_dir, known_envs, load_env
from runbook.errors import KubeError
from runbook.testbed import kind
from runbook.wait import wait_for
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster
from tests.kube.fake_state import ImageStore, qualify
from tests.kube.objects import make_env, write_kubeconfig

CONTEXT_VAR = "RUNBOOK_KUBE_CONTRACT_CONTEXT"


@dataclass(frozen=True)
class Images:
    """Stand-in images of the kind testbed: a sidecar at two versions (distinct digests) and an app."""

    sidecar: str
    sidecar_new: str
    app: str

    @classmethod
    def of_kind_testbed(cls) -> Images:
        builds = kind.image_builds(load_env("kind"))
        dz = [tags[0] for target, _, tags in builds if target == "doublezero"]
        agave = [tags[0] for target, _, tags in builds if target == "agave"]
        return cls(sidecar=dz[0], sidecar_new=dz[1], app=agave[0])

    def all(self) -> tuple[str, ...]:
        return (self.sidecar, self.sidecar_new, self.app)


@dataclass
class Target:
    """One API server the contract runs against, with a namespace of its own."""

    name: str
    env: Env
    kube: KubeWorkloads
    core: k8s.CoreV1Api
    apps: k8s.AppsV1Api
    namespace: str
    images: Images
    timeout: float  # how long a rollout or a restart may take here
    fake: FakeApiServer | None = None


def kind_testbed_images() -> ImageStore:
    """The node's image store as the kind testbed leaves it: every stand-in image under all its tags."""
    store = ImageStore()
    for _, _, tags in kind.image_builds(load_env("kind")):
        store.add(*tags)
    return store


def _target(name: str, env: Env, images: Images, timeout: float, fake: FakeApiServer | None) -> Target:
    kube = KubeWorkloads(env, request_timeout=10.0, poll_interval=0.05 if fake else 0.5)
    assert env.kube is not None
    return Target(name=name, env=env, kube=kube, core=k8s.CoreV1Api(kube.api_client),
                  apps=k8s.AppsV1Api(kube.api_client), namespace=env.kube.namespace, images=images,
                  timeout=timeout, fake=fake)


def raw(fn: Callable[..., Any], *args: Any, **kw: Any) -> dict[str, Any]:
    """One client call's body, JSON as the API server sent it (not the client's models)."""
    data = json.loads(fn(*args, _preload_content=False, **kw).data)
    assert isinstance(data, dict)
    return data


def send(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """One client call with a plain-JSON body (the client's models are not what is tested here)."""
    return fn(*args, **kw)


def create_namespace(core: k8s.CoreV1Api, name: str) -> None:
    labels = {"app.kubernetes.io/part-of": "runbook-contract"}
    send(core.create_namespace, {"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": name, "labels": labels}})


def _create_namespace(t: Target) -> None:
    create_namespace(t.core, t.namespace)


def _delete_namespace(t: Target) -> None:
    try:
        t.core.delete_namespace(t.namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return
        raise

    def present() -> bool:
        try:
            t.core.read_namespace(t.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(present, lambda p: not p, timeout=max(t.timeout, 120.0), interval=0.05 if t.fake else 0.5,
             what=f"namespace {t.namespace} to be deleted", obj=f"namespace/{t.namespace}")


def mock_target(tmp: Path) -> Iterator[Target]:
    server = FakeApiServer(FakeCluster(images=kind_testbed_images()))
    try:
        namespace = f"runbook-contract-{secrets.token_hex(3)}"
        env = make_env(write_kubeconfig(tmp / "kubeconfig", server.url), namespace=namespace)
        t = _target("mock", env, Images.of_kind_testbed(), 10.0, server)
        _create_namespace(t)
        yield t
        _delete_namespace(t)
    finally:
        server.stop()


def _current_context(paths: list[Path]) -> str:
    for p in paths:
        if p.is_file():
            ctx = (yaml.safe_load(p.read_text()) or {}).get("current-context")
            if ctx:
                return str(ctx)
    return ""


def _production_contexts() -> dict[str, str]:
    out = {}
    for name in known_envs(envs_dir()):
        env = load_env(name)
        if env.production and env.kube is not None:
            out[env.kube.context] = name
    return out


def _missing_images(core: k8s.CoreV1Api, images: Images) -> list[str]:
    present = {n for node in raw(core.list_node).get("items") or []
               for img in (node.get("status") or {}).get("images") or [] for n in img.get("names") or []}
    return [i for i in images.all() if qualify(i) not in present]


def cluster_target() -> Iterator[Target]:
    """The real cluster leg, or a skip saying why it cannot run."""
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no real cluster: KUBECONFIG is not set (set it, and optionally "
                    f"{CONTEXT_VAR}, to run the contract suite against a cluster)")
    paths = kubeconfig_paths(KubeConfig(context="", namespace=""))
    context = os.environ.get(CONTEXT_VAR) or _current_context(paths)
    if not context:
        pytest.skip(f"no real cluster: KUBECONFIG names no current context and {CONTEXT_VAR} is not set")
    production = _production_contexts()
    if context in production:
        pytest.skip(f"kube context {context} is production env {production[context]}'s: the contract suite "
                    "never creates anything there")
    namespace = f"runbook-contract-{secrets.token_hex(3)}"
    env = load_env("kind").model_copy(update={"kube": KubeConfig(context=context, namespace=namespace)})
    images = Images.of_kind_testbed()
    try:
        t = _target("cluster", env, images, 180.0, None)
        missing = _missing_images(t.core, images)
    except (KubeError, k8s.ApiException, OSError) as exc:
        pytest.skip(f"no usable cluster at kube context {context}: {exc}")
    if missing:
        pytest.skip(f"the nodes of kube context {context} lack the kind testbed's stand-in images "
                    f"{', '.join(missing)} (build and load them: runbook testbed up --env=kind)")
    _create_namespace(t)
    try:
        yield t
    finally:
        _delete_namespace(t)


def deployment_manifest(name: str, namespace: str, images: Images, *, sidecar: str | None = None,
                        app: str | None = None, app_command: list[str] | None = None) -> dict[str, Any]:
    """A Deployment shaped like biscayne's (a native sidecar before the app, Recreate), whose containers
    only sleep: the stand-in images' programs are not what the contract is about."""
    labels = {"app.kubernetes.io/name": name, "runbook/contract": "true"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "initContainers": [{"name": "doublezerod", "image": sidecar or images.sidecar,
                                    "restartPolicy": "Always", "command": ["sleep", "3600"]}],
                "containers": [{"name": "agave-validator", "image": app or images.app,
                                "command": app_command or ["sleep", "3600"]}]}}},
    }


def contract_deployment(t: Target, name: str, *, sidecar: str | None = None, app: str | None = None,
                        app_command: list[str] | None = None) -> dict[str, Any]:
    return deployment_manifest(name, t.namespace, t.images, sidecar=sidecar, app=app, app_command=app_command)
