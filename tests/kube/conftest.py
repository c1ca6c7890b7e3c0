"""Fixtures of the kube adapter tests: a Kubernetes API mock server over real HTTP on loopback, a
WebSocket exec server, and adapters whose kubeconfig points at them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from runbook.adapters.kube import KubeWorkloads
from runbook.env import Env
from tests.kube.fake_apiserver import ExecReply, ExecServer, make_env, write_kubeconfig

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
    """The mock API server with no handlers and an empty request log."""
    module_server.clear()
    yield module_server
    module_server.clear()


@pytest.fixture
def env(server: HTTPServer, tmp_path: Path) -> Env:
    return make_env(write_kubeconfig(tmp_path / "kubeconfig", server.url_for("/").rstrip("/")))


@pytest.fixture
def kube(env: Env) -> KubeWorkloads:
    return KubeWorkloads(env, request_timeout=2.0, poll_interval=0.05)



@pytest.fixture(scope="module")
def exec_server() -> Iterator[ExecServer]:
    def reply(_path: str, query: dict[str, list[str]]) -> ExecReply:
        argv = query["command"]
        if argv == ["doublezero", "--version"]:
            return ExecReply(stdout="DoubleZero 0.6.1\n")
        if argv[0] == "false":
            return ExecReply(stderr="nope\n", exit_code=3)
        if argv[0] == "missing":
            return ExecReply(exit_code=-1, status_message='exec: "missing": executable file not found in $PATH')
        return ExecReply(refuse=403, status_message='pods "p1" is forbidden: User "x" cannot create resource '
                         '"pods/exec" in API group "" in the namespace "agave"')

    srv = ExecServer(reply)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _fresh_exec_log(request: pytest.FixtureRequest) -> None:
    if "exec_server" in request.fixturenames:
        request.getfixturevalue("exec_server").requests.clear()


@pytest.fixture
def exec_kube(exec_server: ExecServer, tmp_path: Path) -> KubeWorkloads:
    env = make_env(write_kubeconfig(tmp_path / "kubeconfig-exec", exec_server.url))
    return KubeWorkloads(env, request_timeout=2.0)
