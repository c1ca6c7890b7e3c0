"""Caddy audit steps -> runbook.checks.caddy_audit (one audit of the live config, checked per setting)."""

from __future__ import annotations

from pytest_bdd import given, parsers, then

from runbook.adapters.factory import Adapters
from runbook.checks.caddy_audit import AuditReport, audit, setting
from runbook.checks.core import judge_all
from runbook.evidence.recorder import Recorder
from runbook.procedures import bluegreen as bg


@given("the live Caddy configuration read from the admin API", target_fixture="caddy_audit")
def live_config(adapters: Adapters, evidence: Recorder) -> AuditReport:
    """The config Caddy runs, audited on the reverse_proxy serving the env's site, against the order the
    live colour (found from real state, whichever it is) needs."""
    env = adapters.env
    config = adapters.ingress.config()
    evidence.attach(f"GET {env.ingress.admin}/config/", config)
    live, how = bg.live_colour(env, adapters.workloads, adapters=adapters)
    evidence.call(f"the live colour: {live or 'unknown'} ({how})")
    expected = bg.upstream_order_for(env, live) if live else None
    served = adapters.ingress.upstream_order()  # an order switch serves the order its file on Caddy's host says
    return audit(config, expected_upstreams=expected, site_url=env.ingress.url, served_order=served,
                 upstream_header=env.ingress.upstream_header, live_unknown=how)


@then(parsers.parse("the audit passes {settings}"))
def audit_passes(caddy_audit: AuditReport, settings: str, evidence: Recorder) -> None:
    names = [s.strip() for s in settings.split(",") if s.strip()]
    judge_all(evidence, [setting(caddy_audit, n) for n in names])
