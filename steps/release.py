"""Release steps (seed 003) -> runbook.procedures.release; runbook.checks.release.

Thin: parse, call the procedure or the check, record. The Givens are arrangements through the ports (objects,
workloads), so they run on kind as on the local testbed; a testbed also brings its release part up first
(runbook.testbed.release_stack: the gateway, the kube-proxy, the cluster DNS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import given, parsers, then, when

from runbook.adapters.factory import Adapters, connect
from runbook.checks import outcome
from runbook.checks import release as rc
from runbook.checks.core import judge, judge_all
from runbook.errors import ConfigError, StepRefused
from runbook.evidence.artifacts import slug
from runbook.evidence.recorder import Recorder
from runbook.probes.prober import Prober
from runbook.probes.release_watch import ReleaseWatcher
from runbook.probes.summary import META_MIX
from runbook.procedures import journal_for, procedure_for
from runbook.procedures import release as rel
from runbook.procedures import release_colours as rcol
from runbook.procedures import release_state as rs
from runbook.procedures.facts import ReleaseFacts
from runbook.procedures.framework import Context, Interrupted, RunResult
from runbook.testbed.stack import Testbed
from steps.common import report_to
from steps.upgrade import ProbeRun, judge_probe

FIRST = "1.0.0"  # a disposable env's first release (deploy/k8s/release/colour's images)
NEXT = "1.1.0"  # the operator scenario's release on a disposable env without --release-version
EVENTS = ["deploying", "ready", "switch", "clients switched", "cleanup", "stable", "rolled back", "switch back",
          "failed"]


@dataclass
class ReleaseRun:
    ctx: Context[ReleaseFacts]
    result: RunResult | None
    watcher: ReleaseWatcher
    interrupted: str = ""
    runs: list[RunResult | None] = field(default_factory=list)
    history_before: list[rs.Record] = field(default_factory=list)


def _cfg(adapters: Adapters) -> Any:
    return adapters.release


def reset(adapters: Adapters, testbed: Testbed | None, evidence: Recorder) -> None:
    """No release yet: both colours' objects and the state deleted, the common ConfigMap back on blue's names
    (as deploy/k8s/release has it). Disposable envs only."""
    if not adapters.env.disposable:
        raise StepRefused(f"env {adapters.env.name} is not disposable: its releases are not a scenario's to delete")
    if testbed is not None:
        from runbook.testbed import release_stack

        release_stack.ensure(testbed, progress=evidence.note)
    c = _cfg(adapters)
    for colour in rs.COLOURS:
        rcol.delete_colour(rel.context(adapters, {}, progress=evidence.note), colour)
    adapters.objects.delete_object("ConfigMap", c.state)
    ctx = rel.context(adapters, {}, progress=evidence.note)
    rcol.point_common(ctx, rs.COLOURS[0])
    journal_for(adapters.env, rel.NAME).clear()
    evidence.call("no release: both colours and the release state deleted, the common ConfigMap on blue's names")


def run_release(adapters: Adapters, evidence: Recorder, probe: ProbeRun | None, params: dict[str, Any],
                request: pytest.FixtureRequest, *, interrupt_after: str | None = None,
                watcher: ReleaseWatcher | None = None) -> ReleaseRun:
    proc = procedure_for(request.config, rel.NAME)
    before = rs.read(adapters.objects, _cfg(adapters)).history
    ctx = proc.context(adapters, params, **report_to(evidence, probe))
    watcher = watcher or ReleaseWatcher(connect(adapters.env, request.getfixturevalue("testbed"))).start()
    run = ReleaseRun(ctx, None, watcher, history_before=before)
    try:
        run.result = proc.run(ctx, journal=journal_for(adapters.env, rel.NAME), interrupt_after=interrupt_after)
    except Interrupted as exc:
        run.interrupted = str(exc)
    finally:
        watcher.stop()
    run.runs.append(run.result)
    evidence.attach("procedure outcome", [vars(s) for s in run.result.steps] if run.result else run.interrupted)
    evidence.attach("release watcher", watcher.describe())
    return run


def _release_ok(adapters: Adapters, evidence: Recorder, params: dict[str, Any], request: pytest.FixtureRequest) -> None:
    run = run_release(adapters, evidence, None, params, request)
    judge(evidence, outcome.completed(run.result, procedure=rel.NAME, steps=[s.name for s in rel.PROCEDURE.steps],
                                      interrupted=run.interrupted))


# ------------------------------------------------------------------------------------------- given
@given(parsers.parse("release {version} is active on blue"))
def first_release(adapters: Adapters, testbed: Testbed | None, version: str, evidence: Recorder,
                  request: pytest.FixtureRequest) -> None:
    """From nothing, the first release: blue, from the template (a real run of the procedure)."""
    reset(adapters, testbed, evidence)
    _release_ok(adapters, evidence, {"version": version}, request)
    judge(evidence, rc.released(rs.read(adapters.objects, _cfg(adapters)), version=version, colour="blue"))


@given("the application's active release", target_fixture="active_release")
def active_release(adapters: Adapters, testbed: Testbed | None, evidence: Recorder,
                   request: pytest.FixtureRequest) -> rs.Record:
    """The release clients are on, read from the state kept in the cluster. A disposable env starts from its
    first release (1.0.0 on blue); elsewhere the state must be Stable with an Active release."""
    if adapters.env.disposable:
        first_release(adapters, testbed, FIRST, evidence, request)
    st = rs.read(adapters.objects, _cfg(adapters))
    rec = st.active_record
    if st.phase != "Stable" or rec is None:
        raise StepRefused(f"env {adapters.env.name}: the release state is {st.phase} with "
                          f"{'no Active release' if rec is None else f'{rec.version} Active'}: the operator's release "
                          "needs a Stable application (finish or roll back the release in progress first)")
    evidence.call(f"active release {rec.version} on {rec.colour}", [r.__dict__ for r in st.history])
    return rec


@given("no release has been made")
def no_release(adapters: Adapters, testbed: Testbed | None, evidence: Recorder) -> None:
    reset(adapters, testbed, evidence)


@given(parsers.re(r"releases (?P<versions>[\d., and]+) were made after it"))
def later_releases(adapters: Adapters, versions: str, evidence: Recorder, request: pytest.FixtureRequest) -> None:
    for v in [x.strip() for x in versions.replace(" and ", ",").split(",") if x.strip()]:
        _release_ok(adapters, evidence, {"version": v}, request)


@given(parsers.parse("{n:d} older releases are recorded before it"))
def older_records(adapters: Adapters, n: int, evidence: Recorder) -> None:
    """An arrangement of the history kept in the cluster: ``n`` Superseded records before the current ones
    (what ``n`` earlier releases leave), as an operator inheriting the cluster would find them."""
    c = _cfg(adapters)
    st = rs.read(adapters.objects, c)
    older = [rs.Record(f"0.{i}.0", rs.COLOURS[i % 2], {comp: f"0.{i}.0" for comp in c.components},
                       rs.now_rfc3339(time.time() - 3600 * (n - i)), "Superseded") for i in range(1, n + 1)]
    st.history = (older + st.history)[-c.history:]
    rs.write(adapters.objects, c, st)
    evidence.call(f"the history holds {len(st.history)} records", [r.__dict__ for r in st.history])


@given(parsers.parse("a prober reading storage and schema through the gateway at {rate:d} requests/s"),
       target_fixture="probe")
def start_prober(adapters: Adapters, rate: int, request: pytest.FixtureRequest, evidence: Recorder) -> ProbeRun:
    c, env = _cfg(adapters), adapters.env
    out = Path(request.config.rootpath) / "reports" / "probes" / slug(request.node.nodeid, 120)
    prober = Prober(url=c.url, rate=rate, out_dir=out, upstream_header="X-Meta-Colour", mix=META_MIX,
                    timeout=max(10.0, env.probe.client_timeout), client_timeout=env.probe.client_timeout,
                    max_in_flight=rate * 12, max_duration=c.ready_timeout + c.switch_timeout + c.grace + 600)
    run = ProbeRun(prober.start())
    request.addfinalizer(run.finish)
    evidence.call(f"prober: {rate} reads/s of storage and schema through the gateway {c.url} (records in {out})")
    return run


# ------------------------------------------------------------------------------------------- when
def _tags(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(" and "):
        comp, _, tag = part.strip().partition(" at ")
        if not tag:
            raise StepRefused(f"{part!r}: expected '<component> at <tag>'")
        out[comp.strip()] = tag.strip()
    return out


@when(parsers.re(r"the operator releases (?P<version>[\w.-]+)(?: with (?P<tags>.+?))?"
                 r"(?P<interrupt>, interrupted after (?P<step>[\w-]+))?$"), target_fixture="release_run")
def release(adapters: Adapters, evidence: Recorder, request: pytest.FixtureRequest, version: str,
            tags: str | None, interrupt: str | None, step: str | None) -> ReleaseRun:
    params: dict[str, Any] = {"version": version}
    if tags:
        params["tags"] = _tags(tags)
    probe = _probe(request)
    return run_release(adapters, evidence, probe, params, request, interrupt_after=step if interrupt else None)


@when("the operator releases the new version", target_fixture="release_run")
def release_new(adapters: Adapters, evidence: Recorder, request: pytest.FixtureRequest,
                active_release: rs.Record) -> ReleaseRun:
    """--release-version (required on a production env; a disposable env's default is 1.1.0)."""
    version = request.config.getoption("release_version", None) or (NEXT if adapters.env.disposable else None)
    if not version:
        raise StepRefused(f"env {adapters.env.name}: the operator's release needs --release-version")
    return run_release(adapters, evidence, _probe(request), {"version": version}, request)


@when(parsers.parse("the operator rolls back to {version}"), target_fixture="release_run")
def rollback_to(adapters: Adapters, evidence: Recorder, request: pytest.FixtureRequest, version: str) -> ReleaseRun:
    return run_release(adapters, evidence, _probe(request), {"rollback_to": version}, request)


@when("the operator runs the same release again, from another machine")
def again(adapters: Adapters, evidence: Recorder, request: pytest.FixtureRequest, release_run: ReleaseRun) -> None:
    """The same release, with no journal of the first run (another operator's machine): what was done is read
    from the state kept in the cluster."""
    journal_for(adapters.env, rel.NAME).clear()
    again = run_release(adapters, evidence, _probe(request), dict(release_run.ctx.params), request)
    release_run.runs.append(again.result)
    release_run.result, release_run.interrupted, release_run.ctx = again.result, again.interrupted, again.ctx
    release_run.watcher.samples += again.watcher.samples


def _probe(request: pytest.FixtureRequest) -> ProbeRun | None:
    return request.getfixturevalue("probe") if "probe" in request.fixturenames else None


# ------------------------------------------------------------------------------------------- then
@then("every step of the release passed")
def all_steps(release_run: ReleaseRun, evidence: Recorder) -> None:
    judge(evidence, outcome.completed(release_run.result, procedure=rel.NAME,
                                      steps=[s.name for s in rel.PROCEDURE.steps], interrupted=release_run.interrupted))


@then(parsers.re(r"(?P<version>\d[\w.-]*) is active on (?P<colour>blue|green) and (?P<old>blue|green) is gone"))
def active_on(adapters: Adapters, release_run: ReleaseRun, version: str, colour: str, old: str,
              evidence: Recorder) -> None:
    ctx = rel.context(adapters, {})
    judge_all(evidence, [rc.released(rs.read(adapters.objects, _cfg(adapters)), version=version, colour=colour),
                         rc.colour_gone(old, rcol.present(ctx, old)), *rcol.serving(ctx, colour)])


@then("the new version is active on the other colour and the old colour is gone")
def new_active(adapters: Adapters, release_run: ReleaseRun, evidence: Recorder) -> None:
    f = release_run.ctx.facts
    active_on(adapters, release_run, f.version, f.pending, f.active, evidence)


@then("the history gained the new version Active, the one before it Superseded")
def history_gained(adapters: Adapters, release_run: ReleaseRun, evidence: Recorder) -> None:
    """The seed's addToReleaseHistory applied to the history as it was before the run: the Active record
    Superseded, the new one appended, the last ``history`` kept."""
    c, f = _cfg(adapters), release_run.ctx.facts
    before = rs.add_record(release_run.history_before, rs.Record(f.version, f.pending, f.tags, "", "Active"),
                           c.history)
    judge(evidence, rc.history_is(rs.read(adapters.objects, c).history, [(r.version, r.status) for r in before]))


@then(parsers.parse('the release history reads "{records}"'))
def history(adapters: Adapters, records: str, evidence: Recorder) -> None:
    expected = []
    for item in records.split(","):
        version, _, status = item.strip().partition(" ")
        expected.append((version, status))
    judge(evidence, rc.history_is(rs.read(adapters.objects, _cfg(adapters)).history, expected))


@then(parsers.re(r"the switch came after (?P<colour>blue|green|the new colour) had been ready for the grace period"))
def after_grace(adapters: Adapters, release_run: ReleaseRun, colour: str, evidence: Recorder) -> None:
    if colour == "the new colour":
        colour = release_run.ctx.facts.pending
    w = release_run.watcher
    judge(evidence, rc.switched_after_grace(w.ready_samples(colour), switched_at=w.switched_at(colour),
                                            grace=_cfg(adapters).grace, colour=colour))


@then(parsers.parse("the release failed at {step} naming {reason} within the ready deadline, and was rolled back"))
def failed_for(adapters: Adapters, release_run: ReleaseRun, step: str, reason: str, evidence: Recorder) -> None:
    judge(evidence, rc.rolled_back_for(release_run.result, journal_for(adapters.env, rel.NAME).load(), step=step,
                                       reason=reason, within=_cfg(adapters).ready_timeout))


@then(parsers.re(r"(?P<colour>blue|green) is gone and (?P<active>blue|green) is untouched and still active"))
def untouched(adapters: Adapters, release_run: ReleaseRun, colour: str, active: str, evidence: Recorder) -> None:
    f = release_run.ctx.facts
    if f.active != active or f.pending != colour:
        raise StepRefused(f"this release went from {f.active or '(nothing)'} to {f.pending}, not {active} to {colour}")
    ctx = rel.context(adapters, {})
    judge_all(evidence, [rc.colour_gone(colour, rcol.present(ctx, colour)),
                         rc.untouched(active, f.active_before, rcol.snapshot(ctx, active)), *rcol.serving(ctx, active)])


@then(parsers.parse("the first release {version} is Failed on {colour} with nothing rolled back"))
def first_failed(adapters: Adapters, release_run: ReleaseRun, version: str, colour: str, evidence: Recorder) -> None:
    c = _cfg(adapters)
    expected = [f"{k}/{n}" for k, n in rs.colour_names(c, colour)]
    judge(evidence, rc.first_release_failed(rs.read(adapters.objects, c), version=version, colour=colour,
                                            present=rcol.present(rel.context(adapters, {}), colour), expected=expected))


@then(parsers.parse("the run stopped with the release at phase {phase}"))
def stopped_at(adapters: Adapters, release_run: ReleaseRun, phase: str, evidence: Recorder) -> None:
    st = rs.read(adapters.objects, _cfg(adapters))
    judge(evidence, rc.phase_is(st, phase=phase, interrupted=release_run.interrupted))


@then(parsers.parse("the second run went on from {step}, without repeating what was done"))
def resumed_from(adapters: Adapters, release_run: ReleaseRun, step: str, evidence: Recorder) -> None:
    names = [s.name for s in rel.PROCEDURE.steps]
    if step not in names:
        raise ConfigError(f"{step!r} is not a step of {rel.NAME}: {names}")
    judge(evidence, rc.resumed(release_run.result, journal_for(adapters.env, rel.NAME).load(),
                               before=names[:names.index(step)]))


@then("no request through the gateway failed")
def no_failed_request(probe: ProbeRun, evidence: Recorder, adapters: Adapters) -> None:
    judge_probe(probe, evidence, adapters, events=EVENTS)

