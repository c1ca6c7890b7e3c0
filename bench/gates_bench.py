"""Benchmark of the canary's moving-window error gate (issue 14). A script that prints figures, not a test.

    .venv/bin/python bench/gates_bench.py                      # 24 h at 15 s resolution, 2- and 5-minute windows
    .venv/bin/python bench/gates_bench.py --repeat 20 --hours 1 6 24 168

For each length it builds a cumulative (t, requests, errors) series sampled every ``--resolution`` seconds
(10 requests/s, 0.5% errors, one 2-minute burst at 40%), and times :func:`moving_window_error_gate` over it
(window stepping by the resolution: one window per sample), the best and median of ``--repeat`` runs; time
per window shows the work stays linear. It also times :func:`combine_counters` summing ``--series`` per-pod
counter series of the 24 h run into one.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

from runbook.canary.window import Counts, combine_counters, moving_window_error_gate

T = TypeVar("T")


def series(hours: float, resolution: float) -> list[Counts]:
    n = int(hours * 3600 / resolution)
    burst = range(n // 2, n // 2 + int(120 / resolution))
    out, requests, errors, owed = [Counts(0.0, 0.0, 0.0)], 0.0, 0.0, 0.0
    per_step = 10 * resolution
    for k in range(1, n + 1):
        requests += per_step
        owed += per_step * (0.4 if k in burst else 0.005)
        whole = int(owed)
        errors, owed = errors + whole, owed - whole
        out.append(Counts(k * resolution, requests, errors))
    return out


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, float, T]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, nargs="+", default=[1, 6, 24])
    p.add_argument("--resolution", type=float, default=15.0, help="seconds between samples (a scrape interval)")
    p.add_argument("--windows", type=float, nargs="+", default=[120, 300], help="window lengths, seconds")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--series", type=int, default=24, help="per-pod series combined (combine_counters)")
    args = p.parse_args()

    print(f"moving-window error gate, samples every {args.resolution:g} s, windows stepping by {args.resolution:g} s")
    print(f"{'run':>6} {'samples':>8} {'window':>7} {'windows':>8} {'best ms':>9} {'median ms':>10} "
          f"{'µs/window':>10}  verdict")
    for hours in args.hours:
        data = series(hours, args.resolution)
        for window in args.windows:
            gate = functools.partial(moving_window_error_gate, data, window=window, step=args.resolution)
            best, median, result = timed(gate, args.repeat)
            print(f"{hours:>5g}h {len(data):>8} {window:>6g}s {result.windows:>8} {best * 1e3:>9.2f} "
                  f"{median * 1e3:>10.2f} {best * 1e6 / max(1, result.windows):>10.2f}  {result.verdict}")

    day = series(24, args.resolution)
    per_pod = [[(s.t, s.requests / args.series) for s in day] for _ in range(args.series)]
    best, median, combined = timed(lambda: combine_counters(per_pod), args.repeat)
    print(f"combine_counters: {args.series} series x {len(day)} samples -> {len(combined)} points: "
          f"best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
