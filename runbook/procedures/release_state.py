"""Seed 003's release state machine and history, kept in the cluster, and the colours' objects.

The state lives where the seed's operator keeps its CR status, in the cluster: a ConfigMap ``<app>-release``
(``release.state``) with ``state.json`` (phase, active colour, pending colour and when it was created, the old
colour, the target release) and ``history.json`` (the last ``release.history`` records: version, colour, image
tags, time, status Active, Superseded or Failed). Every run reads it first and advances it, so a run on another
machine, or after an interruption, continues where the last one stopped; it is written on the resourceVersion
read, so two runners never both advance it.

A colour's objects (two Deployments, two ConfigMaps, two Services, ``<app>-<component>-<colour>``) are derived
from the live active colour's (:func:`derive`): copied with the server's fields dropped, renamed to the other
colour, re-labelled, and the images' tags set. The first release, with no colour live, renders them from the
env's template (``release.template``, one colour).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from runbook.adapters.base import Objects
from runbook.env_release import COLOURS, ReleaseConfig
from runbook.errors import ConfigError

Phase = Literal["Stable", "Deploying", "Switching", "Cleanup", "Failed"]
Status = Literal["Active", "Superseded", "Failed"]
KINDS = ("ConfigMap", "Service", "Deployment")  # the order a colour's objects are created in (deleted in reverse)
COLOUR_LABEL = "colour"
VERSION_LABEL = "version"
_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink",
                  "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences")
_SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision", "kubectl.kubernetes.io/last-applied-configuration")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")  # a valid image tag


@dataclass(frozen=True)
class Target:
    """What a release deploys: its version and each component's image tag."""

    version: str
    tags: dict[str, str]
    rollback_of: str = ""  # a manual rollback: the version it returns to (the record it copies)


@dataclass(frozen=True)
class Record:
    version: str
    colour: str
    tags: dict[str, str]
    time: str  # RFC 3339, UTC
    status: Status


@dataclass
class State:
    phase: Phase = "Stable"
    active: str = ""  # the colour clients are on ("" before the first release)
    pending: str = ""  # the colour being deployed
    pending_deployed_at: float = 0.0  # Unix seconds: the pending colour's creation (its failure deadline's start)
    old: str = ""  # the colour Cleanup deletes
    target: Target | None = None
    history: list[Record] = field(default_factory=list)
    resource_version: str = ""  # of the ConfigMap as read ("" before it exists)

    @property
    def active_record(self) -> Record | None:
        return next((r for r in reversed(self.history) if r.status == "Active"), None)

    def to_data(self) -> dict[str, str]:
        st = {"phase": self.phase, "active": self.active, "pending": self.pending,
              "pending_deployed_at": self.pending_deployed_at, "old": self.old,
              "target": asdict(self.target) if self.target else None}
        return {"state.json": json.dumps(st, sort_keys=True),
                "history.json": json.dumps([asdict(r) for r in self.history], sort_keys=True)}


def other(colour: str) -> str:
    return COLOURS[1] if colour == COLOURS[0] else COLOURS[0]


def now_rfc3339(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def parse(data: Mapping[str, str], *, resource_version: str = "", where: str = "") -> State:
    """The state ConfigMap's data; anything malformed is refused with what was found (never guessed)."""
    try:
        st = json.loads(data.get("state.json") or "{}")
        hist = json.loads(data.get("history.json") or "[]")
        target = Target(**st["target"]) if st.get("target") else None
        state = State(phase=st.get("phase", "Stable"), active=st.get("active", ""), pending=st.get("pending", ""),
                      pending_deployed_at=float(st.get("pending_deployed_at") or 0.0), old=st.get("old", ""),
                      target=target, history=[Record(**r) for r in hist], resource_version=resource_version)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"the release state {where} is malformed: {exc}; fix or delete it by hand") from None
    if state.phase not in ("Stable", "Deploying", "Switching", "Cleanup", "Failed"):
        raise ConfigError(f"the release state {where} has an unknown phase {state.phase!r}")
    return state


def read(objects: Objects, cfg: ReleaseConfig) -> State:
    cm = objects.get_object("ConfigMap", cfg.state)
    if cm is None:
        return State()
    return parse(cm.get("data") or {}, resource_version=str(cm["metadata"].get("resourceVersion", "")),
                 where=f"(ConfigMap {cfg.state})")


def write(objects: Objects, cfg: ReleaseConfig, state: State) -> None:
    """Store the state on the resourceVersion it was read at (a conflict: someone else advanced it)."""
    meta: dict[str, Any] = {"name": cfg.state, "labels": {"app": cfg.app, "runbook/part": "release-state"}}
    if state.resource_version:
        meta["resourceVersion"] = state.resource_version
    objects.apply_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": state.to_data()})
    cm = objects.get_object("ConfigMap", cfg.state)
    state.resource_version = str((cm or {}).get("metadata", {}).get("resourceVersion", ""))


