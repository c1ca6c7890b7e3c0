"""An observer of a Service, independent of the procedure: every ``interval`` it reads, through its own adapters,
the Service's ready endpoints and the value of one label its selector pins (the hard fork's revision). The check
:func:`runbook.checks.hardfork.never_without_endpoints` judges these samples, not what the procedure says it did."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from runbook.adapters.factory import Adapters
from runbook.probes.sampling import Sampling


@dataclass
class EndpointsWatcher(Sampling):
    adapters: Adapters
    service: str
    label: str  # the selector's label whose value is recorded (sei.io/revision)
    interval: float = 0.2
    max_duration: float = 900.0  # bounded: a forgotten watcher stops by itself
    samples: list[tuple[float, int, str]] = field(default_factory=list)  # (t, ready endpoints, label's value)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> tuple[float, int, str]:
        svc = self.adapters.objects.get_object("Service", self.service)
        pinned = str(((svc or {}).get("spec", {}).get("selector") or {}).get(self.label, "")) if svc else "(no service)"
        return time.time(), len(self.adapters.rollouts.endpoints(self.service)), pinned

    def describe(self) -> dict[str, Any]:
        changes = []
        last: tuple[int, str] | None = None
        for t, n, rev in self.samples:
            if (n, rev) != last:
                changes.append({"t": round(t, 3), "endpoints": n, "selects": rev})
                last = (n, rev)
        return {"service": self.service, "samples": len(self.samples), "interval": self.interval,
                "changes": changes, "errors": self.errors[-5:]}
