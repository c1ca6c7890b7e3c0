"""bench/mutation.py's own machinery, fast (no copy of the repository, no pytest run): a snippet found other
than exactly once is an error naming the mutation, a mutant is restored whatever happens, the definitions
shipped all apply to this checkout, and the table shows each outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.mutation import (
    ROOT,
    MutationError,
    Outcome,
    applied,
    check_definitions,
    failure_messages,
    format_table,
    junit_ids,
    mutated,
    run_pytest,
    use_testbed_state,
)
from bench.mutations import MUTATIONS, Mutation


def _m(old: str, new: str = "MUTANT", file: str = "x.py") -> Mutation:
    return Mutation("m1", "breaks x", file, old, new, ("tests/test_x.py::test_x",))


def test_a_snippet_found_once_is_replaced() -> None:
    assert mutated("a = 1\nb = 2\n", _m("b = 2")) == "a = 1\nMUTANT\n"


@pytest.mark.parametrize("text", ["a = 1\n", "b = 2\nb = 2\n"])
def test_a_snippet_not_found_exactly_once_is_an_error(text: str) -> None:
    with pytest.raises(MutationError, match=r"mutation m1: its snippet occurs [02] times in x.py"):
        mutated(text, _m("b = 2"))


def test_definition_errors_are_all_reported(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("b = 2\n")
    bad = [_m("nowhere"), _m("b = 2", file="gone.py"), _m("b = 2", new="b = 2"),
           Mutation("m2", "x", "x.py", "b = 2", "c", ())]
    errors = check_definitions(tmp_path, bad)
    assert any("occurs 0 times" in e for e in errors) and any("gone.py does not exist" in e for e in errors)
    assert any("the new snippet is the old one" in e for e in errors) and any("m1: the name is used twice" in e
                                                                              for e in errors)
    assert any("m2: no catching test named" in e for e in errors)
    assert check_definitions(tmp_path, [_m("b = 2")]) == []


def test_the_shipped_mutations_apply_to_this_checkout() -> None:
    assert check_definitions(ROOT, MUTATIONS) == []
    assert len({m.file for m in MUTATIONS}) >= 5 and all(m.catchers for m in MUTATIONS)


def test_a_mutant_is_restored_even_when_its_run_fails(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("b = 2\n")
    with pytest.raises(RuntimeError), applied(tmp_path, _m("b = 2")):
        assert (tmp_path / "x.py").read_text() == "MUTANT\n"
        raise RuntimeError("the run crashed")
    assert (tmp_path / "x.py").read_text() == "b = 2\n"


def test_the_table_shows_each_outcome_and_the_total() -> None:
    table = format_table([Outcome("skip-verify", "verify returns early", True, ["tests/a.py::test_a"], 2.34),
                          Outcome("swap", "steps swapped", False, [], 3.0, note="timed out after 90 s")], 5.5)
    lines = table.splitlines()
    assert lines[0].split(" | ")[:4] == ["mutation   ", "what it breaks      ", "caught", "by (failed tests)   "]
    assert set(lines[1]) <= {"-", "+"}
    assert lines[2].startswith("skip-verify | verify returns early | yes    | tests/a.py::test_a") and \
        lines[2].endswith("  2.3")
    assert lines[3].startswith("swap        | steps swapped        | NO     | timed out after 90 s")
    assert lines[-1] == "1 of 2 mutations caught; total 5.5 s"


def test_failed_and_skipped_tests_are_read_from_the_junit_report(tmp_path: Path) -> None:
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="tests.procedures.test_a" name="test_x[1]">'
                     '<failure message="AssertionError: DID NOT RAISE&#10;more"/></testcase>'
                     '<testcase classname="tests.test_b" name="test_y"><skipped/></testcase>'
                     '<testcase classname="tests.test_b" name="test_z"/></testsuite></testsuites>')
    assert junit_ids(junit, "failure", "error") == ["tests/procedures/test_a.py::test_x[1]"]
    assert junit_ids(junit, "skipped") == ["tests/test_b.py::test_y"]
    assert junit_ids(tmp_path / "none.xml", "failure") == []
    assert failure_messages(junit) == ["AssertionError: DID NOT RAISE"]


def test_a_mutant_that_does_not_compile_is_a_definition_error(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("def f():\n    return 1\n")
    assert check_definitions(tmp_path, [_m("    return 1", "    return (")]) == [
        "mutation m1: the mutant of x.py does not compile ('(' was never closed, line 2)"]


def test_only_a_failed_test_is_a_catch_not_an_import_error(tmp_path: Path) -> None:
    """A real pytest run in a tiny tree: a failing test is caught; a module that no longer imports is an error,
    not a catch; a passing run passes; a skipped test does not pass a baseline."""
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "local.yaml").write_text("testbed:\n  state_dir: .testbed/local\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    mutating: as the repository's\n")
    (tmp_path / "test_a.py").write_text("def test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2\n")
    (tmp_path / "test_b.py").write_text("import nosuchmodule_mutant\n\ndef test_x():\n    pass\n")
    (tmp_path / "test_c.py").write_text("import pytest\n\ndef test_s():\n    pytest.skip('no')\n")
    bad = run_pytest(tmp_path, ["test_a.py"], timeout=60)
    assert bad.failed == ["test_a.py::test_bad"] and not bad.passed
    broken = run_pytest(tmp_path, ["test_b.py"], timeout=60)
    assert broken.failed == [] and broken.errors and not broken.passed
    good = run_pytest(tmp_path, ["test_a.py::test_ok"], timeout=60)
    assert good.passed and good.failed == [] == good.errors
    skipped = run_pytest(tmp_path, ["test_c.py"], timeout=60)
    assert not skipped.passed and skipped.skipped == ["test_c.py::test_s"]


def test_the_copys_testbed_state_is_its_own_only_for_testbed_runs(tmp_path: Path) -> None:
    (tmp_path / "envs").mkdir()
    env = tmp_path / "envs" / "local.yaml"
    env.write_text("testbed:\n  state_dir: .testbed/local\n  supervisor_port: 19001\n")
    use_testbed_state(tmp_path, own=False, src=Path("/src"))
    assert env.read_text() == "testbed:\n  state_dir: /src/.testbed/local\n  supervisor_port: 19001\n"
    use_testbed_state(tmp_path, own=True, src=Path("/src"))
    assert env.read_text() == "testbed:\n  state_dir: .testbed/local\n  supervisor_port: 19001\n"
    env.write_text("testbed:\n  state_dir: elsewhere\n")
    with pytest.raises(MutationError, match="names no testbed state_dir"):
        use_testbed_state(tmp_path, own=True, src=Path("/src"))
