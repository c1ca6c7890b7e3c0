"""The Sei stand-in's chain model and on-disk state (:mod:`runbook.testbed.seid` runs the node).

The chain's tip is a pure function of wall-clock time and a shared genesis, as for the validator stand-in
(:mod:`runbook.testbed.chain`), so every instance agrees on it::

    tip(now) = floor((now - genesis_time) / block_time)

A node's home keeps ``data/seid-state.json`` (replaced atomically)::

    {"chain_id": "sei-testbed", "height": N,                     # the last committed height
     "versions": [{"from": a, "to": b, "version": "v6.3.0"}],   # which release processed each height
     "upgrades": {"v6.4.0": {"height": H, "version": "v6.4.0", "applied_at": t}},  # the handlers' marks
     "plan": {"name": "v6.4.0", "height": H}}                    # the plan learned from the network, if any

An old binary that stops at the plan's height writes ``data/upgrade-info.json`` (``{"name", "height", "info"}``),
as x/upgrade does before its panic (cosmovisor reads it).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import ConfigError, TestbedError
from runbook.testbed.chain import parse_version

STATE_FILE = Path("data") / "seid-state.json"
UPGRADE_INFO_FILE = Path("data") / "upgrade-info.json"
CHAIN_ID = "sei-testbed"


@dataclass(frozen=True)
class SeiChain:
    """Parameters every Sei stand-in shares: flags, else ``RUNBOOK_SEI_*`` variables, else these defaults."""

    genesis_time: float = 1767225600.0  # 2026-01-01T00:00:00Z
    block_time: float = 0.2  # seconds per block at the tip
    sync_speed: float = 10.0  # block sync runs this many times faster than the tip advances
    chain_id: str = CHAIN_ID

    ENV_VARS = {"genesis_time": "RUNBOOK_SEI_GENESIS_TIME", "block_time": "RUNBOOK_SEI_BLOCK_TIME",
                "sync_speed": "RUNBOOK_SEI_SYNC_SPEED"}

    def __post_init__(self) -> None:
        if not self.block_time > 0:
            raise ConfigError(f"block_time must be > 0 seconds, got {self.block_time!r}")
        if not self.sync_speed > 1:
            raise ConfigError(f"sync_speed must be > 1 (faster than the tip), got {self.sync_speed!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: float | None) -> SeiChain:
        env = os.environ if environ is None else environ
        values: dict[str, float] = {}
        for name, var in cls.ENV_VARS.items():
            raw = overrides.get(name)
            if raw is None and env.get(var, "").strip():
                try:
                    raw = float(env[var])
                except ValueError as exc:
                    raise ConfigError(f"environment variable {var}={env[var]!r}: not a number") from exc
            if raw is not None:
                values[name] = float(raw)
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        return {"RUNBOOK_SEI_GENESIS_TIME": repr(self.genesis_time), "RUNBOOK_SEI_BLOCK_TIME": repr(self.block_time),
                "RUNBOOK_SEI_SYNC_SPEED": repr(self.sync_speed)}

    def tip(self, now: float | None = None) -> int:
        t = time.time() if now is None else now
        return max(0, math.floor((t - self.genesis_time) / self.block_time))

    def block_time_at(self, height: int) -> float:
        """The wall-clock time block ``height`` was produced."""
        return self.genesis_time + height * self.block_time

    @property
    def sync_rate(self) -> float:
        """Blocks per second a syncing node commits."""
        return self.sync_speed / self.block_time


@dataclass
class NodeState:
    height: int
    chain_id: str = CHAIN_ID
    versions: list[dict[str, Any]] = field(default_factory=list)
    upgrades: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan: dict[str, Any] | None = None  # {"name", "height"}: a plan learned from the network (chain state)

    def version_at(self, height: int) -> str | None:
        """The release that processed ``height``, when this state recorded it."""
        for seg in self.versions:
            if seg["from"] <= height <= seg["to"]:
                return str(seg["version"])
        return None

    def record(self, version: str, first: int, last: int) -> None:
        """Heights ``first..last`` were processed by ``version`` (extends the last range when it continues)."""
        if last < first:
            return
        if self.versions and self.versions[-1]["version"] == version and self.versions[-1]["to"] >= first - 1:
            self.versions[-1]["to"] = max(self.versions[-1]["to"], last)
        else:
            self.versions.append({"from": first, "to": last, "version": version})

    def at(self, height: int) -> NodeState:
        """A copy of this state as it was at ``height`` (``<=`` its own): what a snapshot at that height holds."""
        versions = [{**seg, "to": min(seg["to"], height)} for seg in self.versions if seg["from"] <= height]
        upgrades = {k: dict(v) for k, v in self.upgrades.items() if int(v["height"]) <= height}
        return NodeState(height=height, chain_id=self.chain_id, versions=versions, upgrades=upgrades,
                         plan=dict(self.plan) if self.plan else None)

    def to_dict(self) -> dict[str, Any]:
        out = {"chain_id": self.chain_id, "height": self.height, "versions": self.versions, "upgrades": self.upgrades}
        if self.plan:
            out["plan"] = self.plan
        return out


def state_path(home: Path | str) -> Path:
    return Path(home) / STATE_FILE


def read_state(home: Path | str) -> NodeState | None:
    """The node state in ``home``, or None when it has none; a malformed file is a :class:`TestbedError`."""
    path = state_path(home)
    try:
        data = json.loads(path.read_text())
        return NodeState(height=int(data["height"]), chain_id=str(data.get("chain_id", CHAIN_ID)),
                         versions=list(data.get("versions", [])), upgrades=dict(data.get("upgrades", {})),
                         plan=dict(data["plan"]) if data.get("plan") else None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TestbedError(f"node state {path} is unreadable: {exc}", obj=str(path)) from exc


def write_state(home: Path | str, state: NodeState) -> None:
    _write_json(state_path(home), state.to_dict())


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_upgrade_info(home: Path | str, plan: UpgradePlan) -> Path:
    """``data/upgrade-info.json`` as x/upgrade writes it before its "UPGRADE NEEDED" panic; returns the path."""
    path = Path(home) / UPGRADE_INFO_FILE
    _write_json(path, {"name": plan.name, "height": plan.height, "info": ""})
    return path


@dataclass(frozen=True)
class UpgradePlan:
    """The on-chain plan: at ``height`` the binary must have the handler ``name``. Binaries of version
    ``min_version`` (default: the name itself, as Sei names upgrades after releases) and newer have it."""

    name: str
    height: int
    min_version: str | None = None

    def __post_init__(self) -> None:
        if self.height <= 0:
            raise ConfigError(f"upgrade height must be > 0, got {self.height}")
        parse_version(self.min_version or self.name)  # a ConfigError names the flag's value

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpgradePlan | None:
        """``{"name": N, "height": H}`` (a gov file, a state's plan; heights may be strings, as the REST API
        gives them) -> a plan; ``{}`` -> None. Anything else is a :class:`ConfigError`."""
        if not data:
            return None
        try:
            return cls(str(data["name"]), int(data["height"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not an upgrade plan {dict(data)!r}: expected name and height ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "height": self.height}

    def rest(self) -> dict[str, Any]:
        """The plan as ``GET /cosmos/upgrade/v1beta1/current_plan`` gives it."""
        return {"name": self.name, "time": "0001-01-01T00:00:00Z", "height": str(self.height), "info": "",
                "upgraded_client_state": None}

    def has_handler(self, version: str) -> bool:
        return parse_version(version) >= parse_version(self.min_version or self.name)

    def needed_msg(self) -> str:
        """x/upgrade BuildUpgradeNeededMsg (plan.DueAt() is ``height: H``; the plan's info is empty)."""
        return f'UPGRADE "{self.name}" NEEDED at height: {self.height}: '

    def early_msg(self) -> str:
        """x/upgrade BeginBlocker, a handler registered before the plan's height."""
        return (f'BINARY UPDATED BEFORE TRIGGER! UPGRADE "{self.name}" - in binary but not executed on chain. '
                "Downgrade your binary")

    def missing_msg(self) -> str:
        """x/upgrade BeginBlocker, the last completed upgrade's handler is not in this binary."""
        return f"upgrade handler is missing for {self.name} upgrade plan"
