"""The idle colour's Deployment, derived from the live colour's object as the cluster holds it.

Production's Deployment carries flags the repository's template does not know (identity, entrypoints, known
validators, snapshots, tuning): blue must run with all of them. So blue is green's live object with exactly
the fields blue-green must change (:data:`CHANGED`), and nothing else:

- the name, and the colour label (metadata, selector, pod template);
- the RPC port, the gossip port and the dynamic port range (host network: the colours share the ports' space);
- the data paths: every hostPath that is one of the live colour's paths (ledger mount, accounts, identity)
  becomes the idle colour's (its clone, its copy, its own identity: agave's gossip makes the older instance
  with an identity exit when a newer one appears, design trap 9);
- the validator's image (the target version).

The live object is saved before anything touches it (in the journal and the evidence), and a rollback
re-creates it from that copy: :func:`restorable` drops only what the API server sets.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runbook.adapters.kube import COLOUR_LABEL
from runbook.errors import ConfigError
from runbook.manifests import APP_CONTAINER, set_arg

__all__ = ["CHANGED", "ColourShape", "derive", "differences", "restorable", "same_object"]

# What blue-green changes between the colours' Deployments (the test that proves blue equals green except
# these compares paths against this list).
CHANGED = (
    "metadata.name",
    f"labels {COLOUR_LABEL} (metadata, spec.selector, spec.template.metadata)",
    "agave-validator args: --rpc-port, --gossip-port, --dynamic-port-range",
    "hostPath volumes on the live colour's paths: ledger (the clone's mount), accounts (the copy), identity",
    "agave-validator image (the target version)",
    "doublezerod sidecar image: the one the live pod runs (a dz-upgrade patches the pod, not the template)",
)

PORT_FLAGS = {"rpc": "--rpc-port", "gossip": "--gossip-port", "dynamic": "--dynamic-port-range"}

# Set by the API server (or the local kubelet's store), never part of what the operator applied.
SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
                   "deletionTimestamp", "deletionGracePeriodSeconds")
SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision",)


@dataclass(frozen=True)
class ColourShape:
    """What differs between the colours, as the env says (one per colour)."""

    name: str
    colour: str
    rpc_port: int
    gossip_port: int | None
    dynamic_port_range: str | None
    paths: Mapping[str, str]  # role -> host path: "ledger", "accounts", "identity"


def restorable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as it can be applied again: the live object minus the API server's fields and status."""
    out = copy.deepcopy(dict(obj))
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for key in SERVER_METADATA:
        meta.pop(key, None)
    ann = meta.get("annotations")
    if isinstance(ann, dict):
        for key in SERVER_ANNOTATIONS:
            ann.pop(key, None)
        if not ann:
            meta.pop("annotations")
    return out


def _containers(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _relabel(labels: dict[str, Any] | None, colour: str) -> None:
    if labels is not None and COLOUR_LABEL in labels:
        labels[COLOUR_LABEL] = colour


def derive(live: Mapping[str, Any], *, source: ColourShape, target: ColourShape, image: str,
           sidecar: tuple[str, str] | None = None) -> dict[str, Any]:
    """The idle colour's Deployment: ``live`` (the live colour's object, as read) with exactly :data:`CHANGED`
    changed from ``source``'s values to ``target``'s. Every hostPath equal to one of ``source.paths`` (or under
    it) moves to the same role's path of ``target`` (the longest matching path wins); a role of ``source`` that
    no volume uses is an error (the env and the cluster disagree about where the live colour's data is).
    ``sidecar`` (name, image): the image the live pod's sidecar runs, when a dz-upgrade patched it in place
    (the template still names the old one; blue must not start a downgraded doublezerod)."""
    where = f"deployment {live.get('metadata', {}).get('name')}"
    dep = restorable(live)
    dep["metadata"]["name"] = target.name
    _relabel(dep["metadata"].get("labels"), target.colour)
    spec = dep["spec"]
    _relabel((spec.get("selector") or {}).get("matchLabels"), target.colour)
    template = spec["template"]
    _relabel(template.setdefault("metadata", {}).get("labels"), target.colour)
    pod = template["spec"]
    app = next((c for c in pod.get("containers", []) if c.get("name") == APP_CONTAINER), None)
    if app is None:
        raise ConfigError(f"{where}: no container named {APP_CONTAINER}")
    args = app.setdefault("args", [])
    set_arg(args, PORT_FLAGS["rpc"], str(target.rpc_port), where=where)
    if target.gossip_port is not None:
        set_arg(args, PORT_FLAGS["gossip"], str(target.gossip_port), where=where)
    if target.dynamic_port_range is not None:
        set_arg(args, PORT_FLAGS["dynamic"], target.dynamic_port_range, where=where)
    for c in _containers(pod):
        for p in c.get("ports") or []:
            for key in ("containerPort", "hostPort"):
                if p.get(key) == source.rpc_port:
                    p[key] = target.rpc_port
                elif source.gossip_port is not None and p.get(key) == source.gossip_port:
                    p[key] = target.gossip_port
    app["image"] = image
    if sidecar is not None:
        for c in pod.get("initContainers", []):
            if c.get("name") == sidecar[0]:
                c["image"] = sidecar[1]
    roles = sorted(source.paths, key=lambda r: len(source.paths[r].rstrip("/")), reverse=True)
    moved = set()
    for vol in pod.get("volumes", []):
        hp = vol.get("hostPath")
        if not hp:
            continue
        for role in roles:
            path = str(hp.get("path", "")).rstrip("/")
            base = source.paths[role].rstrip("/")
            if path == base or path.startswith(base + "/"):
                hp["path"] = target.paths[role].rstrip("/") + path[len(base):]
                moved.add(role)
                break
    missing = sorted(set(source.paths) - moved)
    if missing:
        raise ConfigError(f"{where}: no hostPath volume on the live colour's {', '.join(missing)} path "
                          f"({', '.join(source.paths[m] for m in missing)}): the env and the cluster disagree about "
                          "where the live colour's data is; refusing to derive the idle colour from it")
    return dep


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """The paths (``spec.template.spec.containers[0].args[3]``) where two JSON-like objects differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                out.append(sub)
            else:
                out.extend(differences(a[key], b[key], sub))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def same_object(saved: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """Where the live object differs from the saved one, both without the API server's fields: empty when a
    rollback re-created the saved object exactly."""
    return differences(restorable(saved), restorable(live))
