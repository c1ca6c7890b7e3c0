"""The shared chain model of the testbed: the cluster tip, release versions and the ledger directory.

The cluster tip is a pure function of wall-clock time and a shared genesis, so every stand-in (each
validator, the reference cluster RPC, the tests) agrees on it without talking to each other::

    tip(now) = floor((now - genesis_time) / slot_time)

A ledger directory holds real bytes, so a snapshot, clone or copy of it moves real data::

    <ledger>/progress.json          {"slot": N, ...}, replaced atomically (temp file + rename); written
                                    last by :func:`init_ledger`, so its presence marks a complete ledger
    <ledger>/data/shred-00000.bin   data files of random bytes (1 MiB each, the last one shorter)
    <ledger>/MANIFEST.sha256        one ``<sha256>  data/<file>`` line per data file (``sha256sum -c``)
    <ledger>/validator-keypair.json a Solana id.json generated on init (a secret: never printed)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.errors import ConfigError, TestbedError
from runbook.testbed.keypair import write_keypair

if TYPE_CHECKING:
    from runbook.env import TestbedConfig

PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "MANIFEST.sha256"
DATA_DIR = "data"
KEYPAIR_FILE = "validator-keypair.json"
CHUNK_BYTES = 1 << 20

# --------------------------------------------------------------------------- chain parameters


@dataclass(frozen=True)
class ChainParams:
    """Parameters every stand-in shares. Defaults match ``envs/local.yaml`` (testbed section)."""

    genesis_time: float = 1767225600.0  # 2026-01-01T00:00:00Z
    slot_time: float = 0.4  # seconds per slot at the tip
    replay_speed: float = 8.0  # replay runs this many times faster than the tip advances
    health_distance: int = 150  # slots behind the tip beyond which a node reports `behind`

    ENV_VARS = {
        "genesis_time": "RUNBOOK_GENESIS_TIME",
        "slot_time": "RUNBOOK_SLOT_TIME",
        "replay_speed": "RUNBOOK_REPLAY_SPEED",
        "health_distance": "RUNBOOK_HEALTH_DISTANCE",
    }

    def __post_init__(self) -> None:
        if not self.slot_time > 0:
            raise ConfigError(f"slot_time must be > 0 seconds, got {self.slot_time!r}")
        if not self.replay_speed > 0:
            raise ConfigError(f"replay_speed must be > 0, got {self.replay_speed!r}")
        if self.health_distance < 0:
            raise ConfigError(f"health_distance must be >= 0 slots, got {self.health_distance!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChainParams:
        """Read ``RUNBOOK_GENESIS_TIME``, ``RUNBOOK_SLOT_TIME`` (seconds), ``RUNBOOK_REPLAY_SPEED``,
        ``RUNBOOK_HEALTH_DISTANCE`` (slots); an unset variable keeps its default."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for field_name, var in cls.ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[field_name] = int(raw) if field_name == "health_distance" else float(raw)
            except ValueError as exc:
                raise ConfigError(f"environment variable {var}={raw!r}: not a number") from exc
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_testbed(cls, testbed: TestbedConfig) -> ChainParams:
        return cls(
            genesis_time=testbed.genesis_time,
            slot_time=testbed.slot_time,
            replay_speed=testbed.replay_speed,
            health_distance=testbed.health_distance,
        )

    def to_dict(self) -> dict[str, float | int]:
        return {"genesis_time": self.genesis_time, "slot_time": self.slot_time, "replay_speed": self.replay_speed,
                "health_distance": self.health_distance}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainParams:
        try:
            return cls(genesis_time=float(data["genesis_time"]), slot_time=float(data["slot_time"]),
                       replay_speed=float(data["replay_speed"]), health_distance=int(data["health_distance"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed chain parameters {dict(data)!r}: {exc}") from exc

    def to_env(self) -> dict[str, str]:
        """The environment variables that make a child process use these parameters."""
        return {
            "RUNBOOK_GENESIS_TIME": repr(self.genesis_time),
            "RUNBOOK_SLOT_TIME": repr(self.slot_time),
            "RUNBOOK_REPLAY_SPEED": repr(self.replay_speed),
            "RUNBOOK_HEALTH_DISTANCE": str(self.health_distance),
        }

    def tip(self, now: float | None = None) -> int:
        """The cluster tip at wall-clock time ``now`` (default: now)."""
        t = time.time() if now is None else now
        return max(0, math.floor((t - self.genesis_time) / self.slot_time))

    @property
    def replay_rate(self) -> float:
        """Slots per second a replaying node advances by."""
        return self.replay_speed / self.slot_time


# --------------------------------------------------------------------------- releases

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")


def parse_version(version: str) -> tuple[int, int, int]:
    """``"2.1.0"`` or ``"v2.1.0"`` (with an optional ``-suffix``) -> ``(2, 1, 0)``."""
    m = _VERSION.match(version.strip())
    if not m:
        raise ConfigError(f"not a release version: {version!r} (expected e.g. 2.1.0)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def feature_set(version: str) -> int:
    """A stable u32 standing in for agave's feature-set id (a hash of the release's active features)."""
    digest = hashlib.sha256(f"feature-set:{'.'.join(map(str, parse_version(version)))}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def source_id(version: str) -> str:
    """A stable 8-hex stand-in for the git commit a release was built from."""
    return hashlib.sha256(f"src:{'.'.join(map(str, parse_version(version)))}".encode()).hexdigest()[:8]


def version_line(program: str, version: str) -> str:
    """What ``agave-validator --version`` / ``solana --version`` print."""
    v = ".".join(map(str, parse_version(version)))
    return f"{program} {v} (src:{source_id(version)}; feat:{feature_set(version)}, client:Agave)"


# --------------------------------------------------------------------------- ledger


class LedgerCorrupt(TestbedError):
    """A ledger directory failed verification; ``obj`` names the offending file."""


@dataclass(frozen=True)
class LedgerInfo:
    path: str
    slot: int
    files: int
    size_bytes: int


def has_ledger(path: Path | str) -> bool:
    """True when ``path`` holds a complete ledger (its progress file exists)."""
    return (Path(path) / PROGRESS_FILE).is_file()


def write_slot(path: Path | str, slot: int) -> None:
    """Record ``slot`` as the ledger's progress, atomically (temp file, fsync, rename)."""
    target = Path(path) / PROGRESS_FILE
    tmp = target.with_name(f".{PROGRESS_FILE}.tmp-{os.getpid()}")
    payload = json.dumps({"slot": int(slot), "updated_at": round(time.time(), 3)})
    with open(tmp, "w") as f:
        f.write(payload + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def read_slot(path: Path | str) -> int:
    """The slot a ledger's progress file records."""
    target = Path(path) / PROGRESS_FILE
    try:
        data = json.loads(target.read_text())
    except FileNotFoundError as exc:
        raise LedgerCorrupt(f"ledger {path}: no {PROGRESS_FILE} (not a ledger?)", obj=str(target)) from exc
    except (OSError, ValueError) as exc:
        raise LedgerCorrupt(f"ledger {path}: {PROGRESS_FILE} is unreadable: {exc}", obj=str(target)) from exc
    slot = data.get("slot") if isinstance(data, dict) else None
    if not isinstance(slot, int) or isinstance(slot, bool) or slot < 0:
        raise LedgerCorrupt(f"ledger {path}: {PROGRESS_FILE} has no valid slot: {data!r}", obj=str(target))
    return slot


def init_ledger(
    path: Path | str, *, slot: int, size_mb: float, keypair: bool = True, chunk_bytes: int = CHUNK_BYTES
) -> LedgerInfo:
    """Create a ledger at ``slot`` holding ``size_mb`` MiB of data. Refuses to overwrite a complete one."""
    root = Path(path)
    if has_ledger(root):
        raise TestbedError(f"ledger {root} already exists (has {PROGRESS_FILE}); refusing to overwrite")
    if size_mb < 0:
        raise ConfigError(f"ledger size must be >= 0 MiB, got {size_mb!r}")
    root.mkdir(parents=True, exist_ok=True)
    data = root / DATA_DIR
    shutil.rmtree(data, ignore_errors=True)  # a half-finished earlier init
    data.mkdir()
    remaining = int(size_mb * (1 << 20))
    lines: list[str] = []
    index = 0
    while remaining > 0:
        n = min(chunk_bytes, remaining)
        chunk = os.urandom(n)
        name = f"shred-{index:05d}.bin"
        (data / name).write_bytes(chunk)
        lines.append(f"{hashlib.sha256(chunk).hexdigest()}  {DATA_DIR}/{name}\n")
        remaining -= n
        index += 1
    (root / MANIFEST_FILE).write_text("".join(lines))
    if keypair and not (root / KEYPAIR_FILE).exists():
        write_keypair(root / KEYPAIR_FILE, os.urandom(32))
    write_slot(root, slot)  # last: marks the ledger complete
    return LedgerInfo(path=str(root), slot=slot, files=index, size_bytes=int(size_mb * (1 << 20)))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _read_manifest(root: Path) -> dict[str, str]:
    manifest = root / MANIFEST_FILE
    try:
        text = manifest.read_text()
    except FileNotFoundError as exc:
        raise LedgerCorrupt(f"ledger {root}: {MANIFEST_FILE} is missing", obj=str(manifest)) from exc
    entries: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name.startswith(f"{DATA_DIR}/"):
            raise LedgerCorrupt(f"ledger {root}: {MANIFEST_FILE} line {n} is malformed: {line!r}", obj=str(manifest))
        entries[name] = digest
    return entries


def verify_ledger(path: Path | str) -> LedgerInfo:
    """Check the progress file and every data file against the manifest; raise :class:`LedgerCorrupt`
    naming the first offending file."""
    root = Path(path)
    if not root.is_dir():
        raise LedgerCorrupt(f"ledger {root}: not a directory", obj=str(root))
    slot = read_slot(root)
    entries = _read_manifest(root)
    data = root / DATA_DIR
    present = {f"{DATA_DIR}/{p.name}" for p in data.iterdir()} if data.is_dir() else set()
    if extra := sorted(present - entries.keys()):
        raise LedgerCorrupt(f"ledger {root}: {extra[0]} is not in {MANIFEST_FILE}", obj=str(root / extra[0]))
    size = 0
    for name, expected in entries.items():
        file = root / name
        if name not in present:
            raise LedgerCorrupt(f"ledger {root}: {name} is missing", obj=str(file))
        actual = _sha256_file(file)
        if actual != expected:
            raise LedgerCorrupt(
                f"ledger {root}: {name} is corrupt (sha256 {actual[:12]}…, manifest says {expected[:12]}…)",
                obj=str(file),
            )
        size += file.stat().st_size
    return LedgerInfo(path=str(root), slot=slot, files=len(entries), size_bytes=size)
