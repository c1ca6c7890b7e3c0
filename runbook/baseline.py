"""The baseline every mutating scenario starts from and leaves: green serving alone.

Captured once per session from the live environment, before the first mutating scenario changes
anything: green's Deployment object as the cluster (or the local kubelet) holds it, Caddy's config and
upstream order, which Deployments, datasets and snapshots exist. :func:`restore` puts that back through
the ports only (workloads, storage, ingress; the journals through :func:`runbook.procedures.journal_for`),
so it runs the same on the local testbed and on kind:

- Caddy's config as captured (the upstream order with it);
- every Deployment that was not there (blue above all) deleted, with its pods;
- green's data present (recreated when a scenario destroyed it), every clone and dataset that was not
  there destroyed, every snapshot that was not there (the pre-upgrade ones) destroyed;
- green's Deployment re-applied verbatim when it differs from the captured object, its pod replaced when
  it does not run the template's images with every container running;
- every procedure's journal cleared;
- green serving the ingress, answering ``ok``.

It returns what it had to fix: empty when the environment was already the baseline. The local testbed's
extra abilities (re-seeding green's data, green's manifest when nothing is deployed yet) come in through
:class:`LocalExtras`; without them green's destroyed data is recreated from the promoted clone that
replaced it, through the storage port.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook.adapters.base import Dataset, PodInfo, Workloads
from runbook.adapters.caddy_config import same_upstreams, upstream_key
from runbook.adapters.rpc import RpcClient
from runbook.env import Env
from runbook.errors import AdapterError, CheckFailed, RunbookError, TestbedError
from runbook.procedures import bluegreen as bg
from runbook.procedures import journal_for, journal_store, registry
from runbook.procedures.journal import Journal, JournalCorrupt
from runbook.wait import wait_for

log = logging.getLogger("runbook")

Progress = Callable[[str], None]
SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision",)  # set by the controller, not by whoever applied
FINISHED = ("done", "rolled back")  # journal states of a run that left nothing half-done
RESTORE_SNAPSHOT = "baseline-restore"


class LeftBehind(CheckFailed):
    """A scenario left state behind: the baseline reset after it had to fix something."""


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class LocalExtras:
    """What only the local testbed can do, behind the same interface."""

    green_manifest: Callable[[], dict[str, Any]]  # green as the testbed deployed it (nothing deployed yet)
    reseed_green_data: Callable[[Progress], None]  # recreate green's data after a scenario destroyed it


@dataclass(frozen=True)
class Baseline:
    """The environment as a mutating scenario must find and leave it."""

    env: str
    green: dict[str, Any]  # green's Deployment, as read from the cluster (server-set fields removed)
    ingress: dict[str, Any]  # Caddy's config
    upstream_order: tuple[str, ...]
    deployments: tuple[str, ...]  # every Deployment present (never blue)
    datasets: tuple[str, ...]  # every dataset present (never blue's data)
    snapshots: tuple[str, ...]  # every snapshot present (never a pre-upgrade one)

    def describe(self) -> dict[str, Any]:
        return {"green": self.green["metadata"]["name"], "green images": template_images(self.green),
                "upstream order": list(self.upstream_order), "deployments": list(self.deployments),
                "datasets": list(self.datasets), "snapshots": list(self.snapshots)}


def is_testbed(env: Env) -> bool:
    """Where the baseline applies: the local testbed, or a kind testbed (never a production env, whose
    state after an operator's procedure is the new production, not something to undo)."""
    if env.production:
        return False
    return env.testbed is not None or (env.kube is not None and env.kube.context.startswith("kind-"))


# ------------------------------------------------------------------------------------------ objects
def read_deployment(workloads: Workloads, name: str) -> dict[str, Any] | None:
    """The live Deployment object, or None (``Workloads.deployment``)."""
    return workloads.deployment(name)


def sanitise(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Deployment as it can be applied again: no status, no server-set metadata."""
    meta = obj.get("metadata") or {}
    kept: dict[str, Any] = {k: copy.deepcopy(meta[k]) for k in ("name", "namespace", "labels") if meta.get(k)}
    notes = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in SERVER_ANNOTATIONS}
    if notes:
        kept["annotations"] = notes
    return {"apiVersion": obj.get("apiVersion", "apps/v1"), "kind": obj.get("kind", "Deployment"),
            "metadata": kept, "spec": copy.deepcopy(obj.get("spec") or {})}


def template_images(deployment: Mapping[str, Any]) -> dict[str, str]:
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    return {c["name"]: c["image"] for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]}


def differences(want: Any, have: Any, path: str = "", limit: int = 6) -> list[str]:
    """Where two JSON-like values differ: ``spec.replicas: 1 -> 0`` (at most ``limit`` entries)."""
    out: list[str] = []
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        for key in sorted(set(want) | set(have)):
            sub = f"{path}.{key}" if path else str(key)
            out += differences(want.get(key), have.get(key), sub, limit - len(out))
            if len(out) >= limit:
                break
    elif isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        for i, (a, b) in enumerate(zip(want, have, strict=True)):
            out += differences(a, b, f"{path}[{i}]", limit - len(out))
            if len(out) >= limit:
                break
    elif want != have:
        out.append(f"{path}: {_short(want)} -> {_short(have)}")
    return out[:limit]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _pods(workloads: Workloads, name: str) -> list[PodInfo]:
    """The pods of a Deployment; none when the Deployment does not exist."""
    try:
        return workloads.pods(name)
    except AdapterError:
        if name in workloads.deployments():
            raise
        return []


def _is_pre_upgrade(env: Env, snapshot: str) -> bool:
    return snapshot.partition("@")[2].startswith(f"{env.storage.snapshot_prefix}-")


# ------------------------------------------------------------------------------------------ capture
def capture(adapters: Any, *, extras: LocalExtras | None = None) -> Baseline:
    """Read the baseline from the live environment; refuse one that is not green serving alone."""
    env: Env = adapters.env
    green, blue = env.deployments.green, env.deployments.blue
    obj = read_deployment(adapters.workloads, green.name)
    if obj is None:
        if extras is None:
            raise TestbedError(f"cannot capture the baseline: deployment {green.name} is not in the cluster "
                               f"(bring the testbed up first)", env=env.name, obj=f"deployment/{green.name}")
        obj = extras.green_manifest()
    order = tuple(adapters.ingress.upstream_order())
    if not order or upstream_key(order[0]) != upstream_key(bg.upstream_address(env, "green")):
        raise TestbedError(f"cannot capture the baseline: Caddy's upstream order is {list(order)}, green "
                           f"({bg.upstream_address(env, 'green')}) must come first", env=env.name)
    datasets = adapters.storage.datasets()
    if green.data not in {d.name for d in datasets}:
        raise TestbedError(f"cannot capture the baseline: green's data {green.data} does not exist",
                           env=env.name, obj=green.data)
    return Baseline(
        env=env.name, green=sanitise(obj), ingress=copy.deepcopy(adapters.ingress.config()), upstream_order=order,
        deployments=tuple(d for d in adapters.workloads.deployments() if d != blue.name),
        datasets=tuple(sorted(d.name for d in datasets if d.name != blue.data)),
        snapshots=tuple(sorted(s for d in datasets if d.name != blue.data for s in d.snapshots
                               if not _is_pre_upgrade(env, s))))


# ------------------------------------------------------------------------------------------ restore
def restore(adapters: Any, baseline: Baseline, *, extras: LocalExtras | None = None,
            progress: Progress = _quiet) -> list[str]:
    """Put the environment back to ``baseline``; return what had to be fixed (empty: nothing)."""
    env: Env = adapters.env
    if baseline.env != env.name:
        raise TestbedError(f"a baseline of env {baseline.env} cannot restore env {env.name}", env=env.name)
    fixed = _restore_ingress(adapters, baseline)
    fixed += _remove_deployments(adapters, baseline)
    data_fixed, recreated = _restore_storage(adapters, baseline, extras, progress)
    fixed += data_fixed
    fixed += _remove_blue_accounts(adapters)
    fixed += _restore_green(adapters, baseline, replace_pod=recreated)
    fixed += clear_journals(env)
    if fixed:
        progress("reset to baseline: " + "; ".join(fixed))
    wait_serving(adapters, progress)
    return fixed


def _restore_ingress(adapters: Any, baseline: Baseline) -> list[str]:
    """Caddy's config as captured, then the order serving as captured (an order switch's file is not config)."""
    fixed = []
    if adapters.ingress.config() != baseline.ingress:
        adapters.ingress.load(copy.deepcopy(baseline.ingress))
        fixed.append("reloaded Caddy's config as captured")
    order = adapters.ingress.upstream_order()
    if not same_upstreams(order, baseline.upstream_order):
        adapters.ingress.set_upstream_order(list(baseline.upstream_order))
        fixed.append(f"upstream order {order} -> {list(baseline.upstream_order)}")
    return fixed


def _remove_deployments(adapters: Any, baseline: Baseline) -> list[str]:
    env: Env = adapters.env
    wl: Workloads = adapters.workloads
    green, blue = env.deployments.green.name, env.deployments.blue.name
    fixed = []
    # seed 004's proxy, seed 003's application and seeds 001/002's network are other systems beside agave: their
    # Deployments have their own baselines (canary_stack.reset; the release and hard-fork features start each
    # scenario from a reset of their own)
    other = {env.canary.production, env.canary.canary} if env.canary is not None else set()
    if env.release is not None:
        r = env.release
        other |= {r.gateway} | {r.name(comp, colour) for comp in r.components for colour in ("blue", "green")}
    if env.hardfork is not None:  # seeds 001/002: the network and the snapshot store (the hard-fork features reset)
        other |= set(env.hardfork.network)
    extra = [d for d in wl.deployments() if d not in baseline.deployments and d != green and d not in other]
    if blue not in extra and _pods(wl, blue):
        extra.append(blue)
    for name in extra:
        pods = [p.name for p in _pods(wl, name)]
        wl.delete_deployment(name, wait=True)
        fixed.append(f"deleted deployment {name}" + (f" (pods {', '.join(pods)})" if pods else ""))
    return fixed


def _restore_storage(adapters: Any, baseline: Baseline, extras: LocalExtras | None,
                     progress: Progress) -> tuple[list[str], bool]:
    """(what was fixed, whether green's data had to be recreated)."""
    env: Env = adapters.env
    storage = adapters.storage
    fixed = []
    names = {d.name: d for d in storage.datasets()}
    green = env.deployments.green
    recreated = green.data not in names
    if recreated:
        if green.name in adapters.workloads.deployments():  # nothing may run on data that is gone
            adapters.workloads.delete_deployment(green.name, wait=True)
        fixed.append(_recreate_green_data(adapters, names, extras, progress))
        names = {d.name: d for d in storage.datasets()}
    extra = [d for d in names.values() if d.name not in baseline.datasets]
    for ds in sorted(extra, key=lambda d: d.origin is None):  # clones before what they may come from
        if storage.mounted_at(ds.name) is not None:  # a volume left mounted (a failed run): no destroy under it
            storage.unmount(ds.name)
        storage.destroy(ds.name, recursive=True)
        fixed.append(f"destroyed dataset {ds.name}" + (f" (a clone of {ds.origin})" if ds.origin else ""))
    for ds in storage.datasets():
        for snap in reversed(ds.snapshots):
            if snap not in baseline.snapshots:
                storage.destroy(snap)
                fixed.append(f"destroyed snapshot {snap}")
    missing = sorted(set(baseline.datasets) - {d.name for d in storage.datasets()})
    if missing:
        raise TestbedError(f"the baseline's datasets {missing} are gone and cannot be recreated", env=env.name)
    return fixed, recreated


def _remove_blue_accounts(adapters: Any) -> list[str]:
    """Blue's accounts directory holds nothing in the baseline (green serves): a copy left there is removed."""
    from runbook.adapters.accounts_copy import AccountsCopy

    env: Env = adapters.env
    green, blue = env.deployments.green.accounts, env.deployments.blue.accounts
    copy = AccountsCopy(adapters.host, adapters.host_path(green), adapters.host_path(blue))
    left = copy.measure(copy.dst)
    if left is None or left.entries == 0:
        return []
    copy.remove()
    return [f"removed {left.files} files left in {blue}"]


def _recreate_green_data(adapters: Any, names: Mapping[str, Dataset], extras: LocalExtras | None,
                         progress: Progress) -> str:
    env: Env = adapters.env
    green, blue = env.deployments.green, env.deployments.blue
    if extras is not None:
        extras.reseed_green_data(progress)
        return f"recreated {green.data} (re-seeded: a scenario had destroyed it)"
    donor = names.get(blue.data)
    if donor is None:
        raise TestbedError(f"green's data {green.data} is gone and no clone of it remains to recreate it from",
                           env=env.name, obj=green.data)
    storage = adapters.storage
    snap = storage.snapshot(blue.data, RESTORE_SNAPSHOT)
    storage.clone(snap, green.data)
    storage.promote(green.data)
    return f"recreated {green.data} from {blue.data}, the promoted clone that had replaced it"


def _restore_green(adapters: Any, baseline: Baseline, *, replace_pod: bool) -> list[str]:
    env: Env = adapters.env
    wl: Workloads = adapters.workloads
    name = env.deployments.green.name
    live = read_deployment(wl, name)
    fixed = []
    if live is None:
        wl.apply_deployment(copy.deepcopy(baseline.green))
        fixed.append(f"recreated deployment {name} as captured")
    else:
        diff = differences(baseline.green, sanitise(live))
        if diff:
            wl.apply_deployment(copy.deepcopy(baseline.green))
            fixed.append(f"re-applied deployment {name} as captured (it differed: {'; '.join(diff)})")
        else:
            why = "its data was recreated" if replace_pod else pod_problem(_pods(wl, name), baseline)
            if why:
                wl.delete_deployment(name, wait=True)
                wl.apply_deployment(copy.deepcopy(baseline.green))
                fixed.append(f"replaced {name}'s pod ({why})")
    pod = wl.wait_rollout(name, timeout=env.timeouts.rollout)
    why = pod_problem([pod], baseline)
    if why:
        raise TestbedError(f"{name} rolled out from the captured baseline, yet {why}", env=env.name, obj=name)
    return fixed


def pod_problem(pods: list[PodInfo], baseline: Baseline) -> str:
    """Why green's pods are not the baseline's (one pod, the template's images, every container running)."""
    if len(pods) != 1:
        return f"{len(pods)} pods instead of 1" + (f" ({', '.join(p.name for p in pods)})" if pods else "")
    pod, want = pods[0], template_images(baseline.green)
    if pod.spec_images != want:
        return f"pod {pod.name} runs {pod.spec_images}, the template says {want}"
    down = [f"{c.name} {c.state}{' ' + c.reason if c.reason else ''}" for c in pod.containers
            if c.state != "running" or not c.ready]
    return f"pod {pod.name}: {', '.join(down)}" if down else ""


def journal_dir(env: Env) -> Path:
    return journal_for(env, "any").path.parent


def clear_journals(env: Env) -> list[str]:
    """Clear every procedure's journal. A finished run's is routine; an unfinished or corrupt one is reported."""
    fixed = []
    store = journal_store(env)
    for name in sorted({f"{proc}.json" for proc in registry()} | set(store.names())):
        journal = Journal(store=store, name=name)
        try:
            state = journal.load()
        except JournalCorrupt as exc:
            journal.clear()
            fixed.append(f"cleared the corrupt journal {name} ({exc.message.split('. ')[0]})")
            continue
        if not state:
            continue
        journal.clear()
        status = state.get("status")
        if status not in FINISHED:
            fixed.append(f"cleared the journal {name} of an unfinished {state.get('procedure', '?')} run "
                         f"(status {status!r})")
        else:
            log.info("cleared the journal %s (%s run %s)", journal.where, state.get("procedure"), status)
    return fixed


def wait_serving(adapters: Any, progress: Progress = _quiet) -> None:
    """Until green serves the ingress, answering ``ok`` through it. Which colour served is read from the
    upstream header; behind an ingress that does not send it (the seed's), from green being the only
    colour with pods (:func:`runbook.procedures.bluegreen.live_colour`)."""
    env: Env = adapters.env
    progress("waiting until green answers `ok` through the ingress")
    with RpcClient(url=env.ingress.url, timeout=3.0) as public:
        def observe() -> tuple[str | None, str]:
            return bg.live_colour(env, adapters.workloads, adapters=adapters)[0], public.health().verdict

        wait_for(observe, lambda seen: seen == ("green", "ok"), timeout=env.timeouts.healthy, interval=0.2,
                 what=f"{env.ingress.url} to be served by green answering ok", tolerate=(RunbookError,),
                 env=env.name, obj="baseline")


def check_left_nothing(fixed: list[str], *, env: str, scenario: str) -> None:
    """Raise :class:`LeftBehind` naming everything the reset after ``scenario`` had to fix."""
    if fixed:
        raise LeftBehind(f"the scenario left state behind; the baseline reset had to: {'; '.join(fixed)}",
                         expected=[], observed=fixed, env=env, obj=scenario)
