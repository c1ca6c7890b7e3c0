"""Every "already done" of the upgrade is an observation of the world, never a flag the run wrote (issue 11).

The framework skips a step on resume when the journal says it completed *and* ``is_done`` observes it done,
so each negative test here is a journal that says a step completed while the world says otherwise: the
resumed run must act again. The steps are the upgrade's own (their preconditions are not under test); the
workloads are faked (tests/baseline_fakes.py), the storage is the real ``copy`` backend in a tmp dir, the
accounts copy is the real rsync through the local host port, and HTTP goes through the real RpcClient and
ReferenceTip to a fake network (tests/procedures/http_fakes.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from runbook.manifests import render_deployment
from runbook.procedures import accounts, catch_up
from runbook.procedures import agave_upgrade as up
from runbook.procedures import bluegreen as bg
from runbook.procedures.framework import Context, Interrupted, Journal, Procedure
from tests.baseline_fakes import make_adapters
from tests.procedures.facts_helper import upgrade_facts
from tests.procedures.http_fakes import FakeNet, FakeNode, HttpAdapters, with_net

PARAMS = {"target_version": "v2.2.1"}
STEPS = {s.name: s for s in up.PROCEDURE.steps}


def _adapters(tmp_path: Path, net: FakeNet | None = None) -> HttpAdapters:
    return with_net(make_adapters(tmp_path), net or FakeNet())


def _facts(a: HttpAdapters) -> dict[str, Any]:
    live_image = a.env.deployments.green.image or "laconicnetwork/agave:v2.1.0"
    return {"live": "green", "idle": "blue", "target_version": "v2.2.1", "run_id": "20260101T000000Z-beef",
            "snapshot": "pre-upgrade-v2.2.1-20260101T000000Z-beef", "live_image": live_image,
            "target_image": bg.image_with_tag(live_image, "v2.2.1")}


def _ctx(a: HttpAdapters, notes: list[str], facts: dict[str, Any] | None = None) -> Context:
    return Context(adapters=a, params=dict(PARAMS), progress=notes.append, facts=upgrade_facts(**(facts or {})))


def _journal_says_completed(tmp_path: Path, steps: list[str], facts: dict[str, Any]) -> Journal:
    """A journal of an unfinished run that completed ``steps``: what a resumed run reads."""
    journal = Journal(tmp_path / "journal" / "agave-upgrade.json")
    journal.save({"procedure": "agave-upgrade", "params": PARAMS, "status": "running", "started": 0.0,
                  "completed": steps, "acted": list(steps), "facts": facts})
    return journal


def _only(*names: str) -> Procedure:
    return dataclasses.replace(up.PROCEDURE, steps=tuple(STEPS[n] for n in names))


# ------------------------------------------------------------------------------------------- catch-up
@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The catch-up wait itself (its own tests: tests/adapters/test_reference.py, the scenarios) replaced by a
    recorder that finds blue caught up: here only whether the resumed run waits again is under test."""
    calls: list[str] = []

    def wait(ctx: Context, colour: str, want: str, *, step: str, procedure: str) -> tuple[bg.NodeState, Any]:
        calls.append(colour)
        return bg.NodeState(colour, "ok", 1000, 1000, want), {"healths": ["behind", "ok"], "max_behind": 400}

    monkeypatch.setattr(catch_up, "wait_caught_up", wait)
    return calls


