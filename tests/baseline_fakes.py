"""Small stateful fakes of the workloads and ingress ports, for the baseline's unit tests (storage is a real
``copy`` backend in a temporary directory). They behave like the kube adapter where the baseline depends on
it: a read Deployment carries server-set fields (resourceVersion, generation, status, the revision
annotation), a template change replaces the pod, deleting a Deployment deletes its pods."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runbook.adapters.base import ContainerStatus, PodInfo, UpstreamStat
from runbook.adapters.factory import Adapters
from runbook.adapters.host import TestinfraHost
from runbook.adapters.storage import make_storage
from runbook.env import Env, load_env
from runbook.manifests import render_deployment
from runbook.procedures.bluegreen import upstream_address
from runbook.testbed import keypair


def images_of(manifest: dict[str, Any]) -> dict[str, str]:
    spec = manifest["spec"]["template"]["spec"]
    return {c["name"]: c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}


class FakeWorkloads:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.pod_objects: dict[str, dict[str, Any]] = {}  # pod name -> {deployment, images, state}
        self.calls: list[tuple[str, str]] = []
        self._n = itertools.count(1)
        self._rv = itertools.count(100)

    # the one method the port does not have yet (runbook.baseline.DeploymentReader)
    def deployment(self, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(name)
        if obj is None:
            return None
        out = copy.deepcopy(obj)
        out["metadata"].update(resourceVersion=str(next(self._rv)), uid="u-1", generation=3)
        out["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "7"
        out["status"] = {"replicas": 1, "availableReplicas": 1}
        return out

    def apply_deployment(self, manifest: dict[str, Any]) -> None:
        assert "resourceVersion" not in manifest["metadata"] and "status" not in manifest, manifest
        name = manifest["metadata"]["name"]
        self.calls.append(("apply", name))
        old = self.objects.get(name)
        self.objects[name] = copy.deepcopy(manifest)
        if old is None or old["spec"]["template"] != manifest["spec"]["template"] or not self._pods(name):
            for pod in self._pods(name):
                del self.pod_objects[pod]
            self.pod_objects[f"{name}-{next(self._n)}"] = {"deployment": name, "images": images_of(manifest),
                                                           "state": "running"}

    def delete_deployment(self, name: str, *, wait: bool = True) -> None:
        self.calls.append(("delete", name))
        self.objects.pop(name, None)
        for pod in self._pods(name):
            del self.pod_objects[pod]

    def deployments(self) -> list[str]:
        return sorted(self.objects)

    def daemonsets(self) -> list[str]:
        return []

    def _pods(self, name: str) -> list[str]:
        return sorted(p for p, o in self.pod_objects.items() if o["deployment"] == name)

    def pods(self, deployment: str) -> list[PodInfo]:
        return [self.pod(p) for p in self._pods(deployment)]

    def pod(self, name: str) -> PodInfo:
        o = self.pod_objects[name]
        dep = self.objects.get(o["deployment"])
        containers = tuple(ContainerStatus(name=c, kind="app", image=img, image_id="sha256:0", state=o["state"],
                                           started_at=None, restart_count=0, ready=o["state"] == "running")
                           for c, img in o["images"].items())
        return PodInfo(name=name, deployment=o["deployment"], phase="Running", containers=containers,
                       spec_images=dict(o["images"]), template_images=images_of(dep) if dep else {})

    def wait_rollout(self, name: str, *, timeout: float) -> PodInfo:
        return self.pods(name)[0]

    def patch_pod_container_image(self, pod: str, container: str, image: str) -> None:
        self.pod_objects[pod]["images"][container] = image

    def patch_template_container_image(self, deployment: str, container: str, image: str) -> None:
        spec = self.objects[deployment]["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if c["name"] == container:
                c["image"] = image
        self.apply_deployment(self.objects[deployment])

    def exec(self, pod: str, container: str, argv: Sequence[str], *, timeout: float = 30.0) -> Any:
        raise NotImplementedError

    def events(self, pod: str) -> list[str]:
        return []

    def owns_process(self, proc: Any) -> bool:
        return False


class FakeIngress:
    """Caddy's admin port. ``switch``: the config has the order switch (as the shipped Caddyfile does), so an
    order change touches the order file and changes no config; without it the order is the config's."""

    def __init__(self, order: list[str], *, switch: bool = True) -> None:
        self.cfg: dict[str, Any] = {"apps": {"http": {"servers": {"srv0": {"routes": [{"handle": [
            {"handler": "reverse_proxy", "lb_policy": "first", "upstreams": [{"dial": a} for a in order]}]}]}}}}}
        self.loads = 0
        self.switched: list[str] | None = None  # the order serving while the order file exists
        self.switch = switch

    def _proxy(self) -> dict[str, Any]:
        handler: dict[str, Any] = self.cfg["apps"]["http"]["servers"]["srv0"]["routes"][0]["handle"][0]
        return handler

    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self.cfg)

    def load(self, config: dict[str, Any]) -> None:
        self.loads += 1
        self.cfg = copy.deepcopy(config)

    def upstreams(self) -> list[UpstreamStat]:
        return [UpstreamStat(u["dial"], 0, 0) for u in self._proxy()["upstreams"]]

    def upstream_order(self) -> list[str]:
        return list(self.switched) if self.switched is not None else [u["dial"] for u in self._proxy()["upstreams"]]

    def set_upstream_order(self, addresses: Sequence[str]) -> None:
        if not self.switch:
            self._proxy()["upstreams"] = [{"dial": a} for a in addresses]
            return
        default = [u["dial"] for u in self._proxy()["upstreams"]]
        self.switched = None if list(addresses) == default else list(addresses)


def make_env(state_dir: Path) -> Env:
    env = load_env("local")
    assert env.testbed is not None
    return env.model_copy(update={"testbed": env.testbed.model_copy(update={"state_dir": str(state_dir)})})


def make_adapters(root: Path) -> Adapters:
    """A baseline: green deployed and serving (pod running), its data with a ledger file, Caddy green first."""
    env = make_env(root / "state")
    storage = make_storage("copy", root / "storage")
    green = env.deployments.green
    ds = storage.ensure_dataset(green.data)
    (Path(ds.path) / "ledger").mkdir(parents=True, exist_ok=True)
    (Path(ds.path) / "ledger" / "slot").write_text("100")
    for colour in ("green", "blue"):  # each colour's own identity keypair, where the host keeps it
        ident = env.deployments.colour(colour).identity
        assert ident is not None and env.testbed is not None
        keypair.write_keypair(root / "state" / ident.lstrip("/"),
                              keypair.colour_seed(bytes.fromhex(env.testbed.identity_seed), colour))
    wl = FakeWorkloads()
    wl.apply_deployment(render_deployment(env, "green", host_paths={"ledger": f"{ds.path}/ledger"}))
    wl.calls.clear()
    ingress = FakeIngress([upstream_address(env, "green"), upstream_address(env, "blue")])
    # the host: this machine, its host paths (blue's accounts) under the state dir as on the testbed
    return Adapters(env=env, host=TestinfraHost("local://"), workloads=wl, ingress=ingress, storage=storage,
                    host_path=lambda p: str(root / "state" / p.lstrip("/")))
