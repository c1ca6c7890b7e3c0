"""Design trap 9 is real on the testbed, and the upgrade refuses it: a blue started under green's identity
makes green (the colour serving) exit, as agave's gossip does, and the zero-drop scenario fails; our
procedure refuses before anything changes. The env is production-shaped: blue's keypair file is its own path,
but an operator copied green's key into it."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.env import load_env
from runbook.testbed import keypair
from runbook.testbed.stack import Testbed
from tests.integration.envfiles import make_env
from tests.integration.run import pytest as run_pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO = "drops_no_request_and_never_serves"


def _env_with_blue_under_greens_key(tmp_path: Path) -> Path:
    # blue and green kill each other from blue's first second on (the logs show it at once), so blue never
    # catches up: the unchecked upgrade fails at the catch-up deadline whatever it is. A shorter one than
    # local.yaml's 120 s (harsher, not kinder) fails it sooner, and leaves green less to replay afterwards.
    env_file = make_env(tmp_path, timeouts__catch_up="20s")
    env = load_env(str(env_file))
    assert env.testbed is not None
    tb = Testbed(env)
    green_key = keypair.colour_seed(bytes.fromhex(env.testbed.identity_seed), "green")
    keypair.write_keypair(tb.host_path(str(env.deployments.blue.identity)), green_key)  # before `up` seeds it
    return env_file


def test_our_upgrade_refuses_a_blue_under_greens_identity_and_without_the_check_green_dies(tmp_path: Path) -> None:
    """One testbed for both runs (its bring-up was most of each): our upgrade first, which must refuse before
    anything changes (so the same testbed is then as it was brought up), then the variant without the
    identity check, whose blue kills green and fails the zero-drop scenario."""
    env_file = _env_with_blue_under_greens_key(tmp_path)
    tb = Testbed(load_env(str(env_file)))
    try:
        tb.up()  # the nested sessions reuse it, as after `runbook testbed up`
        ours = run_pytest("features/", f"--env={env_file}", "-k", SCENARIO, "-o", "log_cli=true",
                          "--log-cli-level=INFO", reports=tmp_path / "reports-ours", timeout=300)
        assert ours.rc == 1, ours.out
        assert "holds the same key as" in ours.out and "would make agave-green, the colour serving, exit" in ours.out
        assert "[agave-upgrade] clone:" not in ours.out, "refused at the first step, before anything changed"

        ran = run_pytest("features/", f"--env={env_file}", "-k", SCENARIO, "--procedure-override",
                         "agave-upgrade=upgrade-identity-unchecked", reports=tmp_path / "reports", timeout=300)
        assert ran.rc == 1, ran.out
        assert "1 failed" in ran.out
        logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "state" / "logs").glob("agave-green-*"))
        assert "duplicate running instances of the same validator node" in logs, "green exited by agave's rule"
        assert "zero-drop verdict: FAIL" in ran.out or "failed" in ran.out, ran.out
    finally:
        tb.down()
    assert tb.leftovers() == []


def test_a_procedure_that_writes_into_the_old_colours_data_fails_untouched(tmp_path: Path) -> None:
    """The storage's facts catch a write into green's data after the procedure stopped green (the operator
    scenario's last check), where the old ledger hash could not (the stand-in only rewrote an excluded file)."""
    env_file = make_env(tmp_path)
    ran = run_pytest("features/", f"--env={env_file}", "-k", SCENARIO, "--procedure-override",
                     "agave-upgrade=upgrade-writes-old-data", reports=tmp_path / "reports", timeout=300)
    assert ran.rc == 1, ran.out
    assert "1 failed" in ran.out
    assert "green's data was rewritten" in ran.out and "since green stopped" in ran.out, ran.out
    assert Testbed(load_env(str(env_file))).leftovers() == []
