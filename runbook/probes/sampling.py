"""A background thread that samples something every ``interval`` until stopped (or ``max_duration``, so a
forgotten one stops by itself): the independent watchers of the release (:mod:`runbook.probes.release_watch`)
and of a Service's endpoints (:mod:`runbook.probes.endpoints_watch`). A sample that raises a RunbookError is
recorded as an error and left out: never a guessed value."""

from __future__ import annotations

import threading
import time
from typing import Any, Self

from runbook.errors import RunbookError


class Sampling:
    """Mixed into a dataclass that has ``interval``, ``max_duration``, ``samples``, ``errors``, ``_stop`` (an Event)
    and ``_thread``, and defines ``sample()``."""

    interval: float
    max_duration: float
    samples: list[Any]
    errors: list[str]
    _stop: threading.Event
    _thread: threading.Thread | None

    def sample(self) -> Any:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        end = time.monotonic() + self.max_duration
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                self.samples.append(self.sample())
            except RunbookError as exc:
                self.errors.append(f"{time.time():.3f}: {exc}")
            self._stop.wait(self.interval)
