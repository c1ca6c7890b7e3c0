"""Kubernetes manifests: a renderer for the kustomize subset ``deploy/k8s`` uses, and env-specific values.

``build(dir)`` gives what ``kustomize build dir`` gives for kustomizations that use only ``resources``
(files or directories), ``namePrefix``/``nameSuffix``, ``labels``/``commonLabels``, ``patches`` holding
JSON6902 operations (inline ``patch:`` or ``path:``, with a ``target``) and ``images``. Anything else is
refused with the file and the key, so a manifest can never silently mean something else here than under
kustomize. Transformers run in kustomize's order: patches, name prefix/suffix, labels, images.

:func:`render_deployment` then applies what the env says on top of a colour's overlay: the deployment name,
the RPC port, the images and the volume host paths. The same dict serves the kind cluster, biscayne and
the local testbed's kubelet-alike.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import jsonpointer
import yaml

from runbook.env import PROJECT_ROOT, Env
from runbook.errors import ConfigError

K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
BASE_DIR = K8S_DIR / "base"
OVERLAYS_DIR = K8S_DIR / "overlays"
COLOURS = ("green", "blue")
APP_CONTAINER = "agave-validator"
RPC_PORT_FLAG = "--rpc-port"

Manifest = dict[str, Any]

_KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namePrefix", "nameSuffix", "labels", "commonLabels",
                   "patches", "images"}
_WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# kustomize's "legacy" output order (kustomize build --reorder legacy, the default); other kinds follow,
# ordered by kind, and webhook configurations come last.
_LEGACY_FIRST = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
                 "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap",
                 "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume",
                 "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget"]
_LEGACY_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


# --------------------------------------------------------------------------- kustomize subset


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document in a file, each checked to be a Kubernetes object."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read manifest: {exc}") from exc
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
            raise ConfigError(f"{path}: document {i} is not a Kubernetes object (apiVersion, kind, metadata)")
    return docs


def kustomization_file(directory: Path) -> Path:
    for name in _KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise ConfigError(f"{directory}: no kustomization.yaml")


def build(directory: Path) -> list[Manifest]:
    """What ``kustomize build directory`` outputs, for the supported subset (see the module doc)."""
    kfile = kustomization_file(directory)
    try:
        k = yaml.safe_load(kfile.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kfile}: not valid YAML: {exc}") from exc
    if not isinstance(k, dict):
        raise ConfigError(f"{kfile}: expected a mapping")
    unsupported = sorted(set(k) - _SUPPORTED_KEYS)
    if unsupported:
        raise ConfigError(f"{kfile}: unsupported kustomization field(s) {', '.join(unsupported)}; "
                          f"runbook.manifests renders only {', '.join(sorted(_SUPPORTED_KEYS))}")
    resources: list[Manifest] = []
    for entry in k.get("resources") or []:
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(build(target))
        elif target.is_file():
            resources.extend(load_documents(target))
        else:
            raise ConfigError(f"{kfile}: resource {entry!r} is neither a file nor a directory")
    for i, p in enumerate(k.get("patches") or []):
        _apply_patch(resources, p, kfile, i)
    prefix, suffix = k.get("namePrefix") or "", k.get("nameSuffix") or ""
    for r in resources:
        r["metadata"]["name"] = f"{prefix}{r['metadata']['name']}{suffix}"
    for spec in _label_specs(k, kfile):
        for r in resources:
            _add_labels(r, *spec)
    for i, img in enumerate(k.get("images") or []):
        if not isinstance(img, dict) or not img.get("name"):
            raise ConfigError(f"{kfile}: images[{i}] needs a name")
        for r in resources:
            _set_images(r, img)
    return sorted(resources, key=_legacy_order)


def _legacy_order(r: Manifest) -> tuple[int, str, str, str]:
    kind = r.get("kind", "")
    if kind in _LEGACY_FIRST:
        rank = _LEGACY_FIRST.index(kind)
    elif kind in _LEGACY_LAST:
        rank = len(_LEGACY_FIRST) + 2 + _LEGACY_LAST.index(kind)
    else:
        rank = len(_LEGACY_FIRST) + 1
    meta = r.get("metadata", {})
    return rank, kind if rank == len(_LEGACY_FIRST) + 1 else "", meta.get("namespace", ""), meta.get("name", "")


def _apply_patch(resources: list[Manifest], p: Any, kfile: Path, i: int) -> None:
    where = f"{kfile}: patches[{i}]"
    if not isinstance(p, dict) or not isinstance(p.get("target"), dict):
        raise ConfigError(f"{where}: needs a target (kind/name) and a JSON6902 patch")
    if "path" in p:
        text = (kfile.parent / p["path"]).read_text()
    elif isinstance(p.get("patch"), str):
        text = p["patch"]
    else:
        raise ConfigError(f"{where}: needs `patch:` (inline) or `path:`")
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise ConfigError(f"{where}: only JSON6902 patches (a list of operations) are supported, "
                          "not strategic-merge patches")
    target = p["target"]
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise ConfigError(f"{where}: unsupported target selector(s) {', '.join(sorted(unknown))}")
    matched = [r for r in resources if _matches(r, target)]
    if not matched:
        raise ConfigError(f"{where}: target {target} matches no resource")
    for r in matched:
        try:
            patched = jsonpatch.JsonPatch(ops).apply(r)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise ConfigError(f"{where}: cannot patch {r['kind']}/{r['metadata']['name']}: {exc}") from exc
        r.clear()
        r.update(patched)


def _matches(r: Manifest, target: Mapping[str, Any]) -> bool:
    group, _, version = r.get("apiVersion", "").rpartition("/")
    checks = {"group": group, "version": version, "kind": r.get("kind"),
              "name": r["metadata"].get("name"), "namespace": r["metadata"].get("namespace", "")}
    return all(checks[key] == want for key, want in target.items())


def _label_specs(k: Mapping[str, Any], kfile: Path) -> Iterable[tuple[dict[str, str], bool, bool]]:
    """(pairs, into selectors, into templates) for each label set, in kustomize's terms."""
    if k.get("commonLabels"):
        yield {str(a): str(b) for a, b in k["commonLabels"].items()}, True, True
    for i, entry in enumerate(k.get("labels") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("pairs"), dict):
            raise ConfigError(f"{kfile}: labels[{i}] needs pairs")
        unknown = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown:
            raise ConfigError(f"{kfile}: labels[{i}]: unsupported field(s) {', '.join(sorted(unknown))}")
        selectors = bool(entry.get("includeSelectors", False))
        templates = selectors or bool(entry.get("includeTemplates", False))
        yield {str(a): str(b) for a, b in entry["pairs"].items()}, selectors, templates


