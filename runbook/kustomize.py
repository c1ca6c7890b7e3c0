"""kustomize rendering: ``kubectl kustomize`` where kubectl is installed, an own renderer where it is not.

:func:`kustomize` renders a kustomization with ``kubectl kustomize`` where kubectl is on PATH (kubectl 1.14+
carries kustomize; every kind user has it), and only where it is absent with :func:`build`, this module's
own renderer; a log line on ``runbook.kustomize`` says which one rendered. kubectl failing is an error, never
a reason to fall back. tests/kube/test_manifests.py checks that the two agree on every kustomization under
``deploy/``.

:func:`build` gives what ``kustomize build dir`` gives for kustomizations that use only ``resources``
(files or directories), ``namePrefix``/``nameSuffix``, ``labels``/``commonLabels``, ``patches`` holding
JSON6902 operations (inline ``patch:`` or ``path:``, with a ``target``) and ``images``. Anything else is
refused with the file and the key, so a manifest can never silently mean something else here than under
kustomize. Transformers run in kustomize's order: patches, name prefix/suffix, labels, images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import jsonpatch
import jsonpointer
import yaml

from runbook.errors import ConfigError

Manifest = dict[str, Any]
Renderer = Literal["auto", "kubectl", "own"]
RENDERER_VAR = "RUNBOOK_KUSTOMIZE"  # auto (default), kubectl or own: which renderer kustomize() uses

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- the own renderer


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
    return sorted(resources, key=legacy_order)


def legacy_order(r: Manifest) -> tuple[int, str, str, str]:
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


# --------------------------------------------------------------------------- which renderer


_rendered: dict[tuple[str, str, str], str] = {}  # (renderer, directory, fingerprint) -> JSON of the output


def _inputs(directory: Path, seen: set[Path]) -> set[Path]:
    """Every file a kustomization can read: the files of its directory and of the directories its
    ``resources`` name, and the files it names elsewhere (patches)."""
    directory = directory.resolve()
    if directory in seen or not directory.is_dir():
        return set()
    seen.add(directory)
    files = {f for f in directory.rglob("*") if f.is_file()}
    try:
        k = yaml.safe_load(kustomization_file(directory).read_text()) or {}
    except (ConfigError, OSError, yaml.YAMLError):
        return files
    if not isinstance(k, dict):
        return files
    for entry in k.get("resources") or []:
        target = (directory / str(entry)).resolve()
        files |= _inputs(target, seen) if target.is_dir() else ({target} if target.is_file() else set())
    for patch in k.get("patches") or []:
        if isinstance(patch, dict) and isinstance(patch.get("path"), str):
            files.add((directory / patch["path"]).resolve())
    return files


def _fingerprint(directory: Path) -> str:
    """A digest of everything the kustomization reads: a changed file renders again."""
    h = hashlib.sha256()
    for f in sorted(_inputs(directory, set())):
        with contextlib.suppress(OSError):
            h.update(str(f).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def kubectl_kustomize(directory: Path, kubectl: str | None = None, *, timeout: float = 60.0) -> list[Manifest]:
    """``kubectl kustomize directory``: kustomize itself, as kubectl vendors it."""
    kubectl = kubectl or shutil.which("kubectl")
    if kubectl is None:
        raise ConfigError(f"cannot render {directory} with kubectl kustomize: kubectl is not on PATH")
    try:
        out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                             timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"`{kubectl} kustomize {directory}` failed: {exc}") from None
    if out.returncode != 0:
        raise ConfigError(f"`{kubectl} kustomize {directory}` exited {out.returncode}: {out.stderr.strip()[:800]}")
    try:
        return [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"`{kubectl} kustomize {directory}` printed no valid YAML: {exc}") from None


def kustomize(directory: Path, renderer: Renderer | None = None) -> list[Manifest]:
    """What ``kustomize build directory`` gives: rendered by ``kubectl kustomize`` when kubectl is on PATH,
    else by :func:`build` (``renderer``, else ``$RUNBOOK_KUSTOMIZE``, forces one). kubectl failing is an
    error, never a reason to fall back: the two must not silently disagree."""
    choice = renderer or os.environ.get(RENDERER_VAR) or "auto"
    if choice not in ("auto", "kubectl", "own"):
        raise ConfigError(f"{RENDERER_VAR}={choice!r}: expected auto, kubectl or own")
    kubectl = shutil.which("kubectl") if choice != "own" else None
    if choice == "kubectl" and kubectl is None:
        raise ConfigError(f"{RENDERER_VAR}=kubectl but kubectl is not on PATH")
    used = "kubectl" if kubectl else "own"
    key = (used, str(directory.resolve()), _fingerprint(directory))
    if key not in _rendered:
        docs = kubectl_kustomize(directory, kubectl) if kubectl else build(directory)
        _rendered[key] = json.dumps(docs)
        if kubectl:
            log.info("rendered %s with `%s kustomize`", directory, kubectl)
        else:
            log.info("rendered %s with runbook.kustomize's own renderer (kubectl is not on PATH)", directory)
    docs_out: list[Manifest] = json.loads(_rendered[key])
    return docs_out
