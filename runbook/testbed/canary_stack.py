"""Seed 004 on the local testbed: the proxy's Deployments and Services from deploy/k8s/canary, the controller
that rolls them out, the kube-proxy that serves their Services, real Prometheus scraping their pods, and the
release repository finalization writes. Brought up on demand (:func:`ensure`), beside the agave testbed, and
stopped with it (every process is under the testbed's supervisord).

What each part is on kind, and here:

- Deployments and Services: the same manifests (``kubectl kustomize deploy/k8s/canary``); the Deployment
  controller and kubelet are :mod:`runbook.testbed.kube_controller` (RollingUpdate, readiness probes, preStop);
- the Services' NodePorts (kind maps them to the host): :mod:`runbook.testbed.kube_proxy` on ``canary.url`` and
  ``canary.canary_url``'s ports;
- Prometheus: the kind Deployment's configuration with kubernetes_sd replaced by file_sd of the same pods and
  labels (the kube-proxy writes the file), the same alert rules (deploy/prometheus/zai-proxy-rules.yml);
- the release repository: a git repository under the state dir (``canary.repo``), VERSION at the canary's
  release, as the seed's checkout is before step 5.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runbook.adapters.prometheus import PrometheusClient
from runbook.env import PROJECT_ROOT
from runbook.env_canary import CanaryConfig
from runbook.errors import AdapterError, TestbedError
from runbook.kustomize import kustomize
from runbook.testbed.kube_controller import controller_program
from runbook.testbed.kube_proxy import proxy_program
from runbook.testbed.kube_services import LocalServices
from runbook.testbed.prometheus import find_binary
from runbook.wait import wait_for

if TYPE_CHECKING:
    from runbook.testbed.stack import Testbed

MANIFESTS = PROJECT_ROOT / "deploy" / "k8s" / "canary"
RULES = PROJECT_ROOT / "deploy" / "prometheus" / "zai-proxy-rules.yml"
PROGRAMS = ("kube-controller", "kube-proxy", "prometheus")
Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def config(tb: Testbed) -> CanaryConfig:
    if tb.env.canary is None:
        raise TestbedError(f"env {tb.env.name} has no canary section", env=tb.env.name)
    return tb.env.canary


def manifests() -> list[dict[str, Any]]:
    """The proxy's Deployments and Services from deploy/k8s/canary (Prometheus's objects are kind's: here it is
    a process)."""
    return [m for m in kustomize(MANIFESTS) if m.get("kind") in ("Deployment", "Service")
            and (m.get("metadata", {}).get("labels") or {}).get("app") == "zai-proxy"]


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def prometheus_config(tb: Testbed) -> dict[str, Any]:
    targets = tb.state_dir / "prometheus" / "pods.json"
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "zai-proxy", "scrape_interval": "1s", "scrape_timeout": "1s",
                            "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}]}],
    }


def running(tb: Testbed) -> bool:
    return all((info := tb.supervisor.info(p)) is not None and info.running for p in PROGRAMS)


def ensure(tb: Testbed, *, progress: Progress = _quiet) -> None:
    """Bring the canary part up once (idempotent): programs, Deployments, Services, the release repository;
    then wait until both Deployments are rolled out and Prometheus scrapes every pod."""
    c = config(tb)
    if not tb.running():
        raise TestbedError("the testbed is not up: start it first", env=tb.env.name)
    if not running(tb):
        _up_programs(tb, c, progress)
    w, services = tb.workloads, LocalServices(tb.state_dir / "kube")
    for m in manifests():
        if m["kind"] == "Service" and services.get(m["metadata"]["name"]) is None:
            services.apply(m)
        elif m["kind"] == "Deployment" and w.deployment(m["metadata"]["name"]) is None:
            w.apply_deployment(m)
    if not release_repo_path(tb).is_dir():
        init_release_repo(tb)
    wait_ready(tb, progress=progress)


def _up_programs(tb: Testbed, c: CanaryConfig, progress: Progress) -> None:
    binary = find_binary()
    if not binary:
        raise TestbedError("no prometheus binary: install Debian's prometheus package (.ci/setup)", env=tb.env.name)
    progress("starting the canary part: kube controller, kube-proxy, Prometheus")
    py_env = {"PYTHONPATH": str(PROJECT_ROOT)}
    name, argv = controller_program(tb.env, tb.state_dir, tb.netns)
    tb.supervisor.add(name, argv, env=py_env)
    prom_dir = tb.state_dir / "prometheus"
    prom_dir.mkdir(parents=True, exist_ok=True)
    name, argv = proxy_program(tb.state_dir / "kube", {c.service: _hostport(c.url),
                                                       _canary_service(): _hostport(c.canary_url)},
                               prom_dir / "pods.json")
    tb.supervisor.add(name, argv, env=py_env)
    cfg_file = prom_dir / "prometheus.yml"
    cfg_file.write_text(json.dumps(prometheus_config(tb), indent=1))
    tb.supervisor.add("prometheus", [binary, f"--config.file={cfg_file}", f"--storage.tsdb.path={prom_dir / 'data'}",
                                     "--storage.tsdb.retention.time=1d",
                                     f"--web.listen-address={_hostport(c.prometheus)}", "--web.enable-lifecycle",
                                     "--log.level=warn"], startsecs=1)


def _canary_service() -> str:
    for m in manifests():
        if m["kind"] == "Service" and (m["metadata"].get("labels") or {}).get("variant") == "test":
            return str(m["metadata"]["name"])
    raise TestbedError(f"{MANIFESTS} has no Service for the canary (variant=test)")


def wait_ready(tb: Testbed, *, progress: Progress = _quiet, timeout: float = 90.0) -> None:
    """Both Deployments rolled out, and Prometheus scraping each of their pods."""
    c = config(tb)
    w = tb.workloads
    for name in (c.production, c.canary):
        status = wait_for(functools.partial(w.rollout_status, name), lambda s: s.done, timeout=timeout,
                          interval=0.2, what=f"deployment {name} rolled out", env=tb.env.name, obj=name)
        progress(status.message)
    want = {p.name for name in (c.production, c.canary) for p in w.pods_of(name)}

    def scraped() -> set[str]:
        with PrometheusClient(c.prometheus, timeout=2.0) as prom:
            return {t["labels"].get("pod", "") for t in prom.targets() if t.get("health") == "up"}

    wait_for(scraped, lambda up: want <= up, timeout=timeout, interval=0.5, tolerate=(AdapterError,),
             what=f"Prometheus {c.prometheus} scraping {sorted(want)}", env=tb.env.name)
    progress(f"Prometheus {c.prometheus} scrapes {len(want)} proxy pods")


def release_repo_path(tb: Testbed) -> Path:
    from runbook.procedures.canary_promote import release_repo

    return release_repo(tb.env).path


def canary_version(tb: Testbed) -> str:
    c = config(tb)
    for m in manifests():
        if m["kind"] == "Deployment" and m["metadata"]["name"] == c.canary:
            return str(m["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1])
    raise TestbedError(f"{MANIFESTS} has no Deployment {c.canary}")


def init_release_repo(tb: Testbed, version: str | None = None) -> Path:
    """A fresh release repository: VERSION at the canary's tag, one commit (the seed's state before step 5)."""
    from runbook.procedures.canary_promote import release_repo

    repo = release_repo(tb.env)
    shutil.rmtree(repo.path, ignore_errors=True)
    repo.create(version or canary_version(tb))
    return repo.path


def reset(tb: Testbed, *, canary_image: str | None = None, progress: Progress = _quiet) -> None:
    """Back to the manifests' state with a fresh rollout history (the Deployments deleted and applied again),
    the canary on ``canary_image`` when given, and a fresh release repository at the canary's version."""
    ensure(tb, progress=progress)
    c = config(tb)
    w = tb.workloads
    for m in manifests():
        if m["kind"] != "Deployment":
            continue
        name = m["metadata"]["name"]
        # pods still terminating from the last rollout or undo are the controller's to finish (their preStop and
        # grace): wait for them, then delete (a pod its kill thread is stopping cannot be removed under it)
        wait_for(functools.partial(_terminating, w, name), lambda terminating: terminating == 0,
                 timeout=60, interval=0.2, what=f"deployment {name}'s terminating pods gone", env=tb.env.name, obj=name)
        wait_for(functools.partial(_delete, w, name), bool, timeout=30, interval=0.5, tolerate=(TestbedError,),
                 what=f"deployment {name} deleted", env=tb.env.name, obj=name)
        # as `kubectl delete --wait` with foreground cascading: its pods gone before a Deployment of the same name
        # comes back (the testbed's garbage collector matches owners by name, not uid)
        wait_for(functools.partial(w.pods, name), lambda pods: not pods, timeout=60, interval=0.2,
                 what=f"the pods of deployment {name} gone", env=tb.env.name, obj=name)
        if name == c.canary and canary_image:
            for ct in m["spec"]["template"]["spec"]["containers"]:
                if ct["name"] == c.container:
                    ct["image"] = canary_image
            m["spec"]["template"]["metadata"]["labels"]["version"] = canary_image.rsplit(":", 1)[1]
        w.apply_deployment(m)
    init_release_repo(tb, (canary_image or "").rsplit(":", 1)[-1] or None)
    wait_ready(tb, progress=progress)


def _delete(w: Any, name: str) -> bool:
    w.delete_deployment(name)
    return True


def _terminating(w: Any, name: str) -> int:
    return len(w.pods(name)) - len(w.pods_of(name))
