"""Blue-green upgrade steps -> runbook.procedures (agave_upgrade, agave_rollback) and runbook.probes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import given, parsers, then, when

from runbook.adapters.factory import Adapters
from runbook.baseline import is_testbed
from runbook.checks import colours, outcome, untouched, zero_drop
from runbook.checks.core import judge, judge_all
from runbook.checks.failure_cause import ExpectedFailure, never_caught_up
from runbook.errors import CheckFailed, RunbookError, StepRefused
from runbook.evidence.artifacts import slug
from runbook.evidence.recorder import Recorder
from runbook.probes.prober import Prober
from runbook.probes.summary import ProbeSummary
from runbook.procedures import accounts, agave_rollback, journal_for, procedure_for
from runbook.procedures import bluegreen as bg
from runbook.procedures.facts import UpgradeFacts
from runbook.procedures.framework import Context, Interrupted, RunResult
from steps.common import report_to


@dataclass
class ProbeRun:
    prober: Prober
    summary: ProbeSummary | None = None
    attached: bool = False

    def finish(self) -> ProbeSummary:
        if self.summary is None:
            self.summary = self.prober.stop()
        return self.summary

    def attach(self, evidence: Recorder, env: Any) -> None:
        """The cutover timeline and the records, into the report and the bundle (once)."""
        if self.attached:
            return
        self.attached = True
        names = {bg.upstream_address(env, c): c for c in bg.COLOURS}
        evidence.attach_probe(self.prober.out_dir, upstream_names=names,
                              cutover_events=[e for c in bg.COLOURS for e in (f"{c} healthy", "shift", f"{c} stopped",
                                                                              "shift back")])


@dataclass
class UpgradeRun:
    ctx: Context[UpgradeFacts]
    result: RunResult | None = None
    interrupted: str = ""
    rollback_steps: list[Any] = field(default_factory=list)
    expected_failure: ExpectedFailure | None = None

    @property
    def facts(self) -> UpgradeFacts:
        return self.ctx.facts


def _context(adapters: Adapters, evidence: Recorder, probe: ProbeRun | None,
             params: dict[str, Any]) -> Context[UpgradeFacts]:
    return Context(adapters=adapters, params=params, facts=UpgradeFacts(), **report_to(evidence, probe))


# ------------------------------------------------------------------------------------------- given
@given(parsers.parse("a prober sending JSON-RPC getSlot and GET /health through the ingress at {rate:d} "
                     "requests/s"), target_fixture="probe")
def start_prober(adapters: Adapters, rate: int, request: pytest.FixtureRequest, evidence: Recorder) -> ProbeRun:
    env = adapters.env
    out = Path(request.config.rootpath) / "reports" / "probes" / slug(request.node.nodeid, 120)
    # The verdict is a client's (env.probe.client_timeout: a later answer is lost); the prober's transport
    # waits longer (10 s, past Caddy's retry window) so a late answer is still measured, and enough requests
    # may be in flight for that to never cap the schedule.
    prober = Prober(url=env.ingress.url, rate=rate, out_dir=out, upstream_header=env.ingress.upstream_header,
                    timeout=max(10.0, env.probe.client_timeout), client_timeout=env.probe.client_timeout,
                    max_in_flight=rate * 12, max_duration=env.timeouts.catch_up + 600,
                    stale_slots=env.catch_up_distance * 4)
    run = ProbeRun(prober.start())
    request.addfinalizer(run.finish)
    evidence.call(f"prober: {rate} requests/s through {env.ingress.url} (records in {out})")
    return run


@given("the storage facts of the live colour's data", target_fixture="data_before")
def data_before(adapters: Adapters, evidence: Recorder) -> dict[str, Any]:
    """The storage's own facts of the live colour's dataset (runbook.checks.untouched), not a hash of its data."""
    live, how = bg.live_colour(adapters.env, adapters.workloads, adapters=adapters)
    if live is None:
        raise CheckFailed(f"cannot tell which colour is live: {how}", obj=adapters.env.ingress.url)
    dataset = adapters.env.deployments.colour(live).data
    facts = adapters.storage.identity(dataset)
    evidence.call(f"storage facts of {live}'s data ({dataset})", facts)
    return {"colour": live, "dataset": dataset, "facts": facts}


# ------------------------------------------------------------------------------------------- when
def _upgrade(adapters: Adapters, evidence: Recorder, probe: ProbeRun | None, params: dict[str, Any],
             request: pytest.FixtureRequest, interrupt_after: str | None = None) -> UpgradeRun:
    proc = procedure_for(request.config, "agave-upgrade")
    ctx = _context(adapters, evidence, probe, params)
    run = UpgradeRun(ctx)
    journal = journal_for(adapters.env, "agave-upgrade")  # an unfinished run with these parameters resumes
    try:
        run.result = proc.run(ctx, journal=journal, interrupt_after=interrupt_after)
    except Interrupted as exc:
        run.interrupted = str(exc)
    evidence.attach("procedure outcome", [vars(s) for s in run.result.steps] if run.result else run.interrupted)
    return run


def _roll_back_after(request: pytest.FixtureRequest, adapters: Adapters, evidence: Recorder) -> None:
    """On a testbed the scenario cleans up after itself: whatever the upgrade left (interrupted, or done) is
    rolled back as `runbook rollback agave-upgrade` would, unless a step already did. A failure here fails
    the scenario. Never on production: there the upgraded state is the operator's result."""
    if not is_testbed(adapters.env):
        return

    def clean_up() -> None:
        env = adapters.env
        state = journal_for(env, "agave-upgrade").load()
        if state.get("procedure") != "agave-upgrade" or state.get("status") == "rolled back":
            return  # nothing of ours to undo (another procedure's leftovers fail the scenario at the reset)
        evidence.note("scenario cleanup: rolling the upgrade back (runbook rollback agave-upgrade)")
        steps = agave_rollback.rollback(_context(adapters, evidence, None, {}), journal_for(env, "agave-upgrade"),
                                        journal_for(env, "agave-rollback"))
        evidence.attach("scenario cleanup: rollback outcome", [vars(s) for s in steps])

    request.addfinalizer(clean_up)


