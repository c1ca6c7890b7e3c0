"""The baseline through the Kubernetes API (the kube adapter against the stateful API mock server): green's
Deployment is captured as the API returns it and re-applied verbatim when a scenario changed it, blue is
deleted with its pods, the kind env's journals (under $XDG_STATE_HOME/runbook/kind) are cleared. Before
issue 8 nothing did any of this on kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook import baseline as bl
from runbook.adapters.factory import Adapters
from runbook.adapters.host import TestinfraHost
from runbook.adapters.kube import KubeWorkloads
from runbook.adapters.storage import make_storage
from runbook.manifests import render_deployment
from runbook.procedures import journal_for
from runbook.procedures.bluegreen import upstream_address
from tests.baseline_fakes import FakeIngress


@pytest.fixture
def adapters(fake_kube: KubeWorkloads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Adapters:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # never the user's own kind journals
    monkeypatch.setattr(bl, "wait_serving", lambda adapters, progress=None: None)  # no ingress here
    env = fake_kube.env
    storage = make_storage("copy", tmp_path / "storage")
    storage.ensure_dataset(env.deployments.green.data)
    fake_kube.apply_deployment(render_deployment(env, "green"))
    fake_kube.wait_rollout(env.deployments.green.name, timeout=10.0)
    ingress = FakeIngress([upstream_address(env, "green"), upstream_address(env, "blue")])
    return Adapters(env=env, host=TestinfraHost("local://"), workloads=fake_kube, ingress=ingress, storage=storage,
                    host_path=lambda p: str(tmp_path / "node" / p.lstrip("/")))  # the node's paths, here


def test_green_is_captured_from_the_api_and_re_applied_verbatim(adapters: Adapters, tmp_path: Path) -> None:
    kube = adapters.workloads
    assert isinstance(kube, KubeWorkloads)
    live = bl.read_deployment(kube, "agave-green")
    assert live is not None and live["metadata"].get("resourceVersion")  # the API's object, not a render
    captured = bl.capture(adapters)
    assert "resourceVersion" not in captured.green["metadata"] and "status" not in captured.green
    assert bl.restore(adapters, captured) == []

    kube.patch_template_container_image("agave-green", "doublezerod", "laconicnetwork/doublezero:v0.6.1")
    kube.apply_deployment(render_deployment(adapters.env, "blue", image="runbook/agave-standin:v2.2.1"))
    journal_for(adapters.env, "agave-upgrade").save({"procedure": "agave-upgrade", "status": "running"})
    fixed = bl.restore(adapters, captured)

    assert any(f.startswith("deleted deployment agave-blue") for f in fixed), fixed
    assert any(f.startswith("re-applied deployment agave-green as captured (it differed: ") and
               "'laconicnetwork/doublezero:v0.6.1'" in f for f in fixed), fixed
    assert "cleared the journal agave-upgrade.json of an unfinished agave-upgrade run (status 'running')" in fixed
    assert bl.journal_dir(adapters.env) == tmp_path / "state" / "runbook" / "kind"
    assert not list(bl.journal_dir(adapters.env).glob("*.json"))
    assert "agave-blue" not in kube.deployments()
    now = bl.read_deployment(kube, "agave-green")
    assert now is not None and bl.differences(captured.green, bl.sanitise(now)) == []
    assert kube.pods("agave-green")[0].spec_images == bl.template_images(captured.green)
    assert bl.restore(adapters, captured) == []
