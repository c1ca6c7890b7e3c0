"""The upgrade's ingress preflight (require_ingress_retries, design trap 3) on Caddy's own JSON (``caddy adapt``
of the rendered templates): our Caddyfile passes; the seed's, without retries, passive health checks or the
order switch, is refused before anything changes, naming each missing setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import PreconditionFailed
from runbook.procedures import agave_upgrade as up
from runbook.procedures.framework import Context
from runbook.testbed import caddy
from tests.baseline_fakes import FakeIngress, make_adapters
from tests.procedures.facts_helper import upgrade_facts


class _Serving(FakeIngress):
    """The ingress port answering with a given Caddy JSON config."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__([])
        self.cfg = config


def _ctx(tmp_path: Path, template: Path) -> Context:
    a = make_adapters(tmp_path)
    a = dataclasses.replace(a, ingress=_Serving(caddy.adapt(caddy.render(template, a.env))))
    return Context(adapters=a, params={"target_version": "v2.2.1"}, facts=upgrade_facts(live="green", idle="blue"))


def test_our_ingress_passes(tmp_path: Path) -> None:
    up.require_ingress_retries(_ctx(tmp_path, caddy.TEMPLATE), doing="start the upgrade")


def test_an_ingress_without_retries_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed, match=r"refusing to start the upgrade: the ingress would drop requests"
                                                 r".*lb_try_duration") as err:
        up.require_ingress_retries(_ctx(tmp_path, caddy.SEED_TEMPLATE), doing="start the upgrade")
    assert "order_switch" in str(err.value)
