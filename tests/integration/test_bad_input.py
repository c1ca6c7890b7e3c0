"""Bad input gets one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from tests.integration.envfiles import make_env
from tests.integration.run import cli
from tests.integration.run import pytest as run_pytest

pytestmark = pytest.mark.integration


def test_unknown_env_lists_the_known_ones(tmp_path: Path) -> None:
    for ran in (run_pytest("features/", "--env=nope", reports=tmp_path), cli("testbed", "up", "--env", "nope")):
        assert ran.rc != 0
        assert "unknown environment 'nope'" in ran.out
        known = ran.out.split("known environments are ", 1)[-1].split(" (", 1)[0].split(", ")
        assert {"biscayne", "kind", "local"} <= set(known), ran.out
        assert not ran.traceback, ran.out


def test_env_file_with_a_wrong_field_names_file_field_and_problem(tmp_path: Path) -> None:
    path = make_env(tmp_path, deployments__green__rpc_port=99999, storage__backend="nfs")
    for ran in (run_pytest("features/", f"--env={path}", reports=tmp_path), cli("testbed", "up", "--env", str(path))):
        assert ran.rc != 0
        assert str(path) in ran.out
        assert "deployments.green.rpc_port" in ran.out and "less than or equal to 65535" in ran.out
        assert "storage.backend" in ran.out and "'nfs'" in ran.out
        assert not ran.traceback, ran.out


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    path = make_env(tmp_path, ingress__healthcheck="/health")
    ran = run_pytest("features/", f"--env={path}", reports=tmp_path)
    assert ran.rc != 0 and "ingress.healthcheck" in ran.out and "Extra inputs are not permitted" in ran.out
    assert not ran.traceback


def test_port_in_use_names_the_port_and_the_setting(tmp_path: Path) -> None:
    path = make_env(tmp_path)
    port = yaml.safe_load(path.read_text())["deployments"]["green"]["rpc_port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        runs = (run_pytest("features/", f"--env={path}", reports=tmp_path), cli("testbed", "up", "--env", str(path)))
        for ran in runs:
            assert ran.rc != 0, ran.out
            assert f"port {port}" in ran.out and "deployments.green.rpc_port" in ran.out, ran.out
            assert "already in use by pid" in ran.out
            assert not ran.traceback, ran.out
