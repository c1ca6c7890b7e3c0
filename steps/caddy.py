"""Caddy audit steps -> runbook.checks.caddy_audit (one audit of the live config, checked per setting)."""

from __future__ import annotations

from pytest_bdd import given, then

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


def _require(report: AuditReport, evidence: Recorder, *settings: str) -> None:
    for f in report.select(*settings):
        evidence.compare(f"{f.setting}: {f.why}", expected=f.expected, observed=f.observed, ok=f.ok)
    report.require(*settings, obj="caddy reverse_proxy")


@then("both colours are upstreams, green first, under lb_policy first")
def upstreams(caddy_audit: AuditReport, evidence: Recorder) -> None:
    _require(caddy_audit, evidence, "upstreams", "lb_policy")


@then('the active health check probes /health often and requires the body "ok"')
def active_health(caddy_audit: AuditReport, evidence: Recorder) -> None:
    _require(caddy_audit, evidence, "health_uri", "health_interval", "health_body")


@then("passive health checks take a failing upstream out at once")
def passive_health(caddy_audit: AuditReport, evidence: Recorder) -> None:
    _require(caddy_audit, evidence, "fail_duration/max_fails")


@then("retries are on for GET and POST, with request buffers to replay POST bodies")
def retries(caddy_audit: AuditReport, evidence: Recorder) -> None:
    _require(caddy_audit, evidence, "lb_try_duration", "lb_retry_match", "request_buffers")


@then("every response names the upstream that served it")
def upstream_header(adapters: Adapters, caddy_audit: AuditReport, evidence: Recorder) -> None:
    _require(caddy_audit, evidence, f"header_down {adapters.env.ingress.upstream_header}")
