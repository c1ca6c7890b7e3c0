"""Hard-fork steps (seeds 001/002) -> runbook.procedures.hardfork; runbook.checks.hardfork.

Thin: parse, call the procedure or the check, record. The Givens read the node set and the chain through the
ports and the network's RPC, so they run on kind as on the local testbed; on a disposable env they first put the
node set back as the testbed made it (runbook.testbed.hardfork_stack.reset on the local testbed) and put an
upgrade plan on chain (the testbed's governance: a ConfigMap the network's validator reads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import given, parsers, then, when

from runbook.adapters.factory import Adapters, connect
from runbook.checks import hardfork as hc
from runbook.checks import outcome
from runbook.checks.core import judge, judge_all
from runbook.errors import StepRefused
from runbook.evidence.artifacts import slug
from runbook.evidence.recorder import Recorder
from runbook.probes.endpoints_watch import EndpointsWatcher
from runbook.probes.prober import Prober
from runbook.probes.summary import SEI_MIX
from runbook.procedures import hardfork as hf
from runbook.procedures import hardfork_nodes as hn
from runbook.procedures import journal_for, procedure_for
from runbook.procedures.facts import HardforkFacts
from runbook.procedures.framework import Context, Interrupted, RunResult
from runbook.testbed.stack import Testbed
from steps.common import report_to
from steps.upgrade import ProbeRun, judge_probe

NEXT = "v6.4.0"  # the operator scenario's version on a disposable env without --hardfork-version
BLOCKS_AHEAD = 60  # a disposable env's plan: H this many blocks ahead of the tip
EVENTS = ["bootstrap", "H reached", "bootstrap halted", "entrants started", "H processed", "switch", "teardown",
          "halt signal", "entrants deleted", "switch back", "incumbents re-created"]


@dataclass
class ForkRun:
    ctx: Context[HardforkFacts]
    result: RunResult | None
    watcher: EndpointsWatcher
    progress: list[str] = field(default_factory=list)
    interrupted: str = ""
    started: float = 0.0


def _cfg(adapters: Adapters) -> Any:
    return adapters.hardfork


def _testbed_part(testbed: Testbed | None) -> Any:
    if testbed is None:
        return None
    from runbook.testbed import hardfork_stack

    return hardfork_stack


# ------------------------------------------------------------------------------------------- given
@given("the Sei node set behind its Service", target_fixture="fork_start")
def node_set(adapters: Adapters, testbed: Testbed | None, evidence: Recorder) -> dict[str, Any]:
    """The incumbents the Service pins, Ready. A disposable env is put back as its testbed made it first (the
    revision the Service pins, no other revision, no plan on chain); elsewhere it is read as it is."""
    c = _cfg(adapters)
    if adapters.env.disposable:
        part = _testbed_part(testbed)
        if part is not None:
            part.reset(testbed, progress=evidence.note)
        journal_for(adapters.env, hf.NAME).clear()
    ctx = hf.context(adapters, {})
    revision = hn.service_revision(hf.service(ctx), c)
    if revision is None:
        raise StepRefused(f"env {adapters.env.name}: service {c.service} pins no {c.revision_label}")
    pods = hf.pods_of(ctx, c.statefulset(revision))
    ctx.facts.incumbent = revision
    judge(evidence, hf.pins(ctx, revision))
    evidence.call(f"incumbents {c.statefulset(revision)}: {', '.join(p.name for p in pods)}",
                  hc.incumbents_snapshot(pods))
    return {"revision": revision, "tip": adapters.sei_network().tip()}


@given(parsers.re(r"an upgrade plan on chain for (?P<version>[\w.-]+) in (?P<blocks>\d+) blocks"))
def plan_in(adapters: Adapters, testbed: Testbed | None, version: str, blocks: str, evidence: Recorder) -> None:
    """Governance passed: the plan named after the release at H = the tip + ``blocks`` (a testbed's governance
    ConfigMap, which the network's validator reads; the nodes learn it from their peers)."""
    if not adapters.env.disposable:
        raise StepRefused(f"env {adapters.env.name} is not disposable: its chain's upgrade plan is governance's")
    part = _testbed_part(testbed)
    c = _cfg(adapters)
    height = adapters.sei_network().tip() + int(blocks)
    if part is not None:
        part.set_plan(testbed, version, height)
    else:
        adapters.objects.apply_object({"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": c.governance},
                                       "data": {"plan.json": f'{{"name": "{version}", "height": {height}}}'}})
    seen = adapters.sei_network().plan()
    evidence.call(f"upgrade plan {version} at H = {height}", {"seen on the network": seen.__dict__ if seen else None})


@given("the chain's upgrade plan for the new version")
def plan_for_new(adapters: Adapters, testbed: Testbed | None, evidence: Recorder,
                 request: pytest.FixtureRequest) -> None:
    """A disposable env gets a plan BLOCKS_AHEAD blocks ahead; elsewhere governance's plan must be on chain."""
    version = _new_version(adapters, request)
    if adapters.env.disposable:
        plan_in(adapters, testbed, version, str(BLOCKS_AHEAD), evidence)
        return
    plan = adapters.sei_network().plan()
    if plan is None:
        raise StepRefused(f"env {adapters.env.name}: no upgrade plan on chain: nothing to fork at")
    evidence.call(f"upgrade plan {plan.name} at H = {plan.height}")


