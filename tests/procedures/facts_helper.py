"""Facts for a hand-built procedure Context in the mutation test's negative tests: the procedure's typed facts
class (runbook.procedures.facts) when the framework has one, else the plain dict the older framework used; and
one way to read a fact from either."""

from __future__ import annotations

from typing import Any


def upgrade_facts(**values: Any) -> Any:
    return _facts("UpgradeFacts", values)


def dz_facts(**values: Any) -> Any:
    return _facts("DzFacts", values)


def fact(facts: Any, name: str) -> Any:
    return facts[name] if isinstance(facts, dict) else getattr(facts, name)


def _facts(cls: str, values: dict[str, Any]) -> Any:
    try:
        from runbook.procedures import facts as typed
    except ImportError:
        return dict(values)
    f = getattr(typed, cls)()
    f.load(values)
    return f
