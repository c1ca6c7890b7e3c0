"""Verified runbooks for zero-downtime upgrades.

Public surface: the typed environment (:mod:`runbook.env`), the error tree (:mod:`runbook.errors`),
the one poller (:func:`runbook.wait.wait_for`), adapters behind small protocols
(:mod:`runbook.adapters`), read-only checks (:mod:`runbook.checks`), procedures and the local testbed.
"""

from __future__ import annotations

__version__ = "0.1.0"
