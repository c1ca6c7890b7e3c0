"""API failures of the kube adapter, each with its message. Against scripted answers over real HTTP on
loopback (tests/kube/conftest.py). The RBAC Role's verbs: test_fake_apiserver.py."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from runbook.adapters.kube import KubeWorkloads, check_reachable
from runbook.env import Env, load_env
from runbook.errors import KubeError
from runbook.manifests import render_deployment
from tests.kube.objects import (
    API,
    APPS,
    NS,
    items,
    make_env,
    status,
    write_kubeconfig,
)

pytest.importorskip("pytest_httpserver", reason="pytest-httpserver (a dev dependency) is absent")
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

ROOT = Path(__file__).resolve().parents[2]
DZ = "laconicnetwork/doublezero:v0.6.0"
DZ_NEW = "laconicnetwork/doublezero:v0.6.1"
AGAVE = "laconicnetwork/agave:v2.1.0"


# --------------------------------------------------------------------------- API errors


@pytest.mark.parametrize(("code", "reason", "message", "expected"), [
    (401, "Unauthorized", "Unauthorized",
     "get pod/p1 in namespace agave: the API server at {server} rejected the credentials of context fake "
     "(401 Unauthorized): Unauthorized; refresh the kubeconfig"),
    (403, "Forbidden", 'pods "p1" is forbidden: User "ci" cannot get resource "pods" in the namespace "agave"',
     'get pod/p1 in namespace agave: forbidden (403): pods "p1" is forbidden: User "ci" cannot get resource '
     '"pods" in the namespace "agave"; the runbook needs the Role in deploy/k8s/base/rbac.yaml'),
    (404, "NotFound", 'pods "p1" not found', 'get pod/p1 in namespace agave: not found (404): pods "p1" not found'),
])
def test_api_errors_become_kube_errors_with_a_clear_message(server: HTTPServer, kube: KubeWorkloads, code: int,
                                                             reason: str, message: str, expected: str) -> None:
    server.expect_request(f"{API}/pods/p1").respond_with_json(status(code, reason, message), code)
    with pytest.raises(KubeError) as err:
        kube.pod("p1")
    text = str(err.value)
    assert expected.format(server=kube.target.server) in text
    assert text.endswith("[env=kind, object=pod/p1]")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_conflict_409_says_what_happened(server: HTTPServer, kube: KubeWorkloads) -> None:
    server.expect_request(f"{APPS}/deployments/agave-blue", method="GET").respond_with_json(
        status(404, "NotFound", "not found"), 404)
    server.expect_request(f"{APPS}/deployments", method="POST").respond_with_json(
        status(409, "AlreadyExists", 'deployments.apps "agave-blue" already exists'), 409)
    with pytest.raises(KubeError) as err:
        kube.apply_deployment(render_deployment(kube.env, "blue"))
    assert str(err.value) == (
        'create deployment/agave-blue in namespace agave: conflict (409): deployments.apps "agave-blue" already '
        "exists; it was changed or created by someone else meanwhile: re-read it and retry "
        "[env=kind, object=deployment/agave-blue]")


def test_a_server_that_does_not_answer_times_out(server: HTTPServer, env: Env) -> None:
    def slow(_req: Request) -> Response:
        time.sleep(1.5)
        return Response("{}", 200, content_type="application/json")

    server.expect_request(f"{API}/pods/p1").respond_with_handler(slow)
    kube = KubeWorkloads(env, request_timeout=0.3)
    start = time.monotonic()
    with pytest.raises(KubeError) as err:
        kube.pod("p1")
    assert time.monotonic() - start < 1.5  # gave up before the server's (injected, 1.5 s late) answer
    assert str(err.value) == (f"get pod/p1 in namespace agave: the API server at {kube.target.server} (context "
                              "fake) did not answer within 0.3s [env=kind, object=pod/p1]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_is_reported_at_once(tmp_path: Path) -> None:
    env = make_env(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}"))
    start = time.monotonic()
    with pytest.raises(KubeError) as err:
        check_reachable(env, timeout=5)
    assert time.monotonic() - start < 5  # refused at once, not waited out to the 5 s timeout
    assert "list deployments in namespace agave: cannot reach the API server at http://127.0.0.1:" in str(err.value)
    assert "connection refused or no route (is the cluster up?) [env=kind, object=deployments]" in str(err.value)


def test_check_reachable_without_a_kubeconfig(tmp_path: Path) -> None:
    env = make_env(tmp_path / "nowhere" / "config")
    with pytest.raises(KubeError) as err:
        check_reachable(env)
    assert str(err.value).startswith(f"no kubeconfig for env kind: looked for {tmp_path / 'nowhere' / 'config'}")


def test_check_reachable_with_an_unknown_context(server: HTTPServer, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kubeconfig", server.url_for("/"), context="other")
    with pytest.raises(KubeError) as err:
        check_reachable(make_env(path, context="kind-runbook"))
    assert f"kube context 'kind-runbook' of env kind is not in {path} (contexts there: other)" in str(err.value)


def test_check_reachable_on_an_env_without_kube() -> None:
    with pytest.raises(KubeError, match="env local has no `kube:` section"):
        check_reachable(load_env("local"))


def test_check_reachable_passes_against_a_live_server(server: HTTPServer, env: Env) -> None:
    server.expect_request(f"{APPS}/deployments", method="GET").respond_with_json(items())
    assert check_reachable(env).namespace == NS
