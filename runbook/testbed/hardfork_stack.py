"""Seeds 001/002 on the local testbed: the Sei node set before a hard fork (deploy/k8s/hardfork), brought up on
demand (:func:`ensure`) beside the agave testbed and stopped with it (every process is under the testbed's
supervisord): the governance ConfigMap, the S3 snapshot store, the network's validator, the incumbents (StatefulSet
``sei-rpc-r1``, 2 pods, a claim each) and the Services, served by the testbed's controller, cluster DNS and
kube-proxy.

What each part is on kind, and here:

- the Deployments (``sei-validator``, ``sei-s3``) and the StatefulSet: the same manifests, stored by the testbed's
  kubelet (:class:`~runbook.testbed.kubelet.LocalWorkloads`: its workloads and batch ports) and run by its
  controller (:mod:`runbook.testbed.kube_controller`, :mod:`runbook.testbed.kube_sets`); the validator's
  governance volume is refreshed every ``testbed.configmap_sync`` (a plan written to the ConfigMap is seen late,
  as on a cluster);
- the images: the env's images map, ``sei:v<version>`` the stand-in (:mod:`runbook.testbed.seid`), and
  ``runbook/s3-server:<version>`` moto's S3 server from ``.venv/s3-server`` (``python -m
  runbook.testbed.hardfork_stack s3-server ARGS`` execs it: :mod:`runbook.testbed.s3store`);
- the Services by name: the cluster DNS (:mod:`runbook.testbed.kube_dns`) and the kube-proxy on each clusterIP;
  the NodePorts ``sei-rpc`` (30266) and ``sei-network`` (30267): the kube-proxy on ``hardfork.rpc`` and
  ``hardfork.network_rpc``'s ports (kind maps them to the same host ports).

The API::

    ensure(tb, progress=print)            # idempotent: up and waited for (validator, S3, both incumbents Ready)
    set_plan(tb, "v6.4.0", 1234)          # governance passed: the network's current_plan shows it on return
    clear_plan(tb)                        # no plan (the network's current_plan null on return)
    reset(tb)                             # back to ensure()'s state; returns what it had to fix
    network_status(tb) / current_plan(url) / snapshot_heights(tb) / s3_endpoint(tb)
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from runbook.env import PROJECT_ROOT
from runbook.env_hardfork import HardforkConfig
from runbook.errors import AdapterError, TestbedError, WaitTimeout
from runbook.wait import wait_for

if TYPE_CHECKING:
    from runbook.testbed.kubelet import LocalWorkloads
    from runbook.testbed.stack import Testbed

MANIFESTS = PROJECT_ROOT / "deploy" / "k8s" / "hardfork"
INCUMBENT = "r1"  # the revision deploy/k8s/hardfork's StatefulSet runs
VALIDATOR, S3, NETWORK = "sei-validator", "sei-s3", "sei-network"
PLAN_PATH = "/cosmos/upgrade/v1beta1/current_plan"
PLAN_KEY = "plan.json"
CAUGHT_UP = 10  # an incumbent this many blocks behind the network (or more) is not the initial state: re-created
Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def config(tb: Testbed) -> HardforkConfig:
    if tb.env.hardfork is None:
        raise TestbedError(f"env {tb.env.name} has no hardfork section", env=tb.env.name)
    return tb.env.hardfork


@functools.lru_cache(maxsize=1)
def _rendered() -> tuple[dict[str, Any], ...]:
    from runbook.kustomize import kustomize

    return tuple(kustomize(MANIFESTS))


def manifests() -> list[dict[str, Any]]:
    """deploy/k8s/hardfork's objects (fresh copies)."""
    return copy.deepcopy(list(_rendered()))


def manifest(kind: str, name: str) -> dict[str, Any]:
    for m in manifests():
        if m["kind"] == kind and m["metadata"]["name"] == name:
            return m
    raise TestbedError(f"{MANIFESTS} has no {kind} {name}")


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def _service_port(name: str) -> str:
    port = manifest("Service", name)["spec"]["ports"][0]
    return f"{name}:{port.get('name') or port['port']}"


# --------------------------------------------------------------------------- reading the network


def _get(url: str) -> Any:
    try:
        r = httpx.get(url, timeout=2.0)
        r.raise_for_status()
        return r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise AdapterError(f"GET {url}: {exc}", obj=url) from exc


def status(url: str) -> dict[str, Any]:
    """A node's ``/status`` result (``node_info``, ``sync_info``)."""
    return dict(_get(f"{url.rstrip('/')}/status")["result"])


