"""Canary promotion steps (seed 004) -> runbook.procedures.canary_promote, canary_undo; runbook.checks.canary.

Thin: parse, call the procedure or the check, record. The Givens that put a build on the canary or make a
rollout history are arrangements through the rollout port (the canary's Deployment), so they run on kind as
on the local testbed; a testbed also gets a fresh rollout history and release repository first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import given, parsers, then, when

from runbook.adapters.factory import Adapters
from runbook.canary import evaluate
from runbook.checks import canary as cc
from runbook.checks import outcome
from runbook.checks.core import judge
from runbook.errors import AdapterError, StepRefused
from runbook.evidence.artifacts import slug
from runbook.evidence.recorder import Recorder
from runbook.probes.prober import Prober
from runbook.probes.summary import CHAT_MIX
from runbook.procedures import canary_promote as cp
from runbook.procedures import canary_undo, journal_for
from runbook.procedures.facts import CanaryFacts
from runbook.procedures.framework import Context, RunResult
from runbook.testbed.stack import Testbed
from runbook.wait import wait_for
from steps.common import report_to
from steps.upgrade import ProbeRun, judge_probe


@dataclass
class CanaryRun:
    ctx: Context[CanaryFacts]
    result: RunResult
    revision_before: int
    expected_gate: str | None = None  # the gate the When says will fail


def _context(adapters: Adapters, evidence: Recorder, probe: ProbeRun | None, proc: Any,
             params: dict[str, Any]) -> Context[CanaryFacts]:
    return proc.context(adapters, params, **report_to(evidence, probe))


def _canary_image(adapters: Adapters) -> str:
    c = adapters.canary
    return cp.template_image(adapters.workloads.deployment(c.canary), c.container)


def _put_on_canary(adapters: Adapters, testbed: Testbed | None, image: str, evidence: Recorder) -> None:
    """The canary Deployment on ``image`` (its version label too), rolled out; a testbed starts from the
    manifests with a fresh history and release repository."""
    c = adapters.canary
    if testbed is not None:
        from runbook.testbed import canary_stack

        canary_stack.reset(testbed, canary_image=image, progress=evidence.note)
    elif _canary_image(adapters) != image:
        adapters.rollouts.set_template(c.canary, images={c.container: image}, labels={cp.VERSION_LABEL:
                                                                                     cp.split_tag(image)[1]})
        cp_wait_done(adapters, c.canary)
    _release_repo(adapters, image, evidence)
    evidence.call(f"the canary {c.canary} runs {image}", {
        "rollout": adapters.rollouts.rollout_status(c.canary).message,
        "pods": [{"pod": p.name, "image": p.container(c.container).image, "ready": p.ready}
                 for p in adapters.rollouts.pods_of(c.canary)]})


def cp_wait_done(adapters: Adapters, deployment: str) -> None:
    wait_for(lambda: adapters.rollouts.rollout_status(deployment), lambda s: s.done,
             timeout=adapters.canary.rollout, interval=0.5, what=f"deployment {deployment} rolled out",
             env=adapters.env.name, obj=deployment)


# ------------------------------------------------------------------------------------------- given
@given("the canary runs its release", target_fixture="canary_image")
def canary_release(adapters: Adapters, testbed: Testbed | None, evidence: Recorder) -> str:
    """The operator's canary, as it runs (on a testbed: the manifests' canary, from a fresh start)."""
    if testbed is not None:
        from runbook.testbed import canary_stack

        canary_stack.reset(testbed, progress=evidence.note)
    image = _canary_image(adapters)
    _release_repo(adapters, image, evidence)
    evidence.call(f"the canary {adapters.canary.canary} runs {image}")
    return image


def _release_repo(adapters: Adapters, image: str, evidence: Recorder) -> None:
    """A disposable env without its release repository gets one, at the canary's tag (on production the
    operator's checkout is the repository, and the checklist checks it)."""
    repo = cp.release_repo(adapters.env)
    if adapters.env.disposable and not repo.is_repo():
        repo.create(cp.split_tag(image)[1])
        evidence.call(f"created the release repository {repo.path} at VERSION {cp.split_tag(image)[1]}")


@given(parsers.re(r"the canary runs the (?P<build>errors|slow|notokens) build of release (?P<version>\d+\.\d+\.\d+)"),
       target_fixture="canary_image")
def canary_build(adapters: Adapters, testbed: Testbed | None, build: str, version: str, evidence: Recorder) -> str:
    repo, _ = cp.split_tag(_canary_image(adapters))
    image = f"{repo}:{version}-{build}{adapters.canary.suffix}"
    _put_on_canary(adapters, testbed, image, evidence)
    return image


@given(parsers.parse("a prober sending chat completions through the production Service at {rate:d} requests/s"),
       target_fixture="probe")
