"""Kubernetes manifests: the repository's kustomizations (``deploy/k8s``) and env-specific values.

Rendering is :mod:`runbook.kustomize` (``kubectl kustomize`` where installed, an own renderer otherwise).
:func:`render_deployment` then applies what the env says on top of a colour's overlay: the deployment name,
the RPC port, the images and the volume host paths. The same dict serves the kind cluster, biscayne and
the local testbed's kubelet-alike.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from runbook.env import PROJECT_ROOT, Env
from runbook.errors import ConfigError
from runbook.kustomize import (
    Manifest,
    build,
    kubectl_kustomize,
    kustomization_file,
    kustomize,
    legacy_order,
    load_documents,
    split_image,
)

__all__ = ["APP_CONTAINER", "BASE_DIR", "COLOURS", "K8S_DIR", "OVERLAYS_DIR", "Manifest", "all_manifests", "build",
           "cluster_manifests", "kubectl_kustomize", "kustomization_file", "kustomize", "load_documents", "overlay",
           "render_deployment", "set_arg", "split_image"]

K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
BASE_DIR = K8S_DIR / "base"
OVERLAYS_DIR = K8S_DIR / "overlays"
COLOURS = ("green", "blue")
APP_CONTAINER = "agave-validator"
RPC_PORT_FLAG = "--rpc-port"


# --------------------------------------------------------------------------- env-specific values


def overlay(colour: str) -> Manifest:
    """The colour's Deployment exactly as ``kustomize build deploy/k8s/overlays/<colour>`` gives it."""
    if colour not in COLOURS:
        raise ConfigError(f"unknown colour {colour!r}: expected green or blue")
    docs = [d for d in kustomize(OVERLAYS_DIR / colour) if d["kind"] == "Deployment"]
    if len(docs) != 1:
        raise ConfigError(f"{OVERLAYS_DIR / colour}: expected one Deployment, got {len(docs)}")
    return docs[0]


def render_deployment(
    env: Env,
    colour: str,
    *,
    image: str | None = None,
    sidecar_image: str | None = None,
    host_paths: Mapping[str, str] | None = None,
) -> Manifest:
    """The colour's Deployment for ``env``: name, namespace, RPC port, images, accounts and host paths.

    ``image`` (else ``deployments.<colour>.image``, else the overlay's) is the validator's image;
    ``sidecar_image`` the doublezerod sidecar's. ``host_paths`` maps volume names to hostPath paths and
    wins over the env's ``accounts``.
    """
    cfg = env.deployments.colour(colour)
    dep = copy.deepcopy(overlay(colour))
    dep["metadata"]["name"] = cfg.name
    if env.kube is not None:
        dep["metadata"]["namespace"] = env.kube.namespace
    pod = dep["spec"]["template"]["spec"]
    app = _container(pod, "containers", APP_CONTAINER, env)
    sidecar = _container(pod, "initContainers", env.doublezero.sidecar, env)
    args = app.setdefault("args", [])
    if RPC_PORT_FLAG not in args[:-1]:
        raise ConfigError(f"container {APP_CONTAINER} has no `{RPC_PORT_FLAG} <port>` in its args: {args}",
                          env=env.name)
    args[args.index(RPC_PORT_FLAG) + 1] = str(cfg.rpc_port)
    if cfg.gossip_port is not None:
        set_arg(args, "--gossip-port", str(cfg.gossip_port), where=cfg.name)
    if cfg.dynamic_port_range is not None:
        set_arg(args, "--dynamic-port-range", cfg.dynamic_port_range, where=cfg.name)
    if env.entrypoints:  # the cluster this env's validators join (the testbeds' cluster stand-in)
        kept = [a for i, a in enumerate(args) if a != "--entrypoint" and (i == 0 or args[i - 1] != "--entrypoint")]
        args[:] = kept + [x for ep in env.entrypoints for x in ("--entrypoint", ep)]
    if image or cfg.image:
        app["image"] = image or cfg.image
    if sidecar_image:
        sidecar["image"] = sidecar_image
    for var in sidecar.get("env", []):
        if var.get("name") == "DOUBLEZERO_RPC_ENDPOINT":
            var["value"] = env.cluster_rpc[0]  # the preferred reference
    paths = {"accounts": cfg.accounts, **({"identity": cfg.identity} if cfg.identity else {}), **(host_paths or {})}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for name, path in paths.items():
        vol = volumes.get(name)
        if vol is None or "hostPath" not in vol:
            raise ConfigError(f"deployment {cfg.name} has no hostPath volume {name!r} "
                              f"(has: {', '.join(volumes) or 'none'})", env=env.name)
        vol["hostPath"]["path"] = path
    return dep


def set_arg(args: list[str], flag: str, value: str, *, where: str) -> None:
    """``--flag value`` or ``--flag=value`` set in place; args without the flag are an error (a colour would
    keep the other's value: two validators on one port of one host network)."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            args[i + 1] = value
            return
        if a.startswith(flag + "="):
            args[i] = f"{flag}={value}"
            return
    raise ConfigError(f"{where}: no {flag} in the validator's args, so this colour cannot be given its own value: "
                      f"{args}")


def _container(pod: Manifest, field: str, name: str, env: Env) -> Manifest:
    for c in pod.get(field, []):
        if c.get("name") == name:
            return c  # the same object: callers edit it in place
    raise ConfigError(f"the deployment template has no {field} entry named {name!r}", env=env.name)


def cluster_manifests(env: Env) -> list[Manifest]:
    """The per-namespace objects applied once, before any colour: Namespace, ServiceAccount, Role, RoleBinding."""
    if env.kube is None:
        raise ConfigError(f"env {env.name} has no kube section: it has no namespace to prepare", env=env.name)
    ns = env.kube.namespace
    docs = load_documents(BASE_DIR / "namespace.yaml") + load_documents(BASE_DIR / "rbac.yaml")
    for d in docs:
        if d["kind"] == "Namespace":
            d["metadata"]["name"] = ns
        else:
            d["metadata"]["namespace"] = ns
        for s in d.get("subjects", []):
            if s.get("kind") == "ServiceAccount":
                s["namespace"] = ns
    return sorted(docs, key=legacy_order)


def all_manifests() -> dict[str, list[Manifest]]:
    """Every manifest this repository ships, by source path (a kustomization dir or a file)."""
    root = PROJECT_ROOT
    out: dict[str, list[Manifest]] = {str(d.relative_to(root)): kustomize(d) for d in
                                      (*(OVERLAYS_DIR / c for c in COLOURS), BASE_DIR)}
    files = [BASE_DIR / "namespace.yaml", BASE_DIR / "rbac.yaml", root / "deploy" / "kind" / "testbed.yaml"]
    for f in files:
        if f.is_file():
            out[str(f.relative_to(root))] = load_documents(f)
    return out