@given(parsers.parse("a prober reading the node's status through the Service at {rate:d} requests/s"),
       target_fixture="probe")
def start_prober(adapters: Adapters, rate: int, request: pytest.FixtureRequest, evidence: Recorder) -> ProbeRun:
    c, env = _cfg(adapters), adapters.env
    out = Path(request.config.rootpath) / "reports" / "probes" / slug(request.node.nodeid, 120)
    prober = Prober(url=c.rpc, rate=rate, out_dir=out, upstream_header="X-Sei-Node", mix=SEI_MIX,
                    timeout=max(10.0, env.probe.client_timeout), client_timeout=env.probe.client_timeout,
                    max_in_flight=rate * 12, max_duration=c.running_timeout + c.bootstrap_timeout + 900,
                    # a connection per request, as `seid status` and curl do: a kept-alive connection stays with its
                    # pod after the switch (a Service only steers new ones), and seid closes idle connections when the
                    # teardown stops it, which a client that does not retry can lose one request to (README)
                    keep_alive=False)
    run = ProbeRun(prober.start())
    request.addfinalizer(run.finish)
    evidence.call(f"prober: {rate} GET /status a second through the Service {c.rpc}, a connection each (records in "
                  f"{out})")
    return run


# ------------------------------------------------------------------------------------------- when
def _new_version(adapters: Adapters, request: pytest.FixtureRequest) -> str:
    version = request.config.getoption("hardfork_version", None) or (NEXT if adapters.env.disposable else None)
    if not version:
        raise StepRefused(f"env {adapters.env.name}: the operator's hard fork needs --hardfork-version")
    return str(version)


def run_fork(adapters: Adapters, evidence: Recorder, request: pytest.FixtureRequest, params: dict[str, Any],
             *, interrupt_after: str | None = None) -> ForkRun:
    proc = procedure_for(request.config, hf.NAME)
    probe = request.getfixturevalue("probe") if "probe" in request.fixturenames else None
    c = _cfg(adapters)
    report = report_to(evidence, probe)
    lines: list[str] = []
    shown = report["progress"]

    def progress(msg: str) -> None:
        lines.append(msg)
        shown(msg)

    report["progress"] = progress
    ctx = proc.context(adapters, params, **report)
    watcher = EndpointsWatcher(connect(adapters.env, request.getfixturevalue("testbed")), c.service,
                               c.revision_label).start()
    run = ForkRun(ctx, None, watcher, lines, started=time.time())
    try:
        run.result = proc.run(ctx, journal=journal_for(adapters.env, hf.NAME), interrupt_after=interrupt_after)
    except Interrupted as exc:
        run.interrupted = str(exc)
    finally:
        watcher.stop()
    evidence.attach("procedure outcome", [vars(s) for s in run.result.steps] if run.result else run.interrupted)
    evidence.attach("endpoints watcher", watcher.describe())
    return run


@when("the operator runs the hard fork to the new version", target_fixture="fork_run")
def fork_new(adapters: Adapters, evidence: Recorder, request: pytest.FixtureRequest) -> ForkRun:
    return run_fork(adapters, evidence, request, {"version": _new_version(adapters, request)})


@when(parsers.re(r"the operator runs the hard fork to (?P<version>v[\w.-]+?)(?: with (?P<setting>.+?))?"
                 r"(?:, interrupted after (?P<step>[\w-]+))?$"), target_fixture="fork_run")
def fork_to(adapters: Adapters, evidence: Recorder, request: pytest.FixtureRequest, version: str,
            setting: str | None, step: str | None) -> ForkRun:
    """``with the bootstrap image IMAGE`` / ``with state sync from the peer HOST:PORT``: what the operator set for
    the bootstrap (the seed's SeiNode spec), to show a bootstrap that cannot run."""
    params: dict[str, Any] = {"version": version}
    if setting:
        if setting.startswith("the bootstrap image "):
            params["bootstrap_image"] = setting.removeprefix("the bootstrap image ").strip()
        elif setting.startswith("state sync from the peer "):
            params["bootstrap_peers"] = setting.removeprefix("state sync from the peer ").strip()
        else:
            raise StepRefused(f"{setting!r}: expected 'the bootstrap image IMAGE' or 'state sync from the peer "
                              "HOST:PORT'")
    return run_fork(adapters, evidence, request, params, interrupt_after=step)


@when("the operator runs the same hard fork again")
def again(adapters: Adapters, evidence: Recorder, request: pytest.FixtureRequest, fork_run: ForkRun) -> None:
    """The same parameters: the journal says where the first run stopped (its facts, the deadline's start)."""
    second = run_fork(adapters, evidence, request, dict(fork_run.ctx.params))
    fork_run.result, fork_run.interrupted, fork_run.ctx = second.result, second.interrupted, second.ctx
    fork_run.watcher.samples += second.watcher.samples


