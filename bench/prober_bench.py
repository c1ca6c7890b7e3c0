"""Benchmark of the zero-drop prober on this machine (issue 4). A script that prints figures, not a test.

    .venv/bin/python bench/prober_bench.py                 # everything, about five minutes
    .venv/bin/python bench/prober_bench.py --seconds 10 --rss-requests 200000 --skip-naive   # quicker

1. The prober through a local testbed's Caddy to the stand-in validator at each ``--rates`` (500 and 1000
   req/s by default) for ``--seconds``: achieved rate, schedule lag (sent - sched: p50/p99/max and the share
   within 5 ms), failures, latency, CPU per request; and, for contrast, a naive prober (one
   ``httpx.AsyncClient``, ``create_task`` per request, ``gather``) at the first rate.
2. The ceiling of the same stack measured by ``wrk -t2 -c32`` in the same run (the prober's mix, GET /health
   alternating with POST getSlot, and GET /health alone), and the prober's rate as a fraction of it.
3. An injected outage: a loopback upstream in a child process closes its listener and aborts every
   connection for exactly ``--outage-ms`` (re-listening after it), while the prober runs at
   ``--outage-rate``; the detected outage (longest gap between successes; first-to-last failure + 1/rate)
   against the true one, over ``--outage-trials`` trials.
4. The prober's RSS over ``--rss-requests`` recorded requests (an in-process transport answers at once).

The testbed comes up from a throwaway env file (local.yaml with every port shifted, state under a temp
dir) and is always taken down. All traffic is on loopback; every run is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml

from runbook.env import PROJECT_ROOT, Env, load_env, shift_ports
from runbook.probes.prober import Prober
from runbook.probes.summary import ProbeSummary
from runbook.testbed.stack import Testbed
from runbook.wait import wait_for

RPC_BODY = b'{"jsonrpc":"2.0","id":1,"method":"getSlot"}'


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- env and testbed
def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def make_env(tmp: Path, *, name: str = "bench", first: int = 5300, step: int = 137) -> Path:
    """local.yaml with every port shifted to a free set and the state under ``tmp`` (the shifts tried start
    at ``first``: benches that may run side by side use their own)."""
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    base = {"ingress": 18080, "admin": 12019, "green": data["deployments"]["green"]["rpc_port"],
            "blue": data["deployments"]["blue"]["rpc_port"], "sup": data["testbed"]["supervisor_port"],
            "cluster": data["testbed"]["cluster_port"],
            **{f"{c}-gossip": data["deployments"][c]["gossip_port"] for c in ("green", "blue")}}
    for shift in range(first, 9000, step):
        if all(_port_free(p + shift) for p in base.values()):
            break
    else:  # pragma: no cover - a machine with every candidate taken
        raise SystemExit("no free set of ports for the bench testbed")
    data["name"] = f"{name}{shift}"
    shift_ports(data, shift)
    data["testbed"]["state_dir"] = str(tmp / "state")
    data["testbed"]["storage_size"] = "256M"
    path = tmp / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- 1. prober through Caddy
@dataclass(frozen=True)
class RateRow:
    label: str
    target: float
    summary: ProbeSummary
    cpu_us: float  # process CPU per request while it ran
    priority: str  # the prober thread's scheduling (see Prober's isolate)


def run_prober(label: str, url: str, rate: float, seconds: float, out: Path) -> RateRow:
    log(f"{label}: {rate:g} req/s for {seconds:g} s -> {url}")
    prober = Prober(url=url, rate=rate, out_dir=out, max_duration=seconds, timeout=2.0)
    prober.start()
    cpu0 = time.process_time()
    prober.wait(seconds + 60.0)
    cpu = time.process_time() - cpu0
    summary = prober.stop()
    return RateRow(label, rate, summary, cpu / max(1, summary.total) * 1e6, prober.thread_priority)


@dataclass(frozen=True)
class NaiveRow:
    rate: float
    total: int
    ok: int
    errors: dict[str, int]
    lag_p99_ms: float
    within_5ms: float
    achieved: float


async def _naive(url: str, rate: float, seconds: float) -> NaiveRow:
    """What a first prober usually looks like: one AsyncClient, a task per request, gather at the end."""
    loop = asyncio.get_running_loop()
    outcomes: Counter[str] = Counter()
    lags: list[float] = []
    sent: list[float] = []

    async def one(client: httpx.AsyncClient, i: int, due: float) -> None:
        now = loop.time()
        lags.append(now - due)
        sent.append(now)
        try:
            if i % 2:
                r = await client.post(url, content=RPC_BODY, headers={"content-type": "application/json"})
            else:
                r = await client.get(url + "/health")
            outcomes["ok" if r.status_code == 200 else f"HTTP {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            outcomes[type(exc).__name__] += 1

    async with httpx.AsyncClient(timeout=2.0) as client:
        t0 = loop.time() + 0.01
        tasks = []
        for i in range(int(rate * seconds)):
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(client, i, due)))
        await asyncio.gather(*tasks)
    lags.sort()
    total = len(lags)
    span = max(sent) - min(sent) if sent else 0.0
    return NaiveRow(rate=rate, total=total, ok=outcomes.pop("ok", 0), errors=dict(outcomes),
                    lag_p99_ms=lags[min(total - 1, int(0.99 * total))] * 1000 if total else 0.0,
                    within_5ms=sum(lag <= 0.005 for lag in lags) / max(1, total),
                    achieved=(total - 1) / span if span > 0 else 0.0)


# ----------------------------------------------------------------------------- 2. wrk ceiling
WRK_MIX = """
local i = 0
local get, post
init = function(args)  -- wrk.headers holds Host only from here on
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["Content-Type"] = "application/json"
  get = wrk.format("GET", "/health")
  post = wrk.format("POST", "/", headers, 'BODY')
