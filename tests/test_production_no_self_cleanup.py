"""On production the operator's upgrade is the result: the testbed's scenario self-cleanup (roll the upgrade
back, or upgrade back after destroying the old data) must never be registered there."""

from __future__ import annotations

from typing import Any

import pytest

from runbook.adapters.factory import Adapters
from runbook.env import load_env
from steps import upgrade as up


class _Request:
    def __init__(self) -> None:
        self.finalizers: list[Any] = []

    def addfinalizer(self, fn: Any) -> None:
        self.finalizers.append(fn)


def _adapters(name: str) -> Adapters:
    return Adapters(env=load_env(name), host=None, workloads=None, ingress=None, storage=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("register", [up._roll_back_after, up._upgrade_back_after])
def test_no_self_cleanup_on_production(register: Any) -> None:
    request = _Request()
    register(request, _adapters("biscayne"), None)
    assert request.finalizers == [], "an upgrade on biscayne would be rolled back by its own scenario"


@pytest.mark.parametrize("register", [up._roll_back_after, up._upgrade_back_after])
def test_self_cleanup_on_the_testbeds(register: Any) -> None:
    for name in ("local", "kind"):
        request = _Request()
        register(request, _adapters(name), None)
        assert len(request.finalizers) == 1, name
