"""Thin: load the runbook plugins and the step modules (feature -> step -> runbook function)."""

pytest_plugins = [
    "runbook.plugin",
    "runbook.evidence.hooks",
    "runbook.pytest_procedures",
    "steps.common",
    "steps.caddy",
    "steps.doublezero",
    "steps.upgrade",
    "steps.audit",
    "steps.dz_upgrade",
    "steps.operator",
    "steps.derived",
    "steps.dz_handover",
    "steps.canary",
    "steps.release",
    "steps.hardfork",
]