def height(url: str) -> int:
    return int(status(url)["sync_info"]["latest_block_height"])


def current_plan(url: str) -> dict[str, Any] | None:
    """The upgrade plan a node serves (``{"name", "height", ...}``, the height a string as the REST API gives it),
    or None."""
    plan = _get(f"{url.rstrip('/')}{PLAN_PATH}").get("plan")
    return dict(plan) if plan else None


def network_status(tb: Testbed) -> dict[str, Any]:
    return status(config(tb).network_rpc)


def s3_endpoint(tb: Testbed) -> str:
    """The S3 Service as the runner reaches it on the testbed: its clusterIP (the kube-proxy serves it here)."""
    spec = (tb.workloads.services.get(S3) or {}).get("spec") or {}
    if not spec.get("clusterIP"):
        raise TestbedError(f"service {S3} has no clusterIP yet: run hardfork_stack.ensure first", env=tb.env.name)
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"


def snapshot_heights(tb: Testbed) -> list[int]:
    """The heights of the snapshots in the env's bucket (hardfork.snapshot_s3), ascending."""
    from runbook.testbed.s3store import SnapshotStore, parse_s3_url

    _, bucket = parse_s3_url(config(tb).snapshot_s3)
    store = SnapshotStore(s3_endpoint(tb), retries=0, timeout=3.0)
    if bucket not in store.list_buckets():
        return []
    return store.heights(bucket)


# --------------------------------------------------------------------------- ensure


def ensure(tb: Testbed, *, progress: Progress = _quiet, timeout: float = 60.0) -> None:
    """Bring the hard-fork part up once (idempotent): the controller, the cluster DNS, the kube-proxy with the two
    NodePorts' host ports, deploy/k8s/hardfork's objects (only those missing are applied); then wait until the
    validator answers /status on hardfork.network_rpc, the S3 Service answers, and both incumbents are Ready
    behind sei-rpc (hardfork.rpc answers /status)."""
    _up(tb, progress, timeout)
    wait_ready(tb, progress=progress, timeout=timeout)


def _up(tb: Testbed, progress: Progress, timeout: float) -> None:
    """The programs and the missing objects (the StatefulSet once the network answers); no wait for the nodes."""
    from runbook.testbed.kube_controller import controller_program
    from runbook.testbed.kube_dns import ensure_dns
    from runbook.testbed.kube_proxy import ensure_proxy

    c = config(tb)
    if not tb.supervisor.alive():
        raise TestbedError("the testbed is not up (its supervisord is not running): start it first", env=tb.env.name)
    sup, kube_dir = tb.supervisor, tb.state_dir / "kube"
    name, argv = controller_program(tb.env, tb.state_dir, tb.netns)
    if sup.info(name) is None:
        progress("starting the hard-fork part: kube controller, cluster DNS, kube-proxy")
        sup.add(name, argv, env={"PYTHONPATH": str(PROJECT_ROOT)})
    ensure_dns(sup, tb.env, kube_dir)
    ensure_proxy(sup, kube_dir, {_service_port(c.service): _hostport(c.rpc),
                                 _service_port(NETWORK): _hostport(c.network_rpc)})
    w = tb.workloads
    for m in manifests():
        kind, obj = m["kind"], m["metadata"]["name"]
        if kind == "Deployment":
            if w.deployment(obj) is None:
                w.apply_deployment(m)
        elif kind not in ("StatefulSet", "Job") and w.get_object(kind, obj) is None:
            w.apply_object(m)
    # the nodes state-sync from the validator once, at their first start (with no peer answering they exit, as
    # CometBFT does): the network first
    _wait_network(tb, timeout)
    for m in manifests():
        if m["kind"] == "StatefulSet" and w.statefulset(m["metadata"]["name"]) is None:
            w.apply_statefulset(m)


def _wait_network(tb: Testbed, timeout: float) -> int:
    """The validator answering on hardfork.network_rpc and the S3 store answering; the network's height."""
    from runbook.testbed.s3store import SnapshotStore

    c = config(tb)
    tip = wait_for(functools.partial(height, c.network_rpc), lambda h: h > 0, timeout=timeout, interval=0.2,
                   tolerate=(AdapterError,), what=f"the validator answering /status on {c.network_rpc}",
                   env=tb.env.name, obj=f"deployment/{VALIDATOR}")
    wait_for(lambda: SnapshotStore(s3_endpoint(tb), retries=0, timeout=2.0).list_buckets(), lambda _: True,
             timeout=timeout, interval=0.2, tolerate=(AdapterError, TestbedError),
             what=f"the S3 Service {S3} answering", env=tb.env.name, obj=f"service/{S3}")
    return tip


