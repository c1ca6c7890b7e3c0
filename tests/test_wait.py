"""runbook/wait.py, the one poller: it returns the first observation the predicate accepts (never an earlier
one), raises WaitTimeout with the last observation at the deadline, and counts tolerated exceptions as
observations that do not satisfy it."""

from __future__ import annotations

import itertools

import pytest

from runbook.errors import WaitTimeout
from runbook.wait import wait_for


def test_it_returns_the_first_observation_that_satisfies_the_predicate() -> None:
    counter = itertools.count(1)
    seen: list[int] = []

    def observe() -> int:
        seen.append(next(counter))
        return seen[-1]

    assert wait_for(observe, lambda n: n >= 3, timeout=5, interval=0.01, what="three") == 3
    assert seen == [1, 2, 3]


def test_a_predicate_that_never_holds_times_out_with_the_last_state() -> None:
    with pytest.raises(WaitTimeout, match="timed out waiting for never") as err:
        wait_for(lambda: "behind", lambda s: s == "ok", timeout=0.2, interval=0.05, what="never")
    assert err.value.last_state == "behind"


def test_a_tolerated_exception_is_an_unsatisfied_observation() -> None:
    calls = itertools.count()

    def observe() -> str:
        if next(calls) < 2:
            raise ConnectionError("starting")
        return "ok"

    assert wait_for(observe, lambda s: s == "ok", timeout=5, interval=0.01, what="ok",
                    tolerate=(ConnectionError,)) == "ok"

    def down() -> str:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):  # not tolerated: raised at once
        wait_for(down, lambda s: True, timeout=5, what="down")
