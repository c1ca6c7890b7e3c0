"""On production only the operator's procedures run: every scenario tagged @proof (it exists to show the
suite catches something: a stuck build, destroyed data, an interruption, fixed versions) is refused on an
env that is not disposable, whatever -k, -m or a node id selects. Collection only: nothing is reachable."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.env import PROJECT_ROOT
from tests.integration.run import pytest as run_pytest

OPERATOR_UPGRADE = ("features/test_features.py::"
                    "test_the_whole_upgrade_drops_no_request_and_never_serves_a_node_that_is_behind")
OPERATOR_DZ = "features/test_features.py::test_the_operator_moves_the_live_pods_doublezero_sidecar_to_the_version_given"


def _proof_scenarios() -> list[str]:
    """Every scenario the feature files tag @proof, by its title (read from the files, not a list here); a
    Scenario Outline once per row of its Examples (each is a test)."""
    titles = []
    for f in sorted((PROJECT_ROOT / "features").glob("*.feature")):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("Scenario") and i and "@proof" in lines[i - 1]:
                title = line.split(":", 1)[1].strip()
                rows = 1
                if line.strip().startswith("Scenario Outline"):
                    end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(("Scenario", "@"))),
                               len(lines))
                    rows = sum(1 for ln in lines[i + 1:end] if ln.strip().startswith("|")) - 1  # less the header
                titles += [title] * rows
    return titles


def _collected(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if ln.startswith("features/test_features.py::")]


@pytest.mark.parametrize(("selection", "operators"), [
    (["-k", "upgrade"], {OPERATOR_UPGRADE}), (["-k", "rollback"], set()),
    (["-m", "mutating"], {OPERATOR_UPGRADE, OPERATOR_DZ}),
    (["-m", "mutating", "-k", "upgrade or rollback or doublezero or spec"], {OPERATOR_UPGRADE, OPERATOR_DZ})])
def test_production_selects_only_the_operators_procedures(selection: list[str], operators: set[str],
                                                          tmp_path: Path) -> None:
    ran = run_pytest("features/", "--env=biscayne", "--allow-mutations", "--target-version=v2.2.1", "--yes",
                     "--collect-only", "-q", *selection, reports=tmp_path)
    assert ran.rc in (0, 5), ran.out
    picked = _collected(ran.out)
    assert set(picked) == operators, picked
    assert "proof scenarios refused: env biscayne is not disposable" in ran.out


def test_every_proof_is_refused_on_a_non_disposable_env_even_by_node_id(tmp_path: Path) -> None:
    proofs = _proof_scenarios()
    assert len(proofs) >= 7, proofs
    listed = run_pytest("features/", "--env=local", "--collect-only", "-q", "-m", "proof", reports=tmp_path / "local")
    ids = _collected(listed.out)  # their node ids, as a disposable env collects them
    assert len(ids) == len(proofs), listed.out
    ran = run_pytest(*ids, "--env=biscayne", "--allow-mutations", "--target-version=v2.2.1", "--yes",
                     "--collect-only", "-q", reports=tmp_path)
    assert _collected(ran.out) == [], ran.out
    for nodeid in ids:
        assert f"refused (proof, runs on disposable envs only): {nodeid}" in ran.out, (nodeid, ran.out)


def test_a_disposable_env_runs_the_proofs(tmp_path: Path) -> None:
    ran = run_pytest("features/", "--env=local", "--collect-only", "-q", "-m", "proof", reports=tmp_path)
    assert len(_collected(ran.out)) == len(_proof_scenarios()), ran.out
    assert "refused" not in ran.out


@pytest.mark.parametrize("other", ["seed-upgrade", "upgrade-identity-unchecked", "upgrade-writes-old-data"])
def test_a_negative_test_procedure_cannot_replace_the_operators_on_a_non_disposable_env(tmp_path: Path,
                                                                                       other: str) -> None:
    ran = run_pytest("features/", "--env=biscayne", "--collect-only", "-q", "--procedure-override",
                     f"agave-upgrade={other}", reports=tmp_path)
    assert ran.rc != 0, ran.out
    assert "is not disposable: --procedure-override" in ran.out and "refused" in ran.out, ran.out
