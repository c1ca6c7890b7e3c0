"""Objects as the Kubernetes API server sends them (camelCase JSON), a kubeconfig and an env pointing at a
server, for the adapter's scripted tests (pytest-httpserver answering fixed bodies: request shapes, error
messages, status parsing). The stateful mock server is :mod:`tests.kube.fake_apiserver`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from runbook.env import Env, KubeConfig, load_env

NS = "agave"
API = f"/api/v1/namespaces/{NS}"
APPS = f"/apis/apps/v1/namespaces/{NS}"
TOKEN = "test-token"


def write_kubeconfig(path: Path, server: str, *, context: str = "fake", token: str = TOKEN) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "runbook", "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "fake", "user": "runbook", "namespace": NS}}],
    }))
    return path


def make_env(kubeconfig: Path, *, context: str = "fake", namespace: str = NS) -> Env:
    """The kind env, with its kube section pointing at a kubeconfig of the test's."""
    return load_env("kind").model_copy(
        update={"kube": KubeConfig(context=context, namespace=namespace, kubeconfig=str(kubeconfig))})


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes Status object, as the API server sends with every error."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def pod_spec(*, sidecar_image: str = "laconicnetwork/doublezero:v0.6.0",
             app_image: str = "laconicnetwork/agave:v2.1.0") -> dict[str, Any]:
    return {
        "initContainers": [{"name": "doublezerod", "image": sidecar_image, "restartPolicy": "Always"}],
        "containers": [{"name": "agave-validator", "image": app_image}],
    }


def running(started: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"running": {"startedAt": started}}


def waiting(reason: str) -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": f"{reason} message"}}


def terminated(reason: str, code: int) -> dict[str, Any]:
    return {"terminated": {"reason": reason, "exitCode": code, "startedAt": "2026-01-01T00:00:00Z",
                           "finishedAt": "2026-01-01T00:01:00Z"}}


def cstatus(name: str, image: str, state: dict[str, Any], *, restarts: int = 0, ready: bool = True,
            image_id: str | None = None) -> dict[str, Any]:
    return {"name": name, "image": f"docker.io/{image}", "imageID": image_id or f"docker.io/{image}@sha256:aa",
            "state": state, "restartCount": restarts, "ready": ready, "started": "running" in state}


def pod(name: str, *, sidecar: dict[str, Any] | None = None, app: dict[str, Any] | None = None,
        phase: str = "Running", spec: dict[str, Any] | None = None, owner: str | None = "agave-green-5d9f",
        colour: str = "green", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS,
                            "labels": {"app.kubernetes.io/name": "agave", "runbook/colour": colour}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                                    "uid": "u1", "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:02:00Z"
    st: dict[str, Any] = {"phase": phase}
    if sidecar is not None:
        st["initContainerStatuses"] = [sidecar]
    if app is not None:
        st["containerStatuses"] = [app]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec or pod_spec(), "status": st}


def replicaset(name: str, deployment: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": NS, "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": "u0",
                 "controller": True}]}}


def deployment(name: str, *, generation: int = 2, observed: int = 2, available: int = 1,
               spec: dict[str, Any] | None = None, colour: str = "green") -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "agave", "runbook/colour": colour}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "generation": generation, "resourceVersion": "41"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "strategy": {"type": "Recreate"},
                 "template": {"metadata": {"labels": labels}, "spec": spec or pod_spec()}},
        "status": {"observedGeneration": observed, "replicas": 1, "updatedReplicas": available,
                   "availableReplicas": available, "readyReplicas": available},
    }


def requests_made(server: Any) -> list[Any]:
    """The requests a pytest-httpserver received, in order (werkzeug Request objects)."""
    return [req for req, _ in server.log]


def items(*objs: dict[str, Any], kind: str = "List") -> dict[str, Any]:
    return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": list(objs)}