end
request = function()
  i = i + 1
  if i % 2 == 1 then return get else return post end
end
""".replace("BODY", RPC_BODY.decode())


@dataclass(frozen=True)
class WrkRow:
    label: str
    rps: float
    requests: int
    non_2xx: int
    socket_errors: str
    latency_p99: str


def run_wrk(label: str, url: str, seconds: int, script: Path | None) -> WrkRow:
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    argv = [wrk, "-t2", "-c32", f"-d{seconds}s", "--latency", "--timeout", "2s"]
    argv += ["-s", str(script), url] if script else [url + "/health"]
    log(f"wrk {label}: {' '.join(argv)}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False).stdout

    def grab(pattern: str, default: str = "0") -> str:
        m = re.search(pattern, out)
        return m.group(1) if m else default

    return WrkRow(label=label, rps=float(grab(r"Requests/sec:\s+([\d.]+)")),
                  requests=int(grab(r"(\d+) requests in")), non_2xx=int(grab(r"Non-2xx or 3xx responses: (\d+)")),
                  socket_errors=grab(r"Socket errors: ([^\n]+)", "none"), latency_p99=grab(r"\s99%\s+(\S+)", "?"))


# ----------------------------------------------------------------------------- 3. injected outage
class _Http(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 upstream: /health -> ok, POST -> a getSlot answer."""

    conns: set[asyncio.Transport] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""
        self.conns.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end]
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            size = end + 4 + (int(m.group(1)) if m else 0)
            if len(self.buf) < size:
                return
            self.buf = self.buf[size:]
            body = b"ok" if head.startswith(b"GET") else b'{"jsonrpc":"2.0","id":1,"result":%d}' % int(time.time())
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Upstream: outage-server\r\n\r\n%s"
                                 % (len(body), body))


