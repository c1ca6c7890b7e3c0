"""ConfigMaps on the local testbed: the API server's store and validation, and the kubelet's configMap volume.

The store (:class:`LocalConfigMaps`, ``<kube_dir>/configmaps/<name>.json``) keeps what the API server keeps:

- validation in its words (``ValidateConfigMap``): the name a DNS-1123 subdomain, data keys ``[-._a-zA-Z0-9]+``
  (not ``.``, ``..`` or ``..``-prefixed), a key in both ``data`` and ``binaryData`` refused, the total size at most
  1 MiB; once ``immutable: true``, ``data``, ``binaryData`` and ``immutable`` itself can no longer change
  ("field is immutable when `immutable` is set"). An invalid object is a :class:`KubeError` with status 422 and
  the message ``ConfigMap "<name>" is invalid: <field errors>`` (several: ``[a, b]``);
- ``metadata.resourceVersion``, one counter for every object of the testbed's store (etcd's revision), bumped on
  every write; a replace carrying a resourceVersion that is not the stored one is a 409 Conflict ("the object has
  been modified"), one of an object that no longer exists a 404; ``uid`` and ``creationTimestamp`` kept from
  the create. Writes are serialised by a lock file, so the check and the write are one step across processes.

The volume side is the kubelet's: :func:`volume_payload` (what a ``configMap`` volume source projects: every key,
or its ``items`` with their paths and modes, ``defaultMode`` 0644, ``optional``) and :func:`atomic_write`
(kubelet's AtomicWriter: files in a ``..<timestamp>`` directory, a ``..data`` symlink to it swapped by a rename,
one user-visible symlink per top-level path to ``..data/<path>``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.errors import KubeError
from runbook.testbed.kube_services import _DNS1123_SUBDOMAIN, LABEL_VALUE_MSG, _label_key_errors, _q

MAX_SIZE = 1024 * 1024  # core.MaxSecretSize: data plus binaryData
DEFAULT_MODE = 0o644  # configMap volumes' defaultMode (420)
KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
           "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 r"validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
IMMUTABLE_MSG = "Forbidden: field is immutable when `immutable` is set"
DATA_DIR = "..data"


def invalid(kind: str, name: str, errs: list[str]) -> KubeError:
    """The API server's 422: ``<Kind> "<name>" is invalid: <err>`` (several: ``[a, b]``)."""
    body = errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]"
    return KubeError(f'{kind} "{name or "?"}" is invalid: {body}', status=422, obj=name)


def key_errors(key: str) -> list[str]:
    """validation.IsConfigMapKey."""
    errs = []
    if len(key) > 253:
        errs.append("must be no more than 253 characters")
    if not key or any(not (ch.isascii() and (ch.isalnum() or ch in "-._")) for ch in key):
        errs.append(KEY_MSG)
    if key == ".":
        errs.append("must not be '.'")
    elif key == "..":
        errs.append("must not be '..'")
    elif key.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def meta_errors(meta: Mapping[str, Any]) -> list[str]:
    """ValidateObjectMeta's name (a DNS-1123 subdomain) and labels."""
    errs = []
    name = meta.get("name") or ""
    if not name:
        errs.append("metadata.name: Required value: name or generateName is required")
    else:
        if len(name) > 253:
            errs.append(f"metadata.name: Invalid value: {_q(name)}: must be no more than 253 characters")
        if not _DNS1123_SUBDOMAIN.fullmatch(name):
            errs.append(f"metadata.name: Invalid value: {_q(name)}: {SUBDOMAIN_MSG}")
    for key, value in (meta.get("labels") or {}).items():
        errs += [f"metadata.labels: Invalid value: {_q(key)}: {m}" for m in _label_key_errors(str(key))]
        if not isinstance(value, str):
            errs.append(f"metadata.labels: Invalid value: {_q(value)}: must be a string")
        elif len(value) > 63:
            errs.append(f"metadata.labels: Invalid value: {_q(value)}: must be no more than 63 characters")
        elif not all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in value) or (
                value and not (value[0].isalnum() and value[-1].isalnum())):
            errs.append(f"metadata.labels: Invalid value: {_q(value)}: {LABEL_VALUE_MSG}")
    return errs


