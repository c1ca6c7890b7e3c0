"""The read-only audit is true in every steady state (issue 9, must-show 3): after a successful upgrade
(blue live, first in Caddy's order) and after the rollback that follows it (green live again), the
read-only features (Caddy audit, required changes, DZ identity) pass on the real testbed, run as an
operator runs them (`pytest features/ -m readonly`, in a subprocess).

Before, the audit wanted green first whatever served, and the read-only features read green's pod: every
successful upgrade left an audit that failed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from runbook.adapters.factory import Adapters
from runbook.procedures import agave_rollback, agave_upgrade, journal_for
from runbook.procedures import bluegreen as bg
from runbook.procedures.framework import Context
from tests.integration.run import pytest as run_pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.mutating]
log = logging.getLogger(__name__)


def _readonly_audit(adapters: Adapters, reports: Path) -> str:
    ran = run_pytest("features/", f"--env={adapters.env.source}", "-m", "readonly",
                     reports=reports, timeout=300)
    assert ran.rc == 0, ran.out[-6000:]
    assert " passed" in ran.out and " failed" not in ran.out, ran.out[-3000:]
    return ran.out


def test_readonly_audit_passes_with_blue_live_after_an_upgrade_and_after_its_rollback(
        adapters: Adapters, target_version: str, tmp_path: Path) -> None:
    env = adapters.env
    assert bg.live_colour(env, adapters.workloads)[0] == "green"
    ctx = Context(adapters=adapters, params={"target_version": target_version}, progress=log.info)
    result = agave_upgrade.PROCEDURE.run(ctx, journal=journal_for(env, "agave-upgrade"))
    assert result.ok, result.error
    assert bg.live_colour(env, adapters.workloads)[0] == "blue"
    assert adapters.ingress.upstream_order()[0] == bg.upstream_address(env, "blue")
    _readonly_audit(adapters, tmp_path / "after-upgrade")

    back = Context(adapters=adapters, params={}, progress=log.info)
    steps = agave_rollback.rollback(back, journal_for(env, "agave-upgrade"), journal_for(env, "agave-rollback"))
    assert all(s.status != "failed" for s in steps), steps
    assert bg.live_colour(env, adapters.workloads)[0] == "green"
    _readonly_audit(adapters, tmp_path / "after-rollback")
