"""Procedures by name, and where each env keeps their journals."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runbook.env import PROJECT_ROOT, Env
from runbook.errors import ConfigError
from runbook.procedures.framework import Journal, Procedure
from runbook.procedures.journal import HostStore, JournalStore, LocalStore

HOST_JOURNAL_DIR = "/var/lib/runbook"


def registry() -> dict[str, Procedure]:
    from runbook.procedures import (
        agave_rollback,
        agave_upgrade,
        canary_promote,
        canary_undo,
        dz_upgrade,
        hardfork,
        hardfork_flaws,
        release,
        release_flaws,
        seed,
    )

    procs = [agave_upgrade.PROCEDURE, agave_rollback.AFTER_CLEANUP, dz_upgrade.PROCEDURE, seed.PROCEDURE,
             seed.IDENTITY_UNCHECKED, seed.WRITES_OLD_DATA, canary_promote.PROCEDURE, canary_undo.PROCEDURE,
             release.PROCEDURE, *release_flaws.FLAWED, hardfork.PROCEDURE,
             *hardfork_flaws.FLAWED]
    return {p.name: p for p in procs}


def get(name: str) -> Procedure:
    procs = registry()
    if name not in procs:
        raise ConfigError(f"unknown procedure {name!r}: known are {', '.join(sorted(procs))}")
    return procs[name]


def journal_store(env: Env) -> JournalStore:
    """Where every operator of the env finds its journals (and its lock):

    - a host reached over ssh (biscayne): on that host, ``/var/lib/runbook/<env>/``, through the host adapter
      (sudo when the host URL says ``?sudo=true``), whichever machine the operator runs from;
    - the local testbed: its state dir (``<state_dir>/journal``), beside everything else it made;
    - kind (``docker://`` node) and any other env: ``$XDG_STATE_HOME/runbook/<env>/`` on the runner; the
      kind cluster is the runner's own throwaway, and its node container is rebuilt with the cluster.
    """
    if env.host.startswith(("ssh://", "paramiko://", "safe-ssh://")):
        from runbook.adapters.host import TestinfraHost

        return HostStore(lambda: TestinfraHost(env.host, env_name=env.name), f"{HOST_JOURNAL_DIR}/{env.name}")
    if env.testbed is not None:
        sd = Path(env.testbed.state_dir)
        return LocalStore((sd if sd.is_absolute() else PROJECT_ROOT / sd) / "journal")
    return LocalStore(Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "runbook" / env.name)


def journal_for(env: Env, procedure: str) -> Journal:
    """The journal of ``procedure`` on ``env`` (see :func:`journal_store`)."""
    return Journal(store=journal_store(env), name=f"{procedure}.json")


def procedure_for(config: Any, name: str) -> Procedure:
    """The procedure a scenario runs for ``name``, after ``--procedure-override NAME=OTHER``."""
    for item in config.getoption("procedure_override") or []:
        src, _, dst = str(item).partition("=")
        if src == name and dst:
            return get(dst)
    return get(name)


def before_run(env: Env, procedure: str, target_version: str | None) -> str:
    """What `runbook run` checks before it starts the feature, so a refusal is one clear line and not a
    failed scenario: the env's lock is free (else :class:`~runbook.procedures.journal.Locked` names the
    holder) and the journal is readable. Where journals outlive a scenario (not on a testbed, whose baseline
    reset clears them), an unfinished run must be resumable with this target (else
    :class:`~runbook.procedures.framework.RunRefused` says how to go on). Returns what will happen."""
    from runbook.baseline import is_testbed
    from runbook.procedures.framework import env_option, resume_or_refuse

    journal = journal_for(env, procedure)
    with journal.lock(procedure, "run"):
        state = journal.load()
    if is_testbed(env):
        return f"journal {journal.where}: the testbed's baseline reset clears it before the scenario"
    params = dict(state.get("params") or {})
    if target_version:
        params["target_version"] = target_version
    if resume_or_refuse(state, procedure, params, env=env_option(env), where=journal.where) is None:
        return f"a new {procedure} run (journal {journal.where})"
    return (f"resuming the unfinished {procedure} run {state.get('facts', {}).get('run_id', '')} from "
            f"{journal.where}; completed: {', '.join(state.get('completed') or []) or 'nothing yet'}")
