"""Evidence a reviewer can trust: per-step records, diagnostics, the cutover timeline, the bundle.

Steps use the ``evidence`` fixture (a :class:`Recorder`); the pytest plugin is
:mod:`runbook.evidence.hooks`; the bundle format is :mod:`runbook.evidence.bundle`.
"""

from __future__ import annotations

from runbook.evidence.bundle import BundleWriter, validate, verify
from runbook.evidence.diagnostics import Diagnostic, DiagnosticsRegistry, FailureContext
from runbook.evidence.recorder import Recorder, ScenarioInfo
from runbook.evidence.redact import REDACTED, redact, redact_obj
from runbook.evidence.timeline import ProbeSummary, read_probe
from runbook.evidence.timeline_svg import render_timeline, timeline_page

__all__ = [
    "REDACTED",
    "BundleWriter",
    "Diagnostic",
    "DiagnosticsRegistry",
    "FailureContext",
    "ProbeSummary",
    "Recorder",
    "ScenarioInfo",
    "read_probe",
    "redact",
    "redact_obj",
    "render_timeline",
    "timeline_page",
    "validate",
    "verify",
]
