"""The suite catches the seed's procedure bugs (must-show 2): run through our zero-drop scenario on a
testbed whose Caddy has the seed's block, the seed's procedure (wait for HTTP 200, stop green) drops
requests and serves a node that is behind, and the scenario names the failed requests. Our procedure on
the same ingress refuses to start at all: the retry settings are a precondition checked before the snapshot,
not after hours of cloning, copying and catching up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runbook.checks import zero_drop
from runbook.env import load_env
from runbook.testbed.stack import Testbed
from tests.integration.envfiles import make_env
from tests.integration.run import pytest as run_pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO = "drops_no_request_and_never_serves"


def test_our_procedure_refuses_the_seed_ingress_and_the_seeds_own_procedure_fails_the_scenario(
        tmp_path: Path) -> None:
    """One testbed for both runs (its bring-up was most of each): our procedure first, which must refuse
    before anything changes, then the seed's procedure on the same ingress, which must drop requests."""
    env_file = make_env(tmp_path, ingress__template="deploy/caddy/seed.Caddyfile.tmpl")
    tb = Testbed(load_env(str(env_file)))
    try:
        tb.up()  # the nested sessions reuse it, as after `runbook testbed up`
        ours = run_pytest("features/", f"--env={env_file}", "-k", SCENARIO, "-o", "log_cli=true",
                          "--log-cli-level=INFO", reports=tmp_path / "reports-ours", timeout=300)
        assert ours.rc == 1, ours.out
        assert "refusing to start the upgrade: the ingress would drop requests" in ours.out
        assert "requests lost to a client that does not retry" not in ours.out  # refused before anything dropped
        assert "[agave-upgrade] snapshot:" in ours.out
        assert "[agave-upgrade] clone:" not in ours.out, "refused at the first step, before anything changed"
        assert not re.search(r"accounts: [\d.]+ of", ours.out)

        ran = run_pytest("features/", f"--env={env_file}", "-k", SCENARIO, "--procedure-override",
                         "agave-upgrade=seed-upgrade", reports=tmp_path / "reports", timeout=300)
        assert ran.rc == 1, ran.out
        assert "1 failed" in ran.out
        m = re.search(r"zero-drop verdict: FAIL: (\d+) of (\d+) requests lost to a client that does not retry",
                      ran.out)
        assert m and int(m.group(1)) > 0, ran.out
        named = re.search(r"lost requests \(seq, t, kind, verdict, upstream, status: error\):\n((?:.*#\d+ t=.*\n)+)",
                          ran.out[m.end():])
        assert named, f"the verdict names the lost requests one by one: {ran.out}"
        listed = re.findall(r"#\d+ t=[\d.]+s (?:GET /health|POST getSlot) (\w+) upstream=", named.group(1))
        assert listed and len(listed) <= min(int(m.group(1)), zero_drop.LISTED), named.group(1)
        assert {"behind"} & set(listed) or {"conn_error", "http_error", "timeout"} & set(listed), listed
    finally:
        tb.down()
    assert tb.leftovers() == []
