"""Procedures by name, and where each env keeps their journals."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runbook.env import PROJECT_ROOT, Env
from runbook.errors import ConfigError
from runbook.procedures.framework import Journal, Procedure


def registry() -> dict[str, Procedure]:
    from runbook.procedures import agave_rollback, agave_upgrade, dz_upgrade, seed

    procs = [agave_upgrade.PROCEDURE, agave_rollback.AFTER_CLEANUP, dz_upgrade.PROCEDURE, seed.PROCEDURE]
    return {p.name: p for p in procs}


def get(name: str) -> Procedure:
    procs = registry()
    if name not in procs:
        raise ConfigError(f"unknown procedure {name!r}: known are {', '.join(sorted(procs))}")
    return procs[name]


def journal_for(env: Env, procedure: str) -> Journal:
    """The local testbed keeps journals in its state dir; real envs under $XDG_STATE_HOME/runbook/<env>."""
    if env.testbed is not None:
        sd = Path(env.testbed.state_dir)
        base = (sd if sd.is_absolute() else PROJECT_ROOT / sd) / "journal"
    else:
        base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "runbook" / env.name
    return Journal(base / f"{procedure}.json")


def procedure_for(config: Any, name: str) -> Procedure:
    """The procedure a scenario runs for ``name``, after ``--procedure-override NAME=OTHER``."""
    for item in config.getoption("procedure_override") or []:
        src, _, dst = str(item).partition("=")
        if src == name and dst:
            return get(dst)
    return get(name)
