"""Cost of the DoubleZero handover sampler (runbook.checks.dz_handover) on a running testbed. Prints figures.

    flock /tmp/runbook-testbed.lock .venv/bin/python bench/dz_handover_bench.py [--env local] [--seconds 20]

1. Each part of one sample, ``--reps`` times: the host's process listing (``ps``), the pods of both colours
   and ``doublezero status`` exec'd in each running sidecar, the routes on doublezero0 (``ip route``).
2. The sampler running for ``--seconds`` at its default interval: samples taken, achieved interval
   (mean/p95/max), read time per sample (mean/p95/max), and the runner's CPU (its own and its children's,
   the ``ps``/``ip``/exec subprocesses) as a share of one core.

Reads only; needs the env's testbed up (run it under the testbed lock). Bounded in count and time.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import sys
import time
from collections.abc import Callable

from runbook.adapters.factory import connect
from runbook.checks import dz_handover as ho
from runbook.env import load_env
from runbook.procedures import bluegreen as bg
from runbook.testbed.stack import Testbed


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.95) - 1)]


def _timed(what: str, fn: Callable[[], object], reps: int) -> None:
    ts = []
    for _ in range(reps):
        t0 = time.monotonic()
        fn()
        ts.append(time.monotonic() - t0)
    print(f"  {what:<44} mean {statistics.mean(ts) * 1000:7.1f} ms   max {max(ts) * 1000:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--env", default="local")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    env = load_env(args.env)
    tb = Testbed(env) if env.testbed is not None else None
    if tb is not None and not tb.running():
        print(f"the {env.name} testbed is not up: bring it up first (runbook testbed up)", file=sys.stderr)
        return 2
    adapters = connect(env, tb)
    skip = "" if tb is None or tb.netns is not None else "no node network namespace"
    sampler = ho.HandoverSampler(host=adapters.host, workloads=adapters.workloads,
                                 deployments={c: env.deployments.colour(c).name for c in bg.COLOURS},
                                 sidecar=env.doublezero.sidecar, daemon=env.doublezero.host_service,
                                 interface=env.doublezero.interface, skip_routes_reason=skip,
                                 netns=tb.netns if tb is not None else None, max_duration=args.seconds + 5)
    pods = [p for c in bg.COLOURS for p in adapters.workloads.pods(env.deployments.colour(c).name)]
    print(f"env {env.name}: {len(pods)} pods ({', '.join(p.name for p in pods)}); routes "
          f"{'not read: ' + skip if skip else 'read'}")
    print(f"1. parts of one sample ({args.reps} times each)")
    _timed(f"ps: {env.doublezero.host_service} processes", lambda: adapters.host.processes(env.doublezero.host_service),
           args.reps)
    _timed("pods of both colours", lambda: [adapters.workloads.pods(env.deployments.colour(c).name)
                                           for c in bg.COLOURS], args.reps)
    for p in pods:
        def status(name: str = p.name) -> object:
            return adapters.workloads.exec(name, env.doublezero.sidecar, ["doublezero", "status"])

        _timed(f"exec {p.name}: doublezero status", status, args.reps)
    if not skip:
        _timed(f"ip route show dev {env.doublezero.interface}", lambda: adapters.host.routes(env.doublezero.interface),
               args.reps)
    _timed("ps + ip netns identify (the daemons here)", sampler._daemons, args.reps)
    _timed("one whole sample", sampler.sample_once, args.reps)

    print(f"2. the sampler for {args.seconds:.0f} s at interval {sampler.interval} s")
    cpu0, t0 = _cpu(), time.monotonic()
    sampler.start()
    time.sleep(args.seconds)  # a benchmark's measured window, not a wait for a condition
    samples = sampler.stop()
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    gaps = [b.at - a.at for a, b in itertools.pairwise(samples)]
    reads = [s.took for s in samples]
    print(f"  samples {len(samples)} in {wall:.1f} s; interval mean {statistics.mean(gaps):.3f} s, p95 "
          f"{_p95(gaps):.3f} s, max {max(gaps):.3f} s")
    print(f"  read per sample mean {statistics.mean(reads) * 1000:.0f} ms, p95 {_p95(reads) * 1000:.0f} ms, max "
          f"{max(reads) * 1000:.0f} ms; runner CPU (own + children) {cpu / wall * 100:.0f}% of one core")
    v = ho.verdict(samples, new_colour="green", skip_routes_reason=skip)
    print(f"  verdict on the steady state (green holds): {'ok' if v.ok else v.problems}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
