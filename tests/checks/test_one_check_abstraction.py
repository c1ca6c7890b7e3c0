"""Issue 11, must show 1: no evidence row is written outside the check abstraction, every Then step reaches a
registered check, and every check names a negative test that exists (python -m runbook.checks --list)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runbook.checks.catalog import ROOT, _step_functions, catalog, negative_exists, reachable_checks

CODE = [p for d in ("runbook", "steps", "features", "bench") for p in (ROOT / d).rglob("*.py")]


def _hits(pattern: str, *, within: tuple[str, ...] = ("",), outside: str = "runbook/checks/") -> list[str]:
    rx = re.compile(pattern)
    files = [p for p in CODE if str(p.relative_to(ROOT)).startswith(within)
             and not str(p.relative_to(ROOT)).startswith(outside)]
    return [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if rx.search(line)]


def test_no_row_is_marked_by_hand() -> None:
    """The recorder has no `compare(..., ok=...)`; verdicts are built only in runbook/checks."""
    assert not _hits(r"\.compare\("), "evidence rows written by hand"
    assert not _hits(r"\bok=(True|False|not |\w+ ==)", within=("steps/", "features/", "runbook/procedures/",
                                                                 "runbook/pytest_procedures.py")), \
        "an outcome passed as a flag"
    assert not _hits(r"\bVerdict\(|from runbook\.checks\.core import .*\b(verdict|skipped)\b"), \
        "a verdict built outside runbook/checks"


def test_the_grep_finds_a_hand_marked_row(tmp_path: Path) -> None:
    """The negative: a step that writes its own row is what the patterns above catch."""
    rx = re.compile(r"\.compare\(|\bok=(True|False|not |\w+ ==)")
    assert rx.search('    evidence.compare("mode", expected="600", observed=mode, ok=True)')
    assert rx.search("    row(ok=served == colour)")


def test_every_then_step_reaches_a_registered_check() -> None:
    thens = [(p, f) for p, f in _step_functions() if getattr(p, "name", "") and _kind(f) == "then"]
    assert thens
    silent = [f"{f.__module__}.{f.__name__}" for _, f in thens if not reachable_checks(f)]
    assert not silent, f"Then steps that judge nothing: {silent}"


def _kind(f: object) -> str:
    from pytest_bdd.steps import step_function_context_registry

    for ctx in step_function_context_registry.values():
        if ctx.step_func is f:
            return str(ctx.type)
    return ""


def test_every_check_names_negative_tests_that_exist() -> None:
    entries = catalog()
    assert len(entries) >= 30
    missing = [(n, t) for n, e in entries.items() for t in e.spec.negative if not negative_exists(t)]
    assert not missing, missing


@pytest.mark.parametrize("node", ["tests/checks/test_core.py::test_no_such_test", "tests/no_such_file.py"])
def test_a_missing_negative_test_is_reported(node: str) -> None:
    assert not negative_exists(node)


def test_no_step_skips_a_whole_scenario() -> None:
    """A missing capability skips one check (a skipped verdict), not the rest of the scenario: pytest.skip in a
    step (the old "doublezero0 routes survived") aborted the DZ scenario's whole rollback half."""
    assert not _hits(r"pytest\.skip\(", within=("steps/",))


def test_a_colour_or_version_word_the_step_does_not_handle_is_refused() -> None:
    """{which} and {version} reach the verdict: any other word is refused, never mapped to a default."""
    from runbook.errors import StepRefused
    from runbook.procedures.facts import UpgradeFacts
    from runbook.procedures.framework import Context
    from steps.upgrade import UpgradeRun, _colour, colour_serves, data_untouched

    run = UpgradeRun(Context(adapters=None, params={}, facts=UpgradeFacts(live="green", idle="blue")))  # type: ignore[arg-type]
    assert _colour(run, "old", allowed=("live", "old")) == "green"
    assert _colour(run, "new", allowed=("new", "idle")) == "blue"
    with pytest.raises(StepRefused, match="unknown colour 'blue'"):
        _colour(run, "blue", allowed=("live", "old", "new", "idle"))
    with pytest.raises(StepRefused, match="unknown colour 'new'"):
        data_untouched(None, run, {"colour": "green"}, None, "new")  # type: ignore[arg-type]
    with pytest.raises(StepRefused, match="unknown version 'latest'"):
        colour_serves(None, run, None, "live", "latest")  # type: ignore[arg-type]


def test_the_dz_steps_refuse_an_image_word_or_version_they_do_not_handle() -> None:
    from runbook.errors import StepRefused
    from runbook.procedures.facts import DzFacts
    from runbook.procedures.framework import Context
    from steps.dz_upgrade import SidecarPatch, sidecar_restarted

    ctx = Context(adapters=None, params={}, facts=DzFacts(old_image="dz:v0.6.0", target_image="dz:v0.6.1"))  # type: ignore[arg-type]
    patch = SidecarPatch(ctx, None, None, [], "dz:v0.6.1", "v0.6.1")  # type: ignore[arg-type]
    with pytest.raises(StepRefused, match="unknown image 'newest'"):
        sidecar_restarted(patch, "newest", None)  # type: ignore[arg-type]
    with pytest.raises(StepRefused, match="the step says the previous image"):
        sidecar_restarted(patch, "previous", None)  # type: ignore[arg-type]
