"""An observer of a release, independent of the procedure: every ``interval`` it reads, through its own
adapters, whether each colour's Deployments are all ready (ready replicas equal the spec) and which colour the
common ConfigMap names. The checks judge the switch from these samples (:func:`runbook.checks.release.
switched_after_grace`), not from what the procedure says it waited for."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from runbook.adapters.factory import Adapters
from runbook.env_release import COLOURS
from runbook.probes.sampling import Sampling


@dataclass
class Sample:
    t: float  # Unix seconds
    ready: dict[str, bool]  # colour -> every Deployment of it exists and is ready
    common: str  # the colour the common ConfigMap names ("" when it names neither, or cannot be read)


@dataclass
class ReleaseWatcher(Sampling):
    adapters: Adapters
    interval: float = 0.2
    max_duration: float = 900.0  # bounded: a forgotten watcher stops by itself
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> Sample:
        c = self.adapters.release
        w, r = self.adapters.workloads, self.adapters.rollouts
        ready = {}
        for colour in COLOURS:
            ok = True
            for comp in c.components:
                name = c.name(comp, colour)
                if w.deployment(name) is None:
                    ok = False
                    break
                s = r.rollout_status(name)
                ok = ok and s.observed_generation >= s.generation and s.ready == s.desired
            ready[colour] = ok
        cm = self.adapters.objects.get_object("ConfigMap", c.common)
        text = str(((cm or {}).get("data") or {}).get("config.properties", ""))
        common = next((colour for colour in COLOURS
                       if all(f"{comp.upper()}_SERVICE_HOST={c.name(comp, colour)}" in text for comp in c.components)),
                      "")
        return Sample(time.time(), ready, common)

    def switched_at(self, colour: str) -> float | None:
        """The first sample in which the common ConfigMap names ``colour`` after a sample in which it did not."""
        for prev, s in zip(self.samples, self.samples[1:], strict=False):
            if s.common == colour and prev.common != colour:
                return s.t
        return None

    def ready_samples(self, colour: str) -> list[tuple[float, bool]]:
        return [(s.t, s.ready[colour]) for s in self.samples]

    def describe(self) -> dict[str, Any]:
        changes = []
        last: tuple[Any, ...] | None = None
        for s in self.samples:
            key = (tuple(sorted(s.ready.items())), s.common)
            if key != last:
                changes.append({"t": round(s.t, 3), "ready": s.ready, "common names": s.common or "-"})
                last = key
        return {"samples": len(self.samples), "interval": self.interval, "changes": changes,
                "errors": self.errors[-5:]}