def _upgrade_back_after(request: pytest.FixtureRequest, adapters: Adapters, evidence: Recorder) -> None:
    """After an upgrade that destroyed the old data nothing can be rolled back: on a testbed the scenario
    cleans up by upgrading back to the old version onto the old colour, destroying the data it replaces.
    Never on production."""
    if not is_testbed(adapters.env):
        return

    def clean_up() -> None:
        env = adapters.env
        state = journal_for(env, "agave-upgrade").load()
        facts = UpgradeFacts()
        facts.load(state.get("facts") or {})
        if state.get("status") != "done" or not facts.old_destroyed:
            return
        old = facts.live_image.rsplit(":", 1)[-1]
        evidence.note(f"scenario cleanup: upgrading back to {old} on {facts.live}, destroying "
                      f"{facts.idle}'s data (the old data is gone: nothing to roll back to)")
        back = _upgrade(adapters, evidence, None, {"target_version": old, "cleanup": "destroy"}, request)
        if back.result is None or not back.result.ok:
            raise CheckFailed(f"scenario cleanup: the upgrade back to {old} failed: "
                              f"{back.result.error if back.result else back.interrupted}", observed=back.result)

    request.addfinalizer(clean_up)


@when("the agave upgrade runs to the target version", target_fixture="upgrade")
def run_upgrade(adapters: Adapters, evidence: Recorder, probe: ProbeRun, target_version: str,
                request: pytest.FixtureRequest) -> UpgradeRun:
    _roll_back_after(request, adapters, evidence)
    return _upgrade(adapters, evidence, probe, {"target_version": target_version}, request)


@when("the agave upgrade runs to the target version, destroying the old data at cleanup", target_fixture="upgrade")
def run_upgrade_destroy_old(adapters: Adapters, evidence: Recorder, probe: ProbeRun, target_version: str,
                            request: pytest.FixtureRequest) -> UpgradeRun:
    _upgrade_back_after(request, adapters, evidence)
    return _upgrade(adapters, evidence, probe, {"target_version": target_version, "cleanup": "destroy"}, request)