def wait_ready(tb: Testbed, *, progress: Progress = _quiet, timeout: float = 60.0) -> None:
    """The validator answering on hardfork.network_rpc, the S3 store answering, the incumbents Ready behind the
    Service (hardfork.rpc answering /status), a snapshot in the bucket. A WaitTimeout carries the last state seen."""
    c = config(tb)
    w = tb.workloads
    tip = _wait_network(tb, timeout)
    sts = c.statefulset(INCUMBENT)
    want = int(manifest("StatefulSet", sts)["spec"]["replicas"])
    wait_for(functools.partial(w.statefulset_status, sts), lambda s: s is not None and s.ready_replicas >= want,
             timeout=timeout, interval=0.2, what=f"statefulset {sts}: {want} pods Ready", env=tb.env.name,
             obj=f"statefulset/{sts}")
    served = wait_for(functools.partial(status, c.rpc), lambda s: True, timeout=timeout, interval=0.2,
                      tolerate=(AdapterError,), what=f"service {c.service} answering /status on {c.rpc}",
                      env=tb.env.name, obj=f"service/{c.service}")
    # a bootstrap restores the newest snapshot below its halt height: a fresh validator uploads its first one
    # within a snapshot interval (a bootstrap started before it fails: no snapshot to restore)
    wait_for(functools.partial(snapshot_heights, tb), bool, timeout=timeout, interval=0.5,
             tolerate=(AdapterError, TestbedError), what=f"a first snapshot in {c.snapshot_s3}", env=tb.env.name,
             obj=f"deployment/{VALIDATOR}")
    progress(f"hard-fork part up: network at height {tip}, {want} incumbents ({sts}) Ready behind {c.rpc} "
             f"({served['node_info']['version']})")


# --------------------------------------------------------------------------- the plan


def _write_plan(tb: Testbed, plan: dict[str, Any]) -> None:
    c = config(tb)
    cm = tb.workloads.get_object("ConfigMap", c.governance) or manifest("ConfigMap", c.governance)
    cm = {k: v for k, v in cm.items() if k != "status"}
    cm["data"] = {**(cm.get("data") or {}), PLAN_KEY: json.dumps(plan)}
    tb.workloads.apply_object(cm)


def set_plan(tb: Testbed, name: str, at: int, *, timeout: float = 30.0) -> dict[str, Any]:
    """Governance passed: the plan ``name`` at height ``at`` written to the governance ConfigMap; returns once the
    network's current_plan shows it (after the ConfigMap volume's sync lag and the validator's re-read)."""
    c = config(tb)
    _write_plan(tb, {"name": name, "height": int(at)})
    seen = wait_for(functools.partial(current_plan, c.network_rpc),
                    lambda p: p is not None and p.get("name") == name and int(p.get("height", 0)) == int(at),
                    timeout=timeout, interval=0.2, tolerate=(AdapterError,),
                    what=f"the network's current_plan to show {name} at {at}", env=tb.env.name,
                    obj=f"configmap/{c.governance}")
    return dict(seen or {})


def clear_plan(tb: Testbed, *, timeout: float = 30.0) -> None:
    """No plan (``{}``) in the governance ConfigMap; returns once the network's current_plan is null."""
    c = config(tb)
    _write_plan(tb, {})
    wait_for(functools.partial(current_plan, c.network_rpc), lambda p: p is None, timeout=timeout, interval=0.2,
             tolerate=(AdapterError,), what="the network's current_plan to be null", env=tb.env.name,
             obj=f"configmap/{c.governance}")


# --------------------------------------------------------------------------- reset


def _label(obj: dict[str, Any] | None, key: str) -> str | None:
    return ((obj or {}).get("metadata", {}).get("labels") or {}).get(key)


def _selected_app(obj: dict[str, Any] | None) -> str | None:
    return (((obj or {}).get("spec", {}).get("selector") or {}).get("matchLabels") or {}).get("app")


