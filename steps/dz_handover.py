"""DoubleZero across the blue-green handover (design trap 10) -> runbook.checks.dz_handover.

A Given starts the sampler for the whole run (stopped by a finalizer if the scenario ends early); a Then
stops it, judges the samples once and records expected/observed and the samples themselves."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_bdd import given, then

from runbook.adapters.factory import Adapters
from runbook.checks import dz_handover as ho
from runbook.checks.core import Verdict
from runbook.checks.core import judge as checks_judge
from runbook.evidence.recorder import Recorder
from runbook.procedures import bluegreen as bg
from runbook.testbed import netns
from runbook.testbed.stack import Testbed

SCENARIO_INTERVAL = 1.0


def skip_routes_reason(testbed: Testbed | None) -> str:
    """Why doublezero0's routes cannot be read here ("" when they can): shared by the DZ upgrade's steps."""
    return netns.routes_unobservable(testbed is not None and testbed.netns is not None, testbed=testbed is not None)


def sampler_for(adapters: Adapters, testbed: Testbed | None, **kw: Any) -> ho.HandoverSampler:
    env = adapters.env
    return ho.HandoverSampler(host=adapters.host, workloads=adapters.workloads,
                              deployments={c: env.deployments.colour(c).name for c in bg.COLOURS},
                              sidecar=env.doublezero.sidecar, daemon=env.doublezero.host_service,
                              interface=env.doublezero.interface, skip_routes_reason=skip_routes_reason(testbed),
                              netns=testbed.netns if testbed is not None else None, **kw)


def judge(sampler: ho.HandoverSampler, evidence: Recorder, *, new_colour: str) -> Verdict:
    """Stop the sampler, judge once, record the verdict and the samples (bundle); raises when it failed."""
    samples = sampler.stop()
    v = ho.verdict(samples, new_colour=new_colour, skip_routes_reason=sampler.skip_routes_reason)
    kept = ho.changes(samples)
    evidence.attach(f"DoubleZero handover: the {len(kept)} samples where the state changed (of {len(samples)}, every "
                    f"{sampler.interval} s)", [s.as_dict() for s in kept])
    if sampler.skip_routes_reason:
        evidence.note(f"doublezero0 routes not checked: {sampler.skip_routes_reason}")
    return checks_judge(evidence, v)


@given("a sampler of the doublezerod daemons, the BGP session's holder and doublezero0's routes",
       target_fixture="dz_handover")
def start_sampler(adapters: Adapters, testbed: Testbed | None, request: pytest.FixtureRequest,
                  evidence: Recorder) -> ho.HandoverSampler:
    # as long as the prober may run (the upgrade's catch-up and more), and no longer
    # every second: a flap stays visible in the holder's `Last Session Update` whenever it happened, and one
    # exec per sidecar per second keeps the cost small on production (every 0.2 s took most of a core here)
    duration = adapters.env.timeouts.catch_up + 600
    sampler = sampler_for(adapters, testbed, max_duration=duration, interval=SCENARIO_INTERVAL,
                          max_samples=int(duration / SCENARIO_INTERVAL) + 100).start()
    request.addfinalizer(sampler.stop)
    evidence.call(f"DoubleZero handover sampler: every {sampler.interval} s (at most {sampler.max_samples} samples, "
                  f"{sampler.max_duration:.0f} s): {sampler.daemon} processes, `doublezero status` in each "
                  f"{sampler.sidecar} sidecar, routes on {sampler.interface}")
    return sampler


@then("one doublezerod held the identity at a time, its session reset only at the handover, doublezero0's routes "
      "stayed, and the new colour's sidecar holds the session")
def handover_verdict(dz_handover: ho.HandoverSampler, upgrade: Any, evidence: Recorder) -> None:
    judge(dz_handover, evidence, new_colour=upgrade.facts.idle)
