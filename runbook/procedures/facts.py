"""The facts a procedure run derives at its start and keeps in its journal, as typed fields.

A fact one step writes and another reads is a field of the procedure's facts class, so a misspelt name is a
type error (mypy) and an unknown one in a journal is refused, never a silent ``None``. Facts are JSON in the
journal (:meth:`Facts.to_json`, :meth:`Facts.load`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runbook.errors import RunbookError

__all__ = ["CanaryFacts", "DzFacts", "Facts", "HardforkFacts", "ReleaseFacts", "UpgradeFacts"]


@dataclass
class Facts:
    """What every run has: its id (names what it creates, like its snapshot)."""

    run_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load(self, data: Mapping[str, Any]) -> None:
        """Set the fields ``data`` names (a journal's facts); a name this class does not have is refused."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RunbookError(f"{type(self).__name__} has no field {', '.join(unknown)} (a journal written by another "
                               "procedure or version?)")
        for k, v in data.items():
            setattr(self, k, v)

    def __bool__(self) -> bool:
        """Derived already (a caller's facts, or a resumed run's): any field differs from a fresh instance's."""
        return self != type(self)()


@dataclass
class UpgradeFacts(Facts):
    """The agave upgrade's (and its rollbacks'): the colours, the images, the snapshot, the saved live object,
    and what was observed on the way."""

    live: str = ""
    idle: str = ""
    target_version: str = ""
    live_image: str = ""
    target_image: str = ""
    sidecar_image: str = ""
    snapshot: str = ""
    live_object: dict[str, Any] | None = None  # the live colour's Deployment as the cluster held it
    catch_up_seen: dict[str, Any] = field(default_factory=dict)  # evidence of the catch-up (behind, then ok)
    stopped_data: dict[str, Any] = field(default_factory=dict)  # storage facts read right after stop_live
    old_destroyed: bool = False  # --cleanup=destroy removed the old colour's data

    def colour(self, which: str) -> str:
        """The colour ``which`` ("live" or "idle") names in this run."""
        if which not in ("live", "idle"):
            raise ValueError(f"which colour: 'live' or 'idle', not {which!r}")
        return self.live if which == "live" else self.idle

    def saved_live_object(self) -> dict[str, Any]:
        """The live colour's Deployment saved at the start (save_live_object); a run without one cannot derive
        or restore it."""
        if self.live_object is None:
            raise RunbookError("the run's facts hold no saved live object (the run did not get past its start)")
        return self.live_object


@dataclass
class DzFacts(Facts):
    """The DoubleZero sidecar upgrade's: the pod, its images, and the observation before the patch."""

    colour: str = ""
    deployment: str = ""
    pod: str = ""
    target_version: str = ""
    old_image: str = ""
    target_image: str = ""
    index: int | None = None  # the sidecar's position in spec.initContainers
    already_at_target: bool = False
    before: dict[str, Any] = field(default_factory=dict)  # isolation.Observation.as_dict()
    drift: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class CanaryFacts(Facts):
    """The canary promotion's (seed 004): what it promotes, from which revision, and production's baseline."""

    canary_image: str = ""  # the canary's template image (``...:1.3.0-canary``)
    target_image: str = ""  # production's new image: the canary's without the suffix
    target_version: str = ""  # its tag (``1.3.0``)
    old_image: str = ""  # production's image before the promotion
    old_version: str = ""
    old_revision: int = 0  # production's revision before: the undo's target
    baseline: dict[str, Any] = field(default_factory=dict)  # production's latency histogram and traffic before
    rollout_started: float = 0.0  # Unix seconds: the gates' span starts here
    rollout_done: float = 0.0  # Unix seconds: the rollout was observed complete
    gates: list[dict[str, Any]] = field(default_factory=list)  # every gate evaluation, with its figures
    tag: str = ""  # the git tag finalization made
    commit: str = ""  # the VERSION commit it tagged
    to_revision: int = 0  # canary-undo: the revision named (its template becomes production's again)


@dataclass
class ReleaseFacts(Facts):
    """Seed 003's release: what it deploys, on which colour, and what it must leave as it was."""

    version: str = ""  # the release's version
    tags: dict[str, str] = field(default_factory=dict)  # component -> image tag
    rollback_of: str = ""  # a manual rollback: the version in the history it returns to
    active: str = ""  # the colour clients were on when the run started ("" before the first release)
    pending: str = ""  # the colour it deploys
    active_before: dict[str, Any] = field(default_factory=dict)  # the active colour's snapshot (checks.release)
    ready_since: float = 0.0  # Unix seconds: the new colour ready without a break since
    deleted: list[dict[str, Any]] = field(default_factory=list)  # the old colour's objects as cleanup deleted them


@dataclass
class HardforkFacts(Facts):
    """Seeds 001/002's hard fork: the plan's height, the revisions, and what must stay untouched."""

    upgrade: str = ""  # the on-chain plan's name
    height: int = 0  # H, the upgrade height: entrants bootstrap to H-1 and process H on the new binary
    incumbent: str = ""  # the revision the Service pins when the run starts
    entrant: str = ""  # the revision it creates
    incumbent_image: str = ""  # the incumbents' image
    bootstrap_image: str = ""  # the bootstrap's image: the incumbents' unless the operator names another
    bootstrap_peers: str = ""  # state sync from these peers instead of the snapshot bucket (operator's choice)
    image: str = ""  # the entrants' image (the new binary)
    incumbent_sts: dict[str, Any] = field(default_factory=dict)  # the incumbent StatefulSet as read (the source)
    incumbents_before: dict[str, Any] = field(default_factory=dict)  # pod -> containers' start and restarts
    incumbents_at_switch: dict[str, Any] = field(default_factory=dict)  # the same, read just before the teardown
    created_at: float = 0.0  # Unix seconds: the bootstrap Jobs created
    reached_h_at: float = 0.0  # Unix seconds: first seen the network at H (AwaitRunning's deadline counts from it)
    bootstrapped: dict[str, Any] = field(default_factory=dict)  # job -> how it ended (exit, reason, pod)
    running: dict[str, Any] = field(default_factory=dict)  # entrant pod -> its view when Running
