"""What changing Caddy's upstream order costs under the strict zero-drop verdict (issue 9): by a config
reload, and by the order switch the procedures use. A script, not a test.

    flock /tmp/runbook-testbed.lock .venv/bin/python bench/reload_bench.py --reloads 20
    flock /tmp/runbook-testbed.lock .venv/bin/python bench/reload_bench.py --procedure reload,switch --rounds 3

A throwaway testbed (local.yaml with every port shifted, state under a temp dir; green up, blue down, as
at the agave upgrade's cleanup and its rollback's restore-order) is probed at ``--rate`` (150 req/s, the
features' rate), GET /health alternating with POST getSlot on keep-alive connections, while each
``--procedure`` changes the upstream order ``--reloads`` times, ``--interval`` seconds apart (alternating
between the two orders, so every change is real). Printed per procedure: reloads done, requests, requests
lost (in all, per reload, by cause: ``needed_retry`` is a request a client that does not retry lost on a
keep-alive connection Caddy closed), the slowest answer and the longest gap between successes.

Procedures: ``reload`` loads the testbed's config with the two orders swapped (``POST /load``: a reload, as
a ``PATCH`` of the upstreams is); ``switch`` is what the procedures do, ``set_upstream_order`` on the
production Caddyfile's order switch (the order file touched or removed: no config change). Figures
measured on this machine are in README's Benchmarks.
Bounded: ``--reloads`` (at most 200) changes, each ``--interval`` (at least 0.5 s) apart, a prober capped at
that duration plus a minute; the testbed is always taken down.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import prober_bench  # beside this script: its throwaway env and log lines
from prober_bench import log

from runbook.adapters.factory import connect
from runbook.adapters.ingress import CaddyAdmin
from runbook.checks import zero_drop
from runbook.env import PROJECT_ROOT, Env, load_env
from runbook.probes.prober import Prober
from runbook.probes.summary import read_jsonl
from runbook.testbed.stack import Testbed

sys.path.insert(0, str(PROJECT_ROOT))


def make_env(tmp: Path) -> Path:
    """The prober bench's throwaway env (every port shifted to a free set, state under ``tmp``), on shifts
    of its own so both benches can run side by side."""
    return prober_bench.make_env(tmp, name="reload", first=3100, step=157)


def procedures(env: Env, admin: CaddyAdmin) -> dict[str, Callable[[list[str]], object]]:
    from runbook.testbed import caddy

    d = env.deployments
    green_first = f"127.0.0.1:{d.green.rpc_port} 127.0.0.1:{d.blue.rpc_port}"
    blue_first = f"127.0.0.1:{d.blue.rpc_port} 127.0.0.1:{d.green.rpc_port}"
    configs = {green_first: caddy.adapt(caddy.render(caddy.TEMPLATE, env)),
               blue_first: caddy.adapt(caddy.render(caddy.TEMPLATE, env, upstreams=blue_first,
                                                    upstreams_blue_first=green_first))}
    return {
        "reload": lambda order: admin.load(configs[" ".join(order)]),
        "switch": admin.set_upstream_order,
    }


def run(env: Env, name: str, change: Callable[[list[str]], object], *, reloads: int, interval: float, rate: float,
        out: Path) -> str:
    d = env.deployments
    orders = [[f"127.0.0.1:{d.blue.rpc_port}", f"127.0.0.1:{d.green.rpc_port}"],
              [f"127.0.0.1:{d.green.rpc_port}", f"127.0.0.1:{d.blue.rpc_port}"]]
    prober = Prober(url=env.ingress.url, rate=rate, out_dir=out, timeout=10.0, client_timeout=env.probe.client_timeout,
                    max_in_flight=int(rate * 12), max_duration=reloads * (interval + 2.0) + 60.0)
    prober.start()
    times: list[float] = []
    took: list[float] = []
    try:
        time.sleep(min(2.0, interval))  # warm connections before the first change
        for i in range(reloads):
            prober.event("caddy config change", f"{name} #{i + 1}")
            times.append(prober.now())
            t = time.monotonic()
            change(orders[i % 2])
            took.append(time.monotonic() - t)
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
    finally:
        summary = prober.stop()
    verdict = zero_drop.verdict(summary, max_gap=env.probe.max_gap)
    per_reload: Counter[int] = Counter()
    causes: Counter[str] = Counter()
    for rec in read_jsonl(out / "requests.jsonl"):
        if not rec["ok"]:
            causes[rec["verdict"]] += 1
            per_reload[sum(1 for t in times if t <= rec["sched"])] += 1
    lost = sum(causes.values())
    spread = ", ".join(f"#{k}: {v}" for k, v in sorted(per_reload.items())) or "none"
    return (f"{name}: {len(times)} changes, {summary.total} requests at {rate:g}/s, {lost} lost "
            f"({lost / max(1, len(times)):.2f} per change; by cause {dict(causes) or 'none'}; after change {spread}); "
            f"slowest answer {summary.slowest_ms:.1f} ms; longest gap {summary.longest_gap.seconds * 1000:.1f} ms; "
            f"change took {max(took, default=0) * 1000:.0f} ms at most; strict verdict "
            f"{'PASS' if verdict.ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procedure", default="reload,switch", help="comma-separated: reload, switch")
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between changes (>= 0.5)")
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--rounds", type=int, default=1, help="repeat every procedure this many times (<= 5)")
    args = ap.parse_args(argv)
    if not 1 <= args.reloads <= 200 or args.interval < 0.5 or not 1 <= args.rounds <= 5:
        raise SystemExit("--reloads 1..200, --interval >= 0.5, --rounds 1..5")
    lines = []
    with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmpname:
        tmp = Path(tmpname)
        env = load_env(str(make_env(tmp)))
        testbed = Testbed(env)
        try:
            testbed.up(progress=lambda m: log(f"testbed: {m}"))
            with CaddyAdmin(env.ingress.admin, site_url=env.ingress.url, files=connect(env, testbed).host) as admin:
                table = procedures(env, admin)
                for r in range(args.rounds):
                    for name in args.procedure.split(","):
                        log(f"{name}: {args.reloads} changes, {args.interval:g} s apart, at {args.rate:g} req/s")
                        lines.append(run(env, name, table[name], reloads=args.reloads, interval=args.interval,
                                         rate=args.rate, out=tmp / f"{name}-{r}"))
                        log(lines[-1])
                table["reload"]([f"127.0.0.1:{env.deployments.green.rpc_port}",
                                 f"127.0.0.1:{env.deployments.blue.rpc_port}"])
                table["switch"]([f"127.0.0.1:{env.deployments.green.rpc_port}",
                                 f"127.0.0.1:{env.deployments.blue.rpc_port}"])
        finally:
            log("testbed: down")
            testbed.down()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
