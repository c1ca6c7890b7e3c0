"""The chain model: tip arithmetic, parameters from the environment, versions, and the ledger format."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from runbook.env import load_env
from runbook.errors import ConfigError, TestbedError
from runbook.testbed import chain
from runbook.testbed.chain import ChainParams, LedgerCorrupt

# --------------------------------------------------------------------------- tip and parameters


def test_tip_is_a_pure_function_of_time() -> None:
    p = ChainParams(genesis_time=1000.0, slot_time=0.5)
    assert p.tip(1000.0) == 0
    assert p.tip(1000.49) == 0
    assert p.tip(1000.5) == 1
    assert p.tip(1000.0 + 0.5 * 12345 + 0.1) == 12345
    assert p.tip(900.0) == 0  # before genesis
    assert p.replay_rate == pytest.approx(8.0 / 0.5)


def test_defaults_match_the_local_env() -> None:
    tb = load_env("local").testbed
    assert tb is not None
    assert ChainParams.from_env({}) == ChainParams()
    p = ChainParams.from_testbed(tb)
    assert (p.slot_time, p.replay_speed, p.health_distance) == (tb.slot_time, tb.replay_speed, tb.health_distance)


def test_from_env_overrides_and_round_trips() -> None:
    env = {
        "RUNBOOK_SLOT_TIME": "0.01",
        "RUNBOOK_REPLAY_SPEED": "30",
        "RUNBOOK_HEALTH_DISTANCE": "20",
        "RUNBOOK_GENESIS_TIME": "1767225600.25",
    }
    p = ChainParams.from_env(env)
    assert (p.slot_time, p.replay_speed, p.health_distance, p.genesis_time) == (0.01, 30.0, 20, 1767225600.25)
    assert ChainParams.from_env(p.to_env()) == p
    assert ChainParams.from_env({"RUNBOOK_SLOT_TIME": ""}) == ChainParams()


@pytest.mark.parametrize(
    ("var", "value", "problem"),
    [
        ("RUNBOOK_SLOT_TIME", "fast", "RUNBOOK_SLOT_TIME='fast': not a number"),
        ("RUNBOOK_HEALTH_DISTANCE", "1.5", "RUNBOOK_HEALTH_DISTANCE='1.5': not a number"),
        ("RUNBOOK_SLOT_TIME", "0", "slot_time must be > 0"),
        ("RUNBOOK_REPLAY_SPEED", "-1", "replay_speed must be > 0"),
    ],
)
def test_from_env_rejects_bad_values(var: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        ChainParams.from_env({var: value})


# --------------------------------------------------------------------------- versions


def test_versions_and_version_line() -> None:
    assert chain.parse_version("v2.1.0") == chain.parse_version("2.1.0") == (2, 1, 0)
    assert chain.parse_version("2.10.3-rc1") == (2, 10, 3)
    assert chain.parse_version("2.1.0") < chain.parse_version("2.2.0") < chain.parse_version("2.10.0")
    with pytest.raises(ConfigError, match="not a release version"):
        chain.parse_version("latest")
    assert chain.feature_set("v2.1.0") == chain.feature_set("2.1.0") != chain.feature_set("2.2.0")
    assert 0 <= chain.feature_set("2.1.0") < 2**32
    line = chain.version_line("agave-validator", "v2.1.0")
    assert re.fullmatch(r"agave-validator 2\.1\.0 \(src:[0-9a-f]{8}; feat:\d+, client:Agave\)", line), line


# --------------------------------------------------------------------------- ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    chain.init_ledger(tmp_path / "ledger", slot=4242, size_mb=2.5)
    return tmp_path / "ledger"


def test_init_writes_real_data_and_a_manifest(ledger: Path) -> None:
    info = chain.verify_ledger(ledger)
    assert (info.slot, info.files, info.size_bytes) == (4242, 3, int(2.5 * 2**20))
    assert chain.read_slot(ledger) == 4242
    blobs = [p.read_bytes() for p in sorted((ledger / "data").iterdir())]
    assert len(set(blobs)) == 3 and len(blobs[-1]) == 2**19  # distinct random chunks, last one short
    lines = (ledger / chain.MANIFEST_FILE).read_text().splitlines()
    assert lines[0] == f"{hashlib.sha256(blobs[0]).hexdigest()}  data/shred-00000.bin"  # sha256sum -c format
    assert (ledger / chain.KEYPAIR_FILE).stat().st_mode & 0o777 == 0o600


def test_init_refuses_to_overwrite_a_ledger(ledger: Path) -> None:
    with pytest.raises(TestbedError, match="already exists"):
        chain.init_ledger(ledger, slot=1, size_mb=0)


def test_write_slot_is_atomic_and_leaves_no_temp_file(ledger: Path) -> None:
    chain.write_slot(ledger, 5000)
    assert chain.read_slot(ledger) == 5000
    assert sorted(p.name for p in ledger.iterdir() if p.name.startswith(".")) == []


def test_a_copy_verifies_and_is_independent(ledger: Path, tmp_path: Path) -> None:
    shutil.copytree(ledger, tmp_path / "clone")
    chain.write_slot(tmp_path / "clone", 9999)
    assert chain.verify_ledger(tmp_path / "clone").slot == 9999
    assert chain.read_slot(ledger) == 4242


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "message", "culprit"),
    [
        (lambda d: _flip(d / "data/shred-00002.bin"), "data/shred-00002.bin is corrupt", "data/shred-00002.bin"),
        (lambda d: (d / "data/shred-00001.bin").unlink(), "data/shred-00001.bin is missing", "data/shred-00001.bin"),
        (lambda d: (d / "data/extra.bin").write_bytes(b"x"), "data/extra.bin is not in MANIFEST", "data/extra.bin"),
        (lambda d: (d / chain.MANIFEST_FILE).unlink(), "MANIFEST.sha256 is missing", chain.MANIFEST_FILE),
        (lambda d: (d / chain.MANIFEST_FILE).write_text("nonsense\n"), "line 1 is malformed", chain.MANIFEST_FILE),
        (lambda d: (d / chain.PROGRESS_FILE).write_text("{"), "progress.json is unreadable", chain.PROGRESS_FILE),
        (lambda d: (d / chain.PROGRESS_FILE).write_text('{"slot": -3}'), "no valid slot", chain.PROGRESS_FILE),
        (lambda d: (d / chain.PROGRESS_FILE).unlink(), "no progress.json", chain.PROGRESS_FILE),
    ],
)
def test_verify_names_the_corrupt_file(ledger: Path, damage: object, message: str, culprit: str) -> None:
    damage(ledger)  # type: ignore[operator]
    with pytest.raises(LedgerCorrupt, match=re.escape(message)) as err:
        chain.verify_ledger(ledger)
    assert err.value.obj == str(ledger / culprit)
    assert str(ledger) in str(err.value)


def test_has_ledger_and_empty_size(tmp_path: Path) -> None:
    assert not chain.has_ledger(tmp_path / "nothing")
    info = chain.init_ledger(tmp_path / "small", slot=0, size_mb=0, keypair=False)
    assert chain.has_ledger(tmp_path / "small") and info.files == 0
    assert not (tmp_path / "small" / chain.KEYPAIR_FILE).exists()
    assert chain.verify_ledger(tmp_path / "small").size_bytes == 0