def _incumbents_pristine(tb: Testbed, w: LocalWorkloads, c: HardforkConfig) -> str:
    """Why r1 is not as ensure() leaves it ("" when it is): its template, its pods (Ready, never restarted), each
    pod following the network (caught up, within CAUGHT_UP blocks of its tip) with no plan of its own."""
    sts = c.statefulset(INCUMBENT)
    live = w.statefulset(sts)
    if live is None:
        return "gone"
    if live["spec"].get("template") != manifest("StatefulSet", sts)["spec"]["template"]:
        return "its template changed"
    st = w.statefulset_status(sts)
    want = int(live["spec"].get("replicas", 1))
    if st is None or len(st.pods) != want:
        return f"{0 if st is None else len(st.pods)} of {want} pods"
    tip = height(c.network_rpc)
    for pod in st.pods:
        info = w.pod(pod)
        if not info.ready or any(x.restart_count for x in info.containers):
            return f"pod {pod} not Ready or restarted"
        url = f"http://{info.ip}:{manifest('Service', c.service)['spec']['ports'][0]['port']}"
        try:
            sync = status(url)["sync_info"]
            plan = current_plan(url)
        except AdapterError as exc:
            return f"pod {pod}: {exc}"
        if sync.get("catching_up") or tip - int(sync["latest_block_height"]) >= CAUGHT_UP:
            return f"pod {pod} at {sync['latest_block_height']}, the network at {tip}"
        if plan is not None:  # a node drops a cancelled plan at its next poll of the network (every second)
            try:
                wait_for(functools.partial(current_plan, url), lambda p: p is None, timeout=3.0, interval=0.2,
                         tolerate=(AdapterError,), what=f"pod {pod} dropping the cancelled plan")
            except WaitTimeout:
                return f"pod {pod} holds plan {plan.get('name')} at {plan.get('height')}"
    return ""


def reset(tb: Testbed, *, progress: Progress = _quiet, timeout: float = 60.0) -> list[str]:
    """Back to :func:`ensure`'s state for a scenario that needs it: no plan, every Job, StatefulSet and claim of
    the node set other than r1's deleted (the entrants, their bootstraps), r1 re-created (with fresh claims) when
    it is gone or not as ensure() left it, the Service's selector back to r1. Returns what it had to fix."""
    c = config(tb)
    w = tb.workloads
    fixed: list[str] = []
    keep = c.statefulset(INCUMBENT)
    if tb.supervisor.alive() and w.statefulset(keep) is None:  # torn down: ensure() makes it again, on fresh claims
        for claim in w.pvcs(f"app={c.app},{c.revision_label}={INCUMBENT}"):
            w.delete_pvc(claim)
        fixed.append(f"statefulset {keep} re-created (gone)")
    _up(tb, progress, timeout)  # the nodes are waited for at the end: the Service may pin a revision that never serves
    if current_plan(c.network_rpc) is not None:
        clear_plan(tb, timeout=timeout)
        fixed.append("governance plan cleared")
    apps = {c.app, f"{c.app}-bootstrap"}
    for job in w.jobs():
        live = w.job(job)
        if _label(live, "app") in apps or _selected_app(live) in apps:
            w.delete_job(job, propagation="Foreground")
            fixed.append(f"job {job} deleted")
    for sts in w.statefulsets():
        if sts != keep and c.app in (_label(w.statefulset(sts), "app"), _selected_app(w.statefulset(sts))):
            w.delete_statefulset(sts)
            fixed.append(f"statefulset {sts} deleted")
    why = _incumbents_pristine(tb, w, c)
    if why:
        w.delete_statefulset(keep)
        fixed.append(f"statefulset {keep} re-created ({why})")
    for claim in w.pvcs(f"app={c.app}"):
        if why or _label(w.pvc(claim), c.revision_label) != INCUMBENT:
            w.delete_pvc(claim)
            fixed.append(f"claim {claim} deleted")
    if why:
        w.apply_statefulset(manifest("StatefulSet", keep))
    svc = w.get_object("Service", c.service)
    want = manifest("Service", c.service)
    if ((svc or {}).get("spec") or {}).get("selector") != want["spec"]["selector"]:
        w.apply_object(want)
        fixed.append(f"service {c.service}'s selector back to {want['spec']['selector']}")
    wait_ready(tb, progress=progress, timeout=timeout)
    if fixed:
        progress("hard-fork part reset: " + "; ".join(fixed))
    return fixed


# --------------------------------------------------------------------------- the S3 server image


def main(argv: list[str] | None = None) -> int:
    """``python -m runbook.testbed.hardfork_stack s3-server [moto_server args]``: the local testbed's
    ``runbook/s3-server`` image (its images map), which execs moto's server from .venv/s3-server."""
    from runbook.testbed.s3store import server_binary

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "s3-server":
        print("usage: python -m runbook.testbed.hardfork_stack s3-server [-H ADDRESS] [-p PORT]", file=sys.stderr)
        return 2
    binary = str(server_binary())
    os.execv(binary, [binary, *args[1:]])
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
