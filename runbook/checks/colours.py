"""The colours' state after an upgrade or a rollback, read from the cluster, the storage and the validators.

Each check takes what it judges as observed by the caller (a step reads the ports, the check compares), so
it is a pure function a unit test can feed a trap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runbook.checks.core import Verdict, check, skipped, verdict

__all__ = ["COPY_ON_WRITE", "both_answer", "clone_of", "gone", "old_data_gone", "serves", "was_behind"]

COPY_ON_WRITE = ("zfs", "zvol", "btrfs", "reflink")
"""Backends whose clones share the snapshot's blocks (ZFS clones; the zvol model and reflink use
``cp --reflink=always``, which fails rather than copy; btrfs snapshots). ``copy`` makes full copies."""


@check(negative="tests/checks/test_colours.py::test_a_kept_dataset_or_snapshot_fails")
def old_data_gone(dataset: str, snapshot: str, *, datasets: Sequence[str], snapshots: Sequence[str]) -> Verdict:
    """After --cleanup=destroy, the old colour's dataset and the upgrade's snapshot are gone."""
    left = [d for d in datasets if d == dataset] + [s for s in snapshots if s.endswith("@" + snapshot)]
    return verdict("old dataset and snapshot", expected="none", observed={"datasets": sorted(datasets),
                   "snapshots": list(snapshots)}, problems=[f"{x} remains" for x in left], obj=dataset)


@check(negative="tests/checks/test_colours.py::test_the_wrong_colour_or_version_fails")
def serves(colour: str, *, served_by: str | None, state: Mapping[str, Any], version: str) -> Verdict:
    """``colour`` serves the ingress (X-Upstream), answers health ok, on ``version``."""
    problems = []
    if served_by != colour:
        problems.append(f"the ingress is served by {served_by}, not {colour}")
    if state.get("health") != "ok":
        problems.append(f"{colour} answers health {state.get('health')!r}")
    if state.get("version") != version:
        problems.append(f"{colour} runs {state.get('version')!r}, not {version!r}")
    return verdict(f"{colour} serving on {version}", expected={"served_by": colour, "health": "ok",
                                                               "version": version},
                   observed={"served_by": served_by, **state}, problems=problems, obj=colour)


@check(negative=("tests/checks/test_colours.py::test_not_a_clone_fails",
                 "tests/checks/test_colours.py::test_a_full_copy_is_not_passed_as_copy_on_write"))
def clone_of(dataset: str, snapshot: str, *, origin: str | None, backend: str) -> Verdict:
    """``dataset`` is a clone of ``snapshot`` (the storage's origin) on a copy-on-write backend. On the
    ``copy`` backend (a testbed without root) the clone is a full copy: the check is skipped with that
    reason, never passed."""
    title = f"origin of {dataset} ({backend})"
    if backend not in COPY_ON_WRITE:
        return skipped(title, f"storage backend {backend!r} makes full copies, not copy-on-write clones (no root "
                              "for btrfs, reflink or the zvol model here)", expected=snapshot)
    return verdict(title, expected=snapshot, observed=origin, obj=dataset,
                   problems=[] if origin == snapshot else [f"{dataset} is not a clone of {snapshot}: origin {origin}"])


@check(negative="tests/checks/test_colours.py::test_never_seen_behind_fails")
def was_behind(seen: Mapping[str, Any], *, distance: int) -> Verdict:
    """While catching up the idle colour answered ``behind``, more than ``distance`` slots from the tip (the
    catch-up was exercised, not skipped by a clone that was never behind)."""
    healths = list(seen.get("healths", []))
    most = seen.get("max_behind", 0) or 0
    problems = []
    if "behind" not in healths:
        problems.append(f"never answered behind (answers seen: {healths})")
    if most <= distance:
        problems.append(f"at most {most} slots behind, not more than {distance}")
    return verdict("health answers and the largest distance seen while catching up",
                   expected=f"`behind`, more than {distance} slots", observed=dict(seen), problems=problems)


@check(negative="tests/checks/test_colours.py::test_an_idle_colour_not_on_target_fails")
def both_answer(idle: Mapping[str, Any], live: Mapping[str, Any], *, version: str) -> Verdict:
    """The idle colour answers ok on the target version while the live one still answers ok."""
    problems = []
    if idle.get("health") != "ok" or idle.get("version") != version:
        problems.append(f"idle: health {idle.get('health')!r} on {idle.get('version')!r}, want ok on {version!r}")
    if live.get("health") != "ok":
        problems.append(f"live: health {live.get('health')!r}")
    return verdict("both colours", expected={"idle": {"health": "ok", "version": version}, "live": "ok"},
                   observed={"idle": dict(idle), "live": dict(live)}, problems=problems)


@check(negative="tests/checks/test_colours.py::test_anything_left_of_the_idle_colour_fails")
def gone(name: str, *, pods: Sequence[str], dataset: str, datasets: Sequence[str], accounts: str,
         accounts_left: bool) -> Verdict:
    """The idle colour's Deployment (its pods), its clone and its accounts copy are gone."""
    problems = [f"pods remain: {list(pods)}"] if pods else []
    if dataset in datasets:
        problems.append(f"{dataset} remains")
    if accounts_left:
        problems.append(f"{accounts} still holds files")
    return verdict(f"{name} pods, {dataset} and {accounts}", expected="none",
                   observed={"pods": list(pods), "datasets": list(datasets), f"anything in {accounts}": accounts_left},
                   problems=problems, obj=name)