# ------------------------------------------------------------------------------------------- then
@then("every step of the hard fork passed")
def all_steps(fork_run: ForkRun, evidence: Recorder) -> None:
    judge(evidence, outcome.completed(fork_run.result, procedure=hf.NAME, steps=[s.name for s in hf.PROCEDURE.steps],
                                      interrupted=fork_run.interrupted))


@then("the entrants bootstrapped on the incumbent binary to H-1 and processed H on the new binary")
def bootstrapped(adapters: Adapters, fork_run: ForkRun, evidence: Recorder) -> None:
    """Each bootstrap Job completed, exit 0 (its seid, on the incumbent image, exits 0 only once halted at H-1),
    and every entrant runs the new binary past H with the upgrade handler's mark at H (the new binary processed
    H: started below H-1 it would have panicked BINARY UPDATED BEFORE TRIGGER, at H or later without the mark)."""
    f = fork_run.ctx.facts
    judge_all(evidence, [hc.bootstraps_completed(f.bootstrapped, replicas=hf.replicas(f)),
                         hf.observe_entrants(_ctx(adapters, f))[0]])


def _ctx(adapters: Adapters, facts: HardforkFacts) -> Context[HardforkFacts]:
    ctx = hf.context(adapters, {})
    ctx.facts.load(facts.to_json())
    return ctx


@then("the incumbents were untouched until the teardown, and are gone")
def untouched_then_gone(adapters: Adapters, fork_run: ForkRun, evidence: Recorder) -> None:
    f = fork_run.ctx.facts
    ctx = _ctx(adapters, f)
    sts = _cfg(adapters).statefulset(f.incumbent)
    judge_all(evidence, [hc.incumbents_untouched(f.incumbents_before, f.incumbents_at_switch),
                         hc.incumbents_gone(sts, exists=adapters.batch.statefulset_status(sts) is not None,
                                            pods=[p.name for p in hf.pods_of(ctx, sts)]),
                         hf.pins(ctx, f.entrant)])


@then("the Service was never without a ready endpoint")
def never_empty(adapters: Adapters, fork_run: ForkRun, evidence: Recorder) -> None:
    judge(evidence, hc.never_without_endpoints(_cfg(adapters).service, fork_run.watcher.samples))


@then(parsers.parse("the hard fork failed at {step} naming {reason} within {seconds:d}s, and was rolled back"))
def failed_within(fork_run: ForkRun, step: str, reason: str, seconds: int, evidence: Recorder) -> None:
    judge(evidence, hc.failed_at(fork_run.result, step=step, reason=reason, within=float(seconds)))


@then(parsers.parse("the hard fork failed at {step} naming {reason} by the running deadline, and was rolled back"))
def failed_by_deadline(adapters: Adapters, fork_run: ForkRun, step: str, reason: str, evidence: Recorder) -> None:
    """Within the time the chain took to reach H from the run's start plus the deadline (and a poll's slack)."""
    c, f = _cfg(adapters), fork_run.ctx.facts
    until_h = max(0.0, (f.reached_h_at or time.time()) - fork_run.started)
    judge(evidence, hc.failed_at(fork_run.result, step=step, reason=reason,
                                 within=until_h + c.running_timeout + 3 * c.poll + 5))


@then("the entrant's objects are gone and the incumbents untouched, still behind the Service")
def rolled_back(adapters: Adapters, fork_run: ForkRun, evidence: Recorder) -> None:
    f = fork_run.ctx.facts
    ctx = _ctx(adapters, f)
    judge_all(evidence, [hc.entrants_gone(f.entrant, hf.present(ctx)),
                         hc.incumbents_untouched(f.incumbents_before, hf.incumbents(ctx)), hf.pins(ctx, f.incumbent)])


@then("the run stopped with the Service still on the incumbents")
def stopped_on_incumbents(adapters: Adapters, fork_run: ForkRun, evidence: Recorder) -> None:
    f = fork_run.ctx.facts
    judge_all(evidence, [hc.interrupted_after(fork_run.interrupted, fork_run.result),
                         hf.pins(_ctx(adapters, f), f.incumbent)])


@then(parsers.parse("the second run went on from {step}, skipping what was done"))
def went_on_from(fork_run: ForkRun, step: str, evidence: Recorder) -> None:
    judge(evidence, hc.resumed_from(fork_run.result, step=step, steps=[s.name for s in hf.PROCEDURE.steps]))


@then("the run showed its progress toward H with an ETA while the chain was below it")
def showed_eta(fork_run: ForkRun, evidence: Recorder) -> None:
    judge(evidence, hc.waited_with_eta(fork_run.progress, target=fork_run.ctx.facts.height - 1))


@then("no request through the Service failed")
def no_failed_request(probe: ProbeRun, evidence: Recorder, adapters: Adapters) -> None:
    judge_probe(probe, evidence, adapters, events=EVENTS)
