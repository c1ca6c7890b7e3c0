"""The Sei stand-in's rules without processes: which plans a node adopts (and when it no longer does), the
stops they give, the command line's version, and which heights a node offers for upload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runbook.errors import ConfigError
from runbook.testbed.seid import SeiNode, _parser, _split_argv, binary_version
from runbook.testbed.seid_net import PlanWatcher, SnapshotUploader
from runbook.testbed.seid_state import NodeState, SeiChain, UpgradePlan, read_state

CHAIN = SeiChain(genesis_time=0.0, block_time=1e9)  # the tip stays at 1: nothing moves under the test
OLD, NEW = "v6.3.0", "v6.4.0"


def node(tmp_path: Path, version: str = OLD, *, height: int = 100, **kw: Any) -> SeiNode:
    kw = {"halt_height": None, "plan": None, "panic_at": None, **kw}
    return SeiNode(home=tmp_path, version=version, chain=CHAIN, state=NodeState(height=height), **kw)


def test_a_learned_plan_sets_the_stop_and_is_kept_in_the_state(tmp_path: Path) -> None:
    n = node(tmp_path)
    assert n.stop is None and n.current_plan() == {"plan": None}
    n.learn_plan(UpgradePlan(NEW, 120), "peer-a")
    assert n.stop is not None and (n.stop.height, n.stop.kind) == (119, "upgrade")
    assert n.current_plan()["plan"]["height"] == "120"
    assert (state := read_state(tmp_path)) is not None and state.plan == {"name": NEW, "height": 120}
    n.learn_plan(UpgradePlan(NEW, 130), "peer-a")  # moved by governance
    assert n.stop is not None and n.stop.height == 129
    n.learn_plan(None, "governance file f")  # cancelled
    assert n.stop is None and n.plan is None
    assert (state := read_state(tmp_path)) is not None and state.plan is None
    new = node(tmp_path / "new", NEW)
    new.learn_plan(UpgradePlan(NEW, 130), "peer-a")  # a new binary below H-1: BINARY UPDATED BEFORE TRIGGER
    assert new.stop is not None and (new.stop.height, new.stop.kind) == (100, "panic")
    assert "BINARY UPDATED BEFORE TRIGGER" in new.stop.message


def test_what_a_node_does_not_adopt(tmp_path: Path) -> None:
    n = node(tmp_path, height=119)
    n.learn_plan(UpgradePlan(NEW, 90), "peer-a")  # already past: ignored
    assert n.plan is None and n.stop is None
    n.learn_plan(UpgradePlan(NEW, 120), "peer-a")  # due at once: the node is at H-1
    n.learn_plan(UpgradePlan(NEW, 150), "peer-a")  # too late to move it
    n.learn_plan(None, "peer-a", source_height=110)  # nor to cancel it
    assert n.plan == UpgradePlan(NEW, 120)
    m = node(tmp_path / "m", height=100, plan=None)
    m.learn_plan(UpgradePlan(NEW, 120), "peer-a")
    m.learn_plan(None, "peer-b", source_height=125)  # a peer past H without a plan applied it: no cancellation
    assert m.plan == UpgradePlan(NEW, 120)
    fixed = node(tmp_path / "f", plan=UpgradePlan("v9.0.0", 500))
    fixed.learn_plan(UpgradePlan(NEW, 120), "peer-a")  # flags: static
    assert fixed.plan == UpgradePlan("v9.0.0", 500)
    validator = node(tmp_path / "v", validator=True)
    validator.learn_plan(UpgradePlan(NEW, 120), "governance file f")
    assert validator.stop is None and validator.current_plan()["plan"]["name"] == NEW


def test_a_restart_takes_the_plan_from_its_state(tmp_path: Path) -> None:
    n = SeiNode(home=tmp_path, version=OLD, chain=CHAIN, halt_height=None, plan=None, panic_at=None,
                state=NodeState(height=119, plan={"name": NEW, "height": 120}))
    assert n.plan == UpgradePlan(NEW, 120) and n.stop is not None and n.stop.kind == "upgrade"


def test_the_governance_file(tmp_path: Path) -> None:
    n = node(tmp_path)
    gov = tmp_path / "gov.json"
    watcher = PlanWatcher(n, gov_file=gov)
    watcher.read_gov_file()  # absent: none
    assert n.plan is None
    gov.write_text('{"name": "v6.4.0", "height": 140}')
    watcher.read_gov_file()
    assert n.plan == UpgradePlan(NEW, 140)
    gov.write_text('{"name": "v6.4.0", "hei')  # half-written: the plan stays
    watcher.read_gov_file()
    assert n.plan == UpgradePlan(NEW, 140)
    gov.write_text("{}")
    watcher.read_gov_file()
    assert n.plan is None


def test_the_binary_version_on_the_command_line() -> None:
    assert _split_argv(["--binary-version", "v6.3.0", "--home", "h"]) == ["--binary-version", "v6.3.0", "start",
                                                                          "--home", "h"]
    assert _split_argv(["--binary-version=v6.3.0", "status"]) == ["--binary-version=v6.3.0", "status"]
    assert _split_argv(["--home", "h"]) == ["start", "--home", "h"]
    parse = _parser().parse_args
    assert binary_version(parse(["--binary-version", OLD, "start", "--home", "h"])) == OLD
    assert binary_version(parse(["start", "--home", "h", "--version", OLD])) == OLD
    with pytest.raises(ConfigError, match="contradicts"):
        binary_version(parse(["--binary-version", OLD, "start", "--home", "h", "--version", NEW]))
    with pytest.raises(ConfigError, match="unknown"):
        binary_version(parse(["start", "--home", "h"]))


def test_the_heights_offered_for_upload(tmp_path: Path) -> None:
    up = SnapshotUploader("http://127.77.12.6:9/bucket", 5)  # not started: nothing is sent
    state = NodeState(height=73, versions=[{"from": 40, "to": 73, "version": OLD}],
                      upgrades={NEW: {"height": 72, "version": NEW}})
    up.offer(state, 51, 73)
    assert [s.height for s in up._pending] == [55, 60, 65, 70]
    assert up._pending[-1].versions == [{"from": 40, "to": 70, "version": OLD}] and up._pending[-1].upgrades == {}
    up.offer(state, 1, 73)  # a long batch: only the newest ten wait
    assert [s.height for s in up._pending] == list(range(25, 75, 5))
    with pytest.raises(ConfigError):
        SnapshotUploader("http://127.77.12.6:9/bucket", 0)


def test_past_its_height_a_plan_is_done_and_the_next_one_is_adopted(tmp_path: Path) -> None:
    """The network (the validator) past H: current_plan is null (x/upgrade clears an applied plan) and governance's
    next plan replaces it (the hard-fork features run one upgrade after another on one network)."""
    validator = node(tmp_path / "v", validator=True, height=130)
    validator.learn_plan(UpgradePlan(NEW, 140), "governance file f")
    assert validator.current_plan()["plan"]["height"] == "140"
    validator.committed = 141  # the network went past H
    assert validator.current_plan() == {"plan": None}
    validator.learn_plan(UpgradePlan("v6.5.0", 200), "governance file f")
    assert validator.plan == UpgradePlan("v6.5.0", 200) and validator.current_plan()["plan"]["name"] == "v6.5.0"
