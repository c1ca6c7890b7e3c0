"""Typed facts for a hand-built procedure Context (the negative tests the mutation test added): the procedure's
facts class with the named fields set; a name the class does not have is refused (Facts.load)."""

from __future__ import annotations

from typing import Any

from runbook.procedures.facts import DzFacts, UpgradeFacts


def upgrade_facts(**values: Any) -> UpgradeFacts:
    f = UpgradeFacts()
    f.load(values)
    return f


def dz_facts(**values: Any) -> DzFacts:
    f = DzFacts()
    f.load(values)
    return f