def add_record(history: list[Record], record: Record, limit: int) -> list[Record]:
    """The seed's addToReleaseHistory: the Active record becomes Superseded, the new one is appended, only the
    last ``limit`` are kept."""
    out = [Record(r.version, r.colour, r.tags, r.time, "Superseded") if r.status == "Active" else r for r in history]
    out.append(record)
    return out[-limit:]


def set_status(history: list[Record], version: str, colour: str, status: Status) -> list[Record]:
    """The newest record of ``version`` on ``colour`` with a new status (a failed release's, a rollback's)."""
    out = list(history)
    for i in range(len(out) - 1, -1, -1):
        if out[i].version == version and out[i].colour == colour:
            r = out[i]
            out[i] = Record(r.version, r.colour, r.tags, r.time, status)
            break
    return out


def check_version(version: str) -> str:
    if not _VERSION.match(version or ""):
        raise ConfigError(f"release version {version!r} is not a valid image tag (letters, digits, '.', '_', '-')")
    return version


# ----------------------------------------------------------------------------- the colours' objects


def colour_names(cfg: ReleaseConfig, colour: str) -> list[tuple[str, str]]:
    """(kind, name) of every object of a colour, in creation order."""
    return [(kind, cfg.name(comp, colour)) for kind in KINDS for comp in cfg.components]


def strip_server_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for k in _SERVER_FIELDS:
        meta.pop(k, None)
    ann = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _SERVER_ANNOTATIONS}
    if ann:
        meta["annotations"] = ann
    else:
        meta.pop("annotations", None)
    if out.get("kind") == "Service":
        spec = out.get("spec") or {}
        for k in ("clusterIP", "clusterIPs"):  # allocated by the API server for the new Service
            spec.pop(k, None)
    return out


def _relabel(labels: dict[str, Any] | None, colour: str, version: str | None) -> None:
    if labels is None:
        return
    if COLOUR_LABEL in labels:
        labels[COLOUR_LABEL] = colour
    if version is not None and VERSION_LABEL in labels:
        labels[VERSION_LABEL] = version


def _rename(value: Any, renames: Mapping[str, str]) -> Any:
    """Every string equal to an object name of the old colour names the new colour's object instead."""
    if isinstance(value, str):
        return renames.get(value, value)
    if isinstance(value, list):
        return [_rename(v, renames) for v in value]
    if isinstance(value, dict):
        return {k: _rename(v, renames) for k, v in value.items()}
    return value


def recolour(obj: Mapping[str, Any], cfg: ReleaseConfig, *, src: str, dst: str, target: Target) -> dict[str, Any]:
    """One object of colour ``src`` as colour ``dst`` at ``target``: names, labels (the colour, the version),
    selectors, the ConfigMap references, the ``COLOUR=`` line of a colour ConfigMap, and the images' tags."""
    renames = {cfg.name(comp, src): cfg.name(comp, dst) for comp in cfg.components}
    out = _rename(strip_server_fields(obj), renames)
    meta = out["metadata"]
    if meta.get("name") not in renames.values():
        raise ConfigError(f"{out.get('kind')} {meta.get('name')} is not an object of colour {src} "
                          f"({', '.join(sorted(renames))})")
    _relabel(meta.get("labels"), dst, target.version)
    kind = out.get("kind")
    if kind == "Deployment":
        spec = out["spec"]
        _relabel((spec.get("selector") or {}).get("matchLabels"), dst, None)
        tmeta = spec.setdefault("template", {}).setdefault("metadata", {})
        _relabel(tmeta.get("labels"), dst, target.version)
        comp = next(c for c in cfg.components if meta["name"] == cfg.name(c, dst))
        repo = cfg.images[comp]
        for c in spec["template"]["spec"].get("containers") or []:
            if str(c.get("image", "")).rsplit(":", 1)[0] == repo:
                c["image"] = f"{repo}:{target.tags[comp]}"
    elif kind == "Service":
        _relabel((out.get("spec") or {}).get("selector"), dst, None)
    elif kind == "ConfigMap":
        out["data"] = {k: re.sub(rf"(?m)^COLOUR={re.escape(src)}$", f"COLOUR={dst}", v)
                       for k, v in (out.get("data") or {}).items()}
    return out


def derive(live: Iterable[Mapping[str, Any]], cfg: ReleaseConfig, *, src: str, dst: str,
           target: Target) -> list[dict[str, Any]]:
    """The new colour's objects, in creation order, from the source colour's (live, or the template's)."""
    by_key = {(o.get("kind"), o.get("metadata", {}).get("name")): o for o in live}
    out = []
    for kind, name in colour_names(cfg, src):
        obj = by_key.get((kind, name))
        if obj is None:
            raise ConfigError(f"colour {src} has no {kind} {name}: cannot derive colour {dst} from it")
        out.append(recolour(obj, cfg, src=src, dst=dst, target=target))
    return out


def image_tags(deployment: Mapping[str, Any], repo: str) -> str:
    """The tag of ``repo``'s image in a Deployment's template ("" if none)."""
    for c in deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []:
        image = str(c.get("image", ""))
        if image.rsplit(":", 1)[0] == repo and ":" in image:
            return image.rsplit(":", 1)[1]
    return ""
