"""Caddy audit steps -> runbook.checks.caddy_audit (one audit of the live config, checked per setting)."""

from __future__ import annotations

from pytest_bdd import given, parsers, then

from runbook.adapters.factory import Adapters
from runbook.checks.caddy_audit import AuditReport, audit
from runbook.evidence.recorder import Recorder
from runbook.testbed.caddy import template_vars


@given("the live Caddy configuration read from the admin API", target_fixture="caddy_audit")
def live_config(adapters: Adapters, evidence: Recorder) -> AuditReport:
    config = adapters.ingress.config()
    evidence.attach(f"GET {adapters.env.ingress.admin}/config/", config)
    expected = template_vars(adapters.env)["upstreams"].split()
    return audit(config, expected_upstreams=expected, upstream_header=adapters.env.ingress.upstream_header)


@then(parsers.parse("the audit passes {settings}"))
def audit_passes(caddy_audit: AuditReport, settings: str, evidence: Recorder) -> None:
    names = [s.strip() for s in settings.split(",") if s.strip()]
    for f in caddy_audit.select(*names):
        evidence.compare(f"{f.setting}: {f.why}", expected=f.expected, observed=f.observed, ok=f.ok)
    caddy_audit.require(*names, obj="caddy reverse_proxy")
