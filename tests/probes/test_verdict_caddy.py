"""The strict zero-drop verdict against real Caddy (the production template) and real upstreams on loopback.

Each test shows one way a run loses what a client that does not retry would see, and that the verdict
catches it by its cause: a config reload under keep-alive traffic (``needed_retry``), an upstream outage
that holds requests in Caddy's retry loop longer than the client timeout (``late``), a shorter stall
(no request lost, a gap). And the order switch that needs no reload: the order file flipped 150 times under
the same traffic costs nothing, while the requests follow it.

Brings up Caddy: run under ``flock /tmp/runbook-testbed.lock``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from runbook.adapters.host import TestinfraHost
from runbook.adapters.ingress import CaddyAdmin
from runbook.checks import zero_drop
from runbook.env import PROJECT_ROOT, Env, load_env
from runbook.probes.prober import Prober
from runbook.probes.summary import ProbeSummary, read_jsonl
from runbook.procedures import bluegreen as bg
from runbook.testbed import caddy
from runbook.wait import wait_for
from tests.probes.test_prober import Upstream


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    env: Env
    a: Upstream  # green: first in the order
    b: Upstream  # blue
    admin: CaddyAdmin
    out: Path

    def prober(self, rate: float, name: str) -> Prober:
        return Prober(url=self.env.ingress.url, rate=rate, out_dir=self.out / name, timeout=10.0,
                      client_timeout=self.env.probe.client_timeout, max_in_flight=int(rate * 12), max_duration=120,
                      isolate=False).start()


def _env(tmp: Path, a: int, b: int) -> Env:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    data.update(name="verdictcaddy", cluster_rpc="http://127.0.0.1:9", entrypoints=[])
    data["ingress"].update(url=f"http://127.0.0.1:{_free_port()}", admin=f"http://127.0.0.1:{_free_port()}",
                           try_duration="5s", health_interval="250ms")  # production's 5 s retry window
    data["deployments"]["green"]["rpc_port"], data["deployments"]["blue"]["rpc_port"] = a, b
    data["testbed"].update(state_dir=str(tmp / "state"), startup_delay="15s")
    path = tmp / "verdictcaddy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_env(str(path))


@contextlib.contextmanager
def _caddy(env: Env, state: Path, template: Path, **overrides: str) -> Iterator[CaddyAdmin]:
    program = caddy.prepare(env, state, template=template, **overrides)
    with (state / "caddy.log").open("w") as log:
        proc = subprocess.Popen(program.argv, env={**os.environ, **program.environment}, stdout=log, stderr=log)
    admin = CaddyAdmin(env.ingress.admin, site_url=env.ingress.url)
    try:
        wait_for(lambda: httpx.get(env.ingress.url + "/health", timeout=1.0).text, lambda t: t == "ok", timeout=20,
                 interval=0.1, tolerate=(httpx.HTTPError,), what="Caddy serving the upstream")
        yield admin
    finally:
        admin.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    a, b = Upstream(), Upstream()
    b.behaviour.upstream = "up-b:2"
    env = _env(tmp_path, a.port, b.port)
    try:
        # a short fail_duration: an upstream back from an outage is retried at once, not 10 s later
        with _caddy(env, tmp_path / "state", caddy.TEMPLATE, fail_duration="200ms") as admin:
            yield Stack(env, a, b, admin, tmp_path)
    finally:
        a.close()
        b.close()


def _until(observe: Callable[[], Any], predicate: Callable[[Any], bool], what: str, timeout: float = 30) -> Any:
    return wait_for(observe, predicate, timeout=timeout, interval=0.01, what=what)


def _verdict(summary: ProbeSummary, env: Env) -> zero_drop.Verdict:
    return zero_drop.verdict(summary, max_gap=env.probe.max_gap)


def test_a_config_reload_that_costs_a_request_is_caught(stack: Stack) -> None:
    """Caddy closes its idle keep-alive connections at every reload; a request sent on one at that instant
    is answered only on the prober's retry: lost to a client that does not retry. Reloads go on (at most
    150, 50 ms apart) until one costs a request; each costs one about one time in four at 150 req/s."""
    a, b = f"127.0.0.1:{stack.a.port}", f"127.0.0.1:{stack.b.port}"
    configs = [caddy.adapt(caddy.render(caddy.TEMPLATE, stack.env, fail_duration="200ms", upstreams=f"{b} {a}")),
               caddy.adapt(caddy.render(caddy.TEMPLATE, stack.env, fail_duration="200ms", upstreams=f"{a} {b}"))]
    p = stack.prober(400, "reload")
    _until(lambda: p.progress.completed, lambda n: n >= 200, "200 answers on warm connections")
    reloads = 0
    while p.progress.failed == 0 and reloads < 150:
        p.event("caddy config change", f"#{reloads + 1}")
        stack.admin.load(configs[reloads % 2])  # a config change: Caddy reloads
        reloads += 1
        time.sleep(0.05)
    mark = p.progress.scheduled
    _until(lambda: p.progress.completed, lambda n: n >= mark + 50, "answers after the last reload")
    v = _verdict(p.stop(), stack.env)
    assert not v.ok and "needed_retry" in v.overall.lost, v.describe()
    lost = [r for r in read_jsonl(p.out_dir / "requests.jsonl") if r["verdict"] == "needed_retry"]
    assert lost and all(r["answer"] == "ok" and r["status"] == 200 for r in lost)  # answered, but only on a retry
    assert all("reused keep-alive connection" in r["retried"] for r in lost)
    assert "lost to a client that does not retry" in lost[0]["error"]
    hit = [ph for ph in v.phases if ph.lost.get("needed_retry")]
    assert hit and all(ph.name.startswith(("caddy config change", "after caddy config change")) for ph in hit)


def _outage(stack: Stack, name: str, seconds: float) -> tuple[Prober, ProbeSummary]:
    """Both upstreams unreachable for ``seconds`` under 150 req/s, with 100 answers before and after."""
    p = stack.prober(150, name)
    _until(lambda: p.progress.completed, lambda n: n >= 100, "answers before the outage")
    p.event("upstreams down")
    for u in (stack.a, stack.b):
        u.down()
    time.sleep(seconds)  # the outage being measured: its length is the point, not a wait for a state
    for u in (stack.a, stack.b):
        u.up()
    p.event("upstreams up")
    mark = p.progress.scheduled
    _until(lambda: p.progress.completed, lambda n: n >= mark + 100, "answers after the outage")
    return p, p.stop()


def test_requests_held_in_caddys_retry_loop_longer_than_the_client_timeout_are_late(stack: Stack) -> None:
    """Every upstream unreachable for 2.6 s, Caddy's 5 s retry window holds each request until one is back:
    every request is answered, with HTTP 200 and a good body, and those held past 2 s are lost all the same."""
    p, summary = _outage(stack, "stall", 2.6)
    v = _verdict(summary, stack.env)
    assert not v.ok and v.overall.lost.get("late", 0) >= 10, v.describe()
    assert set(v.overall.lost) <= {"late", "conn_error"}, v.describe()  # conn_error: reset by the listener's close
    late = [r for r in read_jsonl(p.out_dir / "requests.jsonl") if r["verdict"] == "late"]
    assert all(r["status"] == 200 and r["answer"] == "ok" and r["latency_ms"] > 2000 for r in late)
    during = next(ph for ph in v.phases if ph.name == "upstreams down -> upstreams up")
    assert during.lost.get("late") and during.slowest_ms > 2000


def test_a_stall_within_the_client_timeout_is_caught_as_a_gap(stack: Stack) -> None:
    """A 1.3 s outage under the 5 s retry window: no request is lost (each answered within 2 s), yet 1.3 s
    pass without a successful answer: longer than the 1 s gap bound."""
    _, summary = _outage(stack, "gap", 1.3)
    v = _verdict(summary, stack.env)
    assert not v.ok, v.describe()
    assert set(v.overall.lost) <= {"conn_error"}, v.describe()  # none late: the stall is under the client timeout
    assert v.overall.slowest_ms < 2000 and v.overall.longest_gap.seconds > stack.env.probe.max_gap
    assert "without a successful answer" in v.describe()


def test_switching_the_order_by_its_file_costs_no_request(stack: Stack) -> None:
    """The same traffic as the reload test (400 req/s on keep-alive connections), the order switched 150
    times 50 ms apart through the order file: the config never changes, no request is lost, no gap, and the
    requests follow the switch (both upstreams served, each in its turn)."""
    admin = CaddyAdmin(stack.env.ingress.admin, site_url=stack.env.ingress.url, files=TestinfraHost("local://"))
    a, b = f"127.0.0.1:{stack.a.port}", f"127.0.0.1:{stack.b.port}"
    before = admin.config()
    p = stack.prober(400, "switch")
    _until(lambda: p.progress.completed, lambda n: n >= 200, "200 answers on warm connections")
    for i in range(150):
        p.event("upstream order switch", f"#{i + 1}")
        admin.set_upstream_order([b, a] if i % 2 == 0 else [a, b])
        time.sleep(0.05)  # the switches' pace under traffic, as the reload test's
    mark = p.progress.scheduled
    _until(lambda: p.progress.completed, lambda n: n >= mark + 50, "answers after the last switch")
    summary = p.stop()
    v = _verdict(summary, stack.env)
    assert v.ok, v.describe()
    assert admin.config() == before and admin.upstream_order() == [a, b]
    served = {r.get("upstream") for r in read_jsonl(p.out_dir / "requests.jsonl")}
    assert {a, b} <= served, served  # the traffic followed the switch
    admin.close()


def test_the_shift_waits_until_caddy_forgets_the_idle_colours_failures(tmp_path: Path) -> None:
    """Caddy takes an upstream out for fail_duration after a failed request (max_fails 1). Requests that
    failed onto blue (both colours briefly unreachable) leave blue out for 8 s: the shift's wait sees the
    remembered failure, and returns only once Caddy has forgotten it, so green is never stopped while blue
    is out (the testbed lost every request for 1.3 to 1.9 s when an upgrade's shift came seconds after a
    rollback's shift back had failed requests onto blue)."""
    a, b = Upstream(), Upstream()
    env = _env(tmp_path, a.port, b.port)
    try:
        with _caddy(env, tmp_path / "state", caddy.TEMPLATE, fail_duration="8s") as admin:
            a.down()
            b.down()
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(env.ingress.url + "/health", timeout=0.5)  # tried on both, failed on both
            a.up()
            b.up()
            blue = f"127.0.0.1:{b.port}"
            assert any(u.fails > 0 for u in admin.upstreams() if u.address == blue)  # remembered: blue is out
            waited = bg.wait_ingress_remembers_no_failure(env, admin, "blue", timeout=10)
            assert waited > 1.0  # it did not return while Caddy still counted blue out
            assert all(u.fails == 0 for u in admin.upstreams() if u.address == blue)
    finally:
        a.close()
        b.close()