@pytest.mark.parametrize("blue, tip", [
    (FakeNode(health="behind", slot=600), 1000),  # what the trap hides: blue still behind
    (FakeNode(health="unknown", slot=0), 1000),  # still loading its snapshot
    (FakeNode(health="ok", slot=900), 1000),  # agave's own health says ok, the reference says 100 behind
    (FakeNode(health="ok", version="2.1.0", slot=1000), 1000),  # the old release answering
])
def test_journal_says_caught_up_but_blue_is_not_so_the_resumed_run_waits_again(
        tmp_path: Path, waits: list[str], blue: FakeNode, tip: int) -> None:
    net = FakeNet(nodes={"blue": blue}, tip=tip)
    a = _adapters(tmp_path, net)
    facts = {**_facts(a), "catch_up_seen": {"healths": ["behind", "ok"], "max_behind": 400}}
    journal = _journal_says_completed(tmp_path, ["catch-up"], facts)

    notes: list[str] = []
    result = _only("catch-up").run(_ctx(a, notes), journal=journal)

    assert result.ok, result
    assert result.outcome("catch-up").status == "done", notes  # not "skipped (already done)"
    assert waits == ["blue"]
    assert any(n.startswith("blue: not caught up") or "beyond 30" in n for n in notes), notes


def test_blue_observed_caught_up_is_skipped_on_resume(tmp_path: Path, waits: list[str]) -> None:
    net = FakeNet(nodes={"blue": FakeNode(health="ok", slot=990)}, tip=1000)
    a = _adapters(tmp_path, net)
    facts = {**_facts(a), "catch_up_seen": {"healths": ["behind", "ok"], "max_behind": 400}}
    journal = _journal_says_completed(tmp_path, ["catch-up"], facts)

    notes: list[str] = []
    result = _only("catch-up").run(_ctx(a, notes), journal=journal)

    assert result.outcome("catch-up").status == "skipped (already done)", notes
    assert waits == []
    assert "blue: health ok, version 2.2.1, 10 slots behind http://127.0.0.1:18900 (within 30)" in notes
    assert journal.load()["facts"]["catch_up_seen"]["max_behind"] == 400  # the evidence kept for "was behind"


def test_catch_up_asks_the_reference_only_when_blue_itself_answers_ok(tmp_path: Path) -> None:
    """The rate-limited reference is not called to learn that a colour answering `behind` is not caught up."""
    net = FakeNet(nodes={"blue": FakeNode(health="behind", slot=10)}, tip=1000)
    a = _adapters(tmp_path, net)
    assert not up.idle_caught_up(_ctx(a, [], _facts(a)))
    assert not net.asked_reference(a) and net.requests, net.requests
    net.nodes["blue"] = FakeNode(health="ok", slot=1000)
    assert up.idle_caught_up(_ctx(a, [], _facts(a)))
    assert net.asked_reference(a)


def test_catch_up_is_not_done_when_blue_does_not_answer(tmp_path: Path) -> None:
    a = _adapters(tmp_path, FakeNet(nodes={}, tip=1000))
    assert not up.idle_caught_up(_ctx(a, [], {**_facts(a), "catch_up_seen": {"healths": ["ok"]}}))


# ------------------------------------------------------------------------------------------- copy-accounts
def _accounts(a: HttpAdapters, colour: str) -> Path:
    return Path(a.host_path(str(a.env.deployments.colour(colour).accounts)))


def _fill_source(a: HttpAdapters) -> Path:
    src = _accounts(a, "green")
    (src / "run").mkdir(parents=True)
    (src / "snapshot" / "100").mkdir(parents=True)
    (src / "run" / "0.0").write_bytes(b"a" * 5000)
    (src / "snapshot" / "100" / "0.0").hardlink_to(src / "run" / "0.0")  # agave hard-links its snapshots
    (src / "run" / "1.0").write_bytes(b"b" * 3000)
    return src


def test_journal_says_copied_but_the_copy_was_deleted_so_the_resumed_run_copies_again(tmp_path: Path) -> None:
    a = _adapters(tmp_path)
    _fill_source(a)
    journal = Journal(tmp_path / "journal" / "agave-upgrade.json")
    with pytest.raises(Interrupted):
        _only("copy-accounts").run(_ctx(a, [], _facts(a)), journal=journal, interrupt_after="copy-accounts")
    assert journal.load()["completed"] == ["copy-accounts"]
    dst = _accounts(a, "blue")
    assert (dst / "run" / "1.0").read_bytes() == b"b" * 3000

    (dst / "run" / "1.0").unlink()  # the copy changed after it completed (deleted, a file lost)
    assert not accounts.copied(_ctx(a, [], _facts(a)))

    notes: list[str] = []
    result = _only("copy-accounts").run(_ctx(a, notes), journal=journal)

    assert result.ok, result
    assert result.outcome("copy-accounts").status == "done", notes  # not "skipped (already done)"
    assert (dst / "run" / "1.0").read_bytes() == b"b" * 3000
    assert accounts.copied(_ctx(a, [], _facts(a)))


