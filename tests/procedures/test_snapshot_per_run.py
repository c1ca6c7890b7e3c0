"""Snapshots are named per run (issue 9): a pre-upgrade snapshot this run did not take is never reused.

After a rollback that followed cleanup, ``@pre-upgrade-<version>`` used to stay behind, and a later upgrade
to the same version took it as its own snapshot (``is_done``) and cloned stale data. Here the upgrade's real
``prepare``, snapshot and clone steps run on the ``copy`` storage backend in a tmp dir (the testbed's own
backend when not root), with the workloads and ingress ports faked (baseline_fakes; green is the live colour).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runbook.adapters.factory import Adapters, plan_adapters
from runbook.env import load_env
from runbook.errors import PreconditionFailed
from runbook.procedures import agave_rollback
from runbook.procedures import agave_upgrade as up
from runbook.procedures import bluegreen as bg
from runbook.procedures.framework import Context, Journal, Procedure
from tests.baseline_fakes import make_adapters
from tests.procedures.facts_helper import upgrade_facts

GREEN = "volumes/solana"


@pytest.fixture(autouse=True)
def green_is_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ingress here: the live colour is green, as its X-Upstream header would say."""
    monkeypatch.setattr(bg, "live_colour", lambda env, workloads, **kw: ("green", "X-Upstream header (faked)"))


def _adapters(tmp_path: Path) -> Adapters:
    return make_adapters(tmp_path)


def _snapshot_and_clone() -> Procedure:
    """The upgrade's first two steps as they are, without the preflight (it audits a real Caddy)."""
    snap, clone = up.PROCEDURE.steps[:2]
    return dataclasses.replace(up.PROCEDURE, steps=(dataclasses.replace(snap, precondition=None), clone))


def _slot(a: Adapters, dataset: str) -> str:
    return (Path(a.storage.path(dataset)) / "ledger" / "slot").read_text()


def test_a_stale_pre_upgrade_snapshot_is_left_alone_and_not_cloned(tmp_path: Path) -> None:
    a = _adapters(tmp_path)
    ledger = Path(a.storage.path(GREEN)) / "ledger" / "slot"
    assert ledger.read_text() == "100"
    # what earlier runs left: the old fixed name (after a rollback that followed cleanup) and another run's
    a.storage.snapshot(GREEN, "pre-upgrade-v2.2.1")
    a.storage.snapshot(GREEN, "pre-upgrade-v2.2.1-20260101T000000Z-dead")
    stale = [f"{GREEN}@pre-upgrade-v2.2.1", f"{GREEN}@pre-upgrade-v2.2.1-20260101T000000Z-dead"]
    ledger.write_text("200")  # green moved on since

    notes: list[str] = []
    ctx = Context(adapters=a, params={"target_version": "v2.2.1"}, facts=upgrade_facts(), progress=notes.append)
    journal = Journal(tmp_path / "journal" / "agave-upgrade.json")
    result = _snapshot_and_clone().run(ctx, journal=journal)

    assert result.ok, result
    blue = a.env.deployments.blue.data
    assert _slot(a, blue) == "200"  # today's data, not the stale snapshot's 100
    assert "snapshot" in journal.load()["acted"]  # this run took its own snapshot
    snapshot = ctx.facts.snapshot
    assert snapshot == f"pre-upgrade-v2.2.1-{ctx.facts.run_id}"
    assert journal.load()["facts"]["snapshot"] == snapshot  # recorded in this run's journal
    clone = next(d for d in a.storage.datasets() if d.name == blue)
    assert clone.origin == f"{GREEN}@{snapshot}"
    green = next(d for d in a.storage.datasets() if d.name == GREEN)
    assert set(stale) <= set(green.snapshots)  # left alone
    assert any(n.startswith("left alone: " + ", ".join(stale)) for n in notes), notes

    # the rollback after cleanup restores from the snapshot this run's journal records, not a stale one
    a.storage.destroy(blue, recursive=True)
    ledger.write_text("300")
    later = Context(adapters=a, params={}, facts=upgrade_facts(**journal.load()["facts"]))
    agave_rollback.restore_data(later)
    assert ledger.read_text() == "200"
    up.drop_snapshot(later)
    assert [s for s in next(d for d in a.storage.datasets() if d.name == GREEN).snapshots] == stale


def test_a_resumed_run_recognises_only_its_own_snapshot(tmp_path: Path) -> None:
    """``is_done`` of the snapshot step is this run's snapshot, by the name its journal recorded."""
    a = _adapters(tmp_path)
    ctx = Context(adapters=a, params={"target_version": "v2.2.1"}, facts=upgrade_facts(), progress=lambda m: None)
    up.prepare(ctx)
    assert not up.snapshot_exists(ctx)
    a.storage.snapshot(GREEN, "pre-upgrade-v2.2.1")  # the old fixed name: not this run's
    assert not up.snapshot_exists(ctx)
    a.storage.snapshot(GREEN, ctx.facts.snapshot)
    assert up.snapshot_exists(ctx)


def test_the_plan_names_the_per_run_snapshot() -> None:
    env = load_env("biscayne")
    ctx = Context(adapters=plan_adapters(env), params={"target_version": "v2.2.1", "plan": True, "live": "green"},
                  facts=upgrade_facts())
    up.prepare(ctx)  # what `runbook plan` renders the snapshot and clone steps from
    rendered = "\n".join(line for step in up.PROCEDURE.steps[:2] for line in step.plan(ctx))
    assert "zfs snapshot -r biscayne/DATA@pre-upgrade-v2.2.1-YYYYMMDDTHHMMSSZ-xxxx" in rendered, rendered  # recursive
    assert "zfs clone biscayne/DATA/volumes/solana@pre-upgrade-v2.2.1-YYYYMMDDTHHMMSSZ-xxxx" in rendered, rendered


def test_the_idle_colours_kept_data_stops_the_upgrade_before_anything_changes(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """After an upgrade that kept the old data (--cleanup=keep, the default), the next upgrade's idle colour
    still has its dataset: the preflight refuses at once, naming it, before the snapshot (not at the clone)."""
    a = _adapters(tmp_path)
    monkeypatch.setattr(up, "require_ingress_retries", lambda ctx, **kw: None)  # no Caddy here
    ctx = Context(adapters=a, params={"target_version": "v2.2.1"}, facts=upgrade_facts())
    up.prepare(ctx)
    up.preflight(ctx)  # blue's dataset does not exist: free
    a.storage.ensure_dataset(a.env.deployments.blue.data)
    before = {d.name: d.snapshots for d in a.storage.datasets()}
    with pytest.raises(PreconditionFailed, match="exists and is not this run's clone"):
        up.preflight(ctx)
    assert {d.name: d.snapshots for d in a.storage.datasets()} == before  # nothing changed
