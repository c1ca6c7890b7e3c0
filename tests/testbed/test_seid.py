"""The Sei stand-in as real processes on a loopback address: its RPC over real HTTP, its state on disk, the
upgrade module's panics, halt-height at commit, and bootstrap from moto's real S3 server or from a peer.

Chain parameters are sped up (blocks of 0.1 s, sync x10: the tip advances 10 blocks/s, a syncing node 100).
Every wait polls a predicate with a deadline.
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
from runbook.testbed.seid import EXIT_ERROR, EXIT_PANIC, EXIT_SDK_HALT, EXIT_SDK_TERM, seid_argv
from runbook.testbed.seid_state import NodeState, SeiChain, read_state, write_state
from runbook.wait import wait_for

pytestmark = pytest.mark.integration

ADDRESS = "127.77.12.2"  # no env uses 127.77.12.x
CHAIN = SeiChain(block_time=0.1, sync_speed=10.0)
OLD, NEW = "v6.3.0", "v6.4.0"
UPGRADE = {"upgrade_name": NEW}


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

    def status(self) -> dict[str, Any]:
        if self.popen.poll() is not None:
            raise AssertionError(f"seid exited {self.popen.returncode}:\n{self.output()}")
        result: dict[str, Any] = httpx.get(f"{self.url}/status", timeout=2).json()["result"]
        return result

    def height(self) -> int:
        return int(self.status()["sync_info"]["latest_block_height"])

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"seid still running after {timeout}s:\n{self.output()}") from None


@pytest.fixture
def seid(tmp_path: Path) -> Iterator[Any]:
    procs: list[Seid] = []

    def start(home: Path, version: str, *, serving: bool = True, **flags: Any) -> Seid:
        port = free_port()
        log = tmp_path / f"seid-{len(procs)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(seid_argv(home=home, version=version, rpc=f"{ADDRESS}:{port}", **flags),
                                     stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **CHAIN.to_env()})
        proc = Seid(popen, f"http://{ADDRESS}:{port}", home, log)
        procs.append(proc)
        if serving:
            wait_for(proc.status, bool, timeout=10, interval=0.05, what="seid's RPC", tolerate=(httpx.HTTPError,))
        return proc

    yield start
    for p in procs:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


def home_at(path: Path, height: int) -> Path:
    write_state(path, NodeState(height=height, versions=[{"from": height - 5, "to": height, "version": OLD}]))
    return path


def test_follows_the_tip_reports_catching_up_and_stops_on_sigterm(seid: Any, tmp_path: Path) -> None:
    node = seid(tmp_path / "a", OLD, init_height="tip-150")
    first = node.status()
    assert first["node_info"]["version"] == OLD and first["sync_info"]["catching_up"] is True
    synced = wait_for(node.status, lambda s: not s["sync_info"]["catching_up"], timeout=10, interval=0.05,
                      what="catching_up false")
    assert CHAIN.tip() - int(synced["sync_info"]["latest_block_height"]) <= 3
    assert httpx.get(f"{node.url}/health", timeout=2).json() == {"jsonrpc": "2.0", "id": -1, "result": {}}
    rpc = httpx.post(node.url, json={"jsonrpc": "2.0", "id": 7, "method": "status"}, timeout=2).json()
    assert rpc["id"] == 7 and rpc["result"]["node_info"]["network"] == CHAIN.chain_id
    cli = subprocess.run([sys.executable, "-m", "runbook.testbed.seid", "status", "--node",
                          f"tcp://{node.url.removeprefix('http://')}"], capture_output=True, text=True, timeout=10)
    assert cli.returncode == 0 and json.loads(cli.stdout)["node_info"]["version"] == OLD
    later = wait_for(node.height, lambda h: h > int(synced["sync_info"]["latest_block_height"]) + 3, timeout=5,
                     interval=0.05, what="the tip advancing")
    node.popen.send_signal(signal.SIGTERM)
    assert node.wait_exit(10) == 0
    state = read_state(node.home)
    assert state is not None and state.height >= later and state.version_at(later) == OLD


def test_halt_height_stops_after_committing_it_and_is_enforced_at_commit(seid: Any, tmp_path: Path) -> None:
    tip = CHAIN.tip()
    h = tip + 12  # the upgrade height; the bootstrap halts at H-1
    job = seid(home_at(tmp_path / "b", tip - 20), OLD, halt_height=h - 1, upgrade_height=h, **UPGRADE)
    assert job.wait_exit(10) == 0, job.output()
    assert f"halting node per configuration height={h - 1}" in job.output()
    state = read_state(job.home)
    assert state is not None and state.height == h - 1 and state.upgrades == {}
    # the same halt height on state already there: halt is checked at commit, so the next block is committed
    again = seid(job.home, OLD, halt_height=h - 1, serving=False)
    assert again.wait_exit(10) == 0, again.output()
    state = read_state(job.home)
    assert state is not None and state.height == h and state.version_at(h) == OLD


def test_sdk_exit_codes_for_a_halt_and_sigterm(seid: Any, tmp_path: Path) -> None:
    tip = CHAIN.tip()
    job = seid(home_at(tmp_path / "g", tip - 5), OLD, serving=False, halt_height=tip, exit_codes="sdk")
    assert job.wait_exit(10) == EXIT_SDK_HALT, job.output()
    assert (state := read_state(job.home)) is not None and state.height == tip
    node = seid(job.home, OLD, exit_codes="sdk")
    node.popen.send_signal(signal.SIGTERM)
    assert node.wait_exit(10) == EXIT_SDK_TERM


def test_old_binary_block_syncing_to_the_upgrade_height_panics_without_committing_it(seid: Any,
                                                                                     tmp_path: Path) -> None:
    # block sync (far behind the tip) reaches H: the blocksync reactor panics (a caught-up node stays up stuck:
    # test_seid_network.py)
    h = CHAIN.tip() - 100
    node = seid(home_at(tmp_path / "c", h - 20), OLD, upgrade_height=h, serving=False, **UPGRADE)
    assert node.wait_exit(10) == EXIT_PANIC
    assert "CONSENSUS FAILURE" not in node.output()
    info = json.loads((node.home / "data" / "upgrade-info.json").read_text())  # x/upgrade writes it before panicking
    assert info == {"name": NEW, "height": h, "info": ""}
    assert f'panic: UPGRADE "{NEW}" NEEDED at height: {h}: ' in node.output()
    state = read_state(node.home)
    assert state is not None and state.height == h - 1 and state.version_at(h - 1) == OLD and not state.upgrades


def test_new_binary_below_the_upgrade_height_panics(seid: Any, tmp_path: Path) -> None:
    tip = CHAIN.tip()
    h = tip + 50
    home = home_at(tmp_path / "d", tip - 5)
    node = seid(home, NEW, upgrade_height=h, serving=False, **UPGRADE)
    assert node.wait_exit(10) == EXIT_PANIC
    assert (f'panic: BINARY UPDATED BEFORE TRIGGER! UPGRADE "{NEW}" - in binary but not executed on chain. '
            "Downgrade your binary") in node.output()
    state = read_state(home)
    assert state is not None and state.height == tip - 5  # nothing processed


def test_new_binary_on_state_at_h_minus_1_processes_h_and_writes_the_mark(seid: Any, tmp_path: Path) -> None:
    h = CHAIN.tip() + 8
    home = home_at(tmp_path / "e", h - 1)
    node = seid(home, NEW, upgrade_height=h, **UPGRADE)
    wait_for(node.height, lambda x: x >= h + 2, timeout=10, interval=0.05, what="height past H")
    applied = httpx.get(f"{node.url}/cosmos/upgrade/v1beta1/applied_plan/{NEW}", timeout=2).json()
    assert applied == {"height": str(h)}
    state = read_state(home)
    assert state is not None and state.upgrades[NEW]["height"] == h and state.upgrades[NEW]["version"] == NEW
    assert state.version_at(h - 1) == OLD and state.version_at(h) == NEW
    # a new binary whose migration panics at H (the seed's failure mode) stops at H-1
    broken = seid(home_at(tmp_path / "f", h - 1), NEW, upgrade_height=h, fail=f"panic-at={h}", serving=False,
                  **UPGRADE)
    assert broken.wait_exit(10) == EXIT_PANIC and f"panic-at={h}" in broken.output()
    assert (state := read_state(broken.home)) is not None and state.height == h - 1 and not state.upgrades


def test_the_query_cli_and_an_image_whose_upgrade_handler_panics(seid: Any, tmp_path: Path) -> None:
    """`seid query upgrade applied NAME` (what the runbook execs in a pod) answers the mark's height; an image built
    with `--fail panic-at-upgrade` (before the subcommand, as its entrypoint) panics processing the plan's height,
    wherever the plan is."""
    h = CHAIN.tip() + 8
    node = seid(home_at(tmp_path / "g", h - 1), NEW, upgrade_height=h, **UPGRADE)
    wait_for(node.height, lambda x: x >= h, timeout=10, interval=0.05, what="height at H")
    query = [sys.executable, "-m", "runbook.testbed.seid", "query", "upgrade", "applied", NEW, "--node",
             node.url.replace("http://", "tcp://")]
    assert json.loads(subprocess.run([*query, "--output", "json"], capture_output=True, text=True, timeout=20,
                                     check=True).stdout) == {"height": str(h)}
    home = home_at(tmp_path / "h", h + 4 - 1)
    run = subprocess.run([sys.executable, "-m", "runbook.testbed.seid", "--binary-version", NEW, "--fail",
                          "panic-at-upgrade", "start", "--home", str(home), "--rpc", f"{ADDRESS}:{free_port()}",
                          "--upgrade-height", str(h + 4), "--upgrade-name", NEW], capture_output=True, text=True,
                         timeout=20, env={**os.environ, **CHAIN.to_env()})
    assert run.returncode == EXIT_PANIC, run.stderr
    assert f'upgrade "{NEW}" handler panicked processing block {h + 4}' in run.stderr
    assert (state := read_state(home)) is not None and state.height == h + 3 and not state.upgrades


def test_bootstrap_from_an_s3_snapshot(seid: Any, tmp_path: Path) -> None:
    with S3Server("127.77.12.3", free_port(), tmp_path / "s3.log") as s3:
        store = SnapshotStore(s3.endpoint)
        store.ensure_bucket("sei")
        tip = CHAIN.tip()
        store.put_snapshot("sei", tip - 30, home_at(tmp_path / "snap1", tip - 30))
        store.put_snapshot("sei", tip + 500, home_at(tmp_path / "snap2", tip + 500))  # above the target
        target = tip - 10
        job = seid(tmp_path / "entrant", OLD, serving=False, snapshot_s3=f"{s3.endpoint}/sei", target_height=target,
                   halt_height=target)
        assert job.wait_exit(10) == 0, job.output()
        state = read_state(job.home)
        assert state is not None and state.height == target
        assert state.version_at(tip - 30) == OLD and state.version_at(target) == OLD
        assert f"restoring snapshot {tip - 30} (newest <= {target})" in job.output()
        none = seid(tmp_path / "none", OLD, serving=False, snapshot_s3=f"{s3.endpoint}/sei", target_height=5)
        assert none.wait_exit(10) == EXIT_ERROR
        assert "no snapshot at or below height 5 in bucket sei" in none.output()


def test_state_sync_from_a_peer_and_no_peers_fails_fast(seid: Any, tmp_path: Path) -> None:
    peer = seid(tmp_path / "peer", OLD, init_height="tip")
    node = seid(tmp_path / "synced", OLD, peers=f"nodeid@{peer.url.removeprefix('http://')}", snapshot_interval=50)
    # the restored state is written before the first block is processed: wait for the first version's range
    state = wait_for(lambda: read_state(node.home), lambda s: s is not None and bool(s.versions), timeout=10,
                     interval=0.05, what="the synced node's first processed block")
    assert state is not None
    landed = state.versions[0]["from"] - 1  # state sync restored this height; block sync went on from it
    assert landed % 50 == 0 and peer.height() - landed <= 80
    assert f"restoring the snapshot at height {landed}" in node.output()
    wait_for(node.status, lambda s: not s["sync_info"]["catching_up"], timeout=10, interval=0.05, what="synced")
    started = time.monotonic()
    lost = seid(tmp_path / "lost", OLD, serving=False, peers=f"{ADDRESS}:{free_port()},{ADDRESS}:{free_port()}")
    assert lost.wait_exit(10) == EXIT_ERROR
    assert time.monotonic() - started < 5
    assert "failed to start state sync: failed to set up light client state provider" in lost.output()
    assert read_state(lost.home) is None
