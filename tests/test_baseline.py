"""The baseline every mutating scenario starts from and leaves (runbook.baseline), through the ports only:
the same reset on the local testbed and on kind, returning what it had to fix.

Unit tests here run against stateful fakes of the workloads and ingress ports and a real ``copy`` storage
backend; ``test_a_scenario_that_leaves_state_fails_in_teardown`` runs a small pytest-bdd project through
the real fixture (the old fixture threw the reset's list away: that scenario passed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runbook import baseline as bl
from runbook.adapters.factory import Adapters
from runbook.env import PROJECT_ROOT, load_env
from runbook.errors import TestbedError
from runbook.manifests import render_deployment
from runbook.procedures import journal_for
from runbook.procedures.bluegreen import upstream_address
from tests.baseline_fakes import FakeIngress, FakeWorkloads, make_adapters


@pytest.fixture
def adapters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Adapters:
    monkeypatch.setattr(bl, "wait_serving", lambda adapters, progress=None: None)  # no HTTP here
    return make_adapters(tmp_path)


def wl(a: Adapters) -> FakeWorkloads:
    assert isinstance(a.workloads, FakeWorkloads)
    return a.workloads


def upgrade(a: Adapters, *, destroy_old: bool = False) -> None:
    """What a finished agave upgrade leaves: blue live on a clone, green stopped, blue first in Caddy."""
    env, st = a.env, a.storage
    green, blue = env.deployments.green, env.deployments.blue
    snap = st.snapshot(green.data, "pre-upgrade-v2.2.1")
    clone = st.clone(snap, blue.data)
    a.workloads.apply_deployment(render_deployment(env, "blue", image="laconicnetwork/agave:v2.2.1",
                                                   host_paths={"ledger": f"{clone.path}/ledger"}))
    a.workloads.delete_deployment(green.name)
    a.ingress.set_upstream_order([upstream_address(env, "blue"), upstream_address(env, "green")])
    if destroy_old:
        st.promote(blue.data)
        st.destroy(green.data, recursive=True)
    journal_for(env, "agave-upgrade").save({"procedure": "agave-upgrade", "status": "done"})
    wl(a).calls.clear()


def test_the_baseline_is_read_from_the_live_objects_without_server_fields(adapters: Adapters) -> None:
    b = bl.capture(adapters)
    assert b.green["metadata"]["name"] == "agave-green"
    assert "resourceVersion" not in b.green["metadata"] and "status" not in b.green
    assert "deployment.kubernetes.io/revision" not in b.green["metadata"].get("annotations", {})
    assert b.upstream_order == (upstream_address(adapters.env, "green"), upstream_address(adapters.env, "blue"))
    assert b.datasets == (adapters.env.deployments.green.data,)
    assert b.deployments == ("agave-green",)


def test_nothing_to_fix_when_the_environment_is_the_baseline(adapters: Adapters) -> None:
    b = bl.capture(adapters)
    assert bl.restore(adapters, b) == []
    assert wl(adapters).calls == []
    assert isinstance(adapters.ingress, FakeIngress) and adapters.ingress.loads == 0


def test_after_a_finished_upgrade_everything_is_named_and_put_back(adapters: Adapters) -> None:
    b = bl.capture(adapters)
    upgrade(adapters)
    fixed = bl.restore(adapters, b)
    text = "; ".join(fixed)
    assert "upstream order ['127.0.0.1:18897', '127.0.0.1:18899'] -> ['127.0.0.1:18899', '127.0.0.1:18897']" in text
    assert "reloaded Caddy's config" not in text  # the order file switched back, the config never changed
    assert any(f.startswith("deleted deployment agave-blue (pods agave-blue-") for f in fixed)
    assert "destroyed dataset volumes/solana-blue (a clone of volumes/solana@pre-upgrade-v2.2.1)" in fixed
    assert "destroyed snapshot volumes/solana@pre-upgrade-v2.2.1" in fixed
    assert "recreated deployment agave-green as captured" in fixed
    assert not any("journal" in f for f in fixed)  # a finished run's journal is cleared, not a leftover
    assert not journal_for(adapters.env, "agave-upgrade").path.exists()
    assert wl(adapters).deployments() == ["agave-green"]
    assert adapters.ingress.config() == b.ingress and adapters.ingress.loads == 0
    assert adapters.ingress.upstream_order() == list(b.upstream_order)
    assert [d.name for d in adapters.storage.datasets()] == ["volumes/solana"]
    assert adapters.storage.datasets()[0].snapshots == ()
    assert bl.restore(adapters, b) == []  # and now it is the baseline


def test_a_config_without_the_order_switch_is_put_back_by_reloading_it(adapters: Adapters) -> None:
    adapters = dataclasses.replace(adapters, ingress=FakeIngress(adapters.ingress.upstream_order(), switch=False))
    b = bl.capture(adapters)
    adapters.ingress.set_upstream_order(list(reversed(adapters.ingress.upstream_order())))  # a PATCHed config
    assert bl.restore(adapters, b) == ["reloaded Caddy's config as captured"]
    assert adapters.ingress.upstream_order() == list(b.upstream_order) and adapters.ingress.loads == 1


def test_green_data_destroyed_is_recreated_from_the_promoted_clone_through_the_storage_port(
        adapters: Adapters) -> None:
    b = bl.capture(adapters)
    upgrade(adapters, destroy_old=True)
    fixed = bl.restore(adapters, b)
    assert ("recreated volumes/solana from volumes/solana-blue, the promoted clone that had replaced it"
            in fixed)
    ds = {d.name: d for d in adapters.storage.datasets()}
    assert list(ds) == ["volumes/solana"] and ds["volumes/solana"].snapshots == ()
    assert (Path(ds["volumes/solana"].path) / "ledger" / "slot").read_text() == "100"
    assert bl.restore(adapters, b) == []


def test_the_local_testbed_reseeds_green_data_behind_the_same_interface(adapters: Adapters) -> None:
    b = bl.capture(adapters)
    upgrade(adapters, destroy_old=True)
    seeded: list[str] = []

    def reseed(progress: bl.Progress) -> None:
        seeded.append("yes")
        adapters.storage.ensure_dataset(adapters.env.deployments.green.data)

    extras = bl.LocalExtras(green_manifest=lambda: {}, reseed_green_data=reseed)
    fixed = bl.restore(adapters, b, extras=extras)
    assert seeded == ["yes"]
    assert "recreated volumes/solana (re-seeded: a scenario had destroyed it)" in fixed
    assert "destroyed dataset volumes/solana-blue" in fixed


def test_a_changed_green_deployment_is_re_applied_verbatim(adapters: Adapters) -> None:
    b = bl.capture(adapters)
    adapters.workloads.patch_template_container_image("agave-green", "doublezerod", "laconicnetwork/doublezero:v0.6.1")
    fixed = bl.restore(adapters, b)
    assert len(fixed) == 1 and fixed[0].startswith("re-applied deployment agave-green as captured (it differed: ")
    assert "image: 'laconicnetwork/doublezero:v0.6.0' -> 'laconicnetwork/doublezero:v0.6.1'" in fixed[0]
    assert wl(adapters).objects["agave-green"] == b.green


def test_a_pod_drifted_from_its_template_is_replaced(adapters: Adapters) -> None:
    b = bl.capture(adapters)
    pod = adapters.workloads.pods("agave-green")[0].name
    adapters.workloads.patch_pod_container_image(pod, "doublezerod", "laconicnetwork/doublezero:v0.6.1")
    fixed = bl.restore(adapters, b)
    assert len(fixed) == 1 and fixed[0].startswith(f"replaced agave-green's pod (pod {pod} runs ")
    assert adapters.workloads.pods("agave-green")[0].spec_images == bl.template_images(b.green)


def test_a_crashed_green_container_is_replaced(adapters: Adapters) -> None:
    b = bl.capture(adapters)
    pod = adapters.workloads.pods("agave-green")[0].name
    wl(adapters).pod_objects[pod]["state"] = "waiting"
    assert bl.restore(adapters, b) == [f"replaced agave-green's pod (pod {pod}: doublezerod waiting, agave-validator "
                                       "waiting)"]


def test_an_unfinished_run_journal_is_a_leftover_a_finished_one_is_not(adapters: Adapters) -> None:
    b = bl.capture(adapters)
    env = adapters.env
    journal_for(env, "dz-upgrade").save({"procedure": "dz-upgrade", "status": "rolled back"})
    journal_for(env, "agave-upgrade").save({"procedure": "agave-upgrade", "status": "running"})
    fixed = bl.restore(adapters, b)
    assert fixed == ["cleared the journal agave-upgrade.json of an unfinished agave-upgrade run (status 'running')"]
    assert not list(bl.journal_dir(env).glob("*.json"))


def test_the_capture_refuses_an_environment_that_is_not_the_baseline(adapters: Adapters) -> None:
    adapters.ingress.set_upstream_order(list(reversed(adapters.ingress.upstream_order())))
    with pytest.raises(TestbedError, match=r"Caddy's upstream order is .* green .* must come first"):
        bl.capture(adapters)
    adapters.ingress.set_upstream_order(list(reversed(adapters.ingress.upstream_order())))
    adapters.workloads.delete_deployment("agave-green")
    with pytest.raises(TestbedError, match="deployment agave-green is not in the cluster"):
        bl.capture(adapters)
    manifest = render_deployment(adapters.env, "green")
    b = bl.capture(adapters, extras=bl.LocalExtras(green_manifest=lambda: manifest, reseed_green_data=print))
    assert b.green == bl.sanitise(manifest)


def test_the_baseline_applies_to_testbeds_only() -> None:
    assert bl.is_testbed(load_env("local")) and bl.is_testbed(load_env("kind"))
    assert not bl.is_testbed(load_env("biscayne"))  # an operator's upgrade there is the new production


# ------------------------------------------------------------------------------------------ the fixture
CONFTEST = '''
import os
from pathlib import Path

import pytest

from runbook import baseline
from tests.baseline_fakes import make_adapters

pytest_plugins = ["runbook.evidence.hooks", "runbook.pytest_procedures"]
baseline.wait_serving = lambda adapters, progress=None: None  # no HTTP in this project
ADAPTERS = make_adapters(Path(os.environ["RB_BASELINE_ROOT"]))


@pytest.fixture(scope="session")
def env():
    return ADAPTERS.env


@pytest.fixture(scope="session")
def testbed():
    return None


@pytest.fixture(scope="session")
def adapters():
    return ADAPTERS
'''

FEATURE = '''\
@mutating
Feature: Baseline
  Scenario: A scenario that leaves blue running
    When blue is deployed
  Scenario: A scenario that cleans up after itself
    When blue is deployed
    And blue is deleted
'''

TESTS = '''
import pytest
from pytest_bdd import scenarios, when

from runbook.manifests import render_deployment

scenarios("baseline.feature")


@when("blue is deployed")
def deploy_blue(adapters):
    adapters.workloads.apply_deployment(render_deployment(adapters.env, "blue"))


@when("blue is deleted")
def delete_blue(adapters):
    adapters.workloads.delete_deployment("agave-blue")


@pytest.mark.mutating
def test_plain_test_that_leaves_blue(adapters):
    adapters.workloads.apply_deployment(render_deployment(adapters.env, "blue"))
'''


def test_a_scenario_that_leaves_state_fails_in_teardown(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(CONFTEST)
    (project / "baseline.feature").write_text(FEATURE)
    (project / "test_baseline_project.py").write_text(TESTS)
    (project / "pytest.ini").write_text("[pytest]\nmarkers =\n    mutating: changes the environment\n")
    evidence = tmp_path / "evidence"
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", f"--evidence-dir={evidence}",
         f"--evidence-bundle={tmp_path / 'bundle'}", "test_baseline_project.py"],
        cwd=project, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "RB_BASELINE_ROOT": str(tmp_path / "env")})
    out = ran.stdout + ran.stderr
    assert ran.returncode == 1, out
    assert "3 passed, 1 error" in out, out  # pytest counts the call as passed and the teardown as the error
    assert "ERROR at teardown of test_a_scenario_that_leaves_blue_running" in out, out
    assert "LeftBehind: the scenario left state behind; the baseline reset had to: deleted deployment agave-blue" \
        in out, out

    docs = {p.name: json.loads(p.read_text()) for p in evidence.glob("*.json")}
    left = next(d for n, d in docs.items() if "leaves_blue_running" in n)
    assert left["outcome"] == "error" and left["reason"].startswith("teardown: ")
    compare = next(e["data"] for s in left["steps"] for e in s["entries"]
                   if e["title"] == "left behind (what the baseline reset after the test had to fix)")
    assert compare["ok"] is False and compare["expected"] == []
    assert compare["observed"][0].startswith("deleted deployment agave-blue (pods agave-blue-")
    clean = next(d for n, d in docs.items() if "cleans_up" in n)
    assert clean["outcome"] == "passed"
    plain = next(d for n, d in docs.items() if "plain_test" in n)
    assert plain["outcome"] == "passed" and "deleted deployment agave-blue" in json.dumps(plain)  # recorded, lenient
