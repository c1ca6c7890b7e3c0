"""Write prober directories (requests.jsonl + events.jsonl) in the prober's format, fast, with known truth.

The format is the one runbook/probes/prober.py streams: one JSON line per request with seq, sched,
sent, done (s since start), latency_ms, kind, status, upstream, ok, verdict, error; events as t, name,
detail on the same clock. Ordinary lines are formatted from integer microseconds with f-strings (about
450k lines/s), so a six-hour, 1.2-million-request file takes a few seconds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

GREEN = "127.0.0.1:18899"
BLUE = "127.0.0.1:18897"
KINDS = ("GET /health", "POST getSlot")


@dataclass(frozen=True)
class Failure:
    seq: int
    verdict: str = "conn_error"
    error: str = "connection reset by peer"
    status: int | None = None
    upstream: str | None = None


@dataclass(frozen=True)
class ProbeSpec:
    duration_s: float = 10.0
    rate: float = 200.0
    shift_at: float = 5.0  # from here on, blue serves
    events: tuple[tuple[float, str, str], ...] = ()
    failures: tuple[Failure, ...] = ()
    spike: tuple[float, float, float] | None = None  # (start s, end s, latency ms) on every request
    lag_us: int = 80  # sent - sched
    truncated_last_line: bool = False


@dataclass
class Truth:
    requests: int = 0
    by_upstream: Counter[str | None] = field(default_factory=Counter)
    failures: int = 0
    latencies: list[float] = field(default_factory=list)  # of answered (ok) requests, when asked for


def _latency_table(n: int = 997) -> list[float]:
    """A fixed, skewed spread of latencies (ms): mostly 1-3 ms, a tail to ~40 ms."""
    out = []
    for i in range(n):
        u = (i * 7919 % n + 0.5) / n
        out.append(round(1.0 + 1.2 * (-math.log(1.0 - u)) ** 1.6, 3))
    return out


def write_probe(directory: Path, spec: ProbeSpec, *, keep_latencies: bool = False) -> Truth:
    directory.mkdir(parents=True, exist_ok=True)
    lat_table = _latency_table()
    lat_str = [f"{v:.3f}" for v in lat_table]
    lat_us = [round(v * 1000) for v in lat_table]
    step_us = round(1_000_000 / spec.rate)
    n = int(spec.duration_s * spec.rate)
    shift_us = int(spec.shift_at * 1_000_000)
    fails = {f.seq: f for f in spec.failures}
    spike = spec.spike
    truth = Truth()
    green, blue = f'"{GREEN}"', f'"{BLUE}"'
    with (directory / "requests.jsonl").open("w") as out:
        for start in range(0, n, 20_000):
            lines = []
            for i in range(start, min(n, start + 20_000)):
                s = i * step_us
                s2 = s + spec.lag_us
                k = i % 997
                lat_s, lat_u = lat_str[k], lat_us[k]
                if spike is not None and spike[0] * 1e6 <= s < spike[1] * 1e6:
                    lat_s, lat_u = f"{spike[2]:.3f}", round(spike[2] * 1000)
                up = green if s < shift_us else blue
                if i in fails:
                    f = fails[i]
                    lines.append(json.dumps({
                        "seq": i, "sched": s / 1e6, "sent": s2 / 1e6, "done": (s2 + 1500) / 1e6, "latency_ms": 1.5,
                        "kind": KINDS[i & 1], "status": f.status, "upstream": f.upstream, "ok": False,
                        "verdict": f.verdict, "error": f.error,
                    }) + "\n")
                    truth.by_upstream[f.upstream] += 1
                    truth.failures += 1
                    continue
                s3 = s2 + lat_u
                lines.append(
                    f'{{"seq": {i}, "sched": {s // 1000000}.{s % 1000000:06d}, '
                    f'"sent": {s2 // 1000000}.{s2 % 1000000:06d}, "done": {s3 // 1000000}.{s3 % 1000000:06d}, '
                    f'"latency_ms": {lat_s}, "kind": "{KINDS[i & 1]}", "status": 200, "upstream": {up}, '
                    f'"ok": true, "verdict": "ok", "error": null}}\n'
                )
                truth.by_upstream[GREEN if s < shift_us else BLUE] += 1
                if keep_latencies:
                    truth.latencies.append(float(lat_s))
            out.write("".join(lines))
        if spec.truncated_last_line:
            out.write('{"seq": 999999999, "sched": 1.0, "se')
        truth.requests = n
    with (directory / "events.jsonl").open("w") as ev:
        for t, name, detail in spec.events:
            ev.write(json.dumps({"t": t, "name": name, "detail": detail}) + "\n")
    return truth
