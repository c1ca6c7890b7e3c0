"""Seeds 001/002's node set as the hard-fork procedure reads and changes it through the ports: the chain (the
network's tip and its upgrade plan, over the network's RPC), each node's own view (``seid status`` run in its pod,
as an operator would), and the entrant's objects derived from the live incumbent StatefulSet (never from a
template): its claims, its bootstrap Jobs (the incumbent binary to H-1) and its StatefulSet (the new binary).
Used by :mod:`runbook.procedures.hardfork` and the hard-fork steps; nothing here keeps state of its own."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

from runbook.adapters.base import PodInfo
from runbook.adapters.sei import Plan
from runbook.env_hardfork import HardforkConfig
from runbook.errors import ConfigError, RunbookError
from runbook.procedures.framework import Context

NAME = "hardfork-upgrade"
BOOTSTRAP_FLAGS = ("--halt-height", "--snapshot-s3", "--target-height")
_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
                  "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences")
_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")


def cfg(ctx: Context[Any]) -> HardforkConfig:
    c: HardforkConfig = ctx.adapters.hardfork  # an env without the section: a ConfigError naming it
    return c


# ----------------------------------------------------------------------------- the chain
@dataclass(frozen=True)
class NodeView:
    """One node's own report (``seid status``): its version, height and whether it is still catching up."""

    pod: str
    version: str
    height: int
    catching_up: bool
    earliest: int | None = None

    def describe(self) -> str:
        return f"{self.pod}: {self.version} at {self.height}{' (catching up)' if self.catching_up else ''}"


def network_tip(ctx: Context[Any]) -> int:
    """The network's latest height (its RPC, through the adapters)."""
    return int(ctx.adapters.sei_network().tip())


def network_plan(ctx: Context[Any]) -> Plan | None:
    """The upgrade plan on chain (x/upgrade's current_plan), None when there is none."""
    plan: Plan | None = ctx.adapters.sei_network().plan()
    return plan


def rpc_port(template: dict[str, Any], container: str) -> int:
    """The node's RPC port in its pod template: the container port named ``rpc``, else 26657."""
    for c in template.get("spec", {}).get("containers", []):
        if c.get("name") == container:
            for p in c.get("ports") or []:
                if p.get("name") == "rpc":
                    return int(p["containerPort"])
    return 26657


