"""The stand-in validator takes agave-validator's flags as an RPC node on biscayne runs it: parsed with agave's
names and checks (pure), then honoured by a real process (identity refused when unreadable, snapshots
directory, --log, the entrypoint's genesis hash)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from runbook.testbed import cluster as cluster_mod
from runbook.testbed import gossip
from runbook.testbed.keypair import write_keypair
from runbook.testbed.validator import EXIT_STARTUP
from runbook.testbed.validator_args import DEFAULT_MAX_LEDGER_SHREDS, parse_args
from tests.testbed import test_validator
from tests.testbed.test_gossip import free_port_block
from tests.testbed.test_validator import Proc, free_port, make_ledger

spawn = test_validator.spawn  # the fixture: stand-ins as real processes on free loopback ports

KNOWN = ["7Np41oeYqPefeNQEHSv1UDhYrehxin3NStELsSKCT4K2", "GdnSyH3YtwcxFvQrVVJMm1JhTS4QVX7MFsX56uJLUfiZ"]


def production_args(*, identity: str = "/data/config/validator-identity.json", gossip_port: int = 8001,
                    rng: str = "8002-8030", rpc_port: int = 8899, ledger: str = "/data/ledger",
                    accounts: str = "/data/accounts", snapshots: str = "/data/snapshots", log: str = "-",
                    entrypoints: tuple[str, ...] = ("entrypoint.mainnet-beta.solana.com:8001",
                                                    "entrypoint2.mainnet-beta.solana.com:8001")) -> list[str]:
    """What an RPC node on biscayne passes to agave-validator (the shape, with parameters for a test)."""
    args = ["--identity", identity]
    for ep in entrypoints:
        args += ["--entrypoint", ep]
    for k in KNOWN:
        args += ["--known-validator", k]
    return [
        *args, "--expected-genesis-hash", cluster_mod.MAINNET_GENESIS_HASH, "--only-known-rpc",
        "--gossip-port", str(gossip_port), "--dynamic-port-range", rng,
        "--rpc-port", str(rpc_port), "--rpc-bind-address", "127.0.0.1", "--private-rpc", "--full-rpc-api",
        "--no-voting", "--ledger", ledger, "--accounts", accounts, "--snapshots", snapshots,
        "--limit-ledger-size", "--wal-recovery-mode", "skip_any_corrupted_record", "--log", log,
    ]


def test_productions_flags_parse_with_agaves_names() -> None:
    # the lead's base manifest's range (18 ports) is wide enough for agave 2.x (17), not for 3.x (25)
    assert parse_args([*production_args(rng="8002-8020"), "--version", "2.2.1"]).dynamic_port_range == (8002, 8020)
    a = parse_args([*production_args(), "--version", "2.1.0"])
    assert (a.identity_file, a.known_validators, a.only_known_rpc) == (
        Path("/data/config/validator-identity.json"), KNOWN, True)
    assert a.entrypoint == ["entrypoint.mainnet-beta.solana.com:8001", "entrypoint2.mainnet-beta.solana.com:8001"]
    assert (a.expected_genesis_hash, a.gossip_port, a.dynamic_port_range) == (
        cluster_mod.MAINNET_GENESIS_HASH, 8001, (8002, 8030))
    assert (a.rpc_port, a.bind, a.private_rpc, a.full_rpc_api, a.no_voting) == (8899, "127.0.0.1", True, True, True)
    assert (a.ledger, a.accounts, a.snapshots) == (Path("/data/ledger"), Path("/data/accounts"),
                                                   Path("/data/snapshots"))
    assert (a.limit_ledger_size, a.wal_recovery_mode, a.log) == (
        DEFAULT_MAX_LEDGER_SHREDS, "skip_any_corrupted_record", "-")
    assert parse_args([*production_args(), "--version", "2.1.0", "--limit-ledger-size", "60000000"]
                      ).limit_ledger_size == 60_000_000
    # the stand-in's older spellings keep working
    old = parse_args(["--version", "2.1.0", "--rpc-port", "1", "--ledger", "l", "--accounts", "a",
                      "--identity-file", "id.json", "--bind", "0.0.0.0"])
    assert (old.identity_file, old.bind, old.gossip_port, old.dynamic_port_range) == (Path("id.json"), "0.0.0.0",
                                                                                      None, None)


@pytest.mark.parametrize(("change", "says"), [
    (["--only-known-rpc"], "required arguments were not provided: --known-validator"),
    (["--known-validator", "not-a-key"], "Unable to parse as a base58 32-byte public key"),
    (["--expected-genesis-hash", "abc"], "Unable to parse as a base58 32-byte public key"),
    (["--dynamic-port-range", "9000-9010"], "Port range is too small.  Try --dynamic-port-range 9000-9017"),
    (["--dynamic-port-range", "9000-9020", "--version", "3.0.0"], "Try --dynamic-port-range 9000-9025"),
    (["--dynamic-port-range", "9000-8000"], "Invalid port range"),
    (["--dynamic-port-range", "18800-18900"], "contains --rpc-port 18899"),
    (["--dynamic-port-range", "8000-8100", "--gossip-port", "8001"], "contains --gossip-port 8001"),
    (["--gossip-port", "18899"], "--gossip-port and --rpc-port are both 18899"),
    (["--limit-ledger-size", "1000"], "--limit-ledger-size value was too small, the minimum value is 50000000"),
    (["--wal-recovery-mode", "yolo"], "invalid choice: 'yolo'"),
    (["--gossip-port", "70000"], "not a port"),
])
def test_bad_flags_are_refused_with_agaves_words(change: list[str], says: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--version", "2.1.0", "--rpc-port", "18899", "--ledger", "l", "--accounts", "a"]
    with pytest.raises(SystemExit) as exited:
        parse_args(base + change)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.integration
def test_a_production_shaped_validator_runs_on_the_testbed(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    cluster = spawn("cluster", "--rate-limit", "0", "--gossip-interval", "0.1", "--gossip-timeout", "1")
    cluster.wait_serving()
    key = write_keypair(tmp_path / "id.json", bytes([3]) * 32)
    make_ledger(tmp_path / "ledger", behind=0, size_mb=0.1)
    lo, rpc_port = free_port_block(31), free_port()
    args = production_args(identity=str(tmp_path / "id.json"), gossip_port=free_port(), rng=f"{lo}-{lo + 30}",
                           rpc_port=rpc_port, ledger=str(tmp_path / "ledger"), accounts=str(tmp_path / "accounts"),
                           snapshots=str(tmp_path / "snapshots"), log=str(tmp_path / "logs" / "validator.log"),
                           entrypoints=(f"127.0.0.1:{cluster.port}",))
    node = spawn("validator", "--version", "2.1.0", *args, port=rpc_port)
    node.wait_serving()
    log = tmp_path / "logs" / "validator.log"
    assert node.output() == "" and "agave-validator 2.1.0 starting" in log.read_text()  # --log: all of it there
    assert (tmp_path / "snapshots").is_dir()
    body = httpx.post(node.url, json={"jsonrpc": "2.0", "id": 1, "method": "getGenesisHash"}).json()
    assert body["result"] == cluster_mod.MAINNET_GENESIS_HASH
    assert node.stop() == 0
    assert key in log.read_text()


@pytest.mark.integration
def test_a_genesis_hash_mismatch_is_refused(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    other = "4uhcVJyU9pJkvQyS88uRDiswHXSCkY3zQawwpjk2NsNY"  # testnet's, not the cluster's
    cluster = spawn("cluster", "--rate-limit", "0")
    cluster.wait_serving()
    node = spawn("validator", "--version", "2.1.0", "--ledger", str(tmp_path / "l"), "--accounts",
                 str(tmp_path / "a"), "--entrypoint", f"127.0.0.1:{cluster.port}", "--expected-genesis-hash", other)
    assert node.wait_exit() == EXIT_STARTUP
    assert (f"Genesis hash mismatch: expected {other} but downloaded genesis hash is "
            f"{cluster_mod.MAINNET_GENESIS_HASH}") in node.output()


@pytest.mark.integration
@pytest.mark.parametrize("problem", ["missing", "garbage", "unreadable-dir"])
def test_an_identity_it_cannot_read_is_refused(spawn: Callable[..., Proc], tmp_path: Path, problem: str) -> None:
    identity = tmp_path / "id.json"
    if problem == "garbage":
        identity.write_text("[1, 2, 3]")
    elif problem == "unreadable-dir":
        identity.mkdir()
    node = spawn("validator", "--version", "2.1.0", "--ledger", str(tmp_path / "l"), "--accounts",
                 str(tmp_path / "a"), "--identity", str(identity), "--gossip-port", str(free_port()))
    assert node.wait_exit() == EXIT_STARTUP
    out = node.output()
    assert "refusing to start" in out and str(identity) in out
    assert problem != "missing" or not identity.exists()  # never made up
    assert not (tmp_path / "l" / "validator-keypair.json").exists()
    assert gossip.DUPLICATE_INSTANCE_MESSAGE.split(":")[0] not in out
