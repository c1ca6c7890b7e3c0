"""Building blocks of the Kubernetes API mock server: API errors as the real server words them, selectors,
patches, timestamps, and containerd's image naming.

Nothing here knows about HTTP; :mod:`tests.kube.fake_cluster` keeps the objects and
:mod:`tests.kube.fake_apiserver` serves them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonpatch
import jsonpointer

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str = ""
    namespaced: bool = True
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update")

    @property
    def qualified(self) -> str:
        """How messages name the resource: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"


GROUPS = ("apps", "batch", "discovery.k8s.io")  # the API groups served besides the core group


RESOURCES: dict[str, Resource] = {r.plural: r for r in (
    Resource("namespaces", "Namespace", namespaced=False, verbs=("create", "delete", "get", "list")),
    Resource("nodes", "Node", namespaced=False, verbs=("get", "list")),
    Resource("pods", "Pod"),
    Resource("events", "Event", verbs=("get", "list")),
    Resource("deployments", "Deployment", "apps"),
    Resource("replicasets", "ReplicaSet", "apps", verbs=("get", "list")),
    Resource("daemonsets", "DaemonSet", "apps", verbs=("get", "list")),
    Resource("services", "Service"),
    Resource("configmaps", "ConfigMap"),
    Resource("endpointslices", "EndpointSlice", "discovery.k8s.io", verbs=("get", "list")),
    Resource("jobs", "Job", "batch"),
    Resource("statefulsets", "StatefulSet", "apps"),
    Resource("persistentvolumeclaims", "PersistentVolumeClaim"),
)}


# --------------------------------------------------------------------------- errors


@dataclass
class ApiError(Exception):
    """A failed request, rendered as the ``Status`` body the real API server sends."""

    code: int
    reason: str
    message: str
    details: Obj = field(default_factory=dict)

    def body(self) -> Obj:
        out: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": self.message, "reason": self.reason}
        if self.details:
            out["details"] = self.details
        out["code"] = self.code
        return out


def _details(res: Resource, name: str) -> Obj:
    out: Obj = {"name": name}
    if res.group:
        out["group"] = res.group
    out["kind"] = res.plural
    return out


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def already_exists(res: Resource, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists', _details(res, name))


def conflict(res: Resource, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                    _details(res, name))


class GoValue(str):
    """A bad value as the API server (1.32) prints a struct or slice in a field error: Go's ``%#v``
    (``v1.LabelSelector{MatchLabels:map[string]string{...}, ...}``, ``[]string{"10.96.0.7"}``), not JSON."""


@dataclass(frozen=True)
class Cause:
    """One field error: ``Forbidden``/``Invalid value``/``Required value``, as field.Error words them."""

    field: str
    type: str  # FieldValueForbidden, FieldValueInvalid, FieldValueNotSupported, FieldValueRequired, FieldValueTooLong
    detail: str
    value: Any = None

    def text(self) -> str:
        if self.type == "FieldValueForbidden":
            return f"Forbidden: {self.detail}"
        if self.type == "FieldValueNotSupported":
            return f"Unsupported value: {json.dumps(self.value)}: {self.detail}"
        if self.type == "FieldValueRequired":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.type == "FieldValueTooLong":
            return f"Too long: {self.detail}"
        shown = str(self.value) if isinstance(self.value, GoValue) else json.dumps(self.value)
        return f"Invalid value: {shown}: {self.detail}"


def invalid(res: Resource, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid: ``Pod "x" is invalid: spec: Forbidden: ...`` (several causes: ``[a, b]``)."""
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    errors = [f"{c.field}: {c.text()}" for c in causes]
    joined = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
    details: Obj = {"name": name}
    if res.group:
        details["group"] = res.group
    details["kind"] = res.kind
    details["causes"] = [{"reason": c.type, "message": c.text(), "field": c.field} for c in causes]
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


NO_ROUTE = ApiError(404, "NotFound", "the server could not find the requested resource")
UNAUTHORIZED = ApiError(401, "Unauthorized", "Unauthorized")


# --------------------------------------------------------------------------- selectors


def label_selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """``a=b,c!=d,e,!f`` (equality and existence: what clients send here)."""
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


FIELDS = {"metadata.name": ("metadata", "name"), "metadata.namespace": ("metadata", "namespace"),
          "involvedObject.name": ("involvedObject", "name"), "involvedObject.kind": ("involvedObject", "kind"),
          "involvedObject.uid": ("involvedObject", "uid"), "status.phase": ("status", "phase")}


def field_selector_matches(selector: str, obj: Obj) -> bool:
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        neg = "!=" in term
        key, value = term.split("!=" if neg else "=", 1)
        key = key.strip().rstrip("=")
        if key not in FIELDS:
            raise bad_request(f'"{key}" is not a known field selector: only "{", ".join(FIELDS)}"')
        a, b = FIELDS[key]
        if ((obj.get(a) or {}).get(b) == value.lstrip("=")) == neg:
            return False
    return True


# --------------------------------------------------------------------------- patches


def _strategic(target: Any, patch: Any) -> Any:
    """A strategic merge patch, for the lists that merge by ``name`` (containers, env, volumes, ...)."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif (isinstance(value, list) and isinstance(out.get(key), list) and value
              and all(isinstance(v, dict) and "name" in v for v in value + out[key])):
            merged = {v["name"]: v for v in out[key]}
            order = [v["name"] for v in out[key]]
            for v in value:
                merged[v["name"]] = _strategic(merged.get(v["name"], {}), v)
                if v["name"] not in order:
                    order.append(v["name"])
            out[key] = [merged[n] for n in order]
        else:
            out[key] = _strategic(out.get(key), value)
    return out


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def apply_patch(obj: Obj, content_type: str, body: Any) -> Obj:
    kind = content_type.split(";")[0].strip()
    if kind == "application/json-patch+json":
        if not isinstance(body, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            patched: Obj = jsonpatch.JsonPatch(body).apply(obj)
            return patched
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                           f"{exc}") from None
    if kind == "application/merge-patch+json":
        merged: Obj = _merge(obj, body)
        return merged
    if kind == "application/strategic-merge-patch+json":
        strategic: Obj = _strategic(obj, body)
        return strategic
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted "
                   f"media types include: application/json-patch+json, application/merge-patch+json, "
                   f"application/strategic-merge-patch+json (got {kind})")