def node_view(ctx: Context[Any], pod: PodInfo, port: int) -> NodeView | None:
    """``seid status`` in the pod against its own RPC (None while it does not answer: starting, restoring)."""
    c = cfg(ctx)
    if not pod.ip:
        return None
    try:
        res = ctx.adapters.workloads.exec(pod.name, c.container, ["seid", "status", "--node", f"tcp://{pod.ip}:{port}"],
                                          timeout=15.0)
    except RunbookError:
        return None
    if not res.ok:
        return None
    try:
        doc = json.loads(res.stdout)
        info = doc.get("sync_info") or doc.get("SyncInfo")
        node = doc.get("node_info") or doc.get("NodeInfo") or {}
        earliest = info.get("earliest_block_height")
        return NodeView(pod.name, str(node.get("version", "")), int(info["latest_block_height"]),
                        bool(info.get("catching_up")), int(earliest) if earliest is not None else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# ----------------------------------------------------------------------------- derivation
def tag_of(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else "latest"


def revision_for(version: str) -> str:
    """The entrant revision's name for a release (a label value and part of object names): v6.4.0 -> v6-4-0."""
    rev = re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-")
    if not rev or len(rev) > 40:
        raise ConfigError(f"cannot name a revision after version {version!r}")
    return rev


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for k in _SERVER_FIELDS:
        meta.pop(k, None)
    ann = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith("kubectl.kubernetes.io/")}
    if ann:
        meta["annotations"] = ann
    else:
        meta.pop("annotations", None)
    return out


def _container(template: dict[str, Any], name: str) -> dict[str, Any]:
    c: dict[str, Any]
    for c in template.get("spec", {}).get("containers", []):
        if c.get("name") == name:
            return c
    raise ConfigError(f"the node's pod template has no container {name!r} (hardfork.container)")


def incumbent_image(sts: dict[str, Any], c: HardforkConfig) -> str:
    return str(_container(sts["spec"]["template"], c.container)["image"])


def without_flags(args: list[str], names: tuple[str, ...] | list[str]) -> list[str]:
    """``args`` without those flags and their values (``--flag value`` or ``--flag=value``)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a.split("=", 1)[0] in names:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def with_flags(args: list[str], flags: dict[str, str]) -> list[str]:
    """``args`` with each flag set to its value (replaced where present)."""
    out = without_flags(args, list(flags))
    for k, v in flags.items():
        out += [k, v]
    return out


def _relabel(meta: dict[str, Any], c: HardforkConfig, revision: str) -> None:
    labels = dict(meta.get("labels") or {})
    labels[c.revision_label] = revision
    meta["labels"] = labels


def claim_template(sts: dict[str, Any]) -> dict[str, Any]:
    claims = sts["spec"].get("volumeClaimTemplates") or []
    if len(claims) != 1:
        raise ConfigError(f"statefulset {sts['metadata']['name']} has {len(claims)} volumeClaimTemplates: the "
                          "hard fork hands one data volume from the bootstrap to the node")
    return dict(claims[0])


def claim_name(sts_name: str, claim: str, ordinal: int) -> str:
    """A StatefulSet's claim for an ordinal (``<claim>-<statefulset>-<ordinal>``): made before the StatefulSet,
    it adopts it."""
    return f"{claim}-{sts_name}-{ordinal}"


def entrant_statefulset(sts: dict[str, Any], c: HardforkConfig, *, revision: str, image: str) -> dict[str, Any]:
    """The incumbent StatefulSet, renamed and relabelled for the entrant revision, on the new image."""
    out = strip(sts)
    out["metadata"]["name"] = c.statefulset(revision)
    _relabel(out["metadata"], c, revision)
    spec = out["spec"]
    spec["selector"] = {"matchLabels": {**(spec.get("selector", {}).get("matchLabels") or {}),
                                        c.revision_label: revision}}
    _relabel(spec["template"].setdefault("metadata", {}), c, revision)
    _container(spec["template"], c.container)["image"] = image
    for claim in spec.get("volumeClaimTemplates") or []:
        claim.pop("status", None)
        for k in _SERVER_FIELDS:
            claim.get("metadata", {}).pop(k, None)
    return out


def entrant_claims(sts: dict[str, Any], c: HardforkConfig, *, revision: str) -> list[dict[str, Any]]:
    """One claim per ordinal, from the volumeClaimTemplate, named as the entrant StatefulSet will look for it."""
    tmpl = claim_template(sts)
    name = c.statefulset(revision)
    replicas = int(sts["spec"].get("replicas", 1))
    out = []
    for i in range(replicas):
        claim = copy.deepcopy(tmpl)
        claim.pop("status", None)
        meta = claim.setdefault("metadata", {})
        for k in _SERVER_FIELDS:
            meta.pop(k, None)
        base = meta.get("name", "data")
        meta["name"] = claim_name(name, base, i)
        meta["labels"] = {**(meta.get("labels") or {}), "app": c.app, c.revision_label: revision}
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
                    "spec": claim.get("spec", {})})
    return out


def bootstrap_job(sts: dict[str, Any], c: HardforkConfig, *, revision: str, ordinal: int, image: str,
                  halt_height: int, peers: str | None = None) -> dict[str, Any]:
    """The bootstrap Job for one entrant ordinal: the incumbent's pod template on the incumbent binary, restored
    from the snapshot bucket to ``halt_height`` (H-1) and halted there, on the claim the StatefulSet adopts next
    (``peers``: state sync from these peers instead of the bucket). No probes (a bootstrap does not serve), out of
    every Service (its own app label), never restarted: a failed bootstrap fails the plan."""
    tmpl = copy.deepcopy(sts["spec"]["template"])
    claim = claim_template(sts)
    base = claim.get("metadata", {}).get("name", "data")
    meta = tmpl.setdefault("metadata", {})
    meta["labels"] = {"app": f"{c.app}-bootstrap", c.revision_label: revision}
    spec = tmpl["spec"]
    spec["restartPolicy"] = "Never"
    box = _container(tmpl, c.container)
    box["image"] = image
    for p in _PROBES:
        box.pop(p, None)
    args = list(box.get("args") or [])
    if peers:
        args = with_flags(without_flags(args, ("--snapshot-s3", "--target-height")),
                          {"--halt-height": str(halt_height), "--peers": peers})
    else:
        # the newest snapshot strictly below the halt height: one taken at H-1 itself would make seid commit the
        # next block (H) before halting (a halt height is enforced at commit), and the incumbent binary meets H
        args = with_flags(args, {"--halt-height": str(halt_height), "--snapshot-s3": c.snapshot_s3,
                                 "--target-height": str(halt_height - 1)})
    box["args"] = args
    vols = [v for v in spec.get("volumes") or [] if v.get("name") != base]
    vols.append({"name": base, "persistentVolumeClaim": {
        "claimName": claim_name(c.statefulset(revision), base, ordinal)}})
    spec["volumes"] = vols
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": c.bootstrap_job(revision, ordinal), "namespace": sts["metadata"].get("namespace"),
                         "labels": {"app": f"{c.app}-bootstrap", c.revision_label: revision}},
            "spec": {"backoffLimit": 0, "template": tmpl}}


def service_revision(svc: dict[str, Any] | None, c: HardforkConfig) -> str | None:
    if svc is None:
        return None
    return (svc.get("spec", {}).get("selector") or {}).get(c.revision_label)


def with_selector(svc: dict[str, Any], c: HardforkConfig, revision: str) -> dict[str, Any]:
    """The Service (as read: its resourceVersion carried, a compare-and-swap) with its selector on ``revision``."""
    out = copy.deepcopy(svc)
    out.pop("status", None)
    out["spec"]["selector"] = {**(out["spec"].get("selector") or {}), **c.selector(revision)}
    return out
