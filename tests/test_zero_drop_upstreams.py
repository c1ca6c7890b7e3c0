"""check_served_only_by: Caddy's X-Upstream names an upstream as the config writes it (``localhost:8899`` in the
seed's site); the env names it ``127.0.0.1:8899``. One host, and another port is still another upstream."""

from __future__ import annotations

import pytest

from runbook.checks.zero_drop import check_served_only_by
from runbook.errors import CheckFailed


def test_loopback_spellings_are_one_upstream() -> None:
    check_served_only_by({"localhost:8899": 1200, "127.0.0.1:8899": 3}, "127.0.0.1:8899", when="before the shift")


def test_the_other_colour_still_fails() -> None:
    with pytest.raises(CheckFailed, match=r"expected every request served by 127\.0\.0\.1:8899"):
        check_served_only_by({"localhost:8899": 1200, "localhost:8897": 1}, "127.0.0.1:8899", when="before the shift")


def test_none_served_fails() -> None:
    with pytest.raises(CheckFailed):
        check_served_only_by({"localhost:8897": 5}, "127.0.0.1:8899", when="after green stopped")