def _add_labels(r: Manifest, pairs: dict[str, str], selectors: bool, templates: bool) -> None:
    r["metadata"].setdefault("labels", {}).update(pairs)
    kind, spec = r.get("kind"), r.get("spec")
    if not isinstance(spec, dict):
        return
    if kind in _WORKLOAD_KINDS:
        if selectors:
            spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
        if templates:
            spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    elif kind == "Service" and selectors:
        spec.setdefault("selector", {}).update(pairs)


def split_image(image: str) -> tuple[str, str, str]:
    """``registry:5000/repo/name:tag@sha256:...`` -> (name, tag, digest), as kustomize splits it."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:], digest
    return name, "", digest


def _set_images(node: Any, img: Mapping[str, Any]) -> None:
    """kustomize's image transformer: every containers/initContainers image named ``img['name']``."""
    if isinstance(node, list):
        for item in node:
            _set_images(item, img)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for c in value:
                if isinstance(c, dict) and isinstance(c.get("image"), str):
                    c["image"] = _retag(c["image"], img)
        _set_images(value, img)


def _retag(image: str, img: Mapping[str, Any]) -> str:
    name, tag, digest = split_image(image)
    if name != img["name"]:
        return image
    name = img.get("newName") or name
    new_tag, new_digest = str(img.get("newTag") or ""), str(img.get("digest") or "")
    if new_tag or new_digest:
        tag, digest = new_tag, new_digest
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# --------------------------------------------------------------------------- env-specific values


def overlay(colour: str) -> Manifest:
    """The colour's Deployment exactly as ``kustomize build deploy/k8s/overlays/<colour>`` gives it."""
    if colour not in COLOURS:
        raise ConfigError(f"unknown colour {colour!r}: expected green or blue")
    docs = [d for d in build(OVERLAYS_DIR / colour) if d["kind"] == "Deployment"]
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
    if env.entrypoints:  # the cluster this env's validators join (the testbeds' cluster stand-in)
        kept = [a for i, a in enumerate(args) if a != "--entrypoint" and (i == 0 or args[i - 1] != "--entrypoint")]
        args[:] = kept + [x for ep in env.entrypoints for x in ("--entrypoint", ep)]
    if image or cfg.image:
        app["image"] = image or cfg.image
    if sidecar_image:
        sidecar["image"] = sidecar_image
    for var in sidecar.get("env", []):
        if var.get("name") == "DOUBLEZERO_RPC_ENDPOINT":
            var["value"] = env.cluster_rpc
    paths = {"accounts": cfg.accounts, **(host_paths or {})}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for name, path in paths.items():
        vol = volumes.get(name)
        if vol is None or "hostPath" not in vol:
            raise ConfigError(f"deployment {cfg.name} has no hostPath volume {name!r} "
                              f"(has: {', '.join(volumes) or 'none'})", env=env.name)
        vol["hostPath"]["path"] = path
    return dep


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
    return sorted(docs, key=_legacy_order)


def all_manifests() -> dict[str, list[Manifest]]:
    """Every manifest this repository ships, by source path (a kustomization dir or a file)."""
    root = PROJECT_ROOT
    out: dict[str, list[Manifest]] = {str(d.relative_to(root)): build(d) for d in
                                      (*(OVERLAYS_DIR / c for c in COLOURS), BASE_DIR)}
    files = [BASE_DIR / "namespace.yaml", BASE_DIR / "rbac.yaml", root / "deploy" / "kind" / "testbed.yaml"]
    for f in files:
        if f.is_file():
            out[str(f.relative_to(root))] = load_documents(f)
    return out
