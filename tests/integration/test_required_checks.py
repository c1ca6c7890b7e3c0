"""Each required-changes check fails when its trap is present."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.base import ContainerStatus, PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks import required
from runbook.checks.core import judge
from runbook.checks.workloads import running_pod
from runbook.env import load_env
from runbook.errors import CheckFailed
from runbook.manifests import render_deployment

pytestmark = pytest.mark.integration


def _pod(kind: str) -> PodInfo:
    c = ContainerStatus("doublezerod", kind, "laconicnetwork/doublezero:v0.6.0", "id", "running", None, 0,  # type: ignore[arg-type]
                        True)
    return PodInfo("agave-green-x", "agave-green", "Running", (c,))


def test_a_regular_doublezerod_container_fails_the_audit() -> None:
    assert required.native_sidecar(_pod("sidecar"), "doublezerod").ok
    with pytest.raises(CheckFailed, match=r"must be a running native sidecar.*a regular \(app\) container"):
        judge(None, required.native_sidecar(_pod("app"), "doublezerod"))


def test_colours_that_differ_beyond_name_port_paths_and_image_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    env = load_env("local")
    assert required.parameterized(env).ok  # the shipped overlays pass

    def diverging(e: Any, colour: str, **kw: Any) -> dict[str, Any]:
        m = copy.deepcopy(render_deployment(e, colour, **kw))
        if colour == "blue":
            m["spec"]["strategy"] = {"type": "RollingUpdate"}  # a surge pod cannot bind its hostNetwork port
        return m

    monkeypatch.setattr(required, "render_deployment", diverging)
    with pytest.raises(CheckFailed, match=r"spec\.strategy\.type"):
        judge(None, required.parameterized(env))


class _Workloads:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def daemonsets(self) -> list[str]:
        return self.names


def test_a_doublezero_daemonset_fails_the_audit() -> None:
    assert required.no_daemonset(_Workloads(["kube-proxy"])).ok  # type: ignore[arg-type]
    with pytest.raises(CheckFailed, match="doublezero-daemonset"):
        judge(None, required.no_daemonset(_Workloads(["doublezero-daemonset"])))  # type: ignore[arg-type]


def test_a_missing_identity_file_fails_the_audit(adapters: Adapters) -> None:
    env = adapters.env
    pod = running_pod(adapters.workloads, env.deployments.green.name)
    assert required.identity_file(adapters.workloads, pod.name, env.doublezero.sidecar).observed["mode"] == "600"
    home = adapters.workloads.exec(pod.name, env.doublezero.sidecar, ["sh", "-c", 'echo "$HOME"']).stdout.strip()
    key = Path(home) / ".config" / "doublezero" / "id.json"
    hidden = key.with_name("id.json.hidden")
    key.rename(hidden)
    try:
        with pytest.raises(CheckFailed, match="identity file must be in doublezerod's config volume"):
            judge(None, required.identity_file(adapters.workloads, pod.name, env.doublezero.sidecar))
    finally:
        hidden.rename(key)
    mode = key.stat().st_mode
    key.chmod(0o644)
    try:
        with pytest.raises(CheckFailed, match="mode 600"):
            judge(None, required.identity_file(adapters.workloads, pod.name, env.doublezero.sidecar))
    finally:
        key.chmod(mode)