def outage_server(port: int) -> None:
    """Child process: serve; on stdin `down SECONDS`, refuse for exactly that long, print the window."""

    with contextlib.suppress(OSError):  # keep the outage window exact on a busy machine (as the prober does)
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Http, "127.0.0.1", port)
        print("ready", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.startswith("down"):
                return
            seconds = float(line.split()[1])
            server.close()  # the listening socket is closed now: connects are refused from here
            down = time.monotonic()
            for transport in list(_Http.conns):
                transport.abort()
            end = down + seconds
            await asyncio.sleep(max(0.0, end - time.monotonic() - 0.003))
            while time.monotonic() < end:  # spin the last few ms: sleep() wakes up to 1 ms late
                pass
            server = await loop.create_server(_Http, "127.0.0.1", port)
            up = time.monotonic()
            print(f"window {down!r} {up!r}", flush=True)

    asyncio.run(main())


@dataclass(frozen=True)
class OutageRow:
    true_ms: float
    gap_ms: float
    span_ms: float  # first to last failed sched + 1/rate
    failed: int
    verdicts: dict[str, int]


def run_outage(tmp: Path, *, rate: float, outage: float, trials: int) -> list[OutageRow]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    child = subprocess.Popen([sys.executable, __file__, "--outage-server", str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    rows = []
    try:
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the outage server did not start")
        for trial in range(trials):
            prober = Prober(url=f"http://127.0.0.1:{port}", rate=rate, out_dir=tmp / f"outage{trial}",
                            max_duration=2.0, timeout=1.0, upstream_header="X-Upstream")
            prober.start()
            wait_for(prober.now, lambda t: t >= 1.0, timeout=10, interval=0.005, what="1 s of probing")
            child.stdin.write(f"down {outage!r}\n")
            child.stdin.flush()
            _, down, up = child.stdout.readline().split()
            prober.wait(30)
            s = prober.stop()
            span = (s.failure_span[1] - s.failure_span[0] + 1 / rate) if s.failure_span else 0.0
            rows.append(OutageRow(true_ms=(float(up) - float(down)) * 1000, gap_ms=s.longest_gap.seconds * 1000,
                                  span_ms=span * 1000, failed=s.failed, verdicts=dict(s.verdicts)))
            log(f"outage trial {trial + 1}: true {rows[-1].true_ms:.2f} ms, longest gap {rows[-1].gap_ms:.2f} ms, "
                f"failure span {rows[-1].span_ms:.2f} ms, {s.failed} failed")
    finally:
        with contextlib.suppress(OSError):
            child.stdin.write("quit\n")
            child.stdin.flush()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    return rows


# ----------------------------------------------------------------------------- 4. memory
class InstantTransport(httpx.AsyncBaseTransport):
    """Answers at once, in process: the prober's own cost and memory, no network."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, headers={"X-Upstream": "instant"}, content=b"ok")
        return httpx.Response(200, headers={"X-Upstream": "instant"},
                              content=b'{"jsonrpc":"2.0","id":1,"result":%d}' % int(time.time()))


@dataclass(frozen=True)
class RssRow:
    requests: int
    rss_before_mb: float
    rss_start_mb: float  # after the first 10,000 records
    rss_end_mb: float
    rss_peak_mb: float
    rss_after_summary_mb: float
    file_mb: float
    seconds: float
    verdicts: dict[str, int]


def run_rss(tmp: Path, *, requests: int, rate: float) -> RssRow:
    me = psutil.Process()

    def rss() -> float:
        return float(me.memory_info().rss) / 2**20

    log(f"memory: {requests:,} requests at {rate:g} req/s through an in-process transport")
    before = rss()
    prober = Prober(url="http://instant.invalid", rate=rate, out_dir=tmp / "rss", max_requests=requests,
                    max_duration=3600.0, transport=InstantTransport(), max_in_flight=256,
                    isolate=False)  # memory only: no real-time thread saturating a core for minutes
    t0 = time.monotonic()
    prober.start()
    wait_for(lambda: prober.progress.completed, lambda n: n >= min(10_000, requests), timeout=600, interval=0.05,
             what="10,000 records")
    start = peak = rss()
    while not prober.wait(0.5):
        peak = max(peak, rss())
        if prober.progress.completed % 200_000 < rate * 0.5:
            log(f"  {prober.progress.completed:,} records, RSS {rss():.1f} MB")
    end = rss()
    peak = max(peak, end)
    seconds = time.monotonic() - t0
    summary = prober.stop()
    return RssRow(requests=summary.total, rss_before_mb=before, rss_start_mb=start, rss_end_mb=end, rss_peak_mb=peak,
                  rss_after_summary_mb=rss(), file_mb=(tmp / "rss" / "requests.jsonl").stat().st_size / 2**20,
                  seconds=seconds, verdicts=dict(summary.verdicts))


# ----------------------------------------------------------------------------- report
def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [f"\n{title}", line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="500,1000", help="prober rates through Caddy (req/s)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per prober run through Caddy")
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--outage-ms", type=float, default=100.0)
    ap.add_argument("--outage-rate", type=float, default=1000.0)
    ap.add_argument("--outage-trials", type=int, default=5)
    ap.add_argument("--rss-requests", type=int, default=1_000_000)
    ap.add_argument("--rss-rate", type=float, default=10_000.0)
    ap.add_argument("--outage-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.outage_server:
        outage_server(args.outage_server)
        return 0

    report: list[str] = [f"machine: {psutil.cpu_count()} CPUs; load average at the start {psutil.getloadavg()}"]
    with tempfile.TemporaryDirectory(prefix="prober-bench-") as tmpname:
        tmp = Path(tmpname)
        env: Env = load_env(str(make_env(tmp)))
        testbed = Testbed(env)
        url = env.ingress.url
        rate_rows: list[RateRow] = []
        wrk_rows: list[WrkRow] = []
        naive: list[NaiveRow] = []
        try:
            testbed.up(progress=lambda m: log(f"testbed: {m}"))
            for rate in (float(r) for r in args.rates.split(",")):
                rate_rows.append(run_prober(f"prober {rate:g}/s", url, rate, args.seconds, tmp / f"rate{rate:g}"))
                log(rate_rows[-1].summary.describe(max_listed=5))
            for rate in [] if args.skip_naive else [float(r) for r in args.rates.split(",")]:
                log(f"naive prober: {rate:g} req/s for 10 s -> {url}")
                naive.append(asyncio.run(_naive(url, rate, 10.0)))
            script = tmp / "mix.lua"
            script.write_text(WRK_MIX)
            wrk_rows.append(run_wrk("GET /health + POST getSlot", url, args.wrk_seconds, script))
            wrk_rows.append(run_wrk("GET /health", url, args.wrk_seconds, None))
        finally:
            log("testbed: down")
            testbed.down()
        outage_rows = run_outage(tmp, rate=args.outage_rate, outage=args.outage_ms / 1000, trials=args.outage_trials)
        rss_row = run_rss(tmp, requests=args.rss_requests, rate=args.rss_rate) if args.rss_requests else None

    ceiling = wrk_rows[0].rps if wrk_rows else 0.0
    report.append(table(
        "1. prober through the local Caddy to the stand-in validator (GET /health alternating with POST getSlot)",
        ["run", "target/s", "achieved/s", "sent", "failed", "lag p50", "lag p99", "lag max", "<=5ms",
         "lat p50", "lat p99", "CPU/req", "of wrk", "thread"],
        [[r.label, f"{r.target:g}", f"{r.summary.achieved_rate:.1f}", str(r.summary.total), str(r.summary.failed),
          f"{r.summary.send_lag.p50:.2f}ms", f"{r.summary.send_lag.p99:.2f}ms", f"{r.summary.send_lag.max:.1f}ms",
          f"{r.summary.send_lag_within_5ms:.2%}", f"{r.summary.latency.p50:.2f}ms", f"{r.summary.latency.p99:.2f}ms",
          f"{r.cpu_us:.0f}us", f"{r.summary.achieved_rate / ceiling:.1%}" if ceiling else "?", r.priority]
         for r in rate_rows]))
    if naive:
        report.append(table(
            "   for contrast: a naive prober (one httpx.AsyncClient, default pool, create_task + gather), 10 s",
            ["target/s", "achieved/s", "sent", "ok", "errors", "lag p99", "<=5ms"],
            [[f"{n.rate:g}", f"{n.achieved:.1f}", str(n.total), str(n.ok),
              ", ".join(f"{k} {v}" for k, v in n.errors.items()) or "none", f"{n.lag_p99_ms:.1f}ms",
              f"{n.within_5ms:.2%}"] for n in naive]))
    report.append(table("2. ceiling of the same stack: wrk -t2 -c32 (same run)",
                        ["script", "req/s", "requests", "non-2xx", "socket errors", "p99"],
                        [[w.label, f"{w.rps:.0f}", str(w.requests), str(w.non_2xx), w.socket_errors, w.latency_p99]
                         for w in wrk_rows]))
    report.append(table(
        f"3. injected outage: upstream refuses for {args.outage_ms:g} ms; prober at {args.outage_rate:g} req/s",
        ["trial", "true", "longest gap", "gap error", "fail span+1/rate", "span error", "failed", "verdicts"],
        [[str(i + 1), f"{o.true_ms:.2f}ms", f"{o.gap_ms:.2f}ms", f"{o.gap_ms - o.true_ms:+.2f}ms",
          f"{o.span_ms:.2f}ms", f"{o.span_ms - o.true_ms:+.2f}ms", str(o.failed),
          ", ".join(f"{k} {v}" for k, v in sorted(o.verdicts.items()))] for i, o in enumerate(outage_rows)]))
    if rss_row is not None:
        r = rss_row
        report.append(table(
            f"4. prober memory over {r.requests:,} recorded requests (in-process transport, {args.rss_rate:g} req/s)",
            ["RSS before", "RSS @10k", "RSS end", "growth", "peak", "after summary", "requests.jsonl", "time",
             "verdicts"],
            [[f"{r.rss_before_mb:.1f}MB", f"{r.rss_start_mb:.1f}MB", f"{r.rss_end_mb:.1f}MB",
              f"{r.rss_end_mb - r.rss_start_mb:+.1f}MB", f"{r.rss_peak_mb:.1f}MB", f"{r.rss_after_summary_mb:.1f}MB",
              f"{r.file_mb:.0f}MB", f"{r.seconds:.0f}s",
              ", ".join(f"{k} {v}" for k, v in sorted(r.verdicts.items()))]]))
    report.append("\ntargets (issue 4):")
    for row in rate_rows:
        if row.target >= 500:
            sm = row.summary
            good = sm.achieved_rate >= 0.99 * row.target and sm.send_lag_within_5ms >= 0.99 and sm.ok
            report.append(f"  {'PASS' if good else 'MISS'}  {row.target:g} req/s through Caddy, >= 99% sent within "
                          f"5 ms of schedule: {sm.send_lag_within_5ms:.2%} at {sm.achieved_rate:.0f}/s, "
                          f"{sm.failed} failed")
    if outage_rows:
        worst = max(max(abs(o.gap_ms - o.true_ms), abs(o.span_ms - o.true_ms)) for o in outage_rows)
        report.append(f"  {'PASS' if worst <= 10 else 'MISS'}  injected {args.outage_ms:g} ms outage measured within "
                      f"10 ms: worst error {worst:.2f} ms over {len(outage_rows)} trials (both measures)")
    if rss_row is not None:
        growth = rss_row.rss_end_mb - rss_row.rss_start_mb
        report.append(f"  {'PASS' if growth < 50 and rss_row.requests >= 1_000_000 else 'MISS'}  RSS growth < 50 MB "
                      f"over 1,000,000 records: {growth:+.1f} MB over {rss_row.requests:,}")
    report.append(f"machine at the end: load average {psutil.getloadavg()}")
    print("\n".join(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
