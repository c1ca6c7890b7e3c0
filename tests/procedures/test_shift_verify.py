"""The shift's verification (verify_served_by_idle): once the ingress serves from the idle colour, 20 more
requests through it must all be served by the idle colour; one that still reaches the old colour fails the
shift (Caddy still routing part of the traffic to a colour that is stopping). Who served each request is
scripted (the X-Upstream answer), the rest of the adapters are baseline_fakes'."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from runbook.checks.core import Verdict
from runbook.errors import CheckFailed
from runbook.procedures import agave_upgrade as up
from runbook.procedures import bluegreen as bg
from runbook.procedures.framework import Context
from tests.baseline_fakes import make_adapters
from tests.procedures.facts_helper import upgrade_facts


def _ctx(tmp_path: Path, verdicts: list[Verdict]) -> Context:
    return Context(adapters=make_adapters(tmp_path), params={"target_version": "v2.2.1"},
                   facts=upgrade_facts(live="green", idle="blue"), verdicts=verdicts.append)


def test_every_request_served_by_the_idle_colour_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = itertools.chain(["green", "green"], itertools.repeat("blue"))
    monkeypatch.setattr(bg, "served_by", lambda env, **kw: next(answers))
    verdicts: list[Verdict] = []
    up.verify_served_by_idle(_ctx(tmp_path, verdicts))
    assert (verdicts[-1].observed, verdicts[-1].status) == (["blue"] * 20, "passed")


def test_a_request_still_reaching_the_old_colour_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = itertools.chain(["blue"] * 10, ["green"], itertools.repeat("blue"))
    monkeypatch.setattr(bg, "served_by", lambda env, **kw: next(answers))
    with pytest.raises(CheckFailed, match=r"after the shift \(green stopped\): 1 of 20 requests"):
        up.verify_served_by_idle(_ctx(tmp_path, []))