# --------------------------------------------------------------------------- defaults


def pod_defaults(spec: Obj, *, admission: bool = False) -> Obj:
    """What the API server's defaulting adds to a pod spec (a Deployment's template too); with
    ``admission``, what admission adds to a pod (its service account, the default tolerations)."""
    spec = copy.deepcopy(spec)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    if not admission:
        return _container_defaults(spec)
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("tolerations", [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 300}])
    return _container_defaults(spec)


def _container_defaults(spec: Obj) -> Obj:
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            c.setdefault("imagePullPolicy", "Always" if str(c.get("image", "")).endswith(":latest")
                         or ":" not in str(c.get("image", "")).rsplit("/", 1)[-1] else "IfNotPresent")
    return spec


# --------------------------------------------------------------------------- time, names


def timestamp(at: datetime) -> str:
    """RFC 3339 with whole seconds, as metav1.Time serialises (two events within one second look alike)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wall(offset: float = 0.0) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=offset)


_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's rand.SafeEncodeString alphabet


def random_suffix(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(n))


def template_hash(template: Any) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:10])


# --------------------------------------------------------------------------- images (containerd's CRI)


def qualify(reference: str) -> str:
    """A reference fully qualified as containerd names it: ``nginx`` -> ``docker.io/library/nginx:latest``."""
    name, _, digest = reference.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}"
    if name.startswith("docker.io/") and name.count("/") == 1:
        name = name.replace("docker.io/", "docker.io/library/", 1)
    if digest:
        return f"{name}@{digest}"
    return f"{name}:{tag or 'latest'}"


@dataclass
class Image:
    """One image in the node's store: its repo tags (fully qualified, first one first) and content digest."""

    tags: list[str]
    digest: str

    @property
    def repo_digest(self) -> str:
        return f"{self.tags[0].rsplit(':', 1)[0]}@{self.digest}"


class ImageStore:
    """The node's containerd image store. A container's status names its image as containerd does: the
    image's *first* repo tag, fully qualified, and the imageID as ``repo@sha256:<digest>``."""

    def __init__(self) -> None:
        self._by_ref: dict[str, Image] = {}
        self.images: list[Image] = []

    def add(self, *tags: str) -> Image:
        """One image known under every one of ``tags`` (e.g. the production and the stand-in name)."""
        refs = [qualify(t) for t in tags]
        digest = "sha256:" + hashlib.sha256("\n".join(refs).encode()).hexdigest()
        image = Image(tags=refs, digest=digest)
        self.images.append(image)
        for r in refs:
            self._by_ref[r] = image
        return image

    def find(self, reference: str) -> Image | None:
        return self._by_ref.get(qualify(reference))

    def node_images(self) -> list[Obj]:
        """``Node.status.images``: every name of every image (repo digest first, then the tags)."""
        return [{"names": [img.repo_digest, *img.tags], "sizeBytes": 50_000_000 + i}
                for i, img in enumerate(self.images)]
