"""Percentiles in bounded memory: counts per bin, however many values go in."""

from __future__ import annotations

import math

LOG_R = math.log(1.005)
INV_LOG_R = 1.0 / LOG_R
LOG_FLOOR = int(math.log(0.001) * INV_LOG_R)


class Histogram:
    """Counts per bin, for percentiles in bounded memory. Log bins (0.5 % wide: a percentile is within
    0.25 % of the exact value) for latency; linear 10 us bins for the send lag, which sits near zero."""

    __slots__ = ("bins", "count", "log", "max", "min")

    def __init__(self, *, log: bool = True) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0
        self.max = 0.0
        self.min = math.inf
        self.log = log

    def bin(self, value: float) -> int:
        if self.log:
            return int(math.log(value) * INV_LOG_R) if value > 0.001 else LOG_FLOOR
        return int(value * 100.0)

    def add(self, value: float) -> None:
        b = self.bin(value)
        self.bins[b] = self.bins.get(b, 0) + 1
        self.count += 1
        self.max = max(self.max, value)
        self.min = min(self.min, value)

    def merge(self, other: Histogram) -> None:
        for b, c in other.bins.items():
            self.bins[b] = self.bins.get(b, 0) + c
        self.count += other.count
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100, nearest rank) from the middle of its bin, clamped to min and max."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= rank:
                mid = math.exp((b + 0.5) * LOG_R) if self.log else (b + 0.5) / 100.0
                return min(max(mid, self.min), self.max)
        return self.max
