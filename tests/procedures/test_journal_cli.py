"""The journal through the entry points operators and the suite use: `runbook run` and `runbook rollback` as
subprocesses (refused with one clear line before anything connects or runs), and the feature's When step
(``steps.upgrade._upgrade``), which resumes an interrupted run instead of clearing its journal.

The CLI runs against a copy of the local env with no testbed section (journals under ``$XDG_STATE_HOME``, as
on a real env): on a testbed the baseline reset clears journals before every scenario, so there is nothing
to resume or refuse there.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import steps.upgrade as upgrade_steps
from runbook.env import PROJECT_ROOT, load_env
from runbook.evidence.recorder import Recorder
from runbook.procedures import before_run, journal_for
from runbook.procedures.framework import Context, Procedure, RunRefused, Step
from tests.baseline_fakes import make_env

RUNBOOK = str(Path(sys.executable).parent / "runbook")
INTERRUPTED = {"procedure": "agave-upgrade", "status": "running", "params": {"target_version": "v2.2.1"},
               "completed": ["snapshot", "clone"], "acted": ["snapshot", "clone"],
               "facts": {"run_id": "20261129T120000Z-abcd", "snapshot": "pre-upgrade-v2.2.1-20261129T120000Z-abcd"}}


@pytest.fixture
def real_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """local.yaml without its testbed section: an env whose journals outlive a scenario."""
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    data.pop("testbed")
    data["name"] = "journaltest"
    path = tmp_path / "journaltest.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNBOOK, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "400"}, check=False)


def test_runbook_run_with_another_target_is_refused_saying_how_to_go_on(real_env: Path) -> None:
    journal_for(load_env(str(real_env)), "agave-upgrade").save(INTERRUPTED)
    ran = cli("run", "agave-upgrade", f"--env={real_env}", "--target-version=v2.3.0")
    out = ran.stdout + ran.stderr
    assert ran.returncode == 2, out
    assert "unfinished agave-upgrade run with other parameters" in out, out
    assert "`runbook run agave-upgrade" in out and "--target-version=v2.2.1`" in out, out
    assert f"`runbook rollback agave-upgrade --env={real_env}`" in out, out
    assert "completed: snapshot, clone" in out and "Traceback" not in out, out
    assert "test session starts" not in out  # refused before the feature started


def test_runbook_run_says_it_resumes_the_same_run(real_env: Path) -> None:
    env = load_env(str(real_env))
    journal_for(env, "agave-upgrade").save(INTERRUPTED)
    said = before_run(env, "agave-upgrade", "v2.2.1")
    assert said.startswith("resuming the unfinished agave-upgrade run 20261129T120000Z-abcd"), said
    assert "completed: snapshot, clone" in said
    journal_for(env, "agave-upgrade").save({**INTERRUPTED, "status": "failed", "error": "catch-up: timed out"})
    with pytest.raises(RunRefused, match="failed and was not rolled back"):
        before_run(env, "agave-upgrade", "v2.2.1")
    journal_for(env, "agave-upgrade").save({**INTERRUPTED, "status": "rolled back"})
    assert before_run(env, "agave-upgrade", "v2.3.0").startswith("a new agave-upgrade run")


def test_runbook_run_is_refused_while_another_run_holds_the_lock(real_env: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom runbook.env import load_env\nfrom runbook.procedures import "
         "journal_for\nwith journal_for(load_env(sys.argv[1]), 'agave-upgrade').lock('agave-upgrade', 'run'):\n"
         "    print('held', flush=True)\n    sys.stdin.read()\n", str(real_env)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for args in (("run", "agave-upgrade", "--target-version=v2.2.1"), ("run", "dz-upgrade")):
            ran = cli(*args, f"--env={real_env}")
            out = ran.stdout + ran.stderr
            assert ran.returncode == 2, out
            assert f"is held by agave-upgrade run by {getpass.getuser()}@{socket.gethostname()} (pid {holder.pid}) " \
                   f"since 20" in out, out
            assert "test session starts" not in out
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_runbook_rollback_of_a_corrupt_journal_is_an_error_not_nothing_to_roll_back(real_env: Path) -> None:
    journal = journal_for(load_env(str(real_env)), "agave-upgrade")
    journal.path.parent.mkdir(parents=True)
    journal.path.write_text(json.dumps(INTERRUPTED)[:80])  # cut short, as by a full disk
    ran = cli("rollback", "agave-upgrade", f"--env={real_env}")
    out = ran.stdout + ran.stderr
    assert ran.returncode == 2, out
    assert f"the journal {journal.path} is corrupt" in out and "move it aside" in out, out
    assert "nothing to roll back" not in out and "Traceback" not in out, out


# ------------------------------------------------------------------------------------------- the When step
def test_the_upgrade_when_step_resumes_an_interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``_upgrade`` (the When step `runbook run` reaches through the feature) used to clear the journal first:
    the second call redid every step. A toy procedure stands in for agave-upgrade, through the same journal."""
    acted: list[str] = []

    def step(name: str) -> Step:
        return Step(name, name, action=lambda ctx: acted.append(name), verify=lambda ctx: None,
                    is_done=lambda ctx: name in acted)

    toy = Procedure(name="agave-upgrade", summary="toy", steps=(step("a"), step("b"), step("c")))
    monkeypatch.setattr(upgrade_steps, "procedure_for", lambda config, name: toy)
    adapters: Any = SimpleNamespace(env=make_env(tmp_path / "state"))
    request: Any = SimpleNamespace(config=None)

    first = upgrade_steps._upgrade(adapters, Recorder("first"), None, {"target_version": "v2.2.1"}, request,
                                   interrupt_after="b")
    assert first.interrupted and acted == ["a", "b"]
    second = upgrade_steps._upgrade(adapters, Recorder("second"), None, {"target_version": "v2.2.1"}, request)
    assert second.result is not None and second.result.ok
    assert [s.status for s in second.result.steps] == ["skipped (already done)"] * 2 + ["done"]
    assert acted == ["a", "b", "c"]
    assert second.ctx.facts.run_id == first.ctx.facts.run_id
    assert isinstance(second.ctx, Context)


def test_the_testbed_baseline_reset_clears_a_corrupt_journal_and_reports_it(tmp_path: Path) -> None:
    """Between scenarios on a testbed the reset still clears journals; a corrupt one is named, not skipped."""
    from runbook.baseline import clear_journals

    env = make_env(tmp_path / "state")
    journal = journal_for(env, "agave-upgrade")
    journal.path.parent.mkdir(parents=True)
    journal.path.write_text("[]")
    assert clear_journals(env) == ["cleared the corrupt journal agave-upgrade.json (the journal "
                                   f"{journal.path} is corrupt: expected a JSON object, found list)"]
    assert not journal.path.exists()