def test_an_intact_copy_is_skipped_on_resume(tmp_path: Path) -> None:
    a = _adapters(tmp_path)
    _fill_source(a)
    journal = Journal(tmp_path / "journal" / "agave-upgrade.json")
    with pytest.raises(Interrupted):
        _only("copy-accounts").run(_ctx(a, [], _facts(a)), journal=journal, interrupt_after="copy-accounts")
    result = _only("copy-accounts").run(_ctx(a, []), journal=journal)
    assert result.outcome("copy-accounts").status == "skipped (already done)"


def test_the_copy_is_not_overwritten_once_blue_runs_from_it(tmp_path: Path) -> None:
    """After deploy-idle blue writes its accounts as it catches up: they differ from green's, and a resumed
    run must not rsync --delete green's over a running validator's."""
    a = _adapters(tmp_path)
    _fill_source(a)
    journal = Journal(tmp_path / "journal" / "agave-upgrade.json")
    with pytest.raises(Interrupted):
        _only("copy-accounts").run(_ctx(a, [], _facts(a)), journal=journal, interrupt_after="copy-accounts")
    a.workloads.apply_deployment(render_deployment(a.env, "blue", image=_facts(a)["target_image"]))
    written = _accounts(a, "blue") / "run" / "2.0"
    written.write_bytes(b"blue's own")

    result = _only("copy-accounts").run(_ctx(a, []), journal=journal)

    assert result.outcome("copy-accounts").status == "skipped (already done)"
    assert written.read_bytes() == b"blue's own"
    assert not accounts.copied(_ctx(a, [], _facts(a)))  # the copy alone no longer matches: blue's pod decides


# ------------------------------------------------------------------------------------------- HTTP through the adapters
def test_served_by_reads_x_upstream_through_the_adapters_public_rpc(tmp_path: Path) -> None:
    net = FakeNet(serving="blue")
    a = _adapters(tmp_path, net)
    assert bg.served_by(a.env, adapters=a) == "blue"
    assert bg.live_colour(a.env, a.workloads, adapters=a) == ("blue", "X-Upstream header")
    net.serving = None  # an ingress without the header (the seed's): the only colour with pods, green
    assert bg.served_by(a.env, adapters=a) is None
    assert bg.live_colour(a.env, a.workloads, adapters=a)[0] == "green"
    assert net.requests == ["127.0.0.1:18080 GET /health"] * 4


def test_shifted_and_observe_colour_go_through_the_adapters(tmp_path: Path) -> None:
    net = FakeNet(nodes={"blue": FakeNode(health="behind", slot=7, version="2.2.1")}, serving="blue")
    a = _adapters(tmp_path, net)
    assert bg.observe_colour(a.env, "blue", adapters=a) == bg.NodeState("blue", "behind", 7, None, "2.2.1")
    ctx = _ctx(a, [], _facts(a))
    assert not up.shifted(ctx)  # green still has pods
    a.workloads.delete_deployment(a.env.deployments.green.name)
    assert up.shifted(ctx)
    net.serving = "green"
    assert not up.shifted(ctx)


def test_the_upgrade_steps_name_their_observations() -> None:
    """The step table names the observing functions, no lambda (a lambda over ctx.facts was the flag)."""
    assert STEPS["catch-up"].is_done is up.idle_caught_up
    assert STEPS["copy-accounts"].is_done is up.accounts_copied
    assert [s.name for s in up.PROCEDURE.steps if s.is_done.__name__ == "<lambda>"] == []
