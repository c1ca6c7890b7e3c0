"""Fixtures of the kube adapter tests.

- ``server``/``env``/``kube``: pytest-httpserver answering scripted bodies, for request shapes and messages;
- ``fake``/``fake_kube``: the stateful Kubernetes API mock server (:mod:`tests.kube.fake_apiserver`);
- ``target``: the contract suite's targets, the mock always and a real cluster when ``KUBECONFIG`` is set
  (:mod:`tests.kube.contract`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from runbook.adapters.kube import KubeWorkloads
from runbook.env import Env
from tests.kube.contract import Target, cluster_target, create_namespace, kind_testbed_images, mock_target
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster
from tests.kube.objects import make_env, write_kubeconfig

if TYPE_CHECKING:
    from pytest_httpserver import HTTPServer


@pytest.fixture(scope="module")
def module_server() -> Iterator[HTTPServer]:
    httpserver = pytest.importorskip("pytest_httpserver", reason="pytest-httpserver (a dev dependency) is absent")
    srv = httpserver.HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server(module_server: HTTPServer) -> Iterator[HTTPServer]:
    """The scripted mock API server with no handlers and an empty request log."""
    module_server.clear()
    yield module_server
    module_server.clear()


@pytest.fixture
def env(server: HTTPServer, tmp_path: Path) -> Env:
    return make_env(write_kubeconfig(tmp_path / "kubeconfig", server.url_for("/").rstrip("/")))


@pytest.fixture
def kube(env: Env) -> KubeWorkloads:
    return KubeWorkloads(env, request_timeout=2.0, poll_interval=0.05)


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    """A fresh stateful mock API server whose node has the kind testbed's stand-in images."""
    srv = FakeApiServer(FakeCluster(images=kind_testbed_images()))
    yield srv
    srv.stop()


@pytest.fixture
def fake_kube(fake: FakeApiServer, tmp_path: Path) -> KubeWorkloads:
    """An adapter on the stateful mock, in a namespace created for the test."""
    namespace = f"t-{secrets.token_hex(3)}"
    kube = KubeWorkloads(make_env(write_kubeconfig(tmp_path / "kubeconfig-fake", fake.url), namespace=namespace),
                         request_timeout=5.0, poll_interval=0.02)
    create_namespace(kube.core, namespace)
    return kube


@pytest.fixture(scope="module", params=["mock", pytest.param("cluster", marks=pytest.mark.kubernetes)])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The contract suite's API servers: the mock always; a real cluster when KUBECONFIG is set. Only the
    cluster leg is marked ``kubernetes`` (it needs a Kubernetes API; the plugin skips that marker on an env
    without one, which would skip the mock leg on the default env too)."""
    if request.param == "mock":
        yield from mock_target(tmp_path_factory.mktemp("contract"))
    else:
        yield from cluster_target()
