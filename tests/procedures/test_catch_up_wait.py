"""The catch-up wait (runbook.procedures.catch_up) and the upgrade's catch-up step that uses it: it returns only
once the idle colour is healthy, close to a trusted tip and on the expected release; a wrong release fails at
once; and the step's verification is that wait (a step that verifies nothing would shift onto a colour still
replaying). The colour's RPC and the reference are faked: observations are scripted NodeStates."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runbook.errors import CheckFailed, WaitTimeout
from runbook.procedures import agave_rollback, catch_up
from runbook.procedures import agave_upgrade as up
from runbook.procedures import bluegreen as bg
from runbook.procedures.framework import Context
from tests.baseline_fakes import make_env
from tests.procedures.facts_helper import upgrade_facts


class _Reference:
    def summary(self) -> str:
        return "reference: faked"

    def stats(self) -> dict[str, Any]:
        return {"calls": 0}


@dataclasses.dataclass
class _Adapters:
    env: Any

    @contextlib.contextmanager
    def reference(self) -> Iterator[_Reference]:
        yield _Reference()

    def rpc_url(self, colour: str) -> str:
        return f"http://{colour}.invalid"

    @property
    def workloads(self) -> Any:
        return self

    def wait_rollout(self, name: str, *, timeout: float) -> None:
        return None  # rolled out at once: the wait that matters here is the catch-up


def _state(health: str, behind: int, version: str = "2.2.1") -> bg.NodeState:
    return bg.NodeState("blue", health, slot=1000 - behind, tip=1000, version=version, tip_age=0.1, tip_trusted=True)


@pytest.fixture
def ctx(tmp_path: Any) -> Context:
    env = make_env(tmp_path)
    env = env.model_copy(update={"timeouts": env.timeouts.model_copy(update={"catch_up": 1.0})})
    fake: Any = _Adapters(env)  # the parts of Adapters the catch-up wait uses
    return Context(adapters=fake, params={"target_version": "v2.2.1"},
                   facts=upgrade_facts(live="green", idle="blue", target_version="v2.2.1"), progress=lambda m: None)


def _script(monkeypatch: pytest.MonkeyPatch, states: list[bg.NodeState]) -> list[bg.NodeState]:
    """Each observation the next state; the last one repeats."""
    seen: list[bg.NodeState] = []

    def observe(env: Any, colour: str, reference: Any, **kw: Any) -> bg.NodeState:
        seen.append(states[min(len(seen), len(states) - 1)])
        return seen[-1]

    monkeypatch.setattr(bg, "observe_node", observe)
    return seen


def test_the_wait_returns_only_once_caught_up(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _script(monkeypatch, [_state("unknown", 900), _state("behind", 500), _state("behind", 100),
                                 _state("ok", 5)])
    st, what = catch_up.wait_caught_up(ctx, "blue", "2.2.1", step="catch-up", procedure="agave-upgrade")
    assert (st.health, st.behind) == ("ok", 5) and len(seen) == 4
    assert what["healths"] == ["unknown", "behind", "ok"] and what["max_behind"] == 900


def test_a_colour_that_stays_behind_times_out(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    _script(monkeypatch, [_state("behind", 500)])
    with pytest.raises(WaitTimeout, match="blue to catch up"):
        catch_up.wait_caught_up(ctx, "blue", "2.2.1", step="catch-up", procedure="agave-upgrade")


def test_a_wrong_release_fails_at_once(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    _script(monkeypatch, [_state("behind", 500, version="2.1.0")])
    start = time.monotonic()
    with pytest.raises(CheckFailed, match=r"answers getVersion solana-core 2\.1\.0, not 2\.2\.1"):
        catch_up.wait_caught_up(ctx, "blue", "2.2.1", step="catch-up", procedure="agave-upgrade")
    assert time.monotonic() - start < 0.6  # not at the 1 s deadline


def test_the_upgrades_catch_up_step_waits_for_the_idle_colour(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    step = next(s for s in up.PROCEDURE.steps if s.name == "catch-up")
    _script(monkeypatch, [_state("behind", 500)])
    with pytest.raises(WaitTimeout, match="blue to catch up"):
        step.verify(ctx)
    _script(monkeypatch, [_state("behind", 50), _state("ok", 0)])
    step.verify(ctx)
    assert ctx.facts.catch_up_seen["healths"] == ["behind", "ok"]


def test_the_rollbacks_redeploy_waits_for_the_old_colour(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """After cleanup, the rollback shifts back only once the old colour caught up on its old release."""
    step = next(s for s in agave_rollback.AFTER_CLEANUP.steps if s.name == "redeploy-old")
    ctx = dataclasses.replace(ctx, facts=upgrade_facts(live="green", idle="blue", target_version="v2.2.1",
                                                       live_image="laconicnetwork/agave:v2.1.0"))
    _script(monkeypatch, [_state("behind", 500, version="2.1.0")])
    with pytest.raises(WaitTimeout, match="green to catch up"):
        step.verify(ctx)
    _script(monkeypatch, [_state("behind", 50, version="2.1.0"), _state("ok", 0, version="2.1.0")])
    step.verify(ctx)