@then("the old colour's data and the pre-upgrade snapshot are gone")
def old_data_gone(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    live = adapters.env.deployments.colour(upgrade.facts.live)
    found = adapters.storage.datasets()
    judge(evidence, colours.old_data_gone(live.data, upgrade.facts.snapshot, datasets=[d.name for d in found],
                                          snapshots=[s for d in found for s in d.snapshots]))


@then("rolling back is refused because the old data is gone")
def rollback_refused(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    env = adapters.env
    error: RunbookError | None = None
    try:
        agave_rollback.rollback(upgrade.ctx, journal_for(env, "agave-upgrade"), journal_for(env, "agave-rollback"))
    except RunbookError as exc:
        error = exc
    judge(evidence, outcome.refused(error, what="rollback", because="cannot roll back"))


@when(parsers.parse('the agave upgrade runs to the target version and stops after "{step}"'),
      target_fixture="upgrade")
def run_upgrade_until(adapters: Adapters, evidence: Recorder, probe: ProbeRun, target_version: str, step: str,
                      request: pytest.FixtureRequest) -> UpgradeRun:
    _roll_back_after(request, adapters, evidence)
    run = _upgrade(adapters, evidence, probe, {"target_version": target_version}, request, interrupt_after=step)
    if not run.interrupted:
        raise CheckFailed(f"the upgrade did not stop after {step}", observed=run.result)
    return run


@when(parsers.parse('the agave upgrade runs to "{version}", a build that never catches up, with a catch-up '
                    "deadline of {seconds:d} seconds"), target_fixture="upgrade")
def run_stuck_upgrade(adapters: Adapters, evidence: Recorder, probe: ProbeRun, version: str, seconds: int,
                      request: pytest.FixtureRequest) -> UpgradeRun:
    env = adapters.env
    patched = env.model_copy(update={"timeouts": env.timeouts.model_copy(update={"catch_up": float(seconds)})})
    short = dataclasses.replace(adapters, env=patched)
    run = _upgrade(short, evidence, probe, {"target_version": version}, request)
    run.expected_failure = never_caught_up(float(seconds))
    return run


@when("the upgrade is rolled back")
def roll_back(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    env = adapters.env
    upgrade.rollback_steps = agave_rollback.rollback(upgrade.ctx, journal_for(env, "agave-upgrade"),
                                                     journal_for(env, "agave-rollback"))
    evidence.attach("rollback outcome", [vars(s) for s in upgrade.rollback_steps])


# ------------------------------------------------------------------------------------------- then
@then("every step of the upgrade completed")
def all_steps_done(upgrade: UpgradeRun, evidence: Recorder, request: pytest.FixtureRequest) -> None:
    proc = procedure_for(request.config, "agave-upgrade")
    judge(evidence, outcome.completed(upgrade.result, procedure=proc.name, steps=[s.name for s in proc.steps],
                                      interrupted=upgrade.interrupted))


@then("the upgrade failed and was rolled back automatically")
def failed_and_rolled_back(upgrade: UpgradeRun, adapters: Adapters, evidence: Recorder) -> None:
    """Only after a When that names the failure it provokes (a rollback after any failure proves nothing)."""
    if upgrade.expected_failure is None:
        raise StepRefused("'the upgrade failed and was rolled back automatically' needs a When step that names "
                          "the failure it provokes (e.g. a build that never catches up)")
    judge(evidence, outcome.failed_and_rolled_back(upgrade.result, journal_for(adapters.env, "agave-upgrade").load(),
                                                   upgrade.expected_failure))


def judge_probe(probe: ProbeRun, evidence: Recorder, adapters: Adapters, *, events: list[str]) -> None:
    """Another system's prober (seeds 001-004): its records and the procedure's ``events`` on one timeline, then
    the strict zero-drop verdict, computed once and shown as computed."""
    summary = probe.finish()
    verdict = zero_drop.verdict(summary, max_gap=adapters.env.probe.max_gap)
    verdict.write(probe.prober.out_dir)
    evidence.attach_probe(probe.prober.out_dir, upstream_names={}, cutover_events=events)
    evidence.attach("zero-drop verdict", verdict.describe())
    judge_all(evidence, zero_drop.no_request_lost(verdict), summary=verdict.describe())


@then("the prober saw no failed request")
@then("the prober saw no failed request, none answered by a node that is behind")
def no_failed_request(probe: ProbeRun, evidence: Recorder, adapters: Adapters) -> None:
    """The strict verdict, computed once and shown as computed: lost to a client that does not retry (no
    answer, a bad one, one that needed the prober's retry, one later than the client timeout), and no gap
    between successes longer than the bound, per phase."""
    summary = probe.finish()
    verdict = zero_drop.verdict(summary, max_gap=adapters.env.probe.max_gap)
    verdict.write(probe.prober.out_dir)  # beside the records, into the bundle with them
    probe.attach(evidence, adapters.env)
    evidence.attach("zero-drop verdict", verdict.describe())
    judge_all(evidence, zero_drop.no_request_lost(verdict), summary=verdict.describe())


@then("the live colour served until the shift and the new colour after it")
def served_in_phases(adapters: Adapters, probe: ProbeRun, upgrade: UpgradeRun, evidence: Recorder) -> None:
    summary = probe.finish()
    live, idle = upgrade.facts.live, upgrade.facts.idle
    before, after = zero_drop.served_before_and_after(summary, cut_start="shift", cut_end=f"{live} stopped")
    evidence.attach("upstream per phase", {p.name: dict(p.upstreams) for p in summary.phases})
    judge_all(evidence, [
        zero_drop.served_only(before, bg.upstream_address(adapters.env, live), when="before the shift", colour=live),
        zero_drop.served_only(after, bg.upstream_address(adapters.env, idle), when=f"after {live} stopped",
                              colour=idle)])


@then(parsers.parse("the {which} colour's data is untouched"))
def data_untouched(adapters: Adapters, upgrade: UpgradeRun, data_before: dict[str, Any], evidence: Recorder,
                   which: str) -> None:
    """Proven by the storage's facts: the same dataset, never rolled back; and when the procedure stopped the
    colour, not one write since (the facts read right after it stopped, :func:`agave_upgrade.stop_live`)."""
    colour = _colour(upgrade, which, allowed=("live", "old"))
    if colour != data_before["colour"]:
        raise StepRefused(f"the {which} colour is {colour}, but the facts were read for {data_before['colour']}")
    dataset = data_before["dataset"]
    now = adapters.storage.identity(dataset) if any(d.name == dataset for d in adapters.storage.datasets()) else None
    stopped = upgrade.facts.stopped_data or {}
    judge(evidence, untouched.data_untouched(colour, dataset, data_before["facts"], now,
                                             stopped=stopped["facts"] if stopped.get("colour") == colour else None))


@then("the idle colour's deployment, clone and accounts copy are gone")
def idle_gone(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    idle = adapters.env.deployments.colour(upgrade.facts.idle)
    judge(evidence, colours.gone(idle.name, pods=[p.name for p in adapters.workloads.pods(idle.name)],
                                 dataset=idle.data, datasets=[d.name for d in adapters.storage.datasets()],
                                 accounts=str(idle.accounts), accounts_left=accounts.copy_present(upgrade.ctx)))


@then(parsers.parse("the {which} colour serves on its {version} version"))
def colour_serves(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder, which: str, version: str) -> None:
    colour = _colour(upgrade, which, allowed=("live", "old", "new", "idle"))
    images = {"old": upgrade.facts.live_image, "target": upgrade.facts.target_image}
    if version not in images:
        raise StepRefused(f"unknown version {version!r} in the step: say 'old' or 'target'")
    st = bg.observe_node(adapters.env, colour, adapters=adapters)
    judge(evidence, colours.serves(colour, served_by=bg.served_by(adapters.env, adapters=adapters), state=st.as_dict(),
                                   version=bg.bare_version(images[version].rsplit(":", 1)[-1])))


@then("the idle colour runs from a copy-on-write clone of the live colour's snapshot")
def idle_from_clone(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    idle = adapters.env.deployments.colour(upgrade.facts.idle)
    snapshot = f"{adapters.env.deployments.colour(upgrade.facts.live).data}@{upgrade.facts.snapshot}"
    ds = next((d for d in adapters.storage.datasets() if d.name == idle.data), None)
    judge(evidence, colours.clone_of(idle.data, snapshot, origin=ds.origin if ds else None,
                                     backend=adapters.storage.backend))


@then("the idle colour was behind the cluster before it caught up")
def was_behind(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    judge(evidence, colours.was_behind(upgrade.facts.catch_up_seen or {},
                                       distance=adapters.env.catch_up_distance))


@then('the idle colour answers "ok" on the target version beside the live colour')
def both_ok(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    idle = bg.observe_node(adapters.env, upgrade.facts.idle, adapters=adapters)
    live = bg.observe_node(adapters.env, upgrade.facts.live, adapters=adapters)
    judge(evidence, colours.both_answer(idle.as_dict(), live.as_dict(),
                                        version=bg.bare_version(upgrade.facts.target_version)))


@then("every request was served by the live colour")
def all_served_by_live(adapters: Adapters, probe: ProbeRun, upgrade: UpgradeRun, evidence: Recorder) -> None:
    summary = probe.finish()
    live = upgrade.facts.live
    judge(evidence, zero_drop.served_only(dict(summary.upstreams), bg.upstream_address(adapters.env, live),
                                          when="with both colours healthy under lb_policy first",
                                          colour=live))


def _colour(upgrade: UpgradeRun, which: str, *, allowed: tuple[str, ...]) -> str:
    """The colour a step's {which} names: live/old is the colour that was live before the upgrade, new/idle the
    one it deployed; any other word is refused (never mapped silently)."""
    if which not in allowed:
        raise StepRefused(f"unknown colour {which!r} in the step: say one of {', '.join(allowed)}")
    return str(upgrade.facts.live if which in ("live", "old") else upgrade.facts.idle)
