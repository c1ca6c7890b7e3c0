"""The Sei stand-in's network model, real processes on a loopback address: the binary's own version, the upgrade
plan learned from a governance file and from peers, a caught-up old binary stuck at H (RPC up) versus the
panics, the validator passing H, and snapshots uploaded to moto's real S3 server for a bootstrap to restore.

Blocks of 0.05 s (20 a second), sync x10; every upgrade height is a few seconds ahead of the tip. Every wait
polls a predicate with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbook.testbed.s3store import S3Server, SnapshotStore
from runbook.testbed.seid import EXIT_ERROR, EXIT_PANIC, image_argv, seid_argv
from runbook.testbed.seid_state import SeiChain, read_state
from runbook.wait import wait_for

pytestmark = pytest.mark.integration

ADDRESS = "127.77.12.4"  # no env uses 127.77.12.x
CHAIN = SeiChain(block_time=0.05, sync_speed=10.0)
OLD, NEW = "v6.3.0", "v6.4.0"
PLAN = "/cosmos/upgrade/v1beta1/current_plan"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return int(s.getsockname()[1])


@dataclass
class Seid:
    popen: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def get(self, path: str) -> Any:
        if self.popen.poll() is not None:
            raise AssertionError(f"seid exited {self.popen.returncode}:\n{self.output()}")
        return httpx.get(f"{self.url}{path}", timeout=2).json()

    def sync_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.get("/status")["result"]["sync_info"]
        return info

    def height(self) -> int:
        return int(self.sync_info()["latest_block_height"])

    def plan(self) -> dict[str, Any] | None:
        plan: dict[str, Any] | None = self.get(PLAN)["plan"]
        return plan

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"seid still running after {timeout}s:\n{self.output()}") from None

    def wait_log(self, text: str, timeout: float = 5) -> None:
        wait_for(self.output, lambda out: text in out, timeout=timeout, interval=0.05, what=f"{text!r} in the log")


@pytest.fixture
def seid(tmp_path: Path) -> Iterator[Any]:
    procs: list[Seid] = []

    def start(name: str, version: str, *, serving: bool = True, **flags: Any) -> Seid:
        port = free_port()
        log = tmp_path / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(seid_argv(home=tmp_path / name, version=version, rpc=f"{ADDRESS}:{port}",
                                               **flags),
                                     stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **CHAIN.to_env()})
        proc = Seid(popen, f"http://{ADDRESS}:{port}", tmp_path / name, log)
        procs.append(proc)
        if serving:
            wait_for(proc.sync_info, bool, timeout=10, interval=0.05, what="seid's RPC", tolerate=(httpx.HTTPError,))
        return proc

    yield start
    for p in procs:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


def peer(node: Seid) -> str:
    return f"nodeid@{node.url.removeprefix('http://')}"


def propose(gov: Path, name: str, height: int) -> None:
    """The governance file replaced at once, as the kubelet swaps a ConfigMap volume's files."""
    tmp = gov.with_name(f".{gov.name}.tmp")
    tmp.write_text(json.dumps({"name": name, "height": height}))
    tmp.replace(gov)


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, env={**os.environ, **CHAIN.to_env()})


def test_the_binary_knows_its_version(seid: Any, tmp_path: Path) -> None:
    node = seid("img", OLD, as_image=True, init_height="tip")
    assert seid_argv(home="/sei", version=OLD, rpc="a:1", as_image=True)[:6] == [*image_argv(OLD), "start"]
    assert node.get("/status")["result"]["node_info"]["version"] == OLD
    assert node.get("/abci_info")["result"]["response"]["version"] == OLD
    printed = run_cli(*image_argv(NEW), "version")
    assert printed.returncode == 0 and printed.stdout.strip() == NEW.removeprefix("v")
    # the image's version and a contradicting start --version; no version at all
    both = run_cli(*image_argv(NEW), "start", "--home", str(tmp_path / "x"), "--version", OLD, "--init-height", "1")
    assert both.returncode == EXIT_ERROR
    assert f"start --version {OLD} contradicts this binary's version {NEW}" in both.stderr
    neither = run_cli(sys.executable, "-m", "runbook.testbed.seid", "start", "--home", str(tmp_path / "y"))
    assert neither.returncode == EXIT_ERROR and "this binary's version is unknown" in neither.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    same = run_cli(*image_argv(OLD), "start", "--home", str(tmp_path / "z"), "--version", OLD, "--rpc",
                   f"{ADDRESS}:{free_port()}", "--init-height", "1", "--halt-height", "2")  # agreeing: fine
    assert same.returncode == 0 and f"seid {OLD} starting" in same.stderr
    assert (state := read_state(tmp_path / "z")) is not None and state.version_at(2) == OLD


