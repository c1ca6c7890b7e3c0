"""Nothing is left behind: after a run, after Ctrl-C during bring-up, and after Ctrl-C mid-session."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from runbook.env import PROJECT_ROOT, load_env
from runbook.testbed.stack import Testbed
from runbook.wait import wait_for
from tests.integration.envfiles import make_env
from tests.integration.run import BIN, cli, report_args

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOLD = '''
import threading

def test_hold_the_session_open(testbed):
    assert testbed.running()
    threading.Event().wait(120)  # interrupted by the test that started this session
'''


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(tmp_path: Path, *, when: str) -> Testbed:
    env_file = make_env(tmp_path)
    tb = Testbed(load_env(str(env_file)))
    hold = tmp_path / "test_hold.py"
    hold.write_text(HOLD)
    proc = subprocess.Popen(
        [str(BIN / "pytest"), "-p", "no:cacheprovider", "-p", "runbook.plugin", "-p", "runbook.evidence.hooks",
         "-q", "-s", *report_args(tmp_path / "reports"), f"--env={env_file}", str(hold)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a terminal's Ctrl-C: a run started in the background of a shell without job control (nohup ... &, a CI
        # step's subshell) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=_sigint_default,
    )

    def watch(observe: Callable[[], object]) -> Callable[[], object]:
        def observed() -> object:
            if proc.poll() is not None:  # a usage error would otherwise look like a slow bring-up
                raise AssertionError(f"the inner pytest exited {proc.returncode}: {proc.communicate()[0]}")
            return observe()
        return observed

    try:
        if when == "bring-up":  # supervisord is up, the testbed is not finished
            wait_for(watch(tb.supervisor.pid), lambda p: p is not None, timeout=60, interval=0.02,
                     what="supervisord to start")
        else:
            wait_for(watch(tb.running), bool, timeout=90, interval=0.1, what="the testbed to be up")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, out
    return tb


def test_ctrl_c_during_bring_up_leaves_nothing(tmp_path: Path) -> None:
    tb = _interrupt(tmp_path, when="bring-up")
    assert tb.leftovers() == []


def test_ctrl_c_mid_session_leaves_nothing(tmp_path: Path) -> None:
    tb = _interrupt(tmp_path, when="session")
    assert tb.leftovers() == []


def test_cli_up_then_down_leaves_nothing(tmp_path: Path) -> None:
    env_file = make_env(tmp_path)
    tb = Testbed(load_env(str(env_file)))
    try:
        up = cli("testbed", "up", "--env", str(env_file))
        assert up.rc == 0, up.out
        assert tb.running()
        assert tb.leftovers(), "a running testbed must be visible to leftovers()"  # the detector detects
    finally:
        down = cli("testbed", "down", "--env", str(env_file))
    assert down.rc == 0, down.out
    assert "nothing left behind" in down.out
    assert tb.leftovers() == []