def validate_configmap(cm: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
    """ValidateConfigMap (and ValidateConfigMapUpdate against ``old``): raises the API server's 422."""
    meta = cm.get("metadata") or {}
    data, binary = cm.get("data") or {}, cm.get("binaryData") or {}
    errs = []
    if old is not None and old.get("immutable"):  # ValidateConfigMapUpdate, before ValidateConfigMap's errors
        if not cm.get("immutable"):
            errs.append(f"immutable: {IMMUTABLE_MSG}")
        if data != (old.get("data") or {}):
            errs.append(f"data: {IMMUTABLE_MSG}")
        if binary != (old.get("binaryData") or {}):
            errs.append(f"binaryData: {IMMUTABLE_MSG}")
    errs += meta_errors(meta)
    size = 0
    for key, value in data.items():
        errs += [f"data[{key}]: Invalid value: {_q(key)}: {m}" for m in key_errors(str(key))]
        if key in binary:
            errs.append(f"data[{key}]: Invalid value: {_q(key)}: duplicate of key present in binaryData")
        if not isinstance(value, str):
            errs.append(f"data[{key}]: Invalid value: {_q(value)}: must be a string")  # a JSON decode error there
            continue
        size += len(value.encode())
    for key, value in binary.items():
        errs += [f"binaryData[{key}]: Invalid value: {_q(key)}: {m}" for m in key_errors(str(key))]
        size += len(str(value)) * 3 // 4  # base64 in JSON; the limit is on the bytes
    if size > MAX_SIZE:
        errs.append(f"[]: Too long: may not be more than {MAX_SIZE} bytes")
    if errs:
        raise invalid("ConfigMap", str(meta.get("name") or ""), errs)


# -- the store -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def store_lock(kube_dir: Path) -> Iterator[None]:
    """The store's write lock (etcd's transaction, across the test process and the controller)."""
    kube_dir.mkdir(parents=True, exist_ok=True)
    with (kube_dir / "objects.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def next_resource_version(kube_dir: Path) -> str:
    """Bump and return the store's revision; call it under :func:`store_lock`."""
    path = kube_dir / "resource-version"
    try:
        current = int(path.read_text() or "0")
    except FileNotFoundError:
        current = 0
    path.write_text(str(current + 1))
    return str(current + 1)


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)


def conflict(resource: str, name: str) -> KubeError:
    return KubeError(f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; please '
                     "apply your changes to the latest version and try again", status=409, obj=name)


def check_precondition(meta: Mapping[str, Any], old: Mapping[str, Any] | None, resource: str,
                       namespace: str) -> None:
    """The API server's checks of a write before validation: the namespace, and a resourceVersion given in
    ``meta`` against ``old``'s (stale: 409 Conflict; ``old`` gone: 404)."""
    name = str(meta.get("name") or "")
    if meta.get("namespace") not in (None, "", namespace):
        raise KubeError("the namespace of the provided object does not match the namespace sent on the request",
                        status=400, obj=name)
    given = meta.get("resourceVersion")
    if given:
        if old is None:
            raise KubeError(f'{resource} "{name}" not found', status=404, obj=name)
        if str(given) != str((old.get("metadata") or {}).get("resourceVersion")):
            raise conflict(resource, name)


def stamp_metadata(meta: dict[str, Any], old: Mapping[str, Any] | None, kube_dir: Path, namespace: str) -> None:
    """What the API server sets on a write (under :func:`store_lock`): the namespace, uid and creationTimestamp
    (kept from ``old``), a new resourceVersion."""
    old_meta = (old or {}).get("metadata") or {}
    meta["namespace"] = namespace
    meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
    meta["creationTimestamp"] = old_meta.get("creationTimestamp") or \
        datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta["resourceVersion"] = next_resource_version(kube_dir)


class LocalConfigMaps:
    """The ConfigMaps of one local testbed (one namespace)."""

    def __init__(self, kube_dir: Path, *, namespace: str = "default") -> None:
        self.kube = Path(kube_dir)
        self.namespace = namespace
        self.dir = self.kube / "configmaps"
        self.dir.mkdir(parents=True, exist_ok=True)

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create, or replace (on the manifest's resourceVersion when it carries one: a stale one is a 409);
        returns the ConfigMap as stored. Nothing changes when it is refused."""
        if manifest.get("kind") != "ConfigMap":
            raise KubeError(f"LocalConfigMaps stores ConfigMaps only, got {manifest.get('kind')!r}", status=400)
        cm: dict[str, Any] = json.loads(json.dumps(manifest))
        cm.setdefault("apiVersion", "v1")
        meta = cm.setdefault("metadata", {})
        name = str(meta.get("name") or "")
        with store_lock(self.kube):
            old = self.get(name) if _DNS1123_SUBDOMAIN.fullmatch(name) else None
            check_precondition(meta, old, "configmaps", self.namespace)
            validate_configmap(cm, old)
            stamp_metadata(meta, old, self.kube, self.namespace)
            write_json(self.dir / f"{name}.json", cm)
        return cm

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.dir / f"{name}.json").read_text()))
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        with store_lock(self.kube):
            (self.dir / f"{name}.json").unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json"))


# -- the kubelet's configMap volume --------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeFile:
    path: str  # relative to the volume
    content: bytes
    mode: int


class MountFailed(Exception):
    """MountVolume.SetUp failed: the message the kubelet's FailedMount event carries after the volume name."""


def volume_payload(source: Mapping[str, Any], cm: Mapping[str, Any] | None) -> list[VolumeFile]:
    """The files a ``configMap`` volume source projects from ``cm`` (None: it does not exist). A missing
    ConfigMap or key is :class:`MountFailed` unless the source is ``optional`` (then: nothing, or the rest)."""
    optional = bool(source.get("optional"))
    if cm is None:
        if optional:
            return []
        raise MountFailed(f'configmap "{source.get("name")}" not found')
    default_mode = int(source.get("defaultMode", DEFAULT_MODE))
    values: dict[str, bytes] = {k: str(v).encode() for k, v in (cm.get("data") or {}).items()}
    values.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    items = source.get("items")
    if not items:
        return [VolumeFile(k, v, default_mode) for k, v in sorted(values.items())]
    out = []
    for item in items:
        key = item["key"]
        if key not in values:
            if optional:
                continue
            raise MountFailed(f"configmap references non-existent config key: {key}")
        out.append(VolumeFile(str(item.get("path") or key), values[key], int(item.get("mode", default_mode))))
    return out


def _current(target: Path) -> dict[str, tuple[bytes, int]]:
    data = target / DATA_DIR
    if not data.is_symlink():
        return {}
    out = {}
    root = target / os.readlink(data)
    for p in root.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.read_bytes(), p.stat().st_mode & 0o7777)
    return out


def atomic_write(target: Path, files: list[VolumeFile]) -> bool:
    """kubelet's AtomicWriter.Write into ``target``; False when the payload is already there (nothing written).
    The new files go into a fresh ``..<timestamp>`` directory, ``..data`` is swapped to it by one rename (a
    reader resolves either the old or the new set, never a mix of one file), then the user-visible symlinks
    are made and those of paths no longer projected removed, and the old directory goes."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = {f.path: (f.content, f.mode) for f in files}
    for path in wanted:
        if path.startswith("/") or ".." in Path(path).parts:
            raise MountFailed(f"invalid path {path!r}: must be relative and may not contain '..'")
    if (target / DATA_DIR).is_symlink() and _current(target) == wanted:
        return False
    old = os.readlink(target / DATA_DIR) if (target / DATA_DIR).is_symlink() else None
    ts = tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()), dir=target)
    for f in files:
        p = Path(ts) / f.path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f.content)
        p.chmod(f.mode)
    os.chmod(ts, 0o755)
    tmp = target / (DATA_DIR + "_tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(ts).name)
    tmp.replace(target / DATA_DIR)  # rename(2): the swap
    top = {Path(p).parts[0] for p in wanted}
    for name in top:
        link = target / name
        if not link.is_symlink():
            link.symlink_to(f"{DATA_DIR}/{name}")
    for p in target.iterdir():
        if not p.name.startswith("..") and p.name not in top:
            p.unlink()
    if old is not None:
        shutil.rmtree(target / old, ignore_errors=True)
    return True
