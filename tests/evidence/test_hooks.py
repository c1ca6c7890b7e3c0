"""The evidence plugin inside pytest runs (pytester, in process): paths, outcomes, safety of the bundle dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

FEATURE = """\
Feature: Hooks
  Scenario: A fixture a step needs fails
    Given a broken fixture

  Scenario: Skipped from inside a step
    Given a step that skips

  Scenario Outline: Outline <n>
    Given the number <n>

    Examples:
      | n |
      | 1 |
      | 2 |
"""

STEPS = """\
import pytest
from pytest_bdd import given, parsers, scenarios

from runbook.checks.core import check, verdict


@check(negative="tests/evidence/test_hooks.py")
def one_of(title, allowed, n):
    return verdict(title, expected=f"one of {allowed}", observed=n, problems=[] if n in allowed else [f"{n}"])

scenarios("hooks.feature")


@pytest.fixture
def broken():
    raise RuntimeError("kube API unreachable")


@given("a broken fixture")
def uses_broken(broken):
    pass


@given("a step that skips")
def skips(evidence):
    evidence.note("checking CAP_NET_ADMIN")
    pytest.skip("no CAP_NET_ADMIN here")


@given(parsers.parse("the number {n:d}"))
def number(n, evidence):
    evidence.verdict(one_of("n", (1, 2), n))


def test_plain_with_evidence(evidence):
    evidence.call("echo hi", "hi")


def test_plain_without_evidence():
    pass


def test_plain_setup_error(evidence, broken):
    pass
"""

CONFTEST = """\
import pytest

@pytest.fixture(scope="session", autouse=True)
def _collector(diagnostics):
    return diagnostics.register(lambda ctx: {"where": f"{ctx.when}: {ctx.error}"}, name="where")
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".feature", hooks=FEATURE)
    pytester.makepyfile(test_hooks_demo=STEPS)
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\naddopts = -p runbook.evidence.hooks -p no:cacheprovider\n")
    return pytester


def _doc(root: Path, bundle: str = "reports/bundle") -> dict[str, Any]:
    return json.loads((root / bundle / "bundle.json").read_text())


def test_outcomes_and_paths_next_to_the_html_report(project: pytest.Pytester) -> None:
    result = project.runpytest("--html=out/r.html", "--self-contained-html")
    result.assert_outcomes(passed=4, failed=1, skipped=1, errors=1)
    doc = _doc(project.path, "out/bundle")
    by_name = {s["nodeid"].split("::")[-1]: s for s in doc["scenarios"]}
    assert "test_plain_without_evidence" not in by_name  # plain tests without evidence stay out
    assert by_name["test_plain_with_evidence"]["scenario"] is None
    failed = by_name["test_a_fixture_a_step_needs_fails"]
    assert failed["outcome"] == "failed" and "kube API unreachable" in failed["reason"]
    step = failed["steps"][0]
    assert step["status"] == "failed" and step["diagnostics"][0]["content"].startswith("step: RuntimeError")
    err = by_name["test_plain_setup_error"]
    assert err["outcome"] == "error" and "kube API unreachable" in err["reason"]
    assert err["diagnostics"][0]["content"].startswith("setup: ")
    skipped = by_name["test_skipped_from_inside_a_step"]
    assert skipped["outcome"] == "skipped" and skipped["reason"] == "no CAP_NET_ADMIN here"
    assert skipped["steps"][0]["status"] == "skipped" and skipped["steps"][0]["entries"][0]["kind"] == "note"
    outline = by_name["test_outline_n[1]"]
    assert outline["scenario"]["name"] == "Outline 1" and outline["steps"][0]["text"] == "Given the number 1"
    assert len(list((project.path / "out" / "evidence").glob("*.json"))) == len(doc["scenarios"]) == 6
    assert 'href="bundle/' in (project.path / "out" / "r.html").read_text() or "bundle/" in (
        project.path / "out" / "r.html").read_text()


def test_explicit_paths(project: pytest.Pytester, tmp_path: Path) -> None:
    bundle, evid = tmp_path / "b", tmp_path / "e"
    project.runpytest(f"--evidence-bundle={bundle}", f"--evidence-dir={evid}", "-p", "no:html")
    assert (bundle / "bundle.json").is_file() and (bundle / "SHA256SUMS").is_file()
    assert len(list(evid.glob("*.json"))) == 6


def test_collect_only_leaves_the_last_bundle_alone(project: pytest.Pytester) -> None:
    project.runpytest()
    before = (project.path / "reports/bundle/SHA256SUMS").read_bytes()
    project.runpytest("--collect-only")
    assert (project.path / "reports/bundle/SHA256SUMS").read_bytes() == before


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(project: pytest.Pytester) -> None:
    (project.path / "precious").mkdir()
    (project.path / "precious" / "notes.txt").write_text("keep me")
    result = project.runpytest("--evidence-bundle=precious")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*refusing to replace*precious*not an evidence bundle*"])
    assert (project.path / "precious" / "notes.txt").read_text() == "keep me"


def test_a_second_run_replaces_the_bundle(project: pytest.Pytester) -> None:
    project.runpytest()
    stale = project.path / "reports/bundle/artifacts/stale.txt"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("from an older run")
    project.runpytest()
    assert not stale.exists()
