"""The rollback's restore-data is "already done" only when the storage shows the old colour's data rolled back
(issue 11): no ``data_restored`` flag. The storage facts recorded when the colour stopped (``stopped_data``)
are compared with the facts now (:func:`agave_rollback.rolled_back_since_stop`): ZFS's and the volume
model's ``written`` only grow until a rollback, btrfs's ``uuid`` and the directory backends' ``inode``
change with one; a volume must also be mounted at its mount point again.

End to end on the real ``copy`` backend in a tmp dir (workloads faked: tests/baseline_fakes.py, the ingress
audit of the preflight stubbed: no Caddy here); the fact rules of the other backends on their facts' shapes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.base import Dataset
from runbook.adapters.factory import Adapters
from runbook.manifests import render_deployment
from runbook.procedures import agave_rollback as rb
from runbook.procedures import agave_upgrade as up
from runbook.procedures.framework import Context, Journal
from tests.baseline_fakes import make_adapters
from tests.procedures.facts_helper import upgrade_facts

GREEN = "volumes/solana"
SNAP = "pre-upgrade-v2.2.1-20260101T000000Z-beef"
RESTORE = dataclasses.replace(rb.AFTER_CLEANUP, steps=rb.AFTER_CLEANUP.steps[:1])


@pytest.fixture(autouse=True)
def no_caddy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up, "require_ingress_retries", lambda ctx, **kw: None)


def _slot(a: Adapters) -> str:
    return (Path(a.storage.path(GREEN)) / "ledger" / "slot").read_text()


def _upgraded(tmp_path: Path) -> tuple[Adapters, dict[str, Any]]:
    """After an upgrade: green's data snapshotted at slot 100, written on to 200, then green stopped (its
    storage facts recorded, as agave_upgrade.stop_live does)."""
    a = make_adapters(tmp_path)
    a.storage.snapshot(GREEN, SNAP)
    (Path(a.storage.path(GREEN)) / "ledger" / "slot").write_text("200")
    a.workloads.delete_deployment(a.env.deployments.green.name)
    live_image = a.env.deployments.green.image or "laconicnetwork/agave:v2.1.0"
    facts = {"live": "green", "idle": "blue", "snapshot": SNAP, "live_image": live_image,
             "target_image": "laconicnetwork/agave:v2.2.1", "target_version": "v2.2.1",
             "stopped_data": {"colour": "green", "facts": a.storage.identity(GREEN)}}
    return a, facts


def _journal(tmp_path: Path, completed: list[str], facts: dict[str, Any]) -> Journal:
    journal = Journal(tmp_path / "journal" / "agave-rollback.json")
    journal.save({"procedure": "agave-rollback", "params": {}, "status": "running", "started": 0.0,
                  "completed": completed, "acted": list(completed), "facts": facts})
    return journal


def _run(a: Adapters, journal: Journal, notes: list[str]) -> Any:
    return RESTORE.run(Context(adapters=a, params={}, progress=notes.append), journal=journal, rollback="none")


def test_journal_says_restored_but_the_data_was_not_rolled_back_so_the_resumed_run_rolls_back(
        tmp_path: Path) -> None:
    a, facts = _upgraded(tmp_path)
    journal = _journal(tmp_path, ["restore-data"], facts)  # the trap: a journal that remembers a restore
    assert _slot(a) == "200"

    notes: list[str] = []
    result = _run(a, journal, notes)

    assert result.ok, result
    assert result.outcome("restore-data").status == "done", notes  # not "skipped (already done)"
    assert _slot(a) == "100"
    assert any("inode unchanged since it stopped" in n for n in notes), notes


def test_restored_data_is_skipped_on_resume(tmp_path: Path) -> None:
    a, facts = _upgraded(tmp_path)
    rb.restore_data(Context(adapters=a, params={}, facts=upgrade_facts(**facts)))
    assert _slot(a) == "100"
    notes: list[str] = []
    result = _run(a, _journal(tmp_path, ["restore-data"], facts), notes)
    assert result.outcome("restore-data").status == "skipped (already done)", notes
    assert any("inode changed since it stopped" in n for n in notes), notes


def test_without_the_stopped_facts_it_acts_again_and_a_second_rollback_is_harmless(tmp_path: Path) -> None:
    a, facts = _upgraded(tmp_path)
    rb.restore_data(Context(adapters=a, params={}, facts=upgrade_facts(**facts)))
    blind = {k: v for k, v in facts.items() if k != "stopped_data"}
    result = _run(a, _journal(tmp_path, ["restore-data"], blind), [])
    assert result.ok, result
    assert result.outcome("restore-data").status == "done"
    assert _slot(a) == "100"
    assert [d.snapshots for d in a.storage.datasets() if d.name == GREEN] == [(f"{GREEN}@{SNAP}",)]


def test_once_green_runs_its_old_image_again_its_data_is_not_rolled_back_under_it(tmp_path: Path) -> None:
    """Resumed after redeploy-old: green writes its data again, so the facts move on; its pods say the
    restore is behind it (and the preflight would refuse a rollback under a running colour)."""
    a, facts = _upgraded(tmp_path)
    rb.restore_data(Context(adapters=a, params={}, facts=upgrade_facts(**facts)))
    a.workloads.apply_deployment(render_deployment(a.env, "green", image=facts["live_image"]))
    ctx = Context(adapters=a, params={}, facts=upgrade_facts(**{**facts, 'stopped_data': {}}))
    assert rb.data_restored(ctx)
    a.workloads.apply_deployment(render_deployment(a.env, "green", image="laconicnetwork/agave:v2.2.1"))
    assert not rb.data_restored(ctx)  # the new image on green's name is not the old colour back


# ------------------------------------------------------------------------------------------- each backend's facts
ZFS = {"guid": "1234", "createtxg": 77, "type": "volume", "written": 5_000_000}
ZVOL = {"id": "ab12", "inode": 9001, "volsize": 2**30, "written": 5_000_000}
BTRFS = {"id": "cd34", "inode": 256, "newest_ctime": "1700000000.5", "entries": 12, "uuid": "u-1",
         "gen_at_creation": 40}
TREE = {"id": "ef56", "inode": 4242, "newest_ctime": "1700000000.5", "entries": 12}


@pytest.mark.parametrize("stopped, now, restored", [
    (ZFS, {**ZFS, "written": 0}, True),  # right after zfs rollback
    (ZFS, {**ZFS, "written": 65536}, True),  # mounted again: XFS wrote its log
    (ZFS, ZFS, False),  # not rolled back
    (ZFS, {**ZFS, "written": 6_000_000}, False),  # written on since it stopped
    (ZFS, {**ZFS, "guid": "999", "written": 0}, False),  # another dataset under the name
    ({**ZFS, "written": 0}, {**ZFS, "written": 0}, False),  # nothing to tell by: acts again (harmless)
    (ZVOL, {**ZVOL, "inode": 9002, "written": 0}, True),
    (ZVOL, {**ZVOL, "inode": 9002, "written": 5_000_000}, False),  # written decides where the backend has it
    (BTRFS, {**BTRFS, "uuid": "u-2", "newest_ctime": "1700000100.0"}, True),  # a new subvolume, inode still 256
    (BTRFS, BTRFS, False),
    (TREE, {**TREE, "inode": 4243}, True),  # a fresh copy renamed into place
    (TREE, {**TREE, "newest_ctime": "1700000100.0"}, False),
    (TREE, {**TREE, "id": "other", "inode": 4243}, False),  # re-created, not rolled back
    ({}, TREE, False),  # no facts recorded when it stopped
])
def test_a_rollback_is_read_from_each_backends_facts(stopped: dict[str, Any], now: dict[str, Any],
                                                       restored: bool) -> None:
    ok, how = rb.rolled_back_since_stop(stopped, now)
    assert ok is restored, how


class VolumeStorage:
    """The zfs backend's answers for a zvol (identity, mounts) without a pool: the mount rule's test."""

    def __init__(self, written: int, mounted: str | None) -> None:
        self.written, self.mounted = written, mounted

    def datasets(self) -> list[Dataset]:
        return [Dataset(GREEN, f"/dev/zvol/pool/{GREEN}", snapshots=(f"{GREEN}@{SNAP}",))]

    def identity(self, name: str) -> dict[str, Any]:
        return {**ZFS, "written": self.written}

    def mounted_at(self, name: str) -> str | None:
        return self.mounted


@pytest.mark.parametrize("written, mounted, restored", [
    (65536, "/srv/solana/ledger-volume", True),
    (65536, None, False),  # rolled back, not mounted again: the old colour would start on an empty dir
    (5_000_000, "/srv/solana/ledger-volume", False),
])
def test_a_volume_is_restored_only_when_mounted_again(tmp_path: Path, written: int, mounted: str | None,
                                                       restored: bool) -> None:
    a = make_adapters(tmp_path)
    a.workloads.delete_deployment(a.env.deployments.green.name)
    green = a.env.deployments.green.model_copy(update={"mount": "/srv/solana/ledger-volume"})
    env = a.env.model_copy(update={"deployments": a.env.deployments.model_copy(update={"green": green})})
    vol = dataclasses.replace(a, env=env, storage=VolumeStorage(written, mounted))  # type: ignore[arg-type]
    facts = {"live": "green", "idle": "blue", "snapshot": SNAP, "live_image": "laconicnetwork/agave:v2.1.0",
             "stopped_data": {"colour": "green", "facts": ZFS}}
    assert rb.data_restored(Context(adapters=vol, params={}, facts=upgrade_facts(**facts))) is restored


def test_restore_data_keeps_no_flag(tmp_path: Path) -> None:
    a, facts = _upgraded(tmp_path)
    ctx = Context(adapters=a, params={}, facts=upgrade_facts(**facts))
    rb.restore_data(ctx)
    assert {k for k, v in ctx.facts.to_json().items() if v} == set(facts)  # the world says it is done: no flag


def test_the_rollback_step_names_its_observation() -> None:
    assert rb.AFTER_CLEANUP.steps[0].name == "restore-data" and rb.AFTER_CLEANUP.steps[0].is_done is rb.data_restored
