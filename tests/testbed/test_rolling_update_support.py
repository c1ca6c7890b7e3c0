"""Shared by the RollingUpdate tests: a scratch kube (its own supervisord on a free port, the testbed's controller
under it) and manifests of the seed's proxy and of a signal recorder. Real processes: run under
`flock /tmp/runbook-testbed.lock`."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from runbook.env import Env, load_env
from runbook.testbed.kube_controller import controller_program
from runbook.testbed.kubelet import LocalWorkloads
from runbook.testbed.supervisor import Supervisor

ENV_FILE = Path(__file__).parent / "envs" / "rolling.yaml"
IMAGE = "ronaldraygun/zai-proxy:{}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@dataclass
class Kube:
    wl: LocalWorkloads
    sup: Supervisor
    env: Env
    port: int  # the proxies' containerPort

    def proxy(self, name: str, version: str, **kw: Any) -> dict[str, Any]:
        return proxy_deployment(name, version, port=self.port, **kw)


@contextmanager
def scratch_kube(tmp_path: Path) -> Iterator[Kube]:
    data = yaml.safe_load(ENV_FILE.read_text())
    data["testbed"]["supervisor_port"] = free_port()
    env_file = tmp_path / "rolling.yaml"
    env_file.write_text(yaml.safe_dump(data))
    env = load_env(str(env_file))
    state = tmp_path / "state"
    state.mkdir()
    sup = Supervisor(state_dir=state, port=data["testbed"]["supervisor_port"])
    sup.start()
    try:
        wl = LocalWorkloads(env=env, supervisor=sup, state_dir=state, netns=None)
        name, argv = controller_program(env, state)  # as the stack gives it: the Env written for the controller
        sup.add(name, argv)
        sup.wait_running(name, timeout=10)
        yield Kube(wl, sup, env, free_port())
    finally:
        sup.shutdown()


def proxy_deployment(name: str, version: str, *, port: int, replicas: int = 3, surge: int | str = 1,
                     unavailable: int | str = 0, probe: dict[str, Any] | None = None,
                     history: int | None = None) -> dict[str, Any]:
    """The seed's zai-proxy Deployment shape: it binds its pod IP (downward API) and is probed on /health."""
    container = {
        "name": "proxy", "image": IMAGE.format(version),
        "args": ["--variant", "production", "--port", str(port), "--bind", "$(POD_IP)"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": probe or {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
    }
    spec: dict[str, Any] = {
        "replicas": replicas, "selector": {"matchLabels": {"app": name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]}},
    }
    if history is not None:
        spec["revisionHistoryLimit"] = history
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "mcp"},
            "spec": spec}


def served_version(ip: str, port: int) -> str:
    """What the pod at ``ip`` answers (its X-Zai-Proxy-Version), over real HTTP."""
    r = httpx.get(f"http://{ip}:{port}/health", timeout=2, trust_env=False)
    r.raise_for_status()
    return r.headers["X-Zai-Proxy-Version"]


@dataclass
class Monitor:
    """Samples the Deployment's pods (not terminating) while a rollout runs, in a thread."""

    wl: LocalWorkloads
    deployment: str
    samples: list[tuple[int, int, frozenset[str]]] = field(default_factory=list)  # (ready, pods, images)
    service: str | None = None  # also sample this Service's endpoints
    endpoints: list[list[str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            pods = self.wl.pods_of(self.deployment)
            images = frozenset(img for p in pods for img in p.spec_images.values())
            self.samples.append((sum(1 for p in pods if p.ready), len(pods), images))
            if self.service:
                self.endpoints.append(self.wl.endpoints(self.service))
            self.stop.wait(0.02)

    @contextmanager
    def running(self) -> Iterator[Monitor]:
        t = threading.Thread(target=self.run, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self.stop.set()
            t.join(timeout=10)

    @property
    def min_ready(self) -> int:
        return min(s[0] for s in self.samples)

    @property
    def max_pods(self) -> int:
        return max(s[1] for s in self.samples)

    def saw_both(self, a: str, b: str) -> bool:
        return any({a, b} <= s[2] for s in self.samples)


def recorder_deployment(name: str, image: str, record: Path, *, pre_stop: dict[str, Any] | None = None,
                        grace: int = 5, replicas: int = 1) -> dict[str, Any]:
    """A Deployment of a signal recorder (no readiness probe: ready once running) appending to ``record``."""
    container: dict[str, Any] = {"name": "main", "image": image, "args": [str(record)]}
    if pre_stop is not None:
        container["lifecycle"] = {"preStop": pre_stop}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"terminationGracePeriodSeconds": grace, "containers": [container]}}}}
