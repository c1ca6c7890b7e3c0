"""Blue-green upgrade steps -> runbook.procedures (agave_upgrade, agave_rollback) and runbook.probes."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import given, parsers, then, when

from runbook.adapters.factory import Adapters
from runbook.baseline import is_testbed
from runbook.checks import untouched, zero_drop
from runbook.checks.failure_cause import ExpectedFailure, failure_cause_problems, never_caught_up
from runbook.errors import CheckFailed, RunbookError
from runbook.evidence.artifacts import slug
from runbook.evidence.recorder import Recorder
from runbook.probes.prober import Prober
from runbook.probes.summary import ProbeSummary
from runbook.procedures import accounts, agave_rollback, journal_for, procedure_for
from runbook.procedures import bluegreen as bg
from runbook.procedures.framework import Context, Interrupted, RunResult

log = logging.getLogger("runbook.progress")


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
    ctx: Context
    result: RunResult | None = None
    interrupted: str = ""
    rollback_steps: list[Any] = field(default_factory=list)
    expected_failure: ExpectedFailure | None = None

    @property
    def facts(self) -> dict[str, Any]:
        return self.ctx.facts


def _context(adapters: Adapters, evidence: Recorder, probe: ProbeRun | None, params: dict[str, Any]) -> Context:
    def progress(msg: str) -> None:
        log.info(msg)
        evidence.note(msg)

    def mark(name: str, detail: str) -> None:
        if probe is not None:
            probe.prober.event(name, detail)

    return Context(adapters=adapters, params=params, progress=progress, record=evidence.call, mark=mark)


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
    live, how = bg.live_colour(adapters.env, adapters.workloads)
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
        facts = state.get("facts") or {}
        if state.get("status") != "done" or not facts.get("old_destroyed"):
            return
        old = facts["live_image"].rsplit(":", 1)[-1]
        evidence.note(f"scenario cleanup: upgrading back to {old} on {facts['live']}, destroying "
                      f"{facts['idle']}'s data (the old data is gone: nothing to roll back to)")
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
    live = adapters.env.deployments.colour(upgrade.facts["live"])
    datasets = {d.name: d for d in adapters.storage.datasets()}
    snaps = [s for d in datasets.values() for s in d.snapshots if s.endswith("@" + upgrade.facts["snapshot"])]
    ok = live.data not in datasets and not snaps
    evidence.compare("old dataset and snapshot", expected="none", observed={"datasets": sorted(datasets),
                     "snapshots": snaps}, ok=ok)
    if not ok:
        raise CheckFailed(f"{live.data} or its snapshot remains", observed={"datasets": sorted(datasets),
                          "snapshots": snaps})


@then("rolling back is refused because the old data is gone")
def rollback_refused(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    env = adapters.env
    try:
        agave_rollback.rollback(upgrade.ctx, journal_for(env, "agave-upgrade"), journal_for(env, "agave-rollback"))
    except RunbookError as exc:
        evidence.compare("rollback", expected="refused", observed=str(exc), ok="cannot roll back" in str(exc))
        if "cannot roll back" not in str(exc):
            raise
        return
    raise CheckFailed("a rollback to destroyed data was attempted", expected="refused", observed="ran")


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
def all_steps_done(upgrade: UpgradeRun, evidence: Recorder) -> None:
    r = upgrade.result
    ok = r is not None and r.ok
    evidence.compare("procedure result", expected="every step done",
                     observed=[f"{s.name}: {s.status}" for s in r.steps] if r else upgrade.interrupted, ok=ok)
    if not ok:
        raise CheckFailed(f"the upgrade did not complete: {r.error if r else upgrade.interrupted}", observed=r)


@then("the upgrade failed and was rolled back automatically")
def failed_and_rolled_back(upgrade: UpgradeRun, adapters: Adapters, evidence: Recorder) -> None:
    r = upgrade.result
    state = journal_for(adapters.env, "agave-upgrade").load()
    ok = r is not None and not r.ok and r.rolled_back and state.get("status") == "rolled back"
    evidence.compare("procedure result", expected="failed, then rolled back",
                     observed={"ok": r.ok if r else None, "rolled_back": r.rolled_back if r else None,
                               "error": r.error if r else upgrade.interrupted, "journal": state.get("status")}, ok=ok)
    if not ok:
        raise CheckFailed("expected a failed upgrade with an automatic rollback", observed=r)
    want = upgrade.expected_failure
    if want is None:
        return
    problems = failure_cause_problems(r, want)
    named = f"{want.step}, at its {want.deadline:g}s deadline" + (f", {want.last_state_means}" if want.last_state_means
                                                                   else "")
    evidence.compare("what failed", expected=named,
                     observed=problems or [f"{s.name}: {s.status} ({s.seconds:.1f}s) {s.error}".strip()
                                           for s in (r.steps if r else [])], ok=not problems)
    if problems:
        raise CheckFailed(f"the upgrade was rolled back, but not for the reason the scenario names "
                          f"({want.step} past its {want.deadline:g}s deadline): {'; '.join(problems)}",
                          expected=want.step, observed=problems)


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
    for title, expected, observed, ok in verdict.rows():
        evidence.compare(title, expected=expected, observed=observed, ok=ok)
    evidence.attach("zero-drop verdict", verdict.describe())
    zero_drop.check(verdict)


@then("the live colour served until the shift and the new colour after it")
def served_in_phases(adapters: Adapters, probe: ProbeRun, upgrade: UpgradeRun, evidence: Recorder) -> None:
    summary = probe.finish()
    live, idle = upgrade.facts["live"], upgrade.facts["idle"]
    before, after = zero_drop.served_before_and_after(summary, cut_start="shift", cut_end=f"{live} stopped")
    evidence.attach("upstream per phase", {p.name: dict(p.upstreams) for p in summary.phases})
    for phase, counts, colour in (("before the shift", before, live), (f"after {live} stopped", after, idle)):
        want = bg.upstream_address(adapters.env, colour)
        evidence.compare(f"served {phase}", expected=want, observed=counts,
                         ok=zero_drop.served_only_by(counts, want))
    zero_drop.check_served_only_by(before, bg.upstream_address(adapters.env, live), when="before the shift")
    zero_drop.check_served_only_by(after, bg.upstream_address(adapters.env, idle), when=f"after {live} stopped")


@then(parsers.parse("the {which} colour's data is untouched"))
def data_untouched(adapters: Adapters, upgrade: UpgradeRun, data_before: dict[str, Any], evidence: Recorder,
                   which: str) -> None:
    """Proven by the storage's facts: the same dataset, never rolled back; and when the procedure stopped the
    colour, not one write since (the facts read right after it stopped, :func:`agave_upgrade.stop_live`)."""
    colour = {"live": upgrade.facts["live"], "old": upgrade.facts["live"]}.get(which)
    if colour != data_before["colour"]:
        raise CheckFailed(f"the {which} colour is {colour}, but the facts were read for {data_before['colour']}")
    now = adapters.storage.identity(data_before["dataset"]) if any(
        d.name == data_before["dataset"] for d in adapters.storage.datasets()) else None
    stopped = upgrade.facts.get("stopped_data") or {}
    found = untouched.problems(data_before["facts"], now, owner_running=True)
    if stopped.get("colour") == colour:
        found += [f"since {colour} stopped: {p}" for p in untouched.problems(stopped["facts"], now,
                                                                           owner_running=False)]
    evidence.compare(f"{colour}'s data ({data_before['dataset']}): storage facts",
                     expected={"before": data_before["facts"], **({"when it stopped": stopped["facts"]}
                                                                 if stopped.get("colour") == colour else {})},
                     observed={"now": now, "problems": found}, ok=not found)
    if found:
        raise CheckFailed(f"{colour}'s data was rewritten: {'; '.join(found)}", observed=now)


@then("the idle colour's deployment, clone and accounts copy are gone")
def idle_gone(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    idle = adapters.env.deployments.colour(upgrade.facts["idle"])
    pods = adapters.workloads.pods(idle.name)
    datasets = [d.name for d in adapters.storage.datasets()]
    copy_left = accounts.copy_present(upgrade.ctx)
    observed = {"pods": [p.name for p in pods], "datasets": datasets, f"anything in {idle.accounts}": copy_left}
    ok = not pods and idle.data not in datasets and not copy_left
    evidence.compare(f"{idle.name} pods, {idle.data} and {idle.accounts}", expected="none", observed=observed, ok=ok)
    if not ok:
        raise CheckFailed(f"{idle.name}, its clone {idle.data} or its accounts copy still exists", observed=observed)


@then(parsers.parse("the {which} colour serves on its {version} version"))
def colour_serves(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder, which: str, version: str) -> None:
    colour = upgrade.facts["live"] if which in ("live", "old") else upgrade.facts["idle"]
    image = upgrade.facts["live_image"] if version == "old" else upgrade.facts["target_image"]
    served = bg.served_by(adapters.env)
    st = bg.observe_node(adapters.env, colour, url=adapters.rpc_url(colour))
    want = bg.bare_version(image.rsplit(":", 1)[-1])
    ok = served == colour and st.health == "ok" and st.version == want
    evidence.compare(f"{which} colour serving", expected={"served_by": colour, "health": "ok", "version": want},
                     observed={"served_by": served, **st.as_dict()}, ok=ok)
    if not ok:
        raise CheckFailed(f"{colour} should serve on {want}", expected=colour, observed=st.as_dict())


@then("the idle colour runs from a copy-on-write clone of the live colour's snapshot")
def idle_from_clone(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    idle = adapters.env.deployments.colour(upgrade.facts["idle"])
    live = adapters.env.deployments.colour(upgrade.facts["live"])
    snapshot = f"{live.data}@{upgrade.facts['snapshot']}"
    ds = next((d for d in adapters.storage.datasets() if d.name == idle.data), None)
    origin = ds.origin if ds else None
    evidence.compare(f"origin of {idle.data} ({adapters.storage.backend})", expected=snapshot, observed=origin,
                     ok=origin == snapshot)
    if origin != snapshot:
        raise CheckFailed(f"{idle.data} is not a clone of {snapshot}", expected=snapshot, observed=origin)
    if adapters.storage.backend == "copy":
        evidence.note("storage backend `copy`: the clone is a full copy, not copy-on-write (not root here)")


@then("the idle colour was behind the cluster before it caught up")
def was_behind(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    seen = upgrade.facts.get("catch_up_seen") or {}
    ok = "behind" in seen.get("healths", []) and seen.get("max_behind", 0) > adapters.env.catch_up_distance
    evidence.compare("health answers and the largest distance seen while catching up",
                     expected=f"`behind`, more than {adapters.env.catch_up_distance} slots", observed=seen, ok=ok)
    if not ok:
        raise CheckFailed("the clone was never seen behind: the catch-up was not exercised", observed=seen)


@then('the idle colour answers "ok" on the target version beside the live colour')
def both_ok(adapters: Adapters, upgrade: UpgradeRun, evidence: Recorder) -> None:
    idle = bg.observe_node(adapters.env, upgrade.facts["idle"], url=adapters.rpc_url(upgrade.facts["idle"]))
    live = bg.observe_node(adapters.env, upgrade.facts["live"], url=adapters.rpc_url(upgrade.facts["live"]))
    want = bg.bare_version(upgrade.facts["target_version"])
    ok = idle.health == "ok" and idle.version == want and live.health == "ok"
    evidence.compare("both colours", expected={"idle": {"health": "ok", "version": want}, "live": "ok"},
                     observed={"idle": idle.as_dict(), "live": live.as_dict()}, ok=ok)
    if not ok:
        raise CheckFailed("both colours should answer ok, the idle one on the target version",
                          observed={"idle": idle.as_dict(), "live": live.as_dict()})


@then("every request was served by the live colour")
def all_served_by_live(adapters: Adapters, probe: ProbeRun, upgrade: UpgradeRun, evidence: Recorder) -> None:
    summary = probe.finish()
    live = bg.upstream_address(adapters.env, upgrade.facts["live"])
    counts = {k: v for k, v in summary.upstreams.items()}
    evidence.compare("requests per upstream", expected={live: summary.total}, observed=counts,
                     ok=counts == {live: summary.total})
    zero_drop.check_served_only_by(counts, live, when="with both colours healthy under lb_policy first")