def test_plan_from_the_governance_file_and_peers_an_old_binary_stuck_at_h(seid: Any, tmp_path: Path) -> None:
    gov = tmp_path / "gov.json"  # absent: no plan
    validator = seid("validator", OLD, validator=True, gov_plan_file=gov, init_height="tip")
    follower = seid("follower", OLD, peers=peer(validator), snapshot_interval=10)
    fixed_h = CHAIN.tip() + 400
    fixed = seid("fixed", OLD, peers=peer(validator), upgrade_height=fixed_h, upgrade_name="v9.0.0",
                 snapshot_interval=10)
    assert validator.plan() is None and follower.plan() is None
    # the plan proposed, then moved while running: the validator re-reads its file, the follower polls it
    h = CHAIN.tip() + 200
    propose(gov, NEW, h)
    follower.wait_log(f'upgrade plan "{NEW}" at height {h} learned from {peer(validator)}')
    h = CHAIN.tip() + 70  # 3.5 s ahead
    propose(gov, NEW, h)
    follower.wait_log(f'upgrade plan "{NEW}" at height {h} learned from {peer(validator)}')
    expected = {"name": NEW, "time": "0001-01-01T00:00:00Z", "height": str(h), "info": "",
                "upgraded_client_state": None}
    assert validator.plan() == expected and follower.plan() == expected
    assert f'learned from governance file {gov}' in validator.output()
    assert (state := read_state(follower.home)) is not None and state.plan == {"name": NEW, "height": h}
    assert fixed.plan() is not None and fixed.plan()["height"] == str(fixed_h)  # static: stays as is
    assert "learned" not in fixed.output()
    # the caught-up old binary at H: the consensus failure is recovered; the node answers at H, never advancing
    follower.wait_log(f'ERR CONSENSUS FAILURE!!! err="UPGRADE \\"{NEW}\\" NEEDED at height: {h}: "', timeout=10)
    stuck = follower.sync_info()
    assert stuck["latest_block_height"] == str(h) and stuck["catching_up"] is False
    info = json.loads((follower.home / "data" / "upgrade-info.json").read_text())
    assert info == {"name": NEW, "height": h, "info": ""}
    wait_for(CHAIN.tip, lambda t: t >= h + 3, timeout=5, interval=0.05, what="two more blocks")
    assert follower.sync_info() == stuck
    assert follower.get("/health") == {"jsonrpc": "2.0", "id": -1, "result": {}}
    assert "panic:" not in follower.output() and follower.popen.poll() is None
    # the validator passed H, with no mark, and the plan is done on the network (current_plan null, as x/upgrade
    # clears it once applied); the static plan's node went on too
    assert validator.height() > h and validator.plan() is None
    assert (vstate := read_state(validator.home)) is not None and vstate.upgrades == {}
    assert fixed.height() > h
    follower.popen.send_signal(signal.SIGTERM)
    assert follower.wait_exit(10) == 0
    assert (state := read_state(follower.home)) is not None and state.height == h - 1 and not state.upgrades
    # restarted on state at H-1 with block H there: the replay panics (the plan is in its state)
    again = seid("follower", OLD, serving=False)
    assert again.wait_exit(10) == EXIT_PANIC
    assert f'panic: UPGRADE "{NEW}" NEEDED at height: {h}: ' in again.output()


def test_snapshots_uploaded_every_n_newest_ten_kept_and_the_seed_flow(seid: Any, tmp_path: Path) -> None:
    every = 5
    with S3Server("127.77.12.5", free_port(), tmp_path / "s3.log") as s3:
        store = SnapshotStore(s3.endpoint)
        gov = tmp_path / "gov.json"
        h = CHAIN.tip() + 90  # 4.5 s ahead
        h += 1 if (h - 1) % every == 0 else 0  # no snapshot at H-1 itself: a halt at H-1 on it would go on to H
        propose(gov, NEW, h)
        validator = seid("validator", OLD, validator=True, gov_plan_file=gov, init_height="tip",
                         snapshot_upload=f"{s3.endpoint}/sei", snapshot_interval=every)  # the bucket: made
        heights = wait_for(lambda: store.heights("sei") if "sei" in store.list_buckets() else [],
                           lambda hs: len(hs) == 10, timeout=10, interval=0.1, what="ten snapshots")
        first = heights[0]
        heights = wait_for(lambda: store.heights("sei"), lambda hs: hs[0] > first + every, timeout=10, interval=0.1,
                           what="older snapshots deleted")
        assert len(heights) == 10 and heights == list(range(heights[0], heights[0] + 10 * every, every))
        assert f"snapshot {heights[0]} uploaded to {s3.endpoint}/sei" in validator.output()
        assert "(deleted " in validator.output()
        # seed 001: a bootstrap on the old binary restores the newest snapshot <= H-1 and halts at H-1 ...
        job = seid("entrant", OLD, serving=False, as_image=True, snapshot_s3=f"{s3.endpoint}/sei",
                   target_height=h - 1, halt_height=h - 1, peers=peer(validator))
        assert job.wait_exit(15) == 0, job.output()
        restored = int(job.output().split("restoring snapshot ")[1].split()[0])
        assert restored % every == 0 and restored <= h - 1
        assert (state := read_state(job.home)) is not None and state.height == h - 1
        assert state.plan == {"name": NEW, "height": h}  # the plan came with the snapshot
        # ... and the new binary on that volume processes H, its handler's mark written
        node = seid("entrant", NEW, as_image=True, peers=peer(validator))
        wait_for(node.height, lambda x: x > h, timeout=10, interval=0.05, what="the entrant past H")
        assert node.get(f"/cosmos/upgrade/v1beta1/applied_plan/{NEW}") == {"height": str(h)}
        assert node.plan() is None  # applied
        assert (state := read_state(node.home)) is not None and state.version_at(h - 1) == OLD
        assert state.version_at(h) == NEW and state.upgrades[NEW]["height"] == h
        started = time.monotonic()
        validator.popen.send_signal(signal.SIGTERM)
        assert validator.wait_exit(10) == 0 and time.monotonic() - started < 6
