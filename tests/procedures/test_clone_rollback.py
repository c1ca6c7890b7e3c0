"""The clone step's rollback destroys only this run's clone: a dataset of the idle colour that is not a clone
of this run's snapshot (the old data a previous upgrade kept) made the clone fail and is left alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runbook.adapters.base import Dataset
from runbook.env import load_env
from runbook.procedures import agave_upgrade as up
from runbook.procedures.framework import Context
from tests.procedures.facts_helper import upgrade_facts

BLUE = "biscayne/DATA/volumes/solana-blue"
SNAP = "biscayne/DATA/volumes/solana@pre-upgrade-v2.2.1-20261129T150000Z-abcd"


@dataclass
class Storage:
    sets: list[Dataset]
    destroyed: list[str] = field(default_factory=list)

    def datasets(self) -> list[Dataset]:
        return self.sets

    def mounted_at(self, name: str) -> str | None:
        return None  # directory datasets: nothing to unmount before the destroy

    def destroy(self, name: str, *, recursive: bool = False) -> None:
        self.destroyed.append(name)


def _ctx(storage: Storage) -> Context:
    adapters: Any = type("A", (), {"env": load_env("biscayne"), "storage": storage})()
    return Context(adapters=adapters, params={"target_version": "v2.2.1"},
                   facts=upgrade_facts(live="green", idle="blue", snapshot=SNAP.split("@", 1)[1]))


def test_this_runs_clone_is_destroyed() -> None:
    st = Storage([Dataset(BLUE, "/x", origin=SNAP)])
    up.destroy_clone(_ctx(st))
    assert st.destroyed == [BLUE]


def test_a_dataset_this_run_did_not_clone_is_left_alone() -> None:
    for origin in (None, "biscayne/DATA/volumes/solana@pre-upgrade-v2.1.0-20261001T000000Z-0000"):
        st = Storage([Dataset(BLUE, "/x", origin=origin)])
        up.destroy_clone(_ctx(st))
        assert st.destroyed == [], origin
