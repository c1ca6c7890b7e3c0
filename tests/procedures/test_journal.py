"""The procedure journal (issue 9, must-show 2): an interrupted run resumes, a second run is refused while the
first holds the env's lock (a real second process), a corrupt journal is an error, not "nothing to roll back".

Every test runs against both stores: a local directory (the testbed's, kind's) and the host-backed store
(biscayne's, ``/var/lib/runbook/<env>`` over ssh) through the real host adapter on ``local://``: the same
shell commands and the same ``flock`` holder that ssh would run on the host, without a second machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runbook.adapters.host import TestinfraHost
from runbook.errors import RunbookError
from runbook.procedures.facts import Facts
from runbook.procedures.framework import (
    Context,
    Interrupted,
    Journal,
    JournalCorrupt,
    Locked,
    Procedure,
    RunRefused,
    Step,
)
from runbook.procedures.journal import HostStore, JournalStore, LocalStore
from runbook.wait import wait_for

STEPS = ("a", "b", "c")


def toy(acted: list[str]) -> Procedure:
    """Three steps that record every time they act; ``is_done`` reads that record, as real steps read state."""

    def step(name: str) -> Step:
        return Step(name, f"step {name}", action=lambda ctx: acted.append(name), verify=lambda ctx: None,
                    is_done=lambda ctx: name in acted, rollback=lambda ctx: acted.remove(name))

    return Procedure(name="toy", summary="a toy", steps=tuple(step(n) for n in STEPS), facts=ToyFacts,
                     prepare=lambda ctx: setattr(ctx.facts, "prepared", ctx.params["target_version"]))


@dataclasses.dataclass
class ToyFacts(Facts):
    prepared: str = ""


def ctx(target: str = "v1", notes: list[str] | None = None) -> Context:
    said = notes if notes is not None else []
    return Context(adapters=None, params={"target_version": target}, progress=said.append)


def make_store(kind: str, directory: Path) -> JournalStore:
    if kind == "local":
        return LocalStore(directory)
    return HostStore(TestinfraHost("local://"), str(directory))


@pytest.fixture(params=["local", "host"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def journal(store_kind: str, tmp_path: Path) -> Journal:
    return Journal(store=make_store(store_kind, tmp_path / "journal"), name="toy.json")


# ------------------------------------------------------------------------------------------- resume
def test_an_interrupted_run_resumes_without_repeating_done_steps(journal: Journal) -> None:
    acted: list[str] = []
    first = ctx()
    with pytest.raises(Interrupted):
        toy(acted).run(first, journal=journal, interrupt_after="b")
    assert journal.load()["status"] == "running"

    notes: list[str] = []
    again = ctx(notes=notes)
    result = toy(acted).run(again, journal=journal)
    assert result.ok, result
    assert [s.status for s in result.steps] == ["skipped (already done)", "skipped (already done)", "done"]
    assert acted == ["a", "b", "c"]  # a and b acted once
    assert again.facts.run_id == first.facts.run_id  # the same run, its facts from the journal
    assert any(n.startswith("resuming toy run") for n in notes), notes


def test_a_finished_journal_starts_a_new_run_with_a_new_run_id(journal: Journal) -> None:
    acted: list[str] = []
    first = ctx()
    assert toy(acted).run(first, journal=journal).ok
    acted.clear()
    second = ctx("v2")  # other parameters are fine once the last run finished
    assert [s.status for s in toy(acted).run(second, journal=journal).steps] == ["done"] * 3
    assert second.facts.run_id != first.facts.run_id
    assert journal.load()["params"] == {"target_version": "v2"}


def test_resuming_with_other_parameters_is_refused_saying_how_to_go_on(journal: Journal) -> None:
    acted: list[str] = []
    with pytest.raises(Interrupted):
        toy(acted).run(ctx("v1"), journal=journal, interrupt_after="a")
    with pytest.raises(RunRefused) as refused:
        toy(acted).run(ctx("v2"), journal=journal)
    msg = str(refused.value)
    assert "unfinished toy run with other parameters" in msg
    assert "`runbook run toy --target-version=v1`" in msg and "`runbook rollback toy`" in msg
    assert journal.where in msg
    assert journal.load()["params"] == {"target_version": "v1"}  # the journal was not touched
    assert acted == ["a"]


@pytest.mark.parametrize("status", ["failed", "rollback failed"])
def test_a_failed_run_is_not_run_over(journal: Journal, status: str) -> None:
    journal.save({"procedure": "toy", "status": status, "params": {"target_version": "v1"}, "completed": ["a"],
                  "acted": ["a", "b"], "error": "b: boom", "facts": {"run_id": "r1"}})
    with pytest.raises(RunRefused, match=r"runbook rollback toy") as refused:
        toy([]).run(ctx("v1"), journal=journal)
    assert "b: boom" in str(refused.value)
    assert journal.load()["status"] == status


def test_rolling_back_a_failed_run_then_running_again_starts_over(journal: Journal) -> None:
    acted = ["a", "b"]
    journal.save({"procedure": "toy", "status": "failed", "params": {"target_version": "v1"}, "completed": ["a"],
                  "acted": ["a", "b"], "facts": {"run_id": "r1"}})
    toy(acted).roll_back(ctx(), journal)
    assert acted == [] and journal.load()["status"] == "rolled back"
    assert toy(acted).run(ctx(), journal=journal).ok


# ------------------------------------------------------------------------------------------- corrupt
@pytest.mark.parametrize("text", ["{\"procedure\": \"toy\", \"status\": \"runn", "[1, 2]", "{}",
                                  json.dumps({"procedure": "toy", "status": "running", "acted": "a,b"}),
                                  json.dumps({"procedure": "toy", "status": "half-way"})])
def test_a_corrupt_journal_is_an_error_naming_the_file(journal: Journal, text: str) -> None:
    journal.store.write(journal.name, text)
    with pytest.raises(JournalCorrupt, match="is corrupt") as run_error:
        toy([]).run(ctx(), journal=journal)
    with pytest.raises(JournalCorrupt, match="is corrupt") as rollback_error:
        toy([]).roll_back(ctx(), journal)
    for exc in (run_error.value, rollback_error.value):
        assert journal.where in str(exc) and "move it aside" in str(exc)
        assert "nothing to roll back" not in str(exc)
    assert journal.store.read(journal.name) == text  # left as found: it is the record of that run


def test_no_journal_is_nothing_to_roll_back(journal: Journal) -> None:
    with pytest.raises(RunbookError, match="nothing to roll back"):
        toy([]).roll_back(ctx(), journal)


# ------------------------------------------------------------------------------------------- lock
HOLDER = """
import sys
from pathlib import Path
from runbook.adapters.host import TestinfraHost
from runbook.procedures.journal import HostStore, Journal, LocalStore
kind, directory = sys.argv[1], sys.argv[2]
store = LocalStore(Path(directory)) if kind == "local" else HostStore(TestinfraHost("local://"), directory)
with Journal(store=store, name="toy.json").lock("toy", "run"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin, or kills this process
"""


@pytest.fixture
def holder(store_kind: str, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the env's lock, as a first `runbook run` would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, store_kind, str(tmp_path / "journal")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def _free(journal: Journal) -> Callable[[], bool]:
    def attempt() -> bool:
        try:
            with journal.lock("toy", "probe"):
                return True
        except Locked:
            return False

    return attempt


def test_a_second_run_is_refused_while_the_first_holds_the_lock(journal: Journal,
                                                                 holder: subprocess.Popen[str]) -> None:
    acted: list[str] = []
    with pytest.raises(Locked) as refused:
        toy(acted).run(ctx(), journal=journal)
    msg = str(refused.value)
    user = __import__("getpass").getuser()
    host = __import__("socket").gethostname()
    assert f"toy run by {user}@{host} (pid {holder.pid}) since 20" in msg, msg
    assert acted == [] and journal.load() == {}  # nothing ran, nothing was written
    with pytest.raises(Locked, match=f"pid {holder.pid}"):
        toy(acted).roll_back(ctx(), journal)

    assert holder.stdin is not None
    holder.stdin.close()  # the first run ends: the lock is free again
    wait_for(_free(journal), bool, timeout=30, interval=0.05, what="the lock to be released")
    assert toy(acted).run(ctx(), journal=journal).ok


def test_the_lock_is_released_when_its_holder_crashes(journal: Journal, holder: subprocess.Popen[str]) -> None:
    assert not _free(journal)()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    wait_for(_free(journal), bool, timeout=30, interval=0.05, what="the lock of a killed run to be released")


def test_the_lock_is_reentrant_within_a_run(journal: Journal) -> None:
    """A failed run's automatic rollback runs under the run's own lock."""
    acted: list[str] = []

    def boom(c: Context) -> None:
        raise RunbookError("boom")

    proc = toy(acted)
    failing = Procedure(name="toy", summary="", steps=(*proc.steps[:2], Step("c", "fails", boom, lambda c: None)))
    result = failing.run(ctx(), journal=journal)
    assert not result.ok and result.rolled_back and acted == []
    assert _free(journal)()  # and released after