def start_prober(adapters: Adapters, rate: int, request: pytest.FixtureRequest, evidence: Recorder) -> ProbeRun:
    """Workers' traffic on production, through its Service; then until Prometheus holds a whole baseline span
    of it (a predicate on Prometheus's data, with a deadline)."""
    c, env = adapters.canary, adapters.env
    out = Path(request.config.rootpath) / "reports" / "probes" / slug(request.node.nodeid, 120)
    prober = Prober(url=c.url, rate=rate, out_dir=out, upstream_header="X-Zai-Proxy-Version", mix=CHAT_MIX,
                    timeout=max(10.0, env.probe.client_timeout), client_timeout=env.probe.client_timeout,
                    max_in_flight=rate * 12, max_duration=c.rollout + c.gates.baseline + c.gates.soak + 600)
    run = ProbeRun(prober.start())
    request.addfinalizer(run.finish)
    started = time.time()
    evidence.call(f"prober: {rate} chat completions/s through {c.url} (records in {out})")

    def seen() -> float:
        return _requests_since(adapters, c.variant, started)

    span = c.gates.baseline + 2 * c.gates.step
    wait_for(seen, lambda n: n > 0 and time.time() - started >= span, timeout=span + 60, interval=0.5,
             tolerate=(AdapterError,), what=f"Prometheus holding {span:g}s of the prober's requests", obj=c.prometheus)
    return run


def _requests_since(adapters: Adapters, variant: str, start: float) -> float:
    with adapters.prometheus() as prom:
        return evaluate.requests_between(prom, variant, start=start, end=time.time(), step=adapters.canary.gates.step)


@given(parsers.parse("workers have sent {n:d} chat completions to the canary"))
def workers_on_canary(adapters: Adapters, n: int, evidence: Recorder) -> None:
    """A worker's requests on the canary endpoint, waited for until Prometheus counted them."""
    c = adapters.canary
    start = time.time() - c.gates.step
    with adapters.service_http("canary") as http:
        answers = [http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"worker {i}"}]})
                   .status_code for i in range(n)]
    evidence.call(f"{n} chat completions sent to {c.canary_url}", answers)
    wait_for(lambda: _requests_since(adapters, c.canary_variant, start), lambda seen: seen >= n, timeout=30,
             interval=0.5, tolerate=(AdapterError,), what=f"Prometheus counting {n} requests on the canary",
             obj=c.prometheus)


@given(parsers.re(r"production has rolled out (?P<versions>[\d., and]+) after its first release"),
       target_fixture="history")
def production_history(adapters: Adapters, testbed: Testbed | None, versions: str, evidence: Recorder) -> list[Any]:
    """A rollout history: production's template moved to each release in turn (kubectl set image), each rolled
    out. An arrangement for the named-revision rollback."""
    c = adapters.canary
    canary_release(adapters, testbed, evidence)
    repo, _ = cp.split_tag(cp.template_image(adapters.workloads.deployment(c.production), c.container))
    for v in [x.strip() for x in versions.replace(" and ", ",").split(",") if x.strip()]:
        adapters.rollouts.set_template(c.production, images={c.container: f"{repo}:{v}"},
                                       labels={cp.VERSION_LABEL: v}, change_cause=f"scenario: rolled out {v}")
        cp_wait_done(adapters, c.production)
    history = adapters.rollouts.rollout_history(c.production)
    evidence.call(f"rollout history of {c.production}", [
        {"revision": r.number, "images": r.images, "version": r.labels.get(cp.VERSION_LABEL)} for r in history])
    return history


# ------------------------------------------------------------------------------------------- when
@when("the canary-promote procedure runs", target_fixture="canary_run")
def promote(adapters: Adapters, evidence: Recorder, probe: ProbeRun, request: pytest.FixtureRequest) -> CanaryRun:
    version = request.config.getoption("canary_version", None)
    params = {"target_version": version} if version else {}
    return _promote(adapters, evidence, probe, params, None)


@when(parsers.re(r"the canary-promote procedure runs, expected to fail at the (?P<gate>error rate|latency) gate"),
      target_fixture="canary_run")
def promote_failing(adapters: Adapters, evidence: Recorder, probe: ProbeRun, gate: str) -> CanaryRun:
    return _promote(adapters, evidence, probe, {}, gate)


def _promote(adapters: Adapters, evidence: Recorder, probe: ProbeRun, params: dict[str, Any],
             expected_gate: str | None) -> CanaryRun:
    c = adapters.canary
    before = adapters.rollouts.rollout_status(c.production).revision
    ctx = _context(adapters, evidence, probe, cp.PROCEDURE, params)
    result = cp.PROCEDURE.run(ctx, journal=journal_for(adapters.env, cp.NAME))
    evidence.attach("procedure outcome", [vars(s) for s in result.steps])
    evidence.attach("gate evaluations", ctx.facts.gates)
    return CanaryRun(ctx, result, before, expected_gate)


