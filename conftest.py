"""Thin: load the runbook plugin and the step modules (feature -> step -> runbook function)."""

pytest_plugins = [
    "runbook.plugin",
    "steps.common",
    "steps.caddy",
    "steps.doublezero",
]
