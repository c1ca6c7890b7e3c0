"""served_only: Caddy's X-Upstream names an upstream as the config writes it (``localhost:8899`` in the
seed's site); the env names it ``127.0.0.1:8899``. One host, and another port is still another upstream."""

from __future__ import annotations

import pytest

from runbook.checks.core import judge
from runbook.checks.zero_drop import served_only
from runbook.errors import CheckFailed


def test_loopback_spellings_are_one_upstream() -> None:
    assert served_only({"localhost:8899": 1200, "127.0.0.1:8899": 3}, "127.0.0.1:8899", when="before the shift").ok


def test_the_other_colour_still_fails() -> None:
    with pytest.raises(CheckFailed, match=r"expected every request served by 127\.0\.0\.1:8899"):
        judge(None, served_only({"localhost:8899": 1200, "localhost:8897": 1}, "127.0.0.1:8899",
                                when="before the shift"))


def test_none_served_fails() -> None:
    with pytest.raises(CheckFailed):
        judge(None, served_only({"localhost:8897": 5}, "127.0.0.1:8899", when="after green stopped"))
