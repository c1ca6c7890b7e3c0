"""The one poller. Every wait in the project goes through :func:`wait_for`.

It polls a pure observation function until a predicate holds, with a monotonic deadline, and raises
:class:`~runbook.errors.WaitTimeout` carrying the last observed state. No sleep-and-hope anywhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from runbook.errors import WaitTimeout

T = TypeVar("T")


def wait_for(
    observe: Callable[[], T],
    predicate: Callable[[T], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str,
    on_progress: Callable[[T, float], None] | None = None,
    progress_every: float = 5.0,
    tolerate: tuple[type[BaseException], ...] = (),
    **ctx: Any,
) -> T:
    """Observe until ``predicate(observation)`` holds; return that observation.

    Exceptions listed in ``tolerate`` count as an observation (the exception itself) that does not
    satisfy the predicate, so a service that is still starting is waited for, not failed on.
    """
    start = time.monotonic()
    deadline = start + timeout
    last: Any = None
    next_progress = start + progress_every
    while True:
        try:
            last = observe()
            if predicate(last):
                return last
        except tolerate as exc:
            last = exc
        now = time.monotonic()
        if on_progress is not None and now >= next_progress:
            on_progress(last, now - start)
            next_progress = now + progress_every
        if now >= deadline:
            raise WaitTimeout(f"timed out waiting for {what}", last_state=last, waited=now - start, **ctx)
        time.sleep(min(interval, max(0.0, deadline - now)))