@when(parsers.parse("production is rolled back to revision {revision:d}"), target_fixture="canary_run")
def undo_to(adapters: Adapters, evidence: Recorder, revision: int) -> CanaryRun:
    c = adapters.canary
    before = adapters.rollouts.rollout_status(c.production).revision
    ctx = _context(adapters, evidence, None, canary_undo.PROCEDURE, {"to_revision": revision})
    result = canary_undo.PROCEDURE.run(ctx, journal=journal_for(adapters.env, canary_undo.NAME))
    evidence.attach("procedure outcome", [vars(s) for s in result.steps])
    return CanaryRun(ctx, result, before)


# ------------------------------------------------------------------------------------------- then
@then("every step of the promotion passed")
def all_steps(canary_run: CanaryRun, evidence: Recorder) -> None:
    _completed(canary_run, cp.PROCEDURE, evidence)


@then("every step of the rollback to that revision passed")
def undo_steps(canary_run: CanaryRun, evidence: Recorder) -> None:
    _completed(canary_run, canary_undo.PROCEDURE, evidence)


def _completed(canary_run: CanaryRun, proc: Any, evidence: Recorder) -> None:
    if canary_run.result.procedure != proc.name:
        raise StepRefused(f"this scenario ran {canary_run.result.procedure}, not {proc.name}")
    judge(evidence, outcome.completed(canary_run.result, procedure=proc.name, steps=[s.name for s in proc.steps]))


@then("the promotion failed at that gate and was undone automatically")
def failed_and_undone(adapters: Adapters, canary_run: CanaryRun, evidence: Recorder) -> None:
    if canary_run.expected_gate is None:
        raise StepRefused("'failed at that gate' needs a When that names the gate expected to fail")
    judge(evidence, cc.failed_at_gate(canary_run.result, journal_for(adapters.env, cp.NAME).load(),
                                      gate=canary_run.expected_gate))


@then(parsers.re(r"the promotion was refused at the checklist: (?P<item>.+)"))
def refused_at_checklist(adapters: Adapters, canary_run: CanaryRun, item: str, evidence: Recorder) -> None:
    judge(evidence, cc.refused_at_checklist(canary_run.result, journal_for(adapters.env, cp.NAME).load(), item=item))
    judge(evidence, cc.revision_unchanged(adapters.rollouts.rollout_status(adapters.canary.production),
                                          before=canary_run.revision_before))


@then(parsers.re(r"production runs (?P<which>the promoted release|its previous release|revision \d+'s release) on "
                 r"every pod"))
def production_on(adapters: Adapters, canary_run: CanaryRun, which: str, evidence: Recorder) -> None:
    f, c = canary_run.ctx.facts, adapters.canary
    if which == "the promoted release":
        image, version = f.target_image, f.target_version
    elif which == "its previous release":
        image, version = f.old_image, f.old_version
    elif f.to_revision and which == f"revision {f.to_revision}'s release":
        image, version = f.target_image, f.target_version
    else:
        raise StepRefused(f"{which!r}: this scenario rolled back to revision {f.to_revision or '(none)'}")
    r = adapters.rollouts
    judge(evidence, cc.on_version(r.rollout_status(c.production), r.pods_of(c.production), container=c.container,
                                  image=image, version=version))


@then("every checklist item was ticked with its evidence")
def checklist_ticked(canary_run: CanaryRun, evidence: Recorder) -> None:
    judge(evidence, cc.checklist_ticked(evidence.verdict_statuses()))


@then("the release is tagged in the release repository")
def release_tagged(adapters: Adapters, canary_run: CanaryRun, evidence: Recorder) -> None:
    f = canary_run.ctx.facts
    repo = cp.release_repo(adapters.env)
    judge(evidence, cc.tagged(repo.tag(f.tag), tag=f.tag, version=f.target_version, pushed=repo.remote_has_tag(f.tag)))


@then("no release tag was made")
def no_tag(adapters: Adapters, canary_run: CanaryRun, evidence: Recorder) -> None:
    f = canary_run.ctx.facts
    judge(evidence, cc.not_tagged(cp.release_repo(adapters.env).tag(f.tag), tag=f.tag))


@then("the newest revision in the rollout history is the one rolled back to")
def newest_revision(adapters: Adapters, canary_run: CanaryRun, evidence: Recorder) -> None:
    c, f, r = adapters.canary, canary_run.ctx.facts, adapters.rollouts
    judge(evidence, cc.revision_current(r.rollout_history(c.production), r.rollout_status(c.production),
                                        images={c.container: f.target_image}))


@then("the prober saw no failed request through the Service")
def no_failed_request(probe: ProbeRun, evidence: Recorder, adapters: Adapters) -> None:
    judge_probe(probe, evidence, adapters, events=["promote", "rolled out", "gate failed", "undo", "finalized"])
