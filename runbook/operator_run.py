"""What ``runbook run NAME`` runs: exactly the procedure's operator scenario (tagged ``@operator`` in its
feature), never the feature's proofs, with the operator's parameters passed to pytest as options.

- ``agave-upgrade``: ``--target-version``, ``--cleanup`` (keep | destroy) and, for destroy on a production env,
  ``--confirm-destroy=<dataset>`` (the old colour's dataset; the procedure checks it against the colour it
  finds live before anything changes);
- ``dz-upgrade``: ``--target-version`` becomes pytest's ``--dz-target-version`` (an image tag of the sidecar);
- ``canary-promote``: ``--target-version`` becomes pytest's ``--canary-version`` (the release the canary runs);
- ``release``: ``--target-version`` becomes pytest's ``--release-version`` (the version released);
- ``hardfork-upgrade``: ``--target-version`` becomes pytest's ``--hardfork-version`` (the new binary's image tag).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runbook.env import PROJECT_ROOT, Env
from runbook.errors import ConfigError
from runbook.procedures.planning import CLEANUPS


@dataclass(frozen=True)
class Operator:
    feature: str
    marker: str  # pytest -m expression selecting the operator scenario of the feature
    version_option: str  # the pytest option the operator's --target-version becomes


OPERATORS = {
    "agave-upgrade": Operator("features/agave_upgrade.feature", "operator and upgrade", "--target-version"),
    "dz-upgrade": Operator("features/dz_upgrade.feature", "operator and doublezero", "--dz-target-version"),
    "canary-promote": Operator("features/canary_promote.feature", "operator and canary", "--canary-version"),
    "release": Operator("features/release.feature", "operator and release", "--release-version"),
    "hardfork-upgrade": Operator("features/hardfork.feature", "operator and hardfork", "--hardfork-version"),
}
NOT_RUN = {
    "agave-rollback": "it is how `runbook rollback agave-upgrade` rolls a finished upgrade back: run that",
    "seed-upgrade": "the seed document's procedure exists only for negative tests on a testbed",
    **{name: "a release with a known flaw exists only for negative tests on a testbed"
       for name in ("release-early-switch", "release-rollback-deletes-active", "release-deadline-resets")},
    **{name: "a hard fork as an earlier design had it exists only for negative tests on a testbed"
       for name in ("hardfork-seed-order", "hardfork-halt-signal")},
}


@dataclass(frozen=True)
class RunRequest:
    procedure: str
    target_version: str | None
    cleanup: str = "keep"
    confirm_destroy: str | None = None
    yes: bool = False


def operator(procedure: str) -> Operator:
    if procedure in NOT_RUN:
        raise ConfigError(f"{procedure} is not run by `runbook run`: {NOT_RUN[procedure]}")
    if procedure not in OPERATORS:
        raise ConfigError(f"unknown procedure {procedure!r}: `runbook run` runs {', '.join(sorted(OPERATORS))}")
    return OPERATORS[procedure]


def operator_scenario(procedure: str, root: Path = PROJECT_ROOT) -> str:
    """The title of the feature's one scenario tagged @operator (an error if there is none or several)."""
    path = root / operator(procedure).feature
    lines = path.read_text().splitlines()
    titles = [lines[i + 1].split(":", 1)[1].strip() for i, line in enumerate(lines[:-1])
              if "@operator" in line.split() and lines[i + 1].strip().startswith("Scenario")]
    if len(titles) != 1:
        raise ConfigError(f"{path}: expected one scenario tagged @operator, found {len(titles)}: {titles}")
    return titles[0]


def check(env: Env, req: RunRequest) -> None:
    if req.cleanup not in CLEANUPS:
        raise ConfigError(f"--cleanup={req.cleanup}: expected one of {', '.join(CLEANUPS)}")
    if req.cleanup != "keep" and req.procedure != "agave-upgrade":
        raise ConfigError(f"--cleanup is an option of agave-upgrade, not of {req.procedure}")
    if req.confirm_destroy and req.cleanup != "destroy":
        raise ConfigError("--confirm-destroy confirms --cleanup=destroy, which was not given")


def params(env: Env, req: RunRequest) -> dict[str, str]:
    """The parameters the scenario runs with, as the operator will read them before it runs."""
    out: dict[str, str] = {}
    default = (env.target_version if req.procedure == "agave-upgrade"
               else None if req.procedure in ("canary-promote", "release") else env.doublezero.target_version)
    version = req.target_version or (default if env.disposable else None)
    out["target_version"] = version or "(none given)"
    if req.procedure == "agave-upgrade":
        out["cleanup"] = req.cleanup + (" (the old colour's data and the pre-upgrade snapshot are kept: the rollback "
                                        "point)" if req.cleanup == "keep" else " (the old colour's data and the "
                                        "pre-upgrade snapshot are destroyed at the end: no rollback to them after)")
        if req.confirm_destroy:
            out["confirm_destroy"] = req.confirm_destroy
    return out


def pytest_argv(env_arg: str, req: RunRequest) -> list[str]:
    op = operator(req.procedure)
    argv = [sys.executable, "-m", "pytest", "features/", "-m", op.marker, f"--env={env_arg}", "--allow-mutations",
            "-o", "log_cli=true", "--log-cli-level=INFO"]  # progress (slots behind, ETA, MiB/s) live
    if req.target_version:
        argv.append(f"{op.version_option}={req.target_version}")
    if req.procedure == "agave-upgrade":
        argv.append(f"--cleanup={req.cleanup}")
        if req.confirm_destroy:
            argv.append(f"--confirm-destroy={req.confirm_destroy}")
    if req.yes:
        argv.append("--yes")
    return argv


def destroy_prompt(env: Env, live: str, target: str) -> tuple[str, str]:
    """(what will be destroyed, the dataset to type) for the interactive confirmation of --cleanup=destroy."""
    dataset = env.deployments.colour(live).data
    snapshot = f"{dataset}@{env.storage.snapshot_prefix}-{target}-<this run's id>"
    text = (f"--cleanup=destroy on PRODUCTION env {env.name}: after the upgrade, these are destroyed:\n"
            f"  the old colour's dataset   {dataset} ({live}, live now)\n"
            f"  the pre-upgrade snapshot   {snapshot}\n"
            "Rolling back to the old data is no longer possible afterwards.")
    return text, dataset
