"""Seed 003 on the local testbed: what is always there for the application, whichever colour is active
(deploy/k8s/release: the common ConfigMap and the gateway's Deployment and NodePort Service), and the platform
parts its release depends on, brought up on demand (:func:`ensure`) beside the agave testbed and stopped with
it (every process is under the testbed's supervisord).

What each part is on kind, and here:

- the Deployments, ConfigMaps and Services: the same manifests, stored by the testbed's kubelet
  (:class:`~runbook.testbed.kubelet.LocalWorkloads`, its objects port), the Deployments rolled out by the
  testbed's controller (:mod:`runbook.testbed.kube_controller`), which also projects the gateway's configMap
  volume and refreshes it only every ``testbed.configmap_sync`` (a real kubelet's sync period plus its cache
  TTL: a client sees a switch late);
- the Services by name: the testbed's cluster DNS (:mod:`runbook.testbed.kube_dns`) on ``testbed.dns_ip`` in
  every pod's resolv.conf, and the kube-proxy (:mod:`runbook.testbed.kube_proxy`) on each Service's clusterIP;
- the gateway's NodePort (kind maps 30280 to the host's 18280): the same kube-proxy on ``release.url``'s port.

The colours' objects are not here: the release procedure makes them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runbook.env import PROJECT_ROOT
from runbook.env_release import ReleaseConfig
from runbook.errors import TestbedError
from runbook.kustomize import kustomize
from runbook.testbed.kube_controller import controller_program
from runbook.testbed.kube_dns import ensure_dns
from runbook.testbed.kube_proxy import ensure_proxy
from runbook.wait import wait_for

if TYPE_CHECKING:
    from runbook.testbed.stack import Testbed

MANIFESTS = PROJECT_ROOT / "deploy" / "k8s" / "release"
Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def config(tb: Testbed) -> ReleaseConfig:
    if tb.env.release is None:
        raise TestbedError(f"env {tb.env.name} has no release section", env=tb.env.name)
    return tb.env.release


def manifests() -> list[dict[str, Any]]:
    """The always-there objects of deploy/k8s/release (the colours' template is release.template's)."""
    return [m for m in kustomize(MANIFESTS) if m.get("kind") in ("ConfigMap", "Deployment", "Service")]


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def ensure(tb: Testbed, *, progress: Progress = _quiet, timeout: float = 60.0) -> None:
    """Bring the release part up once (idempotent): the controller, the cluster DNS, the kube-proxy with the
    gateway's host port, and deploy/k8s/release's objects; then wait until the gateway is rolled out."""
    c = config(tb)
    if not tb.running():
        raise TestbedError("the testbed is not up: start it first", env=tb.env.name)
    kube_dir = tb.state_dir / "kube"
    sup = tb.supervisor
    py_env = {"PYTHONPATH": str(PROJECT_ROOT)}
    name, argv = controller_program(tb.env, tb.state_dir, tb.netns)
    if sup.info(name) is None:
        progress("starting the release part: kube controller, cluster DNS, kube-proxy")
        sup.add(name, argv, env=py_env)
    ensure_dns(sup, tb.env, kube_dir)
    gateway = next(m for m in manifests() if m["kind"] == "Service" and m["metadata"]["name"] == c.gateway)
    port = gateway["spec"]["ports"][0]
    ensure_proxy(sup, kube_dir, {f"{c.gateway}:{port.get('name') or port['port']}": _hostport(c.url)})
    w, objects = tb.workloads, tb.workloads
    for m in manifests():
        kind, obj_name = m["kind"], m["metadata"]["name"]
        if kind == "Deployment":
            if w.deployment(obj_name) is None:
                w.apply_deployment(m)
        elif objects.get_object(kind, obj_name) is None:
            objects.apply_object(m)
    status = wait_for(functools.partial(w.rollout_status, c.gateway), lambda s: s.done, timeout=timeout,
                      interval=0.2, what=f"deployment {c.gateway} rolled out", env=tb.env.name, obj=c.gateway)
    progress(status.message)
