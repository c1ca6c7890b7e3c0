"""The stand-in validator, the reference cluster RPC and the image CLIs, as real processes on loopback.

Chain parameters are sped up (10 ms slots, replay x30: the tip advances 100 slots/s, replay 3,000 slots/s)
so a node 6,000 slots behind catches up in about two seconds. Every wait polls a predicate with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runbook.adapters.rpc import RpcClient, RpcError
from runbook.env import PROJECT_ROOT
from runbook.errors import AdapterError, ConfigError
from runbook.testbed import chain
from runbook.testbed.keypair import read_pubkey, write_keypair
from runbook.testbed.validator import EXIT_LEDGER, EXIT_UPGRADE, FailureModes
from runbook.wait import wait_for

pytestmark = pytest.mark.integration

FAST = chain.ChainParams(slot_time=0.01, replay_speed=30.0, health_distance=150)
T = TypeVar("T")


class ProcessExited(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def rpc(self) -> RpcClient:
        return RpcClient(url=self.url, timeout=5.0)

    def alive(self, observe: Callable[[], T]) -> Callable[[], T]:
        """Wrap an observation so a process that died fails the wait at once, with its output."""

        def run() -> T:
            if self.popen.poll() is not None:
                raise ProcessExited(f"exited {self.popen.returncode}:\n{self.output()}")
            return observe()

        return run

    def wait_serving(self, timeout: float = 10.0) -> None:
        with self.rpc() as rpc:
            wait_for(
                self.alive(rpc.health),
                lambda h: True,
                timeout=timeout,
                interval=0.02,
                tolerate=(AdapterError,),
                what=f"{self.url} to answer",
            )

    def wait_exit(self, timeout: float = 10.0) -> int:
        rc = wait_for(
            self.popen.poll,
            lambda rc: rc is not None,
            timeout=timeout,
            interval=0.02,
            what=f"process on {self.url} to exit",
        )
        assert rc is not None
        return rc

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.wait_exit()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def _spawn(module: str, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> Proc:
        port = port or free_port()
        port_args = ["--port", str(port)] if module == "cluster" else ["--rpc-port", str(port)]
        argv = [sys.executable, "-m", f"runbook.testbed.{module}", *port_args, *args]
        base = {k: v for k, v in os.environ.items() if k != "STANDIN_FAIL"}
        log = tmp_path / f"{module}-{len(procs)}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                env={**base, **FAST.to_env(), **(env or {})},
            )
        proc = Proc(popen, port, log)
        procs.append(proc)
        return proc

    yield _spawn
    for p in procs:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait(5)


@pytest.fixture
def validator(spawn: Callable[..., Proc], tmp_path: Path) -> Callable[..., Proc]:
    def _validator(ledger: Path, *args: str, version: str = "2.1.0", **kw: Any) -> Proc:
        accounts = tmp_path / "accounts"
        return spawn(
            "validator", "--version", version, "--ledger", str(ledger), "--accounts", str(accounts), *args, **kw
        )

    return _validator


def make_ledger(path: Path, *, behind: int, size_mb: float = 1.0) -> int:
    slot = FAST.tip() - behind
    chain.init_ledger(path, slot=slot, size_mb=size_mb)
    return slot


def slot_of(proc: Proc) -> int:
    with proc.rpc() as rpc:
        return rpc.get_slot()


def dedup(seq: list[str]) -> list[str]:
    return [v for i, v in enumerate(seq) if i == 0 or seq[i - 1] != v]


# --------------------------------------------------------------------------- health and catch-up


def test_health_is_unknown_while_loading(validator: Callable[..., Proc], tmp_path: Path) -> None:
    make_ledger(tmp_path / "ledger", behind=0)
    node = validator(tmp_path / "ledger", "--startup-delay", "2")
    node.wait_serving()
    with node.rpc() as rpc:
        h = rpc.health()
        assert (h.status_code, h.body) == (200, "unknown")
        assert rpc.get_health_rpc().status == "unknown"
        with pytest.raises(RpcError, match="-32005"):
            rpc.get_slot()
        assert rpc.get_version().solana_core == "2.1.0"  # answered even while loading
        wait_for(node.alive(rpc.health), lambda r: r.body == "ok", timeout=10, interval=0.05, what="ok")
    assert node.stop() == 0


def test_clone_catches_up_through_behind(validator: Callable[..., Proc], tmp_path: Path) -> None:
    start = make_ledger(tmp_path / "green", behind=6000, size_mb=2)
    shutil.copytree(tmp_path / "green", tmp_path / "blue")
    node = validator(tmp_path / "blue")
    node.wait_serving()
    seen: list[str] = []

    with node.rpc() as rpc:

        def observe() -> str:
            r = rpc.health()
            assert r.status_code == 200, r  # agave answers 200 whatever the health
            seen.append(r.body)
            return r.body

        wait_for(node.alive(observe), lambda body: body == "ok", timeout=15, interval=0.02, what="blue ok")
        assert "behind" in seen and set(seen) <= {"unknown", "behind", "ok"}
        assert dedup([s for s in seen if s != "unknown"]) == ["behind", "ok"], seen
        assert rpc.get_health_rpc().ok
        assert abs(FAST.tip() - rpc.get_slot()) <= FAST.health_distance
    assert node.stop() == 0
    assert f"replaying from slot {start}" in node.output() and "caught up" in node.output()
    assert chain.read_slot(tmp_path / "blue") > start + 5000
    assert chain.read_slot(tmp_path / "green") == start  # the clone is independent of its origin


def test_behind_reports_agave_error_object(validator: Callable[..., Proc], tmp_path: Path) -> None:
    make_ledger(tmp_path / "ledger", behind=10**6)
    node = validator(tmp_path / "ledger")
    node.wait_serving()
    with node.rpc() as rpc:
        wait_for(node.alive(rpc.health), lambda r: r.body == "behind", timeout=5, interval=0.02, what="behind")
        health = rpc.get_health_rpc()
        assert health.status == "behind" and health.slots_behind is not None
        assert health.slots_behind > FAST.health_distance
        assert health.message == f"Node is behind by {health.slots_behind} slots"


def test_progress_persists_across_restart(validator: Callable[..., Proc], tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    start = make_ledger(ledger, behind=10**6)  # far behind: never catches up during the test
    first = validator(ledger)
    first.wait_serving()
    observed = wait_for(
        first.alive(lambda: slot_of(first)),
        lambda s: s >= start + 3000,
        timeout=10,
        interval=0.05,
        tolerate=(RpcError,),
        what="3000 slots replayed",
    )
    assert first.stop() == 0
    persisted = chain.read_slot(ledger)
    assert persisted >= observed
    assert f"progress persisted at slot {persisted}" in first.output()

    second = validator(ledger)
    second.wait_serving()
    resumed = wait_for(
        second.alive(lambda: slot_of(second)),
        lambda s: True,
        timeout=10,
        interval=0.05,
        tolerate=(RpcError,),
        what="getSlot after restart",
    )
    assert persisted <= resumed < FAST.tip() - 10**5
    assert f"replaying from slot {persisted}" in second.output()


def test_corrupt_ledger_is_refused(validator: Callable[..., Proc], tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    make_ledger(ledger, behind=100, size_mb=2)
    victim = ledger / "data" / "shred-00001.bin"
    raw = bytearray(victim.read_bytes())
    raw[1234] ^= 0xFF
    victim.write_bytes(bytes(raw))
    node = validator(ledger)
    assert node.wait_exit() == EXIT_LEDGER
    out = node.output()
    assert "refusing to start" in out and "data/shred-00001.bin is corrupt" in out


def test_missing_ledger_is_initialised_at_tip_with_an_identity(validator: Callable[..., Proc], tmp_path: Path) -> None:
    ledger = tmp_path / "empty-ledger"
    node = validator(ledger)
    node.wait_serving()
    with node.rpc() as rpc:
        wait_for(node.alive(rpc.health), lambda r: r.body == "ok", timeout=10, interval=0.05, what="ok")
        identity = rpc.get_identity()
        version = rpc.get_version()
    assert identity == read_pubkey(ledger / chain.KEYPAIR_FILE)
    assert (version.solana_core, version.feature_set) == ("2.1.0", chain.feature_set("2.1.0"))
    secret = json.loads((ledger / chain.KEYPAIR_FILE).read_text())
    assert json.dumps(secret)[:40] not in node.output() and ",".join(map(str, secret[:8])) not in node.output()
    assert chain.verify_ledger(ledger).files > 0


def test_identity_file_and_json_rpc_errors(validator: Callable[..., Proc], tmp_path: Path) -> None:
    pubkey = write_keypair(tmp_path / "id.json", bytes(range(32)))
    make_ledger(tmp_path / "ledger", behind=0)
    node = validator(tmp_path / "ledger", "--identity-file", str(tmp_path / "id.json"))
    node.wait_serving()
    with node.rpc() as rpc:
        wait_for(
            node.alive(rpc.get_identity),
            lambda i: i == pubkey,
            timeout=5,
            interval=0.05,
            tolerate=(RpcError,),
            what="identity",
        )
        with pytest.raises(RpcError) as err:
            rpc.call("getBlockProduction")
        assert err.value.code == -32601 and "getBlockProduction" in str(err.value) and node.url in str(err.value)
    second = validator(tmp_path / "ledger")  # same ledger: locked by the first validator
    assert second.wait_exit() == EXIT_LEDGER
    assert "in use by another validator" in second.output()


# --------------------------------------------------------------------------- SIGTERM


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_finishes_in_flight_request(validator: Callable[..., Proc], tmp_path: Path) -> None:
    make_ledger(tmp_path / "ledger", behind=0)
    node = validator(tmp_path / "ledger")
    node.wait_serving()
    with node.rpc() as rpc:
        wait_for(node.alive(rpc.health), lambda r: r.body == "ok", timeout=10, interval=0.05, what="ok")
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "getSlot"}).encode()
    head = f"POST / HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(head.encode() + body[:10])  # the request is in flight: its body is incomplete
        with node.rpc() as rpc:  # barrier: the server has read our bytes before it answers this
            assert rpc.health().status_code == 200
        node.popen.send_signal(signal.SIGTERM)
        wait_for(lambda: _refuses(node.port), bool, timeout=5, interval=0.02, what="listener closed")
        assert node.popen.poll() is None  # still finishing our request
        s.sendall(body[10:])
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks).decode()
    status, _, rest = response.partition("\r\n")
    assert status == "HTTP/1.1 200 OK", response
    assert isinstance(json.loads(rest.split("\r\n\r\n", 1)[1])["result"], int)
    assert node.wait_exit() == 0
    assert "SIGTERM received" in node.output() and "progress persisted" in node.output()


# --------------------------------------------------------------------------- failure modes


@pytest.mark.parametrize("how", ["flag", "env"])
def test_crash_on_start(validator: Callable[..., Proc], tmp_path: Path, how: str) -> None:
    args, env = (["--fail", "crash-on-start"], None) if how == "flag" else ([], {"STANDIN_FAIL": "crash-on-start"})
    node = validator(tmp_path / "ledger", *args, env=env)
    assert node.wait_exit() == 1
    assert "crash-on-start" in node.output()
    assert not (tmp_path / "ledger").exists()


def test_never_healthy_stays_behind(validator: Callable[..., Proc], tmp_path: Path) -> None:
    start = make_ledger(tmp_path / "ledger", behind=0)
    node = validator(tmp_path / "ledger", env={"STANDIN_FAIL": "never-healthy"})
    node.wait_serving()
    with node.rpc() as rpc:
        h = wait_for(node.alive(rpc.health), lambda r: r.body != "unknown", timeout=10, interval=0.02, what="up")
        assert h.body == "behind"
        stuck = rpc.get_slot()
        tip0 = FAST.tip()
        wait_for(FAST.tip, lambda t: t >= tip0 + 50, timeout=5, interval=0.05, what="the tip to advance")
        assert rpc.get_slot() == stuck and rpc.health().body == "behind"
        assert not rpc.get_health_rpc().ok
    assert node.stop() == 0
    assert chain.read_slot(tmp_path / "ledger") == start  # no progress was made


def test_halt_at_slot_exits_cleanly(validator: Callable[..., Proc], tmp_path: Path) -> None:
    start = make_ledger(tmp_path / "ledger", behind=3000)
    node = validator(tmp_path / "ledger", "--fail", f"halt-at={start + 1500}")
    assert node.wait_exit(timeout=15) == 0
    assert chain.read_slot(tmp_path / "ledger") == start + 1500
    assert f"halted at slot {start + 1500}" in node.output()


def test_upgrade_height_refuses_old_version(validator: Callable[..., Proc], tmp_path: Path) -> None:
    start = make_ledger(tmp_path / "ledger", behind=3000)
    height = start + 1500
    old = validator(tmp_path / "ledger", "--fail", f"upgrade-height={height}:2.2.0", version="2.1.0")
    assert old.wait_exit(timeout=15) == EXIT_UPGRADE
    assert chain.read_slot(tmp_path / "ledger") == height
    assert f"slot {height} is an upgrade height requiring version >= 2.2.0" in old.output()

    new = validator(tmp_path / "ledger", "--fail", f"upgrade-height={height}:2.2.0", version="2.2.0")
    new.wait_serving()
    assert (
        wait_for(
            new.alive(lambda: slot_of(new)),
            lambda s: s > height,
            timeout=10,
            interval=0.05,
            tolerate=(RpcError,),
            what="replay past the upgrade height",
        )
        > height
    )
    assert new.stop() == 0


def test_failure_mode_parsing(validator: Callable[..., Proc], tmp_path: Path) -> None:
    assert FailureModes.parse(None) == FailureModes()
    assert FailureModes.parse("never-healthy, halt-at=5") == FailureModes(never_healthy=True, halt_at=5)
    assert FailureModes.parse("upgrade-height=9:v2.2.0").upgrade_height == (9, "v2.2.0")
    for bad in ("explode", "halt-at=x", "upgrade-height=5", "crash-on-start=1"):
        with pytest.raises(ConfigError, match="bad failure mode"):
            FailureModes.parse(bad)
    node = validator(tmp_path / "ledger", "--fail", "explode")
    assert node.wait_exit() == 2 and "bad failure mode 'explode'" in node.output()


# --------------------------------------------------------------------------- cluster and CLIs


def test_cluster_rpc_and_clis(spawn: Callable[..., Proc]) -> None:
    cluster = spawn("cluster", "--version", "2.1.0", "--rate-limit", "0")  # limits: test_cluster_rate_limit
    cluster.wait_serving()
    with cluster.rpc() as rpc:
        before = FAST.tip()
        slot = rpc.get_slot()
        assert before <= slot <= FAST.tip()
        assert rpc.health().body == "ok" and rpc.get_health_rpc().ok
        assert rpc.get_version().feature_set == chain.feature_set("2.1.0")

    def cli(*args: str, version_env: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "RUNBOOK_IMAGE_VERSION"} | FAST.to_env()
        if version_env:
            env["RUNBOOK_IMAGE_VERSION"] = version_env
        return subprocess.run(
            [sys.executable, "-m", "runbook.testbed.clis", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=PROJECT_ROOT,
            timeout=20,
        )

    before = FAST.tip()
    out = cli("solana", "-u", cluster.url, "slot")
    assert out.returncode == 0, out.stderr
    assert before <= int(out.stdout.strip()) <= FAST.tip()
    v = cli("--cli-version", "2.1.0", "agave-validator", "--version")
    assert v.stdout.strip() == chain.version_line("agave-validator", "2.1.0")
    assert v.stdout.startswith("agave-validator 2.1.0 (src:") and v.stdout.strip().endswith(", client:Agave)")
    assert cli("agave-validator", "--version", version_env="v2.2.1").stdout.startswith("agave-validator 2.2.1 ")
    missing = cli("agave-validator", "--version")
    assert missing.returncode == 1 and "RUNBOOK_IMAGE_VERSION" in missing.stderr
    assert cluster.stop() == 0
    down = cli("solana", "-u", cluster.url, "slot")
    assert down.returncode == 1 and cluster.url in down.stderr and "getSlot" in down.stderr


def test_a_validator_learns_the_chain_from_its_entrypoint_not_from_side_variables(
    spawn: Callable[..., Proc], validator: Callable[..., Proc], tmp_path: Path
) -> None:
    """Issue 8: on kind no manifest set the RUNBOOK_* chain variables, so a clone was never seen `behind`.
    A validator given only its manifest's args (--entrypoint) takes the cluster's parameters from it."""
    cluster = spawn("cluster")  # FAST parameters, from its own configuration
    cluster.wait_serving()
    slow = chain.ChainParams()  # what a validator without the cluster's parameters would assume
    assert slow.tip() != FAST.tip()
    ledger = tmp_path / "ledger"
    start = make_ledger(ledger, behind=3000)
    env = {var: "" for var in FAST.to_env()}  # nothing from the runner: the chain comes from the entrypoint
    node = validator(ledger, "--entrypoint", f"127.0.0.1:{cluster.port}", env=env)
    node.wait_serving()
    with node.rpc() as rpc:
        first = rpc.health().body
    assert first == "behind", f"a clone 3000 slots behind must report behind, got {first!r}"
    assert start < slot_of(node) <= FAST.tip()
    wait_for(node.alive(lambda: node.rpc().health().body), lambda body: body == "ok", timeout=20, interval=0.1,
             what="the clone to catch up with the entrypoint's cluster", tolerate=(AdapterError,))


def test_a_validator_whose_entrypoint_never_answers_says_so() -> None:
    from runbook.testbed.validator import join_cluster

    with pytest.raises(ConfigError, match="no entrypoint answered"):
        join_cluster([f"127.0.0.1:{free_port()}"], timeout=1.5)
