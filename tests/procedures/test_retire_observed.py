"""--cleanup=destroy's retire-old is done only when the world says so (issue 11: an interrupted retire, its old
dataset destroyed but the moved snapshot or the old accounts still there, is acted on again, not skipped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runbook.adapters.base import Dataset
from runbook.env import load_env
from runbook.procedures import accounts, agave_data
from runbook.procedures.framework import Context
from tests.procedures.facts_helper import upgrade_facts

GREEN = "biscayne/DATA/volumes/solana"
BLUE = "biscayne/DATA/volumes/solana-blue"
RUN = "pre-upgrade-v2.2.1-20261129T150000Z-abcd"


@dataclass
class Storage:
    sets: list[Dataset] = field(default_factory=list)

    def datasets(self) -> list[Dataset]:
        return self.sets


def _ctx(storage: Storage) -> Context:
    adapters: Any = type("A", (), {"env": load_env("biscayne"), "storage": storage})()
    return Context(adapters=adapters, params={"target_version": "v2.2.1", "cleanup": "destroy"},
                   facts=upgrade_facts(live="green", idle="blue", snapshot=RUN))


def test_retire_old_is_done_only_when_the_data_the_snapshot_and_the_accounts_are_gone(monkeypatch: Any) -> None:
    old_accounts = {"left": True}
    monkeypatch.setattr(accounts, "copy_present", lambda ctx, old=False: old and old_accounts["left"])
    st = Storage([Dataset(GREEN, "/g"), Dataset(BLUE, "/b", snapshots=(f"{BLUE}@{RUN}",))])
    ctx = _ctx(st)
    assert not agave_data.old_retired(ctx)  # nothing retired yet
    st.sets = [Dataset(BLUE, "/b", snapshots=(f"{BLUE}@{RUN}",))]
    assert not agave_data.old_retired(ctx), "the old dataset gone, but the snapshot promote moved is still there"
    st.sets = [Dataset(BLUE, "/b")]
    assert not agave_data.old_retired(ctx), "the old colour's accounts are still there"
    old_accounts["left"] = False
    assert agave_data.old_retired(ctx)
    keep = Context(adapters=ctx.adapters, params={"target_version": "v2.2.1"}, facts=ctx.facts)
    assert agave_data.old_retired(keep)  # --cleanup=keep: nothing to retire
